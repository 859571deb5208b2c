"""Tests of the GSM8K and MATH-style verifiers and their CLI."""

import json
import os
import pathlib
import random
import re
import subprocess
import sys
import time

import pytest

from tpt_jax import sources
from tpt_jax.verify import __main__ as cli
from tpt_jax.verify import graders
from tpt_jax.verify import math_answers
from tpt_jax.verify import math_latex

REPO_ROOT = pathlib.Path(__file__).resolve().parents[1]
DATA_DIR = REPO_ROOT / '..' / 'shared' / 'data'


@pytest.fixture(scope='module')
def checker():
  with math_latex.SympyChecker(timeout_s=2.0) as c:
    yield c


@pytest.fixture(scope='module')
def gsm8k_train():
  return sources.load_gsm8k(DATA_DIR / 'gsm8k', 'train')


# --- GSM8K -------------------------------------------------------------------


def test_every_gsm8k_train_solution_verifies_against_its_answer(gsm8k_train):
  assert len(gsm8k_train) == 7473
  wrong = [p.problem_id for p in gsm8k_train
           if not math_answers.verify_gsm8k(p.solution,
                                            p.answer).correct]
  assert not wrong
  # The reference may also be the full solution.
  assert all(math_answers.verify_gsm8k(p.solution,
                                       p.solution).correct
             for p in gsm8k_train[:500])


def test_every_gsm8k_train_solution_is_wrong_against_a_changed_answer(
    gsm8k_train):
  accepted = []
  for p in gsm8k_train:
    changed = math_answers.parse_number(p.answer) + 1
    if math_answers.verify_gsm8k(p.solution, str(changed)).correct:
      accepted.append(p.problem_id)
  assert not accepted


@pytest.mark.parametrize('completion,reference', [
    ('#### 1,000', '1000'),  # thousands separator
    ('The answer is 1,234,567.', '1234567'),
    ('The answer is $18.', '18'),  # currency
    ('The answer is \\$12.50', '12.5'),
    ('The answer is 75%.', '75'),  # percent
    ('Answer: 25 \\%', '25'),
    ('The answer is 18 dollars per hour.', '18'),  # unit words
    ('The answer is: 40 eggs!', '40'),  # trailing punctuation
    ('The answer is -5.', '-5'),  # signs
    ('The answer is -$5', '-5'),
    ('The answer is $-5', '-5'),
    ('The answer is \u22125', '-5'),  # unicode minus
    ('The answer is 18.0', '18'),  # decimals
    ('The answer is 18.50', '18.5'),
    ('The answer is 3/4', '0.75'),  # simple fractions
    ('The answer is \\frac{3}{4}', '3/4'),
    ('so the total is \\boxed{72}.', '72'),  # boxed
    ('\\boxed{\\$1,200}', '1200'),
    ('The answer is **42**.', '42'),  # markdown
    ('Answer: 7', '7'),
    ('The final answer is $9$.', '9'),
    ('He has 3 apples, then 4 more, so 7', '7'),  # last-number fallback
    ('<<2*3=6>>6 in total.\n#### 6', 'blah\n#### 6'),  # GSM8K references
])
def test_normalizations_are_correct(completion, reference):
  verdict = math_answers.verify_gsm8k(completion, reference)
  assert verdict.correct, verdict


@pytest.mark.parametrize('completion,reference', [
    ('The answer is 18.01', '18'),
    ('The answer is 0.333', '1/3'),
    ('The answer is 5 or 6', '6'),  # hedged: no answer, no fallback
    ('#### 1,00', '100'),  # not a thousands separator
    ('The answer is 7', '-7'),
    ('5th place', '5'),
    ('', '0'),
])
def test_near_misses_are_wrong(completion, reference):
  assert not math_answers.verify_gsm8k(completion, reference).correct


def test_marker_order_and_last_occurrence():
  text = 'The answer is 3. Wait, recompute.\nThe answer is 4.'
  assert math_answers.verify_gsm8k(text, '4').correct
  text = 'The answer is 3.\n#### 5'
  verdict = math_answers.verify_gsm8k(text, '5')
  assert verdict.correct and verdict.method == '####'


def test_last_number_fallback_can_be_switched_off():
  completion = 'So she has 12 apples left'
  assert math_answers.verify_gsm8k(completion, '12').correct
  verdict = math_answers.verify_gsm8k(completion, '12',
                                      last_number_fallback=False)
  assert not verdict.correct
  assert verdict.extracted is None
  # Explicit markers do not need the fallback.
  assert math_answers.verify_gsm8k('The answer is 12', '12',
                                   last_number_fallback=False).correct


def test_verdict_fields():
  verdict = math_answers.verify_gsm8k('The answer is $1,000.', '999')
  assert verdict.correct is False
  assert verdict.extracted == '1000'
  assert verdict.reference == '999'
  assert verdict.reason
  assert math_answers.verify_gsm8k('x', 'not a number').reason


def test_canonical_forms():
  canonical = lambda text: math_answers.canonical(
      math_answers.parse_number(text))
  assert canonical('1,000.00') == '1000'
  assert canonical('3/4') == '0.75'
  assert canonical('-2.50') == '-2.5'
  assert canonical('1/3') == '1/3'
  assert canonical('0.05') == '0.05'


def _random_strings(seed, count):
  rng = random.Random(seed)
  alphabet = ('0123456789,./-+$%#*:\\{}()[]^_ \n\tabcxyzAnswerisboxedfrac'
              '\u2212\u00a0\ud800\x00€')
  for _ in range(count):
    yield ''.join(rng.choice(alphabet) for _ in range(rng.randint(0, 80)))


def test_gsm8k_verifier_never_raises_on_garbage():
  for text in _random_strings(0, 3000):
    verdict = math_answers.verify_gsm8k(text, text[::-1])
    assert isinstance(verdict.correct, bool)
    math_answers.verify_gsm8k('#### ' + text, '#### ' + text)
  for odd in (None, 12, b'5', '9' * 10000, '#### ' + '1' * 5000,
              '\\boxed{' * 1000, '1/0', '#### 1/0'):
    verdict = math_answers.verify_gsm8k(odd, odd)
    assert isinstance(verdict.correct, bool)


@pytest.mark.parametrize('hostile', [
    'Let me compute \\frac{' + ' ' * 20_000,  # was cubic: 3,000 took 26 s
    '#### 5' + ' ' * 20_000 + '9x',
    '#### $' + ' ' * 20_000 + 'x',
    'The answer is ' + '\\(' * 10_000,
    '\\boxed{1.' + '0' * 20_000 + 'x}',
    'so 1' + ',111' * 5_000 + 'x',
    '1 ' * 10_000,
    '#### ' * 5_000 + '5',
    '\\frac{' * 5_000,
    '**' + ' #### **\n' * 3_000,
    '<<' + 'x' * 20_000,
])
def test_gsm8k_verifier_is_fast_on_hostile_input(hostile):
  start = time.perf_counter()
  verdict = math_answers.verify_gsm8k(hostile, '3')
  assert time.perf_counter() - start < 1.0
  assert isinstance(verdict.correct, bool)


# --- MATH-style --------------------------------------------------------------


@pytest.mark.parametrize('answer,reference', [
    ('\\frac{1}{2}', '0.5'),  # \frac vs decimal
    ('\\dfrac{3}{4}', '0.75'),
    ('\\frac12', '\\frac{1}{2}'),
    ('\\tfrac{1}{2}', '\\frac{1}{2}'),
    ('\\frac{\\sqrt{2}}{2}', '\\frac{1}{\\sqrt{2}}'),  # \sqrt through sympy
    ('2\\sqrt{2}', '\\sqrt{8}'),
    ('\\sqrt2', '\\sqrt{2}'),
    ('\\sqrt[3]{8}', '2'),
    ('\\frac{\\frac{1}{2}}{3}', '\\frac{1}{6}'),  # nested braces
    ('90^\\circ', '90'),  # degrees
    ('90^{\\circ}', '90'),
    ('50\\%', '50'),  # percent
    ('\\text{(A)}', '(A)'),  # text wrappers
    ('5 \\text{ cm}', '5'),
    ('\\text{Monday}', 'Monday'),
    ('x = 3', '3'),
    ('(1, 2)', '(1,2)'),
    ('x^2+2x+1', '(x+1)^2'),
    ('2\\pi', '\\pi \\cdot 2'),
    ('\\$1,000', '1000'),
    ('\\left( 3, 4 \\right)', '(3,4)'),
    ('.5', '0.5'),
])
def test_math_equivalences(answer, reference, checker):
  verdict = math_latex.verify_math(f'So \\boxed{{{answer}}}.', reference,
                                   checker=checker)
  assert verdict.correct, verdict


@pytest.mark.parametrize('answer,reference', [
    ('\\frac{1}{3}', '0.333'),
    ('(2, 1)', '(1,2)'),
    ('\\pi', '3.14'),
    ('x^2+1', '(x+1)^2'),
    ('3', '4'),
    ('\\sqrt{2}', '1.414'),
])
def test_math_non_equivalences(answer, reference, checker):
  verdict = math_latex.verify_math(f'\\boxed{{{answer}}}', reference,
                                   checker=checker)
  assert not verdict.correct


def test_math_extraction_from_nested_boxed_and_final_answer(checker):
  completion = 'We get $\\boxed{\\frac{\\sqrt{3}}{2}}$ as claimed.'
  verdict = math_latex.verify_math(completion, '\\frac{\\sqrt3}{2}',
                                   checker=checker)
  assert verdict.correct
  assert verdict.extracted == '\\frac{\\sqrt{3}}{2}'
  minerva = 'Final Answer: The final answer is $\\frac{3}{4}$. I hope it is.'
  assert math_latex.verify_math(minerva, 'Thus \\boxed{0.75}.').correct
  assert not math_latex.verify_math('no answer here', '1').correct


def test_sympy_time_limit_is_the_configured_one_on_every_call():
  slow = '\\boxed{10^{10^{10^{10}}}}'
  with math_latex.SympyChecker(timeout_s=1.0) as checker:
    durations = []
    for _ in range(3):
      assert checker.start(wait=True)  # Start-up is never part of a call.
      start = time.perf_counter()
      verdict = math_latex.verify_math(slow, '1', checker=checker)
      durations.append(time.perf_counter() - start)
      assert not verdict.correct
    # Before: 1 s, then 11 s on every later call (the restarted worker got
    # the 10 s start-up allowance again).
    assert all(0.9 < d < 1.5 for d in durations), durations
    # Back to back, the spare worker (started while a slow comparison runs)
    # takes over: no call waits for a full start-up (before: 23 s).
    start = time.perf_counter()
    for _ in range(3):
      math_latex.verify_math(slow, '1', checker=checker)
    assert time.perf_counter() - start < 12.0
    assert math_latex.verify_math('\\boxed{\\frac{\\sqrt{2}}{2}}',
                                  '\\frac{1}{\\sqrt{2}}',
                                  checker=checker).correct


def test_sympy_comparison_is_time_limited(checker):
  verdict = math_latex.verify_math('\\boxed{10^{10^{10}}}', '1',
                                   checker=checker)
  assert not verdict.correct
  # The checker restarts and keeps working after a timeout.
  assert math_latex.verify_math('\\boxed{\\frac{\\sqrt{2}}{2}}',
                                '\\frac{1}{\\sqrt{2}}', checker=checker).correct


@pytest.mark.parametrize('hostile', [
    'The answer is ' + '\\frac{' * 5_000,  # was quadratic: 21 s
    'The answer is ' + '\\sqrt[' * 5_000,
    '\\boxed{5^' + ' ' * 20_000 + 'x}',  # was quadratic: 2 s
    '\\boxed{1.' + '0' * 20_000 + '1}',  # was quadratic: 4.6 s
    'The answer is \\frac' + ' ' * 20_000,
    '\\boxed{' * 5_000,
])
def test_math_verifier_is_fast_on_hostile_input(hostile):
  start = time.perf_counter()
  verdict = math_latex.verify_math(hostile, '1')
  assert time.perf_counter() - start < 1.0
  assert not verdict.correct


def test_no_code_reaches_sympy():
  # Only whitelisted tokens are produced; anything else is refused.
  assert math_latex.latex_to_sympy_text('__import__("os")') is None
  assert math_latex.latex_to_sympy_text('a.__class__') is None
  assert math_latex.latex_to_sympy_text('2x') == '2*x'


def test_math_verifier_never_raises_on_garbage(checker):
  for text in _random_strings(1, 1500):
    verdict = math_latex.verify_math(text, text[::-1])
    assert isinstance(verdict.correct, bool)
    verdict = math_latex.verify_math('\\boxed{' + text + '}', text)
    assert isinstance(verdict.correct, bool)
  for text in list(_random_strings(2, 40)):
    math_latex.verify_math('\\boxed{' + text + '}', '\\frac{1}{2}',
                           checker=checker)
  for odd in (None, 5, '\\boxed{', '\\boxed{}}}', '\\frac{' * 500,
              '\\sqrt[', '}' * 100):
    assert math_latex.verify_math(odd, odd, checker=checker).correct in (
        True, False)


# --- CLI ---------------------------------------------------------------------


def _run_cli(*args):
  env = dict(os.environ, PYTHONPATH=str(REPO_ROOT))
  return subprocess.run([sys.executable, '-m', 'tpt_jax.verify', *args],
                        capture_output=True, text=True, cwd=REPO_ROOT,
                        env=env, timeout=120)


def _write_jsonl(path, rows):
  path.write_text(''.join(json.dumps(r) + '\n' for r in rows))


def test_cli_gsm8k(tmp_path):
  rows = [
      {'id': 'a', 'completion': 'So 3 + 4 = 7.\n#### 7', 'answer': '7'},
      {'id': 'b', 'completion': 'The answer is $1,000.',
       'answer': 'He pays 10 * 100 = <<10*100=1000>>1000.\n#### 1,000'},
      {'id': 'c', 'completion': 'The answer is 5', 'answer': 6},
      {'id': 'd', 'completion': 'no number', 'answer': '1'},
  ]
  source, target = tmp_path / 'in.jsonl', tmp_path / 'out.jsonl'
  _write_jsonl(source, rows)
  result = _run_cli('--task=gsm8k', f'--input={source}', f'--output={target}')
  assert result.returncode == 0, result.stderr
  out = [json.loads(line) for line in target.read_text().splitlines()]
  assert [r['id'] for r in out] == ['a', 'b', 'c', 'd']
  assert [r['correct'] for r in out] == [True, True, False, False]
  assert [r['extracted'] for r in out] == ['7', '1000', '5', None]
  assert out[0]['completion'] == rows[0]['completion']
  assert result.stdout.strip().splitlines()[-1].startswith('correct: 2/4')


def test_cli_last_number_fallback_flag(tmp_path):
  source, target = tmp_path / 'in.jsonl', tmp_path / 'out.jsonl'
  _write_jsonl(source, [{'completion': 'she has 12 left', 'answer': '12'}])
  result = _run_cli('--task=gsm8k', f'--input={source}', f'--output={target}',
                    '--last_number_fallback=false')
  assert result.returncode == 0, result.stderr
  assert json.loads(target.read_text())['correct'] is False


def test_cli_math(tmp_path):
  rows = [
      {'completion': 'so \\boxed{\\frac{\\sqrt{2}}{2}}',
       'answer': '\\frac{1}{\\sqrt{2}}'},
      {'completion': 'so \\boxed{0.5}', 'answer': 'Hence \\boxed{\\frac12}.'},
      {'completion': 'so \\boxed{3}', 'answer': '4'},
  ]
  source, target = tmp_path / 'in.jsonl', tmp_path / 'out.jsonl'
  _write_jsonl(source, rows)
  result = _run_cli('--task=math', f'--input={source}', f'--output={target}')
  assert result.returncode == 0, result.stderr
  out = [json.loads(line) for line in target.read_text().splitlines()]
  assert [r['correct'] for r in out] == [True, True, False]
  assert out[1]['extracted'] == '0.5'
  assert result.stdout.strip().splitlines()[-1].startswith('correct: 2/3')


@pytest.mark.parametrize('bad_line,message', [
    ('{"completion": "x"', 'not valid JSON'),
    ('["completion", "answer"]', 'expected a JSON object'),
    ('{"completion": "x"}', "missing field 'answer'"),
    ('{"completion": 5, "answer": "5"}', "field 'completion' must be"),
])
def test_cli_bad_input_names_file_and_line(tmp_path, bad_line, message):
  source, target = tmp_path / 'in.jsonl', tmp_path / 'out.jsonl'
  source.write_text('{"completion": "#### 1", "answer": "1"}\n\n' + bad_line +
                    '\n')
  target.write_text('previous output\n')
  result = _run_cli('--task=gsm8k', f'--input={source}', f'--output={target}')
  assert result.returncode == 2
  assert f'{source}:3' in result.stderr
  assert message in result.stderr
  # A failed run leaves the previous output untouched.
  assert target.read_text() == 'previous output\n'


def test_cli_missing_input_file(tmp_path):
  result = _run_cli('--task=gsm8k', f'--input={tmp_path / "nope.jsonl"}',
                    f'--output={tmp_path / "out.jsonl"}')
  assert result.returncode == 2
  assert 'nope.jsonl' in result.stderr


def test_cli_output_is_written_atomically(tmp_path):
  target = tmp_path / 'out.jsonl'
  target.write_text('previous\n')

  class Unserializable:
    pass

  with pytest.raises(TypeError):
    cli.write_jsonl_atomically(str(target), [{'ok': 1},
                                             {'bad': Unserializable()}])
  assert target.read_text() == 'previous\n'
  assert sorted(p.name for p in tmp_path.iterdir()) == ['out.jsonl']


def test_cli_output_mode_follows_the_umask(tmp_path):
  target = tmp_path / 'out.jsonl'
  previous = os.umask(0o022)
  try:
    cli.write_jsonl_atomically(str(target), [{'a': 1}])
  finally:
    os.umask(previous)
  assert target.stat().st_mode & 0o777 == 0o644


def test_cli_output_that_cannot_be_written_fails_before_any_work(tmp_path):
  source = tmp_path / 'in.jsonl'
  source.write_text('not json\n')  # Would fail too, but later.
  result = _run_cli('--task=gsm8k', f'--input={source}',
                    f'--output={tmp_path}')
  assert result.returncode == 2
  assert result.stderr.strip() == (
      f'error: {tmp_path}: is a directory; --output must name a file')


def test_cli_unwritable_output_directory(tmp_path, monkeypatch, capsys):
  source = tmp_path / 'in.jsonl'
  source.write_text('not json\n')

  def refuse(*unused_args, **unused_kwargs):
    raise PermissionError(13, 'Permission denied')

  monkeypatch.setattr(cli.tempfile, 'mkstemp', refuse)
  assert cli.main(['--task=gsm8k', f'--input={source}',
                   f'--output={tmp_path / "out.jsonl"}']) == 2
  assert capsys.readouterr().err.strip() == (
      f'error: {tmp_path / "out.jsonl"}: cannot write in {tmp_path} '
      '(Permission denied)')


class _BlockingRecords(list):
  """Records whose iteration stops forever after the first one."""

  def __iter__(self):
    yield {'first': 1}
    time.sleep(600)


def test_cli_removes_the_temporary_file_of_a_killed_run(tmp_path):
  target = tmp_path / 'out.jsonl'
  # A run killed while writing its output leaves its temporary file.
  code = ('import sys, time; from tpt_jax.verify import __main__ as cli; '
          'import test_verify_math as t; '
          'cli.write_jsonl_atomically(sys.argv[1], t._BlockingRecords())')
  env = dict(os.environ, PYTHONPATH=f'{REPO_ROOT}:{REPO_ROOT / "tests"}')
  writer = subprocess.Popen([sys.executable, '-c', code, str(target)],
                            env=env, cwd=REPO_ROOT)
  deadline = time.monotonic() + 60
  while not list(tmp_path.glob('.out.jsonl.*.tmp')):
    assert time.monotonic() < deadline and writer.poll() is None
    time.sleep(0.05)
  writer.kill()
  writer.wait()
  leftover = list(tmp_path.glob('.out.jsonl.*.tmp'))
  assert len(leftover) == 1 and str(writer.pid) in leftover[0].name
  # A live run's temporary file is left alone.
  live = tmp_path / f'.out.jsonl.{os.getpid()}.abcd1234.tmp'
  live.write_text('')
  source = tmp_path / 'in.jsonl'
  _write_jsonl(source, [{'completion': '#### 1', 'answer': '1'}])
  result = _run_cli('--task=gsm8k', f'--input={source}', f'--output={target}')
  assert result.returncode == 0, result.stderr
  assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
      [live.name, 'in.jsonl', 'out.jsonl'])


def test_cli_stall_input_is_verified_quickly(tmp_path):
  source, target = tmp_path / 'in.jsonl', tmp_path / 'out.jsonl'
  _write_jsonl(source, [{'completion': 'Let me compute \\frac{' + ' ' * 20_000,
                         'answer': '3'}])
  start = time.perf_counter()
  result = _run_cli('--task=gsm8k', f'--input={source}', f'--output={target}')
  assert result.returncode == 0, result.stderr
  # Interpreter start-up included; the parse itself takes milliseconds
  # (before: 26 s for 3,000 spaces).
  assert time.perf_counter() - start < 10.0
  assert json.loads(target.read_text())['correct'] is False


def test_cli_paper_strict_grader(tmp_path):
  rows = [
      {'completion': 'So 3 + 4 = 7.\n#### 7', 'answer': '7'},
      {'completion': '**#### Answer: $500**', 'answer': '500'},
      {'completion': '#### 1000', 'answer': 'He pays it.\n#### 1,000'},
      {'completion': '#### 1,000', 'answer': 'He pays it.\n#### 1,000'},
  ]
  source = tmp_path / 'in.jsonl'
  _write_jsonl(source, rows)
  outputs = {}
  for grader in ('default', 'paper_strict'):
    target = tmp_path / f'{grader}.jsonl'
    result = _run_cli('--task=gsm8k', f'--grader={grader}',
                      f'--input={source}', f'--output={target}')
    assert result.returncode == 0, result.stderr
    outputs[grader] = [json.loads(line)['correct']
                       for line in target.read_text().splitlines()]
  assert outputs == {'default': [True, True, True, True],
                     'paper_strict': [True, False, False, True]}
  result = _run_cli('--task=gsm8k', '--grader=lenient', f'--input={source}',
                    f'--output={tmp_path / "x.jsonl"}')
  assert result.returncode == 2
  assert ("invalid choice: 'lenient' (choose from 'default', 'paper_strict')"
          in result.stderr)


# --- Instruction-tuned output formats and graders ---------------------------

# Worked steps with intermediate numbers (12, 6, 4), none of them the answer.
_STEPS = ('**Step 1:** Each box holds 12 apples, and there are 6 boxes.\n'
          '**Step 2:** 12 * 6 = 72 apples, minus 4 eaten.\n\n')
_CHATTER = ("\n\nLet me know if you'd like me to explain step 2 again, or try "
            '3 more problems!')
# Formats gemma-2-2b-it writes its final answer in (issue 15); {n}: answer.
REAL_OUTPUT_FORMATS = {
    'bold hashes, label, currency': _STEPS + '**#### Answer: ${n}**',
    'bold brackets': _STEPS + '#### **[{n}]**',
    'brackets in bold line': _STEPS + '**#### [{n}] **',
    'number on the next line': _STEPS + '** #### **\n{n}',
    'numbered answer heading': _STEPS + '**4. Answer:**\n{n}',
    'numbered answer heading, same line': _STEPS + '**4. Answer:** {n}',
    'repeated number': _STEPS + '#### {n} {n}',
    'time': _STEPS + '#### {n}:00 pm',
    'percent': _STEPS + '#### {n}%',
    'hashes then boxed': _STEPS + '#### $\\boxed{{{n}}}$',
    'chatter after hashes': _STEPS + '#### {n}' + _CHATTER,
    'chatter after answer is': _STEPS + 'The answer is **{n}**.' + _CHATTER,
    'chatter after last number': _STEPS + 'So she has {n} apples left.' +
                                 _CHATTER,
    'hashes in the chatter': _STEPS + '#### {n}\n\nLet me know if the '
                              '#### format 2 suits you.',
    'hashes, then markdown headings': '#### Step 1: boxes\n12 * 6 = 72\n'
                                      '#### 2. Subtract\n72 - 4 = 68\n'
                                      '#### {n}',
}


@pytest.mark.parametrize('name', REAL_OUTPUT_FORMATS)
@pytest.mark.parametrize('stated', [8, 68, 12, 6, 3, 2])
def test_default_grader_reads_real_output_formats(name, stated):
  completion = REAL_OUTPUT_FORMATS[name].format(n=stated)
  # Right when the stated final answer is the reference; wrong for every
  # other reference, including the intermediate numbers and those in the
  # chatter.
  for reference in (8, 68, 12, 6, 4, 72, 3, 2):
    verdict = math_answers.verify_gsm8k(completion, str(reference))
    assert verdict.correct == (reference == stated), (reference, verdict)


@pytest.mark.parametrize('completion,reference', [
    ('#### 68\n\nLet me know if you want to see how 72 came up.', '72'),
    ('She has 68 apples.\n\nI hope this helps! Do you want 2 more?', '2'),
    (_STEPS + '#### 5 or 6', '6'),  # hedged
    (_STEPS + '#### 3 4', '4'),  # two different numbers
    (_STEPS + '#### 2:30 pm', '2'),  # not a whole hour
    (_STEPS + '#### 12 * 6 = 72', '72'),
    (_STEPS + '#### Step 3: subtract', '72'),  # final line states no number
    (_STEPS + '**4. Answer:**\nFirst 12 * 6 = 72.', '72'),
    ('#### 3. Compute 12 * 6\n12 * 6 = 72 apples in all, then some are '
     'eaten.', '3'),  # a numbered heading is not an answer
    (_STEPS + '** #### **', '4'),  # nothing after the marker
])
def test_default_grader_never_takes_an_intermediate_number(completion,
                                                           reference):
  assert not math_answers.verify_gsm8k(completion, reference).correct


def _released_protocol(completion, gold):
  """The released evmath.py check, as written there."""
  match = re.search(r'####\s*(-?[\d.,]+)', completion)
  answer = match.group(1).strip() if match else '[invalid]'
  return answer == gold and answer != '[invalid]'


@pytest.mark.parametrize('completion,gold,correct', [
    ('#### 1,000', '1,000', True),
    ('#### 1000', '1,000', False),  # exact strings: '1000' != '1,000'
    ('#### 1,000', '1000', False),
    ('####25', '25', True),
    ('#### 25.', '25', False),  # the '.' is captured
    ('#### -5', '-5', True),
    ('**#### Answer: $500**', '500', False),  # misses of the protocol
    ('#### **25**', '25', False),
    ('#### [25]', '25', False),
    ('** #### **\n25', '25', False),
    ('#### \n25', '25', True),  # \s* spans the line break
    ('#### 3 3', '3', True),
    ('#### 3\nwait\n#### 5', '5', False),  # the first match decides
    ('#### 3\nwait\n#### 5', '3', True),
    ('The answer is 25.', '25', False),
])
def test_paper_strict_reproduces_the_released_protocol(completion, gold,
                                                       correct):
  grade = graders.get_grader('paper_strict')
  assert grade(completion, gold).correct is correct
  assert _released_protocol(completion, gold) is correct
  # A full GSM8K solution as the reference: its text after '####'.
  assert grade(completion, f'Work.\n#### {gold}').correct is correct


def test_paper_strict_equals_the_released_protocol_on_random_text():
  rng = random.Random(3)
  pieces = ['####', ' ', '\n', '**', '1', '2', ',', '.', '-', '$', '[', 'a',
            '00', '25', ',000', 'Answer:']
  for _ in range(3000):
    completion = ''.join(rng.choice(pieces) for _ in range(rng.randint(0, 12)))
    gold = rng.choice(['1', '25', '1,000', '-2', '2.5', '12'])
    verdict = graders.grade_paper_strict(completion, gold)
    assert verdict.correct == _released_protocol(completion, gold), completion


def test_get_grader_names_the_known_graders():
  assert graders.get_grader('default') is math_answers.verify_gsm8k
  with pytest.raises(ValueError) as error:
    graders.get_grader('strict')
  assert str(error.value) == ("Unknown GSM8K grader name='strict'; known "
                              'graders: default, paper_strict.')
  no_fallback = graders.get_grader('default', last_number_fallback=False)
  assert not no_fallback('she has 12 left', '12').correct
  assert graders.get_grader('default')('she has 12 left', '12').correct


def test_fuzz_script_runs_and_finds_no_exception():
  """scripts/fuzz_verify.py on a few completions (a smoke test, not timed:
  the script itself reports the slow calls)."""
  result = subprocess.run(
      [sys.executable, str(REPO_ROOT / 'scripts' / 'fuzz_verify.py'),
       '--num_completions=300'], capture_output=True, text=True,
      cwd=REPO_ROOT, env=dict(os.environ, PYTHONPATH=str(REPO_ROOT)),
      timeout=300)
  assert result.returncode == 0, result.stderr[-3000:]
  assert 'calls: 900 in' in result.stdout
  assert 'exceptions: 0;' in result.stdout
