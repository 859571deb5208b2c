"""Per-slot decode paths over a paged KV cache, one per model family.

`gm.nn.Attention` writes a step's keys / values at one cache index for the
whole batch (`cache['end_index'][0]`), so slots at different positions cannot
share its decode step. A `PagedDecoder` is the small interface the
continuous-batching engine needs from a model family instead:

  * `prefill(params, tokens, lengths)`: keys / values of right-padded prompts
    (token t at position t), every layer;
  * `decode_step(params, tokens, kv, layout)`: one token per slot, each at its
    own position (`layout.positions`), written to its own pages; returns the
    next-token logits.

Every family's prefill *is* its own forward pass (`_prefill`: a dense cache
as long as the prompts). The decode steps:

  * `LlamaDecoder`, `GPT2Decoder`: the family's own module (`llama.Llama`,
    `gpt2.GPT2`) applied to one token per slot with a `layers.PagedCache`,
    which makes its attention (`layers.attend`) write to and read from the
    slot's pages; RoPE with Llama-3.1's scaling, GQA, RMSNorm and SwiGLU, or
    GPT-2's learned positions (clamped past `max_positions`, as the static
    engine's prefill and decode do), biased LayerNorm, GELU and tied
    embedding, are the module's code, not a copy.
  * `Gemma2Decoder`: `gm.nn.Transformer` cannot be handed a paged cache, so
    its decode step re-states the library's block (pre/post norms, GQA, RoPE,
    query pre-attention scaling, attention and final logit soft-capping,
    sliding-window layers alternating with global ones) with attention over
    pages, on the params in the library's own layout.

`decoder_for` picks one by `model.family`. tests/test_decode_models.py checks
the Llama and GPT-2 paths against the families' full forward pass and the
static engine; tests/test_sampling_continuous.py the Gemma2 path against
`gm.nn.Transformer`. Another family adds a class with these two methods and
an entry in `_DECODERS` (a `layers.Transformer` module: a `_ModuleDecoder`).
"""

from __future__ import annotations

import dataclasses
from typing import Any, Protocol

import flax.linen as nn
import jax
import jax.numpy as jnp

from tpt_jax import gpt2
from tpt_jax import layers
from tpt_jax import llama
from tpt_jax import models
from tpt_jax import paged_kv
from gemma import gm  # pylint: disable=g-bad-import-order
from gemma.gm.math import _positional_embeddings  # pylint: disable=g-bad-import-order


class PagedDecoder(Protocol):
  """What the continuous engine needs from a model family."""

  @property
  def num_layers(self) -> int: ...

  @property
  def num_kv_heads(self) -> int: ...

  @property
  def head_dim(self) -> int: ...

  @property
  def vocab_size(self) -> int: ...

  @property
  def dtype(self) -> jnp.dtype: ...

  def prefill(self, params: models.Params, tokens: jax.Array,
              lengths: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Keys and values [num_layers, batch, length, kv_heads, head_dim] of
    right-padded prompts `tokens` [batch, length] (`lengths` real tokens)."""

  def decode_step(self, params: models.Params, tokens: jax.Array,
                  kv: paged_kv.PagedKV, layout: paged_kv.PageLayout
                  ) -> tuple[jax.Array, paged_kv.PagedKV]:
    """Feeds `tokens` [slots] at `layout.positions`; returns float32 logits
    [slots, vocab] and the pool with the tokens' keys / values written."""


def _prefill(model: models.Model, params: models.Params, tokens: jax.Array,
             lengths: jax.Array) -> tuple[jax.Array, jax.Array]:
  """`PagedDecoder.prefill` by the family's forward pass (any family: they
  share `gm.nn.Transformer`'s call contract and cache layout)."""
  batch, length = tokens.shape
  index = jnp.arange(length)
  positions = jnp.broadcast_to(index[None, :], (batch, length))
  mask = (index[None, None, :] <= index[None, :, None]) & (
      index[None, None, :] < lengths[:, None, None])
  cache = model.config.init_cache(batch_size=batch, dtype=model.compute_dtype,
                                  cache_length=length)
  out = model.apply(params, tokens, positions=positions, cache=cache,
                    attention_mask=mask, return_last_only=True)
  caches = [out.cache[f'layer_{i}'] for i in range(model.config.num_layers)]
  return (jnp.stack([layer['k'] for layer in caches]),
          jnp.stack([layer['v'] for layer in caches]))


def _rms_norm(x: jax.Array, scale: jax.Array) -> jax.Array:
  """gemma's RMSNorm (`_layers.RMSNorm`), same operations in the same order."""
  var = jnp.mean(jnp.square(x), axis=-1, keepdims=True)
  return x * jax.lax.rsqrt(var + 1e-06) * (1 + scale)


@dataclasses.dataclass(frozen=True)
class _Decoder:
  """What every family's decode path reads off its model; `prefill` is the
  family's own forward pass with a dense cache."""
  model: models.Model

  @property
  def config(self) -> Any:
    return self.model.config

  @property
  def num_layers(self) -> int:
    return self.config.num_layers

  @property
  def num_kv_heads(self) -> int:
    return self.config.num_kv_heads

  @property
  def head_dim(self) -> int:
    return self.config.head_dim

  @property
  def vocab_size(self) -> int:
    return self.config.num_embed

  @property
  def dtype(self) -> jnp.dtype:
    return self.model.compute_dtype

  def prefill(self, params: models.Params, tokens: jax.Array,
              lengths: jax.Array) -> tuple[jax.Array, jax.Array]:
    return _prefill(self.model, params, tokens, lengths)


class Gemma2Decoder(_Decoder):
  """`PagedDecoder` for `gm.nn.Transformer` (Gemma2 and its toy variants)."""

  def decode_step(self, params: models.Params, tokens: jax.Array,
                  kv: paged_kv.PagedKV, layout: paged_kv.PageLayout
                  ) -> tuple[jax.Array, paged_kv.PagedKV]:
    config = self.config
    params = models.cast(params, self.dtype)
    table = params['embedder']['input_embedding']
    x = table[tokens]
    x *= jnp.sqrt(config.embed_dim).astype(x.dtype)
    positions = layout.positions
    num_slots = tokens.shape[0]
    for i, attention_type in enumerate(config.attention_types):
      layer = params[f'layer_{i}']
      attention = layer['attn']
      normed = _rms_norm(x, layer['pre_attention_norm']['scale'])
      if 'qkv_einsum' in attention:
        query, key, value = jnp.einsum('SD,CNDH->CSNH', normed,
                                       attention['qkv_einsum']['w'])
      else:
        query = jnp.einsum('SD,NDH->SNH', normed, attention['q_einsum']['w'])
        key, value = jnp.einsum('SD,CKDH->CSKH', normed,
                                attention['kv_einsum']['w'])
      if config.use_qk_norm:
        query = _rms_norm(query, attention['_query_norm']['scale'])
        key = _rms_norm(key, attention['_key_norm']['scale'])
      local = attention_type == gm.nn.AttentionType.LOCAL_SLIDING
      rope = dict(
          base_frequency=(config.local_base_frequency if local
                          else config.global_base_frequency),
          scale_factor=(config.local_scale_factor if local
                        else config.global_scale_factor))
      query = _positional_embeddings.apply_rope(
          query[:, None], positions[:, None], **rope)[:, 0]
      key = _positional_embeddings.apply_rope(
          key[:, None], positions[:, None], **rope)[:, 0]
      query = query * config.query_pre_attn_scalar()
      kv = paged_kv.PagedKV(k=paged_kv.write_step(kv.k, i, key, layout),
                            v=paged_kv.write_step(kv.v, i, value, layout))
      num_kv_heads = key.shape[1]
      grouped = query.reshape(num_slots, num_kv_heads, -1, query.shape[-1])
      encoded = paged_kv.paged_attention(
          grouped, kv.k[i], kv.v[i], layout,
          sliding_window=config.sliding_window_size if local else None,
          logits_soft_cap=config.attn_logits_soft_cap)
      encoded = encoded.reshape(query.shape)
      out = jnp.einsum('SNH,NHD->SD', encoded,
                       attention['attn_vec_einsum']['w'])
      if config.use_post_attn_norm:
        out = _rms_norm(out, layer['post_attention_norm']['scale'])
      residual = out + x
      normed = _rms_norm(residual, layer['pre_ffw_norm']['scale'])
      gating = layer['mlp']['gating_einsum']
      equation = ('SF,NHF->SNH' if config.transpose_gating_einsum
                  else 'SF,NFH->SNH')
      gate = jnp.einsum(equation, normed, gating)
      hidden = nn.gelu(gate[:, 0]) * gate[:, 1]
      out = jnp.einsum('SH,HF->SF', hidden, layer['mlp']['linear'])
      if config.use_post_ffw_norm:
        out = _rms_norm(out, layer['post_ffw_norm']['scale'])
      x = out + residual
    x = _rms_norm(x, params['final_norm']['scale'])
    logits = jnp.dot(x, table.T)
    if config.final_logit_softcap is not None:
      logits = jnp.tanh(logits / config.final_logit_softcap) * (
          config.final_logit_softcap)
    return logits.astype(jnp.float32), kv


class _ModuleDecoder(_Decoder):
  """`PagedDecoder` of a `layers.Transformer` family: its module decodes
  with a `layers.PagedCache` (see the module docstring)."""

  def decode_step(self, params: models.Params, tokens: jax.Array,
                  kv: paged_kv.PagedKV, layout: paged_kv.PageLayout
                  ) -> tuple[jax.Array, paged_kv.PagedKV]:
    out = self.model.apply(params, tokens[:, None],
                           cache=layers.PagedCache(kv=kv, layout=layout),
                           return_last_only=True)
    return out.logits.astype(jnp.float32), out.cache.kv


class LlamaDecoder(_ModuleDecoder):
  """`PagedDecoder` for `llama.Llama` (every Llama-3 variant)."""


class GPT2Decoder(_ModuleDecoder):
  """`PagedDecoder` for `gpt2.GPT2` (every GPT-2 variant)."""


# Family -> (its module class, its decode path).
_DECODERS = {
    'gemma2': (gm.nn.Transformer, Gemma2Decoder),
    llama.FAMILY: (llama.Llama, LlamaDecoder),
    gpt2.FAMILY: (gpt2.GPT2, GPT2Decoder),
}


def decoder_for(model: Any) -> PagedDecoder:
  """The paged decode path of `model`'s family (`model.family`).

  Raises:
    ValueError: a family without one, or a module that is not the family's
      plain one (e.g. wrapped, or Gemma with a vision encoder): use the
      static engine for it.
  """
  module = getattr(model, 'module', None)
  try:
    family = model.family
  except (AttributeError, TypeError):  # Not a Model, or an unknown config.
    family = None
  module_class, decoder = _DECODERS.get(family, (None, None))
  if (decoder is not None and isinstance(module, module_class) and
      getattr(module.config, 'vision_encoder', None) is None):
    return decoder(model)
  raise ValueError(
      f'The continuous sampling engine has no decode path for '
      f'{type(module).__name__}; set config.sampling.engine="static" or add a '
      'PagedDecoder in tpt_jax/decode_models.py.')


def check_params(params: models.Params) -> None:
  """Rejects param trees the decode path would misread (LoRA adapters)."""
  for path, _ in jax.tree_util.tree_flatten_with_path(params)[0]:
    if 'lora' in jax.tree_util.keystr(path).lower():
      raise ValueError(
          'params hold LoRA adapters; merge them into the base weights before '
          'sampling with the continuous engine.')
