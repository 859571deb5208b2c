"""The stdin/stdout judge: a whole program against input/output tests.

Competitive-programming problems (CodeContests, APPS, TACO, Codeforces) are
judged by running the program once per test with the test's input on stdin
and comparing its stdout with the expected output. `judge` does that in the
code verifier's sandbox (`code_exec.run_driver`: the same isolation, limits
and cleanup): the sandbox compiles the program once, then forks a fresh
child per test from that warm interpreter, so a test costs a fork, not an
interpreter start-up. The program runs as `python3 program.py < input`
would: `__name__ == '__main__'`, fully buffered stdout, `sys.exit()` /
`exit()` allowed (a non-zero status is a runtime error). The expected
outputs never enter the sandbox: its supervisor sends each test's stdout
back and the comparison happens here.

Per test:
  time       CPU seconds of the test's process (user + system) may not pass
             `time_limit_s * options.time_limit_factor`; wall clock is a
             backstop at max(2 x limit, limit + 1 s), so a loaded machine
             does not turn correct programs into timeouts, and a sleeping
             one is still stopped.
  memory     `SandboxLimits.memory_mb` of address space; a MemoryError that
             ends the program is the `memory` verdict.
  output     stdout and stderr together at most max(`max_output_bytes`,
             2 x the largest expected output + 1 KiB) bytes; past it the
             program is killed (`output_limit`).
  comparison token by token: both outputs split at ASCII whitespace, so
             spacing, line breaks, trailing spaces and a missing final
             newline do not matter; with `float_tolerance` > 0 an expected
             real number (a numeric token with a '.' or an exponent) also
             matches any number within tol * max(1, |expected|) (relative
             and absolute tolerance at once; CodeContests' real-valued
             problems use 1e-6). Integers are always compared exactly, so
             the tolerance cannot accept 10**18 + 1 for 10**18.

Verdicts (`STDIO_STATUSES`): passed, wrong_answer, runtime_error, timeout,
memory, output_limit, syntax_error, and judge_error (the sandbox itself
failed: never the program's fault, counted apart so it is not silently
blamed on the model). Judging stops at the first failing test unless
`options.stop_at_first_failure` is False; the verdict names that test's
index either way.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
import dataclasses
import math
import os
import re
import signal
import time

from tpt_jax.verify import code_exec

PASSED = 'passed'
WRONG_ANSWER = 'wrong_answer'
RUNTIME_ERROR = 'runtime_error'
TIMEOUT = 'timeout'
MEMORY = 'memory'
OUTPUT_LIMIT = 'output_limit'
SYNTAX_ERROR = 'syntax_error'
JUDGE_ERROR = 'judge_error'
STDIO_STATUSES = (PASSED, WRONG_ANSWER, RUNTIME_ERROR, TIMEOUT, MEMORY,
                  OUTPUT_LIMIT, SYNTAX_ERROR, JUDGE_ERROR)

# Characters of a failing test's stderr kept in a verdict.
_KEPT_STDERR_CHARS = 2000
# The whole run may take this long on top of every test's wall limit
# (interpreter start-up, compiling, sending outputs back).
_STARTUP_ALLOWANCE_S = 5.0
_PER_TEST_ALLOWANCE_S = 0.5
_NUMBER = re.compile(rb'[+-]?(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?')
_INTEGER = re.compile(rb'[+-]?\d+')


@dataclasses.dataclass(frozen=True)
class StdioTest:
  """One test: the program's stdin and the stdout expected from it."""
  input: str
  output: str

  def __post_init__(self):
    for name in ('input', 'output'):
      value = getattr(self, name)
      if not isinstance(value, str):
        raise ValueError(f'StdioTest.{name} must be a string, got '
                         f'{type(value).__name__}.')


@dataclasses.dataclass(frozen=True)
class StdioTask:
  """A program and the tests it must pass.

  Attributes:
    program: the complete Python 3 source.
    tests: at least one test, run in order.
    time_limit_s: the problem's time limit per test, before
      `JudgeOptions.time_limit_factor`.
  """
  program: str
  tests: tuple[StdioTest, ...]
  time_limit_s: float = 2.0

  def __post_init__(self):
    object.__setattr__(self, 'tests', tuple(self.tests))
    if not self.tests:
      raise ValueError('StdioTask.tests is empty: there is nothing to judge '
                       'the program on.')
    for index, test in enumerate(self.tests):
      if not isinstance(test, StdioTest):
        raise ValueError(f'StdioTask.tests[{index}] must be a StdioTest, got '
                         f'{type(test).__name__}.')
    if (isinstance(self.time_limit_s, bool) or
        not isinstance(self.time_limit_s, (int, float)) or
        not 0 < self.time_limit_s < math.inf):
      raise ValueError(f'StdioTask.time_limit_s={self.time_limit_s!r} must be '
                       'a positive number of seconds.')


@dataclasses.dataclass(frozen=True)
class JudgeOptions:
  """How programs are judged (see the module docstring).

  Attributes:
    time_limit_factor: multiplies each problem's time limit (slower or
      faster machines than the problem setters', Python vs C++).
    float_tolerance: 0 compares tokens exactly; > 0 lets a number differ
      from an expected real number by that much, relative or absolute
      (e.g. 1e-6); integers are compared exactly.
    stop_at_first_failure: stop judging a program at its first failing
      test (faster); False runs every test and reports each one's status.
  """
  time_limit_factor: float = 1.0
  float_tolerance: float = 0.0
  stop_at_first_failure: bool = True

  def __post_init__(self):
    if not 0 < self.time_limit_factor < math.inf:
      raise ValueError(f'JudgeOptions.time_limit_factor='
                       f'{self.time_limit_factor!r} must be > 0.')
    if not 0 <= self.float_tolerance < 1:
      raise ValueError(f'JudgeOptions.float_tolerance={self.float_tolerance!r}'
                       ' must be in [0, 1).')


@dataclasses.dataclass(frozen=True)
class StdioVerdict:
  """The outcome of judging one program.

  Attributes:
    status: one of STDIO_STATUSES: the first failing test's, else 'passed'.
    first_failed_test: index (into the task's tests) of the first test not
      passed; None when passed; 0 for a syntax error.
    reason: why, in words ('' when passed).
    test_statuses: the status of each test run, in order (fewer than the
      tests when judging stopped early).
    test_cpu_s: CPU seconds of each test run.
    duration_s: wall-clock seconds of the whole judging.
    stderr: the start of the first failing test's stderr.
  """
  status: str
  first_failed_test: int | None = None
  reason: str = ''
  test_statuses: tuple[str, ...] = ()
  test_cpu_s: tuple[float, ...] = ()
  duration_s: float = 0.0
  stderr: str = ''

  @property
  def passed(self) -> bool:
    return self.status == PASSED


def _tokens_equal(actual: bytes, expected: bytes, tolerance: float) -> bool:
  if actual == expected:
    return True
  if (tolerance <= 0 or _INTEGER.fullmatch(expected) or
      not (_NUMBER.fullmatch(actual) and _NUMBER.fullmatch(expected))):
    return False
  try:
    a, b = float(actual), float(expected)
  except (ValueError, OverflowError):
    return False
  return abs(a - b) <= tolerance * max(1.0, abs(b))


def _as_bytes(text: str | bytes) -> bytes:
  return text.encode('utf-8') if isinstance(text, str) else bytes(text)


def first_difference(actual: str | bytes, expected: str | bytes,
                     float_tolerance: float = 0.0) -> int | None:
  """The index of the first output token that differs, or None if none.

  Tokens are the outputs split at ASCII whitespace; when one output has
  fewer tokens, the index is where it ends.
  """
  got = _as_bytes(actual).split()
  want = _as_bytes(expected).split()
  for index, (a, b) in enumerate(zip(got, want)):
    if not _tokens_equal(a, b, float_tolerance):
      return index
  if len(got) != len(want):
    return min(len(got), len(want))
  return None


def outputs_match(actual: str | bytes, expected: str | bytes,
                  float_tolerance: float = 0.0) -> bool:
  """Whether `actual` stdout is accepted for `expected` (see module doc)."""
  return first_difference(actual, expected, float_tolerance) is None


def _describe_difference(actual: bytes, expected: bytes, index: int) -> str:
  got, want = actual.split(), expected.split()
  show = lambda tokens: (repr(tokens[index].decode('utf-8', 'replace')[:50])
                         if index < len(tokens) else 'the end of the output')
  return (f'token {index + 1}: expected {show(want)}, got {show(got)} '
          f'({len(got)} tokens, {len(want)} expected)')


def _describe_signal(wait_status: int) -> str:
  number = os.WTERMSIG(wait_status)
  try:
    name = signal.Signals(number).name
  except ValueError:
    name = f'signal {number}'
  if number == signal.SIGSEGV:
    return f'was killed by {name} (e.g. a stack overflow from deep recursion)'
  return f'was killed by {name}'


def _last_line(text: str) -> str:
  lines = [line for line in text.strip().splitlines() if line.strip()]
  return lines[-1][:300] if lines else ''


def _test_status(message: dict[str, str | bytes], expected: bytes,
                 cpu_limit_s: float, output_cap: int,
                 float_tolerance: float) -> tuple[str, str]:
  """(status, reason) of one test from the supervisor's report."""
  wait_status = int(message['wait_status'])
  cpu_s = float(message['cpu_s'])
  wall_s = float(message['wall_s'])
  stderr = message['stderr'].decode('utf-8', 'replace')
  if int(message.get('setup_failed', '0')):
    return JUDGE_ERROR, 'the test process could not be set up'
  if int(message['time_killed']) or cpu_s > cpu_limit_s:
    return TIMEOUT, (f'exceeded the {cpu_limit_s:g} s time limit (CPU '
                     f'{cpu_s:.2f} s, wall {wall_s:.2f} s)')
  if int(message.get('left_processes', '0')):
    return RUNTIME_ERROR, ('the program left processes that could not be '
                           'killed (a fork bomb?)')
  killed_by = os.WTERMSIG(wait_status) if os.WIFSIGNALED(wait_status) else 0
  if (int(message['output_bytes']) > output_cap or
      killed_by == signal.SIGXFSZ):
    return OUTPUT_LIMIT, (f'wrote more than {output_cap} bytes to stdout or '
                          'stderr')
  if int(message['memory']):
    return MEMORY, (f'ran out of memory: {_last_line(stderr)}')
  if killed_by:
    return RUNTIME_ERROR, f'the program {_describe_signal(wait_status)}'
  code = os.WEXITSTATUS(wait_status)
  if code:
    detail = _last_line(stderr)
    return RUNTIME_ERROR, (f'the program exited with status {code}' +
                           (f': {detail}' if detail else ''))
  stdout = message['stdout']
  index = first_difference(stdout, expected, float_tolerance)
  if index is not None:
    return WRONG_ANSWER, _describe_difference(stdout, expected, index)
  return PASSED, ''


def judge(task: StdioTask,
          limits: code_exec.SandboxLimits = code_exec.SandboxLimits(),
          options: JudgeOptions = JudgeOptions()) -> StdioVerdict:
  """Judges `task` in a fresh sandbox; never raises on any program.

  `limits.timeout_s` and `limits.cpu_time_s` are not used: each test has
  the task's time limit (see the module docstring).
  """
  start = time.monotonic()
  try:
    return _judge(task, limits, options, start)
  except Exception as e:  # pylint: disable=broad-except
    return StdioVerdict(JUDGE_ERROR, 0,
                        f'judge failure: {type(e).__name__}: {e}'[:1000],
                        duration_s=time.monotonic() - start)


def _judge(task: StdioTask, limits: code_exec.SandboxLimits,
           options: JudgeOptions, start: float) -> StdioVerdict:
  if not isinstance(task.program, str):
    return StdioVerdict(SYNTAX_ERROR, 0, 'the program is not a string')
  cpu_limit_s = float(task.time_limit_s) * options.time_limit_factor
  wall_limit_s = max(2.0 * cpu_limit_s, cpu_limit_s + 1.0)
  inputs = [test.input.encode('utf-8') for test in task.tests]
  expected = [test.output.encode('utf-8') for test in task.tests]
  output_cap = max(limits.max_output_bytes,
                   2 * max(len(e) for e in expected) + 1024)
  job = {
      'mode': 'stdio', 'program': task.program, 'inputs': inputs,
      'test_cpu_s': cpu_limit_s, 'test_wall_s': wall_limit_s,
      'test_cpu_backstop_s': math.ceil(cpu_limit_s) + 1,
      # The supervisor writes each input into a file before the test.
      'supervisor_file_bytes': max(output_cap, max(map(len, inputs))) + 1,
      # The supervisor's own CPU (compiling, copying outputs back); at least
      # the tests' backstop, which a test process cannot raise above it.
      'cpu_time_s': 10 + len(inputs) + math.ceil(cpu_limit_s) + 2,
  }
  statuses, cpu_times, failure = [], [], []
  fatal = {}

  def on_message(message: dict[str, str | bytes]) -> bool:
    if 'status' in message:  # syntax_error, or the sandbox failed.
      fatal.update(message)
      return True
    if 'test' not in message:
      return False
    index = int(message['test'])
    if index != len(statuses):
      fatal.update(status=code_exec.STATUS_ERROR,
                   reason=f'test reports out of order ({index})')
      return True
    status, reason = _test_status(message, expected[index], cpu_limit_s,
                                  output_cap, options.float_tolerance)
    statuses.append(status)
    cpu_times.append(float(message['cpu_s']))
    if status != PASSED and not failure:
      failure.extend((index, status, reason,
                      message['stderr'].decode('utf-8', 'replace')))
    return status != PASSED and options.stop_at_first_failure

  timeout_s = _STARTUP_ALLOWANCE_S + len(inputs) * (
      wall_limit_s + _PER_TEST_ALLOWANCE_S)
  line_bytes = 2 * (output_cap + 2 * _KEPT_STDERR_CHARS) + 4096
  run = code_exec.run_driver(
      job, dataclasses.replace(limits, max_output_bytes=output_cap),
      timeout_s, start, on_message, raw_keys=frozenset({'stdout', 'stderr'}),
      max_message_bytes=line_bytes,
      max_total_bytes=line_bytes * len(inputs) + (1 << 20))
  common = dict(test_statuses=tuple(statuses), test_cpu_s=tuple(cpu_times),
                duration_s=run.duration_s)
  if fatal.get('status') == SYNTAX_ERROR:
    return StdioVerdict(SYNTAX_ERROR, 0, str(fatal.get('reason', '')),
                        **common)
  if fatal:
    return StdioVerdict(JUDGE_ERROR, len(statuses),
                        f'sandbox failure: {fatal.get("reason", "")}',
                        stderr=run.stderr, **common)
  if failure:
    index, status, reason, stderr = failure
    return StdioVerdict(status, index, f'test {index}: {reason}',
                        stderr=stderr[:_KEPT_STDERR_CHARS], **common)
  if len(statuses) == len(inputs):
    return StdioVerdict(PASSED, **common)
  index = len(statuses)
  if run.timed_out:
    return StdioVerdict(TIMEOUT, index, f'test {index}: the judging of the '
                        f'program exceeded its {timeout_s:g} s wall-clock '
                        'limit', **common)
  return StdioVerdict(RUNTIME_ERROR, index, (
      f'test {index}: the sandbox supervisor ended before the test did (exit '
      f'code {run.returncode}); did the program kill its parent?'), **common)


class StdioJudge:
  """Judges programs `num_workers` sandboxes at a time (the code verifier's
  worker pool); use as a context manager or call `close()`."""

  def __init__(self,
               limits: code_exec.SandboxLimits = code_exec.SandboxLimits(),
               options: JudgeOptions = JudgeOptions(), num_workers: int = 0):
    """`num_workers=0` means one per CPU core."""
    self.limits = limits
    self.options = options
    self._pool = code_exec.CodeVerifier(limits, num_workers)
    self.num_workers = self._pool.num_workers

  def __enter__(self) -> StdioJudge:
    return self

  def __exit__(self, *unused_exc_info) -> None:
    self.close()

  def close(self) -> None:
    self._pool.close()

  def judge(self, task: StdioTask) -> StdioVerdict:
    return judge(task, self.limits, self.options)

  def judge_many(self, tasks: Iterable[StdioTask]) -> list[StdioVerdict]:
    """Verdicts in the order of `tasks`."""
    return self._pool.map(
        lambda task: judge(task, self.limits, self.options), tasks)


def count_statuses(verdicts: Sequence[StdioVerdict]) -> dict[str, int]:
  """How many verdicts have each status (every status listed, for logs)."""
  counts = dict.fromkeys(STDIO_STATUSES, 0)
  for verdict in verdicts:
    counts[verdict.status] += 1
  return counts


def task_from_record(record: dict) -> StdioTask:
  """The task of a CLI input line: {"program", "tests": [{"input",
  "output"}, ...], "time_limit_s"?}; raises ValueError naming the field."""
  tests = record.get('tests')
  if not isinstance(tests, list) or not tests:
    raise ValueError("field 'tests' must be a non-empty list of "
                     '{"input": ..., "output": ...}')
  parsed = []
  for index, test in enumerate(tests):
    if (not isinstance(test, dict) or
        not isinstance(test.get('input'), str) or
        not isinstance(test.get('output'), str)):
      raise ValueError(f"field 'tests[{index}]' must be an object with "
                       'string "input" and "output"')
    parsed.append(StdioTest(test['input'], test['output']))
  time_limit_s = record.get('time_limit_s', StdioTask.time_limit_s)
  if (isinstance(time_limit_s, bool) or
      not isinstance(time_limit_s, (int, float)) or
      not 0 < time_limit_s < math.inf):
    raise ValueError(f"field 'time_limit_s' must be a positive number, got "
                     f'{time_limit_s!r}')
  return StdioTask(record['program'], tuple(parsed), float(time_limit_s))
