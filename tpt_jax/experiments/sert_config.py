"""SERT's config: `config.sert`, its checks, and the configs SERT derives.

`self_training_config` is the config of the self-training rounds (SERT's
sampling and filters); `teacher_config` the one the teacher runs with.
"""

from __future__ import annotations

import os
import pathlib

import ml_collections

from tpt_jax import config_fields
from tpt_jax import models
from tpt_jax import prune
from tpt_jax import stages
from tpt_jax import tokenizer as tokenizer_lib

TEACHER_SOURCES = ('model', 'traces', 'none')
TEACHER_PROMPT_STYLES = ('zero_shot', 'zero_shot_cot')
# The sampling fields SERT sets (the rest are config.sampling's).
SAMPLING_FIELDS = ('num_samples_per_problem', 'temperature', 'top_k', 'top_p')

def default_config() -> ml_collections.ConfigDict:
  """`config.sert`: zero-shot latent sampling, filters, the teacher."""
  c = ml_collections.ConfigDict()
  # Self-training's Think stage (the other sampling fields are
  # config.sampling's): many samples at temperature 1 among the top-k tokens
  # reach reasoning paths that greedy decoding of a zero-shot prompt misses.
  c.sampling = ml_collections.ConfigDict()
  c.sampling.num_samples_per_problem = 16
  c.sampling.temperature = 1.0
  c.sampling.top_k = 40
  c.sampling.top_p = 1.0
  # Filters of self-training and teacher traces (tpt_jax.prune names; their
  # thresholds are config.prune's): correct answers that reason, without
  # degenerate repetition, at most config.prune.max_per_problem per problem.
  c.strategies = ('correct,repetition,no_reasoning,short_reasoning,dedup,'
                  'max_per_problem')

  c.teacher = ml_collections.ConfigDict()
  # One of TEACHER_SOURCES: 'model', 'traces' (a file) or 'none'.
  c.teacher.source = 'model'
  # source='model': the architecture and weights; None: the student's
  # (config.model.*). Library variants need checkpoint_path; a toy teacher
  # without one starts from random weights and is trained by `warmup`.
  c.teacher.variant = config_fields.optional(str)
  c.teacher.param_dtype = config_fields.optional(str)
  c.teacher.compute_dtype = config_fields.optional(str)
  c.teacher.checkpoint_path = config_fields.optional(str)
  c.teacher.checkpoint_format = 'auto'
  # The tokenizer the teacher samples with (a tokenizer.json, a sentencepiece
  # .model, or a directory holding one); None: the one in checkpoint_path's
  # directory, else the student's. Its traces are text, which the student's
  # records re-tokenize, so a teacher of another family (e.g. Llama for a
  # GPT-2 or Gemma2 student) can teach. A teacher with its own tokenizer
  # ignores config.sampling.stop_token_ids (the student's ids).
  c.teacher.tokenizer_path = config_fields.optional(str)
  # The teacher's prompts (the student always gets zero-shot ones); no
  # exemplars, so no train problem is set aside for them.
  c.teacher.prompt_style = 'zero_shot_cot'
  # Its Think stage (other fields: config.sampling's).
  c.teacher.sampling = ml_collections.ConfigDict()
  c.teacher.sampling.num_samples_per_problem = 4
  c.teacher.sampling.temperature = 0.7
  c.teacher.sampling.top_k = 0
  c.teacher.sampling.top_p = 1.0
  # Report the teacher's test metrics as a stage of the summary.
  c.teacher.evaluate = True
  # A warm-up fine-tune of the teacher on the task's worked solutions
  # (tasks with `warmup_examples`, e.g. the demo; as config.loop.warmup).
  c.teacher.warmup = stages.warmup_config()
  # source='traces': a JSONL file or a round dataset directory (see the
  # module docstring for the schema).
  c.teacher.traces_path = config_fields.optional(str)
  return c


def _check_sampling(section: ml_collections.ConfigDict, name: str) -> None:
  if section.num_samples_per_problem < 1:
    raise config_fields.ConfigError(
        f'config.{name}.num_samples_per_problem='
        f'{section.num_samples_per_problem} must be >= 1.')
  if not section.temperature >= 0:
    raise config_fields.ConfigError(
        f'config.{name}.temperature={section.temperature} must be >= 0.')
  if section.top_k < 0:
    raise config_fields.ConfigError(
        f'config.{name}.top_k={section.top_k} must be >= 0.')
  if not 0 < section.top_p <= 1:
    raise config_fields.ConfigError(
        f'config.{name}.top_p={section.top_p} must lie in (0, 1].')


def validate_config(config: ml_collections.ConfigDict) -> None:
  """Raises ConfigError naming the first field SERT does not allow."""
  task = config.task
  if task.prompt_style != 'zero_shot' or task.num_few_shot != 0:
    raise config_fields.ConfigError(
        'SERT self-trains on zero-shot latent reasoning: prompts with no '
        'reasoning instruction and no exemplars. Set '
        "config.task.prompt_style='zero_shot' and config.task.num_few_shot=0 "
        f'(got {task.prompt_style!r} and {task.num_few_shot}).')
  sert = config.sert
  _check_sampling(sert.sampling, 'sert.sampling')
  try:
    prune.parse_strategies(sert.strategies)
  except ValueError as e:
    raise config_fields.ConfigError(
        f'config.sert.strategies={sert.strategies!r}: {e}') from e
  teacher = sert.teacher
  if teacher.source not in TEACHER_SOURCES:
    raise config_fields.ConfigError(
        f'config.sert.teacher.source={teacher.source!r} is not one of '
        f'{", ".join(TEACHER_SOURCES)}.')
  if teacher.source == 'traces' and not teacher.traces_path:
    raise config_fields.ConfigError(
        "config.sert.teacher.source='traces' needs "
        'config.sert.teacher.traces_path (a JSONL file or a round dataset '
        'directory).')
  if teacher.source != 'model':
    return
  if teacher.tokenizer_path and not pathlib.Path(
      teacher.tokenizer_path).exists():
    raise config_fields.ConfigError(
        f'config.sert.teacher.tokenizer_path={teacher.tokenizer_path!r} does '
        'not exist (a tokenizer.json, a sentencepiece .model, or a directory '
        'holding one).')
  variant = teacher.variant or config.model.variant
  if variant not in models.MODEL_VARIANTS:
    raise config_fields.ConfigError(
        f'config.sert.teacher.variant={variant!r} is not one of '
        f'{", ".join(models.MODEL_VARIANTS)}.')
  if teacher_tokenizer_path(config) is None and (
      variant in models.TOY_VARIANTS) != (
          config.model.variant in models.TOY_VARIANTS):
    raise config_fields.ConfigError(
        f'config.sert.teacher.variant={variant!r} cannot teach '
        f'config.model.variant={config.model.variant!r} with the student\'s '
        'tokenizer: a teacher without its own (config.sert.teacher.'
        'tokenizer_path, or one in its checkpoint directory) shares the '
        "student's, so both must be library variants or both toy variants.")
  for field in ('param_dtype', 'compute_dtype'):
    if teacher[field] is not None and teacher[field] not in config_fields.DTYPES:
      raise config_fields.ConfigError(
          f'config.sert.teacher.{field}={teacher[field]!r} is not one of '
          f'{", ".join(config_fields.DTYPES)}.')
  if teacher.checkpoint_format not in config_fields.CHECKPOINT_FORMATS:
    raise config_fields.ConfigError(
        f'config.sert.teacher.checkpoint_format={teacher.checkpoint_format!r}'
        f' is not one of {", ".join(config_fields.CHECKPOINT_FORMATS)}.')
  if teacher.prompt_style not in TEACHER_PROMPT_STYLES:
    raise config_fields.ConfigError(
        f'config.sert.teacher.prompt_style={teacher.prompt_style!r} is not '
        f'one of {", ".join(TEACHER_PROMPT_STYLES)}.')
  _check_sampling(teacher.sampling, 'sert.teacher.sampling')
  stages.validate_warmup(teacher.warmup, 'sert.teacher.warmup')


def teacher_tokenizer_path(config: ml_collections.ConfigDict) -> str | None:
  """The teacher's own tokenizer: `config.sert.teacher.tokenizer_path`, else
  the tokenizer file of its checkpoint directory (as the student's is
  found); None: it has none and shares the student's."""
  teacher = config.sert.teacher
  if teacher.tokenizer_path:
    return teacher.tokenizer_path
  if teacher.checkpoint_path and pathlib.Path(
      teacher.checkpoint_path).is_dir():
    try:
      return os.fspath(tokenizer_lib.find_tokenizer_file(
          teacher.checkpoint_path))
    except FileNotFoundError:
      return None
  return None


def _copy(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  return ml_collections.ConfigDict(config.to_dict())


def self_training_config(config: ml_collections.ConfigDict
                         ) -> ml_collections.ConfigDict:
  """The config of the self-training rounds: config.sampling with SERT's
  sampling fields, config.prune with SERT's strategies."""
  copy = _copy(config)
  for field in SAMPLING_FIELDS:
    copy.sampling[field] = config.sert.sampling[field]
  copy.prune.strategies = config.sert.strategies
  return copy


def teacher_config(config: ml_collections.ConfigDict
                   ) -> ml_collections.ConfigDict:
  """The config the teacher runs with: its model, checkpoint, tokenizer (if
  it has its own), prompt style, sampling and warm-up; SERT's filters;
  everything else the student's."""
  teacher = config.sert.teacher
  copy = _copy(config)
  copy.model.variant = teacher.variant or config.model.variant
  copy.model.param_dtype = teacher.param_dtype or config.model.param_dtype
  copy.model.compute_dtype = (teacher.compute_dtype or
                              config.model.compute_dtype)
  copy.checkpoint.path = teacher.checkpoint_path
  copy.checkpoint.format = teacher.checkpoint_format
  own_tokenizer = teacher_tokenizer_path(config)
  if own_tokenizer is not None:
    copy.tokenizer.path = own_tokenizer
    # Ids of the student's vocabulary mean nothing in the teacher's; its
    # traces end at its tokenizer's end ids (`stages.think`) or at the stop
    # strings (text).
    copy.sampling.stop_token_ids = ()
  copy.task.prompt_style = teacher.prompt_style
  for field in SAMPLING_FIELDS:
    copy.sampling[field] = teacher.sampling[field]
  copy.prune.strategies = config.sert.strategies
  for field in ('num_examples', 'num_epochs', 'learning_rate'):
    copy.loop.warmup[field] = teacher.warmup[field]
  return copy


def with_prompt_style(config: ml_collections.ConfigDict,
                       prompt_style: str) -> ml_collections.ConfigDict:
  copy = _copy(config)
  copy.task.prompt_style = prompt_style
  return copy


def prune_pipeline(config: ml_collections.ConfigDict) -> prune.Pipeline:
  """The filters SERT applies to self-training and teacher traces."""
  return prune.build_pipeline(self_training_config(config).prune)


def check_teacher_weights(config: ml_collections.ConfigDict) -> None:
  """Raises ConfigError if a library-size teacher has no checkpoint (config
  files leave the path to the command line, so `validate` allows it)."""
  teacher = config.sert.teacher
  variant = teacher.variant or config.model.variant
  if (teacher.source == 'model' and variant not in models.TOY_VARIANTS and
      not teacher.checkpoint_path):
    raise config_fields.ConfigError(
        f'config.sert.teacher.checkpoint_path is not set: a {variant} teacher '
        'needs its weights.')
