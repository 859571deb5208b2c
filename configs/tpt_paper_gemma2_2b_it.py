r"""Gemma2-2B-it: the TPT authors' released GSM8K protocol.

Run (TPU v5e-8 / v4-8, or one 80 GB GPU):

  python -m tpt_jax.main --config=configs/tpt_paper_gemma2_2b_it.py \
      --config.checkpoint.path=/ckpts/gemma-2-2b-it \
      --config.tokenizer.path=/ckpts/tokenizer.model --workdir=/tmp/tpt_paper_2b

`checkpoint.path`: the instruction-tuned checkpoint (orbax `gemma2-2b-it`
from Kaggle, or the Hugging Face `google/gemma-2-2b-it` directory).

Recipe (`config_lib.set_tpt_paper`): zero-shot chat prompts asking for a
`#### <answer>` last line (our wording; override with
`--config.task.instruction=...` or `--config.task.instruction_path=FILE`),
4 samples per train problem at temperature 0.8 and up to 1,500 tokens; keep
the first trace per problem that the authors' strict grader accepts, a
seeded draw of 2,000 per round and up to 200 more held out
(`prune.num_heldout_examples`), whose loss after the round's training is
reported as `heldout_loss`; full fine-tuning from the previous round at
lr 1e-6 (cosine, 10% warm-up, 1 epoch, 2 x 4 accumulation, 1,600 tokens);
evaluation on the authors' 500 test problems with 10 samples at temperature
0.7, Pass@1 (mean over samples, with its standard error) and pass@10 by the
strict (`/paper_strict`) and default (`/default`) graders side by side.

Measured: not run by us. The paper reports GSM8K Pass@1 41.9% -> 57.6% for
Gemma2-2B and 82% for Gemma2-9B under its protocol.
"""

from tpt_jax import config as config_lib


def get_config():
  config = config_lib.base_config()
  config.model.variant = 'gemma2_2b'
  config_lib.set_tpt_paper(config)
  return config
