r"""Llama-3.1-70B-Instruct with LoRA: the TPT paper's 70B row on GSM8K.

Run (TPU v5p-32 / v4-64, or 16x 80 GB GPUs over two hosts; on several hosts
start the same command on each, jax.distributed is initialised from the
environment):

  python -m tpt_jax.main --config=configs/tpt_paper_llama3_1_70b.py \
      --config.checkpoint.path=/ckpts/Llama-3.1-70B-Instruct \
      --workdir=/tmp/tpt_llama70b

`checkpoint.path` is the Hugging Face directory
(`meta-llama/Llama-3.1-70B-Instruct`: config.json, 30 safetensors shards,
tokenizer.json); each device reads only its shard of every tensor. 70.6B
params: 141 GB in bf16, sharded over fsdp and tensor (mesh (1, -1, 8)).
The base weights stay frozen; only rank-16 LoRA adapters on every
attention and MLP projection are trained, so optimizer state is small.

Recipe (`config_lib.set_gsm8k_tpt`, with the instruct model's chat template
and LoRA): GSM8K (`--config.task.gsm8k_path`), 4-shot prompts in Llama-3's
chat format (<|start_header_id|>user<|end_header_id|> ... <|eot_id|>), 4
samples per problem at temperature 0.8, keep the correct ones, 3 recursive
rounds; greedy Pass@1, pass@4 and maj@4 on the 1319 test problems. Traces
end at <|eot_id|> (128009) or <|end_of_text|> (128001). Sampling uses the
continuous engine (the default), on the merged weights (LoRA adapters are
merged after each round's training).

Measured: not run by us. The TPT paper reports GSM8K Pass@1 for
Llama-3.1-70B going from 78.6% to 91%.
"""

from tpt_jax import config as config_lib


def get_config():
  config = config_lib.base_config()
  config.model.variant = 'llama3_1_70b'
  config_lib.set_gsm8k_tpt(config)
  config.tokenizer.chat_template = True
  config.sampling.stop_token_ids = (128001, 128009)
  config.sampling.batch_size = 128
  config.mesh.shape = (1, -1, 8)
  config.train.lora_rank = 16
  config.train.lora_alpha = 32.0
  config.train.learning_rate = 1e-4
  return config
