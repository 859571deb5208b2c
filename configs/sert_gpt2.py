r"""SERT on GSM8K with GPT-2 students (the SERT paper's): GPT-2 medium
self-trains on its zero-shot reasoning, then GPT-2 large teaches it.

Run (one 24 GB+ GPU, or TPU v5e-4; 355M student, 774M teacher):

  python -m tpt_jax.main --config=configs/sert_gpt2.py \
      --config.checkpoint.path=/ckpts/gpt2-medium \
      --config.sert.teacher.checkpoint_path=/ckpts/gpt2-large \
      --workdir=/tmp/sert_gpt2

Both paths are Hugging Face directories (`openai-community/gpt2-medium`,
`openai-community/gpt2-large`: config.json, model.safetensors,
tokenizer.json); architectures come from their config.json, each model's
tokenizer from its own tokenizer.json (or set `--config.tokenizer.path`,
`--config.sert.teacher.tokenizer_path`). For the 124M student pass
`--config.model.variant=gpt2` and its directory. Both sample with the
continuous engine. A teacher of another family samples the same way, with
its own tokenizer, and teaches through its traces' text, e.g.
`--config.sert.teacher.variant=llama3_1_8b
--config.sert.teacher.checkpoint_path=/ckpts/Llama-3.1-8B` (its traces end
at its own end ids; the student's stop_token_ids are not applied to it); or
distil from rationales you bring: `--config.sert.teacher.source=traces
--config.sert.teacher.traces_path=teacher.jsonl` (schema in
`tpt_jax/experiments/sert.py`).

GPT-2 has no chat format and no BOS: prompts are the bare zero-shot
'Question: ...\nAnswer:\n' text and traces end at <|endoftext|> (50256). Its
1024 learned positions bound prompt plus trace: prompts up to 768 tokens,
256 new tokens, training rows of 1024.

Recipe: GSM8K (`config_lib.set_gsm8k_tpt`'s data, training and evaluation
settings) with zero-shot prompts; 16 samples per problem at temperature 1.0
among the top 40 tokens; keep correct traces that reason, deduplicated, at
most 4 per problem; 2 recursive self-training rounds; then the teacher's
zero-shot-CoT traces (4 per problem at temperature 0.7), pruned the same
way, distilled into the self-trained student and, for comparison, into the
original one.

Measured: not run by us.
"""

from tpt_jax import config as config_lib


def get_config():
  config = config_lib.base_config()
  config.mode = 'sert'
  config.model.variant = 'gpt2_medium'
  config_lib.set_gsm8k_tpt(config)
  config.task.prompt_style = 'zero_shot'
  config.task.num_few_shot = 0
  config.loop.num_rounds = 2
  config.sampling.max_new_tokens = 256
  config.sampling.stop_token_ids = (50256,)
  config.sampling.prompt_length_buckets = (32, 48, 64, 96, 128, 192, 256,
                                           384, 512, 768)
  config.train.learning_rate = 5e-5
  config.sert.teacher.source = 'model'
  config.sert.teacher.variant = 'gpt2_large'
  return config
