"""Think and train throughput with several processes vs one, on this host.

    python scripts/bench_multihost.py [--devices=4 --processes=2]

Runs the tiny model's Think stage (sampling + verification of demo problems,
`stages.think`) and its train step (`train.make_trainer`) twice: in one
process with `--devices` CPU devices, then in `--processes` processes
(jax.distributed over gloo) with `--devices / --processes` devices each, the
way `python -m tpt_jax.main` runs on a multi-host slice (each host samples
its own shards; training is one global program). Each measurement follows a
warm-up pass that compiles. Prints tokens/s for both and
`multihost_think_ratio=<1-process / N-process time>` (target on a 2-core
CPU: within 3x, i.e. ratio >= 0.33) and the same for train.
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import socket
import subprocess
import sys
import tempfile
import time

_REPO = pathlib.Path(__file__).resolve().parents[1]


def _worker(args: argparse.Namespace) -> None:
  """One process: sample and train, print a JSON line of timings."""
  import jax  # pylint: disable=g-import-not-at-top
  import numpy as np  # pylint: disable=g-import-not-at-top
  from tpt_jax import config as config_lib  # pylint: disable=g-import-not-at-top
  from tpt_jax import sharding  # pylint: disable=g-import-not-at-top
  from tpt_jax import stages  # pylint: disable=g-import-not-at-top
  from tpt_jax import train  # pylint: disable=g-import-not-at-top
  from tpt_jax import workdir as workdir_lib  # pylint: disable=g-import-not-at-top

  config = config_lib.base_config()
  config.model.variant = 'gemma2_tiny'
  config.model.param_dtype = config.model.compute_dtype = 'float32'
  config.task.num_train_problems = args.problems
  config.sampling.num_samples_per_problem = 4
  config.sampling.max_new_tokens = args.new_tokens
  config.sampling.batch_size = 32
  config.sampling.show_progress = False
  config.loop.problems_per_shard = 8
  config.train.batch_size = 8
  config.train.max_seq_len = 256
  sharding.maybe_initialize_distributed(config.mesh)
  workdir = workdir_lib.as_path(args.workdir)
  ctx = stages.setup(config, workdir)
  settings = stages.sampling_settings(config.sampling, seed=0)
  timings = {}
  for attempt in ('warmup', 'timed'):
    directory = workdir / f'think_{attempt}'
    start = time.perf_counter()
    samples = stages.think(ctx, ctx.base_params, ctx.train_problems, settings,
                           directory, crash_prefix='bench',
                           description='bench')
    timings[f'think_{attempt}_s'] = time.perf_counter() - start
  timings['think_tokens'] = sum(s.num_tokens for s in samples)
  trainer = train.make_trainer(config, num_steps=args.train_steps + 1,
                               mesh=ctx.mesh, model=ctx.model)
  state = trainer.init_state(jax.random.key(0), ctx.base_params)
  rng = np.random.default_rng(0)
  shape = (config.train.batch_size, config.train.max_seq_len)
  batch = trainer.put_batch({
      'inputs': rng.integers(3, 500, shape).astype(np.int32),
      'targets': rng.integers(3, 500, shape).astype(np.int32),
      'positions': np.tile(np.arange(shape[1], dtype=np.int32), (shape[0], 1)),
      'segment_ids': np.ones(shape, np.int32),
      'loss_mask': np.ones(shape, np.bool_)})
  state, metrics = trainer.step_fn(state, batch, None)
  jax.block_until_ready(metrics)
  start = time.perf_counter()
  for _ in range(args.train_steps):
    state, metrics = trainer.step_fn(state, batch, None)
  jax.block_until_ready(metrics)
  timings['train_s'] = time.perf_counter() - start
  timings['train_tokens'] = args.train_steps * shape[0] * shape[1]
  if jax.process_index() == 0:
    print('RESULT ' + json.dumps(timings), flush=True)


def _launch(args: argparse.Namespace, processes: int) -> dict[str, float]:
  devices = args.devices // processes
  workdir = tempfile.mkdtemp(prefix='bench_multihost_')
  with socket.socket() as s:
    s.bind(('127.0.0.1', 0))
    port = s.getsockname()[1]
  children = []
  for index in range(processes):
    env = {**os.environ, 'JAX_PLATFORMS': 'cpu',
           'XLA_FLAGS': f'--xla_force_host_platform_device_count={devices}',
           'TF_CPP_MIN_LOG_LEVEL': '3',
           'JAX_CPU_COLLECTIVES_IMPLEMENTATION': 'gloo',
           'PYTHONPATH': str(_REPO)}
    if processes > 1:
      env.update({'JAX_COORDINATOR_ADDRESS': f'127.0.0.1:{port}',
                  'JAX_NUM_PROCESSES': str(processes),
                  'JAX_PROCESS_ID': str(index)})
    children.append(subprocess.Popen(
        [sys.executable, __file__, '--worker', f'--workdir={workdir}',
         f'--problems={args.problems}', f'--new_tokens={args.new_tokens}',
         f'--train_steps={args.train_steps}'],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True))
  outputs = [child.communicate()[0] for child in children]
  for child, out in zip(children, outputs):
    if child.returncode:
      raise SystemExit(f'A benchmark process failed:\n{out[-3000:]}')
  line = next(l for l in outputs[0].splitlines() if l.startswith('RESULT '))
  return json.loads(line[len('RESULT '):])


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('--devices', type=int, default=4)
  parser.add_argument('--processes', type=int, default=2)
  parser.add_argument('--problems', type=int, default=64)
  parser.add_argument('--new_tokens', type=int, default=32)
  parser.add_argument('--train_steps', type=int, default=10)
  parser.add_argument('--worker', action='store_true')
  parser.add_argument('--workdir', default='')
  args = parser.parse_args()
  if args.worker:
    _worker(args)
    return
  if args.devices % args.processes:
    raise SystemExit(f'--devices={args.devices} must divide into '
                     f'--processes={args.processes}.')
  one = _launch(args, 1)
  many = _launch(args, args.processes)
  for name, result in ((f'1 process x {args.devices} devices', one),
                       (f'{args.processes} processes x '
                        f'{args.devices // args.processes} devices', many)):
    print(f'{name}: think {result["think_tokens"] / result["think_timed_s"]:,.0f}'
          f' tokens/s ({result["think_timed_s"]:.2f} s), train '
          f'{result["train_tokens"] / result["train_s"]:,.0f} tokens/s '
          f'({result["train_s"]:.2f} s)')
  print(f'multihost_think_ratio={one["think_timed_s"] / many["think_timed_s"]:.2f}')
  print(f'multihost_train_ratio={one["train_s"] / many["train_s"]:.2f}')


if __name__ == '__main__':
  main()
