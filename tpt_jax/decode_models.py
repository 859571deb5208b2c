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

`Gemma2Decoder` implements it for `gm.nn.Transformer` with the params in the
library's own layout (the tree `gm.nn.Transformer` uses): prefill *is* the
library's forward pass; the decode step re-states the library's block
(pre/post norms, GQA, RoPE, query pre-attention scaling, attention and final
logit soft-capping, sliding-window layers alternating with global ones) with
attention over pages. tests/test_sampling_continuous.py checks its logits
against `gm.nn.Transformer`. Another family adds a class with these two
methods and a branch in `decoder_for`.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Protocol

import flax.linen as nn
import jax
import jax.numpy as jnp

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


def _rms_norm(x: jax.Array, scale: jax.Array) -> jax.Array:
  """gemma's RMSNorm (`_layers.RMSNorm`), same operations in the same order."""
  var = jnp.mean(jnp.square(x), axis=-1, keepdims=True)
  return x * jax.lax.rsqrt(var + 1e-06) * (1 + scale)


@dataclasses.dataclass(frozen=True)
class Gemma2Decoder:
  """`PagedDecoder` for `gm.nn.Transformer` (Gemma2 and its toy variants)."""
  model: models.Model

  @property
  def config(self) -> gm.nn.config.TransformerConfig:
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
    batch, length = tokens.shape
    index = jnp.arange(length)
    positions = jnp.broadcast_to(index[None, :], (batch, length))
    mask = (index[None, None, :] <= index[None, :, None]) & (
        index[None, None, :] < lengths[:, None, None])
    cache = self.config.init_cache(batch_size=batch, dtype=self.dtype,
                                   cache_length=length)
    out = self.model.apply(params, tokens, positions=positions, cache=cache,
                           attention_mask=mask, return_last_only=True)
    layers = [out.cache[f'layer_{i}'] for i in range(self.num_layers)]
    return (jnp.stack([layer['k'] for layer in layers]),
            jnp.stack([layer['v'] for layer in layers]))

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


def decoder_for(model: Any) -> PagedDecoder:
  """The paged decode path of `model`'s family.

  Raises:
    ValueError: a family without one (use the static engine for it).
  """
  module = getattr(model, 'module', None)
  if isinstance(module, gm.nn.Transformer) and getattr(
      module.config, 'vision_encoder', None) is None:
    return Gemma2Decoder(model)
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
