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

REPO_ROOT = pathlib.Path(__file__).resolve().parents[1]
SHARED_DATA = REPO_ROOT.parent / 'shared' / 'data'
