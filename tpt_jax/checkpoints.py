"""Loading weights into our param tree, straight into the mesh; writing HF.

Two sources, one result (the nested `gm.nn.Transformer` param tree, each leaf
a `jax.Array` with the sharding the rules table gives, in the configured
dtype):

* orbax checkpoints as Google released them (the flat
  `transformer/layer_0/attn/q_einsum` layout) or as `gemma` writes them
  (nested). The layout conversion is the `gemma` library's own; orbax restores
  each array directly into its target sharding and dtype.
* Hugging Face directories of any family (Gemma2, Llama, GPT-2:
  `config.json` + one or several `*.safetensors`). The architecture and the
  family come from `config.json`; each family's module (`tpt_jax.gemma2`,
  `tpt_jax.llama`, `tpt_jax.gpt2`) maps HF tensor names to our params.
  Tensors are memory-mapped and each device reads only its own shard
  (`jax.make_array_from_callback`), so the whole model is never on one device.

Before reading anything, the checkpoint's tensors are matched against the
model's: a missing, extra or mis-shaped tensor is an error naming it.
"""

from __future__ import annotations

import json
import os
import pathlib
import re
import struct
from typing import Any

from absl import logging
import jax
import jax.numpy as jnp
import ml_dtypes
import numpy as np

from tpt_jax import gemma2
from tpt_jax import gpt2
from tpt_jax import llama
from tpt_jax import models
from tpt_jax import sharding as sharding_lib
from gemma.gm.ckpts import _checkpoint as gemma_checkpoint  # pylint: disable=g-bad-import-order
import orbax.checkpoint as ocp  # pylint: disable=g-bad-import-order

Params = models.Params

FORMATS = ('orbax', 'safetensors')

# Family name -> the module with its Hugging Face mapping.
_FAMILY_MODULES = {gemma2.FAMILY: gemma2, llama.FAMILY: llama,
                   gpt2.FAMILY: gpt2}


class CheckpointMismatchError(ValueError):
  """The checkpoint's tensors do not match the model's param tree."""


def detect_format(path: str | os.PathLike[str]) -> str:
  """'safetensors' for a Hugging Face directory, else 'orbax'."""
  path = pathlib.Path(path)
  if not path.exists():
    raise FileNotFoundError(f'Checkpoint {str(path)!r} does not exist.')
  if path.is_dir() and any(path.glob('*.safetensors')):
    return 'safetensors'
  if path.is_dir() and ((path / '_METADATA').exists() or
                        (path / '_CHECKPOINT_METADATA').exists()):
    return 'orbax'
  raise ValueError(
      f'Checkpoint {str(path)!r} is neither an orbax checkpoint (no '
      '_METADATA) nor a Hugging Face directory (no *.safetensors).')


def _flatten(tree: Params, prefix: str = '') -> dict[str, Any]:
  flat = {}
  for key, value in tree.items():
    name = f'{prefix}/{key}' if prefix else str(key)
    if isinstance(value, dict):
      flat.update(_flatten(value, name))
    else:
      flat[name] = value
  return flat


def check_matches(found: dict[str, tuple[int, ...]],
                  expected: dict[str, tuple[int, ...]], *, source: str) -> None:
  """Raises CheckpointMismatchError naming each missing/extra/mis-shaped one."""
  problems = []
  for name in sorted(expected.keys() - found.keys()):
    problems.append(f'missing tensor {name}: the model expects shape '
                    f'{tuple(expected[name])}, the checkpoint has none')
  for name in sorted(found.keys() - expected.keys()):
    problems.append(f'extra tensor {name} of shape {tuple(found[name])}: '
                    'the model has no such param')
  for name in sorted(found.keys() & expected.keys()):
    if tuple(found[name]) != tuple(expected[name]):
      problems.append(f'tensor {name} has shape {tuple(found[name])} in the '
                      f'checkpoint but the model expects '
                      f'{tuple(expected[name])}')
  if problems:
    raise CheckpointMismatchError(
        f'{source} does not match the model ({len(problems)} problems):\n  '
        + '\n  '.join(problems))


def _shapes(tree: Params) -> dict[str, tuple[int, ...]]:
  return {k: tuple(v.shape) for k, v in _flatten(tree).items()}


def target_params(model: models.Model, mesh: jax.sharding.Mesh) -> Params:
  """ShapeDtypeStructs of the model's params with their shardings."""
  abstract = model.abstract_params()
  shardings = sharding_lib.param_shardings(
      abstract, mesh,
      transpose_gating_einsum=model.config.transpose_gating_einsum)
  return jax.tree.map(
      lambda a, s: jax.ShapeDtypeStruct(a.shape, model.param_dtype,
                                        sharding=s),
      abstract, shardings)


# ----------------------------------------------------------------- orbax ---


def orbax_param_shapes(path: str | os.PathLike[str]) -> dict[str, tuple]:
  """Shapes of an orbax Gemma checkpoint's params, in the nested layout."""
  metadata = ocp.StandardCheckpointer().metadata(pathlib.Path(path))
  tree = metadata.item_metadata.tree if metadata.item_metadata else None
  if tree is None:
    raise ValueError(f'Orbax checkpoint {str(path)!r} has no item metadata.')
  layout = gemma_checkpoint._CheckpointTree(tree=dict(tree))  # pylint: disable=protected-access
  return _shapes(layout.nested_tree)


def load_orbax(path: str | os.PathLike[str], model: models.Model,
               mesh: jax.sharding.Mesh) -> Params:
  """Restores an orbax Gemma2 checkpoint (flat or nested) into the mesh."""
  target = target_params(model, mesh)
  check_matches(orbax_param_shapes(path), _shapes(target),
                source=f'Orbax checkpoint {str(path)!r}')
  params = gemma_checkpoint.load_params(
      pathlib.Path(path).resolve(), params=target, donate=False)
  # Orbax honours the target dtype; make sure regardless (no-op if so).
  return models.cast(params, model.param_dtype)


def save_orbax(params: Params, path: str | os.PathLike[str]) -> None:
  """Saves params in the nested layout that `gemma` and `load_orbax` read."""
  gemma_checkpoint.save_params(params, pathlib.Path(path).resolve(),
                               wait_until_finished=True)


# ----------------------------------------------------------- safetensors ---

_SAFETENSORS_DTYPES = {
    'F32': np.float32, 'F16': np.float16, 'BF16': ml_dtypes.bfloat16,
    'F64': np.float64,
}


def _read_safetensors_index(path: pathlib.Path
                            ) -> dict[str, tuple[np.ndarray, pathlib.Path]]:
  """Memory-maps every tensor of every `*.safetensors` file in `path`."""
  tensors = {}
  for file in sorted(path.glob('*.safetensors')):
    with open(file, 'rb') as f:
      header_size = struct.unpack('<Q', f.read(8))[0]
      try:
        header = json.loads(f.read(header_size))
      except json.JSONDecodeError as e:
        raise ValueError(f'{file}: the safetensors header is not JSON: {e}'
                         ) from e
    data_start = 8 + header_size
    for name, info in header.items():
      if name == '__metadata__':
        continue
      if info['dtype'] not in _SAFETENSORS_DTYPES:
        raise ValueError(f'{file}: tensor {name} has dtype {info["dtype"]}, '
                         'which model weights never use.')
      if name in tensors:
        raise ValueError(f'Tensor {name} appears in both {tensors[name][1]} '
                         f'and {file}.')
      begin, end = info['data_offsets']
      dtype = np.dtype(_SAFETENSORS_DTYPES[info['dtype']])
      array = np.memmap(file, dtype=dtype, mode='r',
                        offset=data_start + begin,
                        shape=tuple(info['shape']) or (1,))
      if not info['shape']:
        array = array.reshape(())
      assert array.nbytes == end - begin, name
      tensors[name] = (array, file)
  return tensors


def family_module(architecture: models.Architecture) -> Any:
  """The module holding a family's HF mapping (`gemma2`, `llama`, `gpt2`)."""
  return _FAMILY_MODULES[models.family_of(architecture)]


def transformer_config_from_hf(config_json: dict[str, Any]
                               ) -> models.Architecture:
  """The architecture of a Hugging Face `config.json` (by its model_type)."""
  model_type = config_json.get('model_type', 'gemma2')
  for module in _FAMILY_MODULES.values():
    if module.MODEL_TYPE == model_type:
      return module.config_from_hf(config_json)
  raise ValueError(
      f'config.json has model_type={model_type!r}; supported are '
      f'{sorted(m.MODEL_TYPE for m in _FAMILY_MODULES.values())}.')


def read_hf_config(path: str | os.PathLike[str]) -> models.Architecture:
  """Reads `path/config.json` of a Hugging Face checkpoint directory."""
  config_path = pathlib.Path(path) / 'config.json'
  if not config_path.exists():
    raise FileNotFoundError(
        f'{str(config_path)!r} does not exist: a Hugging Face checkpoint '
        'directory needs its config.json.')
  try:
    config_json = json.loads(config_path.read_text())
  except json.JSONDecodeError as e:
    raise ValueError(f'{str(config_path)!r} is not valid JSON: {e}') from e
  return transformer_config_from_hf(config_json)


def hf_config_json(architecture: models.Architecture) -> dict[str, Any]:
  """The Hugging Face `config.json` of an architecture of any family."""
  return family_module(architecture).hf_config_json(architecture)


def load_safetensors(path: str | os.PathLike[str], model: models.Model,
                     mesh: jax.sharding.Mesh) -> Params:
  """Loads a Hugging Face directory, each device reading its own shard."""
  path = pathlib.Path(path)
  family = family_module(model.config)
  source = f'Hugging Face checkpoint {str(path)!r}'
  tensors = {name: array
             for name, (array, _) in _read_safetensors_index(path).items()
             if not re.fullmatch(family.IGNORED_HF_TENSORS, name)}
  check_matches({k: tuple(v.shape) for k, v in tensors.items()},
                family.expected_hf_shapes(tensors, model.config),
                source=source)
  readers = family.hf_readers(tensors, model.config)
  target = target_params(model, mesh)
  flat_target = _flatten(target)
  check_matches({k: shape for k, (shape, _) in readers.items()},
                _shapes(target), source=source)

  def load_leaf(name: str, leaf: jax.ShapeDtypeStruct) -> jax.Array:
    _, read = readers[name]
    return jax.make_array_from_callback(
        leaf.shape, leaf.sharding,
        lambda index: read(index).astype(leaf.dtype))

  flat_params = {name: load_leaf(name, leaf)
                 for name, leaf in flat_target.items()}
  logging.info('Loaded %d tensors from %s.', len(flat_params), path)
  return _unflatten(flat_params)


def _unflatten(flat: dict[str, Any]) -> Params:
  tree: Params = {}
  for name, value in flat.items():
    *parents, leaf = name.split('/')
    node = tree
    for parent in parents:
      node = node.setdefault(parent, {})
    node[leaf] = value
  return tree


def save_safetensors(params: Params, config: models.Architecture,
                     path: str | os.PathLike[str], *,
                     max_shard_bytes: int = 5 * 2**30) -> None:
  """Writes params as a Hugging Face directory (export / tests).

  The inverse of `load_safetensors`: `config.json`, one or more
  `model-0000i-of-0000n.safetensors` files of at most `max_shard_bytes` and
  `model.safetensors.index.json`. Arrays keep their dtype.
  """
  flat = {k: np.asarray(jax.device_get(v)) for k, v in _flatten(params).items()}
  hf = family_module(config).to_hf(flat, config)
  path = pathlib.Path(path)
  path.mkdir(parents=True, exist_ok=True)
  shards: list[dict[str, np.ndarray]] = [{}]
  shard_bytes = 0
  for name in sorted(hf):
    array = np.ascontiguousarray(hf[name])
    if shards[-1] and shard_bytes + array.nbytes > max_shard_bytes:
      shards.append({})
      shard_bytes = 0
    shards[-1][name] = array
    shard_bytes += array.nbytes
  dtype_names = {np.dtype(v): k for k, v in _SAFETENSORS_DTYPES.items()}
  weight_map = {}
  total_bytes = 0
  for shard_index, shard in enumerate(shards):
    file_name = (f'model-{shard_index + 1:05d}-of-{len(shards):05d}'
                 '.safetensors')
    header, offset = {}, 0
    for name, array in shard.items():
      if array.dtype not in dtype_names:
        raise ValueError(f'Tensor {name} has dtype {array.dtype}; '
                         f'safetensors export supports '
                         f'{sorted(str(d) for d in dtype_names)}.')
      header[name] = {'dtype': dtype_names[array.dtype],
                      'shape': list(array.shape),
                      'data_offsets': [offset, offset + array.nbytes]}
      offset += array.nbytes
      weight_map[name] = file_name
    total_bytes += offset
    header['__metadata__'] = {'format': 'pt'}
    header_bytes = json.dumps(header).encode()
    header_bytes += b' ' * (-len(header_bytes) % 8)
    with open(path / file_name, 'wb') as f:
      f.write(struct.pack('<Q', len(header_bytes)))
      f.write(header_bytes)
      for array in shard.values():
        f.write(array.tobytes())
  (path / 'model.safetensors.index.json').write_text(json.dumps(
      {'metadata': {'total_size': total_bytes}, 'weight_map': weight_map},
      indent=1))
  (path / 'config.json').write_text(json.dumps(hf_config_json(config),
                                               indent=1))


# ------------------------------------------------------------------ API ---


def load_params(path: str | os.PathLike[str], model: models.Model,
                mesh: jax.sharding.Mesh, *, checkpoint_format: str = 'auto'
                ) -> Params:
  """Loads any supported checkpoint into `model`'s params on `mesh`."""
  if checkpoint_format == 'auto':
    checkpoint_format = detect_format(path)
  if checkpoint_format == 'orbax':
    return load_orbax(path, model, mesh)
  if checkpoint_format == 'safetensors':
    return load_safetensors(path, model, mesh)
  raise ValueError(f'checkpoint format {checkpoint_format!r} is not one of '
                   f'{FORMATS} or auto.')


def random_params(model: models.Model, mesh: jax.sharding.Mesh,
                  seed: int) -> Params:
  """Random init, created directly in the params' shardings."""
  target = target_params(model, mesh)
  shardings = jax.tree.map(lambda t: t.sharding, target)
  init = jax.jit(model.init_params, out_shardings=shardings)
  return init(jax.random.key(seed))


def model_and_params(config, mesh: jax.sharding.Mesh
                     ) -> tuple[models.Model, Params]:
  """The model of `config.model` / `config.checkpoint`, with its params.

  A Hugging Face checkpoint brings its own architecture (`config.json`);
  otherwise `config.model.variant` names it. No checkpoint path: random init
  from `config.seed`.
  """
  path = config.checkpoint.path
  checkpoint_format = config.checkpoint.format
  if path and checkpoint_format == 'auto':
    checkpoint_format = detect_format(path)
  architecture = (read_hf_config(path)
                  if path and checkpoint_format == 'safetensors' else None)
  model = models.build_model(config.model, architecture)
  if not path or checkpoint_format == 'random':
    return model, random_params(model, mesh, config.seed)
  return model, load_params(path, model, mesh,
                            checkpoint_format=checkpoint_format)
