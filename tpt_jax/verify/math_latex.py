"""MATH-style answers: LaTeX normalization, then sympy equivalence.

A completion's answer is the content of its last `\\boxed{...}` (braces
nested), else what follows `The final answer is` / `The answer is` /
`Answer:`. Answer and reference are first compared as normalized strings
(`\\dfrac` -> `\\frac`, `\\frac12` -> `\\frac{1}{2}`, `^\\circ`, `\\%`, `\\$`,
`\\text{...}` wrappers and trailing units, `x = ` prefixes, spacing), then as
exact numbers, and only then through sympy (`\\frac{\\sqrt{2}}{2}` vs
`\\frac{1}{\\sqrt{2}}`).

Sympy runs in a separate worker process (`SympyChecker`) so each comparison
has a hard time limit: `simplify` can run for minutes, and `2^{10^{10}}`
would exhaust memory; the worker is killed and restarted when it overruns.
The LaTeX is translated to a small, whitelisted expression language here
(numbers, one-letter symbols, + - * / **, parentheses and a few named
functions) before sympy sees it, so no completion text is ever evaluated as
Python. No function here raises on any string.

Length: one LaTeX answer normaliser (a brace table and linear-time
rewrites) and its sympy worker; the rewrites depend on each other's order.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import re
import select
import subprocess
import sys
import threading
import time

from tpt_jax.verify import math_answers

MathVerdict = math_answers.MathVerdict

METHOD_FINAL_ANSWER = 'final answer'
_DEFAULT_TIMEOUT_S = 2.0
_WORKER_MEMORY_BYTES = 2 << 30
# Limit of the worker's start-up (importing sympy); not part of any
# comparison's time limit.
_WORKER_START_UP_S = 60.0
# What the worker prints once it can take requests.
_READY_LINE = b'{"ready": true}'
# A comparison running longer than this starts a spare worker.
_SPARE_AFTER_S = 0.25
# Longer answers are compared as strings only.
_MAX_SYMPY_INPUT_CHARS = 300

_FINAL_ANSWER = re.compile(
    r'(?:final\s+answer\s+is|answer\s+is|answer\s*:)\s*:?', re.IGNORECASE)


def extract_math_answer(completion: str) -> math_answers.Extraction | None:
  """The last `\\boxed{}` content, else the text after 'The answer is' etc."""
  if not isinstance(completion, str):
    return None
  boxed = math_answers.last_boxed(completion)
  if boxed is not None:
    return math_answers.Extraction(boxed.strip(), math_answers.METHOD_BOXED)
  last = None
  for last in _FINAL_ANSWER.finditer(completion):
    pass
  if last is None:
    return None
  span = completion[last.end():].strip()
  if span.startswith('$'):  # `The final answer is $x^2$. I hope ...`
    end = span.find('$', 1)
    span = span[1:end] if end > 0 else span[1:]
  else:
    span = re.split(r'(?<!\d)\.(?!\d)|\n', span, maxsplit=1)[0]
  span = span.strip()
  return (math_answers.Extraction(span, METHOD_FINAL_ANSWER)
          if span else None)


def reference_answer(reference: str) -> str:
  """A MATH reference: the last `\\boxed{}` of a solution, else the text."""
  boxed = math_answers.last_boxed(reference)
  return (boxed if boxed is not None else reference).strip()


def _closing_braces(text: str) -> dict[int, int]:
  """Index of each balanced `{` -> index of its `}` (one linear pass)."""
  closing, opened = {}, []
  for index, char in enumerate(text):
    if char == '{':
      opened.append(index)
    elif char == '}' and opened:
      closing[opened.pop()] = index
  return closing


def _braced_argument(text: str, start: int,
                     closing: dict[int, int] | None = None
                     ) -> tuple[str, int] | None:
  """The `{...}` argument starting at `start` (or one character) and its end.

  `closing`: `_closing_braces(text)`, when the caller looks up many
  arguments of one text (each lookup is then O(1) instead of a scan).
  """
  while start < len(text) and text[start] == ' ':
    start += 1
  if start >= len(text):
    return None
  if text[start] != '{':
    return text[start], start + 1
  if closing is None:
    closing = _closing_braces(text[start:])
    end = closing.get(0)
    end = None if end is None else start + end
  else:
    end = closing.get(start)
  if end is None:
    return None
  return text[start + 1:end], end + 1


def _brace_single_arguments(text: str, command: str, count: int) -> str:
  """`\\frac12` -> `\\frac{1}{2}`, `\\sqrt2` -> `\\sqrt{2}` (linear time)."""
  closing = _closing_braces(text)
  next_bracket = -1  # Cached result of text.find(']', ...).
  out = []
  position = 0
  while True:
    found = text.find(command, position)
    if found < 0:
      out.append(text[position:])
      return ''.join(out)
    after = found + len(command)
    if after < len(text) and text[after].isalpha():  # e.g. \fracture
      out.append(text[position:after])
      position = after
      continue
    out.append(text[position:after])
    position = after
    for _ in range(count):
      if position < len(text) and text[position] == '[':  # \sqrt[3]{x}
        if next_bracket < position and next_bracket != -2:
          next_bracket = text.find(']', position)
          next_bracket = -2 if next_bracket < 0 else next_bracket
        if next_bracket == -2:  # No `]` from here on.
          break
        out.append(text[position:next_bracket + 1])
        position = next_bracket + 1
      argument = _braced_argument(text, position, closing)
      if argument is None:
        break
      out.append('{' + argument[0] + '}')
      position = argument[1]


_TEXT_UNIT = re.compile(
    r'^(?P<value>.*?[\d}])\s*\\(?:text|mbox|mathrm)\{\s*[a-zA-Z][a-zA-Z ]*\}'
    r'(?:\^?\{?\d\}?)?$')
_TEXT_WRAPPER = re.compile(r'\\(?:text|textbf|mbox|mathrm|mathbf)\{([^{}]*)\}')
_VARIABLE_PREFIX = re.compile(r'^[a-zA-Z]\s*=\s*(?!=)')
_THOUSANDS = re.compile(r'^-?\d{1,3}(?:,\d{3})+(?:\.\d+)?$')


def normalize_latex(answer: str) -> str:
  """A canonical string for a MATH answer; equal strings mean equal answers."""
  text = answer.strip()
  text = text.replace('\n', '').replace('\\!', '')
  for spacing in ('\\,', '\\;', '\\:', '\\ ', '~'):
    text = text.replace(spacing, ' ')
  text = re.sub(r'\\(?:left|right|displaystyle)(?![a-zA-Z])', '', text)
  text = re.sub(r'\\[dt]frac(?![a-zA-Z])', r'\\frac', text)
  text = re.sub(r'\^\s*+\{?+\s*+\\circ\s*+\}?+', '', text).replace('°', '')
  text = text.replace('\\%', '').replace('%', '')
  text = text.replace('\\$', '').replace('$', '')
  unit = _TEXT_UNIT.match(text.strip())
  if unit:
    text = unit['value']
  text = _TEXT_WRAPPER.sub(r'\1', text)
  text = _VARIABLE_PREFIX.sub('', text.strip())
  text = text.replace('{,}', ',')
  text = _brace_single_arguments(text, '\\frac', 2)
  text = _brace_single_arguments(text, '\\sqrt', 1)
  text = text.replace(' ', '')
  if _THOUSANDS.match(text):
    text = text.replace(',', '')
  text = re.sub(r'(?<![\d])\.(\d)', r'0.\1', text)  # .5 -> 0.5
  text = text.rstrip('.')
  if text.endswith('0') and re.fullmatch(r'-?\d++\.\d++', text):
    # 2.50 -> 2.5, 3.0 -> 3
    text = text.rstrip('0').rstrip('.')
  return text


_FUNCTIONS = {'sqrt': 'sqrt', 'sin': 'sin', 'cos': 'cos', 'tan': 'tan',
              'log': 'log', 'ln': 'log', 'exp': 'exp', 'pi': 'pi',
              'infty': 'oo'}
_TOKEN = re.compile(r'\s*(?:(?P<number>\d+(?:\.\d+)?)|(?P<name>[a-zA-Z]+)|'
                    r'(?P<op>\*\*|[-+*/(),]))')


def latex_to_sympy_text(latex: str) -> str | None:
  """Translates a normalized LaTeX answer to whitelisted sympy input, or None.

  Only numbers, single-letter symbols, the names in _FUNCTIONS, + - * / **,
  parentheses and commas come out; anything else gives None.
  """
  text = _expand_commands(latex)
  if text is None:
    return None
  text = (text.replace('\\cdot', '*').replace('\\times', '*')
          .replace('\\div', '/').replace('^', '**')
          .replace('{', '(').replace('}', ')'))
  text = re.sub(r'\\(pi|infty|sin|cos|tan|log|ln|exp)(?![a-zA-Z])', r' \1 ',
                text)
  if '\\' in text:
    return None
  tokens = []
  position = 0
  while position < len(text):
    match = _TOKEN.match(text, position)
    if match is None:
      if text[position:].strip():
        return None
      break
    position = match.end()
    if match['name']:
      name = match['name']
      if name in _FUNCTIONS:
        tokens.append(('name', _FUNCTIONS[name]))
      else:  # `xy` is x*y: one-letter symbols only.
        tokens.extend(('symbol', letter) for letter in name)
    elif match['number']:
      tokens.append(('number', match['number']))
    else:
      tokens.append(('op', match['op']))
  out = []
  for index, (kind, value) in enumerate(tokens):
    if index and _implicit_product(tokens[index - 1], (kind, value)):
      out.append('*')
    out.append(value)
  return ''.join(out) if out else None


def _implicit_product(left: tuple[str, str], right: tuple[str, str]) -> bool:
  """Whether `2x`, `x(`, `)(`, `2\\pi` etc. hide a multiplication."""
  left_ends_value = (left[0] in ('number', 'symbol') or left == ('op', ')') or
                     left in (('name', 'pi'), ('name', 'oo')))
  right_starts_value = right[0] in ('number', 'symbol', 'name') or right == (
      'op', '(')
  return left_ends_value and right_starts_value


def _expand_commands(text: str) -> str | None:
  """Rewrites `\\frac{a}{b}` and `\\sqrt[n]{x}` into plain operators."""
  for _ in range(200):  # Each pass rewrites one command; bounded.
    frac = text.find('\\frac')
    sqrt = text.find('\\sqrt')
    if frac < 0 and sqrt < 0:
      return text
    if frac >= 0 and (sqrt < 0 or frac < sqrt):
      numerator = _braced_argument(text, frac + 5)
      if numerator is None:
        return None
      denominator = _braced_argument(text, numerator[1])
      if denominator is None:
        return None
      text = (text[:frac] + '((' + numerator[0] + ')/(' + denominator[0] +
              '))' + text[denominator[1]:])
    else:
      position = sqrt + 5
      index = None
      if position < len(text) and text[position] == '[':
        close = text.find(']', position)
        if close < 0:
          return None
        index, position = text[position + 1:close], close + 1
      radicand = _braced_argument(text, position)
      if radicand is None:
        return None
      replacement = (f'sqrt({radicand[0]})' if index is None else
                     f'(({radicand[0]})**(1/({index})))')
      text = text[:sqrt] + replacement + text[radicand[1]:]
  return None


def _split_top_level(text: str) -> tuple[str, list[str]] | None:
  """'(1,2)' -> ('()', ['1', '2']); a single expression -> ('', [text])."""
  brackets = ''
  if len(text) >= 2 and text[0] + text[-1] in ('()', '[]', '(]', '[)'):
    brackets, text = text[0] + text[-1], text[1:-1]
  elif text.startswith('\\{') and text.endswith('\\}'):
    brackets, text = '{}', text[2:-2]
  parts, depth, start = [], 0, 0
  for index, char in enumerate(text):
    if char in '([{':
      depth += 1
    elif char in ')]}':
      depth -= 1
      if depth < 0:
        return None
    elif char == ',' and depth == 0:
      parts.append(text[start:index])
      start = index + 1
  parts.append(text[start:])
  if len(parts) == 1 and brackets in ('()', '{}'):
    # Plain parentheses around one value: `(5)` is 5.
    return '', ['(' + parts[0] + ')' if brackets == '()' else parts[0]]
  return brackets, parts


@dataclasses.dataclass
class _Worker:
  """A sympy worker process and whether it has said it is ready."""
  process: subprocess.Popen[bytes]
  ready: bool = False

  def stop(self) -> None:
    self.process.kill()
    self.process.wait()
    for stream in (self.process.stdin, self.process.stdout):
      if stream is not None:
        stream.close()


def _spawn_worker() -> _Worker:
  package_root = os.path.dirname(os.path.dirname(os.path.dirname(
      os.path.abspath(__file__))))
  code = ('import sys; sys.path.insert(0, sys.argv[1]); '
          'from tpt_jax.verify import math_latex; '
          'math_latex._worker_main()')
  return _Worker(subprocess.Popen(
      [sys.executable, '-s', '-c', code, package_root],
      stdin=subprocess.PIPE, stdout=subprocess.PIPE,
      stderr=subprocess.DEVNULL, start_new_session=True))


class SympyChecker:
  """Decides `a == b` with sympy in a worker process, with a time limit.

  Every comparison gets exactly `timeout_s`: a worker says when it is ready
  (sympy imported) and only then is a request timed, so start-up never
  counts against a comparison. A worker that overruns is killed and a spare
  takes over: the spare is started in the background as soon as a
  comparison runs longer than 0.25 s, so the next comparison does not wait
  for a worker to import sympy, and a run of pathological answers costs
  `timeout_s` each, not `timeout_s` plus a start-up. Start-up is bounded
  by `start_up_timeout_s`; a worker that cannot start (e.g. no sympy) turns
  sympy off (comparisons are undecided).

  Use as a context manager (which starts the worker), or call start() and
  close(). Thread-safe (one comparison at a time).
  """

  def __init__(self, timeout_s: float = _DEFAULT_TIMEOUT_S, *,
               start_up_timeout_s: float = _WORKER_START_UP_S):
    if not timeout_s > 0:
      raise ValueError(f'timeout_s={timeout_s} must be > 0.')
    if not start_up_timeout_s > 0:
      raise ValueError(
          f'start_up_timeout_s={start_up_timeout_s} must be > 0.')
    self.timeout_s = timeout_s
    self.start_up_timeout_s = start_up_timeout_s
    self._worker: _Worker | None = None
    self._spare: _Worker | None = None  # Kept from the first overrun on.
    self._unavailable = False  # A worker cannot start (e.g. no sympy).
    self._lock = threading.Lock()

  def __enter__(self) -> SympyChecker:
    self.start()
    return self

  def __exit__(self, *unused_exc_info) -> None:
    self.close()

  def start(self, wait: bool = False) -> bool:
    """Starts the worker unless it runs; with `wait`, until it is ready.

    Returns whether the worker is ready.
    """
    with self._lock:
      if self._unavailable:
        return False
      worker = self._running_worker()
      return self._wait_ready(worker) if wait else worker.ready

  def close(self) -> None:
    with self._lock:
      for worker in (self._worker, self._spare):
        if worker is not None:
          worker.stop()
      self._worker = self._spare = None

  def _running_worker(self) -> _Worker:
    """The current worker; the spare (or a new one) if it has exited."""
    if self._worker is not None and self._worker.process.poll() is None:
      return self._worker
    if self._worker is not None:
      self._worker.stop()
    self._worker, self._spare = self._spare or _spawn_worker(), None
    return self._worker

  def _replace_worker(self) -> None:
    """Kills the current worker; the spare takes over, a new spare starts."""
    if self._worker is not None:
      self._worker.stop()
    self._worker = self._spare or _spawn_worker()
    self._spare = _spawn_worker()

  def _wait_ready(self, worker: _Worker) -> bool:
    """Waits for `worker`'s ready line (at most start_up_timeout_s)."""
    if worker.ready:
      return True
    stdout = worker.process.stdout
    readable, _, _ = select.select([stdout], [], [], self.start_up_timeout_s)
    line = stdout.readline() if readable else b''
    if line.strip() != _READY_LINE:
      self._unavailable = True
      logging.warning('The sympy worker %s; MATH answers are compared '
                      'without sympy.',
                      'exits at start-up (is sympy installed?)' if readable
                      else 'did not start within '
                      f'{self.start_up_timeout_s:g} s')
      return False
    worker.ready = True
    return True

  def equivalent(self, left: str, right: str) -> bool | None:
    """True/False if sympy decides within `timeout_s`, None otherwise.

    `left` and `right` are outputs of `latex_to_sympy_text`.
    """
    with self._lock:
      if self._unavailable:
        return None
      try:
        worker = self._running_worker()
        if not self._wait_ready(worker):
          return None
        process = worker.process
        process.stdin.write(
            json.dumps({'left': left, 'right': right}).encode() + b'\n')
        process.stdin.flush()
        deadline = time.monotonic() + self.timeout_s
        # A slow comparison may overrun: start the spare now, so that it is
        # ready by the next comparison.
        readable, _, _ = select.select([process.stdout], [], [],
                                       min(self.timeout_s, _SPARE_AFTER_S))
        if not readable:
          self._spare = self._spare or _spawn_worker()
          readable, _, _ = select.select(
              [process.stdout], [], [], max(0.0, deadline - time.monotonic()))
        line = process.stdout.readline() if readable else b''
        if not line:  # Overran (or died).
          self._replace_worker()
          return None
        return json.loads(line).get('equal')
      except (OSError, ValueError):
        self._replace_worker()
        return None


def _worker_main() -> None:
  """The sympy worker: one JSON request per line in, one answer per line out."""
  # pylint: disable=g-import-not-at-top
  import resource
  import string
  resource.setrlimit(resource.RLIMIT_AS,
                     (_WORKER_MEMORY_BYTES, _WORKER_MEMORY_BYTES))
  import sympy
  from sympy.parsing import sympy_parser
  # pylint: enable=g-import-not-at-top
  symbols = {letter: sympy.Symbol(letter) for letter in string.ascii_letters}
  symbols.update(sqrt=sympy.sqrt, sin=sympy.sin, cos=sympy.cos,
                 tan=sympy.tan, log=sympy.log, exp=sympy.exp, pi=sympy.pi,
                 oo=sympy.oo, E=sympy.Symbol('E'), I=sympy.Symbol('I'),
                 S=sympy.Symbol('S'), N=sympy.Symbol('N'),
                 O=sympy.Symbol('O'), Q=sympy.Symbol('Q'))
  transformations = (sympy_parser.auto_number, sympy_parser.rationalize)
  sys.stdout.write(_READY_LINE.decode() + '\n')
  sys.stdout.flush()

  def parse(text):
    return sympy_parser.parse_expr(text, local_dict=dict(symbols),
                                   global_dict={'Integer': sympy.Integer,
                                                'Float': sympy.Float,
                                                'Rational': sympy.Rational},
                                   transformations=transformations)

  for line in sys.stdin:
    try:
      request = json.loads(line)
      left, right = parse(request['left']), parse(request['right'])
      difference = sympy.simplify(left - right)
      equal = bool(difference == 0)
      if not equal and not difference.free_symbols:
        equal = bool(abs(sympy.N(difference, 30)) < sympy.Float('1e-20'))
      answer = {'equal': equal}
    except Exception as e:  # pylint: disable=broad-except
      answer = {'equal': None, 'error': f'{type(e).__name__}: {e}'[:200]}
    sys.stdout.write(json.dumps(answer) + '\n')
    sys.stdout.flush()


def _sympy_equivalent(left: str, right: str,
                      checker: SympyChecker | None) -> bool:
  if checker is None:
    return False
  if max(len(left), len(right)) > _MAX_SYMPY_INPUT_CHARS:
    return False
  left_text = latex_to_sympy_text(left)
  right_text = latex_to_sympy_text(right)
  if left_text is None or right_text is None:
    return False
  return checker.equivalent(left_text, right_text) is True


def answers_equivalent(answer: str, reference: str,
                       checker: SympyChecker | None = None) -> bool:
  """Whether two MATH answers are equal (strings, numbers, then sympy)."""
  try:
    left, right = normalize_latex(answer), normalize_latex(reference)
    if left == right:
      return True
    left_parts = _split_top_level(left)
    right_parts = _split_top_level(right)
    if left_parts is None or right_parts is None:
      return False
    if left_parts[0] != right_parts[0] or len(left_parts[1]) != len(
        right_parts[1]):
      return False
    return all(_single_equivalent(a, b, checker)
               for a, b in zip(left_parts[1], right_parts[1]))
  except Exception:  # pylint: disable=broad-except
    return False


def _single_equivalent(left: str, right: str,
                       checker: SympyChecker | None) -> bool:
  if left == right:
    return True
  left_value = math_answers.parse_number(left)
  right_value = math_answers.parse_number(right)
  if left_value is not None and right_value is not None:
    return left_value == right_value
  return _sympy_equivalent(left, right, checker)


def verify_math(completion: str, reference: str, *,
                checker: SympyChecker | None = None) -> MathVerdict:
  """Whether `completion`'s final answer equals the MATH `reference`.

  Args:
    completion: the model's text; its answer is the last `\\boxed{}` or what
      follows 'The answer is' / 'Answer:'.
    reference: the reference answer or a full solution with `\\boxed{}`.
    checker: a running `SympyChecker` for equivalences that string and number
      normalization cannot decide; None compares without sympy.

  Returns:
    The verdict; never raises.
  """
  try:
    if not isinstance(completion, str) or not isinstance(reference, str):
      return MathVerdict(False, None, math_answers.METHOD_NONE, None,
                         'completion and reference must be strings')
    expected = reference_answer(reference)
    extraction = extract_math_answer(completion)
    if extraction is None:
      return MathVerdict(False, None, math_answers.METHOD_NONE,
                         normalize_latex(expected), 'no final answer found')
    extracted = normalize_latex(extraction.text)
    if answers_equivalent(extraction.text, expected, checker):
      return MathVerdict(True, extracted, extraction.method,
                         normalize_latex(expected))
    return MathVerdict(False, extracted, extraction.method,
                       normalize_latex(expected),
                       f'{extracted[:80]!r} is not equivalent to '
                       f'{normalize_latex(expected)[:80]!r}')
  except Exception as e:  # pylint: disable=broad-except
    return MathVerdict(False, None, math_answers.METHOD_NONE, None,
                       f'internal error: {type(e).__name__}: {e}'[:500])
