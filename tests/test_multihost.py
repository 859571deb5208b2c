"""Several processes (jax.distributed over gloo, 2 CPU devices each) run the
headless command as on a multi-host slice: same results as one process,
one writer per file, a lost process stops the others, a resume finishes.

Tolerance: sampled traces and datasets are compared exactly; evaluation
metrics within 1e-9 (they are fractions of problems, so any trace that
differed would show); log-probabilities within 1e-4 (each host samples on
its own 2-device mesh, one process on a 4-device mesh: float rounding of
differently sharded programs).
"""

import json
import os
import pathlib
import socket
import subprocess
import sys
import time

import pytest

from tpt_jax import records

_REPO = pathlib.Path(__file__).resolve().parents[1]
_CONFIG = _REPO / 'configs' / 'tiny.py'
# Two shards of train problems per round, so that both processes sample;
# 5 held-out examples, whose loss is a global mean over the processes.
_ARGS = ('--config.loop.problems_per_shard=4', '--config.train.num_steps=3',
         '--config.sampling.show_progress=False',
         '--config.train.progress_bar=False',
         '--config.prune.num_heldout_examples=5')


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(('127.0.0.1', 0))
    return s.getsockname()[1]


def _env(devices: int, cache: pathlib.Path) -> dict[str, str]:
  return {
      'PATH': os.environ.get('PATH', '/usr/bin:/bin'),
      'PYTHONPATH': str(_REPO),
      'JAX_PLATFORMS': 'cpu',
      'XLA_FLAGS': f'--xla_force_host_platform_device_count={devices}',
      'TF_CPP_MIN_LOG_LEVEL': '3',
      'JAX_CPU_COLLECTIVES_IMPLEMENTATION': 'gloo',
      'JAX_COMPILATION_CACHE_DIR': str(cache),
      'JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS': '0',
  }


def _start(workdirs, *, cache, crash_at=None, extra=()):
  """Starts one process per workdir (the same dir for a shared workdir);
  `crash_at` = (process index, crash point)."""
  port = _free_port()
  processes = []
  for index, workdir in enumerate(workdirs):
    env = _env(2, cache)
    env.update({'JAX_COORDINATOR_ADDRESS': f'127.0.0.1:{port}',
                'JAX_NUM_PROCESSES': str(len(workdirs)),
                'JAX_PROCESS_ID': str(index)})
    if crash_at and crash_at[0] == index:
      env['TPT_JAX_CRASH_AT'] = crash_at[1]
    processes.append(subprocess.Popen(
        [sys.executable, '-m', 'tpt_jax.main', f'--config={_CONFIG}',
         f'--workdir={workdir}', *_ARGS, *extra],
        cwd=_REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
        text=True))
  return processes


def _finish(processes, timeout=900):
  outputs = []
  for process in processes:
    out, _ = process.communicate(timeout=timeout)
    outputs.append((process.returncode, out))
  return outputs


def _run_ok(workdir, cache, **kwargs):
  outputs = _finish(_start([workdir, workdir], cache=cache, **kwargs))
  for code, out in outputs:
    assert code == 0, out[-3000:]
  return outputs


def _samples(workdir, directory):
  rows = []
  for path in sorted((workdir / directory).glob('shard_*.json')):
    rows.extend(json.loads(path.read_text())['records'])
  return rows


def _results(workdir):
  summary = json.loads((workdir / 'summary.json').read_text())
  dataset = records.read_round(workdir / 'round_1' / 'dataset')
  return summary, dataset, _samples(workdir, 'round_1/think')


@pytest.fixture(scope='module')
def cache(tmp_path_factory):
  return tmp_path_factory.mktemp('jax_cache')


@pytest.fixture(scope='module')
def single(tmp_path_factory, cache):
  """The reference: one process with 4 devices."""
  workdir = tmp_path_factory.mktemp('single')
  result = subprocess.run(
      [sys.executable, '-m', 'tpt_jax.main', f'--config={_CONFIG}',
       f'--workdir={workdir}', *_ARGS], cwd=_REPO, env=_env(4, cache),
      capture_output=True, text=True, check=False, timeout=900)
  assert result.returncode == 0, result.stderr[-3000:]
  return workdir


@pytest.fixture(scope='module')
def double(tmp_path_factory, cache):
  """Two processes with 2 devices each, one shared workdir."""
  workdir = tmp_path_factory.mktemp('double')
  _run_ok(workdir, cache)
  return workdir


def test_two_processes_equal_one(single, double):
  summary_1, dataset_1, samples_1 = _results(single)
  summary_2, dataset_2, samples_2 = _results(double)
  assert [(s['problem_id'], s['sample_index'], s['completion'],
           s['num_tokens'], s['correct']) for s in samples_2] == [
               (s['problem_id'], s['sample_index'], s['completion'],
                s['num_tokens'], s['correct']) for s in samples_1]
  for a, b in zip(samples_1, samples_2):
    assert a['logprob_sum'] == pytest.approx(b['logprob_sum'], abs=1e-4)
  assert dataset_2 == dataset_1
  assert [r['round'] for r in summary_2['rounds']] == [0, 1]
  for r1, r2 in zip(summary_1['rounds'], summary_2['rounds']):
    for name, value in r1['metrics'].items():
      if name.startswith(('pass@', 'maj@')):
        assert r2['metrics'][name] == pytest.approx(value, abs=1e-9), name
  # Both processes wrote think shards: the work was split.
  assert len(_samples(double, 'round_1/think')) == 16 * 2
  # The held-out split (written once) and its loss (a global mean: the same
  # as one process's up to the float rounding of the training steps).
  heldout = [records.read_round(workdir / 'round_1' / 'dataset',
                                split=records.HELDOUT_SPLIT)
             for workdir in (single, double)]
  assert len(heldout[0]) == 5 and heldout[1] == heldout[0]
  assert len(dataset_1) == 16 * 2 - 5
  loss_1 = summary_1['rounds'][1]['metrics']['heldout_loss']
  loss_2 = summary_2['rounds'][1]['metrics']['heldout_loss']
  assert loss_2 == pytest.approx(loss_1, rel=1e-4)


@pytest.mark.parametrize('crash_point', ['think:1:1', 'train:1:2'])
def test_a_killed_process_stops_the_other_and_a_rerun_resumes(
    tmp_path, cache, double, crash_point):
  workdir = tmp_path / 'run'
  processes = _start([workdir, workdir], cache=cache, crash_at=(1, crash_point))
  killed = processes[1]
  killed.wait(timeout=900)
  died = time.monotonic()
  assert killed.returncode != 0
  processes[0].communicate(timeout=300)
  waited = time.monotonic() - died
  assert processes[0].returncode != 0
  assert waited < 120, f'process 0 took {waited:.0f}s to stop'
  _run_ok(workdir, cache)
  summary, dataset, samples = _results(workdir)
  assert (summary, dataset, samples) == _results(double)


def test_a_workdir_the_processes_do_not_share_is_refused(tmp_path, cache):
  outputs = _finish(_start([tmp_path / 'host0', tmp_path / 'host1'],
                           cache=cache))
  for code, out in outputs:
    assert code == 2, out[-3000:]
    assert 'is not shared by the 2 processes' in out


def test_processes_with_different_configs_are_refused(tmp_path, cache):
  port = _free_port()
  processes = []
  for index, seed in enumerate((0, 1)):
    env = _env(2, cache)
    env.update({'JAX_COORDINATOR_ADDRESS': f'127.0.0.1:{port}',
                'JAX_NUM_PROCESSES': '2', 'JAX_PROCESS_ID': str(index)})
    processes.append(subprocess.Popen(
        [sys.executable, '-m', 'tpt_jax.main', f'--config={_CONFIG}',
         f'--workdir={tmp_path / "other"}', *_ARGS, f'--config.seed={seed}'],
        cwd=_REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
        text=True))
  for code, out in _finish(processes):
    assert code == 2, out[-3000:]
    assert 'started with another config' in out
