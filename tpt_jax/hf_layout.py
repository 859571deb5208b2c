"""Hugging Face tensor layouts <-> our param trees: the pieces families share.

Loading maps each of our params to a *reader*: its shape and a function that
reads one shard (a tuple of slices) from memory-mapped HF tensors, applying
reshapes/transposes as numpy views so that only the shard's bytes are read.
Exporting goes the other way, whole arrays at a time.

Gemma2 and Llama name their attention and MLP tensors alike
(`self_attn.{q,k,v,o}_proj`, `mlp.{gate,up,down}_proj`), and we hold them in
the same tree (`attn/q_einsum/w`, `attn/kv_einsum/w`, `attn/attn_vec_einsum/w`,
`mlp/gating_einsum`, `mlp/linear`), so that mapping lives here once.
"""

from __future__ import annotations

import dataclasses
from typing import Callable

import numpy as np

# Reads one shard (index: a tuple of slices) of a param.
ShardReader = Callable[[tuple[slice, ...]], np.ndarray]
# (shape, shard reader) of one param.
Reader = tuple[tuple[int, ...], ShardReader]


def view(array: np.ndarray, fn: Callable[[np.ndarray], np.ndarray] = (
    lambda x: x)) -> Reader:
  """A param that is a numpy view of one HF tensor."""
  array = fn(array)
  return tuple(array.shape), lambda index: np.asarray(array[index])


def stacked(arrays: list[np.ndarray],
            fn: Callable[[np.ndarray], np.ndarray]) -> Reader:
  """A param stacking HF tensors along a new leading axis (e.g. k and v)."""
  parts = [fn(a) for a in arrays]
  shape = (len(parts),) + tuple(parts[0].shape)
  def read(index):
    return np.stack([np.asarray(p[index[1:]]) for p in parts[index[0]]])
  return shape, read


@dataclasses.dataclass(frozen=True)
class DecoderDims:
  """The sizes the attention/MLP mapping needs."""
  embed_dim: int
  hidden_dim: int
  num_heads: int
  num_kv_heads: int
  head_dim: int


def decoder_layer_readers(tensors: dict[str, np.ndarray], hf: str, ours: str,
                          dims: DecoderDims) -> dict[str, Reader]:
  """Readers of one layer's attention and gated MLP (Gemma2 / Llama).

  Args:
    tensors: HF name -> memory-mapped array.
    hf: the layer's HF prefix, e.g. 'model.layers.3.'.
    ours: our prefix, e.g. 'layer_3/'.
    dims: the architecture's sizes.
  """
  heads, kv_heads = dims.num_heads, dims.num_kv_heads
  head_dim, embed = dims.head_dim, dims.embed_dim
  return {
      ours + 'attn/q_einsum/w': view(
          tensors[hf + 'self_attn.q_proj.weight'],
          lambda w: w.reshape(heads, head_dim, embed).transpose(0, 2, 1)),
      ours + 'attn/kv_einsum/w': stacked(
          [tensors[hf + 'self_attn.k_proj.weight'],
           tensors[hf + 'self_attn.v_proj.weight']],
          lambda w: w.reshape(kv_heads, head_dim, embed).transpose(0, 2, 1)),
      ours + 'attn/attn_vec_einsum/w': view(
          tensors[hf + 'self_attn.o_proj.weight'],
          lambda w: w.T.reshape(heads, head_dim, embed)),
      # x @ w[0] is the gate (HF's gate_proj), x @ w[1] the up projection.
      ours + 'mlp/gating_einsum': stacked(
          [tensors[hf + 'mlp.gate_proj.weight'],
           tensors[hf + 'mlp.up_proj.weight']], lambda w: w.T),
      ours + 'mlp/linear': view(tensors[hf + 'mlp.down_proj.weight'],
                                lambda w: w.T),
  }


def decoder_layer_hf_shapes(hf: str, dims: DecoderDims
                            ) -> dict[str, tuple[int, ...]]:
  """HF tensor shapes of one layer's attention and gated MLP."""
  d, h, kv, hd, f = (dims.embed_dim, dims.num_heads, dims.num_kv_heads,
                     dims.head_dim, dims.hidden_dim)
  return {
      hf + 'self_attn.q_proj.weight': (h * hd, d),
      hf + 'self_attn.k_proj.weight': (kv * hd, d),
      hf + 'self_attn.v_proj.weight': (kv * hd, d),
      hf + 'self_attn.o_proj.weight': (d, h * hd),
      hf + 'mlp.gate_proj.weight': (f, d),
      hf + 'mlp.up_proj.weight': (f, d),
      hf + 'mlp.down_proj.weight': (d, f),
  }


def decoder_layer_to_hf(flat: dict[str, np.ndarray], ours: str, hf: str,
                        dims: DecoderDims) -> dict[str, np.ndarray]:
  """The inverse of `decoder_layer_readers` for one layer (whole arrays)."""
  heads, kv, hd, d = (dims.num_heads, dims.num_kv_heads, dims.head_dim,
                      dims.embed_dim)
  k, v = flat[ours + 'attn/kv_einsum/w']
  gate, up = flat[ours + 'mlp/gating_einsum']
  return {
      hf + 'self_attn.q_proj.weight': (
          flat[ours + 'attn/q_einsum/w'].transpose(0, 2, 1)
          .reshape(heads * hd, d)),
      hf + 'self_attn.k_proj.weight': k.transpose(0, 2, 1).reshape(kv * hd, d),
      hf + 'self_attn.v_proj.weight': v.transpose(0, 2, 1).reshape(kv * hd, d),
      hf + 'self_attn.o_proj.weight': (
          flat[ours + 'attn/attn_vec_einsum/w'].reshape(heads * hd, d).T),
      hf + 'mlp.gate_proj.weight': gate.T,
      hf + 'mlp.up_proj.weight': up.T,
      hf + 'mlp.down_proj.weight': flat[ours + 'mlp/linear'].T,
  }
