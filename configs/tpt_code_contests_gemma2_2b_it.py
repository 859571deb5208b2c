r"""Gemma2-2B-IT: Think, Prune, Train on CodeContests (stdin/stdout programs).

Run (TPU v5e-8 / v4-8, or one 80 GB GPU; the judge runs on the host's CPU
cores, one sandbox per core):

  python -m tpt_jax.main --config=configs/tpt_code_contests_gemma2_2b_it.py \
      --config.checkpoint.path=/ckpts/gemma2-2b-it \
      --config.tokenizer.path=/ckpts/tokenizer.model \
      --config.task.code_contests.path=/data/code_contests \
      --workdir=/tmp/tpt_cc_2b

`checkpoint.path` takes the official orbax checkpoint (`gemma2-2b-it` from
Kaggle) or a Hugging Face directory (`google/gemma-2-2b-it`). The data is
`deepmind/code_contests` as Hugging Face exports it (`train-*.parquet`,
`valid-*.parquet`, `test-*.parquet`, in the directory or its `data/`; needs
pyarrow) or the same records as JSONL (see `tpt_jax/tasks/code_contests.py`).

Recipe: zero-shot chat prompts asking for one ```python block; 8 samples per
train problem at temperature 0.8; a sample is kept when its program passes
the public tests (`train_test_sets`), so hidden tests stay hidden from
training; evaluation runs public + private + generated tests, like the
CodeContests paper. CodeContests' time limits are set for C++: they are
doubled for Python (`time_limit_factor`), and real-number outputs are
accepted within 1e-6. Keep the correct, deduplicated programs, at most 4 per
problem; 3 recursive rounds of full fine-tuning; greedy pass@1 and sampled
pass@1 / pass@5 (unbiased estimator) on the 165 test problems.

Measured: not run by us (no TPU/GPU here); the sandboxed judge and one
round of a tiny model on this task are tested on CPU
(tests/test_code_contests.py).
"""

from tpt_jax import config as config_lib
from tpt_jax.tasks import code_contests


def get_config():
  config = config_lib.base_config()
  config.model.variant = 'gemma2_2b'
  config.tokenizer.chat_template = True
  config.task.name = 'code_contests'
  config.task.prompt_style = 'zero_shot'
  # Until base_config() mounts it, the task's section is added here.
  config.task.code_contests = code_contests.default_config()
  config.task.code_contests.train_test_sets = 'public'
  config.task.code_contests.eval_test_sets = 'public,private,generated'
  config.task.code_contests.time_limit_factor = 2.0
  config.task.code_contests.float_tolerance = 1e-6
  config.sampling.num_samples_per_problem = 8
  config.sampling.temperature = 0.8
  config.sampling.max_new_tokens = 1024
  config.sampling.batch_size = 64
  config.prune.strategies = 'correct,dedup,max_per_problem'
  config.prune.max_per_problem = 4
  config.verify.code.memory_mb = 2048
  config.loop.num_rounds = 3
  config.eval.num_samples = 5
  config.eval.ks = (1, 5)
  config.train.learning_rate = 5e-6
  config.train.warmup_steps = 20
  config.train.batch_size = 32
  config.train.max_seq_len = 2048
  config.train.num_epochs = 1.0
  config.train.checkpoint_every = 200
  config.train.remat_policy = 'full'
  return config
