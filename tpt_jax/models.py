"""The models, configured by name: Gemma2, Llama-3 and GPT-2 families.

Gemma2 is the `gemma` library's `gm.nn.Transformer`, never re-implemented:
the 2B / 9B / 27B configs are the library's own (`gm.nn.Gemma2_2B.config`,
...); the toy variants keep every feature of the architecture (alternating
local-sliding / global attention, attention and final-logit softcaps,
grouped-query attention, post-attention and post-FFW norms) at a size that
runs in seconds on a CPU.

The other families (`tpt_jax.llama`, `tpt_jax.gpt2`) are flax modules with
the same call contract, cache layout and param naming conventions (see
`tpt_jax.layers`), so the sampler, the trainer and the checkpoints take any
`Model`. `build_model` dispatches on `config.model.variant`, or on the type
of an explicit architecture (e.g. read from a Hugging Face `config.json`).
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections

from flax import linen as nn

from tpt_jax import gpt2
from tpt_jax import llama
from tpt_jax import _gemma_compat  # pylint: disable=unused-import  # Must precede gemma.
from gemma import gm  # pylint: disable=g-bad-import-order

Params = dict[str, Any]
TransformerConfig = gm.nn.config.TransformerConfig
AttentionType = gm.nn.AttentionType
# An architecture of any family.
Architecture = TransformerConfig | llama.LlamaConfig | gpt2.GPT2Config

# Vocabulary of the toy variants when the config does not give one.
DEFAULT_TOY_VOCAB_SIZE = 512
GEMMA2_VARIANTS = ('gemma2_2b', 'gemma2_9b', 'gemma2_27b', 'gemma2_tiny',
                   'gemma2_demo')
# Every `config.model.variant` there is.
MODEL_VARIANTS = GEMMA2_VARIANTS + llama.VARIANTS + gpt2.VARIANTS
# Variants small enough to train from scratch (tests, the CPU demo); they
# get a sentencepiece tokenizer with Gemma2's special ids when none is given.
TOY_VARIANTS = (('gemma2_tiny', 'gemma2_demo') + llama.TOY_VARIANTS +
                gpt2.TOY_VARIANTS)


def _library_config(variant: str) -> TransformerConfig:
  return {
      'gemma2_2b': gm.nn.Gemma2_2B,
      'gemma2_9b': gm.nn.Gemma2_9B,
      'gemma2_27b': gm.nn.Gemma2_27B,
  }[variant].config


def _toy_config(*, vocab_size: int, embed_dim: int, hidden_dim: int,
                num_heads: int, num_kv_heads: int, head_dim: int,
                num_layers: int, sliding_window_size: int) -> TransformerConfig:
  """A Gemma2-architecture config at toy size (same code path as 2B)."""
  return TransformerConfig(
      num_embed=vocab_size,
      embed_dim=embed_dim,
      hidden_dim=hidden_dim,
      num_heads=num_heads,
      head_dim=head_dim,
      num_kv_heads=num_kv_heads,
      final_logit_softcap=30.0,
      use_post_attn_norm=True,
      use_post_ffw_norm=True,
      attention_types=(AttentionType.LOCAL_SLIDING,
                       AttentionType.GLOBAL) * (num_layers // 2),
      query_pre_attn_norm=(
          gm.nn.config.QueryPreAttentionNormalisation.BY_ONE_OVER_SQRT_HEAD_DIM),
      attn_logits_soft_cap=50.0,
      sliding_window_size=sliding_window_size,
  )


def family_of(architecture: Architecture) -> str:
  """'gemma2', 'llama' or 'gpt2'."""
  if isinstance(architecture, llama.LlamaConfig):
    return llama.FAMILY
  if isinstance(architecture, gpt2.GPT2Config):
    return gpt2.FAMILY
  if isinstance(architecture, TransformerConfig):
    return 'gemma2'
  raise TypeError(f'{type(architecture).__name__} is not an architecture of '
                  'a known model family.')


def transformer_config(model_config: ml_collections.ConfigDict
                      ) -> Architecture:
  """Returns the architecture named by `config.model.variant`."""
  variant = model_config.variant
  if variant in llama.VARIANTS:
    return llama.variant_config(variant, model_config.get('vocab_size'))
  if variant in gpt2.VARIANTS:
    return gpt2.variant_config(variant, model_config.get('vocab_size'))
  if variant in ('gemma2_2b', 'gemma2_9b', 'gemma2_27b'):
    if model_config.get('vocab_size') not in (None, 256128):
      raise ValueError(
          f'config.model.vocab_size={model_config.vocab_size} but {variant} '
          'has the Gemma2 vocabulary of 256128 tokens; leave it unset.')
    return _library_config(variant)
  vocab_size = model_config.get('vocab_size') or DEFAULT_TOY_VOCAB_SIZE
  if variant == 'gemma2_tiny':
    # Tests: a sliding window shorter than test sequences, so local layers
    # really differ from global ones.
    return _toy_config(vocab_size=vocab_size, embed_dim=64, hidden_dim=128,
                       num_heads=4, num_kv_heads=2, head_dim=16, num_layers=4,
                       sliding_window_size=8)
  if variant == 'gemma2_demo':
    # The CPU demo: big enough to learn multi-step arithmetic.
    return _toy_config(vocab_size=vocab_size, embed_dim=128, hidden_dim=512,
                       num_heads=4, num_kv_heads=2, head_dim=32, num_layers=4,
                       sliding_window_size=64)
  raise ValueError(f'config.model.variant={variant!r} is not a known model; '
                   f'the variants are {MODEL_VARIANTS}.')


@dataclasses.dataclass(frozen=True)
class Model:
  """A transformer of any family with the dtypes it runs in.

  Attributes:
    module: `gm.nn.Transformer`, `llama.Llama` or `gpt2.GPT2` (or one of
      them wrapped for training); apply it with `{'params': params}`.
    param_dtype: dtype in which params are stored (and loaded).
    compute_dtype: dtype the forward pass runs in; params are cast to it.
  """
  module: nn.Module
  param_dtype: jnp.dtype
  compute_dtype: jnp.dtype

  @property
  def config(self) -> Architecture:
    return self.module.config

  @property
  def family(self) -> str:
    return family_of(self.config)

  def init_params(self, rng: jax.Array) -> Params:
    """Random params in `param_dtype` (the library's initialisers)."""
    dummy_tokens = jnp.ones((1, 1), jnp.int32)
    return self.module.init(rng, dummy_tokens)['params']

  def abstract_params(self) -> Params:
    """The param tree as `jax.ShapeDtypeStruct`s, without allocating it."""
    return jax.eval_shape(self.init_params, jax.random.key(0))

  def apply(self, params: Params, tokens: jax.Array, **kwargs) -> Any:
    """Forward pass in `compute_dtype`; kwargs as `gm.nn.Transformer`'s."""
    return self.module.apply({'params': cast(params, self.compute_dtype)},
                             tokens, **kwargs)


def cast(params: Params, dtype: jnp.dtype) -> Params:
  """Casts every floating-point leaf to `dtype` (a no-op where it matches)."""
  def cast_leaf(x):
    if jnp.issubdtype(x.dtype, jnp.floating) and x.dtype != dtype:
      return x.astype(dtype)
    return x
  return jax.tree.map(cast_leaf, params)


def build_model(model_config: ml_collections.ConfigDict,
                transformer: Architecture | None = None) -> Model:
  """Builds the model named by `config.model` (or the given architecture).

  Args:
    model_config: the `config.model` section.
    transformer: an explicit architecture of any family (e.g. read from a
      Hugging Face `config.json`); overrides `model_config.variant`.
  """
  param_dtype = jnp.dtype(model_config.param_dtype)
  architecture = transformer or transformer_config(model_config)
  family = family_of(architecture)
  if family == llama.FAMILY:
    module = llama.Llama(config=architecture, dtype=param_dtype)
  elif family == gpt2.FAMILY:
    module = gpt2.GPT2(config=architecture, dtype=param_dtype)
  else:
    module = gm.nn.Transformer(config=architecture, dtype=param_dtype)
  return Model(module=module, param_dtype=param_dtype,
               compute_dtype=jnp.dtype(model_config.compute_dtype))


def count_params(params: Params) -> int:
  """Number of scalars in a param tree (arrays or ShapeDtypeStructs)."""
  return sum(int(x.size) for x in jax.tree.leaves(params))
