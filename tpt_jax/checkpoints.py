"""Loading Gemma2 weights into our param tree, straight into the mesh.

Two sources, one result (the nested `gm.nn.Transformer` param tree, each leaf
a `jax.Array` with the sharding the rules table gives, in the configured
dtype):

* orbax checkpoints as Google released them (the flat
  `transformer/layer_0/attn/q_einsum` layout) or as `gemma` writes them
  (nested). The layout conversion is the `gemma` library's own; orbax restores
  each array directly into its target sharding and dtype.
* Hugging Face Gemma2 directories (`config.json` + one or several
  `*.safetensors`). The architecture is read from `config.json`. Tensors are
  memory-mapped and each device reads only its own shard
  (`jax.make_array_from_callback`), so the whole model is never on one device.

Before reading anything, the checkpoint's tensors are matched against the
model's: a missing, extra or mis-shaped tensor is an error naming it.
"""

from __future__ import annotations

import json
import os
import pathlib
import struct
from typing import Any, Callable

from absl import logging
import jax
import jax.numpy as jnp
import ml_dtypes
import numpy as np

from tpt_jax import models
from tpt_jax import sharding as sharding_lib
from gemma.gm.ckpts import _checkpoint as gemma_checkpoint  # pylint: disable=g-bad-import-order
import orbax.checkpoint as ocp  # pylint: disable=g-bad-import-order

Params = models.Params

FORMATS = ('orbax', 'safetensors')


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
                         'which Gemma2 weights never use.')
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


def transformer_config_from_hf(config_json: dict[str, Any]
                               ) -> models.TransformerConfig:
  """The gemma TransformerConfig equal to a Hugging Face Gemma2 config."""
  if config_json.get('model_type') not in ('gemma2', None):
    raise ValueError(f'config.json has model_type='
                     f'{config_json.get("model_type")!r}; expected gemma2.')
  try:
    embed_dim = config_json['hidden_size']
    num_heads = config_json['num_attention_heads']
    head_dim = config_json.get('head_dim', embed_dim // num_heads)
    num_layers = config_json['num_hidden_layers']
    scalar = config_json.get('query_pre_attn_scalar', head_dim)
    normalisation = models.gm.nn.config.QueryPreAttentionNormalisation
    if scalar == head_dim:
      query_norm = normalisation.BY_ONE_OVER_SQRT_HEAD_DIM
    elif scalar == embed_dim // num_heads:
      query_norm = normalisation.BY_ONE_OVER_SQRT_EMBED_DIM_DIV_NUM_HEADS
    else:
      raise ValueError(
          f'config.json: query_pre_attn_scalar={scalar} is neither head_dim '
          f'({head_dim}) nor hidden_size/num_attention_heads '
          f'({embed_dim // num_heads}); gemma supports only those.')
    rope = config_json.get('rope_theta', 10_000)
    return models.TransformerConfig(
        num_embed=config_json['vocab_size'],
        embed_dim=embed_dim,
        hidden_dim=config_json['intermediate_size'],
        num_heads=num_heads,
        head_dim=head_dim,
        num_kv_heads=config_json['num_key_value_heads'],
        final_logit_softcap=config_json.get('final_logit_softcapping'),
        use_post_attn_norm=True,
        use_post_ffw_norm=True,
        attention_types=(
            (models.AttentionType.LOCAL_SLIDING, models.AttentionType.GLOBAL)
            * ((num_layers + 1) // 2))[:num_layers],
        query_pre_attn_norm=query_norm,
        attn_logits_soft_cap=config_json.get('attn_logit_softcapping'),
        sliding_window_size=config_json.get('sliding_window', 4096),
        # Our tree layout for the gating matrix: [2, embed, hidden].
        transpose_gating_einsum=False,
        local_base_frequency=int(rope),
        global_base_frequency=int(rope),
    )
  except KeyError as e:
    raise ValueError(f'config.json lacks the field {e.args[0]!r}.') from e


def read_hf_config(path: str | os.PathLike[str]) -> models.TransformerConfig:
  """Reads `path/config.json` of a Hugging Face Gemma2 directory."""
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


# (Hugging Face norm name, our norm name) in every layer.
_NORM_NAMES = (
    ('input_layernorm', 'pre_attention_norm'),
    ('post_attention_layernorm', 'post_attention_norm'),
    ('pre_feedforward_layernorm', 'pre_ffw_norm'),
    ('post_feedforward_layernorm', 'post_ffw_norm'),
)

# Reads one shard of a param from the memory-mapped HF tensors.
ShardReader = Callable[[tuple[slice, ...]], np.ndarray]


def _hf_param_readers(tensors: dict[str, np.ndarray],
                      config: models.TransformerConfig
                      ) -> dict[str, tuple[tuple[int, ...], ShardReader]]:
  """Maps our param names to (shape, shard reader) over the HF tensors.

  Every reader applies reshapes/transposes as numpy views, so indexing reads
  only the bytes of the requested shard.
  """
  heads, kv_heads = config.num_heads, config.num_kv_heads
  head_dim, embed = config.head_dim, config.embed_dim

  def view(name, fn=lambda x: x):
    array = fn(tensors[name])
    return tuple(array.shape), lambda index: np.asarray(array[index])

  def stacked(names, fn):
    """Stacks HF tensors along a new leading axis (e.g. k and v)."""
    parts = [fn(tensors[n]) for n in names]
    shape = (len(parts),) + tuple(parts[0].shape)
    def read(index):
      return np.stack([np.asarray(p[index[1:]]) for p in parts[index[0]]])
    return shape, read

  readers = {'embedder/input_embedding': view('model.embed_tokens.weight'),
             'final_norm/scale': view('model.norm.weight')}
  for i in range(config.num_layers):
    hf, ours = f'model.layers.{i}.', f'layer_{i}/'
    readers[ours + 'attn/q_einsum/w'] = view(
        hf + 'self_attn.q_proj.weight',
        lambda w: w.reshape(heads, head_dim, embed).transpose(0, 2, 1))
    readers[ours + 'attn/kv_einsum/w'] = stacked(
        [hf + 'self_attn.k_proj.weight', hf + 'self_attn.v_proj.weight'],
        lambda w: w.reshape(kv_heads, head_dim, embed).transpose(0, 2, 1))
    readers[ours + 'attn/attn_vec_einsum/w'] = view(
        hf + 'self_attn.o_proj.weight',
        lambda w: w.T.reshape(heads, head_dim, embed))
    # gemma computes gelu(x @ w[0]) * (x @ w[1]): w[0] is HF's gate_proj.
    readers[ours + 'mlp/gating_einsum'] = stacked(
        [hf + 'mlp.gate_proj.weight', hf + 'mlp.up_proj.weight'],
        lambda w: w.T)
    readers[ours + 'mlp/linear'] = view(hf + 'mlp.down_proj.weight',
                                        lambda w: w.T)
    for hf_norm, our_norm in _NORM_NAMES:
      readers[ours + our_norm + '/scale'] = view(f'{hf}{hf_norm}.weight')
  return readers


def load_safetensors(path: str | os.PathLike[str], model: models.Model,
                     mesh: jax.sharding.Mesh) -> Params:
  """Loads a Hugging Face Gemma2 directory, each device reading its shard."""
  path = pathlib.Path(path)
  tensors = {name: array
             for name, (array, _) in _read_safetensors_index(path).items()}
  # Tied embeddings: HF may also store lm_head; it must equal the embedding.
  tensors.pop('lm_head.weight', None)
  expected_hf = _expected_hf_shapes(model.config)
  check_matches({k: tuple(v.shape) for k, v in tensors.items()}, expected_hf,
                source=f'Hugging Face checkpoint {str(path)!r}')
  readers = _hf_param_readers(tensors, model.config)
  target = target_params(model, mesh)
  flat_target = _flatten(target)
  check_matches({k: shape for k, (shape, _) in readers.items()},
                _shapes(target), source=f'Hugging Face checkpoint {str(path)!r}')

  def load_leaf(name: str, leaf: jax.ShapeDtypeStruct) -> jax.Array:
    _, read = readers[name]
    return jax.make_array_from_callback(
        leaf.shape, leaf.sharding,
        lambda index: read(index).astype(leaf.dtype))

  flat_params = {name: load_leaf(name, leaf)
                 for name, leaf in flat_target.items()}
  logging.info('Loaded %d tensors from %s.', len(flat_params), path)
  return _unflatten(flat_params)


def _expected_hf_shapes(config: models.TransformerConfig
                        ) -> dict[str, tuple[int, ...]]:
  """The tensors (and shapes) a HF Gemma2 checkpoint of `config` holds."""
  d, h, kv, hd, f = (config.embed_dim, config.num_heads, config.num_kv_heads,
                     config.head_dim, config.hidden_dim)
  shapes = {'model.embed_tokens.weight': (config.num_embed, d),
            'model.norm.weight': (d,)}
  for i in range(config.num_layers):
    p = f'model.layers.{i}.'
    shapes.update({
        p + 'self_attn.q_proj.weight': (h * hd, d),
        p + 'self_attn.k_proj.weight': (kv * hd, d),
        p + 'self_attn.v_proj.weight': (kv * hd, d),
        p + 'self_attn.o_proj.weight': (d, h * hd),
        p + 'mlp.gate_proj.weight': (f, d),
        p + 'mlp.up_proj.weight': (f, d),
        p + 'mlp.down_proj.weight': (d, f),
    })
    for norm, _ in _NORM_NAMES:
      shapes[f'{p}{norm}.weight'] = (d,)
  return shapes


def _unflatten(flat: dict[str, Any]) -> Params:
  tree: Params = {}
  for name, value in flat.items():
    *parents, leaf = name.split('/')
    node = tree
    for parent in parents:
      node = node.setdefault(parent, {})
    node[leaf] = value
  return tree


def save_safetensors(params: Params, config: models.TransformerConfig,
                     path: str | os.PathLike[str], *,
                     max_shard_bytes: int = 5 * 2**30) -> None:
  """Writes params as a Hugging Face Gemma2 directory (export / tests).

  The inverse of `load_safetensors`: `config.json` plus one or more
  `model-0000i-of-0000n.safetensors` files of at most `max_shard_bytes`.
  """
  if config.transpose_gating_einsum:
    raise ValueError('save_safetensors expects the [2, embed, hidden] gating '
                     'layout (transpose_gating_einsum=False).')
  flat = {k: np.asarray(jax.device_get(v)) for k, v in _flatten(params).items()}
  heads, kv, hd, d = (config.num_heads, config.num_kv_heads, config.head_dim,
                      config.embed_dim)
  hf = {'model.embed_tokens.weight': flat['embedder/input_embedding'],
        'model.norm.weight': flat['final_norm/scale']}
  for i in range(config.num_layers):
    p, o = f'model.layers.{i}.', f'layer_{i}/'
    hf[p + 'self_attn.q_proj.weight'] = (
        flat[o + 'attn/q_einsum/w'].transpose(0, 2, 1).reshape(heads * hd, d))
    k, v = flat[o + 'attn/kv_einsum/w']
    hf[p + 'self_attn.k_proj.weight'] = k.transpose(0, 2, 1).reshape(kv * hd, d)
    hf[p + 'self_attn.v_proj.weight'] = v.transpose(0, 2, 1).reshape(kv * hd, d)
    hf[p + 'self_attn.o_proj.weight'] = (
        flat[o + 'attn/attn_vec_einsum/w'].reshape(heads * hd, d).T)
    gate, up = flat[o + 'mlp/gating_einsum']
    hf[p + 'mlp.gate_proj.weight'] = gate.T
    hf[p + 'mlp.up_proj.weight'] = up.T
    hf[p + 'mlp.down_proj.weight'] = flat[o + 'mlp/linear'].T
    for hf_norm, our_norm in _NORM_NAMES:
      hf[f'{p}{hf_norm}.weight'] = flat[f'{o}{our_norm}/scale']

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
  for shard_index, shard in enumerate(shards):
    file_name = (f'model-{shard_index + 1:05d}-of-{len(shards):05d}'
                 '.safetensors')
    header, offset = {}, 0
    for name, array in shard.items():
      header[name] = {'dtype': dtype_names[array.dtype],
                      'shape': list(array.shape),
                      'data_offsets': [offset, offset + array.nbytes]}
      offset += array.nbytes
      weight_map[name] = file_name
    header_bytes = json.dumps(header).encode()
    header_bytes += b' ' * (-len(header_bytes) % 8)
    with open(path / file_name, 'wb') as f:
      f.write(struct.pack('<Q', len(header_bytes)))
      f.write(header_bytes)
      for array in shard.values():
        f.write(array.tobytes())
  (path / 'model.safetensors.index.json').write_text(json.dumps(
      {'metadata': {}, 'weight_map': weight_map}, indent=1))
  (path / 'config.json').write_text(json.dumps(hf_config_json(config),
                                               indent=1))


def hf_config_json(config: models.TransformerConfig) -> dict[str, Any]:
  """The Hugging Face `config.json` fields of a Gemma2 architecture."""
  return {
      'architectures': ['Gemma2ForCausalLM'],
      'model_type': 'gemma2',
      'vocab_size': config.num_embed,
      'hidden_size': config.embed_dim,
      'intermediate_size': config.hidden_dim,
      'num_hidden_layers': config.num_layers,
      'num_attention_heads': config.num_heads,
      'num_key_value_heads': config.num_kv_heads,
      'head_dim': config.head_dim,
      'query_pre_attn_scalar': int(round(config.query_pre_attn_scalar() ** -2)),
      'final_logit_softcapping': config.final_logit_softcap,
      'attn_logit_softcapping': config.attn_logits_soft_cap,
      'sliding_window': config.sliding_window_size,
      'rope_theta': config.global_base_frequency,
      'hidden_activation': 'gelu_pytorch_tanh',
      'rms_norm_eps': 1e-6,
      'tie_word_embeddings': True,
      'pad_token_id': 0, 'eos_token_id': 1, 'bos_token_id': 2,
  }


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
