r"""SERT: Self-Enhanced Reasoning Training, then distillation from a teacher.

A small model often can reason when sampled without any chain-of-thought
prompt, but those paths have low probability. SERT (`config.mode='sert'`)
samples them from zero-shot prompts (no instruction, no exemplars) with
settings that surface them (`config.sert.sampling`: a high temperature,
top-k, many samples per problem), keeps only the paths that verifiably reason
(`config.sert.strategies`: correctness plus the quality filters repetition,
no_reasoning, short_reasoning of `tpt_jax.prune`), self-trains on them for
`config.loop.num_rounds` rounds, and only then distils from a teacher's
traces, verified and pruned the same way.

`run(config)` writes, in DIR = config.workdir:

  DIR/config.json, DIR/tokenizer.model     as the loop's (`tpt_jax.loop`)
  DIR/self_training/                       the loop's rounds with SERT's
      round_0/                             sampling and filters; round 0 is
      round_<N>/think, prune.json,         the student before self-training
          dataset/, train/, eval.json      (after the loop's warm-up, if any)
      summary.json, summary.png
  DIR/teacher/round_0/                     teacher == model: its warm-up
      warmup/, eval.json                   (toy teachers) and test metrics
  DIR/teacher/round_1/                     the teacher's traces (sampled with
      think/, prune.json, dataset/         our Sampler, or read from the
                                           user's file), verified, pruned;
                                           the dataset holds the student's
                                           zero-shot prompts
  DIR/self_training_distillation/round_1/  the self-trained student
      train/, eval/, eval.json             fine-tuned on the teacher dataset
  DIR/distillation/round_1/                the student before self-training
      train/, eval/, eval.json             fine-tuned on it (the comparison)
  DIR/sert_summary.json                    {"stages": [{"stage", "metrics",
                                           "filters"}, ...]}
  DIR/sert_summary.png, DIR/timings.json

Teachers (`config.sert.teacher.source`):
  'model'   a Gemma2 checkpoint (`variant`, `checkpoint_path`, ...; e.g.
            Gemma2-9B teaching Gemma2-2B) sampled with our Sampler. Teacher
            and student share the tokenizer, so both are library variants or
            both toy variants. A toy teacher without a checkpoint is the
            student's architecture trained longer (`teacher.warmup`).
  'traces'  `traces_path`: a round dataset directory (`records.write_round`)
            or a JSONL file, one JSON object per line:
              problem_id   the task's id of a train problem
                           (e.g. 'gsm8k/train/12'), or instead
              question     its exact question text (up to whitespace);
              completion   the teacher's solution, ending in the task's answer
                           format (e.g. 'The answer is 18.'), or `rationale`;
              sample_index optional: which of the problem's traces this is
                           (default: its count among the problem's lines).
            Other fields are ignored; lines naming problems outside the run's
            train problems are skipped (counted in prune.json). A bad line is
            an error naming the file, the line and the field.
  'none'    no distillation stages.

Resume follows the loop's rules: every unit (a shard, a dataset, a
checkpoint, an eval.json) is written atomically, a rerun skips what is done
(a finished teacher is not even loaded), and a changed config is refused
(`loop.num_rounds` too: the distillation after self-training starts from the
last round). Besides the loop's, `loop.CRASH_ENV` knows the points
'teacher_think:<shard>' and '<distillation dir>:train:<step>' (tests only).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
import dataclasses
import json
import math
import os
import pathlib
import time
from typing import Any

import ml_collections

from tpt_jax import checkpoints
from tpt_jax import config as config_lib
from tpt_jax import loop
from tpt_jax import models
from tpt_jax import prune
from tpt_jax import records
from tpt_jax import tasks

SUMMARY_FILE = 'sert_summary.json'
SUMMARY_PLOT = 'sert_summary.png'
SELF_TRAINING_DIR = 'self_training'
TEACHER_DIR = 'teacher'
DISTILLATION_DIR = 'distillation'
SELF_TRAINING_DISTILLATION_DIR = 'self_training_distillation'
# Stage names of sert_summary.json, in its order.
STAGE_STUDENT = 'student'
STAGE_SELF_TRAINING = 'self_training'
STAGE_SELF_TRAINING_DISTILLATION = 'self_training+distillation'
STAGE_DISTILLATION = 'distillation'
STAGE_TEACHER = 'teacher'
TEACHER_SOURCES = ('model', 'traces', 'none')
TEACHER_PROMPT_STYLES = ('zero_shot', 'zero_shot_cot')
# The sampling fields SERT sets (the rest are config.sampling's).
SAMPLING_FIELDS = ('num_samples_per_problem', 'temperature', 'top_k', 'top_p')
# JSONL teacher traces: the problem, the solution, in order of preference.
PROBLEM_FIELDS = ('problem_id', 'question')
COMPLETION_FIELDS = ('completion', 'rationale')
# finish_reason of a trace read from a file.
FINISH_FROM_FILE = 'teacher_file'
# The teacher's traces are round 1 of DIR/teacher (round 0 is the teacher).
_TEACHER_ROUND = 1
# Distillation is round 1 of its directory (round 0: where it starts from).
_DISTILLATION_ROUND = 1
# A seed stage of its own (the loop's stages are 0..5).
_STAGE_DISTILL = 16


class TeacherTracesError(ValueError):
  """Teacher traces that cannot be used; the message names file and line."""


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
  c.teacher.variant = config_lib.optional(str)
  c.teacher.param_dtype = config_lib.optional(str)
  c.teacher.compute_dtype = config_lib.optional(str)
  c.teacher.checkpoint_path = config_lib.optional(str)
  c.teacher.checkpoint_format = 'auto'
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
  c.teacher.warmup = ml_collections.ConfigDict()
  c.teacher.warmup.num_examples = 0
  c.teacher.warmup.num_epochs = 1.0
  c.teacher.warmup.learning_rate = 0.0
  # source='traces': a JSONL file or a round dataset directory (see the
  # module docstring for the schema).
  c.teacher.traces_path = config_lib.optional(str)
  return c


# ----------------------------------------------------------------------------
# Config.
# ----------------------------------------------------------------------------


def _check_sampling(section: ml_collections.ConfigDict, name: str) -> None:
  if section.num_samples_per_problem < 1:
    raise config_lib.ConfigError(
        f'config.{name}.num_samples_per_problem='
        f'{section.num_samples_per_problem} must be >= 1.')
  if not section.temperature >= 0:
    raise config_lib.ConfigError(
        f'config.{name}.temperature={section.temperature} must be >= 0.')
  if section.top_k < 0:
    raise config_lib.ConfigError(
        f'config.{name}.top_k={section.top_k} must be >= 0.')
  if not 0 < section.top_p <= 1:
    raise config_lib.ConfigError(
        f'config.{name}.top_p={section.top_p} must lie in (0, 1].')


def validate_config(config: ml_collections.ConfigDict) -> None:
  """Raises ConfigError naming the first field SERT does not allow."""
  task = config.task
  if task.prompt_style != 'zero_shot' or task.num_few_shot != 0:
    raise config_lib.ConfigError(
        'SERT self-trains on zero-shot latent reasoning: prompts with no '
        'reasoning instruction and no exemplars. Set '
        "config.task.prompt_style='zero_shot' and config.task.num_few_shot=0 "
        f'(got {task.prompt_style!r} and {task.num_few_shot}).')
  sert = config.sert
  _check_sampling(sert.sampling, 'sert.sampling')
  try:
    prune.parse_strategies(sert.strategies)
  except ValueError as e:
    raise config_lib.ConfigError(
        f'config.sert.strategies={sert.strategies!r}: {e}') from e
  teacher = sert.teacher
  if teacher.source not in TEACHER_SOURCES:
    raise config_lib.ConfigError(
        f'config.sert.teacher.source={teacher.source!r} is not one of '
        f'{", ".join(TEACHER_SOURCES)}.')
  if teacher.source == 'traces' and not teacher.traces_path:
    raise config_lib.ConfigError(
        "config.sert.teacher.source='traces' needs "
        'config.sert.teacher.traces_path (a JSONL file or a round dataset '
        'directory).')
  if teacher.source != 'model':
    return
  variant = teacher.variant or config.model.variant
  if variant not in config_lib.MODEL_VARIANTS:
    raise config_lib.ConfigError(
        f'config.sert.teacher.variant={variant!r} is not one of '
        f'{", ".join(config_lib.MODEL_VARIANTS)}.')
  if (variant in models.TOY_VARIANTS) != (
      config.model.variant in models.TOY_VARIANTS):
    raise config_lib.ConfigError(
        f'config.sert.teacher.variant={variant!r} cannot teach '
        f'config.model.variant={config.model.variant!r}: teacher and student '
        'share the tokenizer, so both must be Gemma2 library variants or both '
        'toy variants.')
  for field in ('param_dtype', 'compute_dtype'):
    if teacher[field] is not None and teacher[field] not in config_lib.DTYPES:
      raise config_lib.ConfigError(
          f'config.sert.teacher.{field}={teacher[field]!r} is not one of '
          f'{", ".join(config_lib.DTYPES)}.')
  if teacher.checkpoint_format not in config_lib.CHECKPOINT_FORMATS:
    raise config_lib.ConfigError(
        f'config.sert.teacher.checkpoint_format={teacher.checkpoint_format!r}'
        f' is not one of {", ".join(config_lib.CHECKPOINT_FORMATS)}.')
  if teacher.prompt_style not in TEACHER_PROMPT_STYLES:
    raise config_lib.ConfigError(
        f'config.sert.teacher.prompt_style={teacher.prompt_style!r} is not '
        f'one of {", ".join(TEACHER_PROMPT_STYLES)}.')
  _check_sampling(teacher.sampling, 'sert.teacher.sampling')
  warmup = teacher.warmup
  if warmup.num_examples < 0:
    raise config_lib.ConfigError(
        f'config.sert.teacher.warmup.num_examples={warmup.num_examples} must '
        'not be negative.')
  if warmup.num_examples and not warmup.num_epochs > 0:
    raise config_lib.ConfigError(
        f'config.sert.teacher.warmup.num_epochs={warmup.num_epochs} must be '
        '> 0.')


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
  """The config the teacher runs with: its model, checkpoint, prompt style,
  sampling and warm-up; SERT's filters; everything else the student's."""
  teacher = config.sert.teacher
  copy = _copy(config)
  copy.model.variant = teacher.variant or config.model.variant
  copy.model.param_dtype = teacher.param_dtype or config.model.param_dtype
  copy.model.compute_dtype = (teacher.compute_dtype or
                              config.model.compute_dtype)
  copy.checkpoint.path = teacher.checkpoint_path
  copy.checkpoint.format = teacher.checkpoint_format
  copy.task.prompt_style = teacher.prompt_style
  for field in SAMPLING_FIELDS:
    copy.sampling[field] = teacher.sampling[field]
  copy.prune.strategies = config.sert.strategies
  for field in ('num_examples', 'num_epochs', 'learning_rate'):
    copy.loop.warmup[field] = teacher.warmup[field]
  return copy


def _with_prompt_style(config: ml_collections.ConfigDict,
                       prompt_style: str) -> ml_collections.ConfigDict:
  copy = _copy(config)
  copy.task.prompt_style = prompt_style
  return copy


def prune_pipeline(config: ml_collections.ConfigDict) -> prune.Pipeline:
  """The filters SERT applies to self-training and teacher traces."""
  return prune.build_pipeline(self_training_config(config).prune)


# ----------------------------------------------------------------------------
# Teacher traces from a file.
# ----------------------------------------------------------------------------


def _jsonl_rows(path: pathlib.Path):
  """(where, object) per non-blank line of a JSONL file."""
  with path.open(encoding='utf-8') as f:
    for line_number, line in enumerate(f, start=1):
      if not line.strip():
        continue
      where = f'{path}:{line_number}'
      try:
        row = json.loads(line)
      except json.JSONDecodeError as e:
        raise TeacherTracesError(
            f'{where}: not valid JSON ({e.msg} at column {e.colno}).') from e
      if not isinstance(row, dict):
        raise TeacherTracesError(
            f'{where}: a line must be a JSON object with "problem_id" (or '
            f'"question") and "completion" (or "rationale"), got '
            f'{type(row).__name__}.')
      yield where, row


def _first_field(row: Mapping[str, Any], names: Sequence[str], where: str
                 ) -> tuple[str, str]:
  """(name, value) of the first of `names` in `row`; its value must be a
  string."""
  for name in names:
    if name in row and row[name] is not None:
      if not isinstance(row[name], str):
        raise TeacherTracesError(
            f'{where}: field "{name}" must be a string, got '
            f'{type(row[name]).__name__}.')
      return name, row[name]
  alternatives = ' (or '.join(f'"{n}"' for n in names) + ')' * (
      len(names) - 1)
  raise TeacherTracesError(f'{where}: missing field {alternatives}.')


def _whitespace_normalized(text: str) -> str:
  return ' '.join(text.split())


def read_teacher_traces(path: str | os.PathLike[str],
                        problems: Sequence[tasks.Problem]
                        ) -> tuple[list[dict[str, Any]], int]:
  """Reads teacher traces (JSONL or a round dataset) matched to `problems`.

  Args:
    path: a JSONL file (schema in the module docstring) or a round dataset
      directory written by `records.write_round`.
    problems: the run's train problems.

  Returns:
    ({'problem_id', 'sample_index', 'completion'} per trace of one of
    `problems`, in file order; the number of traces naming other problems).

  Raises:
    FileNotFoundError: `path` does not exist.
    TeacherTracesError: a malformed line (naming the file, the line and the
      field), a repeated (problem, sample_index), or no trace matching any
      of `problems`.
  """
  path = pathlib.Path(path)
  if path.is_dir():
    if not records.is_round_dataset(path):
      raise TeacherTracesError(
          f'Teacher traces {path} is a directory but not a round dataset '
          '(records.write_round writes dataset_info.json); give a JSONL file '
          'or such a directory.')
    rows = [(f'{path} record {index}', row)
            for index, row in enumerate(records.read_round(path))]
  elif path.is_file():
    rows = list(_jsonl_rows(path))
  else:
    raise FileNotFoundError(f'Teacher traces {path} do not exist.')
  by_id = {p.problem_id: p for p in problems}
  by_question = {_whitespace_normalized(p.question): p for p in problems}
  traces: list[dict[str, Any]] = []
  seen: dict[tuple[str, int], str] = {}
  counts: dict[str, int] = {}
  unmatched = 0
  for where, row in rows:
    key, value = _first_field(row, PROBLEM_FIELDS, where)
    _, completion = _first_field(row, COMPLETION_FIELDS, where)
    problem = (by_id.get(value) if key == 'problem_id' else
               by_question.get(_whitespace_normalized(value)))
    if problem is None:
      unmatched += 1
      continue
    sample_index = row.get('sample_index')
    if sample_index is None:
      sample_index = counts.get(problem.problem_id, 0)
    elif isinstance(sample_index, bool) or not isinstance(
        sample_index, int) or sample_index < 0:
      raise TeacherTracesError(
          f'{where}: field "sample_index" must be an int >= 0, got '
          f'{sample_index!r}.')
    counts[problem.problem_id] = counts.get(problem.problem_id, 0) + 1
    trace_key = (problem.problem_id, sample_index)
    if trace_key in seen:
      raise TeacherTracesError(
          f'{where}: problem {problem.problem_id!r} sample {sample_index} '
          f'repeats {seen[trace_key]}.')
    seen[trace_key] = where
    traces.append({'problem_id': problem.problem_id,
                   'sample_index': sample_index, 'completion': completion})
  if rows and not traces:
    raise TeacherTracesError(
        f'None of the {len(rows)} teacher traces in {path} names one of the '
        f'run\'s {len(problems)} train problems; "problem_id" must be the '
        f'task\'s id (e.g. {problems[0].problem_id!r}) or "question" its '
        'exact text.' if problems else
        f'The run has no train problems to match the traces in {path} to.')
  return traces, unmatched


def verified_records(ctx: loop.Context, traces: Sequence[Mapping[str, Any]]
                     ) -> list[dict[str, Any]]:
  """Think-stage records (as `loop.sample_and_verify` returns) of traces read
  from a file: verified with the task's verifier, tokens counted."""
  problems = {p.problem_id: p for p in ctx.train_problems}
  completions = [t['completion'] for t in traces]
  verdicts = tasks.verify_all(
      ctx.task, completions, [problems[t['problem_id']] for t in traces],
      ctx.config.prune)
  return [{
      'problem_id': trace['problem_id'],
      'sample_index': trace['sample_index'],
      'completion': trace['completion'],
      'num_tokens': len(ctx.tokenizer.encode(trace['completion'])),
      'finish_reason': FINISH_FROM_FILE,
      'logprob_sum': 0.0,
      'correct': bool(correct),
      'extracted_answer': extracted,
  } for trace, (correct, extracted) in zip(traces, verdicts)]


# ----------------------------------------------------------------------------
# Stages.
# ----------------------------------------------------------------------------


def _prune_done(round_dir: pathlib.Path) -> bool:
  """Whether prune_and_write finished (a dataset, or nothing was kept)."""
  report = round_dir / 'prune.json'
  return report.exists() and (
      records.is_round_dataset(round_dir / 'dataset') or
      loop.read_json(report)['num_kept'] == 0)


def load_teacher(ctx: loop.Context) -> loop.Context:
  """A context of the teacher: its model and starting params (its warm-up,
  if any, is `loop.params_of_round(teacher_ctx, 0)`), the student's mesh,
  tokenizer and problems, DIR/teacher as workdir."""
  config = teacher_config(ctx.config)
  model, params = checkpoints.model_and_params(config, ctx.mesh)
  print(f'Teacher: {config.model.variant}, '
        f'{models.count_params(params) / 1e6:.2f}M params'
        + (f' from {config.checkpoint.path}' if config.checkpoint.path else
           ' (random init)') + '.', flush=True)
  # A teacher of the student's architecture (a toy teacher trained longer)
  # reuses the student's compiled sampling programs.
  sampler = ctx.sampler if model == ctx.model else None
  return dataclasses.replace(
      ctx, config=config, workdir=ctx.workdir / TEACHER_DIR, model=model,
      base_params=params, sampler=sampler, _params_cache={})


def teacher_traces(ctx: loop.Context, timings: dict[str, float]
                   ) -> dict[str, Any] | None:
  """Samples (or reads) the teacher's traces, verifies and prunes them into
  DIR/teacher/round_1/dataset; returns the prune report (None: no teacher).

  `ctx` is the student's context (workdir DIR). With a model teacher, its
  test metrics go to DIR/teacher/round_0/eval.json when
  config.sert.teacher.evaluate. Finished work is read, not redone; a
  finished teacher is not loaded.
  """
  teacher = ctx.config.sert.teacher
  if teacher.source == 'none':
    return None
  teacher_dir = ctx.workdir / TEACHER_DIR
  # The traces become training data for the student's zero-shot prompts.
  prune_ctx = dataclasses.replace(
      ctx, config=_with_prompt_style(teacher_config(ctx.config),
                                     ctx.config.task.prompt_style),
      workdir=teacher_dir, _params_cache={})
  round_dir = prune_ctx.round_dir(_TEACHER_ROUND)
  needs_eval = (teacher.source == 'model' and teacher.evaluate and
                not (teacher_dir / 'round_0' / 'eval.json').exists())
  if _prune_done(round_dir) and not needs_eval:
    return loop.read_json(round_dir / 'prune.json')
  think_records: list[dict[str, Any]] = []
  if teacher.source == 'traces':
    try:
      traces, unmatched = read_teacher_traces(teacher.traces_path,
                                              ctx.train_problems)
    except FileNotFoundError as e:
      raise config_lib.ConfigError(
          f'config.sert.teacher.traces_path: {e}') from e
    print(f'Teacher traces: {len(traces)} read from {teacher.traces_path}'
          f' ({unmatched} for problems outside this run, skipped).',
          flush=True)
    think_records = verified_records(prune_ctx, traces)
    loop.write_json(round_dir / 'think' / 'shard_00000.json',
                    {'records': think_records, 'num_unmatched': unmatched})
  else:
    teacher_ctx = load_teacher(ctx)
    params = loop.timed(timings, 'teacher/warmup',
                        lambda: loop.params_of_round(teacher_ctx, 0))
    if needs_eval:
      loop.timed(timings, 'teacher/eval',
                 lambda: loop.evaluate_round(teacher_ctx, 0, params))
    if not _prune_done(round_dir):
      think_records = loop.timed(
          timings, 'teacher/think', lambda: loop.sample_and_verify(
              teacher_ctx, params, teacher_ctx.train_problems,
              loop.sampling_settings(teacher_ctx.config, _TEACHER_ROUND),
              round_dir / 'think', crash_prefix='teacher_think',
              description='teacher think'))
    del teacher_ctx, params  # Frees the teacher before the student trains.
  report = loop.timed(
      timings, 'teacher/prune',
      lambda: loop.prune_and_write(prune_ctx, _TEACHER_ROUND, think_records))
  print(f'Teacher prune: {report["num_correct"]}/{report["num_traces"]} '
        f'traces correct; kept {report["num_kept"]} ({report["removed"]}).',
        flush=True)
  return report


def distill(ctx: loop.Context, name: str, init_params: models.Params,
            teacher_report: Mapping[str, Any], timings: dict[str, float]
            ) -> dict[str, Any]:
  """Fine-tunes `init_params` on the teacher's dataset in DIR/<name>/round_1
  and evaluates the result; returns its eval report."""
  stage_ctx = dataclasses.replace(ctx, workdir=ctx.workdir / name,
                                  _params_cache={})
  round_dir = stage_ctx.round_dir(_DISTILLATION_ROUND)
  if (round_dir / 'eval.json').exists():
    return loop.read_json(round_dir / 'eval.json')
  if teacher_report['num_kept']:
    params = loop.timed(timings, f'{name}/train', lambda: loop.fine_tune(
        stage_ctx, round_dir / 'train',
        [os.fspath(ctx.workdir / TEACHER_DIR / f'round_{_TEACHER_ROUND}' /
                   'dataset')],
        init_params,
        seed=loop.derived_seed(ctx.config.seed, _DISTILLATION_ROUND,
                               _STAGE_DISTILL),
        crash_prefix=f'{name}:train'))
  else:
    print(f'{name}: no teacher trace survived pruning; the student is not '
          'changed.', flush=True)
    params = init_params
  report = loop.timed(timings, f'{name}/eval', lambda: loop.evaluate_round(
      stage_ctx, _DISTILLATION_ROUND, params))
  print(f'{name}: ' + _metrics_text(report['metrics']), flush=True)
  return report


# ----------------------------------------------------------------------------
# Summary.
# ----------------------------------------------------------------------------


def filter_counts(reports: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
  """Traces, correct ones, removed per filter and kept, summed over prune
  reports (loop's prune.json)."""
  removed: dict[str, int] = {}
  for report in reports:
    for name, count in report['removed'].items():
      removed[name] = removed.get(name, 0) + count
    if report.get('removed_by_cap'):
      removed['cap'] = removed.get('cap', 0) + report['removed_by_cap']
  return {
      'num_traces': sum(r['num_traces'] for r in reports),
      'num_correct': sum(r['num_correct'] for r in reports),
      'removed': removed,
      'num_kept': sum(r['num_kept'] for r in reports),
  }


def _eval_metrics(path: pathlib.Path) -> dict[str, Any]:
  return loop.read_json(path)['metrics']


def build_summary(workdir: pathlib.Path, config: ml_collections.ConfigDict
                  ) -> dict[str, Any]:
  """sert_summary.json's content, from the stages' files in `workdir`."""
  self_training = workdir / SELF_TRAINING_DIR
  num_rounds = config.loop.num_rounds
  round_reports = [loop.read_json(self_training / f'round_{r}' / 'prune.json')
                   for r in range(1, num_rounds + 1)]
  self_filters = filter_counts(round_reports)
  self_filters['rounds'] = [
      {'round': r['round'], **filter_counts([r])} for r in round_reports]
  stages = [
      {'stage': STAGE_STUDENT,
       'metrics': _eval_metrics(self_training / 'round_0' / 'eval.json'),
       'filters': {}},
      {'stage': STAGE_SELF_TRAINING,
       'metrics': _eval_metrics(
           self_training / f'round_{num_rounds}' / 'eval.json'),
       'filters': self_filters},
  ]
  teacher = config.sert.teacher
  if teacher.source != 'none':
    teacher_dir = workdir / TEACHER_DIR
    teacher_filters = filter_counts([loop.read_json(
        teacher_dir / f'round_{_TEACHER_ROUND}' / 'prune.json')])
    for stage, directory in (
        (STAGE_SELF_TRAINING_DISTILLATION, SELF_TRAINING_DISTILLATION_DIR),
        (STAGE_DISTILLATION, DISTILLATION_DIR)):
      stages.append({'stage': stage, 'metrics': _eval_metrics(
          workdir / directory / f'round_{_DISTILLATION_ROUND}' /
          'eval.json'), 'filters': teacher_filters})
    if teacher.source == 'model' and teacher.evaluate:
      stages.append({'stage': STAGE_TEACHER, 'metrics': _eval_metrics(
          teacher_dir / 'round_0' / 'eval.json'), 'filters': teacher_filters})
  return {
      'title': (f'SERT: {config.task.name}, student {config.model.variant}, '
                f'teacher {_teacher_name(config)}'),
      'stages': stages,
  }


def _teacher_name(config: ml_collections.ConfigDict) -> str:
  teacher = config.sert.teacher
  if teacher.source == 'model':
    return teacher.variant or config.model.variant
  if teacher.source == 'traces':
    return pathlib.Path(teacher.traces_path).name
  return 'none'


def _metric_names(summary: Mapping[str, Any]) -> list[str]:
  names: list[str] = []
  for stage in summary['stages']:
    for name in stage['metrics']:
      if name not in names and name != 'num_problems':
        names.append(name)
  return names


def format_table(summary: Mapping[str, Any]) -> str:
  """The summary as a text table: a row per stage, its metrics, then its
  training traces and how many each filter removed."""
  names = _metric_names(summary)
  filters: list[str] = []
  for stage in summary['stages']:
    for name in stage['filters'].get('removed', {}):
      if name not in filters:
        filters.append(name)
  header = ['stage', *names, 'traces', *(f'-{f}' for f in filters), 'kept']
  rows = []
  for stage in summary['stages']:
    row = [stage['stage']]
    row.extend(loop.format_metric(name, stage['metrics'].get(name))
               for name in names)
    counts = stage['filters']
    row.append(str(counts.get('num_traces', '-')))
    row.extend(str(counts.get('removed', {}).get(f, '-')) for f in filters)
    row.append(str(counts.get('num_kept', '-')))
    rows.append(row)
  widths = [max(len(r[i]) for r in [header, *rows])
            for i in range(len(header))]
  return '\n'.join(
      '  '.join(cell.ljust(w) if i == 0 else cell.rjust(w)
                for i, (cell, w) in enumerate(zip(r, widths)))
      for r in [header, *rows])


def plot_summary(summary: Mapping[str, Any], path: pathlib.Path) -> None:
  """Grouped bars: each pass@/maj@ metric of each stage."""
  # The object API, not pyplot: no global backend switch for the caller.
  from matplotlib import figure as figure_lib  # pylint: disable=g-import-not-at-top
  stages = [stage['stage'] for stage in summary['stages']]
  names = [name for name in _metric_names(summary)
           if name.startswith(('pass@', 'maj@'))]
  figure = figure_lib.Figure(figsize=(max(6, 1.6 * len(stages)), 4))
  axes = figure.add_subplot()
  width = 0.8 / max(1, len(names))
  for index, name in enumerate(names):
    values = [100 * stage['metrics'].get(name, math.nan)
              for stage in summary['stages']]
    positions = [s + (index - (len(names) - 1) / 2) * width
                 for s in range(len(stages))]
    bars = axes.bar(positions, values, width, label=name)
    axes.bar_label(bars, fmt='%.1f', fontsize=7)
  axes.set_xticks(range(len(stages)))
  axes.set_xticklabels(stages, rotation=15, fontsize=8)
  axes.set_ylabel('% of test problems')
  axes.set_title(summary.get('title', 'SERT'), fontsize=9)
  axes.grid(axis='y', alpha=0.3)
  axes.legend(fontsize=8)
  figure.tight_layout()
  tmp = path.with_suffix('.tmp.png')
  figure.savefig(tmp, dpi=100)
  os.replace(tmp, path)


def _metrics_text(metrics: Mapping[str, float]) -> str:
  return ', '.join(f'{name}={100 * value:.1f}%'
                   for name, value in metrics.items()
                   if name.startswith(('pass@', 'maj@')))


# ----------------------------------------------------------------------------
# The run.
# ----------------------------------------------------------------------------


def _check_num_rounds(workdir: pathlib.Path,
                      config: ml_collections.ConfigDict) -> None:
  """Refuses another loop.num_rounds in a started SERT workdir (the loop
  allows it; SERT distils from the last round)."""
  path = workdir / loop.CONFIG_FILE
  if not path.exists():
    return
  saved = loop.read_json(path).get('loop', {}).get('num_rounds')
  if saved != config.loop.num_rounds:
    raise config_lib.ConfigError(
        f'{workdir} holds a SERT run started with another config; rerun with '
        'the same config to resume, or use a new --workdir. Differences:\n  '
        f'config.loop.num_rounds: {saved!r} in the workdir, '
        f'{config.loop.num_rounds!r} now (the distillation after '
        'self-training starts from the last round)')


def check_teacher_weights(config: ml_collections.ConfigDict) -> None:
  """Raises ConfigError if a library-size teacher has no checkpoint (config
  files leave the path to the command line, so `validate` allows it)."""
  teacher = config.sert.teacher
  variant = teacher.variant or config.model.variant
  if (teacher.source == 'model' and variant not in models.TOY_VARIANTS and
      not teacher.checkpoint_path):
    raise config_lib.ConfigError(
        f'config.sert.teacher.checkpoint_path is not set: a {variant} teacher '
        'needs its weights.')


def run(config: ml_collections.ConfigDict,
        workdir: str | os.PathLike[str] | None = None) -> dict[str, Any]:
  """Runs (or resumes) every SERT stage; returns the summary.

  Args:
    config: the full config, `config.mode == 'sert'`.
    workdir: default `config.workdir`.
  """
  validate_config(config)
  check_teacher_weights(config)
  if workdir or config.get('workdir'):
    _check_num_rounds(pathlib.Path(workdir or config.workdir).absolute(),
                      config)
  workdir = loop.prepare_workdir(config, workdir)
  start = time.perf_counter()
  ctx = loop.setup(config, workdir)
  timings: dict[str, float] = {}

  print('SERT self-training: zero-shot prompts, sampling '
        + ', '.join(f'{f}={config.sert.sampling[f]}' for f in SAMPLING_FIELDS)
        + f'; filters {config.sert.strategies}.', flush=True)
  self_ctx = dataclasses.replace(ctx, config=self_training_config(config),
                                 workdir=workdir / SELF_TRAINING_DIR)
  round_timings: dict[str, float] = {}
  loop.run_rounds(self_ctx, round_timings)
  timings.update({f'{SELF_TRAINING_DIR}/{name}': seconds
                  for name, seconds in round_timings.items()})

  # Later stages reuse the programs the rounds compiled.
  ctx = dataclasses.replace(ctx, sampler=self_ctx.sampler)
  teacher_report = teacher_traces(ctx, timings)
  if teacher_report is not None:
    distill(ctx, SELF_TRAINING_DISTILLATION_DIR,
            loop.params_of_round(self_ctx, config.loop.num_rounds),
            teacher_report, timings)
    distill(ctx, DISTILLATION_DIR, loop.params_of_round(self_ctx, 0),
            teacher_report, timings)

  summary = build_summary(workdir, config)
  loop.write_json(workdir / SUMMARY_FILE, summary)
  if loop.is_writer():
    plot_summary(summary, workdir / SUMMARY_PLOT)
  timings['total'] = round(time.perf_counter() - start, 2)
  loop.write_json(workdir / 'timings.json', timings)
  print('\n' + format_table(summary), flush=True)
  print(f'\nSERT summary: {workdir / SUMMARY_FILE}, plot: '
        f'{workdir / SUMMARY_PLOT}; this invocation took '
        f'{timings["total"]:.0f}s.', flush=True)
  return summary
