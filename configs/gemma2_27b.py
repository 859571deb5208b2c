r"""Gemma2-27B: Think, Prune, Train on GSM8K.

Run (TPU v5e-32 / v4-32 or larger, or 16x 80 GB GPUs over two hosts; on
several hosts start the same command on each, jax.distributed is initialised
from the environment):

  python -m tpt_jax.main --config=configs/gemma2_27b.py \
      --config.checkpoint.path=/ckpts/gemma2-27b \
      --config.tokenizer.path=/ckpts/tokenizer.model --workdir=/tmp/tpt_27b

Recipe (`config_lib.set_gsm8k_tpt`): GSM8K read from
`--config.task.gsm8k_path` (a directory with train.jsonl/test.jsonl, or
'tfds'; default ../shared/data/gsm8k), 4-shot prompts, 4 samples per problem
at temperature 0.8, keep the correct ones, 3 recursive rounds of full
fine-tuning; greedy Pass@1, pass@4 and maj@4 on the test split each round.

Measured: not yet run by us.
"""

from tpt_jax import config as config_lib


def get_config():
  config = config_lib.base_config()
  config.model.variant = 'gemma2_27b'
  config_lib.set_gsm8k_tpt(config)
  # 27B's params alone are 54 GB in bf16: shard them over tensor as well.
  config.mesh.shape = (1, -1, 4)
  return config
