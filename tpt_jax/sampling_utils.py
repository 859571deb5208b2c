"""Host-side helpers of the Think stage: batch plans, segments, stop strings.

Everything here is plain Python / numpy that runs once per call, outside the
jitted programs of `tpt_jax.sampling`:

  * `plan_batches` groups the (problem, sample) rows into fixed-shape decode
    batches, sorted by prompt-length bucket so that short prompts get short
    caches, with the samples of one problem next to each other so that they
    can share one prefill;
  * `stop_string_tables` compiles stop strings into per-token transition
    tables of a string-matching automaton (KMP over bytes), so that the
    decode loop can detect a stop string that is split over several tokens
    with one gather per step, without detokenizing on the device;
  * `decode_segment_ends` splits the decode steps into segments, each run
    over a cache just long enough for it;
  * `problem_key_index` maps a caller's problem id to the integer that is
    folded into the random key, so a trace depends on the id, not on where
    the problem sits in a batch.
"""

from __future__ import annotations

import dataclasses
import hashlib
import math
from typing import Any, Sequence

import numpy as np

# Rows of a decode batch that hold no (problem, sample): they start finished.
PADDING_ROW = -1

# Shorter decode segments save little attention and cost a compiled loop body.
MIN_STEPS_PER_CACHE_SEGMENT = 8

_SENTENCEPIECE_SPACE = '\u2581'
_SENTENCEPIECE_UNKNOWN_TEXT = ' \u2047 '


def problem_key_index(problem_id: int | str) -> int:
  """The uint32 folded into the sampling key for a problem id.

  Integers in [0, 2**32) are used as they are; strings are hashed (SHA-256,
  first 4 bytes), which is stable across processes and Python versions.

  Raises:
    ValueError: an integer id outside [0, 2**32), or another type.
  """
  if isinstance(problem_id, (bool, np.bool_)):
    raise ValueError(f'problem id {problem_id!r} must be an int or a str.')
  if isinstance(problem_id, (int, np.integer)):
    if not 0 <= int(problem_id) < 2**32:
      raise ValueError(
          f'problem id {int(problem_id)} must lie in [0, 2**32) to be folded '
          'into the sampling key; pass a str id to have it hashed.')
    return int(problem_id)
  if isinstance(problem_id, str):
    digest = hashlib.sha256(problem_id.encode('utf-8')).digest()
    return int.from_bytes(digest[:4], 'little')
  raise ValueError(
      f'problem id {problem_id!r} must be an int or a str, not '
      f'{type(problem_id).__name__}.')


def bucket_for_length(length: int, buckets: Sequence[int]) -> int:
  """The smallest bucket that holds `length` tokens (buckets ascending)."""
  for bucket in buckets:
    if length <= bucket:
      return bucket
  raise ValueError(
      f'prompt of {length} tokens is longer than the largest prompt length '
      f'bucket {buckets[-1]} (prompt_length_buckets={tuple(buckets)}).')


@dataclasses.dataclass(frozen=True)
class BatchPlan:
  """One decode batch: which rows it holds and which prompts it prefills.

  Attributes:
    row_problem: [rows] caller's problem index of each row (PADDING_ROW for
      filler rows).
    row_sample: [rows] sample index of each row within its problem.
    row_prefill_slot: [rows] which prefill row each row copies its cache from.
    prefill_problem: [prefill_rows] caller's problem index of each prefill
      row (PADDING_ROW for filler rows).
    prompt_bucket: padded prompt length of this batch.
  """
  row_problem: np.ndarray
  row_sample: np.ndarray
  row_prefill_slot: np.ndarray
  prefill_problem: np.ndarray
  prompt_bucket: int

  @property
  def num_active_rows(self) -> int:
    return int(np.sum(self.row_problem != PADDING_ROW))


def _round_up(value: int, multiple: int) -> int:
  return int(math.ceil(value / multiple) * multiple)


def max_problems_per_batch(rows_per_batch: int, num_samples: int) -> int:
  """Most problems that B consecutive rows (batches start at multiples of B)
  can touch when each problem fills `num_samples` consecutive rows."""
  most = 0
  # The offset of a batch start within a problem cycles with period
  # num_samples / gcd(rows_per_batch, num_samples).
  for batch_index in range(num_samples):
    first_row = batch_index * rows_per_batch
    last_row = first_row + rows_per_batch - 1
    most = max(most, last_row // num_samples - first_row // num_samples + 1)
  return most


def batch_shape(num_problems: int, num_samples: int, batch_size: int,
                row_multiple: int) -> tuple[int, int]:
  """(rows per decode batch, rows per prefill), both multiples of
  `row_multiple` (the number of devices the batch is split over).

  A run with fewer rows than `batch_size` gets a smaller batch (no compute
  spent on filler rows), rounded up to the device multiple.
  """
  total_rows = num_problems * num_samples
  rows = _round_up(min(batch_size, total_rows), row_multiple)
  prefill_rows = min(max_problems_per_batch(rows, num_samples), num_problems)
  return rows, _round_up(prefill_rows, row_multiple)


def plan_batches(prompt_lengths: Sequence[int], *, num_samples: int,
                 batch_size: int, buckets: Sequence[int],
                 row_multiple: int = 1) -> list[BatchPlan]:
  """Splits the (problem, sample) rows into fixed-shape decode batches.

  Problems are ordered by prompt-length bucket (stable, so ties keep the
  caller's order); the rows of that order are cut into batches of a fixed
  number of rows, the last one filled up with PADDING_ROW rows. A batch's
  prompt bucket is the largest bucket among its prompts. Which batch a row
  lands in does not change its trace (see `tpt_jax.sampling`), only speed.
  """
  buckets = tuple(sorted(buckets))
  problem_buckets = [bucket_for_length(n, buckets) for n in prompt_lengths]
  order = sorted(range(len(prompt_lengths)),
                 key=lambda i: (problem_buckets[i], i))
  rows, prefill_rows = batch_shape(len(prompt_lengths), num_samples,
                                   batch_size, row_multiple)
  all_problems = np.repeat(np.asarray(order, np.int64), num_samples)
  all_samples = np.tile(np.arange(num_samples, dtype=np.int64), len(order))
  plans = []
  for start in range(0, len(all_problems), rows):
    row_problem = all_problems[start:start + rows]
    row_sample = all_samples[start:start + rows]
    num_filler = rows - len(row_problem)
    # Prefill rows: the batch's problems, in row order.
    first_seen = {}
    for problem in row_problem:
      first_seen.setdefault(int(problem), len(first_seen))
    prefill_problem = np.asarray(list(first_seen), np.int64)
    row_prefill_slot = np.asarray([first_seen[int(p)] for p in row_problem],
                                  np.int64)
    assert len(prefill_problem) <= prefill_rows, (len(prefill_problem),
                                                  prefill_rows)
    plans.append(BatchPlan(
        row_problem=np.concatenate(
            [row_problem, np.full(num_filler, PADDING_ROW)]),
        row_sample=np.concatenate([row_sample, np.zeros(num_filler, np.int64)]),
        row_prefill_slot=np.concatenate(
            [row_prefill_slot, np.zeros(num_filler, np.int64)]),
        prefill_problem=np.concatenate(
            [prefill_problem,
             np.full(prefill_rows - len(prefill_problem), PADDING_ROW)]),
        prompt_bucket=max(problem_buckets[int(p)] for p in prefill_problem),
    ))
  return plans


def decode_segment_ends(max_new_tokens: int, max_segments: int
                        ) -> tuple[int, ...]:
  """How decode steps 1..max_new_tokens - 1 split into cache segments.

  Segment k runs the steps below `ends[k]` (from the previous end, or 1)
  with a cache of `prompt_bucket + ends[k] - 1` slots: just enough for its
  last step. Segments have at least MIN_STEPS_PER_CACHE_SEGMENT steps.
  """
  num_steps = max_new_tokens - 1
  if num_steps <= 0:
    return ()
  per_segment = max(-(-num_steps // max_segments), MIN_STEPS_PER_CACHE_SEGMENT)
  return tuple(min(1 + per_segment * (k + 1), max_new_tokens)
               for k in range(max_segments) if per_segment * k < num_steps)


def decode_cache_lengths(prompt_bucket: int, max_new_tokens: int,
                         max_segments: int) -> list[int]:
  """Cache slots that decode step t = 1..max_new_tokens - 1 attends over."""
  lengths = []
  start = 1
  for end in decode_segment_ends(max_new_tokens, max_segments):
    lengths += [prompt_bucket + end - 1] * (end - start)
    start = end
  return lengths


def sentencepiece_token_bytes(processor) -> list[bytes]:
  """The bytes each token id contributes to a detokenized string.

  Control tokens (pad, eos, bos) contribute nothing, byte-fallback tokens
  their byte, the unknown token ' ⁇ ', every other piece its text with
  sentencepiece's '▁' turned into a space.
  """
  token_bytes = []
  for token_id in range(processor.GetPieceSize()):
    piece = processor.IdToPiece(token_id)
    if processor.IsControl(token_id):
      token_bytes.append(b'')
    elif processor.IsUnknown(token_id):
      token_bytes.append(_SENTENCEPIECE_UNKNOWN_TEXT.encode('utf-8'))
    elif processor.IsByte(token_id):
      token_bytes.append(bytes([int(piece[3:-1], 16)]))  # '<0xAB>'.
    else:
      token_bytes.append(
          piece.replace(_SENTENCEPIECE_SPACE, ' ').encode('utf-8'))
  return token_bytes


def _kmp_automaton(pattern: bytes) -> np.ndarray:
  """[len+1, 256] next state after reading a byte; state len (a match) is
  absorbing."""
  length = len(pattern)
  automaton = np.zeros((length + 1, 256), np.int32)
  automaton[0, pattern[0]] = 1
  fallback = 0
  for state in range(1, length):
    automaton[state] = automaton[fallback]
    automaton[state, pattern[state]] = state + 1
    fallback = automaton[fallback, pattern[state]]
  automaton[length] = length
  return automaton


def _token_transitions(pattern: bytes, token_bytes: Sequence[bytes]
                       ) -> np.ndarray:
  """[len+1, num_tokens]: automaton state after reading each token's bytes
  from each state (vectorised over tokens, longest tokens first)."""
  automaton = _kmp_automaton(pattern)
  num_states = len(pattern) + 1
  lengths = np.asarray([len(b) for b in token_bytes], np.int64)
  order = np.argsort(-lengths, kind='stable')
  max_length = int(lengths.max()) if len(lengths) else 0
  byte_matrix = np.zeros((len(token_bytes), max(max_length, 1)), np.int64)
  for row, token_id in enumerate(order):
    data = token_bytes[token_id]
    byte_matrix[row, :len(data)] = np.frombuffer(data, np.uint8)
  states = np.broadcast_to(np.arange(num_states, dtype=np.int32),
                           (len(token_bytes), num_states)).copy()
  sorted_lengths = lengths[order]
  for position in range(max_length):
    count = int(np.sum(sorted_lengths > position))
    states[:count] = automaton[states[:count],
                               byte_matrix[:count, position][:, None]]
  transitions = np.empty((num_states, len(token_bytes)), np.int32)
  transitions[:, order] = states.T
  return transitions


def stop_string_tables(stop_strings: Sequence[str],
                       token_bytes: Sequence[bytes], vocab_size: int
                       ) -> tuple[np.ndarray, np.ndarray]:
  """Per-token transition tables that find stop strings across tokens.

  Args:
    stop_strings: non-empty strings.
    token_bytes: bytes of each tokenizer id (`sentencepiece_token_bytes`).
    vocab_size: the model's vocabulary (ids past the tokenizer's leave the
      state unchanged).

  Returns:
    table: [num_strings, max_len + 1, vocab_size] next automaton state
      (uint8 when it fits, else int32); state 0 is the start.
    match_state: [num_strings] the state meaning "this string occurred".
  """
  max_states = max(len(s.encode('utf-8')) for s in stop_strings) + 1
  dtype = np.uint8 if max_states <= 256 else np.int32
  table = np.zeros((len(stop_strings), max_states, vocab_size), dtype)
  match_state = np.zeros((len(stop_strings),), np.int32)
  num_tokens = min(len(token_bytes), vocab_size)
  for index, stop_string in enumerate(stop_strings):
    pattern = stop_string.encode('utf-8')
    transitions = _token_transitions(pattern, token_bytes[:num_tokens])
    table[index, :len(pattern) + 1, :num_tokens] = transitions
    # Ids the tokenizer does not know contribute no text.
    table[index, :len(pattern) + 1, num_tokens:] = np.arange(
        len(pattern) + 1)[:, None]
    match_state[index] = len(pattern)
  return table, match_state


def truncate_at_stop_strings(text: str, stop_strings: Sequence[str]
                             ) -> tuple[str, bool]:
  """`text` up to (without) the earliest stop string, and whether one
  occurred."""
  cut = min((i for i in (text.find(s) for s in stop_strings) if i >= 0),
            default=-1)
  if cut < 0:
    return text, False
  return text[:cut], True


def row_token_limits(max_new_tokens: Sequence[Any] | None, num_prompts: int,
                     num_samples: int, default: int) -> np.ndarray:
  """[num_prompts, num_samples] most tokens each trace may have.

  Args:
    max_new_tokens: None (all `default`) or one entry per prompt: an int in
      [1, default], None (`default`), or a sequence of `num_samples` such
      ints (one per sample; e.g. a benchmark imposing drawn lengths).
    num_prompts: how many prompts there are.
    num_samples: samples per prompt.
    default: `settings.max_new_tokens` (also the cap: buffers are sized by
      it).

  Raises:
    ValueError: wrong length, or a limit outside [1, default].
  """
  out = np.full((num_prompts, num_samples), default, np.int32)
  if max_new_tokens is None:
    return out
  entries = list(max_new_tokens)
  if len(entries) != num_prompts:
    raise ValueError(f'max_new_tokens has {len(entries)} entries for '
                     f'{num_prompts} prompts.')
  for index, entry in enumerate(entries):
    per_sample = ([entry] * num_samples if entry is None or np.ndim(entry) == 0
                  else list(entry))
    if len(per_sample) != num_samples:
      raise ValueError(f'max_new_tokens[{index}] has {len(per_sample)} '
                       f'limits for {num_samples} samples.')
    for sample, limit in enumerate(per_sample):
      if limit is None:
        limit = default
      if isinstance(limit, (bool, np.bool_)) or not isinstance(
          limit, (int, np.integer)) or not 1 <= limit <= default:
        raise ValueError(
            f'max_new_tokens[{index}]={entry!r} must be an int in [1, '
            f'{default}] or None, or one such per sample '
            '(settings.max_new_tokens caps every row).')
      out[index, sample] = limit
  return out
