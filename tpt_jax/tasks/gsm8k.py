"""GSM8K: grade-school math word problems with a numeric final answer.

Problems come from `sources.load_gsm8k` (7473 train, 1319 test), read from
`config.task.gsm8k_path`: a directory holding `train.jsonl` and `test.jsonl`,
one JSONL file, 'tfds' (TFDS's prepared `gsm8k`) or 'tfds:<data_dir>'. Unset,
it defaults to `../shared/data/gsm8k` beside the repo.

The worked solution (`Problem.solution`, shown in few-shot prompts and usable
as a training target) is GSM8K's with the `<<48/2=24>>` calculator annotations
removed and the final `#### N` line replaced by `The answer is N.`, so the
model learns one plain answer format; `Problem.answer` is N in canonical form
('1,200' -> '1200').

The verifier is `verify.verify_gsm8k` on the completion up to any next
'Question:' (text a sampler without a stop string makes up): it reads
`The answer is N` (and `#### N`, `\\boxed{N}`, `Answer: N`, with the markup
instruction-tuned models add), falling back to the last number when
`config.verify.math.last_number_fallback`. `verify_many(..., grader=name)`
grades by another of `verify.graders` instead: `paper_strict` is the TPT
authors' regex-and-string-equality protocol, applied to the whole completion,
with GSM8K's own answer text as the gold (`Problem.raw_answer`, '1,200'), as
the released code does: on the 14 of 1,319 test problems (79 of 7,473 train)
whose answer has a thousands comma, `#### 1,200` is correct and `#### 1200`
is not, while the default grader accepts both. A problem without a raw
answer is graded against `Problem.answer`.

A final answer that is not a number (`#### Bob`) is a malformed line of its
file (`sources.load_gsm8k`: 'FILE:LINE: ...'), raised or skipped as
`config.task.sources.on_malformed_line` says.
"""

from __future__ import annotations

from collections.abc import Callable
import dataclasses
import fractions
import functools
import re
from typing import Sequence

import ml_collections

from tpt_jax import config_fields
from tpt_jax import verify as verify_lib
from tpt_jax import sources
from tpt_jax import tasks
from tpt_jax.verify import graders
from tpt_jax.verify import math_answers

NAME = 'gsm8k'
_TFDS = 'tfds'
_CALCULATOR_ANNOTATION = re.compile(r'<<[^<>\n]*>>')
# `verify` without a config uses config.verify's default.
_DEFAULT_LAST_NUMBER_FALLBACK = bool(
    verify_lib.default_config().math.last_number_fallback)


def _canonical_number(text: str) -> str | None:
  value: fractions.Fraction | None = math_answers.parse_number(text)
  return None if value is None else math_answers.canonical(value)


def reformat_solution(solution: str, answer: str) -> str:
  """GSM8K's worked solution, without annotations, ending 'The answer is N.'

  Args:
    solution: GSM8K's answer text, ending in a '#### N' line.
    answer: N in canonical form.
  """
  marker = solution.rfind('####')
  if marker < 0:
    raise ValueError(
        f"solution={solution[-80:]!r} has no '#### <final answer>' line.")
  steps = _CALCULATOR_ANNOTATION.sub('', solution[:marker]).rstrip()
  final = f'The answer is {answer}.'
  return f'{steps}\n{final}' if steps else final


def _to_problem(problem: tasks.Problem) -> tasks.Problem:
  """The source record with a canonical answer (its text kept as
  `raw_answer`) and a reformatted solution.

  `sources.load_gsm8k` already refuses a final answer that is not a number,
  naming its file and line; the check here guards problems from elsewhere.
  """
  answer = _canonical_number(problem.answer)
  if answer is None:
    raise sources.MalformedInputError(
        f'{problem.problem_id}: final answer {problem.answer!r} is '
        'not a number.')
  return dataclasses.replace(
      problem, answer=answer, raw_answer=problem.raw_answer or problem.answer,
      solution=reformat_solution(problem.solution, answer))


def _load(split: str, config: ml_collections.ConfigDict
          ) -> list[tasks.Problem]:
  """sources.load_gsm8k on what `config.task.gsm8k_path` names, each problem
  through `_to_problem` as it is read (so that a bad final answer is named by
  file and line, and raised or skipped as config.task.sources says)."""
  spec = config.get('gsm8k_path')
  on_error = tasks.on_malformed_line(config)
  if spec is not None and (spec == _TFDS or spec.startswith(_TFDS + ':')):
    data_dir = spec[len(_TFDS) + 1:] or None
    return sources.load_gsm8k(_TFDS, split, on_error=on_error,
                              tfds_data_dir=data_dir, convert=_to_problem)
  path = tasks.data_path(config, 'gsm8k_path', NAME)
  if path.is_dir() and not (path / f'{split}.jsonl').is_file():
    raise config_fields.ConfigError(
        f'config.task.gsm8k_path={str(path)!r} is a directory without '
        f'{split}.jsonl.')
  return sources.load_gsm8k(path, split, on_error=on_error,
                            convert=_to_problem)


@dataclasses.dataclass(frozen=True)
class Gsm8kTask(tasks.WorkedSolutionsFromTrainSplit):
  """The GSM8K task (see the module docstring)."""
  name: str = NAME
  majority_vote: bool = True
  # Graders `verify_many` and `verifier` accept (see verify.graders).
  grader_names: tuple[str, ...] = graders.GRADER_NAMES
  cot_instruction: str = (
      "Let's think step by step, and end with \"The answer is N.\"")

  def load_problems(self, split: str,
                    config: ml_collections.ConfigDict) -> list[tasks.Problem]:
    """The GSM8K `split` in file order (ids 'gsm8k/{split}/{index}')."""
    if split not in tasks.SPLITS:
      raise ValueError(
          f'split={split!r} is not one of {", ".join(tasks.SPLITS)}.')
    return _load(split, config)

  def verify(self, completion: str,
             problem: tasks.Problem) -> tuple[bool, str | None]:
    """(final answer == problem.answer exactly, canonical final answer)."""
    return self._verify(completion, problem, grader='default',
                        last_number_fallback=_DEFAULT_LAST_NUMBER_FALLBACK)

  def verify_many(self, completions: Sequence[str],
                  problems: Sequence[tasks.Problem],
                  verify_config: ml_collections.ConfigDict,
                  grader: str | None = None
                  ) -> list[tuple[bool, str | None]]:
    """`verify` of each pair by the GSM8K grader named `grader` (default:
    `verify_config.grader`; one of GRADER_NAMES, see verify.graders),
    honouring `verify_config.math`."""
    verify = self.verifier(verify_config, grader)
    return [verify(completion, problem)
            for completion, problem in zip(completions, problems, strict=True)]

  def verifier(self, verify_config: ml_collections.ConfigDict,
               grader: str | None = None
               ) -> Callable[[str, tasks.Problem], tuple[bool, str | None]]:
    """A picklable `verify` by `grader` (default: `verify_config.grader`)
    honouring `verify_config.math`, e.g. for
    `verify.parallel.verify_in_workers`.

    Raises:
      ValueError: naming `grader` and the known graders.
    """
    grader = grader or verify_config.get('grader', 'default')
    graders.get_grader(grader)  # Checks the name.
    return functools.partial(
        self._verify, grader=grader,
        last_number_fallback=bool(verify_config.math.last_number_fallback))

  def _verify(self, completion: str, problem: tasks.Problem, *, grader: str,
              last_number_fallback: bool) -> tuple[bool, str | None]:
    if not isinstance(completion, str):
      return False, None
    grade = graders.get_grader(grader,
                               last_number_fallback=last_number_fallback)
    if grader != 'paper_strict':  # The paper's protocol reads it all.
      completion = tasks.cut_at_next_question(completion)
    # The paper's protocol compares strings with GSM8K's own text ('1,200').
    reference = (problem.raw_answer or problem.answer
                 if grader == 'paper_strict' else problem.answer)
    verdict = grade(completion, reference)
    return verdict.correct, verdict.extracted

  def format_prompt(self, problem: tasks.Problem, style: str,
                    exemplars: Sequence[tasks.Problem] = (),
                    instruction: str | None = None) -> str:
    return tasks.render_prompt(problem, style, exemplars,
                               cot_instruction=instruction or self.cot_instruction)

  def normalize_answer(self, answer: str) -> str:
    """The canonical number `answer` states ('$1,200.00' -> '1200'), for maj@k.
    """
    canonical = (_canonical_number(answer) if isinstance(answer, str)
                 else None)
    if canonical is None:
      raise ValueError(f'answer={answer!r} is not a number.')
    return canonical


TASK = Gsm8kTask()
