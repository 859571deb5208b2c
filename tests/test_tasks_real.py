"""Tests of the real tasks, gsm8k and mbpp, on the shared data files.

The data lies in `../shared/data` beside the repo (the tasks' default). MBPP
tests run only a few sandboxes, in one batch.
"""

import dataclasses
import json
import re

import pytest

from tpt_jax import config as config_lib
from tpt_jax import sources
from tpt_jax import tasks
from tpt_jax import verify
from tpt_jax.tasks import mbpp


def _config(name, **overrides):
  """`config.task` for task `name`, with `sources` as the full config has."""
  config = tasks.default_config()
  config.name = name
  config.sources = sources.default_config()
  config.update(overrides)
  return config


def _verify_config(**math):
  config = verify.default_config()
  config.code.num_workers = 2
  config.math.update(math)
  return config


@pytest.fixture(scope='module')
def gsm8k_problems():
  task = tasks.get_task('gsm8k')
  return {split: task.load_problems(split, _config('gsm8k'))
          for split in tasks.SPLITS}


@pytest.fixture(scope='module')
def mbpp_problems():
  task = tasks.get_task('mbpp')
  return {split: task.load_problems(split, _config('mbpp'))
          for split in (*tasks.SPLITS, mbpp.PROMPT_SPLIT)}


# -------------------------------------------------------------- registry ----

def test_task_names_lists_the_real_tasks():
  assert tasks.task_names() == ['code_contests', 'demo', 'gsm8k', 'mbpp']
  for name in tasks.task_names():
    task = tasks.get_task(name)
    assert isinstance(task, tasks.Task)
    assert isinstance(task.majority_vote, bool)


def test_majority_vote_flags():
  assert tasks.get_task('demo').majority_vote
  assert tasks.get_task('gsm8k').majority_vote
  assert not tasks.get_task('mbpp').majority_vote
  assert not tasks.get_task('code_contests').majority_vote


def test_verify_all_needs_one_problem_per_completion():
  problem = tasks.Problem('demo/test/0', 'How many?', '14', None)
  with pytest.raises(ValueError, match='2 completions but 1 problems'):
    tasks.verify_all(tasks.get_task('demo'), ['a', 'b'], [problem],
                     _verify_config())


def test_verify_all_uses_the_demo_verifier_and_its_settings():
  task = tasks.get_task('demo')
  problem = tasks.Problem('demo/test/0', 'How many?', '14', None)
  completions = ['The answer is 14.', 'The answer is 13.', '',
                 '7 + 7 = 14.\nThe answer is 14.']
  assert tasks.verify_all(task, completions, [problem] * 4,
                          _verify_config()) == [
                              (True, '14'), (False, '13'), (False, None),
                              (True, '14')]
  checked = _verify_config()
  checked.demo.check_worked_lines = True
  assert tasks.verify_all(task, completions, [problem] * 4, checked) == [
      (False, '14'), (False, '13'), (False, None), (True, '14')]


# ----------------------------------------------------------------- gsm8k ----

def test_gsm8k_counts_and_ids(gsm8k_problems):
  assert len(gsm8k_problems['train']) == 7473
  assert len(gsm8k_problems['test']) == 1319
  for split, problems in gsm8k_problems.items():
    assert [p.problem_id for p in problems] == [
        f'gsm8k/{split}/{i}' for i in range(len(problems))]


def test_gsm8k_solutions_are_reformatted(gsm8k_problems):
  first = gsm8k_problems['train'][0]
  assert first.answer == '72'
  assert first.solution == (
      'Natalia sold 48/2 = 24 clips in May.\n'
      'Natalia sold 48+24 = 72 clips altogether in April and May.\n'
      'The answer is 72.')
  for problem in gsm8k_problems['train'] + gsm8k_problems['test']:
    assert '<<' not in problem.solution and '####' not in problem.solution
    assert problem.solution.split('\n')[-1] == (
        f'The answer is {problem.answer}.')
    assert re.fullmatch(r'-?\d+(\.\d+)?', problem.answer), problem


def test_gsm8k_answers_are_canonical_numbers(gsm8k_problems):
  # GSM8K writes some answers with thousands separators ('#### 1,200').
  raw = sources.load_gsm8k(tasks.SHARED_DATA_DIR / 'gsm8k', 'train')
  with_comma = [(r, p) for r, p in zip(raw, gsm8k_problems['train'])
                if ',' in r.answer]
  assert with_comma
  for reference, problem in with_comma:
    assert problem.answer == reference.answer.replace(',', '')


def test_gsm8k_every_solution_verifies_and_a_perturbed_answer_fails(
    gsm8k_problems):
  task = tasks.get_task('gsm8k')
  problems = gsm8k_problems['train'] + gsm8k_problems['test']
  solutions = [p.solution for p in problems]
  assert tasks.verify_all(task, solutions, problems, _verify_config()) == [
      (True, p.answer) for p in problems]
  perturbed = []
  for problem in problems:
    wrong = str(int(problem.answer) + 1)
    perturbed.append(problem.solution.replace(
        f'The answer is {problem.answer}.', f'The answer is {wrong}.'))
  results = tasks.verify_all(task, perturbed, problems, _verify_config())
  assert results == [(False, str(int(p.answer) + 1)) for p in problems]


def test_gsm8k_verify_many_honours_last_number_fallback():
  task = tasks.get_task('gsm8k')
  problem = tasks.Problem('gsm8k/test/x', 'How many?', '72', None)
  completion = 'She sold 48 + 24 = 72 clips.'
  assert tasks.verify_all(task, [completion], [problem], _verify_config(
      last_number_fallback=True)) == [(True, '72')]
  assert tasks.verify_all(task, [completion], [problem], _verify_config(
      last_number_fallback=False)) == [(False, None)]
  assert task.verify(completion, problem) == (True, '72')  # The default.


def test_gsm8k_ignores_made_up_questions_after_the_answer():
  task = tasks.get_task('gsm8k')
  problem = tasks.Problem('gsm8k/test/x', 'How many?', '72', None)
  completion = ('48 + 24 = 72.\nThe answer is 72.\n\n'
                'Question: How many eggs?\nAnswer:\nThe answer is 5.')
  assert task.verify(completion, problem) == (True, '72')


def test_gsm8k_prompts(gsm8k_problems):
  task = tasks.get_task('gsm8k')
  problem = gsm8k_problems['test'][0]
  assert task.format_prompt(problem, 'zero_shot') == (
      f'Question: {problem.question}\nAnswer:\n')
  cot = task.format_prompt(problem, 'zero_shot_cot')
  assert cot == (f'Question: {problem.question}\n{task.cot_instruction}\n'
                 'Answer:\n')
  assert 'The answer is N.' in task.cot_instruction
  exemplars, _ = tasks.select_exemplars(gsm8k_problems['train'], 2)
  assert task.format_prompt(problem, 'few_shot', exemplars) == (
      f'Question: {exemplars[0].question}\nAnswer:\n{exemplars[0].solution}\n\n'
      f'Question: {exemplars[1].question}\nAnswer:\n{exemplars[1].solution}\n\n'
      f'Question: {problem.question}\nAnswer:\n')


def test_gsm8k_exemplars_leave_the_train_split(gsm8k_problems):
  task = tasks.get_task('gsm8k')
  train = gsm8k_problems['train']
  exemplars, remaining = tasks.select_exemplars(train, 4)
  assert [p.problem_id for p in exemplars] == [
      f'gsm8k/train/{i}' for i in range(4)]
  assert len(remaining) == len(train) - 4
  assert not {p.problem_id for p in exemplars} & {
      p.problem_id for p in remaining}
  with pytest.raises(ValueError, match='one of its own exemplars'):
    task.format_prompt(exemplars[0], 'few_shot', exemplars)


@pytest.mark.parametrize('answer, expected', [
    ('72', '72'), ('072', '72'), ('1,200', '1200'), ('$18.00', '18'),
    ('0.50', '0.5'), ('-3', '-3'), ('3/4', '0.75'),
])
def test_gsm8k_normalize_answer(answer, expected):
  assert tasks.get_task('gsm8k').normalize_answer(answer) == expected


def test_normalize_answer_refuses_non_answers_naming_them():
  with pytest.raises(ValueError, match="answer='five'"):
    tasks.get_task('gsm8k').normalize_answer('five')
  with pytest.raises(ValueError, match="answer='1.5'"):
    tasks.get_task('demo').normalize_answer('1.5')
  assert tasks.get_task('demo').normalize_answer('014') == '14'


def test_gsm8k_missing_path_names_the_field(tmp_path, monkeypatch):
  task = tasks.get_task('gsm8k')
  missing = str(tmp_path / 'nowhere')
  with pytest.raises(config_lib.ConfigError,
                     match=re.escape(f'config.task.gsm8k_path={missing!r}')):
    task.load_problems('train', _config('gsm8k', gsm8k_path=missing))
  with pytest.raises(config_lib.ConfigError,
                     match=r'config\.task\.gsm8k_path=.*without test\.jsonl'):
    task.load_problems('test', _config('gsm8k', gsm8k_path=str(tmp_path)))
  monkeypatch.setattr(tasks, 'SHARED_DATA_DIR', tmp_path / 'no_shared')
  with pytest.raises(config_lib.ConfigError,
                     match=r'config\.task\.gsm8k_path is not set'):
    task.load_problems('train', _config('gsm8k'))


def test_gsm8k_bad_split_is_named():
  with pytest.raises(ValueError, match="split='prompt'"):
    tasks.get_task('gsm8k').load_problems('prompt', _config('gsm8k'))


def test_gsm8k_reads_a_file_and_respects_on_malformed_line(tmp_path):
  task = tasks.get_task('gsm8k')
  path = tmp_path / 'mine.jsonl'
  good = {'question': 'How many?', 'answer': 'One <<1+1=2>>2 more.\n#### 2'}
  path.write_text(json.dumps(good) + '\n{"question": "broken"\n')
  with pytest.raises(sources.MalformedInputError, match='mine.jsonl:2'):
    task.load_problems('train', _config('gsm8k', gsm8k_path=str(path)))
  config = _config('gsm8k', gsm8k_path=str(path))
  config.sources.on_malformed_line = 'skip'
  expected = [tasks.Problem('gsm8k/train/0', 'How many?', '2',
                            'One 2 more.\nThe answer is 2.', source='gsm8k',
                            raw_answer='2')]
  assert task.load_problems('train', config) == expected
  # A final answer that is not a number is malformed too.
  not_a_number = {'question': 'Who?', 'answer': 'Ann.\n#### Ann'}
  path.write_text(json.dumps(good) + '\n' + json.dumps(not_a_number) + '\n')
  with pytest.raises(sources.MalformedInputError, match='mine.jsonl:2'):
    task.load_problems('train', _config('gsm8k', gsm8k_path=str(path)))
  assert task.load_problems('train', config) == expected


def test_gsm8k_answer_that_is_not_a_number_names_file_and_line(tmp_path,
                                                               caplog):
  """Issue 18: `#### Bob` on line 4 is named as FILE:4, not by problem id."""
  task = tasks.get_task('gsm8k')
  path = tmp_path / 'train.jsonl'
  good = {'question': 'How many?', 'answer': 'One more.\n#### 2'}
  bad = {'question': 'Who?', 'answer': 'It was Bob.\n#### Bob'}
  path.write_text(''.join(json.dumps(row) + '\n'
                          for row in (good, good, good, bad, good)))
  with pytest.raises(sources.MalformedInputError) as error:
    task.load_problems('train', _config('gsm8k', gsm8k_path=str(path)))
  assert str(error.value) == (
      f"{path}:4: GSM8K answer '#### Bob' is not a number")
  config = _config('gsm8k', gsm8k_path=str(path))
  config.sources.on_malformed_line = 'skip'
  caplog.clear()
  with caplog.at_level('WARNING'):
    problems = task.load_problems('train', config)
  # Skipped, counted and located; the ids after it keep their positions.
  assert [p.problem_id for p in problems] == [
      'gsm8k/train/0', 'gsm8k/train/1', 'gsm8k/train/2', 'gsm8k/train/4']
  assert f'Skipped 1 malformed line(s) of {path}' in caplog.text
  assert f"{path}:4: GSM8K answer '#### Bob' is not a number" in caplog.text


def test_gsm8k_keeps_its_raw_answer_text(gsm8k_problems):
  """`raw_answer` is GSM8K's text after '####'; `answer` its canonical form.

  They differ on exactly 14 of the 1,319 test problems (79 of the 7,473
  train ones), all for one reason: GSM8K writes thousands separators
  ('#### 2,125' -> answer '2125'). Every other answer is already canonical
  (no leading zeros, signs, decimals or units in GSM8K's answers).
  """
  for split, count in (('test', 14), ('train', 79)):
    differ = [p for p in gsm8k_problems[split] if p.raw_answer != p.answer]
    assert len(differ) == count, split
    for problem in differ:
      assert ',' in problem.raw_answer
      assert problem.raw_answer.replace(',', '') == problem.answer
  assert all(p.raw_answer for split in tasks.SPLITS
             for p in gsm8k_problems[split])


def test_paper_strict_compares_with_gsm8ks_own_answer_text(gsm8k_problems):
  """The released protocol: `#### 1,200` is right for GSM8K's '1,200' and
  `#### 1200` is not (a miss of the protocol, reproduced); the default
  grader accepts both."""
  task = tasks.get_task('gsm8k')
  with_comma = next(p for p in gsm8k_problems['test']
                    if p.raw_answer != p.answer)
  assert with_comma.raw_answer == '2,125' and with_comma.answer == '2125'
  problem = dataclasses.replace(with_comma, answer='1200', raw_answer='1,200')
  completions = ['So 1,200 in all.\n#### 1,200', 'So 1200 in all.\n#### 1200']
  for grader, expected in (('paper_strict', [True, False]),
                           ('default', [True, True])):
    verdicts = task.verify_many(completions, [problem] * 2, _verify_config(),
                                grader=grader)
    assert [correct for correct, _ in verdicts] == expected, grader
  # A real problem: its GSM8K text decides for paper_strict.
  verdicts = task.verify_many(
      ['#### 2,125', '#### 2125'], [with_comma] * 2, _verify_config(),
      grader='paper_strict')
  assert [correct for correct, _ in verdicts] == [True, False]
  # Without a raw answer (another source), the canonical answer is the gold.
  plain = dataclasses.replace(problem, raw_answer='')
  verdicts = task.verify_many(completions, [plain] * 2, _verify_config(),
                              grader='paper_strict')
  assert [correct for correct, _ in verdicts] == [False, True]


@pytest.mark.parametrize('split', ['train', 'test'])
def test_gsm8k_empty_split_file_is_an_error_naming_it(tmp_path, split):
  good = json.dumps({'question': 'How many?', 'answer': 'Two.\n#### 2'})
  for name in ('train', 'test'):
    (tmp_path / f'{name}.jsonl').write_text('' if name == split else good)
  config = _config('gsm8k', gsm8k_path=str(tmp_path))
  config.sources.on_malformed_line = 'skip'  # Not a malformed line.
  with pytest.raises(sources.MalformedInputError,
                     match=re.escape(f'{tmp_path / split}.jsonl: the file '
                                     'holds no records.')):
    tasks.get_task('gsm8k').load_problems(split, config)


@pytest.mark.parametrize('spec, data_dir', [
    ('tfds', None), ('tfds:/data/tfds', '/data/tfds')])
def test_gsm8k_tfds_spec_goes_to_the_tfds_loader(spec, data_dir, monkeypatch):
  calls = []
  def fake_load(path_or_tfds, split, *, on_error, tfds_data_dir=None,
                convert):
    calls.append((path_or_tfds, split, on_error, tfds_data_dir))
    return [convert(sources.Problem('gsm8k/test/0', 'Q?', '5',
                                    'So 5.\n#### 5'))]
  monkeypatch.setattr(sources, 'load_gsm8k', fake_load)
  problems = tasks.get_task('gsm8k').load_problems(
      'test', _config('gsm8k', gsm8k_path=spec))
  assert calls == [('tfds', 'test', 'raise', data_dir)]
  assert problems[0].solution == 'So 5.\nThe answer is 5.'


# ------------------------------------------------------------------ mbpp ----

def test_mbpp_split_sizes_and_ids(mbpp_problems):
  assert len(mbpp_problems['train']) == 374
  assert len(mbpp_problems['test']) == 500
  assert len(mbpp_problems['prompt']) == 10
  for split, (low, high) in (('train', (601, 974)), ('test', (11, 510)),
                             ('prompt', (1, 10))):
    assert [p.problem_id for p in mbpp_problems[split]] == [
        f'mbpp/{i}' for i in range(low, high + 1)]


def test_mbpp_problems_carry_code_and_tests(mbpp_problems):
  for problem in mbpp_problems['train'] + mbpp_problems['test']:
    assert problem.answer == problem.solution
    assert '\r' not in problem.solution
    assert problem.test_list and all(
        t.startswith('assert') for t in problem.test_list)


def test_mbpp_bad_split_is_named():
  with pytest.raises(ValueError, match="split='validation'"):
    tasks.get_task('mbpp').load_problems('validation', _config('mbpp'))


def test_mbpp_prompt_shows_exactly_the_first_test(mbpp_problems):
  task = tasks.get_task('mbpp')
  for problem in mbpp_problems['test'][:20]:
    prompt = task.format_prompt(problem, 'zero_shot')
    assert prompt == (
        'Question: You are an expert Python programmer, and here is your '
        f'task: {problem.question} Your code should pass this test:\n\n'
        f'{problem.test_list[0]}\nAnswer:\n')
    for test in problem.test_list[1:]:
      assert test not in prompt


def test_mbpp_few_shot_prompt_shows_exemplar_code(mbpp_problems):
  task = tasks.get_task('mbpp')
  exemplars = mbpp_problems['prompt'][:2]
  problem = mbpp_problems['test'][0]
  prompt = task.format_prompt(problem, 'few_shot', exemplars)
  shots = prompt.split('\n\nQuestion: ')
  assert len(shots) == 3
  for shot, exemplar in zip(shots, exemplars):
    assert shot.endswith(f'{exemplar.test_list[0]}\nAnswer:\n'
                         f'{exemplar.solution}')
  assert prompt.endswith(task.format_prompt(problem, 'zero_shot'))
  with pytest.raises(ValueError, match='one of its own exemplars'):
    task.format_prompt(exemplars[0], 'few_shot', exemplars)


def _wrong_program(problem):
  """Defines the tested function to return None."""
  name = re.match(r'assert\s+(?:not\s+)?\(?\s*([A-Za-z_]\w*)\s*\(',
                  problem.test_list[0]).group(1)
  return f'def {name}(*args, **kwargs):\n  return None\n'


def test_mbpp_verify_runs_all_tests_in_the_sandbox(mbpp_problems):
  task = tasks.get_task('mbpp')
  references = mbpp_problems['test'][:3] + mbpp_problems['train'][:2]
  add = tasks.Problem('mbpp/add', 'Add two numbers.', '', '',
                      test_list=('assert add(1, 2) == 3',
                                 'assert add(2, 2) == 4'))
  setup = tasks.Problem('mbpp/setup', 'Return K.', '', '',
                        test_list=('assert get() == K',),
                        test_setup_code='K = 5')
  cases = [(p.solution, p, (True, 'passed')) for p in references]
  cases += [(_wrong_program(p), p, (False, 'failed')) for p in references[:2]]
  cases += [
      # Passes the first test only, the one the prompt shows.
      ('def add(a, b):\n  return 3\n', add, (False, 'failed')),
      ('Sure:\n```python\ndef add(a, b):\n  return a + b\n```\nDone.', add,
       (True, 'passed')),
      ('def add(a, b):\n  return a + b\n\nQuestion: Write a\nAnswer:\n', add,
       (True, 'passed')),
      ('def get():\n  return 5\n', setup, (True, 'passed')),
  ]
  results = tasks.verify_all(task, [c[0] for c in cases],
                             [c[1] for c in cases], _verify_config())
  assert results == [c[2] for c in cases]


def test_mbpp_normalize_answer_is_the_identity():
  assert tasks.get_task('mbpp').normalize_answer('passed') == 'passed'


def test_mbpp_paths(tmp_path, mbpp_problems):
  task = tasks.get_task('mbpp')
  file = tasks.SHARED_DATA_DIR / 'mbpp' / 'mbpp.jsonl'
  assert task.load_problems('test', _config('mbpp', mbpp_path=str(file))) == (
      mbpp_problems['test'])
  with pytest.raises(config_lib.ConfigError,
                     match=r'config\.task\.mbpp_path=.*without mbpp\.jsonl'):
    task.load_problems('test', _config('mbpp', mbpp_path=str(tmp_path)))
  missing = str(tmp_path / 'nowhere.jsonl')
  with pytest.raises(config_lib.ConfigError,
                     match=re.escape(f'config.task.mbpp_path={missing!r}')):
    task.load_problems('test', _config('mbpp', mbpp_path=missing))
