"""Mesh and sharding rules, on 8 simulated CPU devices (see conftest.py)."""

import re

from absl import logging
import jax
import numpy as np
import pytest

from tpt_jax import config as config_lib
from tpt_jax import models
from tpt_jax import sharding


def _config(mesh_shape=(2, 2, 2)):
  config = config_lib.base_config()
  config.model.variant = 'gemma2_tiny'
  config.model.param_dtype = 'float32'
  config.model.compute_dtype = 'float32'
  config.mesh.shape = mesh_shape
  return config


def test_eight_devices_are_simulated():
  assert jax.device_count() == 8


@pytest.mark.parametrize('shape, expected', [
    ((1, -1, 1), (1, 8, 1)), ((2, -1, 2), (2, 2, 2)), ((-1, 1, 4), (2, 1, 4)),
    ((8, 1, 1), (8, 1, 1))])
def test_minus_one_fills_the_remaining_devices(shape, expected):
  mesh = sharding.make_mesh(_config(shape).mesh)
  assert tuple(mesh.shape.values()) == expected
  assert mesh.axis_names == ('data', 'fsdp', 'tensor')


@pytest.mark.parametrize('shape, message', [
    ((3, -1, 1), '8 devices do not divide'),
    ((2, 2, 1), 'needs 4 devices; there are 8')])
def test_bad_mesh_shape_is_named(shape, message):
  with pytest.raises(ValueError, match=re.escape(message)):
    sharding.make_mesh(_config(shape).mesh)



def test_the_sampling_mesh_is_its_own_shape_over_the_same_devices():
  config = _config((1, -1, 1))
  assert sharding.make_sampling_mesh(config.mesh).shape == (
      sharding.make_mesh(config.mesh).shape)  # Unset: the training mesh.
  config.mesh.sampling_shape = (-1, 1, 2)
  mesh = sharding.make_sampling_mesh(config.mesh)
  assert tuple(mesh.shape.values()) == (4, 1, 2)
  assert set(mesh.devices.flat) == set(jax.devices())
  config.mesh.sampling_shape = (3, -1, 1)
  with pytest.raises(ValueError, match=re.escape(
      'config.mesh.sampling_shape=(3, -1, 1): 8 devices do not divide')):
    sharding.make_sampling_mesh(config.mesh)


def test_every_param_gets_the_spec_of_the_table():
  config = _config((2, 2, 2))
  model = models.build_model(config.model)
  mesh = sharding.make_mesh(config.mesh)
  abstract = model.abstract_params()
  shardings = sharding.param_shardings(abstract, mesh,
                                       transpose_gating_einsum=False)
  params = jax.device_put(model.init_params(jax.random.key(0)), shardings)
  expected = {
      'embedder/input_embedding': ('tensor', 'fsdp'),
      'layer_0/attn/q_einsum/w': ('tensor', 'fsdp', None),
      'layer_0/attn/kv_einsum/w': (None, 'tensor', 'fsdp', None),
      'layer_0/attn/attn_vec_einsum/w': ('tensor', None, 'fsdp'),
      'layer_0/mlp/gating_einsum': (None, 'fsdp', 'tensor'),
      'layer_0/mlp/linear': ('tensor', 'fsdp'),
      'layer_0/pre_attention_norm/scale': (None,),
      'final_norm/scale': (None,),
  }
  flat = {sharding.path_to_str(path): leaf for path, leaf in
          jax.tree_util.tree_flatten_with_path(params)[0]}
  for name, spec in expected.items():
    assert tuple(flat[name].sharding.spec) == spec, name
  # Every leaf, not only those above, has the table's spec.
  for name, leaf in flat.items():
    axes = sharding.param_logical_axes(name, transpose_gating_einsum=False)
    want = sharding.logical_to_spec(axes, leaf.shape, mesh, name=name)
    assert leaf.sharding.spec == want, name
    # And its shards really are split: each device holds 1/k of the array.
    num_shards = np.prod([mesh.shape[a] for a in want if a is not None])
    assert leaf.addressable_shards[0].data.size == leaf.size // num_shards


def test_transposed_gating_einsum_shards_embed_over_fsdp():
  axes = sharding.param_logical_axes('layer_3/mlp/gating_einsum',
                                     transpose_gating_einsum=True)
  assert axes == ('qkv', 'mlp', 'embed')


def test_indivisible_dimension_is_replicated_with_a_warning(monkeypatch):
  mesh = sharding.make_mesh(_config((1, 8, 1)).mesh)
  warnings = []
  monkeypatch.setattr(logging, 'warning',
                      lambda msg, *args: warnings.append(msg % args))
  spec = sharding.logical_to_spec(('vocab', 'embed'), (10, 12), mesh,
                                  name='embedder/input_embedding')
  assert spec == jax.sharding.PartitionSpec(None, None)
  assert any('embedder/input_embedding' in w and 'replicating' in w
             for w in warnings)


def test_unknown_param_path_is_an_error():
  with pytest.raises(ValueError, match="layer_0/new_thing/w"):
    sharding.param_logical_axes('layer_0/new_thing/w',
                                transpose_gating_einsum=False)


@pytest.mark.parametrize('mesh_shape', [(2, 2, 2), (1, 8, 1), (1, 2, 4)])
def test_sharded_forward_equals_unsharded(mesh_shape):
  config = _config(mesh_shape)
  model = models.build_model(config.model)
  params = model.init_params(jax.random.key(0))
  tokens = np.random.RandomState(0).randint(3, 500, size=(8, 24))
  reference = model.apply(params, tokens).logits

  mesh = sharding.make_mesh(config.mesh)
  shardings = sharding.param_shardings(model.abstract_params(), mesh,
                                       transpose_gating_einsum=False)
  sharded_params = jax.device_put(params, shardings)
  sharded_tokens = jax.device_put(tokens, sharding.batch_sharding(mesh))
  logits = jax.jit(model.apply)(sharded_params, sharded_tokens).logits
  np.testing.assert_allclose(np.asarray(logits), np.asarray(reference),
                             atol=2e-5, rtol=1e-5)


def test_cache_shardings_follow_the_rules():
  config = _config((2, 1, 4))
  model = models.build_model(config.model)
  mesh = sharding.make_mesh(config.mesh)
  cache = jax.eval_shape(lambda: model.config.init_cache(
      batch_size=4, dtype=np.float32, cache_length=16))
  shardings = sharding.cache_shardings(cache, mesh)
  # kv_heads=2 does not divide tensor=4: replicated; batch over data.
  assert tuple(shardings['layer_0']['k'].spec) == ('data', None, None, None)
  assert tuple(shardings['layer_0']['end_index'].spec) == ('data',)
  config8 = _config((1, 4, 2))
  mesh8 = sharding.make_mesh(config8.mesh)
  shardings8 = sharding.cache_shardings(cache, mesh8)
  assert tuple(shardings8['layer_1']['v'].spec) == ('fsdp', None, 'tensor',
                                                    None)
