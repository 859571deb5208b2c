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
    temporaries), think decode 30.0 GiB (256 rows x 2,431 cache slots),
    think prefill 20.3 GiB, eval prefill 28.3 GiB. Compiled in 13 min here.
  ... --topology=v4-8
    does NOT fit (exit 3): train_step 56.7 of 32 GiB, decode 59.8 GiB, eval
    prefill 38.2 GiB; think prefill fits (20.0 GiB). 20 min here.
  ... --topology=v5e-8 --config.train.grad_accum_steps=8 \
      --config.sampling.batch_size=128 \
      --config.sampling.prompt_length_buckets='(256,384,512,768,1024)'
    sampling fits (decode 7.8 GiB, prefill 6.0 GiB; a decode step over the
    full 1,407-slot cache est. 20.8 ms, 18% of the HBM roofline by XLA's
    bytes accessed); still over: train_step 18.1 GiB (3.7 GiB params +
    AdamW state, 14.4 GiB temporaries at 1 row per chip and micro-batch;
    est. MFU 25%) and the greedy eval prefill 18.1 GiB (128 prompts of 1,024
    tokens). Est. round if it fit (`plan.estimate_round` on these step
    times; 485-token prompts, 50% of samples kept): 43 min (think 29, train
    7, eval 7). 43 min here.
  GSM8K 4-shot prompts are under ~900 tokens, so the 1,024 bucket cap is
  safe for this task. Not yet compiled: larger slices (v5e-16, v4-16), a
  tensor axis, Adafactor or bf16 master weights, which would cut the train
  step's parameter copies.

Measured: not yet run end to end by us; the TPT paper reports GSM8K Pass@1
going from 41.9% to 57.6% for Gemma2-2B.
"""

from tpt_jax import config as config_lib


def get_config():
  config = config_lib.base_config()
  config.model.variant = 'gemma2_2b'
  config_lib.set_gsm8k_tpt(config)
  return config
