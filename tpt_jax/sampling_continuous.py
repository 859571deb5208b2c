"""Think with continuous batching: a pool of decode slots refilled as rows end.

`ContinuousSampler` has `sampling.Sampler`'s API and contract (same
`SampleResult`s, streaming with a progress bar, stop tokens and strings,
per-token log-probs, per-row limits, slots sharded over (data, fsdp)) but
does not wait for a batch's longest row:

  * **Slots.** `settings.batch_size` slots decode together, each at its own
    position with its own KV pages (`tpt_jax.paged_kv`): no left padding, no
    shared cache index. A row that ends frees its slot and pages; the next
    (problem, sample) takes the slot at the next device call.
  * **Device calls.** One call runs up to `steps_per_call` decode steps in a
    `lax.while_loop`, and returns early once `refill_fraction` of the slots
    have finished while rows wait: a host round trip per call, not per step.
  * **Prefill once per problem.** A prompt's first n - 1 tokens are prefilled
    (the library's forward pass) straight into the pages of its first
    admitted sample; its other samples copy those pages (the host keeps them
    until the last sample is admitted). Every row then starts decoding by
    feeding its last prompt token, so the first sampled token comes out of
    the same decode step as the others.
  * **Pages on demand.** The host gives each running slot the pages of the
    next call's steps before the call. When a device's pool runs out, the
    youngest row there is preempted: its pages are freed and it is queued
    again; as traces are deterministic, it restarts to the same trace.

Determinism: row (problem id i, sample j) samples step t with
`fold_in(fold_in(fold_in(key(seed), i), j), t)`, exactly the static engine's
keys, and its attention combines its pages in its own page order, so a trace
depends on (seed, i, j), the model and the settings, not on its slot, the
other rows, the slot count or the order, and equals the static engine's trace
(all up to float rounding between differently-shaped programs).

Length: the slot scheduler (refills, page hand-out, preemption) and the
device programs it drives change together; the paged cache and the decode
path are their own modules (`paged_kv`, `decode_models`).
"""

from __future__ import annotations

import collections
import dataclasses
import functools
import time
from typing import Any, Iterator, Sequence

from absl import logging
import flax
import jax
import jax.numpy as jnp
from jax.sharding import Mesh, NamedSharding, PartitionSpec
import numpy as np
import tqdm

from tpt_jax import decode_models
from tpt_jax import models
from tpt_jax import paged_kv
from tpt_jax import sampling
from tpt_jax import sampling_utils
from tpt_jax import sharding as sharding_lib
from tpt_jax import tokenizer as tokenizer_lib

# Finish codes beyond the static engine's: an empty slot.
_IDLE = 5
# Prompts per prefill program (more are prefilled in several runs): one
# compiled shape per prompt bucket, few padding rows when few slots refill.
_PREFILL_ROWS = 4


@dataclasses.dataclass(frozen=True)
class _DecodeSpec:
  """Everything static about the compiled decode call."""
  num_slots: int
  num_pages: int
  page_size: int
  max_pages_per_slot: int
  steps_per_call: int
  greedy: bool
  top_k: int
  use_top_p: bool
  num_stop_strings: int


@flax.struct.dataclass
class _Slots:
  """Per-slot decode state (lives on the device between calls)."""
  tokens: jax.Array  # [S] token fed at the next step.
  positions: jax.Array  # [S] its position.
  steps: jax.Array  # [S] tokens generated so far.
  limits: jax.Array  # [S] most tokens of the row.
  key_data: jax.Array  # [S, ...] raw data of the row's key.
  finish: jax.Array  # [S] finish codes (sampling._RUNNING while running).
  stop_states: jax.Array  # [S, num_stop_strings]


@flax.struct.dataclass
class _Admission:
  """What the host changes in the slots before a call."""
  admit: jax.Array  # [S] bool: the slot starts a new row.
  tokens: jax.Array  # [S] its last prompt token.
  positions: jax.Array  # [S] its position (prompt length - 1).
  limits: jax.Array  # [S]
  problem_keys: jax.Array  # [S] uint32
  samples: jax.Array  # [S] uint32
  release: jax.Array  # [S] bool: the slot's row was preempted (now idle).


@flax.struct.dataclass
class _CallOutput:
  tokens: jax.Array  # [S, steps_per_call] tokens made in this call.
  token_logprobs: jax.Array  # [S, steps_per_call]
  num_steps: jax.Array  # [] steps run.


@dataclasses.dataclass(frozen=True)
class _Shardings:
  """Slots and pages over (data, fsdp); None mesh: no constraints."""
  mesh: Mesh | None

  def rows(self, tree: Any) -> Any:
    if self.mesh is None:
      return tree
    return jax.tree.map(lambda x: jax.lax.with_sharding_constraint(
        x, sharding_lib.batch_sharding(self.mesh, x.ndim) if x.ndim else
        NamedSharding(self.mesh, PartitionSpec())), tree)

  def pool_sharding(self, shape: tuple[int, ...]) -> NamedSharding:
    """Pages over (data, fsdp), KV heads over tensor."""
    return NamedSharding(self.mesh, sharding_lib.logical_to_spec(
        (None, 'batch', None, 'kv_heads', None), shape, self.mesh,
        name='paged_kv'))

  def pool(self, kv: paged_kv.PagedKV) -> paged_kv.PagedKV:
    if self.mesh is None:
      return kv
    sharding = self.pool_sharding(kv.k.shape)
    return jax.tree.map(
        lambda x: jax.lax.with_sharding_constraint(x, sharding), kv)


# ----------------------------------------------------------------------------
# Jitted programs (pure functions).
# ----------------------------------------------------------------------------


def _prefill_call(params: models.Params, kv: paged_kv.PagedKV,
                  tokens: jax.Array, lengths: jax.Array, page_ids: jax.Array,
                  *, decoder: decode_models.PagedDecoder,
                  shardings: _Shardings) -> paged_kv.PagedKV:
  """Prefills right-padded prompts into their pages."""
  k, v = decoder.prefill(params, tokens, lengths)
  return shardings.pool(paged_kv.write_prompts(kv, k, v, page_ids, lengths))


def _copy_call(kv: paged_kv.PagedKV, source: jax.Array,
               destination: jax.Array, *, shardings: _Shardings
               ) -> paged_kv.PagedKV:
  return shardings.pool(paged_kv.copy_pages(kv, source, destination))


def _admit(slots: _Slots, admission: _Admission, seed: jax.Array) -> _Slots:
  base_key = jax.random.key(seed)
  row_keys = jax.vmap(lambda problem, sample: jax.random.fold_in(
      jax.random.fold_in(base_key, problem), sample))(
          admission.problem_keys, admission.samples)
  admit = admission.admit
  finish = jnp.where(admission.release, _IDLE, slots.finish)
  return _Slots(
      tokens=jnp.where(admit, admission.tokens, slots.tokens),
      positions=jnp.where(admit, admission.positions, slots.positions),
      steps=jnp.where(admit, 0, slots.steps),
      limits=jnp.where(admit, admission.limits, slots.limits),
      key_data=jnp.where(admit[:, None], jax.random.key_data(row_keys),
                         slots.key_data),
      finish=jnp.where(admit, sampling._RUNNING, finish),  # pylint: disable=protected-access
      stop_states=jnp.where(admit[:, None], 0, slots.stop_states),
  )


def _finish_codes(slots: _Slots, tokens: jax.Array,
                  params: sampling._SamplingParams,  # pylint: disable=protected-access
                  spec: _DecodeSpec) -> tuple[jax.Array, jax.Array]:
  """New finish codes of running slots after `tokens`, and stop states."""
  is_eos = jnp.any(tokens[:, None] == params.eos_token_ids[None, :], axis=-1)
  is_stop = jnp.any(tokens[:, None] == params.stop_token_ids[None, :], axis=-1)
  stop_states = slots.stop_states
  if spec.num_stop_strings:
    string_index = jnp.arange(spec.num_stop_strings)[None, :]
    stop_states = params.stop_table[string_index, stop_states,
                                    tokens[:, None]].astype(jnp.int32)
    is_stop |= jnp.any(stop_states == params.stop_match_state[None, :],
                       axis=-1)
  at_limit = slots.steps + 1 >= slots.limits
  # pylint: disable=protected-access
  finish = jnp.where(is_eos, sampling._EOS, jnp.where(
      is_stop, sampling._STOP, jnp.where(at_limit, sampling._LENGTH,
                                         sampling._RUNNING)))
  # pylint: enable=protected-access
  return finish, stop_states


def _decode_call(params: models.Params, kv: paged_kv.PagedKV, slots: _Slots,
                 page_table: jax.Array, admission: _Admission,
                 refill_at: jax.Array,
                 sampling_params: sampling._SamplingParams,  # pylint: disable=protected-access
                 *, decoder: decode_models.PagedDecoder, spec: _DecodeSpec,
                 shardings: _Shardings
                 ) -> tuple[paged_kv.PagedKV, _Slots, _CallOutput]:
  """Admits new rows, then decodes until `steps_per_call` steps, no running
  slot, or `refill_at` slots finished in this call."""
  running = sampling._RUNNING  # pylint: disable=protected-access
  slots = shardings.rows(_admit(slots, admission, sampling_params.seed))
  was_running = slots.finish == running
  layout = paged_kv.page_layout(page_table, slots.positions, was_running,
                                num_pages=spec.num_pages,
                                page_size=spec.page_size, mesh=shardings.mesh)
  num_slots, num_steps = spec.num_slots, spec.steps_per_call
  out = _CallOutput(
      tokens=jnp.zeros((num_slots, num_steps), jnp.int32),
      token_logprobs=jnp.zeros((num_slots, num_steps), jnp.float32),
      num_steps=jnp.zeros((), jnp.int32))

  def keep_going(carry) -> jax.Array:
    _, slots, out = carry
    is_running = slots.finish == running
    finished_here = jnp.sum(was_running & ~is_running)
    return (out.num_steps < num_steps) & jnp.any(is_running) & (
        finished_here < refill_at)

  def step(carry):
    kv, slots, out = carry
    is_running = slots.finish == running
    step_layout = layout.replace(positions=slots.positions,
                                 writing=is_running)
    logits, kv = decoder.decode_step(params, slots.tokens, kv, step_layout)
    keys = jax.random.wrap_key_data(slots.key_data)
    tokens, token_logprobs = sampling._sample_tokens(  # pylint: disable=protected-access
        logits, keys, slots.steps, sampling_params, spec)
    finish, stop_states = _finish_codes(slots, tokens, sampling_params, spec)
    index = out.num_steps
    out = _CallOutput(
        tokens=out.tokens.at[:, index].set(jnp.where(is_running, tokens, 0)),
        token_logprobs=out.token_logprobs.at[:, index].set(
            jnp.where(is_running, token_logprobs, 0.0)),
        num_steps=index + 1)
    advance = is_running.astype(jnp.int32)
    slots = _Slots(
        tokens=jnp.where(is_running, tokens, slots.tokens),
        positions=slots.positions + advance,
        steps=slots.steps + advance,
        limits=slots.limits,
        key_data=slots.key_data,
        finish=jnp.where(is_running, finish, slots.finish),
        stop_states=jnp.where(is_running[:, None], stop_states,
                              slots.stop_states))
    return shardings.pool(kv), shardings.rows(slots), shardings.rows(out)

  kv, slots, out = jax.lax.while_loop(keep_going, step, (kv, slots, out))
  return kv, slots, out


def decode_spec(settings: sampling.SamplingSettings, *, num_shards: int,
                prompt_bucket: int) -> _DecodeSpec:
  """The decode call's static shape for `settings` on `num_shards` slot
  shards, with prompts up to `prompt_bucket` tokens."""
  num_slots = -(-settings.batch_size // num_shards) * num_shards
  page_size = settings.page_size
  # A row feeds positions up to prompt + limit - 2.
  max_pages_per_slot = -(-(prompt_bucket + settings.max_new_tokens - 1)
                         // page_size)
  slots_per_shard = num_slots // num_shards
  pages_per_shard = max(
      -(-slots_per_shard * settings.cache_tokens_per_slot // page_size),
      max_pages_per_slot)
  return _DecodeSpec(
      num_slots=num_slots,
      num_pages=pages_per_shard * num_shards,
      page_size=page_size,
      max_pages_per_slot=max_pages_per_slot,
      steps_per_call=settings.steps_per_call,
      greedy=settings.greedy,
      top_k=0 if settings.greedy else settings.top_k,
      use_top_p=not settings.greedy and settings.top_p < 1,
      num_stop_strings=len(settings.stop_strings))


def prefill_rows_per_call(num_shards: int) -> int:
  """Prompts per prefill program: `_PREFILL_ROWS`, rounded up to fill every
  slot shard."""
  return -(-_PREFILL_ROWS // num_shards) * num_shards


def _initial_state(*, decoder: decode_models.PagedDecoder, spec: _DecodeSpec,
                   shardings: _Shardings) -> tuple[paged_kv.PagedKV, _Slots]:
  """An empty page pool and idle slots."""
  kv = paged_kv.init_paged_kv(
      num_layers=decoder.num_layers, num_pages=spec.num_pages,
      page_size=spec.page_size, num_kv_heads=decoder.num_kv_heads,
      head_dim=decoder.head_dim, dtype=decoder.dtype)
  num_slots = spec.num_slots
  zeros = jnp.zeros((num_slots,), jnp.int32)
  key_data = jax.random.key_data(jax.random.key(0))
  slots = _Slots(
      tokens=zeros, positions=zeros, steps=zeros, limits=zeros + 1,
      key_data=jnp.zeros((num_slots, *key_data.shape), key_data.dtype),
      finish=zeros + _IDLE,
      stop_states=jnp.zeros((num_slots, spec.num_stop_strings), jnp.int32))
  return shardings.pool(kv), shardings.rows(slots)


def _decode_step_call(params: models.Params, kv: paged_kv.PagedKV,
                      tokens: jax.Array, page_table: jax.Array,
                      positions: jax.Array, *,
                      decoder: decode_models.PagedDecoder, spec: _DecodeSpec,
                      shardings: _Shardings
                      ) -> tuple[jax.Array, paged_kv.PagedKV]:
  """One decode step of every slot, greedy: the body of `_decode_call`'s
  loop without its bookkeeping (for `tpt_jax.plan`'s per-step cost)."""
  layout = paged_kv.page_layout(page_table, positions,
                                jnp.ones(positions.shape, jnp.bool_),
                                num_pages=spec.num_pages,
                                page_size=spec.page_size, mesh=shardings.mesh)
  logits, kv = decoder.decode_step(params, tokens, kv, layout)
  return shardings.rows(jnp.argmax(logits, axis=-1)), shardings.pool(kv)


@dataclasses.dataclass(frozen=True)
class AbstractProgram:
  """A jitted program of the engine and its abstract, sharded arguments."""
  fn: Any
  args: tuple[Any, ...]
  arg_groups: dict[str, Any]


def abstract_programs(model: models.Model, mesh: Mesh,
                      settings: sampling.SamplingSettings, *,
                      prompt_bucket: int) -> dict[str, AbstractProgram]:
  """The engine's device programs for `settings`, with abstract inputs.

  For compiling ahead of time (`tpt_jax.plan`); nothing is allocated:
    'prefill'      one chunk of prompts of `prompt_bucket` tokens into pages;
    'decode'       one device call (admission, up to `steps_per_call` steps);
    'decode_step'  one step of every slot over the whole page pool (the
                   paged attention reads every page each step).

  Raises:
    ValueError: a model family without a paged decode path.
  """
  decoder = decode_models.decoder_for(model)
  shardings = _Shardings(mesh)
  num_shards = sharding_lib.num_batch_devices(mesh)
  spec = decode_spec(settings, num_shards=num_shards,
                     prompt_bucket=prompt_bucket)
  rows = functools.partial(sampling.abstract_rows, mesh)
  params = sampling.abstract_params(model, mesh)
  kv_sharding = shardings.pool_sharding(
      (decoder.num_layers, spec.num_pages, spec.page_size,
       decoder.num_kv_heads, decoder.head_dim))
  kv, slots = jax.eval_shape(functools.partial(
      _initial_state, decoder=decoder, spec=spec, shardings=shardings))
  kv = jax.tree.map(lambda x: jax.ShapeDtypeStruct(
      x.shape, x.dtype, sharding=kv_sharding), kv)
  slots = jax.tree.map(lambda x: rows(x.shape, x.dtype), slots)
  num_slots = spec.num_slots
  page_table = rows((num_slots, spec.max_pages_per_slot), jnp.int32)
  admission = _Admission(
      admit=rows((num_slots,), jnp.bool_), tokens=rows((num_slots,), jnp.int32),
      positions=rows((num_slots,), jnp.int32),
      limits=rows((num_slots,), jnp.int32),
      problem_keys=rows((num_slots,), jnp.uint32),
      samples=rows((num_slots,), jnp.uint32),
      release=rows((num_slots,), jnp.bool_))
  refill_at = jax.ShapeDtypeStruct((), jnp.int32,
                                   sharding=NamedSharding(mesh, PartitionSpec()))
  sampling_params = sampling.abstract_sampling_params(model, mesh, settings)
  prefill_rows = prefill_rows_per_call(num_shards)
  pool_name = (f'KV pool ({spec.num_pages} pages x {spec.page_size} tokens)')
  common = dict(decoder=decoder, shardings=shardings)
  return {
      'prefill': AbstractProgram(
          fn=jax.jit(functools.partial(_prefill_call, **common),
                     donate_argnums=(1,)),
          args=(params, kv, rows((prefill_rows, prompt_bucket), jnp.int32),
                rows((prefill_rows,), jnp.int32),
                rows((prefill_rows, -(-prompt_bucket // spec.page_size)),
                     jnp.int32)),
          arg_groups={'params': params, pool_name: kv}),
      'decode': AbstractProgram(
          fn=jax.jit(functools.partial(_decode_call, spec=spec, **common),
                     donate_argnums=(1, 2)),
          args=(params, kv, slots, page_table, admission, refill_at,
                sampling_params),
          arg_groups={'params': params, pool_name: kv}),
      'decode_step': AbstractProgram(
          fn=jax.jit(functools.partial(_decode_step_call, spec=spec, **common),
                     donate_argnums=(1,)),
          args=(params, kv, rows((num_slots,), jnp.int32), page_table,
                rows((num_slots,), jnp.int32)),
          arg_groups={'params': params, pool_name: kv}),
  }


# ----------------------------------------------------------------------------
# Host side: slots, pages, admission.
# ----------------------------------------------------------------------------


@dataclasses.dataclass
class _Row:
  problem: int
  sample: int
  tokens: list[np.ndarray] = dataclasses.field(default_factory=list)
  token_logprobs: list[np.ndarray] = dataclasses.field(default_factory=list)


class _PagePool:
  """Host bookkeeping of the device's pages: per-shard free lists and
  reference counts (a page is free when nothing refers to it)."""

  def __init__(self, num_pages: int, num_shards: int):
    self.pages_per_shard = num_pages // num_shards
    self.references = np.zeros((num_pages,), np.int32)
    # Low ids first (pop from the end).
    self.free = [list(range((d + 1) * self.pages_per_shard - 1,
                            d * self.pages_per_shard - 1, -1))
                 for d in range(num_shards)]

  def take(self, shard: int) -> int | None:
    if not self.free[shard]:
      return None
    page = self.free[shard].pop()
    self.references[page] = 1
    return page

  def hold(self, pages: Sequence[int]) -> None:
    for page in pages:
      self.references[page] += 1

  def drop(self, pages: Sequence[int]) -> None:
    for page in pages:
      self.references[page] -= 1
      if self.references[page] == 0:
        self.free[page // self.pages_per_shard].append(page)


@dataclasses.dataclass
class _CallPlan:
  """One device call's host-made inputs."""
  admission: dict[str, np.ndarray]
  prefill_rows: list[tuple[int, list[int]]]  # (problem, its pages).
  copies: list[tuple[int, int]]  # (source page, destination page).
  refill_at: int


class ContinuousSampler(sampling.Sampler):
  """`sampling.Sampler`'s API over a continuously refilled slot pool.

  `settings.batch_size` is the number of slots (rounded up to a multiple of
  the devices the slots are split over).
  """

  def __init__(self, model: models.Model, params: models.Params, *,
               tokenizer: tokenizer_lib.Tokenizer | None = None,
               mesh: Mesh | None = None):
    decode_models.check_params(params)
    self._decoder = decode_models.decoder_for(model)
    super().__init__(model, params, tokenizer=tokenizer, mesh=mesh)
    self._continuous_shardings = _Shardings(mesh)
    self._jitted: dict[Any, Any] = {}
    self.last_run_stats: dict[str, float] = {}

  def with_params(self, params: models.Params) -> ContinuousSampler:
    """A sampler for new params of the same model, reusing the programs."""
    sampler = ContinuousSampler(self._model, params, tokenizer=self._tokenizer,
                                mesh=self._mesh)
    # pylint: disable=protected-access
    sampler._jitted = self._jitted
    sampler._stop_tables = self._stop_tables
    sampler._token_bytes = self._token_bytes
    # pylint: enable=protected-access
    return sampler

  @property
  def num_compiled_programs(self) -> int:
    """Jitted programs built so far (decode, prefill and copy shapes)."""
    return len(self._jitted)

  def sample(self, prompts: Sequence[sampling.Prompt],
             settings: sampling.SamplingSettings, *,
             problem_ids: Sequence[int | str] | None = None,
             max_new_tokens: Sequence[int | None] | None = None,
             chat_template: bool = False, show_progress: bool = True
             ) -> Iterator[list[sampling.SampleResult]]:
    """As `sampling.Sampler.sample`; results stream as rows finish (each
    list: the rows one device call finished), in no fixed order."""
    prompt_tokens, problem_ids, key_indices, row_limits = self._prepare(
        prompts, settings, problem_ids=problem_ids,
        max_new_tokens=max_new_tokens, chat_template=chat_template)
    return self._run_continuous(prompt_tokens, list(problem_ids), key_indices,
                                row_limits, settings, show_progress)

  # --- programs --------------------------------------------------------------

  def _program(self, name: str, key: Any, function, donate: tuple[int, ...]):
    if (name, key) not in self._jitted:
      self._jitted[(name, key)] = jax.jit(function, donate_argnums=donate)
      logging.info('sampling (continuous): compiling %s for %s.', name, key)
    return self._jitted[(name, key)]

  def _decode_program(self, spec: _DecodeSpec):
    return self._program('decode', spec, functools.partial(
        _decode_call, decoder=self._decoder, spec=spec,
        shardings=self._continuous_shardings), donate=(1, 2))

  def _prefill_program(self, shape: tuple[int, int]):
    return self._program('prefill', shape, functools.partial(
        _prefill_call, decoder=self._decoder,
        shardings=self._continuous_shardings), donate=(1,))

  def _copy_program(self, count: int):
    return self._program('copy', count, functools.partial(
        _copy_call, shardings=self._continuous_shardings), donate=(0,))

  # --- running ---------------------------------------------------------------

  def _spec(self, settings: sampling.SamplingSettings,
            prompt_tokens: list[np.ndarray]) -> _DecodeSpec:
    longest_prompt = sampling_utils.bucket_for_length(
        max(len(t) for t in prompt_tokens), settings.prompt_length_buckets)
    return decode_spec(settings, num_shards=self._row_multiple,
                       prompt_bucket=longest_prompt)

  def _initial_state(self, spec: _DecodeSpec
                     ) -> tuple[paged_kv.PagedKV, _Slots]:
    return self._program('init', spec, functools.partial(
        _initial_state, decoder=self._decoder, spec=spec,
        shardings=self._continuous_shardings), donate=())()

  def _sampling_params(self, settings: sampling.SamplingSettings
                       ) -> sampling._SamplingParams:  # pylint: disable=protected-access
    vocab_size = self._model.config.num_embed
    stop_table, stop_match_state = self._stop_table(settings, vocab_size)
    # pylint: disable=protected-access
    return sampling._SamplingParams(
        seed=self._put_replicated(np.asarray(settings.seed, np.uint32)),
        temperature=self._put_replicated(
            np.asarray(settings.temperature or 1.0, np.float32)),
        top_p=self._put_replicated(np.asarray(settings.top_p, np.float32)),
        eos_token_ids=self._put_replicated(
            sampling._padded_ids(settings.eos_token_ids)),
        stop_token_ids=self._put_replicated(
            sampling._padded_ids(settings.stop_token_ids)),
        stop_table=self._put_replicated(stop_table),
        stop_match_state=self._put_replicated(stop_match_state),
    )
    # pylint: enable=protected-access

  def _run_continuous(self, prompt_tokens: list[np.ndarray],
                      problem_ids: list[int | str], key_indices: np.ndarray,
                      row_limits: np.ndarray,
                      settings: sampling.SamplingSettings,
                      show_progress: bool
                      ) -> Iterator[list[sampling.SampleResult]]:
    spec = self._spec(settings, prompt_tokens)
    sampling_params = self._sampling_params(settings)
    num_problems = len(prompt_tokens)
    num_samples = settings.num_samples_per_problem
    scheduler = _Scheduler(spec, self._row_multiple, prompt_tokens,
                           key_indices, row_limits, num_samples, settings)
    logging.info(
        'sampling (continuous): %d problems x %d samples on %d slots, %d KV '
        'pages of %d tokens (%d per device), %d steps per call.',
        num_problems, num_samples, spec.num_slots, spec.num_pages,
        spec.page_size, spec.num_pages // self._row_multiple,
        spec.steps_per_call)
    kv, slots = self._initial_state(spec)
    decode = self._decode_program(spec)
    samples_left = np.full(num_problems, num_samples)
    progress = tqdm.tqdm(total=num_problems, unit='problem', desc='think',
                         disable=not show_progress or jax.process_index() != 0,
                         dynamic_ncols=True)
    start = time.perf_counter()
    generated = 0
    try:
      while not scheduler.done:
        plan = scheduler.plan_call()
        kv = self._run_prefills(kv, plan, prompt_tokens, settings, spec)
        if plan.copies:
          count = 1 << (len(plan.copies) - 1).bit_length()
          source = np.zeros((count,), np.int32)
          destination = np.full((count,), spec.num_pages, np.int32)
          source[:len(plan.copies)], destination[:len(plan.copies)] = zip(
              *plan.copies)
          kv = self._copy_program(count)(
              kv, self._put_replicated(source),
              self._put_replicated(destination))
        admission = _Admission(**{
            name: self._put_rows(value)
            for name, value in plan.admission.items()})
        kv, slots, out = decode(
            self._params, kv, slots, self._put_rows(scheduler.page_table()),
            admission, self._put_replicated(np.asarray(plan.refill_at,
                                                       np.int32)),
            sampling_params)
        finished = scheduler.record_call(
            self._to_host(slots.finish), self._to_host(slots.steps),
            self._to_host(out.tokens), self._to_host(out.token_logprobs),
            int(self._to_host(out.num_steps)))
        if not finished:
          continue
        results = [self._result(row.problem, row.sample,
                                np.concatenate(row.tokens),
                                np.concatenate(row.token_logprobs), code,
                                problem_ids, settings)
                   for row, code in finished]
        generated += sum(r.num_generated_tokens for r in results)
        finished_before = int(np.sum(samples_left == 0))
        for result in results:
          samples_left[result.problem_index] -= 1
        progress.update(int(np.sum(samples_left == 0)) - finished_before)
        elapsed = time.perf_counter() - start
        progress.set_postfix(tokens_per_s=f'{generated / elapsed:.0f}',
                             refresh=False)
        yield results
    finally:
      progress.close()
    elapsed = time.perf_counter() - start
    self.last_run_stats = dict(scheduler.stats,
                               utilization=scheduler.utilization)
    logging.info(
        'sampling (continuous): %d tokens in %.1fs (%.0f tokens/s), %d calls, '
        'slot utilization %.3f, %d preemptions; %d programs compiled.',
        generated, elapsed, generated / max(elapsed, 1e-9),
        scheduler.stats['calls'], scheduler.utilization,
        scheduler.stats['preemptions'], self.num_compiled_programs)

  def _run_prefills(self, kv: paged_kv.PagedKV, plan: _CallPlan,
                    prompt_tokens: list[np.ndarray],
                    settings: sampling.SamplingSettings, spec: _DecodeSpec
                    ) -> paged_kv.PagedKV:
    """Prefills the call's new problems (all but their last prompt token)
    in chunks of `_PREFILL_ROWS` prompts of one length bucket: one program
    per bucket."""
    by_bucket = collections.defaultdict(list)
    for problem, pages in plan.prefill_rows:
      if len(prompt_tokens[problem]) > 1:
        bucket = sampling_utils.bucket_for_length(
            len(prompt_tokens[problem]) - 1, settings.prompt_length_buckets)
        by_bucket[bucket].append((problem, pages))
    num_rows = prefill_rows_per_call(self._row_multiple)
    for length, todo in sorted(by_bucket.items()):
      max_pages = -(-length // spec.page_size)
      program = self._prefill_program((num_rows, length))
      for begin in range(0, len(todo), num_rows):
        tokens = np.zeros((num_rows, length), np.int32)
        lengths = np.zeros((num_rows,), np.int32)
        page_ids = np.full((num_rows, max_pages), spec.num_pages, np.int32)
        for index, (problem, pages) in enumerate(todo[begin:begin + num_rows]):
          prompt = prompt_tokens[problem][:-1]
          tokens[index, :len(prompt)] = prompt
          lengths[index] = len(prompt)
          page_ids[index, :len(pages)] = pages
        kv = program(self._params, kv, self._put_rows(tokens),
                     self._put_rows(lengths), self._put_rows(page_ids))
    return kv


class _Scheduler:
  """Which row runs in which slot, with which pages (host only, no jax)."""

  def __init__(self, spec: _DecodeSpec, num_shards: int,
               prompt_tokens: list[np.ndarray], problem_keys: np.ndarray,
               row_limits: np.ndarray, num_samples: int,
               settings: sampling.SamplingSettings):
    self._spec = spec
    self._num_shards = num_shards
    self._slots_per_shard = spec.num_slots // num_shards
    self._prompt_tokens = prompt_tokens
    self._row_limits = row_limits
    self._problem_keys = problem_keys
    self._refill_count = max(1, round(settings.refill_fraction *
                                      spec.num_slots))
    self._pool = _PagePool(spec.num_pages, num_shards)
    self._pending = collections.deque(
        _Row(problem, sample) for problem in range(len(prompt_tokens))
        for sample in range(num_samples))
    self._pending_of_problem = np.full(len(prompt_tokens), num_samples)
    self._held: dict[int, list[int]] = {}  # Problem -> its prompt pages.
    self._slot_row: list[_Row | None] = [None] * spec.num_slots
    self._slot_pages: list[list[int]] = [[] for _ in range(spec.num_slots)]
    self._slot_steps = np.zeros(spec.num_slots, np.int64)
    self._slot_order = np.zeros(spec.num_slots, np.int64)
    self._admissions = 0
    self._rows_left = len(self._pending)
    self.stats = dict(calls=0, preemptions=0, useful_row_steps=0,
                      computed_row_steps=0)

  @property
  def done(self) -> bool:
    return self._rows_left == 0

  @property
  def utilization(self) -> float:
    """Kept tokens / slot-steps computed (idle and preempted work wasted)."""
    return self.stats['useful_row_steps'] / max(
        1, self.stats['computed_row_steps'])

  def page_table(self) -> np.ndarray:
    table = np.full((self._spec.num_slots, self._spec.max_pages_per_slot),
                    self._spec.num_pages, np.int32)
    for slot, pages in enumerate(self._slot_pages):
      table[slot, :len(pages)] = pages
    return table

  def _prompt_length(self, row: _Row) -> int:
    return len(self._prompt_tokens[row.problem])

  def _pages_needed(self, row: _Row, steps_done: int) -> int:
    """Pages covering the positions the next call may write."""
    prompt_length = self._prompt_length(row)
    limit = int(self._row_limits[row.problem, row.sample])
    last = min(prompt_length - 1 + steps_done + self._spec.steps_per_call - 1,
               prompt_length + limit - 2)
    return last // self._spec.page_size + 1

  def _shard(self, slot: int) -> int:
    return slot // self._slots_per_shard

  def _free_slot(self, slot: int) -> None:
    self._pool.drop(self._slot_pages[slot])
    self._slot_pages[slot] = []
    self._slot_row[slot] = None

  def _preempt(self, slot: int, release: np.ndarray) -> None:
    row = self._slot_row[slot]
    # Its tokens are made again when it restarts.
    self.stats['useful_row_steps'] -= sum(len(t) for t in row.tokens)
    row.tokens.clear()
    row.token_logprobs.clear()
    self._free_slot(slot)
    release[slot] = True
    self._pending.appendleft(row)
    self._pending_of_problem[row.problem] += 1
    self.stats['preemptions'] += 1

  def _drop_hold(self, shard: int, keep: Sequence[int] = ()) -> bool:
    """Gives up one problem's kept prompt pages on `shard`, if any (not
    those of `keep`: this call copies them, so they must not be reused)."""
    for problem, pages in self._held.items():
      if problem in keep:
        continue
      if pages and pages[0] // self._pool.pages_per_shard == shard:
        self._pool.drop(pages)
        del self._held[problem]
        return True
    return False

  def _grow(self, release: np.ndarray) -> None:
    """Gives running slots the pages of the next call, oldest rows first.
    A device out of pages first gives up kept prompt pages, then preempts
    its youngest row (the oldest row always gets its pages: progress)."""
    running = [s for s in range(self._spec.num_slots)
               if self._slot_row[s] is not None]
    for slot in sorted(running, key=lambda s: self._slot_order[s]):
      row = self._slot_row[slot]
      if row is None:  # Preempted meanwhile.
        continue
      shard = self._shard(slot)
      needed = self._pages_needed(row, int(self._slot_steps[slot]))
      while len(self._slot_pages[slot]) < needed:
        page = self._pool.take(shard)
        if page is None and self._drop_hold(shard):
          continue  # Waiting samples of that problem will prefill again.
        if page is None:
          victims = [s for s in range(shard * self._slots_per_shard,
                                      (shard + 1) * self._slots_per_shard)
                     if self._slot_row[s] is not None]
          victim = max(victims, key=lambda s: self._slot_order[s])
          self._preempt(victim, release)
          if victim == slot:
            break
          continue
        self._slot_pages[slot].append(page)

  def plan_call(self) -> _CallPlan:
    spec = self._spec
    num_slots = spec.num_slots
    admission = dict(
        admit=np.zeros(num_slots, bool),
        tokens=np.zeros(num_slots, np.int32),
        positions=np.zeros(num_slots, np.int32),
        limits=np.ones(num_slots, np.int32),
        problem_keys=np.zeros(num_slots, np.uint32),
        samples=np.zeros(num_slots, np.uint32),
        release=np.zeros(num_slots, bool))
    self._grow(admission['release'])
    prefill_rows, copies, held_now, copied = [], [], [], set()
    idle = [s for s in range(num_slots) if self._slot_row[s] is None]
    # Fill the devices with the most free pages first.
    idle.sort(key=lambda s: (-len(self._pool.free[self._shard(s)]), s))
    for slot in idle:
      if not self._pending:
        break
      row = self._pending[0]
      shard = self._shard(slot)
      needed = self._pages_needed(row, 0)
      while len(self._pool.free[shard]) < needed and self._drop_hold(
          shard, keep=copied):
        pass
      if len(self._pool.free[shard]) < needed:
        continue
      self._pending.popleft()
      self._pending_of_problem[row.problem] -= 1
      pages = [self._pool.take(shard) for _ in range(needed)]
      prompt = self._prompt_tokens[row.problem]
      prompt_pages = -(-(len(prompt) - 1) // spec.page_size)
      if row.problem in self._held:
        copies += zip(self._held[row.problem], pages[:prompt_pages])
        copied.add(row.problem)
      else:
        prefill_rows.append((row.problem, pages[:prompt_pages]))
        self._held[row.problem] = pages[:prompt_pages]
        self._pool.hold(pages[:prompt_pages])
      if self._pending_of_problem[row.problem] == 0:
        held_now.append(row.problem)
      self._slot_row[slot] = row
      self._slot_pages[slot] = pages
      self._slot_steps[slot] = 0
      self._slot_order[slot] = self._admissions
      self._admissions += 1
      admission['admit'][slot] = True
      admission['release'][slot] = False
      admission['tokens'][slot] = prompt[-1]
      admission['positions'][slot] = len(prompt) - 1
      admission['limits'][slot] = self._row_limits[row.problem, row.sample]
      admission['problem_keys'][slot] = self._problem_keys[row.problem]
      admission['samples'][slot] = row.sample
    # Prompt pages no pending sample needs any more (their copies run
    # before any later program can reuse them).
    for problem in held_now:
      if problem in self._held:
        self._pool.drop(self._held.pop(problem))
    if all(row is None for row in self._slot_row) and self._pending:
      raise RuntimeError('no slot could take a row: the KV pool is too small '
                         '(raise settings.cache_tokens_per_slot).')
    refill_at = self._refill_count if self._pending else num_slots + 1
    self.stats['calls'] += 1
    return _CallPlan(admission, prefill_rows, copies, refill_at)

  def record_call(self, finish: np.ndarray, steps: np.ndarray,
                  tokens: np.ndarray, token_logprobs: np.ndarray,
                  num_steps: int) -> list[tuple[_Row, int]]:
    """Takes a call's outputs; returns the rows it finished (with codes)."""
    finished = []
    busy = 0
    for slot, row in enumerate(self._slot_row):
      if row is None:
        continue
      count = int(steps[slot] - self._slot_steps[slot])
      busy += count
      row.tokens.append(tokens[slot, :count])
      row.token_logprobs.append(token_logprobs[slot, :count])
      self._slot_steps[slot] = steps[slot]
      if finish[slot] != sampling._RUNNING:  # pylint: disable=protected-access
        finished.append((row, int(finish[slot])))
        self._free_slot(slot)
        self._rows_left -= 1
    self.stats['useful_row_steps'] += busy
    self.stats['computed_row_steps'] += num_steps * self._spec.num_slots
    return finished
