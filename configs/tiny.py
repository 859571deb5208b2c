r"""A tiny Gemma2-architecture model with random weights, for tests on CPU.

Run (any machine, seconds):

  python -m tpt_jax.main --config=configs/tiny.py --workdir=/tmp/tpt_tiny

Same code path as the real models (local-sliding + global layers, both
softcaps, grouped-query attention) at 0.18M params, in float32.
"""

from tpt_jax import config as config_lib


def get_config():
  config = config_lib.base_config()
  config.model.variant = 'gemma2_tiny'
  config.model.param_dtype = 'float32'
  config.model.compute_dtype = 'float32'
  return config
