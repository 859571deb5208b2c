r"""Gemma2-27B: Think, Prune, Train on GSM8K.

Run (TPU v5e-32 / v4-32 or larger, or 16x 80 GB GPUs over two hosts; on
several hosts start the same command on each, jax.distributed is initialised
from the environment):

  python -m tpt_jax.main --config=configs/gemma2_27b.py \
      --config.checkpoint.path=/ckpts/gemma2-27b \
      --config.tokenizer.path=/ckpts/tokenizer.model --workdir=/tmp/tpt_27b

Measured: not yet run by us.
"""

from tpt_jax import config as config_lib


def get_config():
  config = config_lib.base_config()
  config.model.variant = 'gemma2_27b'
  # 27B's params alone are 54 GB in bf16: shard them over tensor as well.
  config.mesh.shape = (1, -1, 4)
  return config
