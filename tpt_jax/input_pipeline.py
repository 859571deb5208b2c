"""Train-stage input: round datasets -> tokenized, mixed, packed batches.

Each source is a round's pruned traces: a TFDS dataset directory (read with
`tfds.builder_from_directory(dir).as_data_source(split)`) or any sequence of
mappings; either way an example needs string features `prompt` and
`completion` (other features are ignored).

An example becomes `[BOS] prompt completion terminator` (the prompt in the chat
template when the checkpoint is instruction-tuned; the terminator is
`<end_of_turn>` with the template, `<eos>` without, and not added twice). The
model reads all but the last token and predicts all but the first; only
predictions of completion (and terminator) tokens enter the loss.

Order. Sources are interleaved by weight with a smooth deterministic rule
(next comes the source furthest behind its share) and each source is read in a
fresh permutation per epoch, seeded by (seed, source, epoch). The whole stream
is a function of the seed and of the number of examples taken from each
source, so that count vector (plus the batch index inside a length-sorting
window) is the pipeline's checkpointable state.

Batching. With packing, examples are placed first-fit into `batch_size` rows
of `max_seq_len` tokens in stream order; a batch closes at the first example
that fits no row. Each example restarts positions at 0 and gets its own
segment id, and the train step attends only within a segment. Without
packing, each row holds one example: windows of `bucket_window` batches are
sorted by length, cut into batches, shuffled, and each batch is padded to a
multiple of `pad_to_multiple` (length bucketing). `evaluation_batches`
(the held-out loss) packs a source's examples the same way, each exactly
once, in order.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
import dataclasses
import logging
import math
import os
import pathlib
from typing import Any

import numpy as np

from tpt_jax import tokenizer as tokenizer_lib

Record = Mapping[str, Any]
Source = str | os.PathLike[str] | Sequence[Record]
Batch = dict[str, np.ndarray]
PipelineState = dict[str, Any]

REQUIRED_FEATURES = ('prompt', 'completion')
TOO_LONG_CHOICES = ('drop', 'truncate', 'error')
BATCH_KEYS = ('inputs', 'targets', 'loss_mask', 'positions', 'segment_ids')


# --- reading -----------------------------------------------------------------


def open_source(source: Source, *, split: str = 'train'
                ) -> tuple[str, Sequence[Record]]:
  """Returns (name, random-access examples) of one source.

  Raises:
    FileNotFoundError: a directory that does not exist or holds no TFDS
      dataset.
    ValueError: a dataset without the `prompt`/`completion` features, without
      `split`, or with no examples.
  """
  if not isinstance(source, (str, os.PathLike)):
    if not isinstance(source, Sequence):
      raise TypeError(
          f'Training source {source!r} is neither a dataset directory nor a '
          'sequence of {"prompt", "completion"} mappings (pass a list).')
    name = f'<in-memory source of {len(source)} examples>'
    if not source:
      raise ValueError(f'Training source {name} is empty.')
    return name, source
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  path = pathlib.Path(source)
  if not path.is_dir():
    raise FileNotFoundError(
        f'Training dataset directory {str(path)!r} does not exist.')
  if not (path / 'dataset_info.json').is_file():
    raise FileNotFoundError(
        f'Training dataset directory {str(path)!r} holds no TFDS dataset '
        '(no dataset_info.json); expected a round\'s traces as written by '
        'tpt_jax.records.')
  builder = tfds.builder_from_directory(str(path))
  features = builder.info.features
  missing = [f for f in REQUIRED_FEATURES if f not in features]
  if missing:
    raise ValueError(
        f'Training dataset {str(path)!r} lacks feature(s) {missing}; it has '
        f'{sorted(features)}.')
  if split not in builder.info.splits:
    raise ValueError(
        f'Training dataset {str(path)!r} has no split {split!r}; it has '
        f'{sorted(builder.info.splits)}.')
  if builder.info.splits[split].num_examples == 0:
    raise ValueError(
        f'Training dataset {str(path)!r} split {split!r} has no examples.')
  return str(path), builder.as_data_source(split=split)


def _as_text(value: Any, *, name: str, index: int, feature: str) -> str:
  if isinstance(value, bytes):
    return value.decode('utf-8')
  if isinstance(value, np.ndarray) and value.dtype.kind in 'OSU' and (
      value.ndim == 0):
    return _as_text(value.item(), name=name, index=index, feature=feature)
  if isinstance(value, str):
    return value
  raise ValueError(
      f'{name} example {index}: feature {feature!r} is a '
      f'{type(value).__name__}, not a string.')


# --- tokenizing --------------------------------------------------------------


def encode_example(tokenizer: tokenizer_lib.Tokenizer, prompt: str,
                   completion: str, *, chat_template: bool
                   ) -> tuple[np.ndarray, int]:
  """Token ids of `prompt + completion + terminator` and the prompt length.

  The prompt is encoded exactly as the sampler encodes it (BOS, optional chat
  template); the completion separately, as the sampler produced it.
  """
  prompt_ids = tokenizer_lib.encode_prompt(tokenizer, prompt,
                                           chat_template=chat_template)
  completion_ids = [int(t) for t in tokenizer.encode(completion)]
  terminator = tokenizer_lib.terminator_id(tokenizer,
                                           chat_template=chat_template)
  if not completion_ids or completion_ids[-1] not in (
      tokenizer_lib.eos_token_ids(tokenizer)):
    completion_ids.append(terminator)
  return np.asarray(prompt_ids + completion_ids, np.int32), len(prompt_ids)


@dataclasses.dataclass(frozen=True)
class TokenizedSource:
  """One source, tokenized and length-filtered.

  Attributes:
    name: the directory (or a description of an in-memory source).
    token_ids: per example, `prompt + completion + terminator` ids.
    prompt_lengths: per example, how many leading ids are prompt.
    num_dropped: examples left out for being longer than `max_seq_len`.
  """
  name: str
  token_ids: tuple[np.ndarray, ...]
  prompt_lengths: np.ndarray
  num_dropped: int = 0

  def __len__(self) -> int:
    return len(self.token_ids)

  @property
  def lengths(self) -> np.ndarray:
    """Tokens each example occupies in a row (inputs: all ids but the last)."""
    return np.asarray([len(ids) - 1 for ids in self.token_ids], np.int64)


def tokenize_source(source: Source, tokenizer: tokenizer_lib.Tokenizer, *,
                    chat_template: bool, max_seq_len: int,
                    too_long: str = 'drop',
                    split: str = 'train',
                    allow_empty: bool = False) -> TokenizedSource:
  """Reads and tokenizes every example of a source.

  Args:
    source: a TFDS directory or a sequence of {'prompt', 'completion'} dicts.
    tokenizer: the model's tokenizer.
    chat_template: wrap prompts in the chat template.
    max_seq_len: row length; an example may use at most this many tokens.
    too_long: for longer examples: 'drop' them (with a warning), 'truncate'
      the completion (dropping those whose prompt alone fills the row), or
      'error'.
    split: the TFDS split to read.
    allow_empty: return an empty source when every example was dropped for
      its length (else that is an error).

  Raises:
    ValueError: a missing or non-string feature, an over-long example with
      too_long='error', or nothing left after dropping (naming the source).
  """
  if too_long not in TOO_LONG_CHOICES:
    raise ValueError(f'config.train.too_long={too_long!r} is not one of '
                     f'{", ".join(TOO_LONG_CHOICES)}.')
  name, records = open_source(source, split=split)
  all_ids, prompt_lengths = [], []
  num_dropped = 0
  for index in range(len(records)):
    record = records[index]
    for feature in REQUIRED_FEATURES:
      if feature not in record:
        raise ValueError(
            f'{name} example {index} lacks feature {feature!r}; it has '
            f'{sorted(record)}.')
    prompt = _as_text(record['prompt'], name=name, index=index,
                      feature='prompt')
    completion = _as_text(record['completion'], name=name, index=index,
                          feature='completion')
    ids, prompt_length = encode_example(tokenizer, prompt, completion,
                                        chat_template=chat_template)
    if len(ids) - 1 > max_seq_len:
      if too_long == 'error':
        raise ValueError(
            f'{name} example {index} has {len(ids) - 1} tokens, more than '
            f'config.train.max_seq_len={max_seq_len} (set config.train.'
            'too_long to "drop" or "truncate" to allow this).')
      if too_long == 'truncate' and prompt_length < max_seq_len + 1:
        ids = ids[:max_seq_len + 1]
      else:
        num_dropped += 1
        continue
    all_ids.append(ids)
    prompt_lengths.append(prompt_length)
  if num_dropped:
    logging.warning(
        '%s: left out %d of %d examples longer than max_seq_len=%d tokens.',
        name, num_dropped, len(records), max_seq_len)
  if not all_ids and not allow_empty:
    raise ValueError(
        f'{name}: all {len(records)} examples are longer than '
        f'config.train.max_seq_len={max_seq_len} tokens.')
  return TokenizedSource(name=name, token_ids=tuple(all_ids),
                         prompt_lengths=np.asarray(prompt_lengths, np.int64),
                         num_dropped=num_dropped)


# --- order -------------------------------------------------------------------


class _Mixture:
  """The deterministic example stream over several sources.

  Position in the stream = `counts`, the number of examples taken so far from
  each source. The next source is the one furthest behind its weighted share;
  source s's c-th example is permutation(seed, s, c // n_s)[c % n_s].
  """

  def __init__(self, sizes: Sequence[int], weights: Sequence[float],
               seed: int):
    self._sizes = [int(n) for n in sizes]
    total = float(sum(weights))
    self._weights = np.asarray(weights, np.float64) / total
    self._seed = int(seed)
    self._permutations: dict[tuple[int, int], np.ndarray] = {}

  def next_source(self, counts: Sequence[int]) -> int:
    taken = sum(counts) + 1
    deficits = self._weights * taken - np.asarray(counts, np.float64)
    return int(np.argmax(deficits))

  def example_index(self, source: int, count: int) -> int:
    epoch, offset = divmod(count, self._sizes[source])
    key = (source, epoch)
    if key not in self._permutations:
      # Keep only the current epoch's permutation of each source.
      self._permutations = {k: v for k, v in self._permutations.items()
                            if k[0] != source}
      rng = np.random.default_rng([self._seed, source, epoch])
      self._permutations[key] = rng.permutation(self._sizes[source])
    return int(self._permutations[key][offset])


def _resolve_weights(sources: Sequence[TokenizedSource],
                     weights: Sequence[float]) -> list[float]:
  if not weights:
    return [float(len(s)) for s in sources]
  weights = [float(w) for w in weights]
  if len(weights) != len(sources):
    raise ValueError(
        f'config.train.mixture_weights has {len(weights)} entries for '
        f'{len(sources)} training sources.')
  if any(w < 0 or not math.isfinite(w) for w in weights) or sum(weights) <= 0:
    raise ValueError(
        f'config.train.mixture_weights={tuple(weights)} must be finite, '
        'non-negative and not all zero.')
  return weights


# --- batching ----------------------------------------------------------------


class InputPipeline:
  """Batches of packed (or length-bucketed) examples, resumable by state.

  `next_batch()` returns numpy arrays `[batch_size, length]`:
    inputs       token ids the model reads (0 = padding).
    targets      next-token ids to predict.
    loss_mask    True where the target is a completion token.
    positions    position of each token within its own example.
    segment_ids  1, 2, ... per example within a row; 0 = padding.
  `length` is `max_seq_len` when packing, else the batch's bucket length.
  `state` / `restore(state)` save and reload the stream position (JSON-able).
  """

  def __init__(self, sources: Sequence[TokenizedSource], *, batch_size: int,
               max_seq_len: int, seed: int, packing: bool = True,
               mixture_weights: Sequence[float] = (),
               bucket_window: int = 8, pad_to_multiple: int = 64):
    if not sources:
      raise ValueError('No training sources given.')
    if batch_size < 1 or max_seq_len < 1:
      raise ValueError(f'batch_size={batch_size} and max_seq_len='
                       f'{max_seq_len} must be positive.')
    self._sources = tuple(sources)
    self._lengths = [s.lengths for s in sources]
    for source, lengths in zip(sources, self._lengths):
      if lengths.max() > max_seq_len:
        raise ValueError(f'{source.name} has examples of {lengths.max()} '
                         f'tokens, more than max_seq_len={max_seq_len}.')
    self._batch_size = batch_size
    self._max_seq_len = max_seq_len
    self._packing = packing
    self._bucket_window = max(1, int(bucket_window))
    self._pad_to_multiple = max(1, int(pad_to_multiple))
    self._seed = int(seed)
    weights = _resolve_weights(sources, mixture_weights)
    self._mixture = _Mixture([len(s) for s in sources], weights, seed)
    self._epoch_size = sum(len(s) for s, w in zip(sources, weights) if w > 0)
    # Stream position of the next batch (of its window, when bucketing).
    self._counts = [0] * len(sources)
    self._batch_in_window = 0
    self._window: list[list[list[tuple[int, int]]]] | None = None
    self._window_end_counts: list[int] = []

  @property
  def num_examples(self) -> int:
    """Examples in one epoch: all examples of the sources with weight > 0."""
    return self._epoch_size

  @property
  def state(self) -> PipelineState:
    """The stream position (JSON-able); `restore` continues from it."""
    return {'counts': list(self._counts),
            'batch_in_window': self._batch_in_window}

  def restore(self, state: PipelineState) -> None:
    counts = [int(c) for c in state['counts']]
    if len(counts) != len(self._sources):
      raise ValueError(
          f'Checkpointed data state has {len(counts)} sources; this run has '
          f'{len(self._sources)}.')
    self._counts = counts
    self._batch_in_window = int(state.get('batch_in_window', 0))
    self._window = None

  # Plans: rows of (source, example index), computed from lengths only.

  def _plan_packed(self, counts: list[int]
                   ) -> tuple[list[list[tuple[int, int]]], list[int]]:
    counts = list(counts)
    rows: list[list[tuple[int, int]]] = [[] for _ in range(self._batch_size)]
    free = [self._max_seq_len] * self._batch_size
    while True:
      source = self._mixture.next_source(counts)
      index = self._mixture.example_index(source, counts[source])
      length = int(self._lengths[source][index])
      row = next((r for r, f in enumerate(free) if f >= length), None)
      if row is None:
        return rows, counts
      rows[row].append((source, index))
      free[row] -= length
      counts[source] += 1

  def _plan_window(self, counts: list[int]
                   ) -> tuple[list[list[list[tuple[int, int]]]], list[int]]:
    counts = list(counts)
    refs = []
    for _ in range(self._bucket_window * self._batch_size):
      source = self._mixture.next_source(counts)
      refs.append((source, self._mixture.example_index(source,
                                                       counts[source])))
      counts[source] += 1
    refs.sort(key=lambda ref: int(self._lengths[ref[0]][ref[1]]))
    batches = [[[ref] for ref in refs[i:i + self._batch_size]]
               for i in range(0, len(refs), self._batch_size)]
    order = np.random.default_rng(
        [self._seed, sum(counts)]).permutation(len(batches))
    return [batches[i] for i in order], counts

  def _next_plan(self) -> list[list[tuple[int, int]]]:
    if self._packing:
      rows, self._counts = self._plan_packed(self._counts)
      return rows
    if self._window is None:
      self._window, self._window_end_counts = self._plan_window(self._counts)
    rows = self._window[self._batch_in_window]
    self._batch_in_window += 1
    if self._batch_in_window == len(self._window):
      self._counts, self._batch_in_window = self._window_end_counts, 0
      self._window = None
    return rows

  def batches_for_examples(self, num_examples: int) -> int:
    """Batches (from the start) until `num_examples` have been taken."""
    if not self._packing:
      window = self._bucket_window * self._batch_size
      return math.ceil(num_examples / window) * self._bucket_window
    counts, batches = [0] * len(self._sources), 0
    while sum(counts) < num_examples:
      _, counts = self._plan_packed(counts)
      batches += 1
    return batches

  def _row_length(self, rows: list[list[tuple[int, int]]]) -> int:
    if self._packing:
      return self._max_seq_len
    longest = max(int(self._lengths[s][i]) for row in rows for s, i in row)
    padded = -(-longest // self._pad_to_multiple) * self._pad_to_multiple
    return min(padded, self._max_seq_len)

  def next_batch(self) -> Batch:
    """The next batch of the stream (advances the state)."""
    rows = self._next_plan()
    return _fill_batch(self._sources, rows, self._batch_size,
                       self._row_length(rows))


def _fill_batch(sources: Sequence[TokenizedSource],
                rows: Sequence[Sequence[tuple[int, int]]], batch_size: int,
                length: int) -> Batch:
  """The batch whose row r holds the examples `rows[r]` ((source, index)
  pairs) one after another; rows past `len(rows)` are padding."""
  batch = {
      'inputs': np.zeros((batch_size, length), np.int32),
      'targets': np.zeros((batch_size, length), np.int32),
      'loss_mask': np.zeros((batch_size, length), np.bool_),
      'positions': np.zeros((batch_size, length), np.int32),
      'segment_ids': np.zeros((batch_size, length), np.int32),
  }
  for r, row in enumerate(rows):
    start = 0
    for segment, (s, i) in enumerate(row, start=1):
      ids = sources[s].token_ids[i]
      prompt_length = int(sources[s].prompt_lengths[i])
      n = len(ids) - 1
      span = slice(start, start + n)
      batch['inputs'][r, span] = ids[:-1]
      batch['targets'][r, span] = ids[1:]
      # Target j is token j + 1: a completion token iff j + 1 >= prompt.
      batch['loss_mask'][r, span] = np.arange(1, n + 1) >= prompt_length
      batch['positions'][r, span] = np.arange(n)
      batch['segment_ids'][r, span] = segment
      start += n
  return batch


def evaluation_batches(source: TokenizedSource, *, batch_size: int,
                       max_seq_len: int) -> list[Batch]:
  """Every example of `source` exactly once, in order, packed first-fit into
  `batch_size` rows of `max_seq_len` tokens (one shape: one compilation);
  the last batch's unused rows are padding (no loss tokens).

  Packed examples do not attend to each other (segment ids), so the summed
  loss over these batches is the sum of every example's own loss.
  """
  lengths = source.lengths
  if len(lengths) and lengths.max() > max_seq_len:
    raise ValueError(f'{source.name} has examples of {lengths.max()} '
                     f'tokens, more than max_seq_len={max_seq_len}.')
  batches = []
  rows: list[list[tuple[int, int]]] = []
  free: list[int] = []
  for index, length in enumerate(lengths):
    row = next((r for r, f in enumerate(free) if f >= length), None)
    if row is None:
      if len(rows) == batch_size:
        batches.append(_fill_batch([source], rows, batch_size, max_seq_len))
        rows, free = [], []
      rows.append([])
      free.append(max_seq_len)
      row = len(rows) - 1
    rows[row].append((0, index))
    free[row] -= int(length)
  if rows:
    batches.append(_fill_batch([source], rows, batch_size, max_seq_len))
  return batches


def build_pipeline(sources: Sequence[Source],
                   tokenizer: tokenizer_lib.Tokenizer, *,
                   train_config: Any, chat_template: bool, seed: int
                   ) -> InputPipeline:
  """Tokenizes `sources` and builds the pipeline `config.train` describes."""
  tokenized = [
      tokenize_source(source, tokenizer, chat_template=chat_template,
                      max_seq_len=train_config.max_seq_len,
                      too_long=train_config.too_long,
                      split=train_config.data_split)
      for source in sources
  ]
  return InputPipeline(
      tokenized, batch_size=train_config.batch_size,
      max_seq_len=train_config.max_seq_len, seed=seed,
      packing=train_config.packing,
      mixture_weights=tuple(train_config.mixture_weights),
      bucket_window=train_config.bucket_window,
      pad_to_multiple=train_config.pad_to_multiple)
