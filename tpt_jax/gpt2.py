"""The GPT-2 family (124M, 355M, 774M; the SERT paper's students).

Architecture: token plus learned position embeddings, blocks of LayerNorm ->
multi-head attention (with biases) -> residual, LayerNorm -> GELU (tanh) MLP
-> residual, a final LayerNorm and the output projection tied to the token
embedding. Hugging Face stores the linear layers as `Conv1D` (`[in, out]`,
`x @ W + b`) and the fused query/key/value projection as `c_attn`.

Param tree: gemma's names where the role matches (`embedder/input_embedding`,
`layer_i/attn/qkv_einsum/w` `[3, heads, embed, head_dim]`,
`layer_i/attn/attn_vec_einsum/w`, `layer_i/mlp/linear`,
`layer_i/pre_{attention,ffw}_norm/scale`, `final_norm/scale`, all built from
gemma's `Einsum` so `gm.nn.LoRA` wraps them), plus what GPT-2 adds:
`embedder/position_embedding`, the biases (`attn/qkv_bias`,
`attn/attn_vec_bias`, `mlp/up_bias`, `mlp/linear_bias`, `*_norm/bias`) and
the ungated MLP input `mlp/up_einsum` `[embed, hidden]`. Positions past
`max_positions` are clamped to the last learned one (as any gather in JAX),
in both sampling engines. Block and model are `layers.PreNormBlock` and
`layers.Transformer` with GPT-2's norm, attention and MLP.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from flax import linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from tpt_jax import hf_layout
from tpt_jax import layers
from tpt_jax import _gemma_compat  # pylint: disable=unused-import  # Must precede gemma.
from gemma.gm.nn import _layers as gemma_layers  # pylint: disable=g-bad-import-order

FAMILY = 'gpt2'
MODEL_TYPE = 'gpt2'
VARIANTS = ('gpt2', 'gpt2_medium', 'gpt2_large', 'gpt2_tiny')
TOY_VARIANTS = ('gpt2_tiny',)
GPT2_VOCAB_SIZE = 50257
# HF tensors a GPT-2 checkpoint may hold that are not weights: the causal
# mask buffers of old checkpoints and the (tied) output projection.
IGNORED_HF_TENSORS = (r'(transformer\.)?h\.\d+\.attn\.(masked_)?bias|'
                      r'lm_head\.weight')


@dataclasses.dataclass(frozen=True)
class GPT2Config:
  """A GPT-2 architecture (gemma's field names where they mean the same)."""
  num_embed: int
  embed_dim: int
  num_heads: int
  num_layers: int
  max_positions: int = 1024
  norm_eps: float = 1e-5
  bos_token_id: int = 50256
  eos_token_id: int = 50256

  transpose_gating_einsum = False
  family = FAMILY

  def __post_init__(self):
    if self.embed_dim % self.num_heads:
      raise ValueError(f'embed_dim={self.embed_dim} is not a multiple of '
                       f'num_heads={self.num_heads}.')

  @property
  def head_dim(self) -> int:
    return self.embed_dim // self.num_heads

  @property
  def num_kv_heads(self) -> int:
    return self.num_heads

  @property
  def hidden_dim(self) -> int:
    return 4 * self.embed_dim

  def init_cache(self, batch_size: int, dtype: Any = jnp.bfloat16, *,
                 cache_length: int) -> layers.Cache:
    """An empty KV cache (gemma's layout)."""
    return layers.init_cache(
        num_layers=self.num_layers, num_kv_heads=self.num_heads,
        head_dim=self.head_dim, batch_size=batch_size, dtype=dtype,
        cache_length=cache_length)


def variant_config(variant: str, vocab_size: int | None) -> GPT2Config:
  """The published architecture of `variant`."""
  if variant == 'gpt2_tiny':
    return GPT2Config(num_embed=vocab_size or 512, embed_dim=64, num_heads=4,
                      num_layers=2, bos_token_id=2, eos_token_id=1)
  if vocab_size not in (None, GPT2_VOCAB_SIZE):
    raise ValueError(
        f'config.model.vocab_size={vocab_size} but {variant} has the GPT-2 '
        f'vocabulary of {GPT2_VOCAB_SIZE} tokens; leave it unset.')
  sizes = {'gpt2': (768, 12, 12), 'gpt2_medium': (1024, 16, 24),
           'gpt2_large': (1280, 20, 36)}
  if variant not in sizes:
    raise ValueError(f'{variant!r} is not a GPT-2 variant ({VARIANTS}).')
  embed_dim, num_heads, num_layers = sizes[variant]
  return GPT2Config(num_embed=GPT2_VOCAB_SIZE, embed_dim=embed_dim,
                    num_heads=num_heads, num_layers=num_layers)


# ------------------------------------------------------------------ model ---


class LayerNorm(nn.Module):
  """LayerNorm with scale and bias, computed in float32."""
  eps: float
  dtype: Any

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    features = (x.shape[-1],)
    scale = self.param('scale', nn.initializers.ones_init(), features,
                       self.dtype)
    bias = self.param('bias', nn.initializers.zeros_init(), features,
                      self.dtype)
    x32 = x.astype(jnp.float32)
    mean = jnp.mean(x32, axis=-1, keepdims=True)
    var = jnp.mean(jnp.square(x32 - mean), axis=-1, keepdims=True)
    normed = (x32 - mean) * jax.lax.rsqrt(var + self.eps)
    return (normed * scale.astype(jnp.float32) +
            bias.astype(jnp.float32)).astype(x.dtype)


class Attention(nn.Module):
  """Multi-head attention with biased projections."""
  config: GPT2Config
  dtype: Any

  def setup(self):
    c = self.config
    self.qkv_einsum = gemma_layers.Einsum(
        shape=(3, c.num_heads, c.embed_dim, c.head_dim), dtype=self.dtype)
    self.qkv_bias = self.param('qkv_bias', nn.initializers.zeros_init(),
                               (3, c.num_heads, c.head_dim), self.dtype)
    self.attn_vec_einsum = gemma_layers.Einsum(
        shape=(c.num_heads, c.head_dim, c.embed_dim), dtype=self.dtype)
    self.attn_vec_bias = self.param('attn_vec_bias',
                                    nn.initializers.zeros_init(),
                                    (c.embed_dim,), self.dtype)

  def __call__(self, x, positions, cache, attention_mask):
    qkv = self.qkv_einsum('BTD,SNDH->SBTNH', x)
    qkv = qkv + self.qkv_bias[:, None, None].astype(qkv.dtype)
    cache, encoded = layers.attend(
        qkv[0], qkv[1], qkv[2], positions=positions, cache=cache,
        attention_mask=attention_mask, scale=self.config.head_dim ** -0.5)
    out = self.attn_vec_einsum('BTNH,NHD->BTD', encoded)
    return cache, out + self.attn_vec_bias.astype(out.dtype)


class FeedForward(nn.Module):
  """`linear(gelu_tanh(x @ up + up_bias)) + linear_bias`."""
  config: GPT2Config
  dtype: Any

  @nn.compact
  def __call__(self, x):
    c = self.config
    up = gemma_layers.Einsum(shape=(c.embed_dim, c.hidden_dim),
                             weight_name='up_einsum', dtype=self.dtype)
    nn.share_scope(self, up)
    up_bias = self.param('up_bias', nn.initializers.zeros_init(),
                         (c.hidden_dim,), self.dtype)
    hidden = nn.gelu(up('...F,FH->...H', x) + up_bias.astype(x.dtype),
                     approximate=True)
    linear = gemma_layers.Einsum(shape=(c.hidden_dim, c.embed_dim),
                                 weight_name='linear', dtype=self.dtype)
    nn.share_scope(self, linear)
    linear_bias = self.param('linear_bias', nn.initializers.zeros_init(),
                             (c.embed_dim,), self.dtype)
    return linear('...H,HF->...F', hidden) + linear_bias.astype(x.dtype)


class Block(layers.PreNormBlock):
  """Pre-norm attention and MLP, each with a residual."""
  norm_class = LayerNorm
  attention_class = Attention
  feed_forward_class = FeedForward


class Embedder(nn.Module):
  """Token and learned position embeddings; decoding uses the tokens'."""
  config: GPT2Config
  dtype: Any

  def setup(self):
    c = self.config
    self.input_embedding = self.param(
        'input_embedding', nn.initializers.normal(0.02),
        (c.num_embed, c.embed_dim), self.dtype)
    self.position_embedding = self.param(
        'position_embedding', nn.initializers.normal(0.01),
        (c.max_positions, c.embed_dim), self.dtype)

  def encode(self, tokens, positions):
    return (self.input_embedding[(tokens,)] +
            self.position_embedding[(positions,)])

  def decode(self, x):
    return jnp.dot(x, self.input_embedding.T)


class GPT2(layers.Transformer):
  """GPT-2 with `gm.nn.Transformer`'s call contract (see `tpt_jax.layers`);
  fields as `layers.Transformer`'s (`config`: a `GPT2Config`, `dtype`,
  `remat`, `remat_policy`)."""
  embedder_class = Embedder
  block_class = Block
  norm_class = LayerNorm


# ------------------------------------------------------------ HF mapping ---


def config_from_hf(config_json: dict[str, Any]) -> GPT2Config:
  """The GPT2Config of a Hugging Face GPT-2 `config.json`."""
  try:
    embed_dim = config_json['n_embd']
    inner = config_json.get('n_inner')
    if inner not in (None, 4 * embed_dim):
      raise ValueError(f'config.json: n_inner={inner}; GPT-2 (and we) use '
                       f'4 * n_embd = {4 * embed_dim}.')
    activation = config_json.get('activation_function', 'gelu_new')
    if activation not in ('gelu_new', 'gelu_pytorch_tanh'):
      raise ValueError(f'config.json: activation_function={activation!r}; '
                       'we implement GPT-2\'s tanh GELU (gelu_new).')
    for flag in ('scale_attn_by_inverse_layer_idx', 'reorder_and_upcast_attn'):
      if config_json.get(flag):
        raise ValueError(f'config.json: {flag} is set; GPT-2 leaves it off '
                         'and we do not implement it.')
    return GPT2Config(
        num_embed=config_json['vocab_size'],
        embed_dim=embed_dim,
        num_heads=config_json['n_head'],
        num_layers=config_json['n_layer'],
        max_positions=config_json.get('n_positions', 1024),
        norm_eps=float(config_json.get('layer_norm_epsilon', 1e-5)),
        bos_token_id=int(config_json.get('bos_token_id', 50256)),
        eos_token_id=int(config_json.get('eos_token_id', 50256)),
    )
  except KeyError as e:
    raise ValueError(f'config.json lacks the field {e.args[0]!r}.') from e


def hf_config_json(config: GPT2Config) -> dict[str, Any]:
  """The Hugging Face `config.json` of an architecture."""
  return {
      'architectures': ['GPT2LMHeadModel'],
      'model_type': MODEL_TYPE,
      'vocab_size': config.num_embed,
      'n_embd': config.embed_dim,
      'n_head': config.num_heads,
      'n_layer': config.num_layers,
      'n_positions': config.max_positions,
      'n_inner': None,
      'activation_function': 'gelu_new',
      'layer_norm_epsilon': config.norm_eps,
      'scale_attn_weights': True,
      'tie_word_embeddings': True,
      'bos_token_id': config.bos_token_id,
      'eos_token_id': config.eos_token_id,
  }


_NORM_NAMES = (('ln_1', 'pre_attention_norm'), ('ln_2', 'pre_ffw_norm'))


def _prefix(tensors: dict[str, Any]) -> str:
  """'transformer.' (GPT2LMHeadModel's names) or '' (the hub's gpt2)."""
  return '' if 'wte.weight' in tensors else 'transformer.'


def hf_shapes(config: GPT2Config, prefix: str = 'transformer.'
              ) -> dict[str, tuple[int, ...]]:
  """The weight tensors (and shapes) a HF checkpoint of `config` holds."""
  d, f = config.embed_dim, config.hidden_dim
  shapes = {f'{prefix}wte.weight': (config.num_embed, d),
            f'{prefix}wpe.weight': (config.max_positions, d),
            f'{prefix}ln_f.weight': (d,), f'{prefix}ln_f.bias': (d,)}
  for i in range(config.num_layers):
    p = f'{prefix}h.{i}.'
    shapes.update({
        p + 'attn.c_attn.weight': (d, 3 * d), p + 'attn.c_attn.bias': (3 * d,),
        p + 'attn.c_proj.weight': (d, d), p + 'attn.c_proj.bias': (d,),
        p + 'mlp.c_fc.weight': (d, f), p + 'mlp.c_fc.bias': (f,),
        p + 'mlp.c_proj.weight': (f, d), p + 'mlp.c_proj.bias': (d,),
    })
    for hf_norm, _ in _NORM_NAMES:
      shapes[f'{p}{hf_norm}.weight'] = (d,)
      shapes[f'{p}{hf_norm}.bias'] = (d,)
  return shapes


def hf_readers(tensors: dict[str, np.ndarray], config: GPT2Config
               ) -> dict[str, hf_layout.Reader]:
  """Our param name -> (shape, shard reader) over the HF tensors."""
  prefix = _prefix(tensors)
  view = hf_layout.view
  d, h, hd = config.embed_dim, config.num_heads, config.head_dim
  readers = {
      'embedder/input_embedding': view(tensors[f'{prefix}wte.weight']),
      'embedder/position_embedding': view(tensors[f'{prefix}wpe.weight']),
      'final_norm/scale': view(tensors[f'{prefix}ln_f.weight']),
      'final_norm/bias': view(tensors[f'{prefix}ln_f.bias']),
  }
  for i in range(config.num_layers):
    p, o = f'{prefix}h.{i}.', f'layer_{i}/'
    readers.update({
        o + 'attn/qkv_einsum/w': view(
            tensors[p + 'attn.c_attn.weight'],
            lambda w: w.reshape(d, 3, h, hd).transpose(1, 2, 0, 3)),
        o + 'attn/qkv_bias': view(tensors[p + 'attn.c_attn.bias'],
                                  lambda b: b.reshape(3, h, hd)),
        o + 'attn/attn_vec_einsum/w': view(tensors[p + 'attn.c_proj.weight'],
                                           lambda w: w.reshape(h, hd, d)),
        o + 'attn/attn_vec_bias': view(tensors[p + 'attn.c_proj.bias']),
        o + 'mlp/up_einsum': view(tensors[p + 'mlp.c_fc.weight']),
        o + 'mlp/up_bias': view(tensors[p + 'mlp.c_fc.bias']),
        o + 'mlp/linear': view(tensors[p + 'mlp.c_proj.weight']),
        o + 'mlp/linear_bias': view(tensors[p + 'mlp.c_proj.bias']),
    })
    for hf_norm, our_norm in _NORM_NAMES:
      readers[f'{o}{our_norm}/scale'] = view(tensors[f'{p}{hf_norm}.weight'])
      readers[f'{o}{our_norm}/bias'] = view(tensors[f'{p}{hf_norm}.bias'])
  return readers


def expected_hf_shapes(tensors: dict[str, Any], config: GPT2Config
                       ) -> dict[str, tuple[int, ...]]:
  """`hf_shapes` under the naming `tensors` uses (with or without
  'transformer.')."""
  return hf_shapes(config, _prefix(tensors))


def to_hf(flat: dict[str, np.ndarray], config: GPT2Config
          ) -> dict[str, np.ndarray]:
  """Our flat params -> HF tensors (GPT2LMHeadModel's names)."""
  d, h, hd = config.embed_dim, config.num_heads, config.head_dim
  prefix = 'transformer.'
  hf = {f'{prefix}wte.weight': flat['embedder/input_embedding'],
        f'{prefix}wpe.weight': flat['embedder/position_embedding'],
        f'{prefix}ln_f.weight': flat['final_norm/scale'],
        f'{prefix}ln_f.bias': flat['final_norm/bias']}
  for i in range(config.num_layers):
    p, o = f'{prefix}h.{i}.', f'layer_{i}/'
    hf.update({
        p + 'attn.c_attn.weight': (flat[o + 'attn/qkv_einsum/w']
                                   .transpose(2, 0, 1, 3).reshape(d, 3 * d)),
        p + 'attn.c_attn.bias': flat[o + 'attn/qkv_bias'].reshape(3 * d),
        p + 'attn.c_proj.weight': (flat[o + 'attn/attn_vec_einsum/w']
                                   .reshape(h * hd, d)),
        p + 'attn.c_proj.bias': flat[o + 'attn/attn_vec_bias'],
        p + 'mlp.c_fc.weight': flat[o + 'mlp/up_einsum'],
        p + 'mlp.c_fc.bias': flat[o + 'mlp/up_bias'],
        p + 'mlp.c_proj.weight': flat[o + 'mlp/linear'],
        p + 'mlp.c_proj.bias': flat[o + 'mlp/linear_bias'],
    })
    for hf_norm, our_norm in _NORM_NAMES:
      hf[f'{p}{hf_norm}.weight'] = flat[f'{o}{our_norm}/scale']
      hf[f'{p}{hf_norm}.bias'] = flat[f'{o}{our_norm}/bias']
  return hf
