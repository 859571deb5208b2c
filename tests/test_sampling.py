"""Tests of the Think stage: `tpt_jax.sampling` (and `sampling_utils`).

One f32 `gemma2_tiny` model (sliding window 8, so local layers matter) and
one small tokenizer are shared by the module; shapes are tiny. The
device-count test uses the 8 simulated CPU devices that tests/conftest.py
sets up, or a subprocess with them where this process has fewer (XLA_FLAGS
must be set before jax starts).
"""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from tpt_jax import config as config_lib
from tpt_jax import models
from tpt_jax import sampling
from tpt_jax import sampling_utils
from tpt_jax import sharding as sharding_lib
from tpt_jax import tokenizer as tokenizer_lib
import jax  # pylint: disable=g-bad-import-order
import jax.numpy as jnp
from gemma import gm

_REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _training_texts() -> list[str]:
  words = ['the', 'cat', 'sat', 'on', 'mat', 'question', 'answer', 'what',
           'plus', 'apples', 'she', 'has', 'left', 'buys', 'more']
  rng = np.random.default_rng(0)
  return [' '.join(rng.choice(words, size=8)) + f' {a} + {b} = {a + b}.'
          for a in range(20) for b in range(10)]


def _build_model(vocab_size: int) -> models.Model:
  config = config_lib.base_config()
  config.model.variant = 'gemma2_tiny'
  config.model.vocab_size = vocab_size
  config.model.param_dtype = 'float32'
  config.model.compute_dtype = 'float32'
  return models.build_model(config.model)


def _random_params(model: models.Model, seed: int = 0) -> models.Params:
  """Deterministic random params from numpy (`init_params` compiles a large
  init program: ~10 s of CPU that the tests, and their subprocess, skip)."""
  rng = np.random.default_rng(seed)
  def leaf(path, shape_dtype):
    shape = shape_dtype.shape
    if 'input_embedding' in jax.tree_util.keystr(path):
      scale = 0.1  # Larger makes the model copy its input token.
    elif len(shape) == 1:  # Norm scales (used as 1 + scale).
      scale = 0.1
    else:
      scale = 0.5 / np.sqrt(shape[-2])
    return jnp.asarray(rng.normal(0, scale, shape), shape_dtype.dtype)
  return jax.tree_util.tree_map_with_path(leaf, model.abstract_params())


@dataclasses.dataclass(frozen=True)
class Env:
  tokenizer: tokenizer_lib.Tokenizer
  tokenizer_path: str
  model: models.Model
  params: models.Params
  sampler: sampling.Sampler


@pytest.fixture(scope='module')
def env(tmp_path_factory) -> Env:
  path = str(tmp_path_factory.mktemp('sampling') / 'tokenizer.model')
  tokenizer = tokenizer_lib.train_sentencepiece(_training_texts(), path,
                                                vocab_size=500)
  model = _build_model(tokenizer.vocab_size)
  params = _random_params(model)
  return Env(tokenizer, path, model, params,
             sampling.Sampler(model, params, tokenizer=tokenizer))


def _token_prompts(vocab_size: int, lengths, seed: int = 0) -> list[list[int]]:
  """BOS + random ordinary tokens."""
  rng = np.random.default_rng(seed)
  return [[tokenizer_lib.BOS_ID] + [int(t) for t in rng.integers(
      108, vocab_size, size=n - 1)] for n in lengths]


def _greedy_without_cache(model, params, prompts, max_new_tokens, eos_ids,
                          buffer_length):
  """Greedy decoding by re-running the full forward pass at every step."""
  @jax.jit
  def next_token_logits(tokens, length):
    index = jnp.arange(buffer_length)
    mask = (index[None, :] <= index[:, None]) & (index[None, :] < length)
    out = model.apply(params, tokens[None], positions=index[None],
                      attention_mask=mask[None])
    return out.logits[0, length - 1]
  outputs = []
  for prompt in prompts:
    tokens = np.zeros(buffer_length, np.int32)
    tokens[:len(prompt)] = prompt
    length = len(prompt)
    generated, logprob_sum = [], 0.0
    for _ in range(max_new_tokens):
      logits = next_token_logits(jnp.asarray(tokens), length)
      token = int(jnp.argmax(logits))
      logprob_sum += float(jax.nn.log_softmax(logits)[token])
      generated.append(token)
      if token in eos_ids:
        break
      tokens[length] = token
      length += 1
    outputs.append((generated, logprob_sum))
  return outputs


def test_greedy_with_cache_equals_recompute_on_ragged_prompts(env):
  # From 1 token up to the bucket limit, in one batch. 20 new tokens, in 2
  # cache segments, run past the sliding window (8).
  lengths = [16, 1, 9, 8]
  prompts = _token_prompts(env.model.config.num_embed, lengths)
  settings = sampling.SamplingSettings(
      max_new_tokens=20, batch_size=4, prompt_length_buckets=(16,),
      max_cache_segments=2)
  sampler = sampling.Sampler(env.model, env.params,
                             tokenizer=env.tokenizer)
  results = sampler.sample_all(prompts, settings, show_progress=False)
  assert sampler.num_compiled_programs == 2  # One prefill, one decode.
  # New params (next round) reuse the compiled programs.
  next_round = sampler.with_params(jax.tree.map(lambda x: x * 1.5, env.params))
  changed = next_round.sample_all(prompts, settings, show_progress=False)
  assert next_round.num_compiled_programs == 2
  assert [r.tokens.tolist() for r in changed] != [
      r.tokens.tolist() for r in results]
  references = _greedy_without_cache(
      env.model, env.params, prompts, settings.max_new_tokens,
      settings.eos_token_ids, buffer_length=16 + settings.max_new_tokens)
  for result, (expected, expected_logprob) in zip(results, references):
    assert result.tokens.tolist() == expected, result.problem_index
    assert result.num_generated_tokens == len(expected)
    assert result.logprob_sum == pytest.approx(expected_logprob, abs=1e-3)
    assert result.token_logprobs.shape == (len(expected),)
    if expected[-1] not in settings.eos_token_ids:
      assert result.finish_reason == 'length'
      assert result.num_generated_tokens == settings.max_new_tokens


# Shared by the tests below (one compiled program pair for all of them).
_TEXTS = ('the cat sat on', 'question: what is 5 + 6', 'apples left',
          'she has 3')
_GREEDY_12 = sampling.SamplingSettings(
    max_new_tokens=12, batch_size=4, prompt_length_buckets=(16,),
    max_cache_segments=1)


def test_greedy_equals_gemma_sampler(env):
  results = env.sampler.sample_all(_TEXTS, _GREEDY_12, show_progress=False)
  peer = gm.text.Sampler(model=env.model.module, params=env.params,
                         tokenizer=env.tokenizer, cache_length=32,
                         max_out_length=_GREEDY_12.max_new_tokens,
                         pad_length=None)
  out = peer.sample(list(_TEXTS), max_new_tokens=_GREEDY_12.max_new_tokens,
                    return_state=True)
  expected = np.asarray(out.state.predicted_tokens)
  assert len(results) == len(_TEXTS)
  for result in results:
    row = expected[result.problem_index]
    count = result.num_generated_tokens
    assert result.tokens.tolist() == row[:count].tolist()
    assert not row[count:].any()  # gm zeroes tokens after its end token.


def test_eos_or_stop_token_at_first_step(env):
  greedy = env.sampler.sample_all(_TEXTS, _GREEDY_12, show_progress=False)
  first_token = int(greedy[0].tokens[0])

  as_eos = env.sampler.sample_all(
      _TEXTS, dataclasses.replace(_GREEDY_12, eos_token_ids=(first_token,)),
      show_progress=False)
  assert as_eos[0].tokens.tolist() == [first_token]
  assert as_eos[0].finish_reason == 'eos'
  assert as_eos[0].num_generated_tokens == 1
  assert as_eos[0].text == ''
  assert as_eos[0].logprob_sum == pytest.approx(
      float(greedy[0].token_logprobs[0]), abs=1e-5)
  for before, after in zip(greedy[1:], as_eos[1:]):
    # The other rows run on, unchanged, up to their own end.
    tokens = before.tokens.tolist()
    end = tokens.index(first_token) + 1 if first_token in tokens else None
    assert after.tokens.tolist() == tokens[:end]
  assert any(r.num_generated_tokens == 12 for r in as_eos)

  as_stop = env.sampler.sample_all(
      _TEXTS, dataclasses.replace(_GREEDY_12, eos_token_ids=(),
                                  stop_token_ids=(first_token,)),
      show_progress=False)
  assert as_stop[0].tokens.tolist() == [first_token]
  assert as_stop[0].finish_reason == 'stop'


def _split_stop_string(tokenizer, tokens):
  """A 2-char stop string whose first occurrence spans tokens k-1 and k."""
  processor = tokenizer._sp  # pylint: disable=protected-access
  token_bytes = sampling_utils.sentencepiece_token_bytes(processor)
  def plain(token):  # A token that decodes to itself, on its own.
    data = token_bytes[token]
    try:
      return bool(data) and data.decode('utf-8') == tokenizer.decode([token])
    except UnicodeDecodeError:
      return False
  for k in range(1, len(tokens)):
    if not (plain(tokens[k - 1]) and plain(tokens[k])):
      continue
    before = tokenizer.decode(tokens[:k])
    after = tokenizer.decode(tokens[:k + 1])
    stop = before[-1] + after[len(before)]
    if stop not in before and after.find(stop) == len(before) - 1:
      return k, stop, before
  return None


def test_stop_string_split_across_two_tokens_and_max_new_tokens(env):
  greedy = env.sampler.sample_all(_TEXTS, _GREEDY_12, show_progress=False)
  for row in greedy:
    if set(row.tokens.tolist()) & set(_GREEDY_12.eos_token_ids):
      assert row.finish_reason == 'eos'
    else:
      assert row.finish_reason == 'length'
      assert row.num_generated_tokens == 12
      assert row.text == env.tokenizer.decode(row.tokens.tolist())
  for row in greedy:
    found = _split_stop_string(env.tokenizer, row.tokens.tolist())
    if found:
      break
  assert found, 'no two consecutive plain tokens in the greedy outputs'
  k, stop, text_before = found
  stopped = env.sampler.sample_all(
      _TEXTS, dataclasses.replace(_GREEDY_12, stop_strings=('<never>', stop)),
      show_progress=False)
  result = stopped[row.problem_index]
  assert result.tokens.tolist() == row.tokens[:k + 1].tolist()
  assert result.finish_reason == 'stop'
  assert result.text == text_before[:-1]  # Cut before the stop string.


_SAMPLED_8 = sampling.SamplingSettings(
    num_samples_per_problem=8, max_new_tokens=8, temperature=1.0, top_k=50,
    top_p=0.95, batch_size=8, prompt_length_buckets=(16,), seed=7,
    max_cache_segments=1)
_PROBLEM_IDS = ('gsm8k/0', 'gsm8k/1', 'gsm8k/2', 'gsm8k/3')


def _sampled_prompts(vocab_size: int) -> list[list[int]]:
  return _token_prompts(vocab_size, [3, 6, 10, 4], seed=2)


def test_sampled_traces_depend_only_on_seed_problem_and_sample(env):
  prompts = _sampled_prompts(env.model.config.num_embed)
  ids = _PROBLEM_IDS
  # 8 rows per batch: one problem per batch, streamed batch by batch.
  batches = list(env.sampler.sample(prompts[:3], _SAMPLED_8,
                                    problem_ids=ids[:3], show_progress=False))
  assert len(batches) == 3
  eight = {(r.problem_id, r.sample_index): r for b in batches for r in b}
  # One sample each, another order, another problem in the batch, all
  # problems in one batch: sample 0 is the same trace.
  order = [2, 3, 0, 1]
  single = env.sampler.sample_all(
      [prompts[i] for i in order],
      dataclasses.replace(_SAMPLED_8, num_samples_per_problem=1),
      problem_ids=[ids[i] for i in order], show_progress=False)
  assert len(single) == 4
  for result in single:
    if result.problem_id != 'gsm8k/3':
      expected = eight[(result.problem_id, 0)]
      assert result.tokens.tolist() == expected.tokens.tolist()
      assert result.logprob_sum == pytest.approx(expected.logprob_sum,
                                                 abs=1e-4)
  # Samples differ from each other, and with the seed.
  for problem_id in ids[:3]:
    traces = {tuple(eight[(problem_id, j)].tokens.tolist()) for j in range(8)}
    assert len(traces) > 1
  reseeded = env.sampler.sample_all(
      prompts[:3], dataclasses.replace(_SAMPLED_8, seed=8),
      problem_ids=ids[:3], show_progress=False)
  assert any(r.tokens.tolist() != eight[(r.problem_id, r.sample_index)]
             .tokens.tolist() for r in reseeded)


def _mesh_2x2x2(devices):
  """Rows over data x fsdp (4), heads / kv heads / mlp / vocab over tensor."""
  config = config_lib.base_config()
  config.mesh.shape = (2, 2, 2)
  return sharding_lib.make_mesh(config.mesh, devices)


# Run where fewer than 8 devices exist in this process (tests/conftest.py
# normally gives the session 8 simulated CPU devices).
_DEVICE_SCRIPT = textwrap.dedent("""
    import json, sys
    sys.path[:0] = sys.argv[1:3]
    from tpt_jax import sampling
    from tpt_jax import tokenizer as tokenizer_lib
    import jax
    import test_sampling
    assert jax.device_count() == 8, jax.devices()
    tokenizer = tokenizer_lib.load_tokenizer(sys.argv[3])
    model = test_sampling._build_model(tokenizer.vocab_size)
    sampler = sampling.Sampler(
        model, test_sampling._random_params(model), tokenizer=tokenizer,
        mesh=test_sampling._mesh_2x2x2(jax.devices()))
    outputs = {}
    for name, (prompts, problem_ids, fields) in json.loads(
        sys.argv[4]).items():
      results = sampler.sample_all(
          prompts, sampling.SamplingSettings(**fields),
          problem_ids=problem_ids, show_progress=False)
      outputs[name] = [r.tokens.tolist() for r in results]
    print(json.dumps(outputs))
""")


def _tokens_on_8_devices(env, runs) -> dict[str, list[list[int]]]:
  if jax.device_count() >= 8:
    sampler = sampling.Sampler(env.model, env.params, tokenizer=env.tokenizer,
                               mesh=_mesh_2x2x2(jax.devices()[:8]))
    return {name: [r.tokens.tolist() for r in sampler.sample_all(
        prompts, settings, problem_ids=ids, show_progress=False)]
            for name, (prompts, ids, settings) in runs.items()}
  arguments = {name: (prompts, ids, dataclasses.asdict(settings))
               for name, (prompts, ids, settings) in runs.items()}
  environ = dict(os.environ,
                 XLA_FLAGS='--xla_force_host_platform_device_count=8',
                 JAX_PLATFORMS='cpu')
  completed = subprocess.run(
      [sys.executable, '-c', _DEVICE_SCRIPT, _REPO_ROOT,
       os.path.dirname(os.path.abspath(__file__)), env.tokenizer_path,
       json.dumps(arguments)],
      env=environ, capture_output=True, text=True, timeout=300, check=False)
  assert completed.returncode == 0, completed.stderr[-3000:]
  return json.loads(completed.stdout.strip().splitlines()[-1])


def test_output_independent_of_device_count(env):
  runs = {
      'greedy': (list(_TEXTS), None, _GREEDY_12),
      'sampled': (_sampled_prompts(env.model.config.num_embed)[:3],
                  list(_PROBLEM_IDS[:3]), _SAMPLED_8),
  }
  on_8_devices = _tokens_on_8_devices(env, runs)
  for name, (prompts, ids, settings) in runs.items():
    on_1_device = env.sampler.sample_all(prompts, settings, problem_ids=ids,
                                         show_progress=False)
    assert [r.tokens.tolist() for r in on_1_device] == on_8_devices[name], (
        name)


def test_bad_input_raises_value_error_naming_it(env):
  prompt = [[tokenizer_lib.BOS_ID, 200]]
  settings = sampling.SamplingSettings(prompt_length_buckets=(8,))
  for bad, name in [
      (dict(max_new_tokens=0), 'max_new_tokens'),
      (dict(top_p=0.0), 'top_p'),
      (dict(top_p=1.5), 'top_p'),
      (dict(temperature=-1.0), 'temperature'),
      (dict(num_samples_per_problem=0), 'num_samples_per_problem'),
      (dict(top_k=-1), 'top_k'),
      (dict(batch_size=0), 'batch_size'),
      (dict(prompt_length_buckets=()), 'prompt_length_buckets'),
      (dict(stop_strings=('',)), 'stop_strings'),
  ]:
    with pytest.raises(ValueError, match=name):
      sampling.SamplingSettings(**bad)
  sampler = env.sampler
  with pytest.raises(ValueError, match='prompts is empty'):
    sampler.sample([], settings)
  with pytest.raises(ValueError, match=r'prompts\[1\].*largest prompt length'):
    sampler.sample([[2], [2] * 9], settings)
  with pytest.raises(ValueError, match=r'prompts\[0\] is empty'):
    sampler.sample([[]], settings)
  with pytest.raises(ValueError, match=r'prompts\[0\].*outside'):
    sampler.sample([[2, 0, 5]], settings)
  with pytest.raises(ValueError, match='problem_ids'):
    sampler.sample(prompt * 2, settings, problem_ids=[3, 3])
  with pytest.raises(ValueError, match='problem_ids'):
    sampler.sample(prompt, settings, problem_ids=[1, 2])
  with pytest.raises(ValueError, match='top_k'):
    sampler.sample(prompt, dataclasses.replace(settings, top_k=10**6))
  with pytest.raises(ValueError, match='problem id'):
    sampler.sample(prompt, settings, problem_ids=[-1])
  no_tokenizer = sampling.Sampler(env.model, env.params)
  with pytest.raises(ValueError, match='tokenizer'):
    no_tokenizer.sample(['text'], settings)
  with pytest.raises(ValueError, match='stop_strings'):
    no_tokenizer.sample(prompt, dataclasses.replace(settings,
                                                    stop_strings=('x',)))


def test_settings_from_config():
  config = sampling.default_config()
  config.top_p = 0.9
  config.stop_strings = ('\n\n',)
  settings = sampling.SamplingSettings.from_config(config, seed=5)
  assert settings.top_p == 0.9
  assert settings.stop_strings == ('\n\n',)
  assert settings.seed == 5 + config.seed_offset
  assert settings.num_samples_per_problem == config.num_samples_per_problem
  config.top_p = 0.0
  with pytest.raises(ValueError, match='top_p'):
    sampling.SamplingSettings.from_config(config, seed=0)


def test_plan_batches_groups_by_bucket_and_keeps_samples_together():
  lengths = [30, 3, 17, 5, 60, 8]
  plans = sampling_utils.plan_batches(
      lengths, num_samples=3, batch_size=8, buckets=(8, 32, 64),
      row_multiple=2)
  assert {len(p.row_problem) for p in plans} == {8}
  rows = [(int(p), int(s)) for plan in plans
          for p, s in zip(plan.row_problem, plan.row_sample)
          if p != sampling_utils.PADDING_ROW]
  assert sorted(rows) == [(p, s) for p in range(6) for s in range(3)]
  # Short prompts first (stable within a bucket).
  assert [p for p, s in rows if s == 0] == [1, 3, 5, 0, 2, 4]
  for plan in plans:
    active = plan.row_problem != sampling_utils.PADDING_ROW
    # Every row copies the prefill of its own problem.
    np.testing.assert_array_equal(
        plan.prefill_problem[plan.row_prefill_slot][active],
        plan.row_problem[active])
    assert plan.prompt_bucket == max(
        sampling_utils.bucket_for_length(lengths[p], (8, 32, 64))
        for p in plan.row_problem[active])
    assert len(plan.prefill_problem) % 2 == 0
  with pytest.raises(ValueError, match='largest prompt length bucket'):
    sampling_utils.plan_batches([100], num_samples=1, batch_size=4,
                                buckets=(8, 64))


def test_stop_string_tables_match_across_tokens():
  token_bytes = [b'', b'xa', b'b', b'aab', b'a', b'c', b'\xe2\x81', b'\x87']
  table, match_state = sampling_utils.stop_string_tables(
      ['ab', 'aac', '\u2047'], token_bytes, vocab_size=9)

  def matches(tokens):
    states = np.zeros(3, np.int64)
    for token in tokens:
      states = table[np.arange(3), states, token]
    return (states == match_state).tolist()

  assert matches([1, 2]) == [True, False, False]  # 'xa' + 'b'.
  assert matches([3]) == [True, False, False]  # Inside one token.
  assert matches([4, 4, 5]) == [False, True, False]  # 'a' 'a' 'c'.
  assert matches([4, 1, 5]) == [False, False, False]  # 'axac'.
  assert matches([4, 4, 2]) == [True, False, False]  # 'aab'.
  assert matches([4, 4, 4, 5]) == [False, True, False]  # KMP fallback.
  assert matches([6, 7]) == [False, False, True]  # One char, two tokens.
  assert matches([0, 8, 2]) == [False, False, False]  # 8: no text.
