r"""Gemma2-9B-it: the TPT authors' released GSM8K protocol.

Run (TPU v5e-16 / v4-16, or 8x 80 GB GPUs):

  python -m tpt_jax.main --config=configs/tpt_paper_gemma2_9b_it.py \
      --config.checkpoint.path=/ckpts/gemma-2-9b-it \
      --config.tokenizer.path=/ckpts/tokenizer.model --workdir=/tmp/tpt_paper_9b

`checkpoint.path`: the instruction-tuned checkpoint (orbax or Hugging Face
`google/gemma-2-9b-it`). The recipe (`config_lib.set_tpt_paper`): see
configs/tpt_paper_gemma2_2b_it.py.

Measured: not run by us. The paper reports GSM8K Pass@1 41.9% -> 57.6% for
Gemma2-2B and 82% for Gemma2-9B under its protocol.
"""

from tpt_jax import config as config_lib


def get_config():
  config = config_lib.base_config()
  config.model.variant = 'gemma2_9b'
  config_lib.set_tpt_paper(config)
  return config
