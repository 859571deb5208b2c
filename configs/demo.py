r"""The embedded default: the whole TPT loop on a 2-core CPU, nothing downloaded.

  python -m tpt_jax.main --config=configs/demo.py --workdir=/tmp/tpt_demo

The pruning-off ablation (the paper's): add
`--config.prune.strategies=none`. Other seeds: `--config.seed=1
--config.task.seed=1` (the task's seed draws other problems).

Hardware: any CPU (float32). What runs:
  * the built-in `demo` task, terse wording ('Start with 7. Add 3. Subtract
    5. What is the result?'), 1-3 add/subtract steps, operands up to 5,
    values up to 20; 256 train and 128 held-out test problems (disjoint by
    construction);
  * a 512-piece sentencepiece tokenizer built from the task's corpus, and a
    1.05M-param Gemma2-architecture model (`gemma2_demo`: 4 layers,
    local-sliding + global attention, both softcaps, GQA), random init;
  * warm-up: 2 epochs on 2000 worked train solutions, so round 0 is weak
    but not zero;
  * 5 rounds: 8 samples per train problem at T=1, keep the correct ones (at
    most 4 per problem; at most 512 examples per round in both arms), 4
    epochs of SFT from the previous round's model, greedy Pass@1 on the test
    problems.

Measured (2-core CPU, 2026-11-22): 3m49s wall alone, 3m58s without
pruning (warm-up ~1 min, each round 20-30 s). Greedy Pass@1 on the test
problems, rounds 0..5: seed 0 with pruning 14.1 11.7 14.1 18.8 13.3 21.9, without 14.1 11.7 10.9
12.5 11.7 10.9; seed 1 with 12.5 19.5 19.5 18.0 13.3 19.5, without 12.5 11.7
7.0 8.6 9.4 10.9. Short of the +15-point target (see README.md, "The CPU
demo").
"""

from tpt_jax import config as config_lib


def get_config():
  config = config_lib.base_config()
  config.model.variant = 'gemma2_demo'
  config.model.param_dtype = 'float32'
  config.model.compute_dtype = 'float32'

  config.task.wording = 'terse'
  config.task.operations = 'add,sub'
  config.task.min_steps = 1
  config.task.max_steps = 3
  config.task.max_operand = 5
  config.task.max_value = 20
  config.task.num_train_problems = 1024
  config.task.num_test_problems = 256

  config.sampling.num_samples_per_problem = 4
  config.sampling.max_new_tokens = 40
  config.sampling.temperature = 0.7
  config.sampling.batch_size = 256
  # Every demo prompt fits one bucket: one prefill/decode pair to compile.
  config.sampling.prompt_length_buckets = (48,)
  config.sampling.max_cache_segments = 2

  config.prune.strategies = 'correct,max_per_problem'
  config.prune.max_per_problem = 2
  config.prune.demo.check_worked_lines = True

  config.loop.num_rounds = 5
  config.loop.max_train_examples_per_round = 1024
  config.loop.warmup.num_examples = 2000
  config.loop.warmup.num_epochs = 2.9
  config.loop.warmup.learning_rate = 1e-3

  config.train.learning_rate = 1e-3
  config.train.lr_schedule = 'constant'
  config.train.warmup_steps = 5
  config.train.batch_size = 8
  config.train.max_seq_len = 128
  config.train.num_epochs = 2.0
  config.train.checkpoint_every = 1000
  config.train.log_every = 20
  return config
