r"""Gemma2-9B-it: the TPT authors' released GSM8K protocol.

Run (a TPU slice or GPUs; see "Hardware": not yet shown to fit one):

  python -m tpt_jax.main --config=configs/tpt_paper_gemma2_9b_it.py \
      --config.checkpoint.path=/ckpts/gemma-2-9b-it \
      --config.tokenizer.path=/ckpts/tokenizer.model --workdir=/tmp/tpt_paper_9b

`checkpoint.path`: the instruction-tuned checkpoint (orbax or Hugging Face
`google/gemma-2-9b-it`). The recipe (`config_lib.set_tpt_paper`): see
configs/tpt_paper_gemma2_2b_it.py.

Hardware: not compiled yet. As configured (mesh (1, -1, 1)) the plan
refuses v5e-16 before compiling (exit 2): "config.train.batch_size=8 /
grad_accum_steps=4 = 2 rows per micro-batch does not divide over the 16
devices of the batch axes". The paper's 2-row micro-batch needs a mesh whose
(data x fsdp) is 1 or 2, the rest on tensor (Gemma2-9B has 16 query and 8
KV heads), e.g. --config.mesh.shape='(1,2,8)'
--config.mesh.sampling_shape='(-1,1,4)'; check it with
`python -m tpt_jax.plan` before booking (configs/tpt_paper_gemma2_2b_it.py
shows the 2B on v5e-8).

Measured: not run by us. The paper reports GSM8K Pass@1 41.9% -> 57.6% for
Gemma2-2B and 82% for Gemma2-9B under its protocol.
"""

from tpt_jax import config as config_lib


def get_config():
  config = config_lib.base_config()
  config.model.variant = 'gemma2_9b'
  config_lib.set_tpt_paper(config)
  return config
