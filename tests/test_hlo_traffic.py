"""`tpt_jax.hlo_traffic`: the HBM bytes a program compiled for TPU moves.

Each program is compiled for a v5e slice by libtpu's ahead-of-time compiler
(no TPU attached) and its estimate compared with the bytes it must move.
"""

import importlib.util

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from tpt_jax import hlo_traffic
from tpt_jax import topologies

needs_libtpu = pytest.mark.skipif(
    importlib.util.find_spec('libtpu') is None,
    reason="libtpu is not installed (pip install -e '.[tpu]').")

MB = 1e6


@pytest.fixture(scope='module')
def replicated():
  devices = topologies.abstract_devices(topologies.get_topology('v5e-4'))
  return NamedSharding(Mesh(np.array(devices), ('chips',)), PartitionSpec())


def compile_for_tpu(fn, *args, donate_argnums=()):
  compiled = jax.jit(fn, donate_argnums=donate_argnums).lower(*args).compile()
  cost = compiled.cost_analysis()
  cost = cost[0] if isinstance(cost, (list, tuple)) else cost
  return hlo_traffic.hbm_traffic(compiled.as_text()), cost['bytes accessed']


def abstract(shape, sharding, dtype=jnp.bfloat16):
  return jax.ShapeDtypeStruct(shape, dtype, sharding=sharding)


@needs_libtpu
def test_a_decode_matmul_reads_its_weight_once(replicated):
  """A [32, 2048] x [2048, 8192] bf16 matmul moves x, W and the output once;
  XLA's own count (which includes the weight's copy into on-chip memory)
  is several times that."""
  x, w = abstract((32, 2048), replicated), abstract((2048, 8192), replicated)
  traffic, xla_bytes = compile_for_tpu(lambda x, w: x @ w, x, w)
  needed = (32 * 2048 + 2048 * 8192 + 32 * 8192) * 2
  assert traffic.bytes == pytest.approx(needed, rel=0.02)
  assert xla_bytes > 3 * needed
  assert traffic.largest[0][0] >= 2048 * 8192 * 2  # The weight's read.


@needs_libtpu
def test_an_in_place_update_counts_the_update_not_the_buffer(replicated):
  buffer = abstract((64, 1 << 20), replicated, jnp.float32)  # 256 MiB.
  row = abstract((1, 1 << 20), replicated, jnp.float32)  # 4 MiB.
  index = jax.ShapeDtypeStruct((), jnp.int32, sharding=replicated)
  traffic, _ = compile_for_tpu(
      lambda b, r, i: jax.lax.dynamic_update_slice(b, r, (i, 0)),
      buffer, row, index, donate_argnums=(0,))
  row_bytes = 4 << 20
  assert row_bytes <= traffic.bytes <= 2.1 * row_bytes


@needs_libtpu
def test_a_gather_counts_the_rows_it_takes(replicated):
  """An embedding lookup of 32 ids reads 32 rows, not the table."""
  table = abstract((256_000, 2304), replicated)
  ids = jax.ShapeDtypeStruct((32,), jnp.int32, sharding=replicated)
  traffic, _ = compile_for_tpu(lambda t, i: jnp.take(t, i, axis=0),
                               table, ids)
  assert traffic.bytes < 0.01 * 256_000 * 2304 * 2
  assert traffic.bytes >= 32 * 2304 * 2


@needs_libtpu
def test_a_loop_counts_every_trip(replicated):
  """A scan over 8 stacked weights reads all 8 (XLA's count: one trip)."""
  x = abstract((8, 1024), replicated)
  stacked = abstract((8, 1024, 1024), replicated)

  def layers(x, ws):
    return jax.lax.scan(lambda h, w: (jnp.tanh(h @ w), None), x, ws)[0]

  traffic, xla_bytes = compile_for_tpu(layers, x, stacked)
  stacked_bytes = 8 * 1024 * 1024 * 2
  assert traffic.loops_without_trip_count == 0
  assert traffic.bytes >= stacked_bytes
  assert traffic.bytes < 1.5 * stacked_bytes
  assert xla_bytes < 0.5 * stacked_bytes


def test_text_without_an_entry_computation_is_refused():
  with pytest.raises(ValueError, match='No ENTRY computation'):
    hlo_traffic.hbm_traffic('HloModule m\n\n%f (p: f32[2]) -> f32[2] {\n'
                            '  ROOT %p = f32[2]{0} parameter(0)\n}\n')


def test_on_chip_buffers_are_not_hbm_traffic():
  """Hand-written TPU HLO: a weight copied into memory space 1 (VMEM) and
  read there by a fusion counts its one read from HBM, not three."""
  text = '''HloModule m

%fused (a: bf16[8,128], b: bf16[128,256]) -> bf16[8,256] {
  %a = bf16[8,128]{1,0:T(8,128)(2,1)} parameter(0)
  %b = bf16[128,256]{1,0:T(8,128)(2,1)S(1)} parameter(1)
  ROOT %dot = bf16[8,256]{1,0:T(8,128)(2,1)} dot(%a, %b), lhs_contracting_dims={1}, rhs_contracting_dims={0}
}

ENTRY %main (x: bf16[8,128], w: bf16[128,256]) -> bf16[8,256] {
  %w = bf16[128,256]{1,0:T(8,128)(2,1)} parameter(1)
  %copy-start = (bf16[128,256]{1,0:T(8,128)(2,1)S(1)}, bf16[128,256]{1,0:T(8,128)(2,1)}, u32[]{:S(2)}) copy-start(%w)
  %x = bf16[8,128]{1,0:T(8,128)(2,1)} parameter(0)
  %copy-done = bf16[128,256]{1,0:T(8,128)(2,1)S(1)} copy-done(%copy-start)
  ROOT %fusion = bf16[8,256]{1,0:T(8,128)(2,1)} fusion(%x, %copy-done), kind=kOutput, calls=%fused
}
'''
  traffic = hlo_traffic.hbm_traffic(text)
  weight, x, out = 128 * 256 * 2, 8 * 128 * 2, 8 * 256 * 2
  assert traffic.bytes == weight + x + out
  assert [(b, n) for b, n, _ in traffic.largest] == [
      (weight, 'copy-start'), (x + out, 'fusion')]


def test_a_value_passed_whole_into_a_nested_fusion_is_read_whole():
  """The logits matmul reads the embedding through a nested bitcast fusion:
  all of it counts (a partial read would be a gather or slice)."""
  text = '''HloModule m

%bitcast_fusion (p: bf16[1024,256]) -> bf16[1024,256] {
  %p = bf16[1024,256]{1,0:T(8,128)(2,1)} parameter(0)
  ROOT %b = bf16[1024,256]{1,0:T(8,128)(2,1)} bitcast(%p)
}

%fused (x: bf16[8,256], table: bf16[1024,256]) -> bf16[8,1024] {
  %x = bf16[8,256]{1,0:T(8,128)(2,1)S(1)} parameter(0)
  %table = bf16[1024,256]{1,0:T(8,128)(2,1)} parameter(1)
  %view = bf16[1024,256]{1,0:T(8,128)(2,1)} fusion(%table), kind=kLoop, calls=%bitcast_fusion
  ROOT %logits = bf16[8,1024]{1,0:T(8,128)(2,1)S(1)} convolution(%x, %view), dim_labels=bf_oi->bf
}

ENTRY %main (x: bf16[8,256], table: bf16[1024,256]) -> bf16[8,1024] {
  %x = bf16[8,256]{1,0:T(8,128)(2,1)S(1)} parameter(0)
  %table = bf16[1024,256]{1,0:T(8,128)(2,1)} parameter(1)
  ROOT %fusion = bf16[8,1024]{1,0:T(8,128)(2,1)S(1)} fusion(%x, %table), kind=kOutput, calls=%fused
}
'''
  assert hlo_traffic.hbm_traffic(text).bytes == 1024 * 256 * 2
