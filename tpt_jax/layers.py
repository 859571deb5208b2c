"""Attention, KV caches, block and model shared by the non-Gemma families.

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

A `PagedCache` in place of that cache runs one decode step of the
continuous-batching engine instead: one token per slot, each at its own
position, its keys / values written to the slot's own pages of the pool
(`tpt_jax.paged_kv`) and attention over those pages; no mask is needed (the
page layout says what each slot sees). So the families' paged decode path
(`decode_models`) is their own forward pass, block for block.

`PreNormBlock` and `Transformer` are the block and the model both families
share (norm, attention and MLP classes are each family's).
"""

from __future__ import annotations

from typing import Any, Callable, ClassVar, Sequence

import flax
from flax import linen as nn
import jax
import jax.numpy as jnp

from tpt_jax import paged_kv
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


@flax.struct.dataclass
class PagedCache:
  """The cache of one paged decode step (see the module docstring).

  Attributes:
    kv: the pool, every layer.
    layout: the step's page layout (`layout.positions` must equal the
      positions the call is given).
    layer: the layer that reads and writes (set by `run_blocks`).
  """
  kv: paged_kv.PagedKV
  layout: paged_kv.PageLayout
  layer: int = flax.struct.field(pytree_node=False, default=0)


def default_inputs(tokens: jax.Array, positions: jax.Array | None,
                   attention_mask: jax.Array | None,
                   cache: Cache | PagedCache | None
                   ) -> tuple[jax.Array, jax.Array | None]:
  """Positions `[B, L]` and mask `[B, L, S]`; causal over `tokens` if not
  given (a paged step: its layout's positions, no mask)."""
  batch, length = tokens.shape
  if isinstance(cache, PagedCache):
    if length != 1:
      raise ValueError(f'A paged decode step feeds one token per slot, not '
                       f'{length}.')
    return cache.layout.positions[:, None], None
  if positions is None:
    positions = jnp.broadcast_to(jnp.arange(length)[None], (batch, length))
  if attention_mask is None:
    if cache is not None:
      raise ValueError('A call with a cache needs attention_mask= (which '
                       'cache slots each token sees).')
    causal = jnp.tril(jnp.ones((length, length), jnp.bool_))
    attention_mask = jnp.broadcast_to(causal[None], (batch, length, length))
  return positions, attention_mask


def _num_groups(num_heads: int, num_kv_heads: int) -> int:
  if num_heads % num_kv_heads:
    raise ValueError(f'{num_heads} query heads do not divide into '
                     f'{num_kv_heads} key/value heads.')
  return num_heads // num_kv_heads


def attend(query: jax.Array, key: jax.Array, value: jax.Array, *,
           positions: jax.Array, cache: LayerCache | PagedCache | None,
           attention_mask: jax.Array | None, scale: float
           ) -> tuple[LayerCache | PagedCache | None, jax.Array]:
  """Scaled dot-product attention with grouped-query heads and the cache.

  Args:
    query: `[B, T, N, H]`.
    key, value: `[B, T, K, H]` with N a multiple of K (query head n reads
      key/value head n // (N / K), as Hugging Face's `repeat_kv`).
    positions: `[B, T]`, stored in the cache next to the keys.
    cache: this layer's cache, a `PagedCache` (T = 1, B slots) or None (then
      keys are this call's only).
    attention_mask: `[B, T, S]`, S the cache length (or T without cache);
      None with a `PagedCache`.
    scale: multiplies the query (1/sqrt(head_dim) for Llama and GPT-2).

  Returns:
    The updated cache (None without one) and `[B, T, N, H]`.
  """
  if isinstance(cache, PagedCache):
    return _attend_paged(query, key, value, cache=cache, scale=scale)
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
  groups = _num_groups(num_heads, num_kv_heads)
  query = (query * scale).reshape(batch, length, num_kv_heads, groups,
                                  head_dim)
  logits = jnp.einsum('BTKGH,BSKH->BTKGS', query, key.astype(query.dtype))
  mask = attention_mask[:, :, None, None, :]
  logits = jnp.where(mask, logits, K_MASK)
  probs = jax.nn.softmax(logits.astype(jnp.float32), axis=-1)
  encoded = jnp.einsum('BTKGS,BSKH->BTKGH', probs.astype(value.dtype), value)
  encoded = encoded.reshape(batch, length, num_heads, head_dim)
  return new_cache, encoded.astype(query.dtype)


def _attend_paged(query: jax.Array, key: jax.Array, value: jax.Array, *,
                  cache: PagedCache, scale: float
                  ) -> tuple[PagedCache, jax.Array]:
  """`attend` for one token per slot over the slots' pages: writes the
  token's key / value at its position, then attends over the slot's keys up
  to it (`paged_kv.paged_attention`, no window, no soft cap)."""
  num_slots, _, num_heads, head_dim = query.shape
  num_kv_heads = key.shape[2]
  groups = _num_groups(num_heads, num_kv_heads)
  layer, layout = cache.layer, cache.layout
  kv = paged_kv.PagedKV(
      k=paged_kv.write_step(cache.kv.k, layer, key[:, 0], layout),
      v=paged_kv.write_step(cache.kv.v, layer, value[:, 0], layout))
  grouped = (query[:, 0] * scale).reshape(num_slots, num_kv_heads, groups,
                                          head_dim)
  encoded = paged_kv.paged_attention(grouped, kv.k[layer], kv.v[layer],
                                     layout, sliding_window=None,
                                     logits_soft_cap=None)
  encoded = encoded.reshape(num_slots, 1, num_heads, head_dim)
  return cache.replace(kv=kv), encoded.astype(query.dtype)


def _call_block(block: nn.Module, x, positions, cache, attention_mask):
  return block(x, positions, cache, attention_mask)


def run_blocks(blocks: Sequence[nn.Module], x: jax.Array, *,
               positions: jax.Array, cache: Cache | PagedCache | None,
               attention_mask: jax.Array | None, remat: bool = False,
               remat_policy: Callable[..., Any] | None = None
               ) -> tuple[jax.Array, Cache | PagedCache | None]:
  """Runs the blocks in order; with `remat` (and no cache) each block is
  under flax's lifted `nn.remat` with `remat_policy` (None saves nothing).
  A `PagedCache` (the whole pool) goes from each block to the next."""
  call = _call_block
  if remat and cache is None:
    call = nn.remat(_call_block, policy=remat_policy)
  if isinstance(cache, PagedCache):
    for i, block in enumerate(blocks):
      cache, x = call(block, x, positions, cache.replace(layer=i),
                      attention_mask)
    return x, cache
  new_cache = {}
  for i, block in enumerate(blocks):
    layer_cache = None if cache is None else cache[f'layer_{i}']
    layer_cache, x = call(block, x, positions, layer_cache, attention_mask)
    new_cache[f'layer_{i}'] = layer_cache
  return x, (None if cache is None else new_cache)


def last_only(x: jax.Array) -> jax.Array:
  """`[B, L, D]` -> `[B, D]`: the last column (prompts are left-padded)."""
  return x[:, -1]


# ---------------------------------------------------- shared modules ---


class PreNormBlock(nn.Module):
  """Pre-norm attention and MLP, each with a residual (Llama's and GPT-2's
  block). A family's subclass names its classes: `norm_class(eps, dtype)`,
  `attention_class(config, dtype)` (called as `(x, positions, cache,
  attention_mask) -> (cache, out)`) and `feed_forward_class(config, dtype)`.
  """
  config: Any
  dtype: Any
  norm_class: ClassVar[type[nn.Module]]
  attention_class: ClassVar[type[nn.Module]]
  feed_forward_class: ClassVar[type[nn.Module]]

  def setup(self):
    eps = self.config.norm_eps
    self.pre_attention_norm = self.norm_class(eps, self.dtype)
    self.attn = self.attention_class(self.config, self.dtype)
    self.pre_ffw_norm = self.norm_class(eps, self.dtype)
    self.mlp = self.feed_forward_class(self.config, self.dtype)

  def __call__(self, x, positions, cache, attention_mask):
    cache, attended = self.attn(self.pre_attention_norm(x), positions, cache,
                                attention_mask)
    x = x + attended
    return cache, x + self.mlp(self.pre_ffw_norm(x))


class Transformer(nn.Module):
  """Embedding, `config.num_layers` blocks, a final norm and the output
  projection, with `gm.nn.Transformer`'s call contract (module docstring).

  A family's subclass names `embedder_class(config, dtype)` (with
  `encode(tokens, positions)` and `decode(x)`), `block_class` (a
  `PreNormBlock`) and `norm_class(eps, dtype)`.

  Attributes:
    config: the architecture.
    dtype: dtype of the params it creates.
    remat: run each block under `nn.remat` when there is no cache.
    remat_policy: a `jax.checkpoint_policies` policy (None: save nothing).
  """
  config: Any
  dtype: Any = jnp.bfloat16
  remat: bool = False
  remat_policy: Callable[..., Any] | None = None
  embedder_class: ClassVar[type[nn.Module]]
  block_class: ClassVar[type[nn.Module]]
  norm_class: ClassVar[type[nn.Module]]

  def setup(self):
    self.embedder = self.embedder_class(self.config, self.dtype)
    self.blocks = [self.block_class(self.config, self.dtype,
                                    name=f'layer_{i}')
                   for i in range(self.config.num_layers)]
    self.final_norm = self.norm_class(self.config.norm_eps, self.dtype)

  def __call__(self, tokens: jax.Array, *, positions: jax.Array | None = None,
               cache: Cache | PagedCache | None = None,
               attention_mask: jax.Array | None = None,
               return_last_only: bool | None = None,
               return_hidden_states: bool | None = None) -> Output:
    positions, attention_mask = default_inputs(
        tokens, positions, attention_mask, cache)
    x = self.embedder.encode(tokens, positions)
    x, new_cache = run_blocks(
        self.blocks, x, positions=positions, cache=cache,
        attention_mask=attention_mask, remat=self.remat,
        remat_policy=self.remat_policy)
    x = self.final_norm(x)
    if return_last_only:
      x = last_only(x)
    return Output(logits=self.embedder.decode(x), cache=new_cache,
                  hidden_states=x if return_hidden_states else None)
