r"""Gemma2-9B: Think, Prune, Train on GSM8K.

Run (params and optimizer state are sharded FSDP over the `fsdp` mesh axis;
see "Hardware": as configured it does not fit a v5e-16 or a v4-16, so
plan your slice first with `python -m tpt_jax.plan`):

  python -m tpt_jax.main --config=configs/gemma2_9b.py \
      --config.checkpoint.path=/ckpts/gemma2-9b \
      --config.tokenizer.path=/ckpts/tokenizer.model --workdir=/tmp/tpt_9b

Recipe (`config_lib.set_gsm8k_tpt`): GSM8K read from
`--config.task.gsm8k_path` (a directory with train.jsonl/test.jsonl, or
'tfds'; default ../shared/data/gsm8k), 4-shot prompts, 4 samples per problem
at temperature 0.8, keep the correct ones, 3 recursive rounds of full
fine-tuning; greedy Pass@1, pass@4 and maj@4 on the test split each round.

Hardware (`python -m tpt_jax.plan`: libtpu's compiler on a CPU host, no
TPU attached; bytes per chip):

  python -m tpt_jax.plan --config=configs/gemma2_9b.py --topology=v5e-16
    does NOT fit (exit 3; 10 min here): train_step 52.7 of 15.75 GiB (2.2
    GiB params + 4.3 GiB AdamW state, 46.2 GiB temporaries at 4 rows of
    1,024 tokens per chip); the continuous engine's prefill of 16 prompts of
    2,048 tokens 21.5 GiB (over). Its decode (256 slots, 1.6 GiB page pool)
    fits: 3.2 GiB, a step est. 39.6 ms, 9% of the HBM roofline on fsdp=16
    (the weights are all-gathered every step; a tensor axis for sampling,
    `--config.mesh.sampling_shape='(-1,1,4)'`, keeps them local).
  On v4-16 the defaults do not fit either (the train step's temporaries, as
  above); start from the 2B overrides (grad_accum_steps=8, sampling.batch_size=128,
  prompt buckets up to 1,024) and check with the plan:
    python -m tpt_jax.plan --config=configs/gemma2_9b.py --topology=v4-16 \
        --config.train.grad_accum_steps=8 --config.sampling.batch_size=128 \
        --config.sampling.prompt_length_buckets='(256,384,512,768,1024)'
  With those overrides and --programs=train, v4-16's train step compiles
  (8 min here) at 31.7 GiB per chip: 12.9 GiB params + AdamW state, 18.7 GiB
  temporaries, est. 4.5 s per step, est. MFU 38%; that is over the 30.75 GiB
  XLA leaves a v4 chip, so the plan now exits 3 for it. With --programs=think
  the static engine's Think programs (measured before the continuous engine
  became the default) fit (11 min here): decode 22.9 GiB, prefill 10.3 GiB, a
  decode step over the full 1,407-slot cache est. 35 ms. Eval programs are
  not compiled yet.

Measured: not yet run end to end by us; the TPT paper reports GSM8K Pass@1
of 82% for Gemma2-9B after TPT.
"""

from tpt_jax import config as config_lib


def get_config():
  config = config_lib.base_config()
  config.model.variant = 'gemma2_9b'
  config_lib.set_gsm8k_tpt(config)
  return config
