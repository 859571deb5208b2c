"""The paged decode paths of the Llama-3 and GPT-2 families
(`tpt_jax.decode_models`): logits against the family's full forward pass,
and the continuous engine against the static one (`sampling.Sampler`).

Tiny f32 models with random weights (norm scales and biases too, so a
dropped one would show): `llama3_tiny` (rope scaling with a 32-position
original context, 4 query / 2 key-value heads) and `gpt2_tiny`. The Gemma2
path is tested in tests/test_sampling_continuous.py.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from absl import logging
from flax import linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from tpt_jax import config as config_lib
from tpt_jax import decode_models
from tpt_jax import engines
from tpt_jax import gpt2
from tpt_jax import models
from tpt_jax import paged_kv
from tpt_jax import sampling
from tpt_jax import sampling_continuous

# Logit difference the f32 paged step may have from the forward pass:
# 1e-5 plus 1e-5 of the logit (the two sum in different orders; logits here
# reach ~10).
_TOLERANCE = 1e-5


def _model(variant: str, architecture: Any = None) -> models.Model:
  config = config_lib.base_config()
  config.model.variant = variant
  config.model.param_dtype = 'float32'
  config.model.compute_dtype = 'float32'
  return models.build_model(config.model, architecture)


def _random_params(model: models.Model, seed: int = 0) -> models.Params:
  """Random weights from numpy (no init program to compile): norm scales
  around 1, non-zero biases, logits of a few units."""
  rng = np.random.default_rng(seed)

  def leaf(path, shape_dtype):
    shape, name = shape_dtype.shape, jax.tree_util.keystr(path)
    if 'scale' in name:
      value = rng.normal(1.0, 0.3, shape)
    elif len(shape) == 1 or 'bias' in name:
      value = rng.normal(0.0, 0.2, shape)
    elif 'embedding' in name:
      value = rng.normal(0.0, 0.5, shape)
    else:
      value = rng.normal(0.0, 1 / np.sqrt(shape[-2]), shape)
    return jnp.asarray(value, shape_dtype.dtype)
  return jax.tree_util.tree_map_with_path(leaf, model.abstract_params())


@dataclasses.dataclass(frozen=True)
class Env:
  model: models.Model
  params: models.Params
  static: sampling.Sampler
  continuous: sampling_continuous.ContinuousSampler


def _env(model: models.Model) -> Env:
  params = _random_params(model)
  return Env(model, params, sampling.Sampler(model, params),
             sampling_continuous.ContinuousSampler(model, params))


@pytest.fixture(scope='module', params=['llama3_tiny', 'gpt2_tiny'])
def env(request) -> Env:
  return _env(_model(request.param))


def _prompts(vocab_size: int, lengths, seed: int = 0) -> list[list[int]]:
  rng = np.random.default_rng(seed)
  return [[int(t) for t in rng.integers(3, vocab_size, size=n)]
          for n in lengths]


def _tokens(results) -> dict[tuple[int, int], list[int]]:
  return {(r.problem_index, r.sample_index): r.tokens.tolist()
          for r in results}


def test_decoder_is_the_familys(env):
  decoder = decode_models.decoder_for(env.model)
  expected = {'llama': decode_models.LlamaDecoder,
              'gpt2': decode_models.GPT2Decoder}[env.model.family]
  assert type(decoder) is expected  # pylint: disable=unidiomatic-typecheck
  config = env.model.config
  assert (decoder.num_layers, decoder.num_kv_heads, decoder.head_dim,
          decoder.vocab_size) == (config.num_layers, config.num_kv_heads,
                                  config.head_dim, config.num_embed)


def test_decode_step_equals_the_forward_pass(env):
  """Logits of the paged step == the family's full causal forward pass at
  every position, for slots at ragged positions on scattered pages (and an
  idle slot that owns no page)."""
  model, params = env.model, env.params
  decoder = decode_models.decoder_for(model)
  page_size, num_pages, max_pages, length = 4, 24, 6, 24
  lengths = np.asarray([5, 1, 11, 1])
  writing = np.asarray([True, True, True, False])
  num_slots = len(lengths)
  rng = np.random.default_rng(1)
  sequences = rng.integers(3, model.config.num_embed, (num_slots, length))
  reference = np.asarray(jax.jit(model.apply)(
      params, jnp.asarray(sequences)).logits)
  table = np.full((num_slots, max_pages), num_pages, np.int32)
  table[:3] = rng.permutation(num_pages)[:3 * max_pages].reshape(3, max_pages)
  kv = paged_kv.init_paged_kv(
      num_layers=decoder.num_layers, num_pages=num_pages,
      page_size=page_size, num_kv_heads=decoder.num_kv_heads,
      head_dim=decoder.head_dim, dtype=jnp.float32)
  prefill_length = 16
  index = np.arange(prefill_length)
  prompts = np.where(index[None, :] < lengths[:, None],
                     sequences[:, :prefill_length], 0)
  k, v = jax.jit(decoder.prefill)(params, jnp.asarray(prompts),
                                  jnp.asarray(lengths))
  kv = paged_kv.write_prompts(kv, k, v, jnp.asarray(table),
                              jnp.asarray(lengths))
  step = jax.jit(decoder.decode_step)
  positions = lengths.copy()
  worst = 0.0
  for _ in range(8):
    layout = paged_kv.page_layout(
        jnp.asarray(table), jnp.asarray(positions), jnp.asarray(writing),
        num_pages=num_pages, page_size=page_size)
    logits, kv = step(params, jnp.asarray(
        sequences[np.arange(num_slots), positions]), kv, layout)
    assert logits.dtype == jnp.float32
    rows = np.flatnonzero(writing)
    expected = reference[rows, positions[rows]]
    difference = np.abs(np.asarray(logits)[rows] - expected).max()
    worst = max(worst, float(difference))
    np.testing.assert_allclose(np.asarray(logits)[rows], expected,
                               atol=_TOLERANCE, rtol=_TOLERANCE)
    positions += writing
  assert np.abs(reference).max() > 1.0  # Logits big enough to tell apart.
  print(f'{model.family}: max |paged - forward| logit difference {worst:.2e}')


_LENGTHS = (9, 1, 23, 4, 14, 6)
_LIMITS = (16, 1, 7, 16, 11, 16)
_GREEDY = sampling.SamplingSettings(
    max_new_tokens=16, batch_size=2, prompt_length_buckets=(32,),
    page_size=4, steps_per_call=5, max_cache_segments=2, eos_token_ids=())


def _greedy_on_both_engines(env, prompts, limits):
  """Greedy results of (the continuous engine, the static engine)."""
  return tuple(engine.sample_all(prompts, _GREEDY, max_new_tokens=limits,
                                 show_progress=False)
               for engine in (env.continuous, env.static))


def test_greedy_continuous_equals_static(env):
  """Ragged prompts and per-row limits, 3x more rows than slots."""
  prompts = _prompts(env.model.config.num_embed, _LENGTHS)
  continuous, static = _greedy_on_both_engines(env, prompts, _LIMITS)
  assert _tokens(continuous) == _tokens(static)
  assert [r.num_generated_tokens for r in continuous] == list(_LIMITS)
  for ours, theirs in zip(continuous, static):
    assert ours.logprob_sum == pytest.approx(theirs.logprob_sum, abs=1e-3)
  # The rows' traces differ: they say something about the model.
  assert len({tuple(r.tokens.tolist()) for r in continuous}) == len(prompts)


def test_token_id_zero_is_an_ordinary_token_outside_gemma(env):
  """Id 0 is Llama-3's and GPT-2's '!' (only Gemma pads with it): prompts
  holding it sample, and both engines agree on them."""
  prompts = [[5, 0, 7, 0, 9], [0, 11, 12]]
  continuous, static = _greedy_on_both_engines(env, prompts, [4, 3])
  assert _tokens(continuous) == _tokens(static)
  gemma = _model('gemma2_tiny')
  with pytest.raises(ValueError, match=r'outside \[1, .*padding id'):
    sampling.Sampler(gemma, gemma.init_params(jax.random.key(0))).sample_all(
        prompts, _GREEDY, show_progress=False)


_SAMPLED = sampling.SamplingSettings(
    num_samples_per_problem=4, max_new_tokens=10, temperature=1.0,
    batch_size=8, prompt_length_buckets=(32,), seed=7, page_size=4,
    steps_per_call=4, max_cache_segments=1, eos_token_ids=())


def test_sampled_traces_do_not_depend_on_the_slot_count(env):
  prompts = _prompts(env.model.config.num_embed, (7, 2, 12), seed=2)
  limits = [[10, 3, 10, 6]] * 3
  ids = ['p/0', 'p/1', 'p/2']

  def run(sampler, settings):
    return _tokens(sampler.sample_all(prompts, settings, problem_ids=ids,
                                      max_new_tokens=limits,
                                      show_progress=False))

  reference = run(env.continuous, _SAMPLED)
  assert len(reference) == 12
  # 3 slots (4x fewer than rows) and another call length.
  assert run(env.continuous, dataclasses.replace(
      _SAMPLED, batch_size=3, steps_per_call=3)) == reference
  assert run(env.static, _SAMPLED) == reference
  assert len({tuple(reference[(0, j)]) for j in range(4)}) > 1


def test_gpt2_past_its_learned_positions_does_what_the_static_engine_does():
  """Positions past `max_positions` reuse the last learned one in both
  engines (a gather clamps); the traces agree there too."""
  tiny = gpt2.variant_config('gpt2_tiny', None)
  env = _env(_model('gpt2_tiny', dataclasses.replace(tiny, max_positions=16)))
  prompts = _prompts(tiny.num_embed, (12, 3), seed=3)
  settings = dataclasses.replace(_GREEDY, prompt_length_buckets=(16,))
  continuous = env.continuous.sample_all(prompts, settings,
                                         show_progress=False)
  static = env.static.sample_all(prompts, settings, show_progress=False)
  assert _tokens(continuous) == _tokens(static)
  assert 12 + continuous[0].num_generated_tokens > 16  # Past the table.


def test_make_sampler_picks_continuous_and_falls_back_for_unknown_modules(
    env, monkeypatch):
  config = sampling.default_config()
  config.engine = 'continuous'
  assert isinstance(engines.make_sampler(config, env.model, env.params),
                    sampling_continuous.ContinuousSampler)
  unknown = models.Model(module=nn.Dense(4), param_dtype=jnp.float32,
                         compute_dtype=jnp.float32)
  with pytest.raises(ValueError, match='no decode path for Dense'):
    decode_models.decoder_for(unknown)
  warnings = []
  monkeypatch.setattr(logging, 'warning',
                      lambda message, *args: warnings.append(message % args))
  sampler = engines.make_sampler(config, unknown, {})
  assert type(sampler) is sampling.Sampler  # pylint: disable=unidiomatic-typecheck
  assert 'Using the static engine' in warnings[0]
