"""The Gemma2 models are the `gemma` library's, with the configured dtypes."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from tpt_jax import config as config_lib
from tpt_jax import models
from gemma import gm  # pylint: disable=g-bad-import-order


def _model_config(variant, param_dtype='bfloat16', compute_dtype='bfloat16'):
  config = config_lib.base_config()
  config.model.variant = variant
  config.model.param_dtype = param_dtype
  config.model.compute_dtype = compute_dtype
  return config.model


@pytest.mark.parametrize('variant, library_class, expected_params', [
    ('gemma2_2b', 'Gemma2_2B', 2_614_636_800),
    ('gemma2_9b', 'Gemma2_9B', 9_242_164_736),
    ('gemma2_27b', 'Gemma2_27B', 27_227_718_144),
])
def test_real_variants_are_the_library_configs(variant, library_class,
                                               expected_params):
  model = models.build_model(_model_config(variant))
  assert model.config == getattr(gm.nn, library_class).config
  num_params = models.count_params(model.abstract_params())
  assert num_params == expected_params
  # The figures the issue quotes: 2.615B, 9.242B, 27.228B.
  assert round(num_params / 1e9, 3) == {
      'gemma2_2b': 2.615, 'gemma2_9b': 9.242, 'gemma2_27b': 27.228}[variant]


@pytest.mark.parametrize('variant', ['gemma2_tiny', 'gemma2_demo'])
def test_toy_variants_keep_the_gemma2_architecture(variant):
  config = models.build_model(_model_config(variant)).config
  reference = gm.nn.Gemma2_2B.config
  assert set(config.attention_types) == {models.AttentionType.LOCAL_SLIDING,
                                         models.AttentionType.GLOBAL}
  assert config.attention_types[0] == models.AttentionType.LOCAL_SLIDING
  assert config.num_kv_heads < config.num_heads  # Grouped-query attention.
  assert config.final_logit_softcap == reference.final_logit_softcap
  assert config.attn_logits_soft_cap == reference.attn_logits_soft_cap
  assert config.use_post_attn_norm and config.use_post_ffw_norm


def test_dtypes_come_from_the_config():
  model = models.build_model(_model_config('gemma2_tiny', 'float32',
                                           'bfloat16'))
  params = model.init_params(jax.random.key(0))
  assert {x.dtype for x in jax.tree.leaves(params)} == {jnp.dtype('float32')}
  logits = model.apply(params, jnp.array([[2, 5, 6]])).logits
  assert logits.dtype == jnp.bfloat16
  model32 = models.build_model(_model_config('gemma2_tiny', 'float32',
                                             'float32'))
  logits32 = model32.apply(params, jnp.array([[2, 5, 6]])).logits
  assert logits32.dtype == jnp.float32
  np.testing.assert_allclose(np.asarray(logits, np.float32),
                             np.asarray(logits32), atol=0.1)
  bf16_model = models.build_model(_model_config('gemma2_tiny'))
  bf16_params = bf16_model.abstract_params()
  assert {x.dtype for x in jax.tree.leaves(bf16_params)} == {
      jnp.dtype('bfloat16')}


def test_sliding_window_changes_long_range_logits():
  """The tiny model's local layers really see only 8 tokens back."""
  config = _model_config('gemma2_tiny', 'float32', 'float32')
  model = models.build_model(config)
  params = model.init_params(jax.random.key(1))
  # 4 local layers of window 8 reach 4 * 7 = 28 tokens back; 38 is out.
  tokens = jnp.arange(3, 43)[None]
  changed_far = tokens.at[0, 1].set(40)
  far = model.apply(params, changed_far).logits[0, -1]
  base = model.apply(params, tokens).logits[0, -1]
  # Global layers still see position 1, so the logits change...
  assert not np.allclose(far, base)
  # ...and with only local layers they would not: check the mask logic by
  # building a local-only variant of the same architecture.
  import dataclasses  # pylint: disable=g-import-not-at-top
  local_only = dataclasses.replace(
      model.config,
      attention_types=(models.AttentionType.LOCAL_SLIDING,) * 4)
  local_model = models.build_model(config, local_only)
  np.testing.assert_allclose(
      local_model.apply(params, changed_far).logits[0, -1],
      local_model.apply(params, tokens).logits[0, -1], atol=1e-5)


def test_unknown_variant_is_refused_by_name():
  config = _model_config('gemma2_tiny')
  config.variant = 'gemma3_1b'
  with pytest.raises(ValueError, match='gemma3_1b'):
    models.build_model(config)
