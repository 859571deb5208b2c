r"""The embedded default: runs on a 2-core CPU with nothing downloaded.

  python -m tpt_jax.main --config=configs/demo.py --workdir=/tmp/tpt_demo

Hardware: any CPU. A Gemma2-architecture model of 1.05M params (4 layers,
local-sliding + global attention, both softcaps, GQA) with random weights,
in float32. Today it sets up the mesh and model and reports them (seconds);
the full Think -> Prune -> Train loop on a built-in task lands with the loop
stage.
"""

from tpt_jax import config as config_lib


def get_config():
  config = config_lib.base_config()
  config.model.variant = 'gemma2_demo'
  config.model.param_dtype = 'float32'
  config.model.compute_dtype = 'float32'
  return config
