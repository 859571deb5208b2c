"""Pruning: which sampled traces a round keeps for fine-tuning.

A pipeline is a sequence of filters chosen by `config.prune.strategies`
(e.g. 'correct,dedup,max_per_problem'), applied in that order. Each filter
removes traces and the pipeline reports how many per filter:

  correct           keep traces the verifier proved correct (the default).
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
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
import collections
import dataclasses
import re

import ml_collections

STRATEGIES = ('correct', 'none', 'dedup', 'max_per_problem', 'length',
              'repetition', 'no_reasoning', 'short_reasoning')


@dataclasses.dataclass(frozen=True)
class Trace:
  """One sampled completion of one problem, with its verdict.

  Attributes:
    problem_id: the problem's stable id (sources.Problem.problem_id).
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


@dataclasses.dataclass(frozen=True)
class PruneResult:
  """Kept traces and, per filter in order, how many it removed."""
  kept: list[Trace]
  removed: dict[str, int]

  @property
  def num_removed(self) -> int:
    return sum(self.removed.values())


def default_config() -> ml_collections.ConfigDict:
  """Defaults of `config.prune`: filters and verifier settings."""
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

  config.math = ml_collections.ConfigDict()
  # GSM8K: without an answer marker, take the completion's last number.
  config.math.last_number_fallback = True
  # MATH-style: time limit of one sympy equivalence check.
  config.math.sympy_timeout_s = 2.0

  config.demo = ml_collections.ConfigDict()
  # The demo task: a right answer also needs its worked lines to derive it
  # (see tasks.demo.worked_lines_hold); applies to pruning and evaluation.
  config.demo.check_worked_lines = False

  config.code = ml_collections.ConfigDict()
  config.code.timeout_s = 10.0  # Wall clock per program.
  config.code.cpu_time_s = 10  # CPU seconds per process.
  config.code.memory_mb = 1024  # Address space per process.
  config.code.max_output_bytes = 1 << 20  # stdout/stderr/any file written.
  config.code.max_processes = 32  # Processes + threads per sandbox.
  config.code.workdir_mb = 64  # Size of its working directory (root only).
  config.code.num_workers = 0  # Sandboxes run at once; 0 = one per core.
  return config


# --- filters: each maps sorted traces to the traces it keeps. ----------------


def keep_correct(traces: Sequence[Trace]) -> list[Trace]:
  """Traces whose verdict is correct (unverified ones are removed)."""
  return [t for t in traces if t.correct is True]


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


def _filter(name: str, config: ml_collections.ConfigDict) -> Filter:
  """The filter called `name`, with its parameters from `config`."""
  if name == 'correct':
    return Filter(name, keep_correct)
  if name == 'none':
    return Filter(name, keep_all)
  if name == 'dedup':
    return Filter(name, dedup)
  if name == 'max_per_problem':
    limit = int(config.max_per_problem)
    if limit < 1:
      raise ValueError(f'config.prune.max_per_problem={limit} must be >= 1.')
    return Filter(name, lambda traces: max_per_problem(traces, limit))
  if name == 'length':
    bounds = {key: int(config[key]) for key in
              ('min_tokens', 'max_tokens', 'min_chars', 'max_chars')}
    for key, value in bounds.items():
      if value < 0:
        raise ValueError(f'config.prune.{key}={value} must be >= 0.')
    return Filter(name, lambda traces: within_length(traces, **bounds))
  if name == 'repetition':
    ngram_size = int(config.repetition_ngram_size)
    max_fraction = float(config.repetition_max_fraction)
    min_ngrams = int(config.repetition_min_ngrams)
    if ngram_size < 1 or not 0.0 <= max_fraction <= 1.0:
      raise ValueError('config.prune.repetition_ngram_size must be >= 1 and '
                       'repetition_max_fraction in [0, 1].')
    return Filter(name, lambda traces: not_repetitive(
        traces, ngram_size=ngram_size, max_fraction=max_fraction,
        min_ngrams=min_ngrams))
  if name == 'no_reasoning':
    return Filter(name, has_reasoning)
  if name == 'short_reasoning':
    min_words = int(config.min_reasoning_words)
    return Filter(name, lambda traces: enough_reasoning(traces, min_words))
  raise ValueError(f'Unknown pruning strategy {name!r}; choose from '
                   f'{", ".join(STRATEGIES)}.')


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
