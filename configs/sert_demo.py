r"""SERT on the built-in demo task: runs on a 2-core CPU with nothing downloaded.

  python -m tpt_jax.main --config=configs/sert_demo.py --workdir=/tmp/sert_demo

Hardware: any CPU. Student and teacher are the same 0.18M-param
Gemma2-architecture toy model (`gemma2_tiny`, float32) with a sentencepiece
tokenizer built on the spot; the teacher is trained longer: its warm-up
fine-tune (DIR/teacher/round_0/warmup, 512 worked solutions x 14 epochs,
~1800 steps) against the student's (DIR/self_training/round_0/warmup, 256 x
4 epochs, ~260 steps). Problems: 1-2 steps over numbers up to 12; 384 train,
150 test.

Stages: the student before self-training; 2 rounds of self-training on its
own zero-shot samples (8 per problem at temperature 1.0, top-k 20) that are
correct and reason; the teacher's traces (8 per problem at 0.7), filtered the
same way, distilled into the self-trained student and, for comparison, into
the original one.

Measured (this config, a 2-core CPU shared with other jobs at a load average
of ~9): 11m22s wall, 199s of it the teacher's warm-up; 5m41s CPU user time.
Greedy Pass@1 on the 150 test problems (the same in a second run):

  student (before self-training)           5.3%
  after self-training (2 rounds)          10.0%
  self-training, then distillation        12.0%
  distillation without self-training       8.7%
  teacher                                 28.7%
"""

from tpt_jax import config as config_lib


def get_config():
  config = config_lib.base_config()
  config.mode = 'sert'
  config.model.variant = 'gemma2_tiny'
  config.model.param_dtype = 'float32'
  config.model.compute_dtype = 'float32'
  # 1-2 step problems over small numbers.
  config.task.num_train_problems = 384
  config.task.num_test_problems = 150
  config.task.min_steps = 1
  config.task.max_steps = 2
  config.task.max_operand = 4
  config.task.max_value = 12
  config.sampling.max_new_tokens = 40
  config.sampling.batch_size = 256
  # One prompt bucket and one decode loop: fewer programs to compile.
  config.sampling.prompt_length_buckets = (128,)
  config.sampling.max_cache_segments = 1
  config.eval.num_samples = 0
  # A weak student: a short warm-up on few worked solutions.
  config.loop.num_rounds = 2
  config.loop.warmup.num_examples = 256
  config.loop.warmup.num_epochs = 4.0
  config.loop.warmup.learning_rate = 1e-2
  # A one-step solution ('3 + 4 = 7.') has 3 words of reasoning.
  config.prune.min_reasoning_words = 3
  config.sert.sampling.num_samples_per_problem = 8
  config.sert.sampling.top_k = 20
  # The teacher: the same architecture, trained longer.
  config.sert.teacher.source = 'model'
  config.sert.teacher.prompt_style = 'zero_shot'
  config.sert.teacher.warmup.num_examples = 512
  config.sert.teacher.warmup.num_epochs = 14.0
  config.sert.teacher.warmup.learning_rate = 1e-2
  # As the student's (but cooler): the same compiled sampling programs.
  config.sert.teacher.sampling.num_samples_per_problem = 8
  config.sert.teacher.sampling.top_k = 20
  config.sert.teacher.sampling.temperature = 0.7
  config.train.batch_size = 4
  config.train.max_seq_len = 128
  config.train.num_epochs = 5.0
  config.train.learning_rate = 3e-3
  config.train.lr_schedule = 'constant'
  config.train.warmup_steps = 10
  config.train.log_every = 20
  config.train.checkpoint_every = 200
  # The table in the docstring was measured with the static engine; the
  # continuous one gives the same traces up to float rounding.
  config.sampling.engine = 'static'
  return config
