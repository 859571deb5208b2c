r"""Gemma2-9B: Think, Prune, Train on GSM8K.

Run (TPU v5e-16 / v4-16, or 8x 80 GB GPUs; params and optimizer state are
sharded FSDP over the `fsdp` mesh axis):

  python -m tpt_jax.main --config=configs/gemma2_9b.py \
      --config.checkpoint.path=/ckpts/gemma2-9b \
      --config.tokenizer.path=/ckpts/tokenizer.model --workdir=/tmp/tpt_9b

Measured: not yet run end to end by us; the TPT paper reports GSM8K Pass@1
of 82% for Gemma2-9B after TPT.
"""

from tpt_jax import config as config_lib


def get_config():
  config = config_lib.base_config()
  config.model.variant = 'gemma2_9b'
  return config
