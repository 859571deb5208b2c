"""Train-step throughput of `tpt_jax.train`: tokens/s, and MFU on a GPU.

    python scripts/bench_train.py                  # tiny model, any backend
    python scripts/bench_train.py --steps=20 --gemma2_2b_batch=2

Always measures the tiny model (`gemma2_tiny`, f32 on CPU, bf16 elsewhere).
Where `jax.default_backend() == 'gpu'`, also Gemma2-2B shapes with random
weights in bf16 (f32 master weights and AdamW state), reporting tokens/s and
MFU = model FLOPs/s / (peak bf16 FLOP/s x devices), with model FLOPs per token
= 6 N + 12 layers x heads x head_dim x seq_len (`train.model_flops_per_token`)
and the peak from `train.PEAK_BF16_FLOPS` (H100 / H200 SXM: 989 TFLOP/s).

What is timed: the jitted, sharded train step alone (one packed batch kept
on device, fed again every step, so the host input pipeline is not in the
figure), after `--warmup` steps that include compilation.
"""

from __future__ import annotations

import argparse
import time

import jax
import ml_collections
import numpy as np

from tpt_jax import config as config_lib
from tpt_jax import input_pipeline
from tpt_jax import models
from tpt_jax import train


def synthetic_batch(batch_size: int, seq_len: int, vocab_size: int,
                    seed: int = 0) -> input_pipeline.Batch:
  """Full rows, each packed with examples of random length (about 1/3
  prompt), in the layout `input_pipeline` produces."""
  rng = np.random.default_rng(seed)
  batch = {k: np.zeros((batch_size, seq_len), np.int32)
           for k in ('inputs', 'targets', 'positions', 'segment_ids')}
  batch['loss_mask'] = np.zeros((batch_size, seq_len), np.bool_)
  for row in range(batch_size):
    start, segment = 0, 1
    while start < seq_len:
      length = min(int(rng.integers(seq_len // 8, seq_len // 2 + 1)),
                   seq_len - start)
      span = slice(start, start + length)
      batch['inputs'][row, span] = rng.integers(3, vocab_size, length)
      batch['targets'][row, span] = rng.integers(3, vocab_size, length)
      batch['positions'][row, span] = np.arange(length)
      batch['segment_ids'][row, span] = segment
      batch['loss_mask'][row, span] = np.arange(length) >= length // 3
      start, segment = start + length, segment + 1
  return batch


def bench_config(variant: str, *, batch_size: int, seq_len: int,
                 dtype: str, remat_policy: str) -> ml_collections.ConfigDict:
  config = config_lib.base_config()
  config.model.variant = variant
  config.model.param_dtype = config.model.compute_dtype = dtype
  config.train = train.default_config()
  config.train.update(dict(batch_size=batch_size, max_seq_len=seq_len,
                           remat_policy=remat_policy, warmup_steps=1,
                           f32_master_weights=True, progress_bar=False))
  return config


def bench(config: ml_collections.ConfigDict, *, steps: int, warmup: int
          ) -> dict[str, float]:
  """Times `steps` train steps after `warmup` ones; returns throughput."""
  trainer = train.make_trainer(config, num_steps=steps + warmup)
  state = trainer.init_state(jax.random.key(0))
  vocab_size = trainer.base_model.config.num_embed
  batch = trainer.put_batch(synthetic_batch(
      config.train.batch_size, config.train.max_seq_len, vocab_size))
  tokens_per_step = float(np.asarray(jax.device_get(
      (batch['segment_ids'] > 0).sum())))
  compile_start = time.perf_counter()
  for _ in range(warmup):
    state, metrics = trainer.step_fn(state, batch, None)
  jax.block_until_ready(metrics)
  compile_and_warmup = time.perf_counter() - compile_start
  start = time.perf_counter()
  for _ in range(steps):
    state, metrics = trainer.step_fn(state, batch, None)
  loss = float(jax.device_get(metrics['loss']))  # Waits for the last step.
  seconds = (time.perf_counter() - start) / steps
  num_params = models.count_params(trainer.base_model.abstract_params())
  tokens_per_sec = tokens_per_step / seconds
  result = {
      'params': num_params,
      'step_seconds': seconds,
      'tokens_per_sec': tokens_per_sec,
      'warmup_seconds': compile_and_warmup,
      'loss': loss,
  }
  peak = train.device_peak_flops(jax.devices()[0])
  if peak:
    flops_per_token = train.model_flops_per_token(
        trainer.base_model.config, num_params, config.train.max_seq_len)
    result['mfu'] = tokens_per_sec * flops_per_token / (
        peak * jax.device_count())
  return result


def _report(name: str, config: ml_collections.ConfigDict,
            result: dict[str, float]) -> None:
  devices = jax.devices()
  line = (f'{name}: {result["params"] / 1e6:.2f}M params, '
          f'{config.model.param_dtype}, batch {config.train.batch_size} x '
          f'{config.train.max_seq_len}, remat {config.train.remat_policy}, '
          f'{len(devices)} x {devices[0].device_kind}: '
          f'{result["tokens_per_sec"]:,.0f} tokens/s '
          f'({result["step_seconds"] * 1e3:.1f} ms/step')
  if 'mfu' in result:
    line += f', MFU {100 * result["mfu"]:.1f}%'
  line += f'; compile+warm-up {result["warmup_seconds"]:.1f} s)'
  print(line, flush=True)


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--steps', type=int, default=10)
  parser.add_argument('--warmup', type=int, default=2)
  parser.add_argument('--tiny_batch', type=int, default=8,
                      help='Rows per device for the tiny model.')
  parser.add_argument('--tiny_seq_len', type=int, default=256)
  parser.add_argument('--gemma2_2b_batch', type=int, default=4,
                      help='Rows per device for Gemma2-2B (GPU only).')
  parser.add_argument('--gemma2_2b_seq_len', type=int, default=2048)
  parser.add_argument('--gemma2_2b_remat', default='dots_with_no_batch_dims_'
                      'saveable', help='config.train.remat_policy for 2B.')
  args = parser.parse_args()

  backend = jax.default_backend()
  num_devices = jax.device_count()
  tiny = bench_config(
      'gemma2_tiny', batch_size=args.tiny_batch * num_devices,
      seq_len=args.tiny_seq_len,
      dtype='float32' if backend == 'cpu' else 'bfloat16',
      remat_policy='none')
  _report('gemma2_tiny', tiny, bench(tiny, steps=args.steps,
                                     warmup=args.warmup))
  if backend != 'gpu':
    print(f'No GPU (backend {backend!r}): skipping Gemma2-2B.')
    return
  gemma2_2b = bench_config(
      'gemma2_2b', batch_size=args.gemma2_2b_batch * num_devices,
      seq_len=args.gemma2_2b_seq_len, dtype='bfloat16',
      remat_policy=args.gemma2_2b_remat)
  _report('gemma2_2b', gemma2_2b, bench(gemma2_2b, steps=args.steps,
                                        warmup=args.warmup))


if __name__ == '__main__':
  main()
