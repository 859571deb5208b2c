"""The base config that every file in `configs/` starts from, and its validation.

Each config file calls `base_config()` and states only what differs, e.g.

    def get_config():
      config = config_lib.base_config()
      config.model.variant = 'gemma2_9b'
      return config

The config is a locked `ml_collections.ConfigDict`: an unknown field or a value
of the wrong type is refused by name, both in the file and in absl overrides
(`--config.train.learning_rate=1e-5`). `validate()` then checks what types
alone cannot (allowed values, shapes of the mesh, ...).

Sections (one per stage, data flows think -> prune -> records -> train ->
evaluate):
  model       which Gemma2 architecture, dtypes.
  tokenizer   the sentencepiece model.
  checkpoint  where the starting weights come from.
  mesh        device mesh and multi-host set-up.
  task        which problems (gsm8k / mbpp / demo), where they live, prompts.
  sampling    the Think stage.
  prune       verifiers and pruning strategies.
  train       the SFT stage.
  eval        Pass@1 / pass@k / maj@k.
  loop        rounds.
  sert        SERT mode (`mode='sert'`): zero-shot latent sampling, quality
              filters, self-training, then distillation from a teacher.
"""

from __future__ import annotations

import ml_collections



def optional(field_type: type):
  """A field that defaults to None but is type-checked when overridden.

  (A new placeholder each call: a shared one would link the fields.)
  """
  return ml_collections.config_dict.placeholder(field_type)

MODEL_VARIANTS = ('gemma2_2b', 'gemma2_9b', 'gemma2_27b', 'gemma2_tiny',
                  'gemma2_demo')
DTYPES = ('bfloat16', 'float32', 'float16')
CHECKPOINT_FORMATS = ('auto', 'orbax', 'safetensors', 'random')
MESH_AXES = ('data', 'fsdp', 'tensor')
# 'tpt': the Think -> Prune -> Train rounds (`tpt_jax.loop`); 'sert':
# self-training on zero-shot latent reasoning, then distillation
# (`tpt_jax.sert`).
MODES = ('tpt', 'sert')


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
  # Call jax.distributed.initialize() (multi-host): 'on', 'off', or 'auto'
  # (when the environment says this is one process of several:
  # JAX_COORDINATOR_ADDRESS, a multi-host TPU slice, a SLURM job).
  config.mesh.distributed = 'auto'

  # --- stage sections: each stage module owns its defaults ------------------
  # (imported here, not at the top, so stage modules may use ConfigError.)
  from tpt_jax import evaluate  # pylint: disable=g-import-not-at-top
  from tpt_jax import loop  # pylint: disable=g-import-not-at-top
  from tpt_jax import prune  # pylint: disable=g-import-not-at-top
  from tpt_jax import sampling  # pylint: disable=g-import-not-at-top
  from tpt_jax import sert  # pylint: disable=g-import-not-at-top
  from tpt_jax import sources  # pylint: disable=g-import-not-at-top
  from tpt_jax import tasks  # pylint: disable=g-import-not-at-top
  from tpt_jax import train  # pylint: disable=g-import-not-at-top
  config.task = tasks.default_config()
  config.task.sources = sources.default_config()
  config.sampling = sampling.default_config()
  config.prune = prune.default_config()
  config.train = train.default_config()
  config.eval = evaluate.default_config()
  config.loop = loop.default_config()
  config.sert = sert.default_config()

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


class ConfigError(ValueError):
  """A config value that is not allowed; the message names the field."""


def _check_choice(config: ml_collections.ConfigDict, field: str,
                  choices: tuple[str, ...]) -> None:
  value = config
  for part in field.split('.'):
    value = value[part]
  if value not in choices:
    raise ConfigError(
        f'config.{field}={value!r} is not one of {", ".join(choices)}.')


def validate(config: ml_collections.ConfigDict) -> None:
  """Raises ConfigError naming the first field whose value is not allowed."""
  _check_choice(config, 'mode', MODES)
  _check_choice(config, 'model.variant', MODEL_VARIANTS)
  _check_choice(config, 'model.param_dtype', DTYPES)
  _check_choice(config, 'model.compute_dtype', DTYPES)
  _check_choice(config, 'checkpoint.format', CHECKPOINT_FORMATS)
  shape = tuple(config.mesh.shape)
  if len(shape) != len(MESH_AXES):
    raise ConfigError(
        f'config.mesh.shape={shape} must have {len(MESH_AXES)} entries, one '
        f'per axis {MESH_AXES}.')
  if sum(1 for s in shape if s == -1) > 1 or any(
      s == 0 or s < -1 for s in shape):
    raise ConfigError(
        f'config.mesh.shape={shape}: sizes must be positive, with at most one '
        '-1 to take the remaining devices.')
  _check_choice(config, 'mesh.distributed', ('auto', 'on', 'off'))
  from tpt_jax import evaluate  # pylint: disable=g-import-not-at-top
  from tpt_jax import loop  # pylint: disable=g-import-not-at-top
  from tpt_jax import prune  # pylint: disable=g-import-not-at-top
  from tpt_jax import tasks  # pylint: disable=g-import-not-at-top
  tasks.validate_config(config.task)
  loop.validate_config(config)
  try:
    prune.parse_strategies(config.prune.strategies)
  except ValueError as e:
    raise ConfigError(str(e)) from e
  if config.mode == 'sert':
    from tpt_jax import sert  # pylint: disable=g-import-not-at-top
    sert.validate_config(config)
