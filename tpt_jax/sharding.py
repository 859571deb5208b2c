"""One device mesh and one table of sharding rules for params, batches, caches.

As in MaxText, every array dimension gets a *logical* name (`vocab`, `embed`,
`heads`, `mlp`, `batch`, ...) and one rule maps logical names to mesh axes:

  embed          -> fsdp     (FSDP shards the large model dimension)
  vocab, heads, kv_heads, mlp -> tensor   (tensor parallelism)
  batch          -> (data, fsdp)

`PARAM_LOGICAL_AXES` says which logical names each param of the `gemma`
Gemma2 tree has (and of the Llama / GPT-2 trees, which reuse its names and
add a few params of their own). A dimension whose size does not divide the
mesh axes it maps to is replicated instead, with a logged warning.
"""

from __future__ import annotations

import os
import re
from typing import Any, Mapping, Sequence

from absl import logging
import jax
from jax.experimental import mesh_utils
from jax.sharding import Mesh, NamedSharding, PartitionSpec
import ml_collections
import numpy as np

MESH_AXES = ('data', 'fsdp', 'tensor')

# Logical dimension name -> mesh axes it is split over (None: replicated).
LOGICAL_AXIS_RULES: Mapping[str, str | tuple[str, ...] | None] = {
    'batch': ('data', 'fsdp'),
    'vocab': 'tensor',
    'embed': 'fsdp',
    'heads': 'tensor',
    'kv_heads': 'tensor',
    'mlp': 'tensor',
    'head_dim': None,
    'qkv': None,
    'length': None,
    'norm': None,
    'lora_rank': None,
}

# Param path (regex over '/'-joined keys of the nested gemma tree) -> logical
# names of its dimensions. `{mlp_in}`/`{mlp_out}` depend on the config's
# `transpose_gating_einsum` (9B/27B store the gating matrix transposed).
PARAM_LOGICAL_AXES: Sequence[tuple[str, tuple[str | None, ...]]] = (
    (r'embedder/input_embedding', ('vocab', 'embed')),
    (r'layer_\d+/attn/q_einsum/w', ('heads', 'embed', 'head_dim')),
    (r'layer_\d+/attn/kv_einsum/w', ('qkv', 'kv_heads', 'embed', 'head_dim')),
    (r'layer_\d+/attn/qkv_einsum/w', ('qkv', 'heads', 'embed', 'head_dim')),
    (r'layer_\d+/attn/attn_vec_einsum/w', ('heads', 'head_dim', 'embed')),
    (r'layer_\d+/attn/_(query|key)_norm/scale', ('norm',)),
    (r'layer_\d+/mlp/gating_einsum', ('qkv', '{mlp_in}', '{mlp_out}')),
    (r'layer_\d+/mlp/linear', ('mlp', 'embed')),
    (r'layer_\d+/(pre|post)_(attention|ffw)_norm/scale', ('norm',)),
    (r'final_norm/scale', ('norm',)),
    # LoRA adapters (`gm.nn.LoRA`): `a` holds the weight's input dims then
    # the rank, `b` the rank then its output dims (same for both gating
    # layouts).
    (r'layer_\d+/attn/(q|kv|qkv)_einsum/_LoRAEinsum_0/lora/a',
     ('embed', 'lora_rank')),
    (r'layer_\d+/attn/q_einsum/_LoRAEinsum_0/lora/b',
     ('lora_rank', 'heads', 'head_dim')),
    (r'layer_\d+/attn/kv_einsum/_LoRAEinsum_0/lora/b',
     ('lora_rank', 'qkv', 'kv_heads', 'head_dim')),
    (r'layer_\d+/attn/qkv_einsum/_LoRAEinsum_0/lora/b',
     ('lora_rank', 'qkv', 'heads', 'head_dim')),
    (r'layer_\d+/attn/attn_vec_einsum/_LoRAEinsum_0/lora/a',
     ('heads', 'head_dim', 'lora_rank')),
    (r'layer_\d+/attn/attn_vec_einsum/_LoRAEinsum_0/lora/b',
     ('lora_rank', 'embed')),
    (r'layer_\d+/mlp/_LoRAEinsum_gating_einsum/lora/a', ('embed', 'lora_rank')),
    (r'layer_\d+/mlp/_LoRAEinsum_gating_einsum/lora/b',
     ('lora_rank', 'qkv', 'mlp')),
    (r'layer_\d+/mlp/_LoRAEinsum_linear/lora/a', ('mlp', 'lora_rank')),
    (r'layer_\d+/mlp/_LoRAEinsum_linear/lora/b', ('lora_rank', 'embed')),
    # Llama (`tpt_jax.llama`): the untied output projection.
    (r'embedder/output_embedding', ('vocab', 'embed')),
    # GPT-2 (`tpt_jax.gpt2`): learned positions, biases, LayerNorm biases,
    # the ungated MLP input and its adapters.
    (r'embedder/position_embedding', (None, 'embed')),
    (r'layer_\d+/attn/qkv_bias', ('qkv', 'heads', 'head_dim')),
    (r'layer_\d+/(attn/attn_vec|mlp/linear)_bias', (None,)),
    (r'layer_\d+/mlp/up_einsum', ('embed', 'mlp')),
    (r'layer_\d+/mlp/up_bias', ('mlp',)),
    (r'layer_\d+/(pre|post)_(attention|ffw)_norm/bias', ('norm',)),
    (r'final_norm/bias', ('norm',)),
    (r'layer_\d+/mlp/_LoRAEinsum_up_einsum/lora/a', ('embed', 'lora_rank')),
    (r'layer_\d+/mlp/_LoRAEinsum_up_einsum/lora/b', ('lora_rank', 'mlp')),
)

# KV cache of one layer, as `gm.nn.Attention.init_cache` builds it.
CACHE_LOGICAL_AXES: Mapping[str, tuple[str | None, ...]] = {
    'k': ('batch', 'length', 'kv_heads', 'head_dim'),
    'v': ('batch', 'length', 'kv_heads', 'head_dim'),
    'end_index': ('batch',),
    'positions': ('batch', 'length'),
}


# Environment variables that make this one process of several. Explicit:
# all three JAX_* together; detected: a multi-host TPU slice, a SLURM job.
COORDINATOR_ENV = 'JAX_COORDINATOR_ADDRESS'
NUM_PROCESSES_ENV = 'JAX_NUM_PROCESSES'
PROCESS_ID_ENV = 'JAX_PROCESS_ID'


class DistributedError(RuntimeError):
  """The multi-process set-up cannot start; the message says what to set."""


def _cluster_in_environment(env: Mapping[str, str]) -> str | None:
  """What in `env` says this is one process of several (None: nothing)."""
  if env.get(COORDINATOR_ENV):
    return COORDINATOR_ENV
  if len(env.get('TPU_WORKER_HOSTNAMES', '').split(',')) > 1:
    return 'TPU_WORKER_HOSTNAMES (a multi-host TPU slice)'
  if int(env.get('SLURM_NTASKS', '1') or 1) > 1:
    return 'SLURM_NTASKS (a SLURM job of several tasks)'
  return None


def distributed_arguments(env: Mapping[str, str]) -> dict[str, Any]:
  """`jax.distributed.initialize` keyword arguments from explicit env vars
  (JAX_COORDINATOR_ADDRESS, JAX_NUM_PROCESSES, JAX_PROCESS_ID); empty when
  they are not set (jax then detects TPU slices and SLURM itself)."""
  if not env.get(COORDINATOR_ENV):
    return {}
  arguments: dict[str, Any] = {'coordinator_address': env[COORDINATOR_ENV]}
  for name, key in ((NUM_PROCESSES_ENV, 'num_processes'),
                    (PROCESS_ID_ENV, 'process_id')):
    value = env.get(name)
    if value is None:
      continue
    try:
      arguments[key] = int(value)
    except ValueError:
      raise DistributedError(
          f'{name}={value!r} must be an integer.') from None
  if ('num_processes' in arguments) != ('process_id' in arguments):
    raise DistributedError(
        f'{COORDINATOR_ENV} is set: set both {NUM_PROCESSES_ENV} and '
        f'{PROCESS_ID_ENV} (or neither, on a platform jax detects).')
  if 'process_id' in arguments and not (
      0 <= arguments['process_id'] < arguments['num_processes']):
    raise DistributedError(
        f'{PROCESS_ID_ENV}={arguments["process_id"]} must lie in [0, '
        f'{NUM_PROCESSES_ENV}={arguments["num_processes"]}).')
  return arguments


def maybe_initialize_distributed(mesh_config: ml_collections.ConfigDict,
                                 env: Mapping[str, str] | None = None
                                 ) -> bool:
  """Calls `jax.distributed.initialize()` when the config or env asks for it.

  Must run before anything touches a JAX backend (`tpt_jax.main` calls it
  first). `config.mesh.distributed`: 'on' always (an error when no cluster
  is found), 'off' never, 'auto' when the environment names a coordinator
  (JAX_COORDINATOR_ADDRESS, with JAX_NUM_PROCESSES and JAX_PROCESS_ID), a
  SLURM job of several tasks, or a multi-host TPU slice. A process that
  loses a peer stops after `config.mesh.heartbeat_timeout_s`.

  Returns:
    Whether this is one process of several.
  """
  env = os.environ if env is None else env
  mode = mesh_config.distributed
  if mode == 'off':
    return False
  found = _cluster_in_environment(env)
  if mode == 'auto' and found is None:
    return False
  if jax.distributed.is_initialized():
    return True
  arguments = distributed_arguments(env)
  try:
    jax.distributed.initialize(
        heartbeat_timeout_seconds=int(mesh_config.heartbeat_timeout_s),
        **arguments)
  except (RuntimeError, ValueError) as e:
    if found is None:
      raise DistributedError(
          "config.mesh.distributed='on' but no cluster was found: set "
          f'{COORDINATOR_ENV}, {NUM_PROCESSES_ENV} and {PROCESS_ID_ENV}, or '
          "run on a multi-host TPU slice or in a SLURM job; use 'auto' to "
          f'run alone ({e}).') from e
    raise DistributedError(
        f'jax.distributed.initialize failed ({found}): {e}') from e
  logging.info('jax.distributed: process %d of %d, %d global devices.',
               jax.process_index(), jax.process_count(), jax.device_count())
  return jax.process_count() > 1


def make_local_mesh(mesh_config: ml_collections.ConfigDict, *,
                    field: str = 'shape') -> Mesh:
  """The mesh over this process's own devices (`config.mesh.<field>`, its
  -1 taking what is left here): where each host samples on its own."""
  try:
    return make_mesh(mesh_config, jax.local_devices(), field=field)
  except ValueError as e:
    raise ValueError(
        f'{e} Each host samples on its own {jax.local_device_count()} '
        f'devices: config.mesh.{field} must fit them too (use -1 for one '
        'axis).') from None


def resolve_mesh_shape(shape: Sequence[int], num_devices: int, *,
                       name: str = 'config.mesh.shape') -> tuple[int, ...]:
  """Replaces the one -1 in `shape` (the field `name`) so the product is
  `num_devices`."""
  shape = tuple(int(s) for s in shape)
  known = int(np.prod([s for s in shape if s != -1]))
  if -1 in shape:
    if num_devices % known:
      raise ValueError(
          f'{name}={shape}: {num_devices} devices do not divide '
          f'into axes of fixed size {known}.')
    shape = tuple(num_devices // known if s == -1 else s for s in shape)
  if int(np.prod(shape)) != num_devices:
    raise ValueError(
        f'{name}={shape} needs {int(np.prod(shape))} devices; '
        f'there are {num_devices}.')
  return shape


def make_mesh(mesh_config: ml_collections.ConfigDict,
              devices: Sequence[jax.Device] | None = None, *,
              field: str = 'shape') -> Mesh:
  """The (data, fsdp, tensor) mesh of shape `config.mesh.<field>` over all
  global devices (or `devices`)."""
  devices = list(jax.devices() if devices is None else devices)
  shape = resolve_mesh_shape(mesh_config[field], len(devices),
                             name=f'config.mesh.{field}')
  try:
    device_array = mesh_utils.create_device_mesh(shape, devices=devices)
  except (ValueError, NotImplementedError, AssertionError):
    # Topology-aware placement is not known for every platform / subset.
    device_array = np.asarray(devices).reshape(shape)
  return Mesh(device_array, MESH_AXES)


def make_sampling_mesh(mesh_config: ml_collections.ConfigDict,
                       devices: Sequence[jax.Device] | None = None, *,
                       local: bool = False) -> Mesh:
  """The mesh Think and Evaluate sample on: `config.mesh.sampling_shape`
  (`shape` when unset) over all global devices, or `devices`, or with
  `local` this process's own (each host samples its own shards)."""
  field = ('sampling_shape' if mesh_config.get('sampling_shape') is not None
           else 'shape')
  if local:
    return make_local_mesh(mesh_config, field=field)
  return make_mesh(mesh_config, devices, field=field)


def _mesh_axes_size(mesh: Mesh, axes: str | tuple[str, ...] | None) -> int:
  if axes is None:
    return 1
  axes = (axes,) if isinstance(axes, str) else axes
  return int(np.prod([mesh.shape[a] for a in axes]))


def logical_to_spec(logical_axes: Sequence[str | None], shape: Sequence[int],
                    mesh: Mesh, *, name: str) -> PartitionSpec:
  """Maps logical dims to mesh axes; replicates a dim that doesn't divide."""
  if len(logical_axes) != len(shape):
    raise ValueError(
        f'{name}: the sharding table gives {len(logical_axes)} dims '
        f'{tuple(logical_axes)} but the array has shape {tuple(shape)}.')
  spec = []
  for logical, size in zip(logical_axes, shape):
    axes = LOGICAL_AXIS_RULES[logical] if logical is not None else None
    mesh_size = _mesh_axes_size(mesh, axes)
    if axes is not None and size % mesh_size:
      logging.warning(
          '%s: dimension %r of size %d does not divide mesh axes %s of size '
          '%d; replicating it.', name, logical, size, axes, mesh_size)
      axes = None
    spec.append(_drop_trivial_axes(mesh, axes))
  return PartitionSpec(*spec)


def _drop_trivial_axes(mesh: Mesh, axes: str | tuple[str, ...] | None
                       ) -> str | tuple[str, ...] | None:
  """Leaves out mesh axes of size 1, so specs read as what is split."""
  if axes is None:
    return None
  kept = tuple(a for a in ((axes,) if isinstance(axes, str) else axes)
               if mesh.shape[a] > 1)
  if not kept:
    return None
  return kept[0] if len(kept) == 1 else kept


def path_to_str(path: Sequence[Any]) -> str:
  """'/'-joined keys of a `jax.tree_util` key path."""
  parts = []
  for key in path:
    for attr in ('key', 'name', 'idx'):
      if hasattr(key, attr):
        parts.append(str(getattr(key, attr)))
        break
    else:
      parts.append(str(key))
  return '/'.join(parts)


def param_logical_axes(path: str, *, transpose_gating_einsum: bool
                       ) -> tuple[str | None, ...]:
  """Logical dims of the param at `path`, from PARAM_LOGICAL_AXES."""
  for pattern, axes in PARAM_LOGICAL_AXES:
    if re.fullmatch(pattern, path):
      mlp_in, mlp_out = (('mlp', 'embed') if transpose_gating_einsum
                         else ('embed', 'mlp'))
      return tuple({'{mlp_in}': mlp_in, '{mlp_out}': mlp_out}.get(a, a)
                   for a in axes)
  raise ValueError(f'No sharding rule for param {path!r}; add one to '
                   'tpt_jax.sharding.PARAM_LOGICAL_AXES.')


def param_specs(abstract_params: Any, mesh: Mesh, *,
                transpose_gating_einsum: bool) -> Any:
  """A PartitionSpec for every param, from the rules table."""
  def spec(path, leaf):
    name = path_to_str(path)
    axes = param_logical_axes(
        name, transpose_gating_einsum=transpose_gating_einsum)
    return logical_to_spec(axes, leaf.shape, mesh, name=name)
  return jax.tree_util.tree_map_with_path(spec, abstract_params)


def param_shardings(abstract_params: Any, mesh: Mesh, *,
                    transpose_gating_einsum: bool) -> Any:
  """A NamedSharding for every param, from the rules table."""
  specs = param_specs(abstract_params, mesh,
                      transpose_gating_einsum=transpose_gating_einsum)
  return jax.tree.map(lambda s: NamedSharding(mesh, s), specs,
                      is_leaf=lambda x: isinstance(x, PartitionSpec))


def num_batch_devices(mesh: Mesh) -> int:
  """How many ways the batch dimension is split: the product of the mesh
  axes the 'batch' logical axis maps to."""
  return int(np.prod([mesh.shape[a] for a in LOGICAL_AXIS_RULES['batch']]))


def batch_sharding(mesh: Mesh, ndim: int = 2) -> NamedSharding:
  """Token batches `[batch, length, ...]`: batch over (data, fsdp)."""
  return NamedSharding(mesh, PartitionSpec(LOGICAL_AXIS_RULES['batch'],
                                           *([None] * (ndim - 1))))


def cache_shardings(abstract_cache: Any, mesh: Mesh) -> Any:
  """Shardings for a `gm.nn` KV cache: batch over data/fsdp, kv heads over
  tensor."""
  def spec(path, leaf):
    name = path_to_str(path)
    field = name.rsplit('/', 1)[-1]
    return NamedSharding(mesh, logical_to_spec(
        CACHE_LOGICAL_AXES[field], leaf.shape, mesh, name=f'cache/{name}'))
  return jax.tree_util.tree_map_with_path(spec, abstract_cache)
