r"""Gemma2-9B: Think, Prune, Train on GSM8K.

Run (TPU v5e-16 / v4-16, or 8x 80 GB GPUs; params and optimizer state are
sharded FSDP over the `fsdp` mesh axis):

  python -m tpt_jax.main --config=configs/gemma2_9b.py \
      --config.checkpoint.path=/ckpts/gemma2-9b \
      --config.tokenizer.path=/ckpts/tokenizer.model --workdir=/tmp/tpt_9b

Recipe (`config_lib.set_gsm8k_tpt`): GSM8K read from
`--config.task.gsm8k_path` (a directory with train.jsonl/test.jsonl, or
'tfds'; default ../shared/data/gsm8k), 4-shot prompts, 4 samples per problem
at temperature 0.8, keep the correct ones, 3 recursive rounds of full
fine-tuning; greedy Pass@1, pass@4 and maj@4 on the test split each round.

Measured: not yet run end to end by us; the TPT paper reports GSM8K Pass@1
of 82% for Gemma2-9B after TPT.
"""

from tpt_jax import config as config_lib


def get_config():
  config = config_lib.base_config()
  config.model.variant = 'gemma2_9b'
  config_lib.set_gsm8k_tpt(config)
  return config
