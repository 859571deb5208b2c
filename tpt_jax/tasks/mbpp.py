"""MBPP: short Python programming problems checked by running their tests.

Problems come from `sources.load_mbpp` with the standard task-id splits
(`sources.MBPP_SPLITS`): train is tasks 601-974 (374), test 11-510 (500).
`config.task.mbpp_path` is `mbpp.jsonl` or a directory holding it; unset, it
defaults to `../shared/data/mbpp` beside the repo. `Problem.answer` and
`Problem.solution` are both the reference program (line ends made '\\n',
trailing whitespace removed).

The prompt shows the problem text and ONE of its tests, the first, as in the
MBPP paper (Austin et al. 2021), inside the shared layout of `render_prompt`:

  Question: You are an expert Python programmer, and here is your task:
  {text} Your code should pass this test:

  {test_list[0]}
  Answer:

The completion is the program, bare or in a ```python fence (see
`verify.extract_code`); it is checked in the sandbox against ALL of the
problem's tests. The extracted answer of a verdict is its status ('passed',
'failed', 'timeout', 'error'). There is no final answer to vote on, so
`majority_vote` is False.

Few-shot exemplars: `tasks.select_exemplars` takes the first train problems
(tasks 601, 602, ...) and removes them from training, as for every task. The
paper's prompt problems (tasks 1-10) are available as the extra split
'prompt' (`load_problems('prompt', config)`) for a caller that wants them as
exemplars instead; they are in neither train nor test.
"""

from __future__ import annotations

import dataclasses
import logging
import pathlib
from typing import Sequence

import ml_collections

from tpt_jax import config_fields
from tpt_jax import sources
from tpt_jax import tasks
from tpt_jax import verify as verify_lib

NAME = 'mbpp'
# The MBPP file in a `config.task.mbpp_path` directory.
FILE_NAME = 'mbpp.jsonl'
# The paper's few-shot prompt problems (task ids 1-10); see the docstring.
PROMPT_SPLIT = 'prompt'
_SPLITS = (*tasks.SPLITS, PROMPT_SPLIT)


def _to_problem(problem: tasks.Problem) -> tasks.Problem:
  if not problem.test_list:
    raise sources.MalformedInputError(
        f'{problem.problem_id}: test_list is empty; nothing to verify with.')
  # '\n' line ends (Python reads a lone '\r' as one too), no trailing blank.
  code = problem.solution.replace('\r\n', '\n').replace(
      '\r', '\n').rstrip()
  return tasks.Problem(
      problem_id=problem.problem_id,
      question=problem.question,
      answer=code,
      solution=code,
      test_list=tuple(problem.test_list),
      test_setup_code=problem.test_setup_code,
      source=problem.source)


def _mbpp_file(config: ml_collections.ConfigDict) -> pathlib.Path:
  """The MBPP JSONL file `config.task.mbpp_path` (or its default) names."""
  path = tasks.data_path(config, 'mbpp_path', NAME)
  if path.is_dir():
    path = path / FILE_NAME
    if not path.is_file():
      raise config_fields.ConfigError(
          f'config.task.mbpp_path={str(path.parent)!r} is a directory without '
          f'{FILE_NAME}.')
  return path


def question_with_test(problem: tasks.Problem) -> str:
  """The question shown to the model: the task and its first test."""
  if not problem.test_list:
    raise ValueError(
        f'problem_id={problem.problem_id!r} has no test to show.')
  return ('You are an expert Python programmer, and here is your task: '
          f'{problem.question} Your code should pass this test:\n\n'
          f'{problem.test_list[0]}')


def _code_task(completion: str,
               problem: tasks.Problem) -> verify_lib.CodeTask:
  if not problem.test_list:
    raise ValueError(
        f'problem_id={problem.problem_id!r} has no tests to verify with.')
  text = completion if isinstance(completion, str) else ''
  program = verify_lib.extract_code(tasks.cut_at_next_question(text))
  return verify_lib.CodeTask(program=program,
                             test_list=tuple(problem.test_list),
                             test_setup_code=problem.test_setup_code)


@dataclasses.dataclass(frozen=True)
class MbppTask(tasks.WorkedSolutionsFromTrainSplit):
  """The MBPP task (see the module docstring)."""
  name: str = NAME
  majority_vote: bool = False
  cot_instruction: str = (
      'Think it through, then write the complete Python code in a ```python '
      'block.')

  def load_problems(self, split: str,
                    config: ml_collections.ConfigDict) -> list[tasks.Problem]:
    """The MBPP `split` in task-id order (ids 'mbpp/{task_id}').

    Args:
      split: 'train', 'test', or PROMPT_SPLIT (the paper's exemplar pool).
      config: `config.task`.
    """
    if split not in _SPLITS:
      raise ValueError(f'split={split!r} is not one of {", ".join(_SPLITS)}.')
    on_error = tasks.on_malformed_line(config)
    converted = []
    for problem in sources.load_mbpp(_mbpp_file(config), split,
                                     on_error=on_error):
      try:
        converted.append(_to_problem(problem))
      except sources.MalformedInputError as e:
        if on_error != 'skip':
          raise
        logging.warning('Skipped a malformed MBPP problem: %s', e)
    return converted

  def verify(self, completion: str,
             problem: tasks.Problem) -> tuple[bool, str | None]:
    """(whether the program passes all tests, the verdict's status).

    Runs one sandbox with `config.verify.code`'s default limits.
    """
    return self.verify_many([completion], [problem], verify_lib.default_config())[0]

  def verify_many(self, completions: Sequence[str],
                  problems: Sequence[tasks.Problem],
                  verify_config: ml_collections.ConfigDict
                  ) -> list[tuple[bool, str | None]]:
    """`verify` of each pair, in parallel sandboxes set by `verify_config.code`.
    """
    code_tasks = [_code_task(completion, problem) for completion, problem
                  in zip(completions, problems, strict=True)]
    if not code_tasks:
      return []
    with verify_lib.CodeVerifier(
        verify_lib.sandbox_limits(verify_config.code),
        int(verify_config.code.num_workers)) as verifier:
      verdicts = verifier.verify_many(code_tasks)
    return [(verdict.passed, verdict.status) for verdict in verdicts]

  def format_prompt(self, problem: tasks.Problem, style: str,
                    exemplars: Sequence[tasks.Problem] = (),
                    instruction: str | None = None) -> str:
    shown = [dataclasses.replace(p, question=question_with_test(p))
             for p in (problem, *exemplars)]
    return tasks.render_prompt(shown[0], style, shown[1:],
                               cot_instruction=instruction or self.cot_instruction)

  def normalize_answer(self, answer: str) -> str:
    """`answer` unchanged: programs are not voted on (majority_vote=False)."""
    if not isinstance(answer, str):
      raise ValueError(f'answer={answer!r} is not a string.')
    return answer


TASK = MbppTask()
