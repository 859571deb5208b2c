r"""The smallest end-to-end TPT run: a tiny model, a few problems, one round.

Run (any machine, about a minute on a 2-core CPU):

  python -m tpt_jax.main --config=configs/tiny.py --workdir=/tmp/tpt_tiny

Same code path as the real models (local-sliding + global layers, both
softcaps, grouped-query attention) at 0.18M params, in float32, through every
stage (tokenizer built on the spot, warm-up, think, prune, records, train,
evaluate). It checks plumbing, not learning: Pass@1 stays near 0.
"""

from tpt_jax import config as config_lib


def get_config():
  config = config_lib.base_config()
  config.model.variant = 'gemma2_tiny'
  config.model.param_dtype = 'float32'
  config.model.compute_dtype = 'float32'
  config.task.num_train_problems = 16
  config.task.num_test_problems = 8
  config.sampling.num_samples_per_problem = 2
  config.sampling.max_new_tokens = 32
  config.sampling.batch_size = 32
  config.loop.num_rounds = 1
  config.loop.warmup.num_examples = 16
  config.prune.strategies = 'none'
  config.train.batch_size = 8
  config.train.max_seq_len = 128
  config.train.num_steps = 4
  config.train.warmup_steps = 1
  config.train.learning_rate = 1e-3
  return config
