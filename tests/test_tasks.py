"""Tests of tpt_jax.tasks: the registry, prompts, config and the demo task."""

import ast
import operator
import re

import pytest

from tpt_jax import config as config_lib
from tpt_jax import tasks
from tpt_jax import verify
from tpt_jax.tasks import demo

_OPS = {ast.Add: operator.add, ast.Sub: operator.sub, ast.Mult: operator.mul}


def _arithmetic(expression: str) -> int:
  """Evaluates +, -, * over integers (the test's own reading of a line)."""
  def walk(node):
    if isinstance(node, ast.Constant) and isinstance(node.value, int):
      return node.value
    if isinstance(node, ast.BinOp) and type(node.op) in _OPS:
      return _OPS[type(node.op)](walk(node.left), walk(node.right))
    raise AssertionError(f'unexpected {ast.dump(node)} in {expression!r}')
  return walk(ast.parse(expression, mode='eval').body)


def _config(**overrides):
  config = tasks.default_config()
  config.num_train_problems = 60
  config.num_test_problems = 30
  config.update(overrides)
  return config


@pytest.fixture(scope='module')
def task():
  return tasks.get_task('demo')


@pytest.fixture(scope='module')
def problems(task):
  config = _config()
  return {split: task.load_problems(split, config) for split in tasks.SPLITS}


# -------------------------------------------------------------- registry ----

def test_get_task_finds_the_demo_module(task):
  assert isinstance(task, tasks.Task)
  assert task.name == 'demo'
  assert 'demo' in tasks.task_names()


def test_get_task_unknown_name_lists_the_known_ones():
  with pytest.raises(ValueError) as error:
    tasks.get_task('gsm9k')
  assert "'gsm9k'" in str(error.value)
  for name in tasks.task_names():
    assert name in str(error.value)


# ---------------------------------------------------------------- config ----

def test_default_config_is_valid_and_plain():
  config = tasks.default_config()
  tasks.validate_config(config)
  assert config.name == 'demo'
  assert config.gsm8k_path is None and config.mbpp_path is None


def test_data_path_placeholders_are_independent_and_typed():
  config = tasks.default_config()
  config.gsm8k_path = '/data/gsm8k'
  assert config.mbpp_path is None
  assert tasks.default_config().gsm8k_path is None
  with pytest.raises(TypeError):
    config.mbpp_path = 3


@pytest.mark.parametrize('overrides, field', [
    (dict(name='gsm9k'), 'config.task.name'),
    (dict(prompt_style='two_shot'), 'config.task.prompt_style'),
    (dict(prompt_style='few_shot'), 'config.task.num_few_shot'),
    (dict(num_few_shot=2), 'config.task.num_few_shot'),
    (dict(prompt_style='few_shot', num_few_shot=-1),
     'config.task.num_few_shot'),
])
def test_validate_config_names_the_field(overrides, field):
  with pytest.raises(config_lib.ConfigError, match=re.escape(field)):
    tasks.validate_config(_config(**overrides))


@pytest.mark.parametrize('overrides, field', [
    (dict(min_steps=3, max_steps=2), 'config.task.max_steps=2'),
    (dict(min_steps=0), 'config.task.min_steps=0'),
    (dict(max_operand=1), 'config.task.max_operand=1'),
    (dict(max_value=1), 'config.task.max_value=1'),
    (dict(num_test_problems=0), 'config.task.num_test_problems=0'),
])
def test_demo_refuses_bad_difficulty_naming_the_field(task, overrides, field):
  with pytest.raises(config_lib.ConfigError, match=re.escape(field)):
    task.load_problems('test', _config(**overrides))


def test_demo_too_small_problem_space_is_an_error(task):
  config = _config(min_steps=1, max_steps=1, max_operand=2, max_value=3,
                   num_train_problems=50)
  with pytest.raises(ValueError, match='distinct train problems'):
    task.load_problems('train', config)


def test_load_problems_unknown_split_is_named(task):
  with pytest.raises(ValueError, match="split='validation'"):
    task.load_problems('validation', _config())


# ----------------------------------------------------------- generation -----

def test_same_seed_same_problems(task, problems):
  again = {split: task.load_problems(split, _config())
           for split in tasks.SPLITS}
  assert again == problems


def test_different_seed_different_problems(task, problems):
  for split in tasks.SPLITS:
    other = task.load_problems(split, _config(seed=1))
    assert ({p.question for p in other} !=
            {p.question for p in problems[split]})


def test_counts_and_unique_ids(problems):
  assert len(problems['train']) == 60
  assert len(problems['test']) == 30
  ids = [p.problem_id for split in tasks.SPLITS for p in problems[split]]
  assert len(set(ids)) == len(ids)


def test_train_and_test_are_disjoint_across_seeds(task):
  configs = [_config(seed=seed, num_train_problems=300, num_test_problems=100)
             for seed in (0, 1)]
  train = [p for c in configs for p in task.load_problems('train', c)]
  test = [p for c in configs for p in task.load_problems('test', c)]
  assert not {p.question for p in train} & {p.question for p in test}
  # Not even the same computation with other names or words.
  assert not {p.solution for p in train} & {p.solution for p in test}


def test_problems_within_a_split_are_distinct(problems):
  for split in tasks.SPLITS:
    solutions = [p.solution for p in problems[split]]
    assert len(set(solutions)) == len(solutions)


def test_answers_recomputed_from_the_structure_are_exact():
  config = _config(num_train_problems=200)
  for word_problem in demo.generate_word_problems('train', 200, 0, config):
    value = word_problem.start
    for step in word_problem.steps:
      if step.kind == 'add':
        value += step.operands[0]
      elif step.kind == 'sub':
        value -= step.operands[0]
      elif step.kind == 'mul':
        value *= step.operands[0]
      elif step.kind == 'add_mul':
        value += step.operands[0] * step.operands[1]
      else:
        assert step.kind == 'sub_mul'
        value -= step.operands[0] * step.operands[1]
    assert word_problem.answer() == value
    assert word_problem.solution().endswith(f'The answer is {value}.')


def test_every_worked_step_is_correct_arithmetic(problems):
  for problem in problems['train'] + problems['test']:
    *step_lines, final_line = problem.solution.split('\n')
    assert final_line == f'The answer is {problem.answer}.'
    value = None
    for line in step_lines:
      assert line.endswith('.'), line
      sides = line[:-1].split(' = ')
      results = {_arithmetic(side) for side in sides}
      assert len(results) == 1, line  # Every '=' holds.
      if value is not None:  # Each step starts from the previous result.
        assert line.startswith(f'{value} '), (value, line)
      value = int(sides[-1])
    assert value == int(problem.answer)


def test_questions_state_their_numbers(problems):
  for problem in problems['train']:
    first_line = problem.solution.split('\n')[0]
    start = first_line.split(' ')[0]
    assert re.search(rf'has {start} [a-z]+\.', problem.question), problem


def test_difficulty_knobs_bound_the_problems(task):
  config = _config(min_steps=2, max_steps=3, max_operand=5, max_value=40)
  for problem in task.load_problems('train', config):
    step_lines = problem.solution.split('\n')[:-1]
    assert 2 <= len(step_lines) <= 3
    for line in step_lines:
      numbers = [int(n) for n in re.findall(r'\d+', line)]
      assert all(1 <= n <= 40 for n in numbers), line
  for word_problem in demo.generate_word_problems('test', 30, 0, config):
    assert 1 <= word_problem.start <= 5
    assert all(1 <= operand <= 5
               for step in word_problem.steps for operand in step.operands)


# ------------------------------------------------------------- verifier -----

def test_every_solution_verifies_and_a_perturbed_answer_fails(task, problems):
  for problem in problems['train'] + problems['test']:
    assert task.verify(problem.solution, problem) == (True, problem.answer)
    wrong = int(problem.answer) + 1
    perturbed = problem.solution.replace(
        f'The answer is {problem.answer}.', f'The answer is {wrong}.')
    assert task.verify(perturbed, problem) == (False, str(wrong))


@pytest.mark.parametrize('completion, expected', [
    ('7 + 3 * 4 = 7 + 12 = 19.\n19 - 5 = 14.\nThe answer is 14.', (True, '14')),
    ('The answer is 14', (True, '14')),
    ('The answer is 014.', (True, '14')),
    ('19 - 5 = 14.', (False, None)),  # No last-number fallback.
    ('the answer is 14.', (False, None)),
    ('The answer: 14.', (False, None)),
    ('The answer is 14.5.', (False, None)),
    ('The answer is 1,4.', (False, None)),
    ('The answer is fourteen.', (False, None)),
    ('The answer is 13.\nThe answer is 14.', (False, '13')),  # First counts.
    ('The answer is 14.\nQuestion: Ava has 2', (True, '14')),
    ('', (False, None)),
])
def test_verifier_is_strict(task, completion, expected):
  problem = tasks.Problem('demo/test/0', 'How many?', '14', None)
  assert task.verify(completion, problem) == expected


@pytest.mark.parametrize('completion, holds', [
    ('7 + 3 * 4 = 7 + 12 = 19.\n19 - 5 = 14.\nThe answer is 14.', True),
    ('7 - 2 * 3 = 7 - 6 = 1.\nThe answer is 1.', True),  # * before -.
    ('3 - 5 = -2.\n-2 + 16 = 14.\nThe answer is 14.', True),
    ('9 + 5 = 14.\nThe answer is 14.\nQuestion: more', True),
    ('9 + 4 = 14.\nThe answer is 14.', False),  # A false equation.
    ('7 + 3 * 4 = 7 + 12 = 20.\nThe answer is 20.', False),  # A false side.
    ('7 + 3 = 10.\n9 + 5 = 14.\nThe answer is 14.', False),  # Not chained.
    ('7 + 3 = 10.\nThe answer is 14.', False),  # Not the last result.
    ('The answer is 14.', False),  # No working.
    ('7 + 7 = 14. The answer is 14.', False),  # Answer not on its own line.
    ('7 + 7 = 14\nThe answer is 14.', False),  # No full stop.
    ('14.\nThe answer is 14.', False),  # Not an equation.
    ('seven + 7 = 14.\nThe answer is 14.', False),
    ('7 + 7 = 14.', False),  # No answer line.
])
def test_worked_lines_hold_only_for_a_derivation(completion, holds):
  assert demo.worked_lines_hold(completion) is holds


def test_every_solution_is_a_derivation_in_every_operation(task):
  config = _config(num_train_problems=200, num_test_problems=60)
  for problem in (task.load_problems('train', config) +
                  task.load_problems('test', config)):
    assert demo.worked_lines_hold(problem.solution), problem.solution


def test_check_worked_lines_rejects_a_lucky_answer_only_when_asked(task):
  problem = tasks.Problem('demo/test/0', 'Start with 9. Add 5.', '14', None)
  completions = ['9 + 5 = 14.\nThe answer is 14.',
                 '9 + 3 = 14.\nThe answer is 14.',  # Right answer, bad work.
                 '9 + 5 = 14.\nThe answer is 13.']
  verify_config = verify.default_config()
  assert task.verify_many(completions, [problem] * 3, verify_config) == [
      (True, '14'), (True, '14'), (False, '13')]
  verify_config.demo.check_worked_lines = True
  assert task.verify_many(completions, [problem] * 3, verify_config) == [
      (True, '14'), (False, '14'), (False, '13')]


def test_demo_majority_vote_uses_integer_answers(task):
  assert task.majority_vote is True
  assert task.normalize_answer('014') == '14'
  assert task.normalize_answer('-3') == '-3'
  with pytest.raises(ValueError, match="answer='x'"):
    task.normalize_answer('x')


def test_problem_code_fields_default_to_none():
  problem = tasks.Problem('x/1', 'q', '1')
  assert problem.test_list == () and problem.test_setup_code == ''


@pytest.mark.parametrize('completion, expected', [
    ('The answer is 14.', 'The answer is 14.'),
    ('The answer is 14.\n\nQuestion: More?\nAnswer:\n1',
     'The answer is 14.\n'),
    ('Question: first line stays', 'Question: first line stays'),
])
def test_cut_at_next_question(completion, expected):
  assert tasks.cut_at_next_question(completion) == expected


# -------------------------------------------------------------- prompts -----

def test_zero_shot_prompt(task, problems):
  problem = problems['test'][0]
  assert task.format_prompt(problem, 'zero_shot') == (
      f'Question: {problem.question}\nAnswer:\n')


def test_zero_shot_cot_prompt_adds_the_instruction(task, problems):
  problem = problems['test'][0]
  assert task.format_prompt(problem, 'zero_shot_cot') == (
      f'Question: {problem.question}\n{task.cot_instruction}\nAnswer:\n')
  assert 'step by step' in task.cot_instruction


def test_few_shot_prompt_shows_train_exemplars_first(task, problems):
  exemplars, _ = tasks.select_exemplars(problems['train'], 2)
  problem = problems['test'][0]
  prompt = task.format_prompt(problem, 'few_shot', exemplars)
  assert prompt == (
      f'Question: {exemplars[0].question}\nAnswer:\n{exemplars[0].solution}\n\n'
      f'Question: {exemplars[1].question}\nAnswer:\n{exemplars[1].solution}\n\n'
      f'Question: {problem.question}\nAnswer:\n')


def test_few_shot_exemplars_come_from_train_and_leave_it(problems):
  train = problems['train']
  exemplars, remaining = tasks.select_exemplars(train, 3)
  train_ids = {p.problem_id for p in train}
  assert all(p.problem_id.startswith('demo/train/') for p in exemplars)
  assert {p.problem_id for p in exemplars} <= train_ids
  assert not {p.problem_id for p in exemplars} & {
      p.problem_id for p in remaining}
  assert len(exemplars) + len(remaining) == len(train)
  assert tasks.select_exemplars(train, 3) == (exemplars, remaining)


def test_select_exemplars_bad_input_is_named(problems):
  with pytest.raises(ValueError, match='num_few_shot=61'):
    tasks.select_exemplars(problems['train'], 61)
  unsolved = [tasks.Problem('x/1', 'q', '1', None)]
  with pytest.raises(ValueError, match="problem_id='x/1'"):
    tasks.select_exemplars(unsolved, 1)


def test_prompt_style_and_exemplars_must_agree(task, problems):
  problem = problems['test'][0]
  exemplars = problems['train'][:1]
  with pytest.raises(ValueError, match="style='zero_shot' takes no exemplars"):
    task.format_prompt(problem, 'zero_shot', exemplars)
  with pytest.raises(ValueError, match='needs at least one exemplar'):
    task.format_prompt(problem, 'few_shot', [])
  with pytest.raises(ValueError, match="style='chat'"):
    task.format_prompt(problem, 'chat')
  with pytest.raises(ValueError, match='one of its own exemplars'):
    task.format_prompt(exemplars[0], 'few_shot', exemplars)


# ----------------------------------------------- tokenizer corpus, warm-up --

def test_corpus_covers_the_vocabulary_and_no_test_problem(problems):
  texts = demo.corpus(0)
  assert texts == demo.corpus(0)
  joined = '\n'.join(texts)
  for word in ('Mia', 'Ravi', 'apples', 'stamp', 'Question:', 'Answer:',
               'The answer is', 'each', 'times as many', '+', '-', '*', '='):
    assert word in joined, word
  for digit in '0123456789':
    assert digit in joined
  test_questions = {p.question for p in demo.TASK.load_problems(
      'test', tasks.default_config())}
  assert not any(question in joined for question in test_questions)


def test_warmup_examples_are_worked_train_problems(task):
  config = _config()
  pairs = demo.warmup_examples(20, 0, config=config)
  assert len(pairs) == 20
  assert pairs == demo.warmup_examples(20, 0, config=config)
  assert pairs != demo.warmup_examples(20, 1, config=config)
  test_questions = {p.question for p in task.load_problems('test', config)}
  for prompt, completion in pairs:
    question = prompt.removeprefix('Question: ').removesuffix('\nAnswer:\n')
    assert question not in test_questions
    assert completion.split('\n')[-1].startswith('The answer is ')
    answer = completion.split('\n')[-1][len('The answer is '):-1]
    problem = tasks.Problem('w', question, answer, completion)
    assert task.verify(completion, problem) == (True, answer)


def test_warmup_examples_skip_the_few_shot_exemplars(task):
  config = _config()
  plain = demo.warmup_examples(5, 0, config=config)
  exemplar_question = plain[0][0].removeprefix('Question: ').removesuffix(
      '\nAnswer:\n')
  exemplars = [tasks.Problem('e/0', exemplar_question, '1', 'The answer is 1.')]
  pairs = demo.warmup_examples(5, 0, config=config, style='few_shot',
                               exemplars=exemplars)
  assert len(pairs) == 5
  for prompt, _ in pairs:
    assert prompt.startswith(f'Question: {exemplar_question}\nAnswer:\n')
    assert prompt.count(exemplar_question) == 1


def test_terse_wording_states_the_same_arithmetic_in_short_sentences(task):
  story = _config(min_steps=2, max_steps=3)
  terse = _config(min_steps=2, max_steps=3, wording='terse')
  story_problems = task.load_problems('test', story)
  terse_problems = task.load_problems('test', terse)
  for story_problem, terse_problem in zip(story_problems, terse_problems):
    # Same problems, same answers and worked solutions; only the question's
    # wording differs.
    assert terse_problem.answer == story_problem.answer
    assert terse_problem.solution == story_problem.solution
    assert terse_problem.question.startswith('Start with ')
    assert terse_problem.question.endswith(' What is the result?')
    assert task.verify(terse_problem.solution, terse_problem) == (
        True, terse_problem.answer)
  first = terse_problems[0].solution.splitlines()[0]
  assert first.split()[0] == terse_problems[0].question.split()[2].rstrip('.')


def test_unknown_wording_is_named(task):
  with pytest.raises(config_lib.ConfigError, match='config.task.wording'):
    task.load_problems('train', _config(wording='poetic'))


def test_a_test_subset_selects_exactly_those_problems(tmp_path):
  config = tasks.default_config()
  problems = [tasks.Problem(f'demo/test/{i}', f'q{i}', str(i))
              for i in range(10)]
  path = tmp_path / 'indices.json'
  path.write_text('[7, 0, 3]')
  config.test_indices_path = str(path)
  assert [p.problem_id for p in tasks.select_test_subset(problems, config)] == [
      'demo/test/7', 'demo/test/0', 'demo/test/3']
  path.write_text('[7, 10]')
  with pytest.raises(config_lib.ConfigError,
                     match=r'indices \[10\] are outside the 10 test problems'):
    tasks.select_test_subset(problems, config)
  config.test_indices_path = None
  assert tasks.select_test_subset(problems, config) == problems


def test_the_instruction_is_configurable_inline_or_from_a_file(tmp_path):
  config = tasks.default_config()
  problem = tasks.Problem('demo/test/0', 'Start with 2.', '2')
  task = tasks.get_task('demo')
  default = task.format_prompt(problem, 'zero_shot_cot')
  assert task.format_prompt(problem, 'zero_shot_cot',
                            instruction=tasks.instruction(config)) == default
  config.instruction = 'End with #### N.'
  assert 'End with #### N.' in task.format_prompt(
      problem, 'zero_shot_cot', instruction=tasks.instruction(config))
  path = tmp_path / 'prompt.txt'
  path.write_text('From a file.\n')
  config.instruction_path = str(path)
  assert tasks.instruction(config) == 'From a file.'
