"""Test set-up: 8 simulated CPU devices for the whole session.

XLA reads the flag once, when jax first initialises its backend, so it is set
here, before any test module imports jax. Single-device tests pass
`jax.devices()[:1]` explicitly.
"""

import os
import pathlib

os.environ['XLA_FLAGS'] = (os.environ.get('XLA_FLAGS', '') +
                           ' --xla_force_host_platform_device_count=8')
os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')
# With libtpu installed (the `tpu` extra), jax would otherwise try a TPU
# backend first on this CPU host; tests run on the CPU.
os.environ.setdefault('JAX_PLATFORMS', 'cpu')

REPO_ROOT = pathlib.Path(__file__).resolve().parents[1]
SHARED_DATA = REPO_ROOT.parent / 'shared' / 'data'


import subprocess  # pylint: disable=g-import-not-at-top,wrong-import-position
import sys  # pylint: disable=g-import-not-at-top,wrong-import-position

import pytest  # pylint: disable=g-import-not-at-top,wrong-import-position

# tpt_jax.workdir.CRASH_ENV: names points where the process SIGKILLs itself.
_CRASH_ENV = 'TPT_JAX_CRASH_AT'


@pytest.fixture(scope='session')
def run_main(tmp_path_factory):
  """Runs `python -m tpt_jax.main --config=... --workdir=...` as a user does,
  on 2 simulated CPU devices, optionally killing itself at a crash point.

  The runs of a session share a persistent compilation cache, so reruns do
  not recompile.
  """
  compile_cache = tmp_path_factory.mktemp('jax_cache')

  def run(config_file, workdir, *, crash_at=None, extra=()):
    env = {
        'PATH': os.environ.get('PATH', '/usr/bin:/bin'),
        'PYTHONPATH': str(REPO_ROOT),
        'JAX_PLATFORMS': 'cpu',
        'XLA_FLAGS': '--xla_force_host_platform_device_count=2',
        'TF_CPP_MIN_LOG_LEVEL': '3',
        'JAX_COMPILATION_CACHE_DIR': str(compile_cache),
        'JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS': '0',
        'JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES': '0',
    }
    if crash_at:
      env[_CRASH_ENV] = crash_at
    return subprocess.run(
        [sys.executable, '-m', 'tpt_jax.main', f'--config={config_file}',
         f'--workdir={workdir}', *extra],
        cwd=REPO_ROOT, env=env, capture_output=True, text=True, check=False,
        timeout=900)

  return run
