"""The records that flow through a run, one type each.

  Problem  a task's problem with its known answer (or tests);
  Sample   one sampled completion of a problem with its verdict: what the
           Think stage writes to its shards and Evaluate scores;
  Trace    a Sample with the context a training example needs (prompt,
           question, round, provenance): what Prune filters and records
           stores; `records.read_round` gives them back.

Data flows one way: Problem -> (prompt) -> Sample -> Trace -> dataset ->
(prompt, completion) tokens.
"""

from __future__ import annotations

from collections.abc import Mapping
import dataclasses
from typing import Any


@dataclasses.dataclass(frozen=True)
class Problem:
  """One problem with a checkable answer.

  Attributes:
    problem_id: stable, unique within the task and split, e.g.
      'gsm8k/train/17', 'mbpp/601', 'HumanEval/0', 'demo/train/3'.
    question: what the model is asked (HumanEval: the function prompt).
    answer: the final answer a completion must reach (GSM8K: the number after
      '####', in canonical form: '1200'); for code problems the reference
      program (or its body).
    solution: a worked solution ending in the answer, when known (few-shot
      exemplars and warm-up data need one); for code the complete reference
      program.
    test_list: code: Python statements (MBPP asserts) run after the
      candidate program; all must pass.
    test_setup_code: code: Python run before the tests.
    test_code: code: Python run after the candidate (HumanEval: it defines
      `check(candidate)`).
    entry_point: HumanEval: the function passed to `check`.
    stdio_tests: code judged on stdin/stdout (CodeContests): the tests, each
      with `input` and `output` (`verify.stdio_judge.StdioTest`).
    time_limit_s: stdin/stdout code: the time limit per test.
    float_tolerance: stdin/stdout code: tolerance of real-number outputs.
    source: which data set the problem came from.
    raw_answer: the answer as the data set writes it, where `answer` is a
      normalized form of it (GSM8K: the text after '####', e.g. '1,200' for
      answer '1200'); '' when the source keeps none. Graders that compare
      strings with the data set's own text (`paper_strict`) read it.
  """
  problem_id: str
  question: str
  answer: str
  solution: str | None = None
  test_list: tuple[str, ...] = ()
  test_setup_code: str = ''
  test_code: str = ''
  entry_point: str = ''
  stdio_tests: tuple[Any, ...] = ()
  time_limit_s: float = 0.0
  float_tolerance: float = 0.0
  source: str = ''
  raw_answer: str = ''

  @property
  def is_code(self) -> bool:
    """Whether the answer is checked by running tests."""
    return bool(self.test_list or self.test_code or self.stdio_tests)


@dataclasses.dataclass(frozen=True)
class Sample:
  """One sampled completion of one problem, with its verdict.

  Attributes:
    problem_id: `Problem.problem_id`.
    sample_index: which of the problem's samples (0-based); with the seed
      and the problem it fixes the trace.
    completion: the model's output (cut at a stop string).
    num_tokens: generated tokens.
    finish_reason: 'eos', 'stop', 'length', or where a trace read from a file
      came from.
    logprob_sum: the completion's log-probability under the model.
    correct: the verifier's verdict.
    extracted_answer: the answer the verifier read (None: none found).
  """
  problem_id: str
  sample_index: int
  completion: str
  num_tokens: int
  finish_reason: str
  logprob_sum: float
  correct: bool
  extracted_answer: str | None

  def to_json(self) -> dict[str, Any]:
    """The shard record (the keys of `dataclasses.fields`)."""
    return {
        'problem_id': self.problem_id,
        'sample_index': self.sample_index,
        'completion': self.completion,
        'num_tokens': self.num_tokens,
        'finish_reason': self.finish_reason,
        'logprob_sum': float(self.logprob_sum),
        'correct': bool(self.correct),
        'extracted_answer': self.extracted_answer,
    }

  @classmethod
  def from_json(cls, record: Mapping[str, Any]) -> Sample:
    return cls(**{f.name: record[f.name] for f in dataclasses.fields(cls)})

  @property
  def verdict_reason(self) -> str:
    """Why the verdict is negative ('' when correct)."""
    if self.correct:
      return ''
    return (f'finish={self.finish_reason}, answer='
            f'{self.extracted_answer!r}')


@dataclasses.dataclass(frozen=True)
class Trace:
  """One sampled completion of one problem, with its verdict and context.

  Attributes:
    problem_id: the problem's stable id (`Problem.problem_id`).
    sample_index: which of the problem's samples this is (0-based).
    prompt: the exact text the model was given.
    completion: the model's output.
    correct: the verifier's verdict; None when not verified.
    extracted_answer: the answer the verifier read ('' if none); for code, the
      verdict's status.
    num_tokens: completion length in tokens, if known.
    question: the problem text.
    reference_answer: the reference the verdict was taken against.
    round: the TPT round that sampled it.
    sampler_settings: JSON of the sampling settings (temperature, ...).
    checkpoint_id: the checkpoint that produced it.
    verdict_reason: why the verdict is negative ('' when correct).
  """
  problem_id: str
  sample_index: int
  prompt: str
  completion: str
  correct: bool | None = None
  extracted_answer: str = ''
  num_tokens: int | None = None
  question: str = ''
  reference_answer: str = ''
  round: int = 0
  sampler_settings: str = '{}'
  checkpoint_id: str = ''
  verdict_reason: str = ''

  @classmethod
  def from_sample(cls, sample: Sample, problem: Problem, *, prompt: str,
                  round_index: int, sampler_settings: str,
                  checkpoint_id: str) -> Trace:
    """The trace of `sample`, a completion of `problem` given `prompt`."""
    return cls(
        problem_id=sample.problem_id,
        sample_index=sample.sample_index,
        prompt=prompt,
        completion=sample.completion,
        correct=sample.correct,
        extracted_answer=sample.extracted_answer or '',
        num_tokens=sample.num_tokens,
        question=problem.question,
        reference_answer=problem.answer,
        round=round_index,
        sampler_settings=sampler_settings,
        checkpoint_id=checkpoint_id,
        verdict_reason=sample.verdict_reason)
