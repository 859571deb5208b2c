r"""Llama-3.2-1B: Think, Prune, Train on GSM8K (cheap experiments).

Run (one 40 GB+ GPU, or TPU v5e-4 / v4-8):

  python -m tpt_jax.main --config=configs/llama3_2_1b.py \
      --config.checkpoint.path=/ckpts/Llama-3.2-1B --workdir=/tmp/tpt_llama1b

`checkpoint.path` is a Hugging Face directory (`meta-llama/Llama-3.2-1B`:
config.json, model.safetensors, tokenizer.json); the architecture comes from
its config.json and the tokenizer from its tokenizer.json (or set
`--config.tokenizer.path`). 1.24B params, tied embeddings.

Recipe (`config_lib.set_gsm8k_tpt`): GSM8K read from
`--config.task.gsm8k_path` (default ../shared/data/gsm8k), 4-shot prompts, 4
samples per problem at temperature 0.8, keep the correct ones, 3 recursive
rounds of full fine-tuning; greedy Pass@1, pass@4 and maj@4 on the test
split each round. Generation also stops at Llama-3's <|end_of_text|>
(128001) and <|eot_id|> (128009). Think and Evaluate sample with the
continuous engine (`config.sampling.engine`'s default), as for Gemma2.

Export a round for lm-evaluation-harness / vLLM:

  python -m tpt_jax.export --workdir=/tmp/tpt_llama1b --round=3 \
      --output=/tmp/llama1b_round3_hf

Measured: not run by us.
"""

from tpt_jax import config as config_lib


def get_config():
  config = config_lib.base_config()
  config.model.variant = 'llama3_2_1b'
  config_lib.set_gsm8k_tpt(config)
  config.sampling.stop_token_ids = (128001, 128009)
  return config
