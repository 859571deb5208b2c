"""The GPT-2 family: parity with `transformers` (HF Conv1D layout), both HF
namings, errors, and the published sizes."""

import json

import jax
import numpy as np
import pytest
from safetensors import numpy as safetensors_numpy

from tpt_jax import checkpoints
from tpt_jax import config as config_lib
from tpt_jax import gpt2
from tpt_jax import models
from tpt_jax import sharding

torch = pytest.importorskip('torch')
transformers = pytest.importorskip('transformers')

_TOKENS = (np.arange(2, 42)[None] * 7 % 500 + 3).astype(np.int32)


def _config(mesh_shape=(2, 2, 2)):
  config = config_lib.base_config()
  config.model.variant = 'gpt2_tiny'
  config.model.param_dtype = 'float32'
  config.model.compute_dtype = 'float32'
  config.mesh.shape = mesh_shape
  return config


@pytest.fixture(scope='module')
def hf_checkpoint(tmp_path_factory):
  """A tiny random GPT-2 (f32, eager) saved in shards, and its logits."""
  path = tmp_path_factory.mktemp('gpt2')
  hf_config = transformers.GPT2Config(
      vocab_size=512, n_positions=128, n_embd=64, n_layer=2, n_head=4,
      attn_implementation='eager', bos_token_id=2, eos_token_id=1)
  torch.manual_seed(0)
  model = transformers.GPT2LMHeadModel(hf_config).eval()
  with torch.no_grad():  # Random norms and biases, so a swap would show.
    for name, param in model.named_parameters():
      if 'ln' in name or name.endswith('bias'):
        param.normal_(0.5 if name.endswith('weight') else 0.0, 0.3)
  model.save_pretrained(path, safe_serialization=True, max_shard_size='100KB')
  with torch.no_grad():
    expected = model(torch.tensor(_TOKENS, dtype=torch.long)).logits.numpy()
  return path, expected


def _load(path, mesh_shape=(2, 2, 2), devices=None):
  config = _config(mesh_shape)
  config.checkpoint.path = str(path)
  mesh = sharding.make_mesh(config.mesh, devices)
  return checkpoints.model_and_params(config, mesh)


def test_logits_match_transformers_sharded_and_not(hf_checkpoint):
  path, expected = hf_checkpoint
  assert len(list(path.glob('*.safetensors'))) > 1
  model, params = _load(path)
  assert model.config == gpt2.GPT2Config(num_embed=512, embed_dim=64,
                                         num_heads=4, num_layers=2,
                                         max_positions=128, bos_token_id=2,
                                         eos_token_id=1)
  logits = np.asarray(jax.jit(model.apply)(params, _TOKENS).logits)
  np.testing.assert_allclose(logits, expected, atol=1e-4, rtol=0)
  single_model, single = _load(path, (1, 1, 1), jax.devices()[:1])
  unsharded = np.asarray(jax.jit(single_model.apply)(single, _TOKENS).logits)
  np.testing.assert_allclose(logits, unsharded, atol=1e-5, rtol=0)


def test_hub_naming_without_transformer_prefix_loads(hf_checkpoint, tmp_path):
  """The hub's `gpt2` stores `h.0.attn.c_attn.weight` (no 'transformer.')
  and the old causal-mask buffers `h.0.attn.bias`."""
  path, expected = hf_checkpoint
  tensors = {}
  for file in path.glob('*.safetensors'):
    tensors.update(safetensors_numpy.load_file(file))
  hub = {name.removeprefix('transformer.'): array
         for name, array in tensors.items()}
  hub['h.0.attn.bias'] = np.tril(np.ones((1, 1, 128, 128), np.float32))
  safetensors_numpy.save_file(hub, tmp_path / 'model.safetensors')
  (tmp_path / 'config.json').write_text((path / 'config.json').read_text())
  model, params = _load(tmp_path, (1, 1, 1), jax.devices()[:1])
  logits = np.asarray(jax.jit(model.apply)(params, _TOKENS).logits)
  np.testing.assert_allclose(logits, expected, atol=1e-4, rtol=0)


def test_missing_and_misshaped_tensors_are_listed(hf_checkpoint, tmp_path):
  path, _ = hf_checkpoint
  tensors = {}
  for file in path.glob('*.safetensors'):
    tensors.update(safetensors_numpy.load_file(file))
  del tensors['transformer.h.1.mlp.c_fc.bias']
  tensors['transformer.wpe.weight'] = np.zeros((64, 64), np.float32)
  safetensors_numpy.save_file(tensors, tmp_path / 'model.safetensors')
  (tmp_path / 'config.json').write_text((path / 'config.json').read_text())
  with pytest.raises(checkpoints.CheckpointMismatchError) as error:
    _load(tmp_path, (1, 1, 1), jax.devices()[:1])
  message = str(error.value)
  assert ('missing tensor transformer.h.1.mlp.c_fc.bias: the model expects '
          'shape (256,)') in message
  assert ('tensor transformer.wpe.weight has shape (64, 64) in the '
          'checkpoint but the model expects (128, 64)') in message


def test_architecture_round_trips_through_config_json(hf_checkpoint):
  path, _ = hf_checkpoint
  architecture = checkpoints.read_hf_config(path)
  assert checkpoints.transformer_config_from_hf(
      checkpoints.hf_config_json(architecture)) == architecture
  config_json = json.loads((path / 'config.json').read_text())
  config_json['n_inner'] = 100
  with pytest.raises(ValueError, match=r'n_inner=100; GPT-2 \(and we\) use '
                     r'4 \* n_embd = 256'):
    checkpoints.transformer_config_from_hf(config_json)


@pytest.mark.parametrize('variant, published', [
    ('gpt2', 124.4e6), ('gpt2_medium', 354.8e6), ('gpt2_large', 774.0e6)])
def test_param_counts_match_the_published_sizes(variant, published):
  config = _config()
  config.model.variant = variant
  count = models.count_params(models.build_model(config.model)
                              .abstract_params())
  assert abs(count - published) / published < 0.002, count
