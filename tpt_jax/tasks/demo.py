"""The built-in demo task: multi-step arithmetic word problems.

Problems are generated, seeded, with known answers, so the CPU demo needs no
download. Each is a few templated English sentences about one person and one
kind of object:

  Mia has 7 apples. She buys 3 bags with 4 apples each. She gives away 5
  apples. How many apples does Mia have now?

with a worked solution in a fixed format a tiny model can learn, one line per
step and a final answer line:

  7 + 3 * 4 = 7 + 12 = 19.
  19 - 5 = 14.
  The answer is 14.

Train and test problems are disjoint by construction: a problem's split is a
hash of its arithmetic (start value and steps, not names or wording), the same
for every seed. So no test computation appears in any seed's train split,
even reworded.

The verifier reads the first 'The answer is N' strictly (no fallback to the
last number) and compares integers exactly. With `config.verify.demo.
check_worked_lines` it also requires the lines before it to be a derivation
(each a true equation starting from the previous line's result, N the last
result), so a right answer reached by wrong working, which a weak model
guesses often among small answers, does not count.

Length: the generator, the worked-line verifier and the task belong together:
the verifier checks exactly the lines the generator writes, and both change
together when a step kind is added.
"""

from __future__ import annotations

import dataclasses
import hashlib
import random
import re
from typing import Sequence

import ml_collections

from tpt_jax import config_fields
from tpt_jax import tasks

NAME = 'demo'
# One bucket in _NUM_BUCKETS of the arithmetic space is test, the rest train.
_NUM_BUCKETS = 4
_TEST_BUCKET = 0
# Problems tried per problem wanted before giving up (a too small space).
_ATTEMPTS_PER_PROBLEM = 200

# (name, subject, object, possessive) pronouns.
_PEOPLE = (
    ('Mia', 'she', 'her', 'her'),
    ('Liam', 'he', 'him', 'his'),
    ('Ava', 'she', 'her', 'her'),
    ('Noah', 'he', 'him', 'his'),
    ('Zoe', 'she', 'her', 'her'),
    ('Omar', 'he', 'him', 'his'),
    ('Lena', 'she', 'her', 'her'),
    ('Ravi', 'he', 'him', 'his'),
)
# (singular, plural).
_OBJECTS = (
    ('apple', 'apples'),
    ('marble', 'marbles'),
    ('sticker', 'stickers'),
    ('pencil', 'pencils'),
    ('shell', 'shells'),
    ('card', 'cards'),
    ('coin', 'coins'),
    ('stamp', 'stamps'),
)
# Sentence templates per kind of step. Fields: {Subject} (capitalised
# pronoun), {object_pronoun}, {possessive}, {objects} (plural noun), {n}
# (a count with its noun, e.g. '1 apple'), {m} and {each} (bare numbers).
_TEMPLATES = {
    # v + n
    'add': (
        '{Subject} finds {n}.',
        '{Subject} buys {n}.',
        'A friend gives {object_pronoun} {n}.',
    ),
    # v - n
    'sub': (
        '{Subject} gives away {n}.',
        '{Subject} loses {n}.',
        '{Subject} gives {n} to a friend.',
    ),
    # v * m
    'mul': (
        '{Subject} ends up with {m} times as many {objects} as before.',
        'The number of {possessive} {objects} grows to {m} times as many.',
    ),
    # v + m * each
    'add_mul': (
        '{Subject} buys {m} bags with {each} {objects} each.',
        '{Subject} gets {m} boxes of {each} {objects}.',
    ),
    # v - m * each
    'sub_mul': (
        '{Subject} gives {m} friends {each} {objects} each.',
        '{Subject} gives {each} {objects} to each of {m} friends.',
    ),
}
STEP_KINDS = tuple(_TEMPLATES)
# The 'terse' wording: one short imperative per step, the same every time, so
# a tiny model finds each operand right after a fixed word (the CPU demo).
_TERSE = {
    'add': 'Add {0}.',
    'sub': 'Subtract {0}.',
    'mul': 'Multiply by {0}.',
    'add_mul': 'Add {0} groups of {1}.',
    'sub_mul': 'Subtract {0} groups of {1}.',
}
WORDINGS = ('story', 'terse')


@dataclasses.dataclass(frozen=True)
class Step:
  """One step: `kind` in STEP_KINDS and its operands.

  add/sub/mul have one operand (n or m); add_mul/sub_mul two (m, each),
  combined as value +/- m * each.
  """
  kind: str
  operands: tuple[int, ...]
  template: int = 0  # Which sentence of _TEMPLATES[kind]; wording only.

  def apply(self, value: int) -> int:
    """The value after this step."""
    if self.kind == 'add':
      return value + self.operands[0]
    if self.kind == 'sub':
      return value - self.operands[0]
    if self.kind == 'mul':
      return value * self.operands[0]
    m, each = self.operands
    return value + m * each if self.kind == 'add_mul' else value - m * each

  def solution_line(self, value: int) -> str:
    """The worked line for this step, starting from `value`."""
    result = self.apply(value)
    if self.kind in ('add', 'sub', 'mul'):
      symbol = {'add': '+', 'sub': '-', 'mul': '*'}[self.kind]
      return f'{value} {symbol} {self.operands[0]} = {result}.'
    m, each = self.operands
    symbol = '+' if self.kind == 'add_mul' else '-'
    return (f'{value} {symbol} {m} * {each} = {value} {symbol} {m * each} = '
            f'{result}.')


@dataclasses.dataclass(frozen=True)
class WordProblem:
  """The structure a demo problem is rendered from."""
  person: int  # Index into _PEOPLE.
  item: int  # Index into _OBJECTS.
  start: int
  steps: tuple[Step, ...]

  def arithmetic_key(self) -> tuple[int, tuple[tuple[str, tuple[int, ...]],
                                                ...]]:
    """What the problem computes, without its wording."""
    return self.start, tuple((step.kind, step.operands) for step in self.steps)

  def answer(self) -> int:
    """The final value: the reference answer."""
    value = self.start
    for step in self.steps:
      value = step.apply(value)
    return value

  def question(self, wording: str = 'story') -> str:
    """The problem statement, one line, in one of WORDINGS."""
    if wording == 'terse':
      return ' '.join([f'Start with {self.start}.',
                       *(_TERSE[step.kind].format(*step.operands)
                         for step in self.steps),
                       'What is the result?'])
    name, subject, object_pronoun, possessive = _PEOPLE[self.person]
    singular, plural = _OBJECTS[self.item]
    count = lambda n: f'{n} {singular if n == 1 else plural}'
    sentences = [f'{name} has {count(self.start)}.']
    for step in self.steps:
      fields = dict(Subject=subject.capitalize(), object_pronoun=object_pronoun,
                    possessive=possessive, objects=plural)
      if step.kind in ('add', 'sub'):
        fields['n'] = count(step.operands[0])
      elif step.kind == 'mul':
        fields['m'] = step.operands[0]
      else:
        fields['m'], fields['each'] = step.operands
      sentences.append(_TEMPLATES[step.kind][step.template].format(**fields))
    sentences.append(f'How many {plural} does {name} have now?')
    return ' '.join(sentences)

  def solution(self) -> str:
    """The worked solution: a line per step, then 'The answer is N.'"""
    lines = []
    value = self.start
    for step in self.steps:
      lines.append(step.solution_line(value))
      value = step.apply(value)
    lines.append(f'The answer is {value}.')
    return '\n'.join(lines)


def split_of(word_problem: WordProblem) -> str:
  """'train' or 'test': a hash of the problem's arithmetic, seed-independent."""
  digest = hashlib.sha256(
      repr(word_problem.arithmetic_key()).encode('utf-8')).digest()
  return 'test' if digest[0] % _NUM_BUCKETS == _TEST_BUCKET else 'train'


def _check_config(config: ml_collections.ConfigDict) -> None:
  """Raises ConfigError naming the first demo field that is not allowed."""
  for field in ('num_train_problems', 'num_test_problems', 'min_steps'):
    if config[field] < 1:
      raise config_fields.ConfigError(
          f'config.task.{field}={config[field]} must be at least 1.')
  if config.max_steps < config.min_steps:
    raise config_fields.ConfigError(
        f'config.task.max_steps={config.max_steps} is less than '
        f'config.task.min_steps={config.min_steps}.')
  if config.max_operand < 2:
    raise config_fields.ConfigError(
        f'config.task.max_operand={config.max_operand} must be at least 2.')
  if config.max_value < 2:
    raise config_fields.ConfigError(
        f'config.task.max_value={config.max_value} must be at least 2.')
  operations(config)
  if config.wording not in WORDINGS:
    raise config_fields.ConfigError(
        f'config.task.wording={config.wording!r} is not one of '
        f'{", ".join(WORDINGS)}.')


def _random_step(rng: random.Random, value: int, max_operand: int,
                 max_value: int, kinds: Sequence[str] = STEP_KINDS) -> Step:
  """A random step of one of `kinds` from `value` keeping the result in
  [1, max_value]."""
  headroom = max_value - value  # How much the value may still grow.
  feasible = []
  if headroom >= 1:
    feasible.append('add')
  if value >= 2:
    feasible.append('sub')
  if 2 * value <= max_value:
    feasible.append('mul')
  if headroom >= 4:
    feasible.append('add_mul')
  if value - 1 >= 4:
    feasible.append('sub_mul')
  feasible = [kind for kind in feasible if kind in kinds]
  if not feasible:  # Only 'mul' was allowed and would overflow: add instead.
    feasible = ['add' if headroom >= 1 else 'sub']
  kind = rng.choice(feasible)
  if kind == 'add':
    operands = (rng.randint(1, min(max_operand, headroom)),)
  elif kind == 'sub':
    operands = (rng.randint(1, min(max_operand, value - 1)),)
  elif kind == 'mul':
    operands = (rng.randint(2, min(max_operand, max_value // value)),)
  else:  # m * each must fit in the headroom (add) or leave >= 1 (sub).
    room = headroom if kind == 'add_mul' else value - 1
    m = rng.randint(2, min(max_operand, room // 2))
    operands = (m, rng.randint(2, min(max_operand, room // m)))
  return Step(kind, operands, rng.randrange(len(_TEMPLATES[kind])))


def operations(config: ml_collections.ConfigDict) -> tuple[str, ...]:
  """The step kinds `config.task.operations` allows (comma-separated)."""
  kinds = tuple(kind.strip() for kind in config.operations.split(',')
                if kind.strip())
  unknown = [kind for kind in kinds if kind not in STEP_KINDS]
  if unknown or not kinds:
    raise config_fields.ConfigError(
        f'config.task.operations={config.operations!r}: name one or more of '
        f'{", ".join(STEP_KINDS)}.')
  return kinds


def _random_word_problem(rng: random.Random,
                         config: ml_collections.ConfigDict) -> WordProblem:
  person = rng.randrange(len(_PEOPLE))
  item = rng.randrange(len(_OBJECTS))
  start = rng.randint(1, min(config.max_operand, config.max_value))
  num_steps = rng.randint(config.min_steps, config.max_steps)
  steps = []
  value = start
  kinds = operations(config)
  for _ in range(num_steps):
    step = _random_step(rng, value, config.max_operand, config.max_value,
                        kinds)
    steps.append(step)
    value = step.apply(value)
  return WordProblem(person, item, start, tuple(steps))


def generate_word_problems(split: str, count: int, seed: int,
                           config: ml_collections.ConfigDict, *,
                           stream: str | None = None) -> list[WordProblem]:
  """`count` distinct problems of `split`, deterministic in (seed, stream).

  Distinct means distinct arithmetic. The list for a larger `count` starts
  with the list for a smaller one.

  Args:
    split: 'train' or 'test'.
    count: how many problems.
    seed: the random seed.
    config: `config.task` (difficulty fields).
    stream: names an independent random stream; defaults to `split`.
  """
  if split not in tasks.SPLITS:
    raise ValueError(
        f'split={split!r} is not one of {", ".join(tasks.SPLITS)}.')
  _check_config(config)
  rng = random.Random(f'tpt_jax.tasks.demo/{stream or split}/{seed}')
  problems: list[WordProblem] = []
  seen: set[tuple] = set()
  for _ in range(_ATTEMPTS_PER_PROBLEM * count + 1000):
    if len(problems) == count:
      break
    word_problem = _random_word_problem(rng, config)
    key = word_problem.arithmetic_key()
    if key in seen or split_of(word_problem) != split:
      continue
    seen.add(key)
    problems.append(word_problem)
  if len(problems) < count:
    raise ValueError(
        f'Found only {len(problems)} distinct {split} problems of the {count} '
        'asked for: raise config.task.max_steps, max_operand or max_value, or '
        'ask for fewer problems.')
  return problems


def _to_problem(word_problem: WordProblem, problem_id: str,
                wording: str) -> tasks.Problem:
  return tasks.Problem(problem_id=problem_id,
                       question=word_problem.question(wording),
                       answer=str(word_problem.answer()),
                       solution=word_problem.solution())


_ANSWER_PHRASE = 'The answer is '
# An integer not continued by more digits, a thousands comma or decimals.
_INTEGER = re.compile(r'-?\d+(?![\d,]|\.\d)')


def extract_answer(completion: str) -> str | None:
  """The integer after the first 'The answer is ', canonical; else None.

  Strict: no other phrasing, no fallback to the last number. Text after the
  answer is ignored (it is where a sampler without a stop string rambles on).
  """
  start = completion.find(_ANSWER_PHRASE)
  if start < 0:
    return None
  match = _INTEGER.match(completion, start + len(_ANSWER_PHRASE))
  return str(int(match.group())) if match else None


# A side of a worked line: integers joined by +, - and *.
_EXPRESSION = re.compile(r'-?\d+(?: [-+*] -?\d+)*')


def _evaluate(expression: str) -> int | None:
  """The value of `expression` (* before + and -), or None if it is not one."""
  if not _EXPRESSION.fullmatch(expression):
    return None
  tokens = expression.split(' ')
  total, sign, term = 0, 1, int(tokens[0])
  for operator, number in zip(tokens[1::2], tokens[2::2]):
    if operator == '*':
      term *= int(number)
    else:
      total += sign * term
      sign, term = (1 if operator == '+' else -1), int(number)
  return total + sign * term


def worked_lines_hold(completion: str) -> bool:
  """Whether the lines before the first 'The answer is N' derive N.

  At least one line; each is `a = b = ... = c.` with every side the same
  value; each line after the first starts from the previous line's result;
  the answer line starts a line and states the last result. The question's
  operands are not checked (a derivation that reorders them is still one).
  """
  start = completion.find(_ANSWER_PHRASE)
  if start <= 0 or completion[start - 1] != '\n':
    return False
  previous = None
  for line in completion[:start - 1].split('\n'):
    if not line.endswith('.'):
      return False
    sides = line[:-1].split(' = ')
    values = {_evaluate(side) for side in sides}
    if len(sides) < 2 or None in values or len(values) != 1:
      return False
    if previous is not None and int(sides[0].split(' ')[0]) != previous:
      return False
    previous = values.pop()
  answer = extract_answer(completion)
  return answer is not None and int(answer) == previous


@dataclasses.dataclass(frozen=True)
class DemoTask:
  """The demo task (see the module docstring)."""
  name: str = NAME
  majority_vote: bool = True
  cot_instruction: str = (
      'Solve it step by step, one step per line, and end with '
      '"The answer is N."')

  def load_problems(self, split: str,
                    config: ml_collections.ConfigDict) -> list[tasks.Problem]:
    """`config.task.num_{split}_problems` problems, seeded by `config.seed`."""
    if split not in tasks.SPLITS:
      raise ValueError(
          f'split={split!r} is not one of {", ".join(tasks.SPLITS)}.')
    count = config[f'num_{split}_problems']
    word_problems = generate_word_problems(split, count, config.seed, config)
    return [_to_problem(word_problem, f'{NAME}/{split}/{index}',
                        config.wording)
            for index, word_problem in enumerate(word_problems)]

  def verify(self, completion: str,
             problem: tasks.Problem) -> tuple[bool, str | None]:
    """(extracted answer == problem.answer as integers, extracted answer)."""
    extracted = extract_answer(completion)
    return (extracted is not None and int(extracted) == int(problem.answer),
            extracted)

  def verify_many(self, completions: Sequence[str],
                  problems: Sequence[tasks.Problem],
                  verify_config: ml_collections.ConfigDict
                  ) -> list[tuple[bool, str | None]]:
    """`verify` of each pair; with `verify_config.demo.check_worked_lines`
    a correct answer also needs `worked_lines_hold`."""
    check_lines = bool(verify_config.demo.check_worked_lines)
    verdicts = []
    for completion, problem in zip(completions, problems, strict=True):
      correct, extracted = self.verify(completion, problem)
      if correct and check_lines:
        correct = worked_lines_hold(completion)
      verdicts.append((correct, extracted))
    return verdicts

  def format_prompt(self, problem: tasks.Problem, style: str,
                    exemplars: Sequence[tasks.Problem] = (),
                    instruction: str | None = None) -> str:
    return tasks.render_prompt(problem, style, exemplars,
                               cot_instruction=instruction or self.cot_instruction)

  def normalize_answer(self, answer: str) -> str:
    """The integer `answer` states, canonical ('014' -> '14'), for maj@k."""
    try:
      return str(int(answer))
    except (TypeError, ValueError):
      raise ValueError(
          f'answer={answer!r} is not an integer answer of the demo task.'
      ) from None

  def corpus(self, config: ml_collections.ConfigDict) -> list[str]:
    """See the module function `corpus` (seeded by `config.seed`)."""
    return corpus(config.seed, config=config)

  def warmup_examples(self, num_examples: int, seed: int,
                      config: ml_collections.ConfigDict, *, style: str,
                      exemplars: Sequence[tasks.Problem] = ()
                      ) -> list[tuple[str, str]]:
    """See the module function `warmup_examples`."""
    return warmup_examples(num_examples, seed, config=config, style=style,
                           exemplars=exemplars)


TASK = DemoTask()


def warmup_examples(n: int, seed: int, *,
                    config: ml_collections.ConfigDict | None = None,
                    style: str = 'zero_shot',
                    exemplars: Sequence[tasks.Problem] = ()
                    ) -> list[tuple[str, str]]:
  """`n` worked (prompt, completion) pairs from the train split.

  For the warm-up fine-tune that makes the model weak but not at zero before
  round 0. Drawn from their own random stream of the train split (so they may
  share problems with `load_problems('train')`, never with test); the
  completion is the worked solution.

  Args:
    n: how many pairs.
    seed: the random seed.
    config: `config.task` for difficulty; None means `tasks.default_config()`.
    style: the prompt style, as in the TPT rounds.
    exemplars: the few-shot exemplars, for style 'few_shot'; problems asking
      the same question are left out.
  """
  config = tasks.default_config() if config is None else config
  exemplar_questions = {exemplar.question for exemplar in exemplars}
  # Draw enough spare problems to replace the ones that are exemplars.
  word_problems = generate_word_problems(
      'train', n + len(exemplar_questions), seed, config, stream='warmup')
  problems = [
      _to_problem(word_problem, f'{NAME}/warmup/{index}', config.wording)
      for index, word_problem in enumerate(word_problems)
      if word_problem.question(config.wording) not in exemplar_questions][:n]
  return [(TASK.format_prompt(problem, style, exemplars), problem.solution)
          for problem in problems]


def corpus(seed: int, *, config: ml_collections.ConfigDict | None = None,
           num_problems: int = 200) -> list[str]:
  """Texts to train the demo's sentencepiece tokenizer on.

  Every template with every name and object, every number up to max_value,
  the prompt scaffolding of every style, and `num_problems` full train
  problems with their solutions. Never test problems.
  """
  config = tasks.default_config() if config is None else config
  _check_config(config)
  rng = random.Random(f'tpt_jax.tasks.demo/corpus/{seed}')
  texts = [' '.join(str(i) for i in range(config.max_value + 1)),
           '0 1 2 3 4 5 6 7 8 9 + - * = .',
           'Start with 1. What is the result?',
           *(template.format(2, 3) for template in _TERSE.values())]
  for name, subject, object_pronoun, possessive in _PEOPLE:
    for singular, plural in _OBJECTS:
      texts.append(f'{name} has 1 {singular}. {name} has 2 {plural}. '
                   f'How many {plural} does {name} have now?')
      for kind, templates in _TEMPLATES.items():
        for template in templates:
          texts.append(template.format(
              Subject=subject.capitalize(), object_pronoun=object_pronoun,
              possessive=possessive, objects=plural,
              n=f'{rng.randint(2, 9)} {plural}', m=rng.randint(2, 9),
              each=rng.randint(2, 9)))
  for word_problem in generate_word_problems(
      'train', num_problems, seed, config, stream='corpus'):
    problem = _to_problem(word_problem, 'corpus', config.wording)
    texts.append(TASK.format_prompt(problem, 'zero_shot_cot'))
    texts.append(problem.solution)
  return texts
