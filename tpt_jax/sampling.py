"""Think: sample reasoning traces from a Gemma2 model, fast and reproducibly.

`Sampler.sample(prompts, settings)` turns every (problem, sample) pair into a
`SampleResult` (completion tokens and text, finish reason, token count, sum
of log-probs) and yields them batch by batch, with a progress bar.

How a batch runs (two jitted programs per prompt-length bucket):

  * **Prefill** (`_prefill`): the batch's distinct prompts, left-padded to the
    bucket, go through the `gemma` transformer once, filling a KV cache of
    exactly the bucket's length. Its rows are then copied to the rows of
    every sample of that problem, and the first token is sampled.
  * **Decode** (`_decode`): a `lax.while_loop` feeds the last token of every
    row through the transformer with the cache. It stops when every row has
    finished (EOS, a stop token or stop string, or `max_new_tokens`); a
    finished row emits nothing more. gemma's attention reads every slot of
    the cache it is given, so the steps are split into a few segments, each
    a while loop over a cache just long enough for it (the cache grows in
    between): a step's cost follows the tokens made so far, not the final
    cache length.

Layout. `gm.nn.Attention` writes a step's keys/values at one cache index for
the whole batch, so prompts are *left*-padded: the last prompt token of every
row sits at index `bucket - 1` and decode step t writes index
`bucket + t - 1` for every row. Each row carries explicit positions (its
real tokens count from 0) and an attention mask that hides its padding, so
the sliding-window layers (which compare positions) and RoPE see exactly the
unpadded sequence.

Determinism. The key of row (problem i, sample j) is
`fold_in(fold_in(key(seed), id_i), j)` with `id_i` the caller's problem id,
and step t samples with `fold_in(row_key, t)`, one row at a time (`vmap`),
so a trace depends on (seed, i, j), the model and the settings, not on the
batch size, the order, the other problems in the batch, or the device count
(up to float rounding between differently-shaped or -sharded programs).

Sharding. With a mesh, batch rows are split over (`data`, `fsdp`) and the
params and cache follow `tpt_jax.sharding`'s rules.

Batches. Problems are sorted by prompt-length bucket (short prompts get short
caches) and cut into batches of `batch_size` rows, a problem's samples side
by side; a run compiles one prefill + decode pair per bucket it uses (logged).
Results stream out batch by batch while the next batch runs on the device.

Engines. This is the *static* engine. `tpt_jax.sampling_continuous` has the
same API and traces but refills a finished row's slot at once (no waiting
for a batch's longest row); `engines.make_sampler` builds the one that
`config.sampling.engine` names.

Length: the static engine is one unit: its settings, its two jitted
programs and the host driver that plans, dispatches and streams batches
share private state (compiled-program and stop-table caches); the engine
seam (`Engine`) sits at its end; `tpt_jax.engines` picks an engine. Planning lives apart in
`sampling_utils`, the other engine in `sampling_continuous`.
"""

from __future__ import annotations

import dataclasses
import functools
import time
import typing
from typing import Any, Iterator, Sequence

from absl import logging
import flax
import jax
from jax.experimental import multihost_utils
import jax.numpy as jnp
from jax.sharding import Mesh, NamedSharding, PartitionSpec
import ml_collections
import numpy as np
import tqdm

from tpt_jax import models
from tpt_jax import sampling_utils
from tpt_jax import sharding as sharding_lib
from tpt_jax import tokenizer as tokenizer_lib

FINISH_EOS = 'eos'
FINISH_STOP = 'stop'
FINISH_LENGTH = 'length'

# Finish codes on the device.
_RUNNING = 0
_EOS = 1
_STOP = 2
_LENGTH = 3
_FILLER = 4  # A padding row of the batch: never runs.
_FINISH_NAMES = {_EOS: FINISH_EOS, _STOP: FINISH_STOP, _LENGTH: FINISH_LENGTH}

# Steps of 1.5x: a prompt pads by at most half its length, and a run compiles
# a prefill + decode pair for each bucket its prompts fall in.
DEFAULT_PROMPT_LENGTH_BUCKETS = (32, 48, 64, 96, 128, 192, 256, 384, 512, 768,
                                 1024, 1536, 2048)

# Token written to left-padding slots of a prompt. It is never attended to;
# it only has to differ from gemma's padding id 0, so that gemma's
# `return_last_only` (which counts non-zero tokens) picks the last column.
_PROMPT_FILLER_TOKEN = tokenizer_lib.BOS_ID


ENGINES = ('static', 'continuous')


def default_config() -> ml_collections.ConfigDict:
  """Defaults of the Think stage (mounted as `config.sampling`).

  Both engines read every field except: `prompt_length_buckets` pads the
  static engine's prompts and batches (the continuous one only pads its
  prefill calls with it), `max_cache_segments` is the static engine's only;
  `page_size`, `cache_tokens_per_slot`, `steps_per_call` and
  `refill_fraction` are the continuous engine's only.
  """
  config = ml_collections.ConfigDict()
  # 'continuous': slots refilled as rows finish (tpt_jax.sampling_continuous;
  # 2.7x the static engine's useful tokens/s on real GSM8K trace lengths,
  # scripts/bench_sampler.py --workload=real_lengths); 'static': fixed
  # batches that run until their longest row ends (the reference).
  config.engine = 'continuous'
  # Traces sampled per problem.
  config.num_samples_per_problem = 4
  # Cap on generated tokens per trace (the cache holds bucket + this).
  config.max_new_tokens = 512
  # 0 means greedy; otherwise logits are divided by it before sampling.
  config.temperature = 1.0
  # Keep only the k most likely tokens (0: off).
  config.top_k = 0
  # Keep the smallest set of tokens whose probability reaches p (1.0: off).
  config.top_p = 1.0
  # Generation stops when the text contains one of these (not included in
  # the returned text).
  config.stop_strings = ()
  # Token ids that stop generation besides <eos> and <end_of_turn>.
  config.stop_token_ids = ()
  # Rows (problem x sample pairs) decoded together (continuous: slots).
  config.batch_size = 64
  # Prompts are left-padded to the smallest of these that fits; one pair of
  # programs is compiled per bucket used.
  config.prompt_length_buckets = DEFAULT_PROMPT_LENGTH_BUCKETS
  # Decode in up to this many loops over a growing cache (1: one loop over
  # the full cache; more: cheaper steps early on, longer compiles).
  config.max_cache_segments = 8
  # Continuous engine: tokens per KV page; pool size as tokens per slot
  # (the pool holds what rows really hold, not slots x longest row); decode
  # steps per device call; a call returns early once this fraction of the
  # slots has finished (and rows wait), to refill them.
  config.page_size = 16
  config.cache_tokens_per_slot = 320
  config.steps_per_call = 32
  config.refill_fraction = 1 / 16
  # Added to the run's seed (the loop adds the round too, so rounds differ).
  config.seed_offset = 0
  config.show_progress = True
  return config


@dataclasses.dataclass(frozen=True)
class SamplingSettings:
  """What to sample; every field is checked on construction.

  Attributes:
    num_samples_per_problem: traces per problem.
    max_new_tokens: most tokens generated per trace (> 0).
    temperature: 0 for greedy decoding, else the softmax temperature.
    top_k: sample among the k most likely tokens (0: all).
    top_p: nucleus sampling threshold in (0, 1] (1: off).
    eos_token_ids: tokens that end a trace with finish reason 'eos'.
    stop_token_ids: tokens that end a trace with finish reason 'stop'.
    stop_strings: strings that end a trace with finish reason 'stop'; found
      even when split over several tokens; cut from the returned text.
    batch_size: rows (problem, sample pairs) decoded together.
    prompt_length_buckets: allowed padded prompt lengths.
    max_cache_segments: decode runs in up to this many loops (of at least 8
      steps) over a growing cache, so that attention cost follows the tokens
      made, not the cache's final length; 1: one loop over the full cache.
      Compile time grows with it.
    seed: the run's seed.
    page_size: continuous engine: tokens per KV-cache page.
    cache_tokens_per_slot: continuous engine: KV pool size, in tokens per
      slot (at least one longest row per device).
    steps_per_call: continuous engine: most decode steps per device call.
    refill_fraction: continuous engine: a call returns once this fraction
      of the slots has finished while rows wait.
  """
  num_samples_per_problem: int = 1
  max_new_tokens: int = 256
  temperature: float = 0.0
  top_k: int = 0
  top_p: float = 1.0
  eos_token_ids: tuple[int, ...] = (tokenizer_lib.EOS_ID,
                                    tokenizer_lib.END_OF_TURN_ID)
  stop_token_ids: tuple[int, ...] = ()
  stop_strings: tuple[str, ...] = ()
  batch_size: int = 64
  prompt_length_buckets: tuple[int, ...] = DEFAULT_PROMPT_LENGTH_BUCKETS
  max_cache_segments: int = 8
  seed: int = 0
  page_size: int = 16
  cache_tokens_per_slot: int = 320
  steps_per_call: int = 32
  refill_fraction: float = 1 / 16

  def __post_init__(self):
    for name in ('eos_token_ids', 'stop_token_ids', 'stop_strings'):
      value = getattr(self, name)
      if isinstance(value, (str, int)):
        raise ValueError(f'{name}={value!r} must be a sequence.')
      object.__setattr__(self, name, tuple(value))
    buckets = tuple(int(b) for b in self.prompt_length_buckets)
    object.__setattr__(self, 'prompt_length_buckets', tuple(sorted(buckets)))
    _check_int(self, 'num_samples_per_problem', minimum=1)
    _check_int(self, 'max_new_tokens', minimum=1)
    _check_int(self, 'top_k', minimum=0)
    _check_int(self, 'batch_size', minimum=1)
    _check_int(self, 'max_cache_segments', minimum=1)
    _check_int(self, 'seed', minimum=0)
    _check_int(self, 'page_size', minimum=1)
    _check_int(self, 'cache_tokens_per_slot', minimum=1)
    _check_int(self, 'steps_per_call', minimum=1)
    if not 0 < self.refill_fraction <= 1:
      raise ValueError(f'refill_fraction={self.refill_fraction} must lie in '
                       '(0, 1].')
    if self.seed >= 2**32:
      raise ValueError(f'seed={self.seed} must be below 2**32.')
    if not self.temperature >= 0:
      raise ValueError(f'temperature={self.temperature} must be >= 0 '
                       '(0 means greedy).')
    if not 0 < self.top_p <= 1:
      raise ValueError(f'top_p={self.top_p} must lie in (0, 1].')
    if not buckets or min(buckets) < 1:
      raise ValueError(f'prompt_length_buckets={buckets} must be a non-empty '
                       'list of positive lengths.')
    for name in ('eos_token_ids', 'stop_token_ids'):
      for token_id in getattr(self, name):
        if not isinstance(token_id, (int, np.integer)) or token_id < 0:
          raise ValueError(f'{name} has {token_id!r}; ids are ints >= 0.')
    for stop_string in self.stop_strings:
      if not isinstance(stop_string, str) or not stop_string:
        raise ValueError(f'stop_strings has {stop_string!r}; stop strings '
                         'are non-empty str.')

  @property
  def greedy(self) -> bool:
    return self.temperature == 0

  @classmethod
  def from_config(cls, sampling_config: ml_collections.ConfigDict, *,
                  seed: int) -> SamplingSettings:
    """Settings from `config.sampling`; `seed` is the run's (e.g.
    config.seed + round), to which `seed_offset` is added."""
    return cls(
        num_samples_per_problem=sampling_config.num_samples_per_problem,
        max_new_tokens=sampling_config.max_new_tokens,
        temperature=float(sampling_config.temperature),
        top_k=sampling_config.top_k,
        top_p=float(sampling_config.top_p),
        stop_token_ids=tuple(sampling_config.stop_token_ids),
        stop_strings=tuple(sampling_config.stop_strings),
        batch_size=sampling_config.batch_size,
        prompt_length_buckets=tuple(sampling_config.prompt_length_buckets),
        max_cache_segments=sampling_config.max_cache_segments,
        seed=seed + sampling_config.seed_offset,
        **{name: sampling_config[name] for name in (
            'page_size', 'cache_tokens_per_slot', 'steps_per_call',
            'refill_fraction') if name in sampling_config},
    )


def _check_int(settings: SamplingSettings, name: str, minimum: int) -> None:
  value = getattr(settings, name)
  if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
    raise ValueError(f'{name}={value!r} must be an int.')
  if value < minimum:
    raise ValueError(f'{name}={value} must be >= {minimum}.')


@dataclasses.dataclass(frozen=True)
class SampleResult:
  """One trace.

  Attributes:
    problem_index: position of the problem in the `prompts` given.
    problem_id: the caller's id of the problem (its index if none given).
    sample_index: which of the problem's samples (0-based).
    tokens: [num_generated_tokens] generated ids, the token that ended the
      trace (eos / stop token / the one completing a stop string) included.
    text: the completion as text, without a final eos or stop token and cut
      before the first stop string.
    finish_reason: 'eos', 'stop' or 'length'.
    num_generated_tokens: len(tokens).
    logprob_sum: sum over `tokens` of log p_model(token | prefix) (the
      model's distribution, before temperature / top-k / top-p).
    token_logprobs: [num_generated_tokens] the terms of that sum.
  """
  problem_index: int
  problem_id: int | str
  sample_index: int
  tokens: np.ndarray
  text: str
  finish_reason: str
  num_generated_tokens: int
  logprob_sum: float
  token_logprobs: np.ndarray


# ----------------------------------------------------------------------------
# Jitted programs (pure functions).
# ----------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class _ProgramSpec:
  """Everything static about a compiled prefill/decode pair."""
  prompt_bucket: int
  max_new_tokens: int
  num_rows: int
  num_prefill_rows: int
  greedy: bool
  top_k: int
  use_top_p: bool
  num_eos_slots: int  # Lengths of the (padded) id arrays.
  num_stop_slots: int
  num_stop_strings: int
  num_cache_segments: int

  @property
  def cache_length(self) -> int:
    # Prefill fills `prompt_bucket` slots; decode step t (1..max_new - 1)
    # writes the token of step t - 1 to slot prompt_bucket + t - 1.
    return self.prompt_bucket + self.max_new_tokens - 1

  @property
  def segment_ends(self) -> tuple[int, ...]:
    return sampling_utils.decode_segment_ends(self.max_new_tokens,
                                              self.num_cache_segments)


@flax.struct.dataclass
class _PrefillInputs:
  prompt_tokens: jax.Array  # [U, P] left-padded.
  prompt_lengths: jax.Array  # [U]
  row_prefill_slot: jax.Array  # [B]
  row_problem_key: jax.Array  # [B] uint32
  row_sample: jax.Array  # [B] uint32
  row_active: jax.Array  # [B] bool
  row_limit: jax.Array  # [B] most tokens of each row.


@flax.struct.dataclass
class _SamplingParams:
  """Dynamic (no recompilation when changed) sampling inputs."""
  seed: jax.Array  # [] uint32
  temperature: jax.Array  # [] float32
  top_p: jax.Array  # [] float32
  eos_token_ids: jax.Array  # [E] int32, padded with -1.
  stop_token_ids: jax.Array  # [T] int32, padded with -1.
  stop_table: jax.Array  # [S, max_states, V]
  stop_match_state: jax.Array  # [S]


@flax.struct.dataclass
class _RowConstants:
  """Per-row values fixed for the whole decode loop."""
  keys: jax.Array  # [B] typed PRNG keys.
  prompt_lengths: jax.Array  # [B]
  pad_lengths: jax.Array  # [B]
  limits: jax.Array  # [B] most tokens of each row.


@flax.struct.dataclass
class _DecodeState:
  step: jax.Array  # [] tokens sampled so far.
  last_tokens: jax.Array  # [B]
  tokens: jax.Array  # [B, N] generated tokens (0 after a row finished).
  token_logprobs: jax.Array  # [B, N]
  num_generated: jax.Array  # [B]
  finish: jax.Array  # [B] finish codes (_RUNNING while running).
  stop_states: jax.Array  # [B, S] stop-string automaton states.
  cache: Any


@dataclasses.dataclass(frozen=True)
class _Shardings:
  """Mesh-derived shardings used inside the programs (None: no mesh)."""
  mesh: Mesh | None

  def constrain_rows(self, tree: Any) -> Any:
    """Splits the leading (batch) dim of every leaf over (data, fsdp)."""
    if self.mesh is None:
      return tree
    def constrain(x):
      if x.ndim == 0:
        return jax.lax.with_sharding_constraint(
            x, NamedSharding(self.mesh, PartitionSpec()))
      return jax.lax.with_sharding_constraint(
          x, sharding_lib.batch_sharding(self.mesh, x.ndim))
    return jax.tree.map(constrain, tree)

  def constrain_cache(self, cache: Any) -> Any:
    if self.mesh is None:
      return cache
    return jax.lax.with_sharding_constraint(
        cache, sharding_lib.cache_shardings(cache, self.mesh))

  def constrain_state(self, state: _DecodeState) -> _DecodeState:
    if self.mesh is None:
      return state
    cache = self.constrain_cache(state.cache)
    rest = self.constrain_rows(state.replace(cache=None))
    return rest.replace(cache=cache)


def _sample_tokens(logits: jax.Array, row_keys: jax.Array, step: jax.Array,
                   params: _SamplingParams, spec: _ProgramSpec
                   ) -> tuple[jax.Array, jax.Array]:
  """Next token of every row and its log-prob under the model.

  Each row draws with its own key folded with the step (`vmap`), so a row's
  draw does not depend on the other rows. `step`: [] or [B] (per row).
  """
  logits = logits.astype(jnp.float32)
  model_logprobs = jax.nn.log_softmax(logits, axis=-1)
  if spec.greedy:
    tokens = jnp.argmax(logits, axis=-1)
  else:
    scaled = logits / params.temperature
    candidates = None  # Descending logits the top-p cut is taken among.
    if spec.top_k:
      candidates = jax.lax.top_k(scaled, spec.top_k)[0]
      scaled = jnp.where(scaled < candidates[:, -1:], -jnp.inf, scaled)
    if spec.use_top_p:
      if candidates is None:
        candidates = -jnp.sort(-scaled, axis=-1)
      probs = jax.nn.softmax(candidates, axis=-1)
      # Keep a candidate while the mass before it is below p (the first
      # one always).
      keep = (jnp.cumsum(probs, axis=-1) - probs) < params.top_p
      num_kept = jnp.sum(keep, axis=-1, keepdims=True)
      cutoff = jnp.take_along_axis(candidates, num_kept - 1, axis=-1)
      scaled = jnp.where(scaled < cutoff, -jnp.inf, scaled)
    # Inverse-CDF sampling: one uniform per row instead of one Gumbel per
    # vocabulary entry (4x cheaper on CPU), exact up to float rounding.
    step_keys = jax.vmap(jax.random.fold_in)(
        row_keys, jnp.broadcast_to(step, row_keys.shape))
    uniforms = jax.vmap(jax.random.uniform)(step_keys)
    cdf = jnp.cumsum(jax.nn.softmax(scaled, axis=-1), axis=-1)
    tokens = jnp.sum(cdf <= (uniforms * cdf[:, -1])[:, None], axis=-1)
    tokens = jnp.minimum(tokens, logits.shape[-1] - 1)
  tokens = tokens.astype(jnp.int32)
  token_logprobs = jnp.take_along_axis(model_logprobs, tokens[:, None],
                                       axis=-1)[:, 0]
  return tokens, token_logprobs


def _record_step(state: _DecodeState, tokens: jax.Array,
                 token_logprobs: jax.Array, params: _SamplingParams,
                 spec: _ProgramSpec, limits: jax.Array) -> _DecodeState:
  """Writes step `state.step` of the running rows and updates finish codes."""
  step = state.step
  running = state.finish == _RUNNING
  tokens_out = jnp.where(running, tokens, 0)
  logprobs_out = jnp.where(running, token_logprobs, 0.0)

  is_eos = jnp.any(tokens[:, None] == params.eos_token_ids[None, :], axis=-1)
  is_stop = jnp.any(tokens[:, None] == params.stop_token_ids[None, :], axis=-1)
  stop_states = state.stop_states
  if spec.num_stop_strings:
    string_index = jnp.arange(spec.num_stop_strings)[None, :]
    stop_states = params.stop_table[string_index, stop_states,
                                    tokens[:, None]].astype(jnp.int32)
    matched = jnp.any(stop_states == params.stop_match_state[None, :], axis=-1)
    is_stop = is_stop | matched
  at_limit = step + 1 >= limits
  new_finish = jnp.where(
      is_eos, _EOS, jnp.where(is_stop, _STOP,
                              jnp.where(at_limit, _LENGTH, _RUNNING)))
  return state.replace(
      step=step + 1,
      last_tokens=tokens,
      tokens=jax.lax.dynamic_update_slice(state.tokens, tokens_out[:, None],
                                          (0, step)),
      token_logprobs=jax.lax.dynamic_update_slice(
          state.token_logprobs, logprobs_out[:, None], (0, step)),
      num_generated=state.num_generated + running.astype(jnp.int32),
      finish=jnp.where(running, new_finish, state.finish),
      stop_states=stop_states,
  )


def _padded_ids(token_ids: Sequence[int]) -> np.ndarray:
  """Ids padded with -1 to a multiple of 4 (fewer distinct programs)."""
  size = max(4, -(-len(token_ids) // 4) * 4)
  padded = np.full((size,), -1, np.int32)
  padded[:len(token_ids)] = token_ids
  return padded


def _prefill(params: models.Params, inputs: _PrefillInputs,
             sampling_params: _SamplingParams, *, model: models.Model,
             spec: _ProgramSpec, shardings: _Shardings
             ) -> tuple[_DecodeState, _RowConstants]:
  """Runs the batch's distinct prompts once, copies their caches to all
  sample rows, samples the first token."""
  bucket = spec.prompt_bucket
  pad_lengths = bucket - inputs.prompt_lengths  # [U]
  index = jnp.arange(bucket)
  is_prompt = index[None, :] >= pad_lengths[:, None]  # [U, P]
  positions = jnp.where(is_prompt, index[None, :] - pad_lengths[:, None], 0)
  causal = index[None, :] <= index[:, None]  # [P(query), P(key)]
  attention_mask = is_prompt[:, None, :] & causal[None, :, :]
  cache = model.config.init_cache(
      batch_size=spec.num_prefill_rows, dtype=model.compute_dtype,
      cache_length=bucket)
  cache = shardings.constrain_cache(cache)
  out = model.apply(params, inputs.prompt_tokens, positions=positions,
                    cache=cache, attention_mask=attention_mask,
                    return_last_only=True)

  # Copy prefill rows to sample rows (decode grows the cache as it goes).
  slots = inputs.row_prefill_slot
  cache = jax.tree.map(lambda x: jnp.take(x, slots, axis=0), out.cache)
  logits = jnp.take(out.logits, slots, axis=0)

  base_key = jax.random.key(sampling_params.seed)
  row_keys = jax.vmap(
      lambda problem, sample: jax.random.fold_in(
          jax.random.fold_in(base_key, problem), sample))(
              inputs.row_problem_key, inputs.row_sample)
  constants = _RowConstants(
      keys=row_keys,
      prompt_lengths=jnp.take(inputs.prompt_lengths, slots),
      pad_lengths=jnp.take(pad_lengths, slots),
      limits=inputs.row_limit,
  )
  num_rows, max_new = spec.num_rows, spec.max_new_tokens
  state = _DecodeState(
      step=jnp.zeros((), jnp.int32),
      last_tokens=jnp.zeros((num_rows,), jnp.int32),
      tokens=jnp.zeros((num_rows, max_new), jnp.int32),
      token_logprobs=jnp.zeros((num_rows, max_new), jnp.float32),
      num_generated=jnp.zeros((num_rows,), jnp.int32),
      finish=jnp.where(inputs.row_active, _RUNNING, _FILLER).astype(jnp.int32),
      stop_states=jnp.zeros((num_rows, spec.num_stop_strings), jnp.int32),
      cache=cache,
  )
  tokens, token_logprobs = _sample_tokens(logits, row_keys, state.step,
                                          sampling_params, spec)
  state = _record_step(state, tokens, token_logprobs, sampling_params, spec,
                       constants.limits)
  return shardings.constrain_state(state), shardings.constrain_rows(constants)


def _grow_cache(cache: Any, cache_length: int) -> Any:
  """Pads every layer's k / v / positions with empty slots up to
  `cache_length` (slots are masked out until written)."""
  def grow(path, x):
    if sharding_lib.path_to_str(path).rsplit('/', 1)[-1] == 'end_index':
      return x
    room = cache_length - x.shape[1]
    return jnp.pad(x, [(0, 0), (0, room)] + [(0, 0)] * (x.ndim - 2))
  return jax.tree_util.tree_map_with_path(grow, cache)


def _decode(params: models.Params, state: _DecodeState,
            constants: _RowConstants, sampling_params: _SamplingParams, *,
            model: models.Model, spec: _ProgramSpec, shardings: _Shardings
            ) -> _DecodeState:
  """Decodes until every row has finished.

  gemma's attention reads every slot of the cache it is given, so a step
  costs in proportion to the cache length. Instead of one loop over a cache
  of bucket + max_new_tokens slots, the steps are split into a few segments
  (`spec.segment_ends`), each a `lax.while_loop` over a cache just long
  enough for its last step; the cache grows between segments. Every loop
  (and so the decode) stops as soon as all rows have finished.
  """
  for segment_end in spec.segment_ends:
    cache_length = spec.prompt_bucket + segment_end - 1
    cache_index = jnp.arange(cache_length)
    # Slots before a row's prompt are its left padding.
    not_padding = cache_index[None, :] >= constants.pad_lengths[:, None]

    def keep_going(state: _DecodeState, segment_end=segment_end) -> jax.Array:
      return (state.step < segment_end) & jnp.any(state.finish == _RUNNING)

    def step_fn(state: _DecodeState, cache_index=cache_index,
                not_padding=not_padding) -> _DecodeState:
      # Feed the token sampled at step - 1; gemma writes it to the cache's
      # `end_index`, slot bucket + step - 1 of every row.
      step = state.step
      positions = constants.prompt_lengths + step - 1
      written = cache_index[None, :] <= spec.prompt_bucket + step - 1
      out = model.apply(params, state.last_tokens[:, None],
                        positions=positions[:, None], cache=state.cache,
                        attention_mask=(not_padding & written)[:, None, :])
      state = state.replace(cache=out.cache)
      tokens, token_logprobs = _sample_tokens(
          out.logits[:, 0], constants.keys, step, sampling_params, spec)
      state = _record_step(state, tokens, token_logprobs, sampling_params,
                           spec, constants.limits)
      return shardings.constrain_state(state)

    state = state.replace(cache=_grow_cache(state.cache, cache_length))
    state = jax.lax.while_loop(keep_going, step_fn,
                               shardings.constrain_state(state))
  return state


def abstract_rows(mesh: Mesh, shape: tuple[int, ...], dtype: Any
                  ) -> jax.ShapeDtypeStruct:
  """An abstract per-row array, split over the mesh's batch axes."""
  return jax.ShapeDtypeStruct(
      shape, dtype, sharding=sharding_lib.batch_sharding(mesh, len(shape)))


def abstract_params(model: models.Model, mesh: Mesh) -> models.Params:
  """The model's params as the samplers hold them (compute dtype, sharded by
  `sharding.param_shardings`), abstract."""
  params = models.cast(model.abstract_params(), model.compute_dtype)
  shardings = sharding_lib.param_shardings(
      params, mesh,
      transpose_gating_einsum=model.config.transpose_gating_einsum)
  return jax.tree.map(
      lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s),
      params, shardings)


def abstract_sampling_params(model: models.Model, mesh: Mesh,
                             settings: SamplingSettings) -> _SamplingParams:
  """`_SamplingParams` of `settings` (seed, temperature, end ids, stop-string
  tables), abstract and replicated."""
  num_stop_strings = len(settings.stop_strings)
  stop_states = max((len(s.encode('utf-8')) for s in settings.stop_strings),
                    default=0) + 1  # As `stop_string_tables` builds it.
  replicated = NamedSharding(mesh, PartitionSpec())

  def table(shape, dtype):
    return jax.ShapeDtypeStruct(shape, dtype, sharding=replicated)

  stop_dtype = jnp.uint8 if stop_states <= 256 else jnp.int32
  return _SamplingParams(
      seed=table((), jnp.uint32),
      temperature=table((), jnp.float32),
      top_p=table((), jnp.float32),
      eos_token_ids=table((len(_padded_ids(settings.eos_token_ids)),),
                          jnp.int32),
      stop_token_ids=table((len(_padded_ids(settings.stop_token_ids)),),
                           jnp.int32),
      stop_table=table(
          (num_stop_strings, 1 if not num_stop_strings else stop_states,
           model.config.num_embed), stop_dtype),
      stop_match_state=table((num_stop_strings,), jnp.int32))


def abstract_batch_programs(model: models.Model, mesh: Mesh,
                            settings: SamplingSettings, *, prompt_bucket: int,
                            num_problems: int
                            ) -> tuple[tuple[Any, tuple[Any, ...]],
                                       tuple[Any, tuple[Any, ...]]]:
  """The prefill and decode programs of one batch, with abstract inputs.

  For compiling ahead of time (`tpt_jax.plan`): the same jitted functions
  and shardings `Sampler` runs for a batch of `settings` whose prompts fall
  in `prompt_bucket`, each paired with its arguments as sharded
  `jax.ShapeDtypeStruct`s. Nothing is allocated.

  Returns:
    ((prefill, prefill_args), (decode, decode_args)).
  """
  row_multiple = int(np.prod(
      [mesh.shape[a] for a in sharding_lib.LOGICAL_AXIS_RULES['batch']]))
  num_rows, num_prefill_rows = sampling_utils.batch_shape(
      num_problems, settings.num_samples_per_problem, settings.batch_size,
      row_multiple)
  num_stop_strings = len(settings.stop_strings)
  spec = _ProgramSpec(
      prompt_bucket=prompt_bucket, max_new_tokens=settings.max_new_tokens,
      num_rows=num_rows, num_prefill_rows=num_prefill_rows,
      greedy=settings.greedy, top_k=0 if settings.greedy else settings.top_k,
      use_top_p=not settings.greedy and settings.top_p < 1,
      num_eos_slots=len(_padded_ids(settings.eos_token_ids)),
      num_stop_slots=len(_padded_ids(settings.stop_token_ids)),
      num_stop_strings=num_stop_strings,
      num_cache_segments=settings.max_cache_segments)
  replicated = NamedSharding(mesh, PartitionSpec())
  rows = functools.partial(abstract_rows, mesh)
  params = abstract_params(model, mesh)
  inputs = _PrefillInputs(
      prompt_tokens=rows((num_prefill_rows, prompt_bucket), jnp.int32),
      prompt_lengths=rows((num_prefill_rows,), jnp.int32),
      row_prefill_slot=rows((num_rows,), jnp.int32),
      row_problem_key=rows((num_rows,), jnp.uint32),
      row_sample=rows((num_rows,), jnp.uint32),
      row_active=rows((num_rows,), jnp.bool_),
      row_limit=rows((num_rows,), jnp.int32))
  sampling_params = abstract_sampling_params(model, mesh, settings)
  common = dict(model=model, spec=spec, shardings=_Shardings(mesh))
  prefill = jax.jit(functools.partial(_prefill, **common))
  decode = jax.jit(functools.partial(_decode, **common))

  # The decode's inputs are the prefill's outputs, sharded as
  # `_Shardings.constrain_state` / `constrain_rows` leave them.
  state, constants = jax.eval_shape(prefill, params, inputs, sampling_params)
  def with_row_sharding(x):
    sharding = (replicated if x.ndim == 0
                else sharding_lib.batch_sharding(mesh, x.ndim))
    return jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=sharding)
  cache = jax.tree.map(
      lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s),
      state.cache, sharding_lib.cache_shardings(state.cache, mesh))
  state = jax.tree.map(with_row_sharding, state.replace(cache=None))
  state = state.replace(cache=cache)
  constants = jax.tree.map(with_row_sharding, constants)
  return ((prefill, (params, inputs, sampling_params)),
          (decode, (params, state, constants, sampling_params)))


# ----------------------------------------------------------------------------
# The sampler (side effects: device transfers, logging, progress).
# ----------------------------------------------------------------------------


Prompt = str | Sequence[int]


@typing.runtime_checkable
class Engine(typing.Protocol):
  """The Think stage's seam: what a run needs from a sampling engine.

  An engine samples `settings.num_samples_per_problem` traces per prompt; a
  trace depends only on (settings.seed, problem id, sample index), the model
  and the settings. `Sampler` (below) is the static-batching engine.
  """

  def with_params(self, params: models.Params) -> Engine:
    """An engine for new params of the same model, reusing compiled
    programs."""

  def sample_all(self, prompts: Sequence[Prompt], settings: SamplingSettings,
                 *, problem_ids: Sequence[int | str] | None = None,
                 chat_template: bool = False, show_progress: bool = True
                 ) -> list[SampleResult]:
    """Every trace, ordered by (problem_index, sample_index)."""


class Sampler:
  """Samples traces from one model with one set of params.

  Compiled programs are kept per (prompt bucket, settings) on the instance
  and shared with the samplers made by `with_params`, so reuse them across
  calls and rounds.
  """

  def __init__(self, model: models.Model, params: models.Params, *,
               tokenizer: tokenizer_lib.Tokenizer | None = None,
               mesh: Mesh | None = None):
    """
    Args:
      model: from `models.build_model`.
      params: its params (any dtype; cast once to the compute dtype).
      tokenizer: needed for text prompts, `text` results and stop strings.
      mesh: from `sharding.make_mesh`; None runs on the default device.
    """
    self._model = model
    self._tokenizer = tokenizer
    self._mesh = mesh
    params = models.cast(params, model.compute_dtype)
    if mesh is not None:
      abstract = jax.eval_shape(lambda: params)
      params = jax.device_put(params, sharding_lib.param_shardings(
          abstract, mesh,
          transpose_gating_einsum=model.config.transpose_gating_einsum))
    self._params = params
    self._shardings = _Shardings(mesh)
    self._row_multiple = (1 if mesh is None else
                          sharding_lib.num_batch_devices(mesh))
    self._programs: dict[_ProgramSpec, tuple[Any, Any]] = {}
    self._stop_tables: dict[tuple[str, ...], tuple[np.ndarray, np.ndarray]] = {}
    self._token_bytes: list[bytes] | None = None

  def with_params(self, params: models.Params) -> Sampler:
    """A sampler for new params of the same model (e.g. the next round's)
    that reuses this one's compiled programs."""
    sampler = Sampler(self._model, params, tokenizer=self._tokenizer,
                      mesh=self._mesh)
    sampler._programs = self._programs  # pylint: disable=protected-access
    sampler._stop_tables = self._stop_tables  # pylint: disable=protected-access
    sampler._token_bytes = self._token_bytes  # pylint: disable=protected-access
    return sampler

  @property
  def num_compiled_programs(self) -> int:
    """Jitted programs built so far (a prefill and a decode per spec)."""
    return 2 * len(self._programs)

  def sample(self, prompts: Sequence[Prompt], settings: SamplingSettings, *,
             problem_ids: Sequence[int | str] | None = None,
             max_new_tokens: Sequence[int | None] | None = None,
             chat_template: bool = False, show_progress: bool = True
             ) -> Iterator[list[SampleResult]]:
    """Samples `settings.num_samples_per_problem` traces per prompt.

    Args:
      prompts: texts (encoded with BOS, needs the tokenizer) or token id
        lists (used as given; they should start with BOS).
      settings: what to sample.
      problem_ids: stable id of each problem (int in [0, 2**32) or str),
        folded into its sampling key; default: the prompt's index. Give the
        problem's global id so that a trace does not depend on which subset
        of problems is sampled together.
      max_new_tokens: optional limit of each prompt's traces (an int, None:
        `settings.max_new_tokens`, or one per sample); at most
        `settings.max_new_tokens`.
      chat_template: wrap text prompts in Gemma2's chat template.
      show_progress: show a tqdm bar (problems done, tokens/s, time left).

    Returns:
      An iterator of lists of `SampleResult`, one list per decode batch, in
      batch order (problems grouped by prompt length, not in input order).
      The next batch runs on the device while the caller handles one.

    Raises:
      ValueError: bad prompts or ids (checked before anything runs).
    """
    prompt_tokens, problem_ids, key_indices, row_limits = self._prepare(
        prompts, settings, problem_ids=problem_ids,
        max_new_tokens=max_new_tokens, chat_template=chat_template)
    plans = sampling_utils.plan_batches(
        [len(t) for t in prompt_tokens],
        num_samples=settings.num_samples_per_problem,
        batch_size=settings.batch_size,
        buckets=settings.prompt_length_buckets,
        row_multiple=self._row_multiple)
    return self._run(plans, prompt_tokens, problem_ids, key_indices,
                     row_limits, settings, show_progress)

  def _prepare(self, prompts: Sequence[Prompt], settings: SamplingSettings, *,
               problem_ids: Sequence[int | str] | None,
               max_new_tokens: Sequence[int | None] | None,
               chat_template: bool
               ) -> tuple[list[np.ndarray], list[int | str], np.ndarray,
                          np.ndarray]:
    """Checks and encodes `sample`'s inputs: (prompt tokens, problem ids,
    their key indices [uint32], per-prompt token limits)."""
    prompt_tokens = self._encode(prompts, chat_template=chat_template)
    if problem_ids is None:
      problem_ids = list(range(len(prompt_tokens)))
    problem_ids = list(problem_ids)
    if len(problem_ids) != len(prompt_tokens):
      raise ValueError(f'problem_ids has {len(problem_ids)} entries for '
                       f'{len(prompt_tokens)} prompts.')
    key_indices = [sampling_utils.problem_key_index(p) for p in problem_ids]
    if len(set(key_indices)) != len(key_indices):
      raise ValueError('problem_ids has duplicates (or str ids that hash '
                       'alike); each problem needs its own id.')
    for index, tokens in enumerate(prompt_tokens):
      if len(tokens) > settings.prompt_length_buckets[-1]:
        raise ValueError(
            f'prompts[{index}] has {len(tokens)} tokens, more than the '
            f'largest prompt length bucket {settings.prompt_length_buckets[-1]}'
            ' (settings.prompt_length_buckets).')
    if settings.top_k > self._model.config.num_embed:
      raise ValueError(f'top_k={settings.top_k} is larger than the vocabulary '
                       f'({self._model.config.num_embed} tokens).')
    if settings.stop_strings and self._tokenizer is None:
      raise ValueError('settings.stop_strings needs the Sampler to have a '
                       'tokenizer.')
    row_limits = sampling_utils.row_token_limits(
        max_new_tokens, len(prompt_tokens), settings.num_samples_per_problem,
        settings.max_new_tokens)
    return (prompt_tokens, problem_ids, np.asarray(key_indices, np.uint32),
            row_limits)

  def sample_all(self, prompts: Sequence[Prompt], settings: SamplingSettings,
                 **kwargs) -> list[SampleResult]:
    """All results of `sample`, ordered by (problem_index, sample_index)."""
    results = [r for batch in self.sample(prompts, settings, **kwargs)
               for r in batch]
    return sorted(results, key=lambda r: (r.problem_index, r.sample_index))

  # --- inputs ----------------------------------------------------------------

  def _encode(self, prompts: Sequence[Prompt], *, chat_template: bool
              ) -> list[np.ndarray]:
    if isinstance(prompts, (str, bytes)) or not isinstance(
        prompts, Sequence) and not isinstance(prompts, np.ndarray):
      raise ValueError('prompts must be a sequence of prompts (texts or token '
                       f'id lists), not {type(prompts).__name__}.')
    if len(prompts) == 0:
      raise ValueError('prompts is empty: nothing to sample.')
    vocab_size = self._model.config.num_embed
    # Gemma's id 0 is its padding (the library counts non-zero tokens); in
    # other vocabularies it is an ordinary token (Llama-3's and GPT-2's '!').
    lowest_id = 1 if self._model.family == 'gemma2' else 0
    encoded = []
    for index, prompt in enumerate(prompts):
      if isinstance(prompt, str):
        if self._tokenizer is None:
          raise ValueError(f'prompts[{index}] is text but the Sampler has no '
                           'tokenizer; pass one or give token ids.')
        tokens = tokenizer_lib.encode_prompt(self._tokenizer, prompt,
                                             chat_template=chat_template)
      else:
        tokens = prompt
      tokens = np.asarray(tokens)
      if tokens.ndim != 1 or not (tokens.size == 0 or np.issubdtype(
          tokens.dtype, np.integer)):
        raise ValueError(f'prompts[{index}] must be a str or a flat list of '
                         'token ids.')
      if tokens.size == 0:
        raise ValueError(f'prompts[{index}] is empty; a prompt needs at least '
                         'one token (BOS).')
      if tokens.min() < lowest_id or tokens.max() >= vocab_size:
        raise ValueError(
            f'prompts[{index}] has token ids outside [{lowest_id}, '
            f'{vocab_size})' + (' (0 is the padding id).' if lowest_id else
                                '.'))
      encoded.append(tokens.astype(np.int32))
    return encoded

  def _stop_table(self, settings: SamplingSettings, vocab_size: int
                  ) -> tuple[np.ndarray, np.ndarray]:
    if not settings.stop_strings:
      return (np.zeros((0, 1, vocab_size), np.uint8),
              np.zeros((0,), np.int32))
    if settings.stop_strings not in self._stop_tables:
      if self._token_bytes is None:
        processor = self._tokenizer._sp  # pylint: disable=protected-access
        self._token_bytes = sampling_utils.sentencepiece_token_bytes(processor)
      self._stop_tables[settings.stop_strings] = (
          sampling_utils.stop_string_tables(
              settings.stop_strings, self._token_bytes, vocab_size))
    return self._stop_tables[settings.stop_strings]

  def _put_rows(self, array: np.ndarray) -> jax.Array:
    """Host array -> device, split over the batch axes (multi-host safe)."""
    if self._mesh is None:
      return jnp.asarray(array)
    sharding = sharding_lib.batch_sharding(self._mesh, array.ndim)
    return jax.make_array_from_callback(array.shape, sharding,
                                        lambda index: array[index])

  def _put_replicated(self, array: np.ndarray) -> jax.Array:
    if self._mesh is None:
      return jnp.asarray(array)
    sharding = NamedSharding(self._mesh, PartitionSpec())
    return jax.make_array_from_callback(array.shape, sharding,
                                        lambda index: array[index])

  # --- running ---------------------------------------------------------------

  def _programs_for(self, spec: _ProgramSpec) -> tuple[Any, Any]:
    if spec not in self._programs:
      common = dict(model=self._model, spec=spec, shardings=self._shardings)
      self._programs[spec] = (
          jax.jit(functools.partial(_prefill, **common)),
          jax.jit(functools.partial(_decode, **common)),
      )
      logging.info(
          'sampling: compiling prefill + decode for prompt bucket %d, cache '
          'length %d, %d rows (%d prefill rows); %d programs in this sampler.',
          spec.prompt_bucket, spec.cache_length, spec.num_rows,
          spec.num_prefill_rows, self.num_compiled_programs)
    return self._programs[spec]

  def _dispatch(self, plan: sampling_utils.BatchPlan,
                prompt_tokens: list[np.ndarray], key_indices: np.ndarray,
                row_limits: np.ndarray, settings: SamplingSettings,
                sampling_params: _SamplingParams) -> _DecodeState:
    """Starts one batch on the device (asynchronously)."""
    bucket = plan.prompt_bucket
    num_prefill = len(plan.prefill_problem)
    prompts = np.full((num_prefill, bucket), _PROMPT_FILLER_TOKEN, np.int32)
    lengths = np.zeros((num_prefill,), np.int32)
    for slot, problem in enumerate(plan.prefill_problem):
      if problem != sampling_utils.PADDING_ROW:
        tokens = prompt_tokens[problem]
        prompts[slot, bucket - len(tokens):] = tokens
        lengths[slot] = len(tokens)
    active = plan.row_problem != sampling_utils.PADDING_ROW
    inputs = _PrefillInputs(
        prompt_tokens=self._put_rows(prompts),
        prompt_lengths=self._put_rows(lengths),
        row_prefill_slot=self._put_rows(plan.row_prefill_slot.astype(np.int32)),
        row_problem_key=self._put_rows(np.where(
            active, key_indices[np.maximum(plan.row_problem, 0)],
            0).astype(np.uint32)),
        row_sample=self._put_rows(plan.row_sample.astype(np.uint32)),
        row_active=self._put_rows(active),
        row_limit=self._put_rows(np.where(
            active, row_limits[np.maximum(plan.row_problem, 0),
                               plan.row_sample], 1).astype(np.int32)),
    )
    spec = _ProgramSpec(
        prompt_bucket=bucket,
        max_new_tokens=settings.max_new_tokens,
        num_rows=len(plan.row_problem),
        num_prefill_rows=num_prefill,
        greedy=settings.greedy,
        top_k=0 if settings.greedy else settings.top_k,
        use_top_p=not settings.greedy and settings.top_p < 1,
        num_eos_slots=len(sampling_params.eos_token_ids),
        num_stop_slots=len(sampling_params.stop_token_ids),
        num_stop_strings=len(settings.stop_strings),
        num_cache_segments=settings.max_cache_segments,
    )
    prefill, decode = self._programs_for(spec)
    state, constants = prefill(self._params, inputs, sampling_params)
    return decode(self._params, state, constants, sampling_params)

  def _to_host(self, x: jax.Array) -> np.ndarray:
    if not x.is_fully_addressable:
      return np.asarray(multihost_utils.process_allgather(x, tiled=True))
    return np.asarray(x)

  def _collect(self, plan: sampling_utils.BatchPlan, state: _DecodeState,
               problem_ids: list[int | str], settings: SamplingSettings
               ) -> list[SampleResult]:
    """Waits for a batch and turns its rows into results."""
    tokens = self._to_host(state.tokens)
    token_logprobs = self._to_host(state.token_logprobs)
    num_generated = self._to_host(state.num_generated)
    finish = self._to_host(state.finish)
    results = []
    for row, problem in enumerate(plan.row_problem):
      if problem == sampling_utils.PADDING_ROW:
        continue
      count = int(num_generated[row])
      results.append(self._result(
          int(problem), int(plan.row_sample[row]), tokens[row, :count].copy(),
          token_logprobs[row, :count].copy(), int(finish[row]), problem_ids,
          settings))
    return results

  def _result(self, problem: int, sample: int, row_tokens: np.ndarray,
              row_logprobs: np.ndarray, finish_code: int,
              problem_ids: list[int | str], settings: SamplingSettings
              ) -> SampleResult:
    """A finished row as a `SampleResult` (text cut at stop strings)."""
    end_ids = set(settings.eos_token_ids) | set(settings.stop_token_ids)
    count = len(row_tokens)
    finish_reason = _FINISH_NAMES.get(finish_code, FINISH_LENGTH)
    text = ''
    if self._tokenizer is not None:
      text_tokens = row_tokens
      if count and finish_reason != FINISH_LENGTH and int(
          row_tokens[-1]) in end_ids:
        text_tokens = row_tokens[:-1]
      text = self._tokenizer.decode([int(t) for t in text_tokens])
      if settings.stop_strings:
        text, found = sampling_utils.truncate_at_stop_strings(
            text, settings.stop_strings)
        if found and finish_reason == FINISH_LENGTH:
          # The device saw the tokens' bytes; sentencepiece may join them
          # differently (e.g. across a byte-fallback sequence).
          finish_reason = FINISH_STOP
    return SampleResult(
        problem_index=problem,
        problem_id=problem_ids[problem],
        sample_index=sample,
        tokens=row_tokens,
        text=text,
        finish_reason=finish_reason,
        num_generated_tokens=count,
        logprob_sum=float(np.sum(row_logprobs, dtype=np.float64)),
        token_logprobs=row_logprobs,
    )

  def _run(self, plans: list[sampling_utils.BatchPlan],
           prompt_tokens: list[np.ndarray], problem_ids: list[int | str],
           key_indices: np.ndarray, row_limits: np.ndarray,
           settings: SamplingSettings, show_progress: bool
           ) -> Iterator[list[SampleResult]]:
    """Dispatches batch k + 1 before collecting batch k; yields results."""
    vocab_size = self._model.config.num_embed
    stop_table, stop_match_state = self._stop_table(settings, vocab_size)
    sampling_params = _SamplingParams(
        seed=self._put_replicated(np.asarray(settings.seed, np.uint32)),
        temperature=self._put_replicated(
            np.asarray(settings.temperature or 1.0, np.float32)),
        top_p=self._put_replicated(np.asarray(settings.top_p, np.float32)),
        eos_token_ids=self._put_replicated(
            _padded_ids(settings.eos_token_ids)),
        stop_token_ids=self._put_replicated(
            _padded_ids(settings.stop_token_ids)),
        stop_table=self._put_replicated(stop_table),
        stop_match_state=self._put_replicated(stop_match_state),
    )
    num_problems = len(prompt_tokens)
    samples_left = np.full(num_problems, settings.num_samples_per_problem)
    logging.info('sampling: %d problems x %d samples in %d batches of %d rows.',
                 num_problems, settings.num_samples_per_problem, len(plans),
                 len(plans[0].row_problem))
    progress = tqdm.tqdm(total=num_problems, unit='problem', desc='think',
                         disable=not show_progress or jax.process_index() != 0,
                         dynamic_ncols=True)
    start = time.perf_counter()
    generated = 0
    in_flight = None
    try:
      for plan in [*plans, None]:
        launched = None
        if plan is not None:
          launched = (plan, self._dispatch(plan, prompt_tokens, key_indices,
                                           row_limits, settings,
                                           sampling_params))
        if in_flight is not None:
          done_plan, state = in_flight
          results = self._collect(done_plan, state, problem_ids, settings)
          generated += sum(r.num_generated_tokens for r in results)
          finished_before = int(np.sum(samples_left == 0))
          for result in results:
            samples_left[result.problem_index] -= 1
          progress.update(int(np.sum(samples_left == 0)) - finished_before)
          elapsed = time.perf_counter() - start
          progress.set_postfix(tokens_per_s=f'{generated / elapsed:.0f}',
                               refresh=False)
          yield results
        in_flight = launched
    finally:
      progress.close()
    elapsed = time.perf_counter() - start
    logging.info('sampling: %d tokens in %.1fs (%.0f tokens/s); %d programs '
                 'compiled in this sampler.', generated, elapsed,
                 generated / max(elapsed, 1e-9), self.num_compiled_programs)


# Settings that change how the continuous engine schedules work, never a
# trace (a resumed run may change them; records do not keep them).
CONTINUOUS_ONLY_FIELDS = ('page_size', 'cache_tokens_per_slot',
                          'steps_per_call', 'refill_fraction')
