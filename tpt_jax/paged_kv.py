"""A paged KV cache and the attention of one decode step over it (pure jax).

The continuous-batching engine (`tpt_jax.sampling_continuous`) keeps the keys
and values of every decode slot in one pool of fixed-size pages:

  k, v: [num_layers, num_pages, page_size, num_kv_heads, head_dim]

Slot s owns the pages `page_table[s]` (in the order of its sequence: page j
holds its positions j * page_size ... (j + 1) * page_size - 1; unused entries
hold `num_pages`, which points past the pool). The host hands out pages as
slots grow, so the pool only needs room for the tokens slots really hold, not
for `num_slots x longest possible row`.

Why pages pay (measured, see scripts/bench_sampler.py): a step's attention
runs over the *pool* (every page against the query of the slot that owns
it), so its cost follows the tokens held, while a dense per-slot cache costs
`num_slots x cache length` however short the rows are. Free pages are
computed too (fixed shapes) and masked out.

Determinism: a page's partial softmax (its max, sum and weighted values) is
combined with the others of its slot in the slot's page order (a gather by
`page_table`, then a reduction over that axis), so a slot's output does not
depend on which physical pages it got or what other slots hold.
"""

from __future__ import annotations

from typing import Any

import flax
import jax
import jax.numpy as jnp

# Logit of masked keys in the windowed path (gemma's K_MASK).
_MASK_VALUE = -2.3819763e38


@flax.struct.dataclass
class PagedKV:
  """Keys and values of all layers, in pages.

  Attributes:
    k: [num_layers, num_pages, page_size, num_kv_heads, head_dim].
    v: same shape as k.
  """
  k: jax.Array
  v: jax.Array

  @property
  def num_pages(self) -> int:
    return self.k.shape[1]

  @property
  def page_size(self) -> int:
    return self.k.shape[2]


def init_paged_kv(*, num_layers: int, num_pages: int, page_size: int,
                  num_kv_heads: int, head_dim: int, dtype: Any) -> PagedKV:
  shape = (num_layers, num_pages, page_size, num_kv_heads, head_dim)
  return PagedKV(k=jnp.zeros(shape, dtype), v=jnp.zeros(shape, dtype))


@flax.struct.dataclass
class PageLayout:
  """Where each slot's tokens live, for one decode step.

  Attributes:
    page_table: [num_slots, max_pages_per_slot] page ids (num_pages: none).
    positions: [num_slots] position of the token fed this step.
    writing: [num_slots] whether the slot writes its token (running slots).
    page_owner: [num_pages] slot owning each page (-1: free).
    page_start: [num_pages] position of each page's first token.
  """
  page_table: jax.Array
  positions: jax.Array
  writing: jax.Array
  page_owner: jax.Array
  page_start: jax.Array


def page_layout(page_table: jax.Array, positions: jax.Array,
                writing: jax.Array, *, num_pages: int, page_size: int
                ) -> PageLayout:
  """Derives each page's owner and first position from the page table."""
  num_slots, max_pages = page_table.shape
  slots = jnp.broadcast_to(jnp.arange(num_slots)[:, None], page_table.shape)
  starts = jnp.broadcast_to(jnp.arange(max_pages)[None, :] * page_size,
                            page_table.shape)
  owner = jnp.full((num_pages,), -1, jnp.int32).at[page_table.reshape(-1)].set(
      slots.reshape(-1).astype(jnp.int32), mode='drop')
  start = jnp.zeros((num_pages,), jnp.int32).at[page_table.reshape(-1)].set(
      starts.reshape(-1).astype(jnp.int32), mode='drop')
  return PageLayout(page_table=page_table, positions=positions,
                    writing=writing, page_owner=owner, page_start=start)


def write_step(pool: jax.Array, layer: int, values: jax.Array,
               layout: PageLayout) -> jax.Array:
  """Writes one token's [num_slots, num_kv_heads, head_dim] of a layer at
  each writing slot's position (others are dropped)."""
  page_size = pool.shape[2]
  num_pages = pool.shape[1]
  page_index = layout.positions // page_size
  page = jnp.take_along_axis(layout.page_table, page_index[:, None],
                             axis=1)[:, 0]
  page = jnp.where(layout.writing, page, num_pages)
  return pool.at[layer, page, layout.positions % page_size].set(
      values.astype(pool.dtype), mode='drop')


def paged_attention(queries: jax.Array, k_pages: jax.Array,
                    v_pages: jax.Array, layout: PageLayout, *,
                    sliding_window: int | None,
                    logits_soft_cap: float | None) -> jax.Array:
  """Attention of each slot's query over its own pages.

  Args:
    queries: [num_slots, num_kv_heads, group, head_dim], already scaled.
    k_pages, v_pages: [num_pages, page_size, num_kv_heads, head_dim] (one
      layer).
    layout: the step's page layout.
    sliding_window: a key at position p is seen from position q when
      q - window < p (gemma's local layers); None: all keys up to q.
    logits_soft_cap: tanh soft-capping of the attention logits, if any.

  Returns:
    [num_slots, num_kv_heads, group, head_dim] attention outputs (garbage for
    slots that own no valid key, which the caller ignores).
  """
  num_pages, page_size = k_pages.shape[:2]
  num_slots = queries.shape[0]
  if sliding_window is not None and (
      window_pages(sliding_window, page_size) * num_slots < num_pages):
    return _windowed_attention(queries, k_pages, v_pages, layout,
                               sliding_window=sliding_window,
                               logits_soft_cap=logits_soft_cap)
  owner = jnp.maximum(layout.page_owner, 0)
  page_queries = jnp.take(queries, owner, axis=0)  # [N, K, G, D]
  # Multiply-and-reduce rather than a batched matmul: XLA:CPU runs
  # thousands of tiny [group, head_dim] x [head_dim, page] dots slowly, while
  # this fuses into one pass over the pages. Without grouping (G = 1, e.g.
  # GPT-2) the same sums skip the size-1 axis, which made XLA:CPU's fused
  # loops ~10x slower (measured: 17 -> 1.4 ms for 1280 pages of 16 x 4 x 16).
  grouped = queries.shape[2] > 1
  if grouped:
    logits = jnp.sum(page_queries[:, None].astype(jnp.float32)
                     * k_pages[:, :, :, None].astype(jnp.float32), axis=-1)
  else:
    logits = jnp.sum(page_queries[:, None, :, 0].astype(jnp.float32)
                     * k_pages.astype(jnp.float32), axis=-1)[..., None]
  logits = jnp.moveaxis(logits, 1, -1)  # [N, K, G, P]
  if logits_soft_cap is not None:
    logits = jnp.tanh(logits / logits_soft_cap) * logits_soft_cap
  key_positions = layout.page_start[:, None] + jnp.arange(page_size)[None, :]
  query_positions = jnp.take(layout.positions, owner)[:, None]
  valid = (layout.page_owner >= 0)[:, None] & (
      key_positions <= query_positions)
  if sliding_window is not None:
    valid &= key_positions > query_positions - sliding_window
  logits = jnp.where(valid[:, None, None, :], logits, -jnp.inf)
  page_max = jnp.max(logits, axis=-1)  # [N, K, G]
  safe_max = jnp.where(jnp.isfinite(page_max), page_max, 0.0)
  weights = jnp.exp(logits - safe_max[..., None])
  page_sum = jnp.sum(weights, axis=-1)
  if grouped:
    page_out = jnp.sum(jnp.moveaxis(weights, -1, 1)[..., None]
                       * v_pages[:, :, :, None].astype(jnp.float32), axis=1)
  else:
    page_out = jnp.sum(jnp.moveaxis(weights[:, :, 0], -1, 1)[..., None]
                       * v_pages.astype(jnp.float32), axis=1)[:, :, None]
  # Combine the pages of each slot in its sequence order.
  table = layout.page_table
  slot_page_max = jnp.take(page_max, table, axis=0, mode='fill',
                           fill_value=-jnp.inf)  # [S, M, K, G]
  slot_max = jnp.max(slot_page_max, axis=1, keepdims=True)
  slot_max = jnp.where(jnp.isfinite(slot_max), slot_max, 0.0)
  scale = jnp.exp(slot_page_max - slot_max)  # 0 for missing pages.
  total = jnp.sum(jnp.take(page_sum, table, axis=0, mode='fill',
                           fill_value=0.0) * scale, axis=1)
  out = jnp.sum(jnp.take(page_out, table, axis=0, mode='fill',
                         fill_value=0.0) * scale[..., None], axis=1)
  out = out / jnp.where(total > 0, total, 1.0)[..., None]
  return out.astype(queries.dtype)


def window_pages(sliding_window: int, page_size: int) -> int:
  """Pages that can hold a query's key window (the query's page included)."""
  return -(-(sliding_window - 1) // page_size) + 1


def _windowed_attention(queries: jax.Array, k_pages: jax.Array,
                        v_pages: jax.Array, layout: PageLayout, *,
                        sliding_window: int,
                        logits_soft_cap: float | None) -> jax.Array:
  """Sliding-window attention over only the pages the window touches.

  Used where those pages (for all slots) are fewer than the pool: a local
  layer's cost then follows the window, not the tokens held. Pages are
  gathered in the slot's sequence order, so the result does not depend on
  which physical pages a slot got.
  """
  num_pages, page_size = k_pages.shape[:2]
  num_slots, num_kv_heads, group, head_dim = queries.shape
  count = window_pages(sliding_window, page_size)
  positions = layout.positions
  index = positions[:, None] // page_size - jnp.arange(count)[::-1][None, :]
  pages = jnp.take_along_axis(layout.page_table, jnp.maximum(index, 0),
                              axis=1)
  pages = jnp.where(index >= 0, pages, num_pages)
  keys = jnp.take(k_pages, pages, axis=0, mode='fill', fill_value=0)
  values = jnp.take(v_pages, pages, axis=0, mode='fill', fill_value=0)
  length = count * page_size
  keys = keys.reshape(num_slots, length, num_kv_heads, head_dim)
  values = values.reshape(num_slots, length, num_kv_heads, head_dim)
  logits = jnp.einsum('skgd,slkd->skgl', queries, keys,
                      preferred_element_type=jnp.float32)
  if logits_soft_cap is not None:
    logits = jnp.tanh(logits / logits_soft_cap) * logits_soft_cap
  key_positions = (index[:, :, None] * page_size
                   + jnp.arange(page_size)[None, None, :]).reshape(
                       num_slots, length)
  query_positions = positions[:, None]
  valid = (jnp.repeat(index >= 0, page_size, axis=1)
           & (key_positions <= query_positions)
           & (key_positions > query_positions - sliding_window))
  # A finite mask value (as gemma's K_MASK): a slot with no valid key gets
  # uniform weights instead of NaNs.
  logits = jnp.where(valid[:, None, None, :], logits, _MASK_VALUE)
  probs = jax.nn.softmax(logits, axis=-1)
  out = jnp.einsum('skgl,slkd->skgd', probs.astype(values.dtype), values,
                   preferred_element_type=jnp.float32)
  return out.astype(queries.dtype)


def copy_pages(kv: PagedKV, source: jax.Array, destination: jax.Array
               ) -> PagedKV:
  """Copies whole pages `source[i]` -> `destination[i]` in every layer
  (destination num_pages: skipped)."""
  def copy(pool):
    pages = jnp.take(pool, source, axis=1, mode='clip')
    return pool.at[:, destination].set(pages, mode='drop')
  return PagedKV(k=copy(kv.k), v=copy(kv.v))


def write_prompts(kv: PagedKV, k: jax.Array, v: jax.Array,
                  page_ids: jax.Array, lengths: jax.Array) -> PagedKV:
  """Scatters prefilled keys / values into pages.

  Args:
    kv: the pool.
    k, v: [num_layers, num_prompts, length, num_kv_heads, head_dim], token t
      of a prompt at position t.
    page_ids: [num_prompts, pages] the pages each prompt's positions go to.
    lengths: [num_prompts] tokens of each prompt to write (the rest dropped).
  """
  page_size = kv.page_size
  length = k.shape[2]
  positions = jnp.arange(length)
  page = jnp.take(page_ids, positions // page_size, axis=1, mode='clip')
  page = jnp.where(positions[None, :] < lengths[:, None], page, kv.num_pages)
  offset = jnp.broadcast_to(positions % page_size, page.shape)
  return PagedKV(
      k=kv.k.at[:, page, offset].set(k.astype(kv.k.dtype), mode='drop'),
      v=kv.v.at[:, page, offset].set(v.astype(kv.v.dtype), mode='drop'))
