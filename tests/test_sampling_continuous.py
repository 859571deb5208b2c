"""Tests of the continuous-batching engine (`tpt_jax.sampling_continuous`),
its paged decode path (`decode_models`, `paged_kv`) and its agreement with
the static engine, a full recompute and `gm.text.Sampler`.

Same tiny f32 `gemma2_tiny` model (sliding window 8) and tokenizer as
tests/test_sampling.py; the 8 simulated CPU devices come from conftest.py.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from tpt_jax import decode_models
from tpt_jax import paged_kv
from tpt_jax import engines
from tpt_jax import sampling
from tpt_jax import sampling_continuous
from tpt_jax import tokenizer as tokenizer_lib
import test_sampling as helpers  # pylint: disable=g-bad-import-order
from gemma import gm  # pylint: disable=g-bad-import-order


@dataclasses.dataclass(frozen=True)
class Env:
  tokenizer: tokenizer_lib.Tokenizer
  model: Any
  params: Any
  static: sampling.Sampler
  continuous: sampling_continuous.ContinuousSampler


@pytest.fixture(scope='module')
def env(tmp_path_factory) -> Env:
  path = str(tmp_path_factory.mktemp('continuous') / 'tokenizer.model')
  tokenizer = tokenizer_lib.train_sentencepiece(helpers._training_texts(),
                                                path, vocab_size=500)
  model = helpers._build_model(tokenizer.vocab_size)
  params = helpers._random_params(model)
  return Env(tokenizer, model, params,
             sampling.Sampler(model, params, tokenizer=tokenizer),
             sampling_continuous.ContinuousSampler(model, params,
                                                   tokenizer=tokenizer))


def _tokens(results) -> dict[tuple[int, int], list[int]]:
  return {(r.problem_index, r.sample_index): r.tokens.tolist()
          for r in results}


@pytest.mark.parametrize('num_pages', [200, 12])  # Windowed / pool path.
def test_decode_step_equals_gemma_transformer(env, num_pages):
  """Logits of the paged decode path == gm.nn.Transformer's, with slots at
  different positions on scattered pages, past the sliding window."""
  model, params = env.model, env.params
  decoder = decode_models.decoder_for(model)
  page_size, num_slots, max_pages = 4, 3, 4
  lengths = np.asarray([5, 1, 11])
  rng = np.random.default_rng(0)
  sequences = rng.integers(3, model.config.num_embed, (num_slots, 16))
  index = jnp.arange(16)
  reference = model.apply(
      params, jnp.asarray(sequences), positions=jnp.broadcast_to(
          index, (num_slots, 16)),
      attention_mask=jnp.broadcast_to(index[None, :] <= index[:, None],
                                      (num_slots, 16, 16))).logits
  table = rng.permutation(num_pages)[:num_slots * max_pages].reshape(
      num_slots, max_pages).astype(np.int32)
  kv = paged_kv.init_paged_kv(
      num_layers=decoder.num_layers, num_pages=num_pages,
      page_size=page_size, num_kv_heads=decoder.num_kv_heads,
      head_dim=decoder.head_dim, dtype=jnp.float32)
  prompts = np.where(index[None, :] < lengths[:, None], sequences, 0)
  k, v = decoder.prefill(params, jnp.asarray(prompts), jnp.asarray(lengths))
  kv = paged_kv.write_prompts(kv, k, v, jnp.asarray(table),
                              jnp.asarray(lengths))
  step = jax.jit(decoder.decode_step)
  positions = lengths.copy()
  for _ in range(4):
    layout = paged_kv.page_layout(
        jnp.asarray(table), jnp.asarray(positions), jnp.ones(num_slots, bool),
        num_pages=num_pages, page_size=page_size)
    logits, kv = step(params, jnp.asarray(
        sequences[np.arange(num_slots), positions]), kv, layout)
    expected = reference[np.arange(num_slots), positions]
    np.testing.assert_allclose(logits, expected, atol=2e-4, rtol=1e-4)
    positions += 1


# Ragged prompts ('' is BOS alone; the last one is longer than any other)
# and ragged limits.
_PROMPTS = ('the cat sat on', '', 'question: what is 5 + 6', 'apples left',
            'she has 3', 'she has 3 apples and buys more, what is 5 + 6? ' * 3)
_LIMITS = (20, 1, 7, 20, 13, 20)
_GREEDY = sampling.SamplingSettings(
    max_new_tokens=20, batch_size=2, prompt_length_buckets=(8, 16, 64),
    page_size=4, steps_per_call=5)


def test_greedy_continuous_equals_static_recompute_and_gemma_sampler(env):
  prompts = list(_PROMPTS)
  encoded = [tokenizer_lib.encode_prompt(env.tokenizer, p, chat_template=False)
             for p in prompts]
  assert len(encoded[1]) == 1 and len(encoded[-1]) > 2 * max(
      len(t) for t in encoded[:-1])
  continuous = env.continuous.sample_all(prompts, _GREEDY,
                                         max_new_tokens=_LIMITS,
                                         show_progress=False)
  static = env.static.sample_all(prompts, _GREEDY, max_new_tokens=_LIMITS,
                                 show_progress=False)
  assert _tokens(continuous) == _tokens(static)
  references = helpers._greedy_without_cache(
      env.model, env.params, encoded, _GREEDY.max_new_tokens,
      _GREEDY.eos_token_ids, buffer_length=64 + _GREEDY.max_new_tokens)
  peer = gm.text.Sampler(model=env.model.module, params=env.params,
                         tokenizer=env.tokenizer, cache_length=96,
                         max_out_length=_GREEDY.max_new_tokens,
                         pad_length=None)
  peer_tokens = np.asarray(peer.sample(
      prompts, max_new_tokens=_GREEDY.max_new_tokens,
      return_state=True).state.predicted_tokens)
  for result in continuous:
    expected, expected_logprob = references[result.problem_index]
    limit = _LIMITS[result.problem_index]
    count = result.num_generated_tokens
    assert result.tokens.tolist() == expected[:limit], result.problem_index
    assert result.tokens.tolist() == peer_tokens[
        result.problem_index, :count].tolist()
    if count == len(expected):
      assert result.logprob_sum == pytest.approx(expected_logprob, abs=1e-3)
    if expected[:limit][-1] not in _GREEDY.eos_token_ids:
      assert result.finish_reason == 'length'
      assert count == limit  # A row stops at its own limit.
  assert any(r.num_generated_tokens == 1 for r in continuous)


_SAMPLED = sampling.SamplingSettings(
    num_samples_per_problem=8, max_new_tokens=10, temperature=1.0, top_k=50,
    top_p=0.95, batch_size=8, prompt_length_buckets=(16,), seed=7,
    page_size=4, steps_per_call=4, max_cache_segments=1)
_IDS = ('gsm8k/0', 'gsm8k/1', 'gsm8k/2')


def test_sampled_traces_depend_only_on_seed_problem_and_sample(env):
  prompts = helpers._sampled_prompts(env.model.config.num_embed)[:3]
  limits = [[10, 3, 10, 1, 10, 6, 10, 10]] * 3

  def run(sampler, settings, order=(0, 1, 2)):
    results = sampler.sample_all(
        [prompts[i] for i in order], settings,
        problem_ids=[_IDS[i] for i in order],
        max_new_tokens=[limits[i] for i in order], show_progress=False)
    return {(r.problem_id, r.sample_index): r.tokens.tolist()
            for r in results}

  reference = run(env.continuous, _SAMPLED)
  assert len(reference) == 24
  # Slot count (3 slots: 8x more rows than slots), order, step count per
  # call: the same traces.
  assert run(env.continuous, dataclasses.replace(
      _SAMPLED, batch_size=3, steps_per_call=3), order=(2, 0, 1)) == reference
  # And the static engine's traces (same keys per row and step).
  assert run(env.static, _SAMPLED) == reference
  # Samples differ, and differ with the seed.
  assert len({tuple(reference[(_IDS[0], j)]) for j in range(8)}) > 1
  assert run(env.continuous, dataclasses.replace(_SAMPLED, seed=8)) != (
      reference)


def test_one_sample_per_problem_and_ten_times_more_rows_than_slots(env):
  prompts = helpers._token_prompts(env.model.config.num_embed,
                                   [3, 9, 5, 14, 2, 7, 11, 4, 6, 8], seed=3)
  settings = dataclasses.replace(_SAMPLED, num_samples_per_problem=1,
                                 batch_size=1, prompt_length_buckets=(16,))
  one_slot = env.continuous.sample_all(prompts, settings, show_progress=False)
  assert len(one_slot) == 10  # 10 rows through a single slot.
  eight = env.continuous.sample_all(prompts, _SAMPLED, show_progress=False)
  eight = _tokens(eight)
  for result in one_slot:
    assert result.tokens.tolist() == eight[(result.problem_index, 0)]


def test_eos_at_first_step_and_stop_string_across_two_tokens(env):
  texts = list(helpers._TEXTS)
  settings = dataclasses.replace(helpers._GREEDY_12, page_size=4,
                                 steps_per_call=6, batch_size=3)
  greedy = env.continuous.sample_all(texts, settings, show_progress=False)
  assert _tokens(greedy) == _tokens(env.static.sample_all(
      texts, helpers._GREEDY_12, show_progress=False))
  first_token = int(greedy[0].tokens[0])
  as_eos = env.continuous.sample_all(
      texts, dataclasses.replace(settings, eos_token_ids=(first_token,)),
      show_progress=False)
  assert as_eos[0].tokens.tolist() == [first_token]
  assert as_eos[0].finish_reason == 'eos'
  assert as_eos[0].text == ''
  for row in greedy:
    found = helpers._split_stop_string(env.tokenizer, row.tokens.tolist())
    if found:
      break
  assert found, 'no two consecutive plain tokens in the greedy outputs'
  k, stop, text_before = found
  stopped = env.continuous.sample_all(
      texts, dataclasses.replace(settings, stop_strings=('<never>', stop)),
      show_progress=False)
  result = stopped[row.problem_index]
  assert result.tokens.tolist() == row.tokens[:k + 1].tolist()
  assert result.finish_reason == 'stop'
  assert result.text == text_before[:-1]


def test_preemption_when_the_pool_runs_out_keeps_traces(env):
  prompts = helpers._token_prompts(env.model.config.num_embed,
                                   [12, 3, 9, 14, 5, 2], seed=4)
  settings = dataclasses.replace(
      _SAMPLED, num_samples_per_problem=2, max_new_tokens=24, batch_size=4,
      cache_tokens_per_slot=8, page_size=4, steps_per_call=4)
  tight = env.continuous.sample_all(prompts, settings, show_progress=False)
  assert env.continuous.last_run_stats['preemptions'] > 0
  roomy = env.continuous.sample_all(
      prompts, dataclasses.replace(settings, cache_tokens_per_slot=64),
      show_progress=False)
  assert env.continuous.last_run_stats['preemptions'] == 0
  assert _tokens(tight) == _tokens(roomy)
  assert all(r.num_generated_tokens == 24 for r in tight
             if r.finish_reason == 'length')


def test_output_independent_of_device_count(env):
  assert jax.device_count() >= 8, 'conftest.py simulates 8 CPU devices'
  prompts = helpers._sampled_prompts(env.model.config.num_embed)[:3]
  settings = _SAMPLED  # 8 slots: 2 per (data, fsdp) shard.
  sharded = sampling_continuous.ContinuousSampler(
      env.model, env.params, tokenizer=env.tokenizer,
      mesh=helpers._mesh_2x2x2(jax.devices()[:8]))
  on_8 = sharded.sample_all(prompts, settings, problem_ids=list(_IDS),
                            show_progress=False)
  on_1 = env.continuous.sample_all(prompts, settings, problem_ids=list(_IDS),
                                   show_progress=False)
  assert _tokens(on_8) == _tokens(on_1)
  assert len(on_8) == 24


def test_make_sampler_and_bad_inputs(env):
  config = sampling.default_config()
  config.engine = 'continuous'
  assert isinstance(engines.make_sampler(config, env.model, env.params),
                    sampling_continuous.ContinuousSampler)
  config.engine = 'static'
  sampler = engines.make_sampler(config, env.model, env.params)
  assert type(sampler) is sampling.Sampler  # pylint: disable=unidiomatic-typecheck
  config.engine = 'vllm'
  with pytest.raises(ValueError, match='engine'):
    engines.make_sampler(config, env.model, env.params)
  prompts = [[tokenizer_lib.BOS_ID, 200], [tokenizer_lib.BOS_ID, 300]]
  settings = sampling.SamplingSettings(max_new_tokens=4,
                                       prompt_length_buckets=(8,))
  for engine in (env.static, env.continuous):
    with pytest.raises(ValueError, match=r'max_new_tokens\[1\]'):
      engine.sample(prompts, settings, max_new_tokens=[2, 5])
    with pytest.raises(ValueError, match='max_new_tokens has 1 entries'):
      engine.sample(prompts, settings, max_new_tokens=[2])
  with pytest.raises(ValueError, match='refill_fraction'):
    sampling.SamplingSettings(refill_fraction=0)
  with pytest.raises(ValueError, match='LoRA'):
    decode_models.check_params({'layer_0': {'lora': {'a': jnp.zeros(1)}}})


@pytest.mark.parametrize('group', [3, 1])
def test_accelerator_attention_matmuls_equal_the_cpu_reductions(group):
  # `paged_attention` reduces on CPU and multiplies matrices elsewhere
  # (`lax.platform_dependent`); the TPU/GPU forms, run here, give the same
  # page scores and value sums, with query groups (GQA) and without (GPT-2).
  rng = np.random.default_rng(0)
  pages, page_size, kv_heads, head_dim = 6, 4, 2, 8
  queries = jnp.asarray(rng.normal(size=(pages, kv_heads, group, head_dim)),
                        jnp.bfloat16)
  k_pages, v_pages = (jnp.asarray(
      rng.normal(size=(pages, page_size, kv_heads, head_dim)), jnp.bfloat16)
                      for _ in range(2))
  weights = jnp.asarray(rng.random((pages, kv_heads, group, page_size)),
                        jnp.float32)
  # pylint: disable=protected-access
  np.testing.assert_allclose(paged_kv._page_logits_dot(queries, k_pages),
                             paged_kv._page_logits_reduce(queries, k_pages),
                             rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(paged_kv._page_values_dot(weights, v_pages),
                             paged_kv._page_values_reduce(weights, v_pages),
                             rtol=1e-5, atol=1e-5)
  # pylint: enable=protected-access
