"""The Llama-3 family (3.1 8B / 70B, 3.2 1B / 3B): model and HF mapping.

Architecture: token embedding (no scaling), blocks of RMSNorm -> grouped-query
attention with rotary embeddings (Llama-3.1's frequency scaling) -> residual,
RMSNorm -> SwiGLU MLP -> residual, a final RMSNorm and the output projection
(tied to the embedding in 3.2 1B / 3B, separate in 3.1).

The param tree uses gemma's names wherever the weight plays the same role
(`embedder/input_embedding`, `layer_i/attn/{q,kv,attn_vec}_einsum/w`,
`layer_i/mlp/{gating_einsum,linear}`, `layer_i/pre_{attention,ffw}_norm`,
`final_norm`), built from gemma's `Einsum` layer, so that the sharding table,
`gm.nn.LoRA` and our LoRA merge apply unchanged. Only the untied output
projection is new: `embedder/output_embedding` `[vocab, embed]`. The module
honours `gm.nn.Transformer`'s call contract (see `tpt_jax.layers`); its block
and model are `layers.PreNormBlock` and `layers.Transformer` with Llama's
norm, attention and MLP, and it decodes for the continuous engine too (a
`layers.PagedCache`).
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

from flax import linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from tpt_jax import hf_layout
from tpt_jax import layers
from tpt_jax import _gemma_compat  # pylint: disable=unused-import  # Must precede gemma.
from gemma.gm.nn import _layers as gemma_layers  # pylint: disable=g-bad-import-order

FAMILY = 'llama'
MODEL_TYPE = 'llama'
VARIANTS = ('llama3_1_8b', 'llama3_1_70b', 'llama3_2_1b', 'llama3_2_3b',
            'llama3_tiny')
TOY_VARIANTS = ('llama3_tiny',)
LLAMA3_VOCAB_SIZE = 128256
# HF tensors a Llama checkpoint may hold that are not weights.
IGNORED_HF_TENSORS = r'model\.layers\.\d+\.self_attn\.rotary_emb\.inv_freq'


@dataclasses.dataclass(frozen=True)
class RopeScaling:
  """Llama-3.1's rotary frequency scaling (HF `rope_type: llama3`)."""
  factor: float = 8.0
  low_freq_factor: float = 1.0
  high_freq_factor: float = 4.0
  original_max_position_embeddings: int = 8192


@dataclasses.dataclass(frozen=True)
class LlamaConfig:
  """A Llama-3 architecture (field names as gemma's TransformerConfig where
  the meaning is the same, so the sampler and trainer read either)."""
  num_embed: int
  embed_dim: int
  hidden_dim: int
  num_heads: int
  num_kv_heads: int
  head_dim: int
  num_layers: int
  rope_theta: float = 500_000.0
  rope_scaling: RopeScaling | None = RopeScaling()
  norm_eps: float = 1e-5
  tie_word_embeddings: bool = False
  max_position_embeddings: int = 131_072
  bos_token_id: int = 128_000
  eos_token_ids: tuple[int, ...] = (128_001, 128_008, 128_009)

  # gemma's flag for a transposed gating matrix; ours is [2, embed, hidden].
  transpose_gating_einsum = False
  family = FAMILY

  def __post_init__(self):
    if self.num_heads % self.num_kv_heads:
      raise ValueError(f'num_heads={self.num_heads} is not a multiple of '
                       f'num_kv_heads={self.num_kv_heads}.')
    if self.head_dim % 2:
      raise ValueError(f'head_dim={self.head_dim} must be even (RoPE).')

  def init_cache(self, batch_size: int, dtype: Any = jnp.bfloat16, *,
                 cache_length: int) -> layers.Cache:
    """An empty KV cache (gemma's layout)."""
    return layers.init_cache(
        num_layers=self.num_layers, num_kv_heads=self.num_kv_heads,
        head_dim=self.head_dim, batch_size=batch_size, dtype=dtype,
        cache_length=cache_length)

  @property
  def dims(self) -> hf_layout.DecoderDims:
    return hf_layout.DecoderDims(
        embed_dim=self.embed_dim, hidden_dim=self.hidden_dim,
        num_heads=self.num_heads, num_kv_heads=self.num_kv_heads,
        head_dim=self.head_dim)


def variant_config(variant: str, vocab_size: int | None) -> LlamaConfig:
  """The published architecture of `variant` (HF config.json values)."""
  if variant == 'llama3_tiny':
    # Tests: rope scaling with a short original context, so that all three
    # frequency bands (kept, smoothed, divided) occur; grouped-query heads.
    return LlamaConfig(
        num_embed=vocab_size or 512, embed_dim=64, hidden_dim=128,
        num_heads=4, num_kv_heads=2, head_dim=16, num_layers=2,
        rope_theta=10_000.0,
        rope_scaling=RopeScaling(factor=8.0, low_freq_factor=1.0,
                                 high_freq_factor=4.0,
                                 original_max_position_embeddings=32),
        max_position_embeddings=2048, bos_token_id=2, eos_token_ids=(1, 107))
  if vocab_size not in (None, LLAMA3_VOCAB_SIZE):
    raise ValueError(
        f'config.model.vocab_size={vocab_size} but {variant} has the Llama-3 '
        f'vocabulary of {LLAMA3_VOCAB_SIZE} tokens; leave it unset.')
  common = dict(num_embed=LLAMA3_VOCAB_SIZE, num_kv_heads=8)
  if variant == 'llama3_1_8b':
    return LlamaConfig(embed_dim=4096, hidden_dim=14336, num_heads=32,
                       head_dim=128, num_layers=32, **common)
  if variant == 'llama3_1_70b':
    return LlamaConfig(embed_dim=8192, hidden_dim=28672, num_heads=64,
                       head_dim=128, num_layers=80, **common)
  llama3_2 = dict(rope_scaling=RopeScaling(factor=32.0),
                  tie_word_embeddings=True, **common)
  if variant == 'llama3_2_1b':
    return LlamaConfig(embed_dim=2048, hidden_dim=8192, num_heads=32,
                       head_dim=64, num_layers=16, **llama3_2)
  if variant == 'llama3_2_3b':
    return LlamaConfig(embed_dim=3072, hidden_dim=8192, num_heads=24,
                       head_dim=128, num_layers=28, **llama3_2)
  raise ValueError(f'{variant!r} is not a Llama-3 variant ({VARIANTS}).')


# ------------------------------------------------------------------ model ---


def rope_frequencies(head_dim: int, theta: float,
                     scaling: RopeScaling | None) -> np.ndarray:
  """Inverse frequencies `[head_dim / 2]`, with Llama-3.1's scaling: long
  wavelengths divided by `factor`, short ones kept, a smooth ramp between."""
  inv_freq = 1.0 / theta ** (np.arange(0, head_dim, 2, dtype=np.float64)
                             / head_dim)
  if scaling is None:
    return inv_freq.astype(np.float32)
  old_context = scaling.original_max_position_embeddings
  low_freq_wavelen = old_context / scaling.low_freq_factor
  high_freq_wavelen = old_context / scaling.high_freq_factor
  wavelen = 2 * math.pi / inv_freq
  scaled = np.where(wavelen > low_freq_wavelen, inv_freq / scaling.factor,
                    inv_freq)
  smooth = ((old_context / wavelen - scaling.low_freq_factor) /
            (scaling.high_freq_factor - scaling.low_freq_factor))
  smoothed = (1 - smooth) * scaled / scaling.factor + smooth * scaled
  medium = (wavelen >= high_freq_wavelen) & (wavelen <= low_freq_wavelen)
  return np.where(medium, smoothed, scaled).astype(np.float32)


def apply_rope(x: jax.Array, positions: jax.Array,
               inv_freq: np.ndarray) -> jax.Array:
  """Rotates `x` `[B, T, N, H]` by `positions` `[B, T]` (HF's half split:
  dims i and i + H/2 form a pair)."""
  angles = positions[..., None].astype(jnp.float32) * jnp.asarray(inv_freq)
  sin = jnp.sin(angles)[:, :, None, :].astype(x.dtype)
  cos = jnp.cos(angles)[:, :, None, :].astype(x.dtype)
  first, second = jnp.split(x, 2, axis=-1)
  return jnp.concatenate([first * cos - second * sin,
                          second * cos + first * sin], axis=-1)


class RMSNorm(nn.Module):
  """`scale * x / rms(x)` in float32 (Llama's; gemma's uses 1 + scale)."""
  eps: float
  dtype: Any

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    scale = self.param('scale', nn.initializers.ones_init(), (x.shape[-1],),
                       self.dtype)
    x32 = x.astype(jnp.float32)
    normed = x32 * jax.lax.rsqrt(jnp.mean(jnp.square(x32), axis=-1,
                                          keepdims=True) + self.eps)
    return scale.astype(x.dtype) * normed.astype(x.dtype)


class Attention(nn.Module):
  """Grouped-query attention with rotary embeddings."""
  config: LlamaConfig
  dtype: Any

  def setup(self):
    c = self.config
    self.q_einsum = gemma_layers.Einsum(
        shape=(c.num_heads, c.embed_dim, c.head_dim), dtype=self.dtype)
    self.kv_einsum = gemma_layers.Einsum(
        shape=(2, c.num_kv_heads, c.embed_dim, c.head_dim), dtype=self.dtype)
    self.attn_vec_einsum = gemma_layers.Einsum(
        shape=(c.num_heads, c.head_dim, c.embed_dim), dtype=self.dtype)

  def __call__(self, x, positions, cache, attention_mask):
    c = self.config
    inv_freq = rope_frequencies(c.head_dim, c.rope_theta, c.rope_scaling)
    query = apply_rope(self.q_einsum('BTD,NDH->BTNH', x), positions, inv_freq)
    key, value = self.kv_einsum('BSD,CKDH->CBSKH', x)
    key = apply_rope(key, positions, inv_freq)
    cache, encoded = layers.attend(
        query, key, value, positions=positions, cache=cache,
        attention_mask=attention_mask, scale=c.head_dim ** -0.5)
    return cache, self.attn_vec_einsum('BTNH,NHD->BTD', encoded)


class FeedForward(nn.Module):
  """SwiGLU: `down(silu(x @ gate) * (x @ up))`, gemma's param layout."""
  config: LlamaConfig
  dtype: Any

  @nn.compact
  def __call__(self, x):
    c = self.config
    gating = gemma_layers.Einsum(shape=(2, c.embed_dim, c.hidden_dim),
                                 weight_name='gating_einsum', dtype=self.dtype)
    nn.share_scope(self, gating)
    gate = gating('...F,NFH->...NH', x)
    activations = nn.silu(gate[..., 0, :]) * gate[..., 1, :]
    linear = gemma_layers.Einsum(shape=(c.hidden_dim, c.embed_dim),
                                 weight_name='linear', dtype=self.dtype)
    nn.share_scope(self, linear)
    return linear('...H,HF->...F', activations)


class Block(layers.PreNormBlock):
  """Pre-norm attention and MLP, each with a residual."""
  norm_class = RMSNorm
  attention_class = Attention
  feed_forward_class = FeedForward


class Embedder(nn.Module):
  """Input embedding and (untied) output projection, both `[vocab, embed]`."""
  config: LlamaConfig
  dtype: Any

  def setup(self):
    c = self.config
    self.input_embedding = self.param(
        'input_embedding', nn.initializers.normal(0.02),
        (c.num_embed, c.embed_dim), self.dtype)
    if not c.tie_word_embeddings:
      self.output_embedding = self.param(
          'output_embedding', nn.initializers.normal(0.02),
          (c.num_embed, c.embed_dim), self.dtype)

  def encode(self, tokens, positions):
    del positions  # Rotary: positions enter the attention.
    return self.input_embedding[(tokens,)]

  def decode(self, x):
    table = (self.input_embedding if self.config.tie_word_embeddings
             else self.output_embedding)
    return jnp.dot(x, table.T)


class Llama(layers.Transformer):
  """A Llama-3 transformer with `gm.nn.Transformer`'s call contract; fields
  as `layers.Transformer`'s (`config`: a `LlamaConfig`, `dtype`, `remat`,
  `remat_policy`)."""
  embedder_class = Embedder
  block_class = Block
  norm_class = RMSNorm


# ------------------------------------------------------------ HF mapping ---


def config_from_hf(config_json: dict[str, Any]) -> LlamaConfig:
  """The LlamaConfig of a Hugging Face Llama `config.json`."""
  try:
    embed_dim = config_json['hidden_size']
    num_heads = config_json['num_attention_heads']
    # transformers >= 5 writes `rope_parameters` (theta inside); released
    # checkpoints have `rope_theta` and `rope_scaling`.
    rope = (config_json.get('rope_parameters') or
            config_json.get('rope_scaling') or {})
    rope_theta = rope.get('rope_theta', config_json.get('rope_theta',
                                                        10_000.0))
    rope_type = rope.get('rope_type', rope.get('type', 'default'))
    if rope_type == 'default':
      scaling = None
    elif rope_type != 'llama3':
      raise ValueError(
          f'config.json: rope scaling has rope_type={rope_type!r}; only '
          "Llama-3.1's 'llama3' scaling (or none) is supported.")
    else:
      scaling = RopeScaling(
          factor=float(rope['factor']),
          low_freq_factor=float(rope['low_freq_factor']),
          high_freq_factor=float(rope['high_freq_factor']),
          original_max_position_embeddings=int(
              rope['original_max_position_embeddings']))
    if config_json.get('attention_bias') or config_json.get('mlp_bias'):
      raise ValueError('config.json: attention_bias / mlp_bias are set; '
                       'Llama-3 has no biases and neither do we.')
    if config_json.get('hidden_act', 'silu') != 'silu':
      raise ValueError(f'config.json: hidden_act='
                       f'{config_json["hidden_act"]!r}; Llama uses silu.')
    eos = config_json.get('eos_token_id')
    eos = [] if eos is None else eos if isinstance(eos, list) else [eos]
    bos = config_json.get('bos_token_id')
    return LlamaConfig(
        num_embed=config_json['vocab_size'],
        embed_dim=embed_dim,
        hidden_dim=config_json['intermediate_size'],
        num_heads=num_heads,
        num_kv_heads=config_json.get('num_key_value_heads', num_heads),
        head_dim=config_json.get('head_dim') or embed_dim // num_heads,
        num_layers=config_json['num_hidden_layers'],
        rope_theta=float(rope_theta),
        rope_scaling=scaling,
        norm_eps=float(config_json.get('rms_norm_eps', 1e-5)),
        tie_word_embeddings=bool(config_json.get('tie_word_embeddings',
                                                 False)),
        max_position_embeddings=int(config_json.get(
            'max_position_embeddings', 131_072)),
        bos_token_id=128_000 if bos is None else int(bos),
        eos_token_ids=tuple(int(e) for e in eos),
    )
  except KeyError as e:
    raise ValueError(f'config.json lacks the field {e.args[0]!r}.') from e


def hf_config_json(config: LlamaConfig) -> dict[str, Any]:
  """The Hugging Face `config.json` of an architecture."""
  scaling = config.rope_scaling
  return {
      'architectures': ['LlamaForCausalLM'],
      'model_type': MODEL_TYPE,
      'vocab_size': config.num_embed,
      'hidden_size': config.embed_dim,
      'intermediate_size': config.hidden_dim,
      'num_hidden_layers': config.num_layers,
      'num_attention_heads': config.num_heads,
      'num_key_value_heads': config.num_kv_heads,
      'head_dim': config.head_dim,
      'hidden_act': 'silu',
      'rms_norm_eps': config.norm_eps,
      'rope_theta': config.rope_theta,
      'rope_scaling': None if scaling is None else {
          'rope_type': 'llama3', 'factor': scaling.factor,
          'low_freq_factor': scaling.low_freq_factor,
          'high_freq_factor': scaling.high_freq_factor,
          'original_max_position_embeddings':
              scaling.original_max_position_embeddings},
      'max_position_embeddings': config.max_position_embeddings,
      'tie_word_embeddings': config.tie_word_embeddings,
      'attention_bias': False,
      'mlp_bias': False,
      'bos_token_id': config.bos_token_id,
      'eos_token_id': list(config.eos_token_ids),
  }


_NORM_NAMES = (('input_layernorm', 'pre_attention_norm'),
               ('post_attention_layernorm', 'pre_ffw_norm'))


def hf_shapes(config: LlamaConfig) -> dict[str, tuple[int, ...]]:
  """The tensors (and shapes) a HF checkpoint of `config` holds."""
  d = config.embed_dim
  shapes = {'model.embed_tokens.weight': (config.num_embed, d),
            'model.norm.weight': (d,)}
  if not config.tie_word_embeddings:
    shapes['lm_head.weight'] = (config.num_embed, d)
  for i in range(config.num_layers):
    hf = f'model.layers.{i}.'
    shapes.update(hf_layout.decoder_layer_hf_shapes(hf, config.dims))
    for hf_norm, _ in _NORM_NAMES:
      shapes[f'{hf}{hf_norm}.weight'] = (d,)
  return shapes


def expected_hf_shapes(tensors: dict[str, Any], config: LlamaConfig
                       ) -> dict[str, tuple[int, ...]]:
  """`hf_shapes` (one naming for every Llama checkpoint)."""
  del tensors
  return hf_shapes(config)


def hf_readers(tensors: dict[str, np.ndarray], config: LlamaConfig
               ) -> dict[str, hf_layout.Reader]:
  """Our param name -> (shape, shard reader) over the HF tensors."""
  readers = {
      'embedder/input_embedding': hf_layout.view(
          tensors['model.embed_tokens.weight']),
      'final_norm/scale': hf_layout.view(tensors['model.norm.weight'])}
  if not config.tie_word_embeddings:
    readers['embedder/output_embedding'] = hf_layout.view(
        tensors['lm_head.weight'])
  for i in range(config.num_layers):
    hf, ours = f'model.layers.{i}.', f'layer_{i}/'
    readers.update(hf_layout.decoder_layer_readers(tensors, hf, ours,
                                                   config.dims))
    for hf_norm, our_norm in _NORM_NAMES:
      readers[f'{ours}{our_norm}/scale'] = hf_layout.view(
          tensors[f'{hf}{hf_norm}.weight'])
  return readers


def to_hf(flat: dict[str, np.ndarray], config: LlamaConfig
          ) -> dict[str, np.ndarray]:
  """Our flat params -> HF tensors (the inverse of `hf_readers`)."""
  hf = {'model.embed_tokens.weight': flat['embedder/input_embedding'],
        'model.norm.weight': flat['final_norm/scale']}
  if not config.tie_word_embeddings:
    hf['lm_head.weight'] = flat['embedder/output_embedding']
  for i in range(config.num_layers):
    prefix, ours = f'model.layers.{i}.', f'layer_{i}/'
    hf.update(hf_layout.decoder_layer_to_hf(flat, ours, prefix, config.dims))
    for hf_norm, our_norm in _NORM_NAMES:
      hf[f'{prefix}{hf_norm}.weight'] = flat[f'{ours}{our_norm}/scale']
  return hf
