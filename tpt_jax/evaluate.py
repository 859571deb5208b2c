"""Metrics over verified samples: Pass@1 (greedy), pass@k and maj@k.

The Evaluate stage samples each held-out problem once greedily and n times
with temperature, verifies every completion, and reduces the verdicts to the
numbers in `round_<N>/eval.json`:

  pass@1   fraction of problems whose greedy completion is correct (the
           paper's Pass@1).
  pass@k   the unbiased estimator of Chen et al. (2021): the chance that at
           least one of k samples drawn without replacement from the n is
           correct, averaged over problems.
  maj@k    fraction of problems whose majority answer among the first k
           samples equals the reference.

Everything here is pure Python + numpy: no model, no tokenizer.
"""

from __future__ import annotations

import dataclasses
import operator
from typing import Any, Callable, Mapping, Sequence

import ml_collections
import numpy as np

Normalizer = Callable[[str], 'str | None']
AnswerEqual = Callable[[str, str], bool]


def default_config() -> ml_collections.ConfigDict:
  """`config.eval`: what each round's evaluation samples."""
  c = ml_collections.ConfigDict()
  # Greedy completions give Pass@1; this cap on their length (0: the Think
  # stage's config.sampling.max_new_tokens).
  c.max_new_tokens = 0
  # Temperature samples per test problem for pass@k and maj@k (0: greedy
  # Pass@1 only), at this temperature.
  c.num_samples = 0
  c.temperature = 0.7
  # The k of pass@k and maj@k; each at most num_samples.
  c.ks = (1, 4)
  # Graders reported side by side (names from the task's `grader_names`,
  # e.g. ('default', 'paper_strict') for GSM8K): every metric also appears
  # as '<metric>/<grader>', so a round whose strict score rises while the
  # default one does not (a format gain) shows. (): the plain metrics only,
  # by config.verify.grader.
  c.graders = ()
  return c


def validate_config(eval_config: ml_collections.ConfigDict) -> None:
  """Raises ValueError naming the first `config.eval` field not allowed."""
  if eval_config.num_samples < 0:
    raise ValueError(f'config.eval.num_samples={eval_config.num_samples} must '
                     'not be negative.')
  if eval_config.max_new_tokens < 0:
    raise ValueError(f'config.eval.max_new_tokens={eval_config.max_new_tokens}'
                     ' must not be negative.')
  if eval_config.num_samples:
    if not eval_config.temperature > 0:
      raise ValueError(f'config.eval.temperature={eval_config.temperature} '
                       'must be > 0 for sampled pass@k / maj@k.')
    for k in eval_config.ks:
      if not 1 <= k <= eval_config.num_samples:
        raise ValueError(
            f'config.eval.ks={tuple(eval_config.ks)}: k={k} must be between 1 '
            f'and config.eval.num_samples={eval_config.num_samples}.')


def _identity(answer: str) -> str:
  return answer


def _count(value: Any, name: str) -> int:
  """`value` as an int >= 0, or a ValueError naming `name`."""
  if isinstance(value, bool):
    raise ValueError(f'{name}={value!r} must be an integer, not a bool.')
  try:
    value = operator.index(value)
  except TypeError:
    raise ValueError(
        f'{name}={value!r} must be an integer, not {type(value).__name__}.'
    ) from None
  if value < 0:
    raise ValueError(f'{name}={value} must not be negative.')
  return value


def _check_k(k: Any) -> int:
  k = _count(k, 'k')
  if k < 1:
    raise ValueError(f'k={k} must be at least 1.')
  return k


def pass_at_k(num_samples: int, num_correct: int, k: int) -> float:
  """The unbiased pass@k estimator 1 - C(n-c, k) / C(n, k).

  Computed as 1 - prod_{i=n-c+1}^{n} (1 - k/i), which never forms the (huge)
  binomial coefficients.

  Args:
    num_samples: n, the samples drawn for the problem.
    num_correct: c, how many of them are correct.
    k: the budget; 1 <= k <= n.

  Returns:
    The probability, in [0, 1], that a random k-subset holds a correct one.
  """
  n = _count(num_samples, 'num_samples')
  c = _count(num_correct, 'num_correct')
  k = _check_k(k)
  if c > n:
    raise ValueError(
        f'num_correct={c} is larger than num_samples={n}.')
  if k > n:
    raise ValueError(
        f'k={k} is larger than num_samples={n}: pass@{k} needs at least {k} '
        'samples per problem.')
  if n - c < k:  # Every k-subset holds a correct sample.
    return 1.0
  return float(1.0 - np.prod(1.0 - k / np.arange(n - c + 1, n + 1)))


def pass_at_1_greedy(correct: Sequence[bool]) -> float:
  """Fraction of problems whose greedy completion is correct (in [0, 1])."""
  if len(correct) == 0:  # pylint: disable=g-explicit-length-test
    raise ValueError('correct is empty: Pass@1 of no problems is undefined.')
  for index, verdict in enumerate(correct):
    if not isinstance(verdict, (bool, np.bool_)):
      raise ValueError(
          f'correct[{index}]={verdict!r} must be a bool, not '
          f'{type(verdict).__name__}.')
  return sum(bool(verdict) for verdict in correct) / len(correct)


def majority_answer(extracted_answers: Sequence[str | None], k: int, *,
                    normalize: Normalizer = _identity,
                    equal: AnswerEqual | None = None) -> str | None:
  """The most frequent answer among the first k, normalised; None if no votes.

  Answers that are None, or that `normalize` maps to None, do not vote.
  Answers are grouped by `equal` on their normalised form (default: string
  equality), each joining the first earlier group whose first answer it
  equals.

  Tie rule: among the groups with the most votes, the one whose first vote
  came earliest (lowest position among the first k) wins. The result depends
  only on the sequence, never on dict or set ordering.

  Args:
    extracted_answers: one extracted answer per sample, in sampling order.
    k: how many leading samples vote; 1 <= k <= len(extracted_answers).
    normalize: maps an answer to its canonical form (e.g. a GSM8K number
      normaliser), or to None when it cannot be parsed.
    equal: whether two normalised answers are the same; None means `==`.

  Returns:
    The winning group's first normalised answer, or None when nothing voted.
  """
  k = _check_k(k)
  if k > len(extracted_answers):
    raise ValueError(
        f'k={k} is larger than the {len(extracted_answers)} extracted_answers: '
        f'maj@{k} needs at least {k} samples per problem.')
  # Groups in order of first appearance: [representative, votes].
  groups: list[list[Any]] = []
  for answer in extracted_answers[:k]:
    if answer is None:
      continue
    normalized = normalize(answer)
    if normalized is None:
      continue
    for group in groups:
      same = (group[0] == normalized if equal is None
              else equal(group[0], normalized))
      if same:
        group[1] += 1
        break
    else:
      groups.append([normalized, 1])
  if not groups:
    return None
  # max() keeps the first of equal maxima: the earliest group wins a tie.
  return max(groups, key=lambda group: group[1])[0]


def maj_at_k(extracted_answers: Sequence[str | None], reference: str, k: int,
             *, normalize: Normalizer = _identity,
             equal: AnswerEqual | None = None) -> bool:
  """Whether the majority answer of the first k samples equals `reference`.

  See `majority_answer` for voting and the tie rule. A problem where no
  sample produced an answer counts as wrong.

  Args:
    extracted_answers: one extracted answer per sample (None: unparseable).
    reference: the reference final answer; normalised like the samples.
    k: how many leading samples vote.
    normalize: canonical form of an answer (None: unparseable).
    equal: equality of normalised answers; None means `==`.

  Returns:
    True when the majority answer matches the reference.
  """
  normalized_reference = normalize(reference)
  if normalized_reference is None:
    raise ValueError(
        f'reference={reference!r} cannot be normalised: the reference answer '
        'must be parseable.')
  winner = majority_answer(extracted_answers, k, normalize=normalize,
                           equal=equal)
  if winner is None:
    return False
  if equal is None:
    return winner == normalized_reference
  return bool(equal(winner, normalized_reference))


@dataclasses.dataclass(frozen=True)
class ProblemRecord:
  """The verified outcome of evaluating one held-out problem.

  Attributes:
    problem_id: the problem's id (unique within an evaluation).
    greedy_correct: the verdict on the greedy completion; None when no greedy
      completion was sampled.
    sample_correct: the verdict on each temperature sample.
    sample_answers: the answer extracted from each sample (None: none found),
      aligned with `sample_correct`.
    reference: the reference final answer.
  """
  problem_id: str
  greedy_correct: bool | None
  sample_correct: Sequence[bool]
  sample_answers: Sequence[str | None]
  reference: str


@dataclasses.dataclass(frozen=True)
class EvalResult:
  """Metrics over a set of problems.

  Attributes:
    num_problems: how many problems were evaluated.
    pass_at_1: greedy Pass@1, or None when no greedy completions were given.
    pass_at_k: k -> mean unbiased pass@k over the temperature samples.
    maj_at_k: k -> fraction of problems whose maj@k answer is right.
    sampled_pass_at_1_se: the standard error of the sampled Pass@1 (the
      mean correctness over samples) across problems; None without samples.
  """
  num_problems: int
  pass_at_1: float | None
  pass_at_k: Mapping[int, float]
  maj_at_k: Mapping[int, float]
  sampled_pass_at_1_se: float | None = None

  def to_dict(self) -> dict[str, float | int]:
    """Flat metric names, as in eval.json and TensorBoard.

    'pass@1' is greedy Pass@1 (left out when there was no greedy pass);
    sampled metrics are 'pass@{k}' and 'maj@{k}', except that the sampled
    pass@1 (the mean correctness over samples, as the TPT paper reports it)
    is 'pass@1_sampled' so it never shadows the greedy one; its standard
    error across problems is 'pass@1_sampled_se'.
    """
    metrics: dict[str, float | int] = {}
    if self.pass_at_1 is not None:
      metrics['pass@1'] = self.pass_at_1
    for k in sorted(self.pass_at_k):
      name = 'pass@1_sampled' if k == 1 else f'pass@{k}'
      metrics[name] = self.pass_at_k[k]
      if k == 1 and self.sampled_pass_at_1_se is not None:
        metrics['pass@1_sampled_se'] = self.sampled_pass_at_1_se
    for k in sorted(self.maj_at_k):
      metrics[f'maj@{k}'] = self.maj_at_k[k]
    metrics['num_problems'] = self.num_problems
    return metrics


def evaluate_records(records: Sequence[ProblemRecord],
                     ks: Sequence[int] = (), *,
                     normalize: Normalizer = _identity,
                     equal: AnswerEqual | None = None) -> EvalResult:
  """Reduces per-problem verdicts to Pass@1, pass@k and maj@k.

  Args:
    records: one per problem; ids must be unique. Either every record has a
      greedy verdict or none has.
    ks: the k of pass@k and maj@k; every problem needs at least max(ks)
      samples.
    normalize: canonical form of an answer, for maj@k.
    equal: equality of normalised answers, for maj@k; None means `==`.

  Returns:
    The metrics, each a fraction in [0, 1].
  """
  if not records:
    raise ValueError('records is empty: there are no problems to evaluate.')
  ks = sorted({_check_k(k) for k in ks})
  seen_ids: set[str] = set()
  greedy: list[bool] = []
  for record in records:
    if record.problem_id in seen_ids:
      raise ValueError(
          f'problem_id={record.problem_id!r} appears in more than one record.')
    seen_ids.add(record.problem_id)
    if len(record.sample_correct) != len(record.sample_answers):
      raise ValueError(
          f'problem_id={record.problem_id!r}: sample_correct has '
          f'{len(record.sample_correct)} entries but sample_answers has '
          f'{len(record.sample_answers)}.')
    if ks and len(record.sample_correct) < ks[-1]:
      raise ValueError(
          f'problem_id={record.problem_id!r} has {len(record.sample_correct)} '
          f'samples, fewer than k={ks[-1]}.')
    if record.greedy_correct is not None:
      greedy.append(record.greedy_correct)
  if greedy and len(greedy) != len(records):
    raise ValueError(
        f'greedy_correct is set for {len(greedy)} of {len(records)} records: '
        'give it for every problem or for none.')

  pass_at_k_means = {
      k: float(np.mean([
          pass_at_k(len(record.sample_correct),
                    sum(bool(c) for c in record.sample_correct), k)
          for record in records])) for k in ks}
  maj_at_k_means = {
      k: float(np.mean([
          maj_at_k(record.sample_answers, record.reference, k,
                   normalize=normalize, equal=equal)
          for record in records])) for k in ks}
  se = None
  if ks and len(records) > 1:
    per_problem = [float(np.mean([bool(c) for c in record.sample_correct]))
                   for record in records]
    se = float(np.std(per_problem, ddof=1) / np.sqrt(len(per_problem)))
  return EvalResult(
      num_problems=len(records),
      pass_at_1=pass_at_1_greedy(greedy) if greedy else None,
      pass_at_k=pass_at_k_means,
      maj_at_k=maj_at_k_means,
      sampled_pass_at_1_se=se)
