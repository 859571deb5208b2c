"""The base config that every file in `configs/` starts from, and its validation.

Each config file calls `base_config()` and states only what differs, e.g.

    def get_config():
      config = config_lib.base_config()
      config.model.variant = 'gemma2_9b'
      return config

The config is a locked `ml_collections.ConfigDict`: an unknown field or a value
of the wrong type is refused by name, both in the file and in absl overrides
(`--config.train.learning_rate=1e-5`). `validate()` then checks what types
alone cannot (allowed values, shapes of the mesh, ...). Each section's
defaults live, with a comment per field, in its module's `default_config()`;
this module imports them, and no stage module imports this one (they share
`tpt_jax.config_fields`), so there is no import circle.

Sections (one per stage, data flows think -> prune -> records -> train ->
evaluate):
  model       which Gemma2 architecture, dtypes.
  tokenizer   the sentencepiece model.
  checkpoint  where the starting weights come from.
  mesh        device mesh and multi-host set-up.
  task        which problems (gsm8k / mbpp / demo), where they live, prompts.
  sampling    the Think stage (`tpt_jax.sampling`).
  verify      how each task's verifier judges completions (`tpt_jax.verify`).
  prune       pruning filters (`tpt_jax.prune`).
  train       the SFT stage (`tpt_jax.train`).
  eval        Pass@1 / pass@k / maj@k (`tpt_jax.evaluate`).
  loop        TPT rounds (`tpt_jax.experiments.tpt`).
  sert        SERT mode (`mode='sert'`): zero-shot latent sampling, quality
              filters, self-training, then distillation from a teacher.
"""

from __future__ import annotations

import os

import ml_collections

from tpt_jax import config_fields
from tpt_jax import evaluate
from tpt_jax import experiments
from tpt_jax import models
from tpt_jax import prune
from tpt_jax import sampling
from tpt_jax import sources
from tpt_jax import tasks
from tpt_jax import train
from tpt_jax import verify
from tpt_jax.experiments import sert_config
from tpt_jax.experiments import tpt

# Re-exported: config files and callers reach them through this module.
ConfigError = config_fields.ConfigError
optional = config_fields.optional
DTYPES = config_fields.DTYPES
CHECKPOINT_FORMATS = config_fields.CHECKPOINT_FORMATS
MODEL_VARIANTS = models.MODEL_VARIANTS
MODES = experiments.MODES
MESH_AXES = ('data', 'fsdp', 'tensor')


def base_config() -> ml_collections.ConfigDict:
  """Returns the defaults shared by every config file (the CPU demo's)."""
  config = ml_collections.ConfigDict()
  config.seed = 0
  config.workdir = optional(str)
  # What `python -m tpt_jax.main` runs: one of MODES.
  config.mode = 'tpt'

  # --- model -----------------------------------------------------------------
  config.model = ml_collections.ConfigDict()
  # One of MODEL_VARIANTS. The gemma2_* variants are the `gemma` library's own
  # configs; gemma2_tiny / gemma2_demo keep the architecture at toy size.
  config.model.variant = 'gemma2_tiny'
  config.model.param_dtype = 'bfloat16'
  config.model.compute_dtype = 'bfloat16'
  # For the toy variants only: the vocabulary must match the tokenizer's.
  config.model.vocab_size = optional(int)

  # --- tokenizer -------------------------------------------------------------
  config.tokenizer = ml_collections.ConfigDict()
  # Path of a sentencepiece `.model` file (e.g. Gemma2's `tokenizer.model`).
  # None: the demo builds a small one on the spot.
  config.tokenizer.path = optional(str)
  # Wrap prompts in Gemma2's chat template (for instruction-tuned checkpoints).
  config.tokenizer.chat_template = False

  # --- checkpoint --------------------------------------------------------------
  config.checkpoint = ml_collections.ConfigDict()
  # A directory: an orbax Gemma2 checkpoint (flat `transformer/layer_0/...`
  # or nested, as `gemma` writes it) or a Hugging Face Gemma2 directory
  # (`config.json` + `*.safetensors`). None: random init (tests, demo).
  config.checkpoint.path = optional(str)
  config.checkpoint.format = 'auto'  # One of CHECKPOINT_FORMATS.

  # --- mesh ------------------------------------------------------------------
  config.mesh = ml_collections.ConfigDict()
  # Sizes of the (data, fsdp, tensor) axes; one -1 takes what is left.
  config.mesh.shape = (1, -1, 1)
  # The mesh Think and Evaluate sample on, over the same devices; None: the
  # one above. A decode step reads all the params it is given, so params
  # split over fsdp are all-gathered at every step: a model that fits one
  # chip samples fastest replicated, (-1, 1, 1) (slots split over all
  # chips); a larger one adds a tensor axis, e.g. (-1, 1, 4). `tpt_jax.plan`
  # compiles the sampling programs on this mesh.
  config.mesh.sampling_shape = optional(tuple)
  # Call jax.distributed.initialize() (multi-host): 'on', 'off', or 'auto'
  # (when the environment says this is one process of several:
  # JAX_COORDINATOR_ADDRESS, a multi-host TPU slice, a SLURM job).
  config.mesh.distributed = 'auto'
  # Several processes: a process whose peer stops answering for this long
  # exits (naming the lost process) instead of waiting forever.
  config.mesh.heartbeat_timeout_s = 30

  # --- stage sections: each stage module owns its defaults ------------------
  config.task = tasks.default_config()
  config.task.sources = sources.default_config()
  for name, section in tasks.task_sections().items():
    config.task[name] = section
  config.sampling = sampling.default_config()
  config.verify = verify.default_config()
  config.prune = prune.default_config()
  config.train = train.default_config()
  config.eval = evaluate.default_config()
  config.loop = tpt.default_config()
  config.sert = sert_config.default_config()

  return config


def set_gsm8k_tpt(config: ml_collections.ConfigDict) -> None:
  """The TPT settings the Gemma2 GSM8K configs share (paper-style recipe).

  4-shot prompts from the train split, 4 samples per problem at temperature
  0.8, keep the correct ones, 3 recursive rounds of full fine-tuning; Pass@1
  greedy plus pass@4 / maj@4 on the 1319 test problems.
  """
  config.task.name = 'gsm8k'
  config.task.prompt_style = 'few_shot'
  config.task.num_few_shot = 4
  config.sampling.num_samples_per_problem = 4
  config.sampling.temperature = 0.8
  config.sampling.max_new_tokens = 384
  config.sampling.batch_size = 256
  # A base model goes on to invent the next few-shot question.
  config.sampling.stop_strings = ('\nQuestion:',)
  config.prune.strategies = 'correct,dedup'
  config.loop.num_rounds = 3
  config.eval.num_samples = 4
  config.eval.ks = (1, 4)
  config.train.learning_rate = 5e-6
  config.train.warmup_steps = 20
  config.train.batch_size = 64
  config.train.max_seq_len = 1024
  config.train.num_epochs = 1.0
  config.train.checkpoint_every = 200
  config.train.remat_policy = 'full'


# The paper recipe's zero-shot instruction (our wording, the authors'
# requirements): reason step by step, end with a '#### <answer>' line.
PAPER_INSTRUCTION = (
    'Solve this problem step by step, showing your reasoning. Then give the '
    'final answer on its own last line in the form "#### <number>".')
TPT_TEST500_INDICES = os.fspath(
    tasks.SHARED_DATA_DIR / 'gsm8k' / 'tpt_test500_indices.json')


def set_tpt_paper(config: ml_collections.ConfigDict) -> None:
  """The TPT authors' released GSM8K recipe (instruction-tuned checkpoints).

  Think: zero-shot prompts in the chat template asking for a '#### <answer>'
  last line, 4 samples per train problem at temperature 0.8, up to 1,500 new
  tokens. Prune: exact answer match (the authors' regex grader,
  'paper_strict'), the first correct trace per problem, a seeded draw of
  2,000 examples per round and up to 200 more held out for an evaluation
  loss (`heldout_loss`, at the end of the round's training). Train: full fine-tuning of the previous round's
  model, lr 1e-6 with cosine decay to 0 and 10% warm-up, 1 epoch, 8
  examples per step as 2 x 4 accumulation, sequences up to 1,600 tokens,
  loss on the completion only. Evaluate: the authors' 500 GSM8K test
  problems, 10 samples at temperature 0.7: Pass@1 as the mean correctness
  (with its standard error) and pass@10, by the strict and the default
  grader side by side.
  """
  config.tokenizer.chat_template = True
  config.task.name = 'gsm8k'
  config.task.prompt_style = 'zero_shot_cot'
  config.task.num_few_shot = 0
  config.task.instruction = PAPER_INSTRUCTION
  config.task.test_indices_path = TPT_TEST500_INDICES
  config.sampling.num_samples_per_problem = 4
  config.sampling.temperature = 0.8
  config.sampling.top_k = 0
  config.sampling.top_p = 1.0
  config.sampling.max_new_tokens = 1500
  config.sampling.batch_size = 256
  config.verify.grader = 'paper_strict'
  config.prune.strategies = 'first_correct'
  config.loop.max_train_examples_per_round = 2000
  config.prune.num_heldout_examples = 200
  config.loop.policy = 'recursive'
  config.loop.num_rounds = 3
  config.train.learning_rate = 1e-6
  config.train.lr_schedule = 'cosine'
  config.train.end_lr_factor = 0.0
  config.train.warmup_fraction = 0.1
  config.train.num_epochs = 1.0
  config.train.num_steps = 0
  config.train.batch_size = 8
  config.train.grad_accum_steps = 4
  config.train.max_seq_len = 1600
  config.train.packing = False
  config.train.remat_policy = 'full'
  config.train.checkpoint_every = 50
  config.eval.num_samples = 10
  config.eval.temperature = 0.7
  config.eval.ks = (1, 10)
  config.eval.graders = ('paper_strict', 'default')


def _check_choice(config: ml_collections.ConfigDict, field: str,
                  choices: tuple[str, ...]) -> None:
  value = config
  for part in field.split('.'):
    value = value[part]
  config_fields.check_choice(value, field, choices)


def validate(config: ml_collections.ConfigDict) -> None:
  """Raises ConfigError naming the first field whose value is not allowed."""
  _check_choice(config, 'mode', MODES)
  _check_choice(config, 'model.variant', MODEL_VARIANTS)
  _check_choice(config, 'model.param_dtype', DTYPES)
  _check_choice(config, 'model.compute_dtype', DTYPES)
  _check_choice(config, 'checkpoint.format', CHECKPOINT_FORMATS)
  for field in ('shape', 'sampling_shape'):
    if config.mesh.get(field) is None:  # sampling_shape unset: `shape`.
      continue
    shape = tuple(config.mesh[field])
    if len(shape) != len(MESH_AXES):
      raise ConfigError(
          f'config.mesh.{field}={shape} must have {len(MESH_AXES)} entries, '
          f'one per axis {MESH_AXES}.')
    if sum(1 for s in shape if s == -1) > 1 or any(
        s == 0 or s < -1 for s in shape):
      raise ConfigError(
          f'config.mesh.{field}={shape}: sizes must be positive, with at most '
          'one -1 to take the remaining devices.')
  _check_choice(config, 'mesh.distributed', ('auto', 'on', 'off'))
  tasks.validate_config(config.task)
  tpt.validate_config(config)
  task = tasks.get_task(config.task.name)
  grader_names = getattr(task, 'grader_names', ('default',))
  for field, names in (('verify.grader', (config.verify.grader,)),
                       ('eval.graders', tuple(config.eval.graders))):
    for name in names:
      if name not in grader_names:
        raise ConfigError(
            f'config.{field}: {name!r} is not a grader of task '
            f'{config.task.name}; its graders: {", ".join(grader_names)}.')
  config_fields.check_choice(config.sampling.engine, 'sampling.engine',
                             sampling.ENGINES)
  try:
    sampling.SamplingSettings.from_config(config.sampling, seed=0)
  except ValueError as e:
    raise ConfigError(f'config.sampling.{e}') from e
  try:
    # The device count is checked again at start-up, on the real mesh.
    train.validate_config(config, num_devices=1)
  except ConfigError:
    raise
  except ValueError as e:
    raise ConfigError(str(e)) from e
  prune.validate_config(config.prune)
  if config.mode == 'sert':
    sert_config.validate_config(config)
