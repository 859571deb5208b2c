"""Pruning: which sampled traces a round keeps for fine-tuning.

A pipeline is a sequence of filters chosen by `config.prune.strategies`
(e.g. 'correct,dedup,max_per_problem'), applied in that order. Each filter
removes traces and the pipeline reports how many per filter:

  correct           keep traces the verifier proved correct (the default).
  first_correct     per problem, only the first correct trace (lowest
                    sample index): the TPT authors' released recipe.
  none              keep everything (the paper's no-pruning ablation).
  dedup             drop repeats of a trace of the same problem (same text up
                    to whitespace); the lowest sample index survives.
  max_per_problem   keep at most `max_per_problem` traces per problem, the
                    lowest sample indices.
  length            keep traces within [min, max] tokens and/or characters.
  repetition        drop degenerate text: more than `repetition_max_fraction`
                    of its word n-grams are repeats.
  no_reasoning      drop completions that are only a final answer.
  short_reasoning   drop completions with fewer than `min_reasoning_words`
                    words outside their answer statements.

Output order is deterministic whatever the input order: traces are sorted by
(problem_id, sample_index) first.

After the filters, `draw_examples` decides which survivors train and which
are held out for an evaluation loss (`num_heldout_examples`): a seeded draw
of at most `config.loop.max_train_examples_per_round` trains, and up to
`num_heldout_examples` of the survivors beyond that draw are held out (the
TPT authors' released recipe: 2,000 train, up to 200 more held out). With
no cap, the held-out examples are set aside from all survivors (one always
trains) and the rest train.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
import collections
import dataclasses
import random
import re

import ml_collections

from tpt_jax import config_fields
from tpt_jax.types import Trace


@dataclasses.dataclass(frozen=True)
class PruneResult:
  """Kept traces and, per filter in order, how many it removed."""
  kept: list[Trace]
  removed: dict[str, int]

  @property
  def num_removed(self) -> int:
    return sum(self.removed.values())


def default_config() -> ml_collections.ConfigDict:
  """Defaults of `config.prune`: the filters and their parameters."""
  config = ml_collections.ConfigDict()
  # Filters, comma-separated, applied in order; names from STRATEGIES.
  config.strategies = 'correct'
  # max_per_problem: traces kept per problem at most.
  config.max_per_problem = 4
  # length: bounds on num_tokens and on characters; 0 = no bound.
  config.min_tokens = 0
  config.max_tokens = 0
  config.min_chars = 0
  config.max_chars = 0
  # repetition: word n-gram size, and the largest fraction of repeated
  # n-grams a trace may have; traces with fewer n-grams than
  # repetition_min_ngrams are not judged.
  config.repetition_ngram_size = 4
  config.repetition_max_fraction = 0.5
  config.repetition_min_ngrams = 20
  # short_reasoning: words needed outside the answer statements.
  config.min_reasoning_words = 10
  # Survivors held out of training, for a loss on unseen traces at the end of
  # the round's training (`heldout_loss`): a seeded draw, disjoint from the
  # training examples, written as the round dataset's 'heldout' split. With
  # config.loop.max_train_examples_per_round, only survivors beyond the
  # training draw are held out (fewer when there are fewer). 0: none.
  config.num_heldout_examples = 0

  return config


def validate_config(config: ml_collections.ConfigDict) -> None:
  """Raises ConfigError naming the first `config.prune` field not allowed
  (the filters' parameters are checked when the pipeline is built)."""
  try:
    parse_strategies(config.strategies)
  except ValueError as e:
    raise config_fields.ConfigError(str(e)) from e
  if config.num_heldout_examples < 0:
    raise config_fields.ConfigError(
        f'config.prune.num_heldout_examples={config.num_heldout_examples} '
        'must not be negative.')


@dataclasses.dataclass(frozen=True)
class ExampleDraw:
  """Indices (ascending) into the pruned traces: those that train, those held
  out for the evaluation loss; the rest are dropped by the cap."""
  train: list[int]
  heldout: list[int]

  def num_dropped(self, num_kept: int) -> int:
    return num_kept - len(self.train) - len(self.heldout)


def draw_examples(num_kept: int, *, cap: int, num_heldout: int,
                  cap_seed: int, heldout_seed: int) -> ExampleDraw:
  """Which of `num_kept` pruned traces train and which are held out.

  Args:
    num_kept: survivors of the filters.
    cap: training examples at most (`config.loop.max_train_examples_per_
      round`); 0 = no cap.
    num_heldout: held-out examples wanted (`config.prune.
      num_heldout_examples`).
    cap_seed: seeds the training draw (the same draw whatever num_heldout).
    heldout_seed: seeds the held-out draw (not used when num_heldout is 0).

  Returns:
    With a cap: a draw of min(cap, num_kept) that train, and up to
    num_heldout of the others held out. Without: up to num_heldout (at
    most num_kept - 1) held out, every other one trains.
  """
  everything = list(range(num_kept))
  if cap and num_kept > cap:
    train = sorted(random.Random(cap_seed).sample(range(num_kept), cap))
  else:
    train = everything
  if num_heldout <= 0 or num_kept == 0:
    return ExampleDraw(train=train, heldout=[])
  if cap:
    chosen = set(train)
    rest = [i for i in everything if i not in chosen]
    heldout = sorted(random.Random(heldout_seed).sample(
        rest, min(num_heldout, len(rest))))
    return ExampleDraw(train=train, heldout=heldout)
  heldout = sorted(random.Random(heldout_seed).sample(
      everything, min(num_heldout, num_kept - 1)))
  held = set(heldout)
  return ExampleDraw(train=[i for i in everything if i not in held],
                     heldout=heldout)


# --- filters: each maps sorted traces to the traces it keeps. ----------------


def keep_correct(traces: Sequence[Trace]) -> list[Trace]:
  """Traces whose verdict is correct (unverified ones are removed)."""
  return [t for t in traces if t.correct is True]


def first_correct(traces: Sequence[Trace]) -> list[Trace]:
  """Per problem, the correct trace with the lowest sample index (the TPT
  authors' released recipe: one trace per solved problem)."""
  kept: dict[str, Trace] = {}
  for trace in traces:
    if trace.correct and trace.problem_id not in kept:
      kept[trace.problem_id] = trace
  return [t for t in traces if kept.get(t.problem_id) is t]


def keep_all(traces: Sequence[Trace]) -> list[Trace]:
  return list(traces)


def _whitespace_normalized(text: str) -> str:
  return ' '.join(text.split())


def dedup(traces: Sequence[Trace]) -> list[Trace]:
  """First trace of each (problem, completion up to whitespace)."""
  seen = set()
  kept = []
  for trace in traces:
    key = (trace.problem_id, _whitespace_normalized(trace.completion))
    if key not in seen:
      seen.add(key)
      kept.append(trace)
  return kept


def max_per_problem(traces: Sequence[Trace], limit: int) -> list[Trace]:
  """At most `limit` traces per problem (the first ones in sorted order)."""
  counts = collections.Counter()
  kept = []
  for trace in traces:
    if counts[trace.problem_id] < limit:
      counts[trace.problem_id] += 1
      kept.append(trace)
  return kept


def within_length(traces: Sequence[Trace], *, min_tokens: int = 0,
                  max_tokens: int = 0, min_chars: int = 0,
                  max_chars: int = 0) -> list[Trace]:
  """Traces within the bounds (0 = unbounded) on num_tokens and characters."""
  by_tokens = min_tokens > 0 or max_tokens > 0
  kept = []
  for trace in traces:
    if by_tokens and trace.num_tokens is None:
      raise ValueError(
          f'The length filter bounds tokens but trace ({trace.problem_id}, '
          f'sample {trace.sample_index}) has no num_tokens.')
    if by_tokens and (trace.num_tokens < min_tokens or
                      (max_tokens > 0 and trace.num_tokens > max_tokens)):
      continue
    length = len(trace.completion)
    if length < min_chars or (max_chars > 0 and length > max_chars):
      continue
    kept.append(trace)
  return kept


_WORD = re.compile(r'\S+')


def repeated_ngram_fraction(text: str, ngram_size: int) -> tuple[float, int]:
  """(Fraction of word n-grams repeating an earlier one, number of n-grams)."""
  words = _WORD.findall(text)
  ngrams = [tuple(words[i:i + ngram_size])
            for i in range(len(words) - ngram_size + 1)]
  if not ngrams:
    return 0.0, 0
  return 1.0 - len(set(ngrams)) / len(ngrams), len(ngrams)


def not_repetitive(traces: Sequence[Trace], *, ngram_size: int,
                   max_fraction: float, min_ngrams: int) -> list[Trace]:
  """Traces whose repeated n-gram fraction is at most `max_fraction`."""
  kept = []
  for trace in traces:
    fraction, count = repeated_ngram_fraction(trace.completion, ngram_size)
    if count < min_ngrams or fraction <= max_fraction:
      kept.append(trace)
  return kept


# An answer statement: from its marker to the end of the line.
_ANSWER_STATEMENT = re.compile(
    r'(?:####|\\boxed|\bthe\s+(?:final\s+)?answer\s+is\b|\banswer\s*:)'
    r'[^\n]*', re.IGNORECASE)
_REASONING_WORD = re.compile(r'[A-Za-z]+|\d+(?:[.,]\d+)*')


def reasoning_text(completion: str) -> str:
  """The completion without its answer statements ('The answer is 5.')."""
  return _ANSWER_STATEMENT.sub(' ', completion)


def reasoning_words(completion: str) -> int:
  """Words and numbers outside the answer statements."""
  return len(_REASONING_WORD.findall(reasoning_text(completion)))


def has_reasoning(traces: Sequence[Trace]) -> list[Trace]:
  """Drops completions that are only a final answer ('#### 5')."""
  return [t for t in traces if reasoning_words(t.completion) > 0]


def enough_reasoning(traces: Sequence[Trace], min_words: int) -> list[Trace]:
  """Drops completions with fewer than `min_words` words of reasoning."""
  return [t for t in traces if reasoning_words(t.completion) >= min_words]


# --- pipeline ----------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Filter:
  """A named filter: `apply(traces)` returns the traces it keeps."""
  name: str
  apply: Callable[[Sequence[Trace]], list[Trace]]


FilterFn = Callable[[Sequence[Trace]], list[Trace]]


def _max_per_problem(config: ml_collections.ConfigDict) -> FilterFn:
  limit = int(config.max_per_problem)
  if limit < 1:
    raise config_fields.ConfigError(
        f'config.prune.max_per_problem={limit} must be >= 1.')
  return lambda traces: max_per_problem(traces, limit)


def _length(config: ml_collections.ConfigDict) -> FilterFn:
  bounds = {key: int(config[key]) for key in
            ('min_tokens', 'max_tokens', 'min_chars', 'max_chars')}
  for key, value in bounds.items():
    if value < 0:
      raise config_fields.ConfigError(
          f'config.prune.{key}={value} must be >= 0.')
  return lambda traces: within_length(traces, **bounds)


def _repetition(config: ml_collections.ConfigDict) -> FilterFn:
  ngram_size = int(config.repetition_ngram_size)
  max_fraction = float(config.repetition_max_fraction)
  min_ngrams = int(config.repetition_min_ngrams)
  if ngram_size < 1 or not 0.0 <= max_fraction <= 1.0:
    raise config_fields.ConfigError(
        'config.prune.repetition_ngram_size must be >= 1 and '
        'config.prune.repetition_max_fraction in [0, 1].')
  return lambda traces: not_repetitive(
      traces, ngram_size=ngram_size, max_fraction=max_fraction,
      min_ngrams=min_ngrams)


def _short_reasoning(config: ml_collections.ConfigDict) -> FilterFn:
  min_words = int(config.min_reasoning_words)
  return lambda traces: enough_reasoning(traces, min_words)


# The registry: a filter's name -> a factory taking `config.prune` and
# returning the filter. A new filter is one entry here (and its function).
FILTERS: Mapping[str, Callable[[ml_collections.ConfigDict], FilterFn]] = {
    'correct': lambda config: keep_correct,
    'none': lambda config: keep_all,
    'first_correct': lambda config: first_correct,
    'dedup': lambda config: dedup,
    'max_per_problem': _max_per_problem,
    'length': _length,
    'repetition': _repetition,
    'no_reasoning': lambda config: has_reasoning,
    'short_reasoning': _short_reasoning,
}
STRATEGIES = tuple(FILTERS)


def _filter(name: str, config: ml_collections.ConfigDict) -> Filter:
  """The filter called `name`, with its parameters from `config`."""
  if name not in FILTERS:
    raise config_fields.ConfigError(
        f'Unknown pruning strategy {name!r}; choose from '
        f'{", ".join(STRATEGIES)}.')
  return Filter(name, FILTERS[name](config))


def parse_strategies(strategies: str | Sequence[str]) -> tuple[str, ...]:
  """'correct, dedup' or ('correct', 'dedup') -> ('correct', 'dedup')."""
  if isinstance(strategies, str):
    names = [s.strip() for s in strategies.split(',')]
  else:
    names = [str(s).strip() for s in strategies]
  names = tuple(name for name in names if name)
  if not names:
    raise ValueError('config.prune.strategies is empty; use "none" to keep '
                     'every trace.')
  for name in names:
    if name not in STRATEGIES:
      raise ValueError(f'Unknown pruning strategy {name!r} in '
                       f'config.prune.strategies; choose from '
                       f'{", ".join(STRATEGIES)}.')
  if len(set(names)) != len(names):
    raise ValueError(f'config.prune.strategies {names} repeats a filter.')
  return names


@dataclasses.dataclass(frozen=True)
class Pipeline:
  """Filters applied in order; call it on traces to get a `PruneResult`."""
  filters: tuple[Filter, ...]

  @property
  def names(self) -> tuple[str, ...]:
    return tuple(f.name for f in self.filters)

  def __call__(self, traces: Sequence[Trace]) -> PruneResult:
    current = sorted(traces, key=_sort_key)
    removed = {}
    for f in self.filters:
      kept = f.apply(current)
      removed[f.name] = len(current) - len(kept)
      current = kept
    return PruneResult(kept=current, removed=removed)


def _sort_key(trace: Trace) -> tuple[str, int, str]:
  return trace.problem_id, trace.sample_index, trace.completion


def build_pipeline(config: ml_collections.ConfigDict) -> Pipeline:
  """The pipeline `config.prune` describes (see default_config)."""
  return Pipeline(tuple(_filter(name, config)
                        for name in parse_strategies(config.strategies)))


def prune(traces: Sequence[Trace],
          config: ml_collections.ConfigDict | None = None) -> PruneResult:
  """Applies `build_pipeline(config)` (default: default_config()) to traces."""
  return build_pipeline(config or default_config())(traces)


def format_report(result: PruneResult, num_input: int) -> str:
  """'kept 12/40 (correct: -25, dedup: -3)' for logs."""
  parts = ', '.join(f'{name}: -{count}' for name, count in
                    result.removed.items())
  return f'kept {len(result.kept)}/{num_input} ({parts})'


def removed_counts_as_metrics(result: PruneResult,
                              prefix: str = 'prune/') -> Mapping[str, int]:
  """`{'prune/removed_<filter>': n, 'prune/kept': k}` for metric writers."""
  metrics = {f'{prefix}removed_{name}': count
             for name, count in result.removed.items()}
  metrics[f'{prefix}kept'] = len(result.kept)
  return metrics
