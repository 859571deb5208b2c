"""Tasks: where problems come from, how prompts look, how answers are checked.

A task is one module in this package (e.g. `tpt_jax/tasks/demo.py`) that
defines `TASK`, an object following the `Task` protocol; its module name is
the task's name in `config.task.name`. Adding a task means adding one such
module: `get_task` finds it by name, nothing else needs registering. Helper
modules that are not tasks start with an underscore.

This module also holds what every task shares: the `Problem` record, the
prompt styles and their layout, the choice of few-shot exemplars, batch
verification (`verify_all`), the location of the shared data files and the
`config.task` defaults.
"""

from __future__ import annotations

import importlib
import json
import pathlib
import pkgutil
import random
from typing import Protocol, Sequence, runtime_checkable

import ml_collections

from tpt_jax import config_fields
from tpt_jax.types import Problem

SPLITS = ('train', 'test')
PROMPT_STYLES = ('zero_shot', 'zero_shot_cot', 'few_shot')
# The chain-of-thought instruction of the 'zero_shot_cot' style, unless a task
# passes its own (Kojima et al. 2022).
COT_INSTRUCTION = "Let's think step by step."
# Where the real tasks' data lies by default: `../shared/data` beside the repo.
SHARED_DATA_DIR = (
    pathlib.Path(__file__).resolve().parents[2].parent / 'shared' / 'data')


@runtime_checkable
class Task(Protocol):
  """What a run needs from a task: the seam every task plugs into.

  Besides problems, prompts and verdicts, a task gives the texts to build a
  toy tokenizer from (`corpus`) and worked examples for the warm-up
  fine-tune (`warmup_examples`); `tasks.worked_examples` and
  `tasks.solutions_corpus` implement both for any task whose train problems
  carry worked solutions.
  """

  name: str
  # Whether maj@k applies: the task's answers can be voted on (code cannot).
  majority_vote: bool

  def load_problems(self, split: str,
                    config: ml_collections.ConfigDict) -> list[Problem]:
    """The problems of `split` ('train' or 'test'), in a fixed order."""

  def verify(self, completion: str,
             problem: Problem) -> tuple[bool, str | None]:
    """(whether `completion` is correct, the answer extracted from it), with
    the verifier's default settings."""

  def verify_many(self, completions: Sequence[str],
                  problems: Sequence[Problem],
                  verify_config: ml_collections.ConfigDict
                  ) -> list[tuple[bool, str | None]]:
    """`verify` of each pair, honouring `config.verify` (may run in
    parallel)."""

  def format_prompt(self, problem: Problem, style: str,
                    exemplars: Sequence[Problem] = (),
                    instruction: str | None = None) -> str:
    """The prompt for `problem` in one of PROMPT_STYLES; `instruction`
    replaces the task's reasoning instruction of 'zero_shot_cot'."""

  def normalize_answer(self, answer: str) -> str:
    """The canonical form of an extracted answer, for majority voting."""

  def corpus(self, config: ml_collections.ConfigDict) -> list[str]:
    """Texts (never test problems) to train a toy tokenizer on."""

  def warmup_examples(self, num_examples: int, seed: int,
                      config: ml_collections.ConfigDict, *, style: str,
                      exemplars: Sequence[Problem] = ()
                      ) -> list[tuple[str, str]]:
    """`num_examples` (prompt, worked completion) pairs from the train split
    (never test), for the warm-up fine-tune before round 0."""


def default_config() -> ml_collections.ConfigDict:
  """Defaults of `config.task` (the CPU demo's)."""
  config = ml_collections.ConfigDict()
  # Which task: the name of a module in tpt_jax/tasks (see task_names()).
  config.name = 'demo'
  # Seed of generated problems (the demo task); each seed gives other problems.
  config.seed = 0
  # How many problems each split has (generated tasks only).
  config.num_train_problems = 256
  config.num_test_problems = 128
  # Demo difficulty: steps per problem, largest operand, largest intermediate
  # value (operands start at 1; every intermediate value is >= 1).
  config.min_steps = 2
  config.max_steps = 4
  config.max_operand = 9
  config.max_value = 100
  # Demo wording: 'story' (sentences about a person and objects) or 'terse'
  # ('Start with 7. Add 3. ... What is the result?', learnt fastest).
  config.wording = 'story'
  # Demo step kinds, comma-separated: add, sub, mul (v * m), add_mul
  # (v + m * each), sub_mul (v - m * each).
  config.operations = 'add,sub,mul,add_mul,sub_mul'
  # One of PROMPT_STYLES. 'few_shot' needs num_few_shot > 0: that many train
  # problems become exemplars and are excluded from training.
  config.prompt_style = 'zero_shot'
  config.num_few_shot = 0
  # Local data files of the real tasks (None until those tasks are used).
  # The reasoning instruction of 'zero_shot_cot' (None: the task's own),
  # given here or read from a text file (instruction_path wins).
  config.instruction = config_fields.optional(str)
  config.instruction_path = config_fields.optional(str)
  # Evaluate on a fixed subset of the test split: a JSON file with a list of
  # 0-based indices into the task's test problems (e.g. the TPT authors'
  # 500 GSM8K problems, ../shared/data/gsm8k/tpt_test500_indices.json).
  config.test_indices_path = config_fields.optional(str)
  config.gsm8k_path = config_fields.optional(str)
  config.mbpp_path = config_fields.optional(str)
  return config


def task_sections() -> dict[str, ml_collections.ConfigDict]:
  """`config.task.<name>` of each task module with a `default_config()`
  (its own fields, e.g. `config.task.code_contests.path`)."""
  sections = {}
  for name in task_names():
    module = importlib.import_module(f'{__name__}.{name}')
    if hasattr(module, 'default_config'):
      sections[name] = module.default_config()
  return sections


def validate_config(config: ml_collections.ConfigDict) -> None:
  """Raises ConfigError naming the first `config.task` field not allowed.

  Checks what every task shares, and the chosen task's own section with its
  module's `validate_config` (when it has one).
  """
  if config.name not in task_names():
    raise config_fields.ConfigError(
        f'config.task.name={config.name!r} is not a known task; known tasks: '
        f'{", ".join(task_names())}.')
  if config.prompt_style not in PROMPT_STYLES:
    raise config_fields.ConfigError(
        f'config.task.prompt_style={config.prompt_style!r} is not one of '
        f'{", ".join(PROMPT_STYLES)}.')
  if config.num_few_shot < 0:
    raise config_fields.ConfigError(
        f'config.task.num_few_shot={config.num_few_shot} must not be '
        'negative.')
  module = importlib.import_module(f'{__name__}.{config.name}')
  if hasattr(module, 'validate_config') and config.get(config.name):
    module.validate_config(config[config.name])
  if (config.prompt_style == 'few_shot') != (config.num_few_shot > 0):
    raise config_fields.ConfigError(
        f'config.task.num_few_shot={config.num_few_shot} does not fit '
        f'config.task.prompt_style={config.prompt_style!r}: exemplars are used '
        "with 'few_shot' only, and 'few_shot' needs at least one.")


def task_names() -> list[str]:
  """Names of the tasks in this package, sorted."""
  return sorted(module.name for module in pkgutil.iter_modules(__path__)
                if not module.name.startswith('_'))


def get_task(name: str) -> Task:
  """The task named `name` (its module's `TASK`)."""
  known = task_names()
  if name not in known:
    raise ValueError(
        f'Unknown task name={name!r}; known tasks: {", ".join(known)}.')
  module = importlib.import_module(f'{__name__}.{name}')
  task = getattr(module, 'TASK', None)
  if not isinstance(task, Task) or task.name != name:
    raise TypeError(
        f'Module {module.__name__} must define TASK, a Task named {name!r}.')
  return task


def verify_all(task: Task, completions: Sequence[str],
               problems: Sequence[Problem],
               verify_config: ml_collections.ConfigDict
               ) -> list[tuple[bool, str | None]]:
  """(correct, extracted answer) of each completion against its problem.

  Args:
    task: the task.
    completions: model outputs, one per problem.
    problems: `problems[i]` is the problem `completions[i]` answers.
    verify_config: `config.verify`.

  Returns:
    One (correct, extracted answer) pair per completion, in order.
  """
  if len(completions) != len(problems):
    raise ValueError(
        f'verify_all got {len(completions)} completions but {len(problems)} '
        'problems; they must pair up one to one.')
  results = list(task.verify_many(completions, problems, verify_config))
  if len(results) != len(completions):
    raise RuntimeError(
        f'Task {task.name!r} verify_many returned {len(results)} verdicts '
        f'for {len(completions)} completions.')
  return results


class WorkedSolutionsFromTrainSplit:
  """A task base: `corpus` and `warmup_examples` from the train split's
  worked solutions (for tasks whose problems carry them: GSM8K, MBPP)."""

  def corpus(self, config: ml_collections.ConfigDict) -> list[str]:
    """Train prompts and their worked solutions."""
    return solutions_corpus(self, config)

  def warmup_examples(self, num_examples: int, seed: int,
                      config: ml_collections.ConfigDict, *, style: str,
                      exemplars: Sequence[Problem] = ()
                      ) -> list[tuple[str, str]]:
    """A seeded draw of train problems with their reference solutions."""
    return worked_examples(self, num_examples, seed, config, style=style,
                           exemplars=exemplars)


def instruction(config: ml_collections.ConfigDict) -> str | None:
  """The 'zero_shot_cot' instruction `config.task` sets (None: the task's)."""
  if config.get('instruction_path'):
    path = pathlib.Path(config.instruction_path).expanduser()
    if not path.is_file():
      raise config_fields.ConfigError(
          f'config.task.instruction_path={config.instruction_path!r} is not '
          'a file.')
    text = path.read_text(encoding='utf-8').strip()
    if not text:
      raise config_fields.ConfigError(
          f'config.task.instruction_path={config.instruction_path!r} is '
          'empty.')
    return text
  return config.get('instruction') or None


def select_test_subset(problems: Sequence[Problem],
                       config: ml_collections.ConfigDict) -> list[Problem]:
  """The test problems `config.task.test_indices_path` names (all when it
  is None), in the file's order."""
  path_value = config.get('test_indices_path')
  if not path_value:
    return list(problems)
  path = pathlib.Path(path_value).expanduser()
  field = f'config.task.test_indices_path={path_value!r}'
  try:
    indices = json.loads(path.read_text(encoding='utf-8'))
  except FileNotFoundError:
    raise config_fields.ConfigError(f'{field} does not exist.') from None
  except ValueError as e:
    raise config_fields.ConfigError(f'{field} is not JSON ({e}).') from None
  if not isinstance(indices, list) or not indices or not all(
      isinstance(i, int) and not isinstance(i, bool) for i in indices):
    raise config_fields.ConfigError(
        f'{field} must hold a non-empty JSON list of 0-based integer indices.')
  bad = [i for i in indices if not 0 <= i < len(problems)]
  if bad:
    raise config_fields.ConfigError(
        f'{field}: indices {bad[:5]} are outside the {len(problems)} test '
        'problems.')
  if len(set(indices)) != len(indices):
    raise config_fields.ConfigError(f'{field} repeats an index.')
  return [problems[i] for i in indices]


def solutions_corpus(task: Task, config: ml_collections.ConfigDict
                     ) -> list[str]:
  """A tokenizer corpus from the train split: prompts and worked solutions."""
  texts = []
  for problem in task.load_problems('train', config):
    texts.append(task.format_prompt(problem, 'zero_shot_cot'))
    if problem.solution:
      texts.append(problem.solution)
  return texts


def worked_examples(task: Task, num_examples: int, seed: int,
                    config: ml_collections.ConfigDict, *, style: str,
                    exemplars: Sequence[Problem] = ()
                    ) -> list[tuple[str, str]]:
  """A seeded draw of `num_examples` train problems with worked solutions,
  as (prompt, solution) pairs; exemplars are never drawn."""
  exemplar_ids = {e.problem_id for e in exemplars}
  candidates = [p for p in task.load_problems('train', config)
                if p.solution and p.problem_id not in exemplar_ids]
  if len(candidates) < num_examples:
    raise config_fields.ConfigError(
        f'config.loop.warmup.num_examples={num_examples} but task '
        f'{task.name!r} has only {len(candidates)} train problems with worked '
        'solutions.')
  chosen = sorted(random.Random(seed).sample(range(len(candidates)),
                                             num_examples))
  return [(task.format_prompt(candidates[i], style, exemplars),
           candidates[i].solution) for i in chosen]


def data_path(config: ml_collections.ConfigDict, field: str,
              default_name: str) -> pathlib.Path:
  """The data location `config.<field>` names, else the shared default.

  Args:
    config: `config.task`.
    field: the path field of `config`, e.g. 'gsm8k_path'.
    default_name: the entry of SHARED_DATA_DIR used when the field is None.

  Returns:
    An existing path (file or directory).

  Raises:
    ConfigError: naming `config.task.<field>` when it is unset and the
      default is missing, or set to a path that does not exist.
  """
  value = config.get(field)
  if value is None:
    default = SHARED_DATA_DIR / default_name
    if not default.exists():
      raise config_fields.ConfigError(
          f'config.task.{field} is not set and the default {default} does not '
          f'exist; set config.task.{field} to the data.')
    return default
  path = pathlib.Path(value).expanduser()
  if not path.exists():
    raise config_fields.ConfigError(
        f'config.task.{field}={value!r} does not exist.')
  return path


def on_malformed_line(config: ml_collections.ConfigDict) -> str:
  """`config.task.sources.on_malformed_line`, 'raise' when there is none."""
  sources_config = config.get('sources')
  if sources_config is None:
    return 'raise'
  return sources_config.get('on_malformed_line', 'raise')


def cut_at_next_question(completion: str) -> str:
  """`completion` up to the next 'Question:' line, where a new shot starts.

  A sampler without a stop string continues a few-shot prompt with made-up
  questions and answers of its own; they are not part of the answer.
  """
  end = completion.find('\nQuestion:')
  return completion if end < 0 else completion[:end]


def select_exemplars(train_problems: Sequence[Problem], num_few_shot: int
                     ) -> tuple[list[Problem], list[Problem]]:
  """Splits train problems into few-shot exemplars and training problems.

  The exemplars are the first `num_few_shot` problems (tasks list their
  problems in a fixed, seeded order), so every round and every rerun uses the
  same ones; they are removed from the returned training problems so the
  model is never trained on its own prompt.

  Returns:
    (exemplars, the remaining training problems).
  """
  if num_few_shot < 0:
    raise ValueError(f'num_few_shot={num_few_shot} must not be negative.')
  if num_few_shot > len(train_problems):
    raise ValueError(
        f'num_few_shot={num_few_shot} is more than the '
        f'{len(train_problems)} train problems.')
  exemplars = list(train_problems[:num_few_shot])
  for exemplar in exemplars:
    if exemplar.solution is None:
      raise ValueError(
          f'Exemplar problem_id={exemplar.problem_id!r} has no worked '
          'solution to show.')
  return exemplars, list(train_problems[num_few_shot:])


def render_prompt(problem: Problem, style: str,
                  exemplars: Sequence[Problem] = (), *,
                  cot_instruction: str = COT_INSTRUCTION) -> str:
  """The shared prompt layout of every style.

    zero_shot:      'Question: {question}\\nAnswer:\\n'
    zero_shot_cot:  'Question: {question}\\n{cot_instruction}\\nAnswer:\\n'
    few_shot:       'Question: {q_i}\\nAnswer:\\n{solution_i}\\n\\n' per
                    exemplar, then the zero_shot prompt.

  The completion (and a worked solution used as a training target) follows
  'Answer:\\n' directly.

  Args:
    problem: the problem asked.
    style: one of PROMPT_STYLES.
    exemplars: worked train problems; required for 'few_shot', refused
      otherwise (so a misconfigured run fails instead of silently ignoring
      them). `problem` must not be one of them.
    cot_instruction: the instruction of 'zero_shot_cot'.

  Returns:
    The prompt text, without chat template or special tokens.
  """
  if style not in PROMPT_STYLES:
    raise ValueError(
        f'style={style!r} is not one of {", ".join(PROMPT_STYLES)}.')
  if style == 'few_shot' and not exemplars:
    raise ValueError("style='few_shot' needs at least one exemplar.")
  if style != 'few_shot' and exemplars:
    raise ValueError(
        f'style={style!r} takes no exemplars, but {len(exemplars)} were given.')
  shots = []
  for exemplar in exemplars:
    if exemplar.solution is None:
      raise ValueError(
          f'Exemplar problem_id={exemplar.problem_id!r} has no worked '
          'solution to show.')
    if exemplar.problem_id == problem.problem_id:
      raise ValueError(
          f'problem_id={problem.problem_id!r} is one of its own exemplars.')
    shots.append(
        f'Question: {exemplar.question}\nAnswer:\n{exemplar.solution}\n\n')
  instruction = f'{cot_instruction}\n' if style == 'zero_shot_cot' else ''
  return (''.join(shots) +
          f'Question: {problem.question}\n{instruction}Answer:\n')
