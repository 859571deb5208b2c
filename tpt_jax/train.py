"""The Train stage: supervised fine-tuning on a round's pruned traces.

`train(config, sources, ...)` reads the round datasets (`input_pipeline`),
builds the optimizer (`optim`), jits one sharded train step over the mesh and
runs it, checkpointing with orbax so that a restart continues bit-exactly, and
saves the round's final params in the `gemma` library's layout
(`gm.ckpts.save_params`: a nested param tree that `gm.ckpts.load_params`, our
sampler and `gm.text.Sampler` load).

Step. The batch (`[B, L]` rows, see `input_pipeline`) is split into
`grad_accum_steps` micro-batches, each strided across the batch so that every
device holds part of every micro-batch. A `lax.scan` sums the gradient of the
*summed* token loss over micro-batches; dividing by the total number of loss
tokens gives exactly the gradient of the mean loss over the whole batch, i.e.
k micro-batches == one k-times-larger batch. Rows attend only within their own
example: the `[B, L, L]` attention mask passed to `gm.nn.Transformer` is
block-diagonal (same segment id) and causal, and positions restart at 0 for
each example. Params and optimizer state are sharded by
`sharding.PARAM_LOGICAL_AXES` (FSDP over `fsdp`, TP over `tensor`), the batch
over (`data`, `fsdp`), and the state buffers are donated.

Precision. The state keeps params in f32 when `f32_master_weights` (the master
copy; optimizer moments are f32 too), else in `config.model.param_dtype`. The
forward pass casts them to `config.model.compute_dtype`; the loss is computed
in f32. Final params are saved in `param_dtype`.

Remat. `gm.nn.Transformer` has no remat option, so with `remat_policy !=
'none'` we train a `RematTransformer`: the same module (same params, same
setup) whose transformer blocks are each wrapped in flax's lifted
`nn.remat` with the named `jax.checkpoint_policies` policy ('full' saves
nothing inside a block). Per-block remat bounds activation memory to one
block's internals plus the block inputs; remat of the whole loss would not.

LoRA. With `lora_rank > 0` the model is wrapped in `gm.nn.LoRA` (adapters on
every attention and MLP einsum). Only the adapters are trained, held in the
train state and checkpointed; the base params are a frozen, sharded argument.
`lora_alpha / lora_rank` scales the adapters' output (applied to `b`).
`merge_lora_params` folds the adapters into a plain param tree for sampling.

Held-out loss. Given held-out examples (`heldout_source`: a round's
'heldout' split, `config.prune.num_heldout_examples`), the run ends by
computing their mean per-token loss under the final train state: the
training loss exactly (completion tokens only, the same forward pass and
masking), summed over every held-out example once and divided by their
loss tokens. It is a global mean over all processes' devices (the batches
are global arrays), returned as `TrainResult.heldout_loss` and written to
TensorBoard as `heldout_loss` at the last step. The trainer has no eval
interval: the loss is computed once, at the end.

Checkpoints (`{workdir}/checkpoints`). An orbax `CheckpointManager` saves
asynchronously every `checkpoint_every` steps and at the end, keeping the last
`checkpoint_keep`; each save holds the train state (step, params or adapters,
optimizer state, RNG) and the data-stream position. On start the latest save
is restored, so a killed run continues with exactly the same batches and
losses. Each finished save gets a sha256 per file
(`{workdir}/checkpoint_digests/<step>.json`, `checkpoint_checksums`); a
checkpoint that differs from its digest or does not restore is reported,
removed, and the next older one is used. Metrics go to TensorBoard event files in `{workdir}/train` and to a
tqdm progress bar.

Length: the SFT loop, its jitted step, remat, LoRA (adapters, merge) and
checkpointing; LoRA and the checkpoint helpers are the next candidates to
move out (not done yet: several other changes edit this module).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
import concurrent.futures
import dataclasses
import functools
import itertools
import logging
import math
import pathlib
import sys
import threading
import time
from typing import Any

import flax
from flax import linen as nn
import jax
import jax.numpy as jnp
from jax.sharding import Mesh, NamedSharding, PartitionSpec
import ml_collections
import optax
import orbax.checkpoint as ocp

from tpt_jax import input_pipeline
from tpt_jax import models
from tpt_jax import optim
from tpt_jax import sharding as sharding_lib
from tpt_jax import tokenizer as tokenizer_lib
from tpt_jax import workdir as workdir_lib
from tpt_jax import _gemma_compat  # pylint: disable=unused-import  # Must precede gemma.
from gemma import gm  # pylint: disable=g-bad-import-order
from gemma import peft  # pylint: disable=g-bad-import-order

Params = dict[str, Any]
Metrics = dict[str, float]

REMAT_NONE = 'none'
REMAT_FULL = 'full'
CHECKPOINT_DIR = 'checkpoints'
CHECKPOINT_DIGEST_DIR = 'checkpoint_digests'
FINAL_PARAMS_DIR = 'final_params'
FINAL_LORA_DIR = 'final_lora'
TENSORBOARD_DIR = 'train'

# Dense bf16 peak FLOP/s per device, by substring of `device.device_kind`.
PEAK_BF16_FLOPS = (
    ('H200', 989e12),
    ('H100', 989e12),  # SXM; the PCIe card is lower (756e12).
    ('A100', 312e12),
    ('TPU v6', 918e12),
    ('TPU v5p', 459e12),
    ('TPU v5 lite', 197e12),
    ('TPU v5e', 197e12),
    ('TPU v4', 275e12),
)


def default_config() -> ml_collections.ConfigDict:
  """`config.train`: the SFT stage's defaults (plain types for overrides)."""
  c = ml_collections.ConfigDict()
  # Optimizer: 'adamw' or 'adafactor' (less memory for large models).
  c.optimizer = 'adamw'
  c.learning_rate = 1e-5
  c.lr_schedule = 'cosine'  # 'cosine', 'linear' or 'constant' after warm-up.
  c.warmup_steps = 10
  # When > 0: the warm-up is this fraction of the run's steps instead (the
  # TPT authors' recipe: 0.1).
  c.warmup_fraction = 0.0
  c.end_lr_factor = 0.1  # Final learning rate = end_lr_factor * peak.
  c.adam_b1 = 0.9
  c.adam_b2 = 0.95
  c.adam_eps = 1e-8
  c.weight_decay = 0.0
  # Params whose '/'-joined path fully matches this regex get no weight decay.
  c.weight_decay_exclude = r'.*(norm|embedding).*'
  c.grad_clip_norm = 1.0  # Global-norm clipping; 0 turns it off.
  # Batch: rows of max_seq_len tokens per optimizer step (global, over all
  # devices and micro-batches). Packed rows hold several examples; without
  # packing a row is one example.
  c.batch_size = 16
  c.grad_accum_steps = 1  # Micro-batches per step; must divide batch_size.
  c.max_seq_len = 512
  c.packing = True
  # Without packing: batches per length-sorting window, and the multiple
  # that batch lengths are padded to (bounds the number of compilations).
  c.bucket_window = 8
  c.pad_to_multiple = 64
  # Examples longer than max_seq_len: 'drop' (warned), 'truncate', 'error'.
  c.too_long = 'drop'
  # Length: num_steps when > 0, else num_epochs passes over the data.
  c.num_steps = 0
  c.num_epochs = 1.0
  # One weight per training source (e.g. this round's and earlier rounds'
  # traces); empty: proportional to the sources' sizes.
  c.mixture_weights = ()
  c.data_split = 'train'
  # Checkpoints: every N steps and at the end, keeping the last K.
  c.checkpoint_every = 100
  c.checkpoint_keep = 3
  # A sha256 per file of each finished checkpoint (in checkpoint_digests/),
  # checked on resume so that a damaged one is refused, not restored. Costs
  # one read of every saved byte, in a background thread, by one process.
  c.checkpoint_checksums = True
  # 'none', 'full' (recompute each block), or a jax.checkpoint_policies name
  # such as 'dots_with_no_batch_dims_saveable'.
  c.remat_policy = REMAT_NONE
  c.lora_rank = 0  # 0: full fine-tuning.
  c.lora_alpha = 0.0  # Adapter scale = lora_alpha / lora_rank; 0: scale 1.
  c.f32_master_weights = True
  c.log_every = 10
  c.progress_bar = True
  return c


def validate_config(config: ml_collections.ConfigDict, num_devices: int
                    ) -> None:
  """Raises ValueError naming the first `config.train` field not allowed."""
  t = config.train
  if t.optimizer not in optim.OPTIMIZERS:
    raise ValueError(f'config.train.optimizer={t.optimizer!r} is not one of '
                     f'{", ".join(optim.OPTIMIZERS)}.')
  if t.lr_schedule not in optim.SCHEDULES:
    raise ValueError(f'config.train.lr_schedule={t.lr_schedule!r} is not '
                     f'one of {", ".join(optim.SCHEDULES)}.')
  if t.too_long not in input_pipeline.TOO_LONG_CHOICES:
    raise ValueError(f'config.train.too_long={t.too_long!r} is not one of '
                     f'{", ".join(input_pipeline.TOO_LONG_CHOICES)}.')
  resolve_remat_policy(t.remat_policy)
  for field in ('batch_size', 'grad_accum_steps', 'max_seq_len',
                'checkpoint_every', 'checkpoint_keep', 'log_every'):
    if t[field] < 1:
      raise ValueError(f'config.train.{field}={t[field]} must be >= 1.')
  if not 0.0 <= t.warmup_fraction < 1.0:
    raise ValueError(
        f'config.train.warmup_fraction={t.warmup_fraction} must lie in '
        '[0, 1).')
  if t.lora_rank < 0:
    raise ValueError(f'config.train.lora_rank={t.lora_rank} must be >= 0.')
  if t.num_steps <= 0 and not t.num_epochs > 0:
    raise ValueError('Set config.train.num_steps > 0 or config.train.'
                     f'num_epochs > 0 (got {t.num_steps}, {t.num_epochs}).')
  if t.batch_size % t.grad_accum_steps:
    raise ValueError(
        f'config.train.grad_accum_steps={t.grad_accum_steps} does not divide '
        f'config.train.batch_size={t.batch_size}.')
  micro = t.batch_size // t.grad_accum_steps
  if micro % num_devices:
    raise ValueError(
        f'config.train.batch_size={t.batch_size} / grad_accum_steps='
        f'{t.grad_accum_steps} = {micro} rows per micro-batch does not divide '
        f'over the {num_devices} devices of the batch axes (data, fsdp).')


# --- the model as trained ----------------------------------------------------


def resolve_remat_policy(name: str) -> Callable[..., bool] | None:
  """The `jax.checkpoint` policy named by `config.train.remat_policy`."""
  if name in (REMAT_NONE, REMAT_FULL):
    return None
  policy = getattr(jax.checkpoint_policies, name, None)
  if policy is None or not callable(policy):
    raise ValueError(
        f'config.train.remat_policy={name!r} is not "none", "full" or a '
        'jax.checkpoint_policies name (e.g. "dots_with_no_batch_dims_'
        'saveable").')
  return policy


def _call_block(block: nn.Module, x, positions, cache, mask):
  return block(x, positions, cache, mask)


class RematTransformer(gm.nn.Transformer):
  """`gm.nn.Transformer` with each block under `nn.remat` (same params).

  Only the block loop differs; everything else (embedding, masks, final
  norm, softcaps, the KV-cache path) is the library's. A distinct class also
  keeps flax's `nn.jit` trace cache of `Transformer.__call__` apart.
  """
  remat_policy: str = REMAT_FULL

  def _apply_attention(self, inputs, cache):
    if cache is not None:  # Decoding: nothing to differentiate.
      return super()._apply_attention(inputs, cache)
    remat_block = nn.remat(_call_block,
                           policy=resolve_remat_policy(self.remat_policy))
    x = inputs.embeddings
    for block in self.blocks:
      _, x = remat_block(block, x, inputs.positions, None,
                         inputs.attention_mask)
    return self.final_norm(x), {}


def lora_scale(train_config: ml_collections.ConfigDict) -> float:
  """Adapter output scale, `lora_alpha / lora_rank` (1 when alpha is 0)."""
  if not train_config.lora_rank or not train_config.lora_alpha:
    return 1.0
  return float(train_config.lora_alpha) / float(train_config.lora_rank)


def training_model(model: models.Model,
                   train_config: ml_collections.ConfigDict) -> models.Model:
  """The model as trained: remat'd blocks and/or LoRA adapters, if asked."""
  module = model.module
  if train_config.remat_policy != REMAT_NONE:
    if isinstance(module, gm.nn.Transformer):
      module = RematTransformer(config=model.config, dtype=model.param_dtype,
                                remat_policy=train_config.remat_policy)
    else:  # Llama / GPT-2 (`tpt_jax.layers.run_blocks`) remat natively.
      module = module.clone(remat=True, remat_policy=resolve_remat_policy(
          train_config.remat_policy))
  if train_config.lora_rank:
    module = gm.nn.LoRA(rank=train_config.lora_rank, model=module,
                        dtype=_master_dtype(model, train_config))
  return dataclasses.replace(model, module=module)


def _master_dtype(model: models.Model,
                  train_config: ml_collections.ConfigDict) -> jnp.dtype:
  return (jnp.dtype(jnp.float32) if train_config.f32_master_weights
          else model.param_dtype)


def _scale_lora(lora_params: Params, scale: float) -> Params:
  if scale == 1.0:
    return lora_params
  def scale_b(path, x):
    return x * scale if sharding_lib.path_to_str(path).endswith('lora/b') else x
  return jax.tree_util.tree_map_with_path(scale_b, lora_params)


def _lora_weight_path(adapter_path: str) -> str:
  """'.../q_einsum/_LoRAEinsum_0' -> '.../q_einsum/w' (gemma's naming)."""
  parent, _, wrapper = adapter_path.rpartition('/')
  prefix = '_LoRAEinsum_'
  if not wrapper.startswith(prefix):
    raise ValueError(f'LoRA params at {adapter_path!r}: only gemma Einsum '
                     'adapters (`_LoRAEinsum_*`) can be merged.')
  name = wrapper[len(prefix):]
  return f'{parent}/{"w" if name.isdigit() else name}'


def _merge_einsum(w: jax.Array, a: jax.Array, b: jax.Array, *,
                  name: str) -> str:
  """Einsum spec 'a,b->w' that rebuilds the weight update from a and b.

  gemma's LoRA keeps the weight's dims in order: `a` has the contracted
  (input/batch) dims then the rank, `b` the rank then the output dims. We
  find the unique split of w's dims that matches the shapes.
  """
  letters = 'abcdefghijklmnopqstuvwxyz'  # 'r' is the rank.
  w_letters = letters[:w.ndim]
  found = []
  for a_dims in itertools.combinations(range(w.ndim), a.ndim - 1):
    b_dims = [d for d in range(w.ndim) if d not in a_dims]
    if (tuple(w.shape[d] for d in a_dims) == tuple(a.shape[:-1]) and
        tuple(w.shape[d] for d in b_dims) == tuple(b.shape[1:])):
      found.append(
          (''.join(w_letters[d] for d in a_dims) + 'r') + ',' +
          ('r' + ''.join(w_letters[d] for d in b_dims)) + '->' + w_letters)
  if len(found) != 1:
    raise ValueError(
        f'Cannot merge LoRA adapters into {name!r}: shapes a={a.shape}, '
        f'b={b.shape}, w={w.shape} fit {len(found)} ways.')
  return found[0]


def merge_lora_params(base_params: Params, lora_params: Params, *,
                      scale: float = 1.0,
                      dtype: jnp.dtype | None = None) -> Params:
  """A plain param tree: `w + scale * a @ b` for every adapter.

  Args:
    base_params: the frozen base model's params.
    lora_params: the adapters, as `peft.split_params(...).lora`.
    scale: adapter scale (`lora_scale(config.train)`).
    dtype: dtype of the merged tree (default: each base leaf's).
  """
  flat_base = {sharding_lib.path_to_str(p): x for p, x in
               jax.tree_util.tree_leaves_with_path(base_params)}
  updates = {}
  for path, leaf in jax.tree_util.tree_leaves_with_path(lora_params):
    path = sharding_lib.path_to_str(path)
    if path.endswith('/lora/a'):
      adapter = path[:-len('/lora/a')]
      weight_path = _lora_weight_path(adapter)
      if weight_path not in flat_base:
        raise ValueError(f'LoRA adapter {adapter!r} has no base weight '
                         f'{weight_path!r}.')
      updates[weight_path] = (leaf, _get_path(lora_params,
                                              f'{adapter}/lora/b'))

  def merge(path, w):
    name = sharding_lib.path_to_str(path)
    out_dtype = dtype or w.dtype
    if name not in updates:
      return w.astype(out_dtype)
    a, b = updates[name]
    spec = _merge_einsum(w, a, b, name=name)
    delta = jnp.einsum(spec, a.astype(jnp.float32), b.astype(jnp.float32))
    return (w.astype(jnp.float32) + scale * delta).astype(out_dtype)

  return jax.tree_util.tree_map_with_path(merge, base_params)


def _get_path(tree: Params, path: str) -> Any:
  for key in path.split('/'):
    tree = tree[key]
  return tree


# --- the step ----------------------------------------------------------------


@flax.struct.dataclass
class TrainState:
  """Everything a step updates and a checkpoint holds (besides data position).

  Attributes:
    step: optimizer steps taken.
    params: trained params (all params, or only LoRA adapters) in master dtype.
    opt_state: the optax state.
    rng: raw PRNG key data, split every step (for stochastic layers; Gemma2
      SFT uses none, but a resume must continue the same stream).
  """
  step: jax.Array
  params: Params
  opt_state: optax.OptState
  rng: jax.Array


def attention_mask(segment_ids: jax.Array) -> jax.Array:
  """`[B, L, L]`: token i attends to j <= i of the same segment only."""
  length = segment_ids.shape[-1]
  causal = jnp.tril(jnp.ones((length, length), jnp.bool_))
  same = segment_ids[:, :, None] == segment_ids[:, None, :]
  return same & causal[None]


def forward(model: models.Model, params: Params, batch: dict[str, jax.Array]
            ) -> jax.Array:
  """Logits `[B, L, V]` of a packed batch (no attention across examples)."""
  return model.apply(params, batch['inputs'], positions=batch['positions'],
                     attention_mask=attention_mask(batch['segment_ids'])
                     ).logits


def loss_terms(params: Params, frozen: Params | None,
               batch: dict[str, jax.Array], *, model: models.Model,
               lora_scale_value: float = 1.0
               ) -> tuple[jax.Array, tuple[jax.Array, jax.Array]]:
  """Summed completion-token loss, and (loss tokens, correct predictions).

  `params` are the trained params; with LoRA they are the adapters and
  `frozen` the base params.
  """
  if frozen is not None:
    params = peft.merge_params(frozen, _scale_lora(params, lora_scale_value))
  logits = forward(model, params, batch).astype(jnp.float32)
  token_loss = optax.softmax_cross_entropy_with_integer_labels(
      logits, batch['targets'])
  mask = batch['loss_mask'].astype(jnp.float32)
  correct = (jnp.argmax(logits, axis=-1) == batch['targets']) * mask
  return jnp.sum(token_loss * mask), (jnp.sum(mask), jnp.sum(correct))


def _micro_batches(batch: dict[str, jax.Array], k: int
                   ) -> dict[str, jax.Array]:
  """`[B, ...]` -> `[k, B/k, ...]`, micro-batch j = rows j, j+k, j+2k, ..."""
  def split(x):
    return x.reshape(x.shape[0] // k, k, *x.shape[1:]).swapaxes(0, 1)
  return jax.tree.map(split, batch)


def train_step(state: TrainState, batch: dict[str, jax.Array],
               frozen: Params | None, *, model: models.Model,
               optimizer: optax.GradientTransformation,
               schedule: optax.Schedule, grad_accum_steps: int = 1,
               lora_scale_value: float = 1.0,
               grad_shardings: Any = None) -> tuple[TrainState, Metrics]:
  """One optimizer step over `batch` (pure; jit it)."""
  grad_fn = jax.value_and_grad(
      functools.partial(loss_terms, model=model,
                        lora_scale_value=lora_scale_value), has_aux=True)

  def to_f32(tree):
    return jax.tree.map(lambda g: g.astype(jnp.float32), tree)

  if grad_accum_steps == 1:
    (loss_sum, (num_tokens, num_correct)), grads = grad_fn(
        state.params, frozen, batch)
    grads = to_f32(grads)
  else:
    def accumulate(carry, micro_batch):
      grads, loss_sum, num_tokens, num_correct = carry
      (loss, (tokens, correct)), micro_grads = grad_fn(
          state.params, frozen, micro_batch)
      grads = jax.tree.map(jnp.add, grads, to_f32(micro_grads))
      return (grads, loss_sum + loss, num_tokens + tokens,
              num_correct + correct), None

    zeros = jax.tree.map(lambda p: jnp.zeros(p.shape, jnp.float32),
                         state.params)
    if grad_shardings is not None:
      zeros = jax.lax.with_sharding_constraint(zeros, grad_shardings)
    zero = jnp.zeros((), jnp.float32)
    (grads, loss_sum, num_tokens, num_correct), _ = jax.lax.scan(
        accumulate, (zeros, zero, zero, zero),
        _micro_batches(batch, grad_accum_steps))

  denominator = jnp.maximum(num_tokens, 1.0)
  grads = jax.tree.map(lambda g: g / denominator, grads)
  updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
  params = optax.apply_updates(state.params, updates)
  rng, _ = jax.random.split(jax.random.wrap_key_data(state.rng))
  new_state = state.replace(step=state.step + 1, params=params,
                            opt_state=opt_state,
                            rng=jax.random.key_data(rng))
  metrics = {
      'loss': loss_sum / denominator,
      'accuracy': num_correct / denominator,
      'grad_norm': optax.tree.norm(grads),
      'learning_rate': schedule(state.step),
      'loss_tokens': num_tokens,
      'tokens': jnp.sum(batch['segment_ids'] > 0).astype(jnp.float32),
  }
  return new_state, metrics


# --- set-up ------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Trainer:
  """The jitted step and what it needs: model, optimizer, mesh, shardings.

  Attributes:
    model: the model as trained (remat / LoRA applied).
    base_model: the plain model (its module loads the final params).
    optimizer, schedule: from `optim.make_optimizer`.
    mesh: the device mesh.
    abstract_params: shapes of the trained params (adapters with LoRA).
    state_shardings: a `TrainState` of shardings.
    frozen_shardings: shardings of the frozen base params (LoRA) or None.
    batch_sharding: sharding of every `[B, L]` batch array.
    step_fn: `(state, batch, frozen) -> (state, metrics)`, jitted, state
      donated.
    state_fn: `(trained params, rng) -> TrainState`, jitted (casts to the
      master dtype, initializes the optimizer).
    init_params_fn: `rng -> trained params`, jitted: the library's random
      init, or LoRA adapters with `b = 0`.
    lora_scale: adapter scale.
    loss_fn: `(trained params, frozen, batch) -> (summed loss, (loss tokens,
      correct predictions))`, jitted: `loss_terms` without a gradient (the
      held-out loss).
  """
  model: models.Model
  base_model: models.Model
  train_config: ml_collections.ConfigDict
  optimizer: optax.GradientTransformation
  schedule: optax.Schedule
  mesh: Mesh
  abstract_params: Params
  state_shardings: TrainState
  frozen_shardings: Params | None
  batch_sharding: NamedSharding
  step_fn: Callable[..., tuple[TrainState, Metrics]]
  state_fn: Callable[[Params, jax.Array], TrainState]
  init_params_fn: Callable[[jax.Array], Params]
  lora_scale: float
  loss_fn: Callable[..., tuple[jax.Array, tuple[jax.Array, jax.Array]]]

  @property
  def is_lora(self) -> bool:
    return bool(self.train_config.lora_rank)

  def init_state(self, rng: jax.Array, params: Params | None = None
                 ) -> TrainState:
    """A fresh, sharded state from `params` (full fine-tuning), else random
    (LoRA adapters always start random with b = 0)."""
    init_rng, state_rng = jax.random.split(rng)
    if params is None or self.is_lora:
      params = self.init_params_fn(init_rng)
    else:
      _check_params_match(params, self.abstract_params)
      params = jax.device_put(params, self.state_shardings.params)
    return self.state_fn(params, state_rng)

  def put_frozen(self, base_params: Params | None) -> Params | None:
    """The LoRA base params, in param dtype and sharded (None otherwise)."""
    if not self.is_lora:
      return None
    if base_params is None:
      raise ValueError('LoRA training (config.train.lora_rank > 0) needs '
                       'the base params: pass init_params.')
    abstract = self.base_model.abstract_params()
    _check_params_match(base_params, abstract)
    params = jax.device_put(base_params, self.frozen_shardings)
    return jax.jit(functools.partial(models.cast,
                                     dtype=self.base_model.param_dtype),
                   out_shardings=self.frozen_shardings)(params)

  def put_batch(self, batch: input_pipeline.Batch) -> dict[str, jax.Array]:
    """Global numpy batch -> arrays sharded over (data, fsdp)."""
    return {k: jax.make_array_from_callback(
        v.shape, self.batch_sharding, lambda index, v=v: v[index])
            for k, v in batch.items()}

  def abstract_state(self) -> TrainState:
    """The train state as sharded `jax.ShapeDtypeStruct`s (nothing
    allocated): restore targets, ahead-of-time compilation."""
    abstract_state = jax.eval_shape(
        lambda: TrainState(
            step=jnp.zeros((), jnp.int32),
            params=self.abstract_params,
            opt_state=self.optimizer.init(self.abstract_params),
            rng=jax.random.key_data(jax.random.key(0))))
    return jax.tree.map(
        lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s),
        abstract_state, self.state_shardings)

  def abstract_step_args(self) -> tuple[TrainState, dict[str, Any],
                                        Params | None]:
    """`step_fn`'s arguments (state, one batch, frozen base params) as
    sharded `jax.ShapeDtypeStruct`s, for compiling it ahead of time."""
    shape = (self.train_config.batch_size, self.train_config.max_seq_len)
    batch = {key: jax.ShapeDtypeStruct(
        shape, jnp.bool_ if key == 'loss_mask' else jnp.int32,
        sharding=self.batch_sharding) for key in input_pipeline.BATCH_KEYS}
    frozen = None
    if self.is_lora:
      frozen = jax.tree.map(
          lambda x, s: jax.ShapeDtypeStruct(
              x.shape, self.base_model.param_dtype
              if jnp.issubdtype(x.dtype, jnp.floating) else x.dtype,
              sharding=s),
          self.base_model.abstract_params(), self.frozen_shardings)
    return self.abstract_state(), batch, frozen

  def final_params(self, state: TrainState, frozen: Params | None
                   ) -> Params:
    """The plain param tree in param dtype (LoRA merged)."""
    dtype = self.base_model.param_dtype
    if self.is_lora:
      return jax.jit(functools.partial(merge_lora_params, scale=self.lora_scale,
                                       dtype=dtype),
                     out_shardings=self.frozen_shardings)(frozen, state.params)
    return jax.jit(functools.partial(models.cast, dtype=dtype),
                   out_shardings=self.state_shardings.params)(state.params)


def _check_params_match(params: Params, abstract: Params) -> None:
  got = jax.tree_util.tree_structure(params)
  want = jax.tree_util.tree_structure(abstract)
  if got != want:
    raise ValueError(
        'init_params do not have the param tree of config.model '
        f'({models.count_params(abstract)} params expected).')
  for (path, x), y in zip(jax.tree_util.tree_leaves_with_path(params),
                          jax.tree_util.tree_leaves(abstract)):
    if tuple(x.shape) != tuple(y.shape):
      raise ValueError(
          f'init_params {sharding_lib.path_to_str(path)} has shape {x.shape}; '
          f'config.model needs {y.shape}.')


def _make_state(params: Params, rng: jax.Array, *,
                optimizer: optax.GradientTransformation,
                master_dtype: jnp.dtype) -> TrainState:
  params = models.cast(params, master_dtype)
  return TrainState(step=jnp.zeros((), jnp.int32), params=params,
                    opt_state=optimizer.init(params),
                    rng=jax.random.key_data(rng))


def _init_lora_adapters(rng: jax.Array, abstract_adapters: Params) -> Params:
  """Adapters as `peft.LoRAEinsumAdapter` initializes them: `a` Kaiming-
  uniform, `b` zeros (so training starts from the base model).

  Cheaper than initializing the whole LoRA-wrapped model for its adapters.
  """
  def init(index_and_path, leaf):
    index, path = index_and_path
    initializer = (peft.LoRAEinsumAdapter.b_init if path.endswith('/b')
                   else peft.LoRAEinsumAdapter.a_init)
    return initializer(jax.random.fold_in(rng, index), leaf.shape, leaf.dtype)

  leaves = jax.tree_util.tree_leaves_with_path(abstract_adapters)
  return jax.tree.unflatten(
      jax.tree.structure(abstract_adapters),
      [init((i, sharding_lib.path_to_str(p)), x)
       for i, (p, x) in enumerate(leaves)])


def make_trainer(config: ml_collections.ConfigDict, *, num_steps: int,
                 mesh: Mesh | None = None,
                 model: models.Model | None = None) -> Trainer:
  """Builds model, optimizer, shardings and the jitted step from `config`.

  Args:
    config: the full config.
    num_steps: optimizer steps (for the schedule).
    mesh: default `sharding.make_mesh(config.mesh)`.
    model: the model to train; default `models.build_model(config.model)`.
      Pass the loaded one when its architecture came from a checkpoint (a
      Hugging Face `config.json`).
  """
  mesh = mesh or sharding_lib.make_mesh(config.mesh)
  validate_config(config, sharding_lib.num_batch_devices(mesh))
  train_config = config.train
  base_model = model or models.build_model(config.model)
  model = training_model(base_model, train_config)
  optimizer, schedule = optim.make_optimizer(train_config, num_steps)
  transpose = bool(base_model.config.transpose_gating_einsum)
  replicated = NamedSharding(mesh, PartitionSpec())

  master_dtype = _master_dtype(base_model, train_config)
  if train_config.lora_rank:
    abstract_full = jax.eval_shape(
        lambda: model.module.init(jax.random.key(0),
                                  jnp.ones((1, 1), jnp.int32))['params'])
    abstract_params = peft.split_params(abstract_full).lora
    frozen_shardings = sharding_lib.param_shardings(
        base_model.abstract_params(), mesh,
        transpose_gating_einsum=transpose)
  else:
    abstract_params = base_model.abstract_params()
    frozen_shardings = None
  abstract_params = jax.tree.map(
      lambda x: jax.ShapeDtypeStruct(x.shape, master_dtype)
      if jnp.issubdtype(x.dtype, jnp.floating) else x, abstract_params)
  param_shardings = sharding_lib.param_shardings(
      abstract_params, mesh, transpose_gating_einsum=transpose)
  state_shardings = TrainState(
      step=replicated, params=param_shardings,
      opt_state=optim.opt_state_shardings(optimizer, abstract_params,
                                          param_shardings, mesh),
      rng=replicated)
  batch_sharding = sharding_lib.batch_sharding(mesh, 2)
  scale = lora_scale(train_config)
  step = functools.partial(
      train_step, model=model, optimizer=optimizer, schedule=schedule,
      grad_accum_steps=train_config.grad_accum_steps, lora_scale_value=scale,
      grad_shardings=param_shardings)
  step_fn = jax.jit(
      step,
      in_shardings=(state_shardings, batch_sharding, frozen_shardings),
      out_shardings=(state_shardings, replicated),
      donate_argnums=(0,))
  if train_config.lora_rank:
    init_params = functools.partial(_init_lora_adapters,
                                    abstract_adapters=abstract_params)
  else:
    init_params = base_model.init_params
  init_params_fn = jax.jit(init_params, out_shardings=param_shardings)
  state_fn = jax.jit(
      functools.partial(_make_state, optimizer=optimizer,
                        master_dtype=master_dtype),
      out_shardings=state_shardings)
  loss_fn = jax.jit(
      functools.partial(loss_terms, model=model, lora_scale_value=scale),
      in_shardings=(param_shardings, frozen_shardings, batch_sharding),
      out_shardings=replicated)
  return Trainer(model=model, base_model=base_model, train_config=train_config,
                 optimizer=optimizer, schedule=schedule, mesh=mesh,
                 abstract_params=abstract_params,
                 state_shardings=state_shardings,
                 frozen_shardings=frozen_shardings,
                 batch_sharding=batch_sharding, step_fn=step_fn,
                 state_fn=state_fn, init_params_fn=init_params_fn,
                 lora_scale=scale, loss_fn=loss_fn)


def mean_loss(trainer: Trainer, params: Params, frozen: Params | None,
              batches: Sequence[input_pipeline.Batch]) -> float | None:
  """The mean per-token loss of `batches` (global numpy batches, e.g.
  `input_pipeline.evaluation_batches`) under the trained `params`: their
  summed completion-token loss over their loss tokens; None without any.

  Every process passes the same global batches; the sums are global.
  """
  loss_sum, num_tokens = 0.0, 0.0
  for batch in batches:
    batch_loss, (batch_tokens, _) = trainer.loss_fn(
        params, frozen, trainer.put_batch(batch))
    loss_sum += float(batch_loss)
    num_tokens += float(batch_tokens)
  return loss_sum / num_tokens if num_tokens else None


def num_train_steps(train_config: ml_collections.ConfigDict,
                    pipeline: input_pipeline.InputPipeline) -> int:
  """`num_steps`, or the batches of `num_epochs` passes over the data."""
  if train_config.num_steps > 0:
    return int(train_config.num_steps)
  examples = math.ceil(train_config.num_epochs * pipeline.num_examples)
  return max(1, pipeline.batches_for_examples(examples))


# --- checkpoints -------------------------------------------------------------


def checkpoint_manager(directory: str | pathlib.Path,
                       train_config: ml_collections.ConfigDict
                       ) -> ocp.CheckpointManager:
  """Async saves every `checkpoint_every` steps, keeping `checkpoint_keep`."""
  options = ocp.CheckpointManagerOptions(
      save_interval_steps=train_config.checkpoint_every,
      max_to_keep=train_config.checkpoint_keep,
      enable_async_checkpointing=True,
      # A save cut short by a kill leaves a temporary directory; drop it.
      cleanup_tmp_directories=True,
      create=True)
  return ocp.CheckpointManager(
      workdir_lib.as_path(directory), options=options,
      item_handlers={'state': ocp.StandardCheckpointHandler(),
                     'data': ocp.JsonCheckpointHandler()})


def save_checkpoint(manager: ocp.CheckpointManager, step: int,
                    state: TrainState,
                    data_state: input_pipeline.PipelineState, *,
                    force: bool = False) -> bool:
  """Starts an async save of `state` + data position, if `step` is due.

  `step` must be `state.step` (passed so that no device sync is needed to
  decide; orbax skips steps that are not due unless `force`).
  """
  return manager.save(step, args=ocp.args.Composite(
      state=ocp.args.StandardSave(state),
      data=ocp.args.JsonSave(data_state)), force=force)


def restore_checkpoint(manager: ocp.CheckpointManager, trainer: Trainer,
                       step: int
                       ) -> tuple[TrainState, input_pipeline.PipelineState]:
  """The state (sharded like a fresh one) and data position saved at step."""
  abstract_state = trainer.abstract_state()
  restored = manager.restore(step, args=ocp.args.Composite(
      state=ocp.args.StandardRestore(abstract_state),
      data=ocp.args.JsonRestore()))
  return restored['state'], restored['data']


class CheckpointDigests:
  """sha256 of every file of each finished checkpoint, one JSON per step in
  `directory` (beside the checkpoints), so that resume refuses a damaged
  checkpoint (zeroed bytes keep a file's size and orbax restores them
  silently) and falls back to an intact one.

  A save is digested once it has finished: orbax's next `save` (and
  `wait_until_finished`) waits for the previous one, so after those every
  step that `manager.all_steps()` lists is complete but the one just
  started. Digests are computed by
  the writer process in a background thread; a step deleted meanwhile (by
  `checkpoint_keep`) is skipped. A step without a digest (the run was killed
  between the save and its digest, or `enabled` is False) is restored
  unchecked.
  """

  def __init__(self, manager: ocp.CheckpointManager,
               directory: str | pathlib.Path, *, enabled: bool = True):
    self._manager = manager
    self._directory = workdir_lib.as_path(directory)
    self._enabled = enabled and workdir_lib.is_writer()
    self._executor = None
    self._pending: set[int] = set()
    self._lock = threading.Lock()

  def path(self, step: int) -> pathlib.Path:
    return self._directory / f'{step}.json'

  def record_finished(self, in_progress: int | None = None) -> None:
    """Starts digesting every finished step that has no digest yet and
    drops the digests of steps orbax removed. Call after `manager.save`
    started the save of step `in_progress` (then every other listed step is
    complete) or after `manager.wait_until_finished`."""
    if not self._enabled:
      return
    steps = set(self._manager.all_steps())
    self._drop_removed(steps)
    with self._lock:
      todo = sorted(step for step in steps - self._pending - {in_progress}
                    if not self.path(step).exists())
      self._pending.update(todo)
    if not todo:
      return
    if self._executor is None:
      self._executor = concurrent.futures.ThreadPoolExecutor(
          max_workers=1, thread_name_prefix='checkpoint-digest')
    for step in todo:
      self._executor.submit(self._digest, step)

  def _drop_removed(self, steps: set[int]) -> None:
    if self._directory.exists():
      for path in self._directory.iterdir():
        if path.stem.isdigit() and int(path.stem) not in steps:
          path.unlink(missing_ok=True)

  def _digest(self, step: int) -> None:
    step_dir = workdir_lib.as_path(self._manager.directory) / str(step)
    try:
      digest = workdir_lib.directory_digest(step_dir)
      if step in self._manager.all_steps():
        self._directory.mkdir(parents=True, exist_ok=True)
        workdir_lib.write_json(self.path(step), digest)
    except FileNotFoundError:  # Removed by checkpoint_keep meanwhile.
      pass
    finally:
      with self._lock:
        self._pending.discard(step)

  def damaged_files(self, step: int) -> list[str] | None:
    """The files of checkpoint `step` that differ from its digest (empty:
    intact), or None when it has no readable digest (then said so)."""
    path = self.path(step)
    if not path.exists():
      return None
    try:
      expected = workdir_lib.read_json(path)
    except ValueError as e:  # Damaged digest file (e.g. truncated JSON).
      expected = e
    if not (isinstance(expected, dict) and
            all(isinstance(v, str) for v in expected.values())):
      print(f'Checkpoint digest {path} is unreadable; restoring checkpoint '
            f'{step} unchecked.', flush=True)
      return None
    return workdir_lib.damaged_files(
        workdir_lib.as_path(self._manager.directory) / str(step), expected)

  def forget(self, step: int) -> None:
    if workdir_lib.is_writer():
      self.path(step).unlink(missing_ok=True)

  def close(self) -> None:
    """Waits for the digests under way."""
    if self._executor is not None:
      self._executor.shutdown(wait=True)
      self._executor = None
      self._drop_removed(set(self._manager.all_steps()))


def save_final_params(params: Params, path: str | pathlib.Path) -> str:
  """Saves a plain param tree where `gm.ckpts.load_params` reads it.

  Replaces what is already at `path` (a re-run of a finished round).
  """
  path = workdir_lib.as_path(path)
  if jax.process_index() == 0 and path.exists():
    path.rmtree()
  if jax.process_count() > 1:
    from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top
    multihost_utils.sync_global_devices(f'tpt_jax.train: cleared {path}')
  gm.ckpts.save_params(params, path, wait_until_finished=True)
  return str(path)


# --- metrics -----------------------------------------------------------------


def device_peak_flops(device: jax.Device) -> float | None:
  """Dense bf16 peak FLOP/s of one device, when its kind is known."""
  kind = getattr(device, 'device_kind', '')
  for name, flops in PEAK_BF16_FLOPS:
    if name.lower() in kind.lower():
      return flops
  return None


def model_flops_per_token(transformer_config: Any, num_params: int,
                          seq_len: int, *, trained_fraction: float = 1.0
                          ) -> float:
  """Training FLOPs per token: 6N (tied embedding's logit matmul included)
  plus attention's 12 * layers * heads * head_dim * seq_len.

  With LoRA, frozen weights need no weight gradient: 4N instead of 6N
  (`trained_fraction` = 0), ignoring the small adapters.
  """
  dense = (4.0 + 2.0 * trained_fraction) * num_params
  attention = (12.0 * transformer_config.num_layers *
               transformer_config.num_heads * transformer_config.head_dim *
               seq_len)
  return dense + attention


class _MetricsLogger:
  """TensorBoard scalars, a tqdm bar and throughput, on process 0."""

  def __init__(self, workdir: pathlib.Path, *, total_steps: int,
               start_step: int, flops_per_token: float,
               peak_flops: float | None, progress_bar: bool):
    self._enabled = jax.process_index() == 0
    self._writer = None
    if self._enabled:
      from flax.metrics import tensorboard  # pylint: disable=g-import-not-at-top
      self._writer = tensorboard.SummaryWriter(str(workdir / TENSORBOARD_DIR))
    import tqdm  # pylint: disable=g-import-not-at-top
    self._bar = tqdm.tqdm(total=total_steps, initial=start_step,
                          desc='train', unit='step', file=sys.stderr,
                          disable=not (self._enabled and progress_bar))
    self._flops_per_token = flops_per_token
    self._peak_flops = peak_flops
    self._window_start: float | None = None

  def step_done(self) -> None:
    self._bar.update(1)

  def scalar(self, name: str, value: float, step: int) -> None:
    if self._writer is not None:
      self._writer.scalar(name, value, step)
      self._writer.flush()

  def write(self, steps_metrics: list[tuple[int, Metrics]],
            first_window: bool) -> Metrics:
    """Writes per-step scalars; adds tokens/s and MFU for the window."""
    now = time.perf_counter()
    extra = {}
    # The window that compiled the step says nothing about throughput.
    if self._window_start is not None and not first_window:
      seconds = now - self._window_start
      tokens = sum(m['tokens'] for _, m in steps_metrics)
      extra['tokens_per_sec'] = tokens / seconds
      extra['steps_per_sec'] = len(steps_metrics) / seconds
      if self._peak_flops:
        extra['mfu'] = (extra['tokens_per_sec'] * self._flops_per_token /
                        (self._peak_flops * jax.device_count()))
    self._window_start = now
    last_step, last = steps_metrics[-1]
    if self._writer is not None:
      for step, metrics in steps_metrics:
        for name, value in metrics.items():
          self._writer.scalar(name, value, step)
      for name, value in extra.items():
        self._writer.scalar(name, value, last_step)
      self._writer.flush()
    self._bar.set_postfix(loss=f'{last["loss"]:.4f}',
                          lr=f'{last["learning_rate"]:.2e}',
                          **{k: f'{v:.3g}' for k, v in extra.items()})
    return extra

  def close(self) -> None:
    self._bar.close()
    if self._writer is not None:
      self._writer.close()


# --- the loop ----------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class TrainResult:
  """What a round's training produced.

  Attributes:
    params: final plain params (param dtype, LoRA merged), sharded.
    params_path: where they are saved (`gm.ckpts.load_params` layout).
    num_steps: total optimizer steps of the round.
    history: per-step metrics of the steps this call ran (step, metrics).
    heldout_loss: the mean per-token loss of the held-out examples under
      the final state (None without held-out examples).
  """
  params: Params
  params_path: str
  num_steps: int
  history: tuple[tuple[int, Metrics], ...]
  heldout_loss: float | None = None


def _restore_or_init(manager: ocp.CheckpointManager, trainer: Trainer,
                     pipeline: input_pipeline.InputPipeline,
                     total_steps: int, *, seed: int,
                     init_params: Params | None,
                     digests: CheckpointDigests) -> TrainState:
  """The newest intact checkpoint's state (moving `pipeline` to its
  position), or a fresh one.

  A checkpoint whose files differ from their digest, or that orbax cannot
  restore (e.g. a truncated file), is reported, removed, and the next older
  one is tried; with none left, training starts over.
  """
  latest = manager.latest_step()
  if latest is None:
    return trainer.init_state(jax.random.key(seed),
                              None if trainer.is_lora else init_params)
  if latest > total_steps:
    raise ValueError(
        f'{manager.directory} holds a checkpoint at step {latest}, past this '
        f'run\'s {total_steps} steps (config.train.num_steps/num_epochs); '
        'train in a fresh workdir.')
  for step in sorted(manager.all_steps(), reverse=True):
    damaged = digests.damaged_files(step)
    if damaged:
      print(f'Damaged checkpoint (checksum mismatch): {", ".join(damaged)}; '
            'removing it and trying an earlier one.', flush=True)
    else:
      try:
        state, data_state = restore_checkpoint(manager, trainer, step)
      except Exception as e:  # pylint: disable=broad-except
        print(f'Checkpoint {manager.directory}/{step} cannot be restored '
              f'({type(e).__name__}: '
              f'{(str(e).splitlines() or [""])[0][:200]}); removing it and '
              'trying an earlier one.', flush=True)
      else:
        pipeline.restore(data_state)
        logging.info('Resumed from %s at step %d%s.', manager.directory, step,
                     '' if damaged == [] else ' (no digest to check)')
        return state
    manager.delete(step)
    digests.forget(step)
  print(f'No checkpoint in {manager.directory} restores; training from the '
        'start.', flush=True)
  return trainer.init_state(jax.random.key(seed),
                            None if trainer.is_lora else init_params)


def train(config: ml_collections.ConfigDict,
          sources: Sequence[input_pipeline.Source], *,
          tokenizer: tokenizer_lib.Tokenizer | None = None,
          workdir: str | pathlib.Path | None = None,
          init_params: Params | None = None,
          mesh: Mesh | None = None,
          step_callback: Callable[[int, Metrics], None] | None = None,
          model: models.Model | None = None,
          heldout_source: input_pipeline.Source | None = None,
          heldout_split: str = 'heldout',
          ) -> TrainResult:
  """Fine-tunes on `sources`, resuming from `{workdir}/checkpoints` if any.

  Args:
    config: the full config (`model`, `mesh`, `tokenizer`, `train`, `seed`).
    sources: round datasets (TFDS directories or sequences of dicts with
      `prompt` and `completion`), mixed by `config.train.mixture_weights`.
    tokenizer: default: loaded from `config.tokenizer.path`.
    workdir: default `config.workdir`; checkpoints, TensorBoard events and
      the final params go under it.
    init_params: starting params (the round's input checkpoint); random when
      None. Required with LoRA (they are the frozen base).
    mesh: default: `sharding.make_mesh(config.mesh)`.
    step_callback: called as `(step, metrics)` for every step, in order, when
      its metrics are fetched (every `log_every` steps).
    model: the model trained (see `make_trainer`); default built from
      `config.model`.
    heldout_source: held-out examples (a dataset directory, read at
      `heldout_split`, or a sequence of {'prompt', 'completion'}); their mean
      per-token loss under the final state is `TrainResult.heldout_loss`.
      Read and tokenized before training (as `config.train.too_long` says),
      so a bad source fails before any step.
    heldout_split: the split of a `heldout_source` directory.

  Returns:
    The final params, where they were saved, the metrics history and the
    held-out loss.
  """
  workdir = workdir or config.get('workdir')
  if not workdir:
    raise ValueError('No workdir: pass workdir= or set config.workdir.')
  workdir = workdir_lib.as_path(workdir)
  train_config = config.train
  tokenizer = tokenizer or tokenizer_lib.tokenizer_from_config(
      config.tokenizer)
  pipeline = input_pipeline.build_pipeline(
      sources, tokenizer, train_config=train_config,
      chat_template=config.tokenizer.chat_template, seed=config.seed)
  heldout = None
  if heldout_source is not None:
    heldout = input_pipeline.tokenize_source(
        heldout_source, tokenizer, chat_template=config.tokenizer.chat_template,
        max_seq_len=train_config.max_seq_len, too_long=train_config.too_long,
        split=heldout_split, allow_empty=True)
  total_steps = num_train_steps(train_config, pipeline)
  trainer = make_trainer(config, num_steps=total_steps, mesh=mesh,
                         model=model)
  frozen = trainer.put_frozen(init_params)

  manager = checkpoint_manager(workdir / CHECKPOINT_DIR, train_config)
  digests = CheckpointDigests(
      manager, workdir / CHECKPOINT_DIGEST_DIR,
      enabled=train_config.get('checkpoint_checksums', True))
  logger = None
  try:
    state = _restore_or_init(manager, trainer, pipeline, total_steps,
                             seed=config.seed, init_params=init_params,
                             digests=digests)
    start_step = int(jax.device_get(state.step))
    num_params = models.count_params(trainer.base_model.abstract_params())
    logger = _MetricsLogger(
        workdir, total_steps=total_steps, start_step=start_step,
        flops_per_token=model_flops_per_token(
            trainer.base_model.config, num_params, train_config.max_seq_len,
            trained_fraction=0.0 if trainer.is_lora else 1.0),
        peak_flops=device_peak_flops(jax.devices()[0]),
        progress_bar=train_config.progress_bar)
    history: list[tuple[int, Metrics]] = []
    pending: list[tuple[int, dict[str, jax.Array]]] = []

    def flush(first_window: bool) -> None:
      # Fetching syncs with the device: done every log_every steps only.
      fetched = [(s, {k: float(v) for k, v in m.items()})
                 for s, m in jax.device_get(pending)]
      pending.clear()
      fetched[-1][1].update(logger.write(fetched, first_window))
      for step, metrics in fetched:
        history.append((step, metrics))
        if step_callback is not None:
          step_callback(step, metrics)

    for step in range(start_step + 1, total_steps + 1):
      batch = trainer.put_batch(pipeline.next_batch())
      state, metrics = trainer.step_fn(state, batch, frozen)
      pending.append((step, metrics))
      logger.step_done()
      if save_checkpoint(manager, step, state, pipeline.state,
                         force=step == total_steps):
        digests.record_finished(in_progress=step)
      if step % train_config.log_every == 0 or step == total_steps:
        flush(first_window=not history)
    if manager.latest_step() != total_steps:
      save_checkpoint(manager, total_steps, state, pipeline.state,
                      force=True)
    manager.wait_until_finished()
    digests.record_finished()
    heldout_loss = None
    if heldout is not None:
      heldout_loss = mean_loss(
          trainer, state.params, frozen, input_pipeline.evaluation_batches(
              heldout, max_seq_len=train_config.max_seq_len,
              batch_size=(train_config.batch_size //
                          train_config.grad_accum_steps)))
      if heldout_loss is None:
        logging.warning('%s: no held-out example fits max_seq_len=%d; no '
                        'held-out loss.', heldout.name,
                        train_config.max_seq_len)
      else:
        logger.scalar('heldout_loss', heldout_loss, total_steps)
    final = trainer.final_params(state, frozen)
    params_path = save_final_params(final, workdir / FINAL_PARAMS_DIR)
    if trainer.is_lora:
      save_final_params(models.cast(state.params,
                                    trainer.base_model.param_dtype),
                        workdir / FINAL_LORA_DIR)
  finally:
    manager.close()
    digests.close()
    if logger is not None:
      logger.close()
  return TrainResult(params=final, params_path=params_path,
                     num_steps=total_steps, history=tuple(history),
                     heldout_loss=heldout_loss)
