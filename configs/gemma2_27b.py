r"""Gemma2-27B: Think, Prune, Train on GSM8K.

Run (on several hosts start the same command on each, jax.distributed is
initialised from the environment; see "Hardware": as configured it does not
fit a v5e-32; it fits a v5p-32; plan your slice first with
`python -m tpt_jax.plan`):

  python -m tpt_jax.main --config=configs/gemma2_27b.py \
      --config.checkpoint.path=/ckpts/gemma2-27b \
      --config.tokenizer.path=/ckpts/tokenizer.model --workdir=/tmp/tpt_27b

Recipe (`config_lib.set_gsm8k_tpt`): GSM8K read from
`--config.task.gsm8k_path` (a directory with train.jsonl/test.jsonl, or
'tfds'; default ../shared/data/gsm8k), 4-shot prompts, 4 samples per problem
at temperature 0.8, keep the correct ones, 3 recursive rounds of full
fine-tuning; greedy Pass@1, pass@4 and maj@4 on the test split each round.

Hardware (`python -m tpt_jax.plan`: libtpu's compiler on a CPU host, no
TPU attached; bytes per chip):

  python -m tpt_jax.plan --config=configs/gemma2_27b.py --topology=v5e-32
    does NOT fit (exit 3; 61 min here): train_step 30.3 of 15.75 GiB (9.5
    GiB params + AdamW state, 20.8 GiB temporaries at 8 rows of 1,024 tokens
    per chip: f32 logits alone 7.8 GiB); Think and Evaluate fit on the
    training mesh (fsdp 8 x tensor 4; measured before the continuous
    engine's paged attention ran per shard): prefill 5.3 GiB, decode 3.0
    GiB (0.9 GiB page pool), a decode step est. 34.6 ms, 9% of the HBM
    roofline (weights all-gathered over fsdp every step: try
    --config.mesh.sampling_shape='(-1,1,8)').
  python -m tpt_jax.plan --config=configs/gemma2_27b.py --topology=v5p-32
    fits, all 7 programs (exit 0; 16 min of compiles, 17 min wall here):
    train_step 82.4 of 95 GiB per chip (19.0 GiB params + AdamW state,
    63.3 GiB temporaries), XLA's est. 3.71 s per step of 64 x 1,024 tokens,
    MFU 39.9%; Think on fsdp 4 x tensor 4: prefill 6.6 GiB, decode step 5.3
    GiB, XLA's est. 18.5 ms (10% of the HBM roofline); from the HBM traffic
    of its compiled buffers (16.6 GB, the fsdp weight gathers included)
    6.0 ms; est. round 22.7 min from XLA's times (think 10.5, train 9.5,
    eval 2.7 min: 7,473 problems x 4 samples, half kept).
    With --config.mesh.sampling_shape='(-1,1,4)' (params replicated over
    data) the decode step holds 14.8 GiB and moves 24.7 GB: est. 8.9 ms,
    slower than the training mesh's 6.0 ms, so Think stays on it.
  v5e-4: full fine-tuning needs 76.1 GiB of arguments per chip: the plan
    exits 3 naming train_step before compiling (tests/test_plan.py).
  To fit v5e-32, cut the train step's rows per micro-batch
  (--config.train.grad_accum_steps=8) or use LoRA, and re-run the plan.

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
