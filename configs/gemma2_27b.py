r"""Gemma2-27B: Think, Prune, Train on GSM8K.

Run (on several hosts start the same command on each, jax.distributed is
initialised from the environment; see "Hardware": not yet shown to fit a
v5e-32 or a v5p-32, so plan your slice first with `python -m tpt_jax.plan`):

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

  Not compiled yet (too slow on our shared 2-core host). The plan's argument
  bytes from the shardings alone (mesh (1, -1, 4)):
    v5e-32 (fsdp 8 x tensor 4): train_step 9.5 GiB (f32 params + AdamW
      state) of 16; the sampler's decode cache 5.8 -> 6.8 GiB (256 rows x
      2,048-slot prompt bucket), params 1.6 GiB.
    v5p-32 (16 chips of 95 GiB, fsdp 4 x tensor 4): train_step 19.0 GiB;
      decode cache 11.5 -> 13.7 GiB, params 3.2 GiB.
    v5e-4: full fine-tuning needs 76.1 GiB of arguments per chip: the plan
      exits 3 naming train_step before compiling (tests/test_plan.py).
  Gemma2-2B's compiled programs (configs/gemma2_2b.py) needed 14-48 GiB of
  temporaries per chip on top of their arguments at these batch settings;
  run the plan for your slice, e.g.
    python -m tpt_jax.plan --config=configs/gemma2_27b.py --topology=v5p-32

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
