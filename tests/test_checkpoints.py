"""Checkpoints in: orbax (flat and nested), Hugging Face safetensors."""

import json
import pathlib
import subprocess
import sys

import jax
import numpy as np
import pytest

from tpt_jax import checkpoints
from tpt_jax import config as config_lib
from tpt_jax import models
from tpt_jax import sharding
from gemma.gm.ckpts import _checkpoint as gemma_checkpoint  # pylint: disable=g-bad-import-order
import orbax.checkpoint as ocp  # pylint: disable=g-bad-import-order

_REPO = pathlib.Path(__file__).resolve().parents[1]
_TOKENS = np.array([[2, 17, 301, 44, 5, 99, 250, 8, 13, 400, 21, 7]])


def _config(mesh_shape=(2, 2, 2), param_dtype='float32'):
  config = config_lib.base_config()
  config.model.variant = 'gemma2_tiny'
  config.model.param_dtype = param_dtype
  config.model.compute_dtype = 'float32'
  config.mesh.shape = mesh_shape
  return config


@pytest.fixture(scope='module')
def saved(tmp_path_factory):
  """One set of random weights, written in every supported layout."""
  root = tmp_path_factory.mktemp('ckpts')
  config = _config()
  model = models.build_model(config.model)
  params = model.init_params(jax.random.key(7))
  checkpoints.save_orbax(params, root / 'nested')
  checkpointer = ocp.StandardCheckpointer()
  # The layout of the checkpoints Google released: flat
  # `transformer/layer_0/attn/q_einsum` keys.
  flat = gemma_checkpoint._nested_to_flat(params)  # pylint: disable=protected-access
  assert any(k.startswith('transformer/layer_0/') for k in flat)
  checkpointer.save((root / 'flat').resolve(), flat)
  checkpointer.wait_until_finished()
  checkpoints.save_safetensors(params, model.config, root / 'hf_sharded',
                               max_shard_bytes=150_000)
  checkpoints.save_safetensors(params, model.config, root / 'hf_single')
  reference = np.asarray(model.apply(params, _TOKENS).logits)
  return root, params, reference


@pytest.mark.parametrize('layout', ['nested', 'flat', 'hf_sharded',
                                    'hf_single'])
def test_every_layout_loads_into_the_mesh_with_equal_logits(saved, layout):
  root, params, reference = saved
  config = _config()
  config.checkpoint.path = str(root / layout)
  mesh = sharding.make_mesh(config.mesh)
  model, loaded = checkpoints.model_and_params(config, mesh)
  # Bit-equal weights...
  jax.tree.map(np.testing.assert_array_equal, jax.device_get(loaded), params)
  # ...each placed with the sharding the rules table gives.
  expected = sharding.param_shardings(model.abstract_params(), mesh,
                                      transpose_gating_einsum=False)
  jax.tree.map(lambda leaf, want: _assert_same_sharding(leaf, want),
               loaded, expected)
  logits = jax.jit(model.apply)(loaded, _TOKENS).logits
  np.testing.assert_allclose(np.asarray(logits), reference, atol=1e-5)


def _assert_same_sharding(leaf, want):
  assert leaf.sharding.spec == want.spec
  assert leaf.sharding.mesh.shape == want.mesh.shape


def test_hf_sharded_directory_has_several_files(saved):
  root = saved[0]
  assert len(list((root / 'hf_sharded').glob('*.safetensors'))) > 1


@pytest.mark.parametrize('layout', ['flat', 'hf_sharded'])
def test_loading_casts_to_the_configured_dtype(saved, layout):
  config = _config(param_dtype='bfloat16')
  config.checkpoint.path = str(saved[0] / layout)
  mesh = sharding.make_mesh(config.mesh)
  _, loaded = checkpoints.model_and_params(config, mesh)
  assert {x.dtype for x in jax.tree.leaves(loaded)} == {
      np.dtype('bfloat16')}


def test_hf_architecture_comes_from_config_json(saved, tmp_path):
  hf = saved[0] / 'hf_single'
  config_json = json.loads((hf / 'config.json').read_text())
  architecture = checkpoints.transformer_config_from_hf(config_json)
  tiny = models.build_model(_config().model).config
  assert architecture == tiny


def test_missing_extra_and_misshaped_tensors_are_named(saved, tmp_path):
  root, params, _ = saved
  broken = jax.tree.map(np.asarray, params)
  del broken['layer_1']['mlp']['linear']
  broken['layer_0']['attn']['q_einsum']['w'] = np.zeros((4, 64, 8),
                                                        np.float32)
  broken['layer_0']['attn']['surprise'] = np.zeros((3,), np.float32)
  checkpoints.save_orbax(broken, tmp_path / 'broken')
  config = _config()
  config.checkpoint.path = str(tmp_path / 'broken')
  mesh = sharding.make_mesh(config.mesh)
  with pytest.raises(checkpoints.CheckpointMismatchError) as error:
    checkpoints.model_and_params(config, mesh)
  message = str(error.value)
  assert 'missing tensor layer_1/mlp/linear' in message
  assert '(128, 64)' in message
  assert ('tensor layer_0/attn/q_einsum/w has shape (4, 64, 8) in the '
          'checkpoint but the model expects (4, 64, 16)') in message
  assert 'extra tensor layer_0/attn/surprise' in message


def test_hf_misshaped_tensor_is_named(saved, tmp_path):
  root, params, _ = saved
  model = models.build_model(_config().model)
  # Write a checkpoint of a wider MLP, then load it as the tiny model.
  import dataclasses  # pylint: disable=g-import-not-at-top
  wider = dataclasses.replace(model.config, hidden_dim=256)
  wide_model = models.build_model(_config().model, wider)
  checkpoints.save_safetensors(wide_model.init_params(jax.random.key(0)),
                               wider, tmp_path / 'wide')
  mesh = sharding.make_mesh(_config().mesh)
  with pytest.raises(checkpoints.CheckpointMismatchError,
                     match=r'model\.layers\.0\.mlp\.down_proj\.weight has '
                     r'shape \(64, 256\) in the checkpoint but the model '
                     r'expects \(64, 128\)'):
    checkpoints.load_safetensors(tmp_path / 'wide', model, mesh)


def test_not_a_checkpoint_is_named(tmp_path):
  with pytest.raises(ValueError, match='neither an orbax checkpoint'):
    checkpoints.detect_format(tmp_path)
  with pytest.raises(FileNotFoundError, match='nowhere'):
    checkpoints.detect_format(tmp_path / 'nowhere')


def test_check_logits_script_hf_equals_orbax(saved, tmp_path):
  """The user-facing check: HF and orbax copies give the same logits."""
  root = saved[0]
  outputs = {}
  for layout in ('hf_sharded', 'flat'):
    output = tmp_path / f'{layout}.npy'
    result = _check_logits(root / layout, '2,65,123', output)
    assert result.returncode == 0, result.stderr
    outputs[layout] = np.load(output)
  assert outputs['flat'].shape == (3, models.DEFAULT_TOY_VOCAB_SIZE)
  assert outputs['flat'].dtype == np.float32
  np.testing.assert_allclose(outputs['hf_sharded'], outputs['flat'],
                             atol=1e-6)


def test_check_logits_names_out_of_vocabulary_tokens(saved, tmp_path):
  result = _check_logits(saved[0] / 'flat', '2,651', tmp_path / 'x.npy')
  assert result.returncode != 0
  assert '[651] are outside the vocabulary [0, 512)' in result.stderr
  assert not (tmp_path / 'x.npy').exists()


def _check_logits(checkpoint, tokens, output):
  return subprocess.run(
      [sys.executable, str(_REPO / 'scripts' / 'check_logits.py'),
       f'--checkpoint={checkpoint}',
       f'--config={_REPO / "configs" / "tiny.py"}',
       f'--tokens={tokens}', f'--output={output}'],
      cwd=output.parent, capture_output=True, text=True, check=False,
      env={'PYTHONPATH': str(_REPO), 'PATH': '/usr/bin:/bin',
           'JAX_PLATFORMS': 'cpu'})


def test_hf_path_matches_the_transformers_reference(tmp_path):
  """Our HF mapping gives the logits of transformers' own Gemma2 code."""
  torch = pytest.importorskip('torch')
  transformers = pytest.importorskip('transformers')
  hf_config = transformers.Gemma2Config(
      vocab_size=512, hidden_size=64, intermediate_size=128,
      num_hidden_layers=4, num_attention_heads=4, num_key_value_heads=2,
      head_dim=16, query_pre_attn_scalar=16, sliding_window=8,
      final_logit_softcapping=30.0, attn_logit_softcapping=50.0,
      hidden_activation='gelu_pytorch_tanh', attn_implementation='eager',
      pad_token_id=0, eos_token_id=1, bos_token_id=2)
  torch.manual_seed(0)
  hf_model = transformers.Gemma2ForCausalLM(hf_config).eval()
  # Random norms too, so a swapped norm would show.
  with torch.no_grad():
    for name, param in hf_model.named_parameters():
      if 'norm' in name:
        param.normal_(0.0, 0.5)
  hf_model.save_pretrained(tmp_path / 'hf', safe_serialization=True)
  tokens = np.arange(2, 40)[None] * 7 % 500 + 3  # Longer than the window.
  with torch.no_grad():
    expected = hf_model(torch.tensor(tokens)).logits.numpy()

  config = _config()
  config.checkpoint.path = str(tmp_path / 'hf')
  mesh = sharding.make_mesh(config.mesh)
  model, params = checkpoints.model_and_params(config, mesh)
  logits = np.asarray(jax.jit(model.apply)(params, tokens).logits)
  np.testing.assert_allclose(logits, expected, atol=2e-4, rtol=1e-4)
