"""The SFT optimizer: optax AdamW or Adafactor, schedule, clipping, decay mask.

`make_optimizer(config.train, num_steps)` returns

  clip_by_global_norm(grad_clip_norm)            (when > 0)
  -> adamw(schedule, b1, b2, eps, weight_decay, mask)   or
     adafactor(schedule, weight_decay_rate, weight_decay_mask)

The learning rate warms up linearly over `warmup_steps` (reaching the peak at
the end of warm-up, never 0 on the first step) and then decays to
`end_lr_factor * learning_rate` along a cosine or a line, or stays constant.
Weight decay is applied to every param whose '/'-joined path does not match
`weight_decay_exclude` (by default: norm scales and the embedding).

Gradient accumulation is not an optax wrapper: the train step sums
token-weighted gradients over micro-batches and normalizes by the total
number of loss tokens, which is exactly the larger batch's gradient.
"""

from __future__ import annotations

import re
from typing import Any

import jax
from jax.sharding import Mesh, NamedSharding, PartitionSpec
import jax.numpy as jnp
import ml_collections
import optax

from tpt_jax import sharding as sharding_lib

OPTIMIZERS = ('adamw', 'adafactor')
SCHEDULES = ('cosine', 'linear', 'constant')


def learning_rate_schedule(train_config: ml_collections.ConfigDict,
                           num_steps: int) -> optax.Schedule:
  """Linear warm-up to `learning_rate`, then cosine / linear decay or flat."""
  kind = train_config.lr_schedule
  if kind not in SCHEDULES:
    raise ValueError(f'config.train.lr_schedule={kind!r} is not one of '
                     f'{", ".join(SCHEDULES)}.')
  peak = float(train_config.learning_rate)
  end = peak * float(train_config.end_lr_factor)
  warmup = max(int(train_config.warmup_steps), 0)
  if train_config.get('warmup_fraction', 0.0) > 0:
    warmup = int(round(float(train_config.warmup_fraction) * num_steps))
  decay_steps = max(num_steps - warmup, 1)

  def schedule(step):
    step = jnp.asarray(step, jnp.float32)
    warm = peak * jnp.minimum(1.0, (step + 1.0) / max(warmup, 1))
    progress = jnp.clip((step - warmup) / decay_steps, 0.0, 1.0)
    if kind == 'cosine':
      decayed = end + (peak - end) * 0.5 * (1.0 + jnp.cos(jnp.pi * progress))
    elif kind == 'linear':
      decayed = peak + (end - peak) * progress
    else:
      decayed = jnp.asarray(peak, jnp.float32)
    return jnp.where(step < warmup, warm, decayed)

  return schedule


def weight_decay_mask(params: Any, exclude_regex: str) -> Any:
  """True for params that are decayed: paths not matching `exclude_regex`."""
  pattern = re.compile(exclude_regex) if exclude_regex else None

  def decayed(path, _):
    return not (pattern and pattern.fullmatch(sharding_lib.path_to_str(path)))

  return jax.tree_util.tree_map_with_path(decayed, params)


def make_optimizer(train_config: ml_collections.ConfigDict, num_steps: int
                   ) -> tuple[optax.GradientTransformation, optax.Schedule]:
  """The optimizer and its learning-rate schedule, from `config.train`."""
  schedule = learning_rate_schedule(train_config, num_steps)
  weight_decay = float(train_config.weight_decay)

  def mask(params):
    return weight_decay_mask(params, train_config.weight_decay_exclude)

  name = train_config.optimizer
  if name == 'adamw':
    optimizer = optax.adamw(
        schedule, b1=train_config.adam_b1, b2=train_config.adam_b2,
        eps=train_config.adam_eps, weight_decay=weight_decay, mask=mask)
  elif name == 'adafactor':
    optimizer = optax.adafactor(
        schedule, weight_decay_rate=weight_decay or None,
        weight_decay_mask=mask if weight_decay else None)
  else:
    raise ValueError(f'config.train.optimizer={name!r} is not one of '
                     f'{", ".join(OPTIMIZERS)}.')
  if train_config.grad_clip_norm > 0:
    optimizer = optax.chain(
        optax.clip_by_global_norm(train_config.grad_clip_norm), optimizer)
  return optimizer, schedule


def opt_state_shardings(optimizer: optax.GradientTransformation,
                        abstract_params: Any, param_shardings: Any,
                        mesh: Mesh) -> Any:
  """Shardings of the optimizer state: each param-shaped leaf like its param.

  A state leaf belongs to a param when the param's path is a suffix of the
  leaf's path (optax nests param trees under its own fields) and the shapes
  agree; everything else (step counts, Adafactor's factored row/column
  statistics) is replicated.
  """
  by_path = {}
  for (path, leaf), sharding in zip(
      jax.tree_util.tree_leaves_with_path(abstract_params),
      jax.tree_util.tree_leaves(param_shardings)):
    by_path[sharding_lib.path_to_str(path)] = (tuple(leaf.shape), sharding)
  replicated = NamedSharding(mesh, PartitionSpec())

  def leaf_sharding(path, leaf):
    parts = sharding_lib.path_to_str(path).split('/')
    for start in range(len(parts)):
      match = by_path.get('/'.join(parts[start:]))
      if match and match[0] == tuple(leaf.shape):
        return match[1]
    return replicated

  abstract_state = jax.eval_shape(optimizer.init, abstract_params)
  return jax.tree_util.tree_map_with_path(leaf_sharding, abstract_state)
