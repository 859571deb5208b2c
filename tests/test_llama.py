"""The Llama-3 family: parity with `transformers`, sharding, checkpoints,
published sizes, and the sampler and trainer running it."""

import dataclasses
import json
import re

import jax
import numpy as np
import pytest
from safetensors import numpy as safetensors_numpy

from tpt_jax import checkpoints
from tpt_jax import config as config_lib
from tpt_jax import llama
from tpt_jax import models
from tpt_jax import sharding

torch = pytest.importorskip('torch')
transformers = pytest.importorskip('transformers')

# Longer than the tiny rope scaling's original context (32 positions).
_TOKENS = (np.arange(2, 50)[None] * 7 % 500 + 3).astype(np.int32)


def _config(mesh_shape=(2, 2, 2)):
  config = config_lib.base_config()
  config.model.variant = 'llama3_tiny'
  config.model.param_dtype = 'float32'
  config.model.compute_dtype = 'float32'
  config.mesh.shape = mesh_shape
  return config


def _hf_model(tie_word_embeddings):
  """A tiny random Llama-3.1 (rope scaling, 4 query / 2 kv heads), f32."""
  hf_config = transformers.LlamaConfig(
      vocab_size=512, hidden_size=64, intermediate_size=128,
      num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
      head_dim=16, max_position_embeddings=2048, rms_norm_eps=1e-5,
      rope_theta=10_000.0,
      rope_scaling={'rope_type': 'llama3', 'factor': 8.0,
                    'low_freq_factor': 1.0, 'high_freq_factor': 4.0,
                    'original_max_position_embeddings': 32},
      tie_word_embeddings=tie_word_embeddings, attn_implementation='eager',
      bos_token_id=2, eos_token_id=1)
  torch.manual_seed(0)
  model = transformers.LlamaForCausalLM(hf_config).eval()
  with torch.no_grad():  # Random norms, so a swapped norm would show.
    for name, param in model.named_parameters():
      if 'norm' in name:
        param.normal_(1.0, 0.5)
  return model


@pytest.fixture(scope='module', params=[False, True], ids=['untied', 'tied'])
def hf_checkpoint(request, tmp_path_factory):
  """A HF directory in several safetensors shards, and its logits."""
  path = tmp_path_factory.mktemp('llama')
  model = _hf_model(tie_word_embeddings=request.param)
  model.save_pretrained(path, safe_serialization=True, max_shard_size='100KB')
  with torch.no_grad():
    expected = model(torch.tensor(_TOKENS, dtype=torch.long)).logits.numpy()
  return path, expected


def _load(path, mesh_shape, devices=None):
  config = _config(mesh_shape)
  config.checkpoint.path = str(path)
  mesh = sharding.make_mesh(config.mesh, devices)
  return checkpoints.model_and_params(config, mesh)


def test_logits_match_transformers_sharded_and_not(hf_checkpoint):
  path, expected = hf_checkpoint
  assert len(list(path.glob('*.safetensors'))) > 1
  model, params = _load(path, (2, 2, 2))
  assert isinstance(model.config, llama.LlamaConfig)
  assert model.config.rope_scaling.original_max_position_embeddings == 32
  sharded = np.asarray(jax.jit(model.apply)(params, _TOKENS).logits)
  np.testing.assert_allclose(sharded, expected, atol=1e-4, rtol=0)
  # The FSDP axis really splits the embedding.
  assert tuple(params['embedder']['input_embedding'].sharding.spec) == (
      'tensor', 'fsdp')
  single_model, single = _load(path, (1, 1, 1), jax.devices()[:1])
  unsharded = np.asarray(jax.jit(single_model.apply)(single, _TOKENS).logits)
  np.testing.assert_allclose(sharded, unsharded, atol=1e-5, rtol=0)


def test_rope_scaling_changes_the_logits(hf_checkpoint):
  """The parity above depends on the scaling (so it checks it)."""
  path, expected = hf_checkpoint
  model, params = _load(path, (1, 1, 1), jax.devices()[:1])
  unscaled = models.build_model(
      _config().model, dataclasses.replace(model.config, rope_scaling=None))
  logits = np.asarray(unscaled.apply(params, _TOKENS).logits)
  assert np.abs(logits - expected).max() > 1e-3


def test_missing_and_misshaped_tensors_are_listed(hf_checkpoint, tmp_path):
  path, _ = hf_checkpoint
  tensors = {}
  for file in path.glob('*.safetensors'):
    tensors.update(safetensors_numpy.load_file(file))
  del tensors['model.layers.1.mlp.down_proj.weight']
  tensors['model.layers.0.self_attn.q_proj.weight'] = np.zeros((32, 64),
                                                               np.float32)
  safetensors_numpy.save_file(tensors, tmp_path / 'model.safetensors')
  (tmp_path / 'config.json').write_text((path / 'config.json').read_text())
  with pytest.raises(checkpoints.CheckpointMismatchError) as error:
    _load(tmp_path, (1, 1, 1), jax.devices()[:1])
  message = str(error.value)
  assert '(2 problems)' in message
  assert ('missing tensor model.layers.1.mlp.down_proj.weight: the model '
          'expects shape (64, 128)') in message
  assert ('tensor model.layers.0.self_attn.q_proj.weight has shape (32, 64) '
          'in the checkpoint but the model expects (64, 64)') in message


@pytest.mark.parametrize('variant, published', [
    ('llama3_1_8b', 8.03e9), ('llama3_1_70b', 70.6e9),
    ('llama3_2_1b', 1.24e9), ('llama3_2_3b', 3.21e9)])
def test_param_counts_match_the_published_sizes(variant, published):
  config = _config()
  config.model.variant = variant
  count = models.count_params(models.build_model(config.model)
                              .abstract_params())
  assert abs(count - published) / published < 0.005, count


def test_architecture_round_trips_through_config_json(hf_checkpoint):
  path, _ = hf_checkpoint
  config_json = json.loads((path / 'config.json').read_text())
  architecture = checkpoints.transformer_config_from_hf(config_json)
  again = checkpoints.transformer_config_from_hf(
      checkpoints.hf_config_json(architecture))
  assert again == architecture
  assert architecture == dataclasses.replace(
      models.build_model(_config().model).config,
      tie_word_embeddings=architecture.tie_word_embeddings,
      eos_token_ids=architecture.eos_token_ids)


def test_unsupported_rope_type_is_named():
  with pytest.raises(ValueError, match=re.escape(
      "rope_type='yarn'; only Llama-3.1's 'llama3' scaling")):
    llama.config_from_hf({
        'hidden_size': 64, 'num_attention_heads': 4, 'vocab_size': 512,
        'intermediate_size': 128, 'num_hidden_layers': 2,
        'rope_scaling': {'rope_type': 'yarn', 'factor': 4.0}})
