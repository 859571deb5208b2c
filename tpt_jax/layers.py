"""Attention, KV cache and block loop shared by the non-Gemma families.

Every family honours the call contract of `gm.nn.Transformer` (the one the
sampler and the trainer use):

  module.apply({'params': p}, tokens [B, L], positions=[B, L],
               cache=..., attention_mask=[B, L, cache_length],
               return_last_only=bool) -> gm.nn.Output(logits, cache, ...)

and its cache layout: one dict per layer `layer_i` with `k`, `v`
`[B, cache_length, kv_heads, head_dim]`, `positions` `[B, cache_length]` and
`end_index` `[B]`; a call writes its keys/values at slot `end_index[0]` for
the whole batch and advances `end_index` by the call's length. Without
`positions` / `attention_mask` the call is a plain causal pass over `tokens`.
"""

from __future__ import annotations

from typing import Any, Callable, Sequence

from flax import linen as nn
import jax
import jax.numpy as jnp

from tpt_jax import _gemma_compat  # pylint: disable=unused-import  # Must precede gemma.
from gemma import gm  # pylint: disable=g-bad-import-order

Output = gm.nn.Output
LayerCache = dict[str, jax.Array]
Cache = dict[str, LayerCache]

# Attention logit of a masked-out slot (gemma's value).
K_MASK = -2.3819763e38


def init_cache(*, num_layers: int, num_kv_heads: int, head_dim: int,
               batch_size: int, dtype: Any, cache_length: int) -> Cache:
  """An empty cache in `gm.nn.Attention.init_cache`'s layout."""
  if cache_length is None:
    raise ValueError('init_cache needs cache_length=.')
  def layer():
    return {
        'k': jnp.zeros((batch_size, cache_length, num_kv_heads, head_dim),
                       dtype),
        'v': jnp.zeros((batch_size, cache_length, num_kv_heads, head_dim),
                       dtype),
        'end_index': jnp.zeros((batch_size,), jnp.int32),
        'positions': jnp.zeros((batch_size, cache_length), jnp.int32),
    }
  return {f'layer_{i}': layer() for i in range(num_layers)}


def default_inputs(tokens: jax.Array, positions: jax.Array | None,
                   attention_mask: jax.Array | None, cache: Cache | None
                   ) -> tuple[jax.Array, jax.Array]:
  """Positions `[B, L]` and mask `[B, L, S]`; causal over `tokens` if not
  given."""
  batch, length = tokens.shape
  if positions is None:
    positions = jnp.broadcast_to(jnp.arange(length)[None], (batch, length))
  if attention_mask is None:
    if cache is not None:
      raise ValueError('A call with a cache needs attention_mask= (which '
                       'cache slots each token sees).')
    causal = jnp.tril(jnp.ones((length, length), jnp.bool_))
    attention_mask = jnp.broadcast_to(causal[None], (batch, length, length))
  return positions, attention_mask


def attend(query: jax.Array, key: jax.Array, value: jax.Array, *,
           positions: jax.Array, cache: LayerCache | None,
           attention_mask: jax.Array, scale: float
           ) -> tuple[LayerCache | None, jax.Array]:
  """Scaled dot-product attention with grouped-query heads and the cache.

  Args:
    query: `[B, T, N, H]`.
    key, value: `[B, T, K, H]` with N a multiple of K.
    positions: `[B, T]`, stored in the cache next to the keys.
    cache: this layer's cache or None (then keys are this call's only).
    attention_mask: `[B, T, S]`, S the cache length (or T without cache).
    scale: multiplies the query (1/sqrt(head_dim) for Llama and GPT-2).

  Returns:
    The updated layer cache (None without one) and `[B, T, N, H]`.
  """
  new_cache = None
  if cache is not None:
    end_index = cache['end_index'][0]
    slot = end_index % cache['v'].shape[1]
    key = jax.lax.dynamic_update_slice(cache['k'], key.astype(cache['k'].dtype),
                                       (0, slot, 0, 0))
    value = jax.lax.dynamic_update_slice(
        cache['v'], value.astype(cache['v'].dtype), (0, slot, 0, 0))
    cache_positions = jax.lax.dynamic_update_slice(
        cache['positions'], positions.astype(jnp.int32), (0, slot))
    new_cache = {'k': key, 'v': value,
                 'end_index': cache['end_index'] + query.shape[1],
                 'positions': cache_positions}
  batch, length, num_heads, head_dim = query.shape
  num_kv_heads = key.shape[2]
  if num_heads % num_kv_heads:
    raise ValueError(f'{num_heads} query heads do not divide into '
                     f'{num_kv_heads} key/value heads.')
  groups = num_heads // num_kv_heads
  query = (query * scale).reshape(batch, length, num_kv_heads, groups,
                                  head_dim)
  logits = jnp.einsum('BTKGH,BSKH->BTKGS', query, key.astype(query.dtype))
  mask = attention_mask[:, :, None, None, :]
  logits = jnp.where(mask, logits, K_MASK)
  probs = jax.nn.softmax(logits.astype(jnp.float32), axis=-1)
  encoded = jnp.einsum('BTKGS,BSKH->BTKGH', probs.astype(value.dtype), value)
  encoded = encoded.reshape(batch, length, num_heads, head_dim)
  return new_cache, encoded.astype(query.dtype)


def _call_block(block: nn.Module, x, positions, cache, attention_mask):
  return block(x, positions, cache, attention_mask)


def run_blocks(blocks: Sequence[nn.Module], x: jax.Array, *,
               positions: jax.Array, cache: Cache | None,
               attention_mask: jax.Array, remat: bool = False,
               remat_policy: Callable[..., Any] | None = None
               ) -> tuple[jax.Array, Cache | None]:
  """Runs the blocks in order; with `remat` (and no cache) each block is
  under flax's lifted `nn.remat` with `remat_policy` (None saves nothing)."""
  call = _call_block
  if remat and cache is None:
    call = nn.remat(_call_block, policy=remat_policy)
  new_cache = {}
  for i, block in enumerate(blocks):
    layer_cache = None if cache is None else cache[f'layer_{i}']
    layer_cache, x = call(block, x, positions, layer_cache, attention_mask)
    new_cache[f'layer_{i}'] = layer_cache
  return x, (None if cache is None else new_cache)


def last_only(x: jax.Array) -> jax.Array:
  """`[B, L, D]` -> `[B, D]`: the last column (prompts are left-padded)."""
  return x[:, -1]
