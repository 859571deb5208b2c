r"""SERT on GSM8K: Gemma2-2B self-trains on its zero-shot reasoning, then
Gemma2-9B teaches it.

Run (one 80 GB GPU, or TPU v5e-8 / v4-8; the 9B teacher's bf16 weights,
18 GB, are loaded only while its traces are sampled):

  python -m tpt_jax.main --config=configs/sert_gemma2_2b.py \
      --config.checkpoint.path=/ckpts/gemma2-2b \
      --config.sert.teacher.checkpoint_path=/ckpts/gemma2-9b \
      --config.tokenizer.path=/ckpts/tokenizer.model --workdir=/tmp/sert_2b

Both checkpoints take the official orbax layout or a Hugging Face directory;
teacher and student share Gemma2's tokenizer. To distil from rationales you
already have instead of sampling the 9B, pass
`--config.sert.teacher.source=traces --config.sert.teacher.traces_path=
teacher.jsonl` (schema in `tpt_jax/experiments/teacher_traces.py`).

Recipe: GSM8K (`config_lib.set_gsm8k_tpt`'s data, training and evaluation
settings) with zero-shot prompts ('Question: ...\nAnswer:\n', no instruction,
no exemplars); 16 samples per problem at temperature 1.0 among the top 40
tokens; keep correct traces that reason (no repetition loops, no bare
answers, at least 10 words of reasoning), deduplicated, at most 4 per
problem; 2 recursive self-training rounds; then the 9B's zero-shot-CoT traces
(4 per problem at temperature 0.7), pruned the same way, distilled into the
self-trained student and, for comparison, into the original student.

Measured: not measured (not yet run by us).
"""

from tpt_jax import config as config_lib


def get_config():
  config = config_lib.base_config()
  config.mode = 'sert'
  config.model.variant = 'gemma2_2b'
  config_lib.set_gsm8k_tpt(config)
  # SERT samples latent reasoning from zero-shot prompts.
  config.task.prompt_style = 'zero_shot'
  config.task.num_few_shot = 0
  config.loop.num_rounds = 2
  config.sert.teacher.source = 'model'
  config.sert.teacher.variant = 'gemma2_9b'
  return config
