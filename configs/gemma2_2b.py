r"""Gemma2-2B: Think, Prune, Train on GSM8K.

Run (see "Hardware": as configured this does not fit a v5e-8 or a v4-8; plan
your slice first with `python -m tpt_jax.plan`):

  python -m tpt_jax.main --config=configs/gemma2_2b.py \
      --config.checkpoint.path=/ckpts/gemma2-2b \
      --config.tokenizer.path=/ckpts/tokenizer.model --workdir=/tmp/tpt_2b

`checkpoint.path` takes the official orbax checkpoint (e.g. `gemma2-2b`
from Kaggle) or a Hugging Face directory (`google/gemma-2-2b`).

Recipe (`config_lib.set_gsm8k_tpt`): GSM8K read from
`--config.task.gsm8k_path` (a directory with train.jsonl/test.jsonl, or
'tfds'; default ../shared/data/gsm8k), 4-shot prompts, 4 samples per problem
at temperature 0.8, keep the correct ones, 3 recursive rounds of full
fine-tuning; greedy Pass@1, pass@4 and maj@4 on the test split each round.

Hardware, compiled for the slice by `python -m tpt_jax.plan` (libtpu's
compiler on a 2-core CPU host, no TPU attached; bytes per chip; prompts at
the largest bucket):

  python -m tpt_jax.plan --config=configs/gemma2_2b.py --topology=v5e-8
    does NOT fit (exit 3): train_step 51.5 of 16 GiB (47.8 GiB of
    temporaries at 8 rows of 1,024 tokens per chip). 13 min here.
  ... --topology=v4-8
    does NOT fit (exit 3): train_step 56.7 of 32 GiB. 20 min here.
  ... --topology=v5e-8 --config.train.grad_accum_steps=8
    train_step still over: 18.1 GiB (3.7 GiB params + AdamW state, 14.4 GiB
    temporaries at 1 row per chip and micro-batch; est. MFU 25%).
  ... --topology=v5e-8 --programs=think
    Think (the continuous engine, 256 slots, a pool of 320 tokens per slot)
    fits on this config's sampling mesh (`mesh.sampling_shape=(-1, 1, 1)`:
    params replicated, slots over the 8 chips): prefill of 8 prompts of
    2,048 tokens 8.7 GiB (est. 47 ms), decode call 6.1 GiB; a decode step
    6.0 GiB. XLA's bytes accessed (21.7 GB) give est. 26.6 ms, 29% of the
    HBM roofline (the step's arguments read once); they also count the
    weights' copies into on-chip memory. The HBM traffic of the compiled
    buffers is 6.56 GB: est. 8.0 ms, 96% of the roofline (a lower bound on
    time). On the training mesh (fsdp=8) the step is 2.0 GiB but est.
    27.5 ms and 8% by XLA's bytes, before the all-gather of 4.3 GiB of
    weights per step over ICI that the estimate leaves out. 9 min here.
  ... --topology=v5e-8 --programs=think --config.sampling.engine=static
    the static engine's decode step holds 256 rows x 2,431 cache slots (12.6
    GiB; its decode loop 38.3 GiB: exit 3); its HBM traffic is 13.6 GB,
    est. 16.6 ms per step: 2.1x the continuous engine's.
  GSM8K 4-shot prompts are under ~900 tokens, so capping the buckets at
  1,024 is safe for this task. Not yet compiled: larger slices (v5e-16,
  v4-16), a tensor axis, Adafactor or bf16 master weights, which would cut
  the train step's parameter copies.

Measured: not yet run end to end by us; the TPT paper reports GSM8K Pass@1
going from 41.9% to 57.6% for Gemma2-2B.
"""

from tpt_jax import config as config_lib


def get_config():
  config = config_lib.base_config()
  config.model.variant = 'gemma2_2b'
  config_lib.set_gsm8k_tpt(config)
  # Sampling reads every weight once per token: keep them on each chip (5.2
  # GB in bfloat16) and split the slots instead (see "Hardware").
  config.mesh.sampling_shape = (-1, 1, 1)
  return config
