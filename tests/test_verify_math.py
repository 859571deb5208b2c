"""Tests of the GSM8K and MATH-style verifiers and their CLI."""

import json
import os
import pathlib
import random
import subprocess
import sys
import time

import pytest

from tpt_jax import sources
from tpt_jax.verify import __main__ as cli
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
           if not math_answers.verify_gsm8k(p.reference_solution,
                                            p.reference_answer).correct]
  assert not wrong
  # The reference may also be the full solution.
  assert all(math_answers.verify_gsm8k(p.reference_solution,
                                       p.reference_solution).correct
             for p in gsm8k_train[:500])


def test_every_gsm8k_train_solution_is_wrong_against_a_changed_answer(
    gsm8k_train):
  accepted = []
  for p in gsm8k_train:
    changed = math_answers.parse_number(p.reference_answer) + 1
    if math_answers.verify_gsm8k(p.reference_solution, str(changed)).correct:
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
    assert checker.start(wait=True)  # Start-up is not part of any call.
    durations = []
    for _ in range(3):
      start = time.perf_counter()
      verdict = math_latex.verify_math(slow, '1', checker=checker)
      durations.append(time.perf_counter() - start)
      assert not verdict.correct
    # The worker that overran is replaced by a spare started in the
    # background, so the 2nd and 3rd calls take the limit, not the limit
    # plus a sympy start-up (before: 1 s, then 11 s every time).
    assert all(0.9 < d < 1.6 for d in durations), durations
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
