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

  DIR/config.json, DIR/tokenizer.model     as TPT's (`experiments.tpt`)
  DIR/self_training/                       TPT's rounds with SERT's
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
  'model'   a checkpoint of any family (`variant`, `checkpoint_path`, ...;
            e.g. Gemma2-9B teaching Gemma2-2B, or Llama teaching GPT-2)
            sampled with our engines and its own tokenizer
            (`tokenizer_path`, else the one in its checkpoint directory);
            its traces are text, which the student's records re-tokenize.
            A teacher without a tokenizer of its own shares the student's,
            so both are library variants or both toy variants. A toy
            teacher without a checkpoint is the student's architecture
            trained longer (`teacher.warmup`).
  'traces'  `traces_path`: a JSONL file of rationales or a round dataset
            directory (schema: `experiments.teacher_traces`). Lines naming
            problems outside the run's train problems are skipped (counted
            in prune.json); a bad line is an error naming file, line, field.
  'none'    no distillation stages.

Resume follows `tpt_jax.workdir`'s rule: every unit (a shard, a dataset, a
checkpoint, an eval.json) is written atomically, a rerun skips what is done
(a finished teacher is not even loaded), and a changed config is refused
(`loop.num_rounds` too: the distillation after self-training starts from the
last round). Besides TPT's, `workdir.CRASH_ENV` knows the points
'teacher_think:<shard>' and '<distillation dir>:train:<step>' (tests only).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
import dataclasses
import os
import pathlib
from typing import Any

import ml_collections

from tpt_jax import checkpoints
from tpt_jax import config_fields
from tpt_jax import models
from tpt_jax import report
from tpt_jax import stages
from tpt_jax import tokenizer as tokenizer_lib
from tpt_jax import workdir as workdir_lib
from tpt_jax.experiments import sert_config
from tpt_jax.experiments import teacher_traces as teacher_file
from tpt_jax.experiments import tpt

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
# finish_reason of a trace read from a file.
FINISH_FROM_FILE = 'teacher_file'
# The teacher's traces are round 1 of DIR/teacher (round 0 is the teacher).
_TEACHER_ROUND = 1
# Distillation is round 1 of its directory (round 0: where it starts from).
_DISTILLATION_ROUND = 1


# ----------------------------------------------------------------------------
# Stages.
# ----------------------------------------------------------------------------


def _teacher_tokenizer(ctx: stages.RunContext) -> tokenizer_lib.Tokenizer:
  """The teacher's own tokenizer (`sert_config.teacher_tokenizer_path`),
  else the student's."""
  path = sert_config.teacher_tokenizer_path(ctx.config)
  if path is None:
    return ctx.tokenizer
  field = ('tokenizer_path' if ctx.config.sert.teacher.tokenizer_path
           else 'checkpoint_path')
  try:
    return tokenizer_lib.load_tokenizer(path)
  except (FileNotFoundError, ValueError) as e:
    raise config_fields.ConfigError(
        f'config.sert.teacher.{field}: the teacher\'s tokenizer {path!r} '
        f'does not load: {e}') from e


def load_teacher(ctx: stages.RunContext) -> stages.RunContext:
  """A context of the teacher: its model, starting params and tokenizer
  (its own, else the student's), the student's mesh and problems,
  DIR/teacher as workdir."""
  config = sert_config.teacher_config(ctx.config)
  tokenizer = _teacher_tokenizer(ctx)
  model, params = checkpoints.model_and_params(config, ctx.mesh)
  if tokenizer.vocab_size > model.config.num_embed:
    raise config_fields.ConfigError(
        f'The teacher\'s tokenizer has {tokenizer.vocab_size} tokens, more '
        f'than its model\'s vocabulary ({model.config.num_embed}); set '
        'config.sert.teacher.tokenizer_path to the tokenizer its checkpoint '
        'was trained with.')
  own = tokenizer is not ctx.tokenizer
  print(f'Teacher: {config.model.variant}, '
        f'{models.count_params(params) / 1e6:.2f}M params'
        + (f' from {config.checkpoint.path}' if config.checkpoint.path else
           ' (random init)')
        + (f', tokenizer {config.tokenizer.path}' if own else '') + '.',
        flush=True)
  # A teacher of the student's architecture and tokenizer (a toy teacher
  # trained longer) reuses the student's compiled sampling programs.
  engine = ctx.engine if model == ctx.model and not own else None
  return dataclasses.replace(
      ctx, config=config, workdir=ctx.workdir / TEACHER_DIR, model=model,
      tokenizer=tokenizer, base_params=params, engine=engine)


def teacher_traces(ctx: stages.RunContext, timings: Any
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
      ctx, config=sert_config.with_prompt_style(
          sert_config.teacher_config(ctx.config),
                                     ctx.config.task.prompt_style),
      workdir=teacher_dir)
  round_dir = prune_ctx.round_dir(_TEACHER_ROUND)
  needs_eval = (teacher.source == 'model' and teacher.evaluate and
                not (teacher_dir / 'round_0' / stages.EVAL_FILE).exists())
  if stages.prune_done(round_dir) and not needs_eval:
    return workdir_lib.read_json(round_dir / stages.PRUNE_REPORT_FILE)
  settings = stages.sampling_settings(
      prune_ctx.config.sampling,
      workdir_lib.derived_seed(ctx.config.seed, _TEACHER_ROUND,
                               workdir_lib.Stage.THINK))
  samples = []
  if teacher.source == 'traces':
    try:
      traces, unmatched = teacher_file.read_teacher_traces(teacher.traces_path,
                                              ctx.train_problems)
    except FileNotFoundError as e:
      raise config_fields.ConfigError(
          f'config.sert.teacher.traces_path: {e}') from e
    print(f'Teacher traces: {len(traces)} read from {teacher.traces_path}'
          f' ({unmatched} for problems outside this run, skipped).',
          flush=True)
    samples = stages.verify_samples(
        prune_ctx, [{**t, 'finish_reason': FINISH_FROM_FILE} for t in traces])
    workdir_lib.write_json(
        workdir_lib.shard_path(round_dir / 'think', 0),
        {'records': [s.to_json() for s in samples],
         'num_unmatched': unmatched})
  else:
    teacher_ctx = load_teacher(ctx)
    teacher_params = tpt.RoundParams(teacher_ctx)
    params = timings.time('teacher/warmup', lambda: teacher_params(0))
    if needs_eval:
      timings.time('teacher/eval', lambda: stages.evaluate(
          teacher_ctx, params, teacher_ctx.round_dir(0), round_index=0))
    if not stages.prune_done(round_dir):
      samples = timings.time('teacher/think', lambda: stages.think(
          teacher_ctx, params, teacher_ctx.train_problems, settings,
          round_dir / 'think', crash_prefix='teacher_think',
          description='teacher think'))
    del teacher_ctx, teacher_params, params  # Frees the teacher.
  prune_report = timings.time('teacher/prune', lambda: stages.prune_and_write(
      prune_ctx, round_dir,
      stages.traces_of(prune_ctx, samples, round_index=_TEACHER_ROUND,
                       settings=settings,
                       checkpoint_id=f'round_{_TEACHER_ROUND - 1}'),
      round_index=_TEACHER_ROUND,
      cap_seed=workdir_lib.derived_seed(ctx.config.seed, _TEACHER_ROUND,
                                        workdir_lib.Stage.EXAMPLE_CAP),
      heldout_seed=workdir_lib.derived_seed(ctx.config.seed, _TEACHER_ROUND,
                                            workdir_lib.Stage.HELDOUT),
      crash_point=f'records:{_TEACHER_ROUND}'))
  stages.print_prune_report('Teacher', prune_report)
  return prune_report


def distill(ctx: stages.RunContext, name: str, init_params: models.Params,
            teacher_report: Mapping[str, Any], timings: Any
            ) -> dict[str, Any]:
  """Fine-tunes `init_params` on the teacher's dataset in DIR/<name>/round_1
  and evaluates the result; returns its eval report."""
  stage_ctx = dataclasses.replace(ctx, workdir=ctx.workdir / name)
  round_dir = stage_ctx.round_dir(_DISTILLATION_ROUND)
  if (round_dir / stages.EVAL_FILE).exists():
    return workdir_lib.read_json(round_dir / stages.EVAL_FILE)
  if teacher_report['num_kept']:
    dataset = (ctx.workdir / TEACHER_DIR / f'round_{_TEACHER_ROUND}' /
               stages.DATASET_DIR)
    params = timings.time(f'{name}/train', lambda: stages.fine_tune(
        stage_ctx, round_dir / 'train', [os.fspath(dataset)], init_params,
        seed=workdir_lib.derived_seed(ctx.config.seed, _DISTILLATION_ROUND,
                                      workdir_lib.Stage.DISTILL),
        crash_prefix=f'{name}:train',
        heldout=stages.heldout_dataset(dataset.parent, teacher_report)))
  else:
    print(f'{name}: no teacher trace survived pruning; the student is not '
          'changed.', flush=True)
    params = init_params
  eval_report = timings.time(f'{name}/eval', lambda: stages.evaluate(
      stage_ctx, params, round_dir, round_index=_DISTILLATION_ROUND,
      extra_metrics=stages.heldout_loss(round_dir / 'train')))
  print(f'{name}: ' + report.metrics_text(eval_report['metrics']),
        flush=True)
  return eval_report


# ----------------------------------------------------------------------------
# Summary.
# ----------------------------------------------------------------------------


def filter_counts(reports: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
  """Traces, correct ones, removed per filter and kept, summed over prune
  reports (prune.json)."""
  removed: dict[str, int] = {}
  for prune_report in reports:
    for name, count in prune_report['removed'].items():
      removed[name] = removed.get(name, 0) + count
    if prune_report.get('removed_by_cap'):
      removed['cap'] = removed.get('cap', 0) + prune_report['removed_by_cap']
  return {
      'num_traces': sum(r['num_traces'] for r in reports),
      'num_correct': sum(r['num_correct'] for r in reports),
      'removed': removed,
      'num_kept': sum(r['num_kept'] for r in reports),
  }


def _eval_metrics(path: workdir_lib.Path) -> dict[str, Any]:
  return workdir_lib.read_json(path)['metrics']


def build_summary(workdir: workdir_lib.Path,
                  config: ml_collections.ConfigDict) -> dict[str, Any]:
  """sert_summary.json's content, from the stages' files in `workdir`."""
  self_training = workdir / SELF_TRAINING_DIR
  num_rounds = config.loop.num_rounds
  round_reports = [
      workdir_lib.read_json(self_training / f'round_{r}' /
                            stages.PRUNE_REPORT_FILE)
      for r in range(1, num_rounds + 1)]
  self_filters = filter_counts(round_reports)
  self_filters['rounds'] = [
      {'round': r['round'], **filter_counts([r])} for r in round_reports]
  summary_stages = [
      {'stage': STAGE_STUDENT,
       'metrics': _eval_metrics(self_training / 'round_0' / stages.EVAL_FILE),
       'filters': {}},
      {'stage': STAGE_SELF_TRAINING,
       'metrics': _eval_metrics(
           self_training / f'round_{num_rounds}' / stages.EVAL_FILE),
       'filters': self_filters},
  ]
  teacher = config.sert.teacher
  if teacher.source != 'none':
    teacher_dir = workdir / TEACHER_DIR
    teacher_filters = filter_counts([workdir_lib.read_json(
        teacher_dir / f'round_{_TEACHER_ROUND}' / stages.PRUNE_REPORT_FILE)])
    for stage, directory in (
        (STAGE_SELF_TRAINING_DISTILLATION, SELF_TRAINING_DISTILLATION_DIR),
        (STAGE_DISTILLATION, DISTILLATION_DIR)):
      summary_stages.append({'stage': stage, 'metrics': _eval_metrics(
          workdir / directory / f'round_{_DISTILLATION_ROUND}' /
          stages.EVAL_FILE), 'filters': teacher_filters})
    if teacher.source == 'model' and teacher.evaluate:
      summary_stages.append({'stage': STAGE_TEACHER, 'metrics': _eval_metrics(
          teacher_dir / 'round_0' / stages.EVAL_FILE),
                             'filters': teacher_filters})
  return {
      'title': (f'SERT: {config.task.name}, student {config.model.variant}, '
                f'teacher {_teacher_name(config)}'),
      'stages': summary_stages,
  }


def _teacher_name(config: ml_collections.ConfigDict) -> str:
  teacher = config.sert.teacher
  if teacher.source == 'model':
    return teacher.variant or config.model.variant
  if teacher.source == 'traces':
    return pathlib.Path(teacher.traces_path).name
  return 'none'


def format_table(summary: Mapping[str, Any]) -> str:
  """The summary as a text table: a row per stage, its metrics, then its
  training traces and how many each filter removed."""
  filters: list[str] = []
  for stage in summary['stages']:
    for name in stage['filters'].get('removed', {}):
      if name not in filters:
        filters.append(name)
  rows = []
  for stage in summary['stages']:
    counts = stage['filters']
    rows.append({
        'stage': stage['stage'], 'metrics': stage['metrics'],
        'counts': {'traces': counts.get('num_traces', '-'),
                   **{f'-{f}': counts.get('removed', {}).get(f, '-')
                      for f in filters},
                   'kept': counts.get('num_kept', '-')}})
  return report.format_table(
      'stage', rows,
      count_columns=('traces', *(f'-{f}' for f in filters), 'kept'))


# ----------------------------------------------------------------------------
# The run.
# ----------------------------------------------------------------------------


def _check_num_rounds(workdir: workdir_lib.Path,
                      config: ml_collections.ConfigDict) -> None:
  """Refuses another loop.num_rounds in a started SERT workdir (TPT allows
  it; SERT distils from the last round)."""
  path = workdir / workdir_lib.CONFIG_FILE
  if not path.exists():
    return
  saved = workdir_lib.read_json(path).get('loop', {}).get('num_rounds')
  if saved != config.loop.num_rounds:
    raise config_fields.ConfigError(
        f'{workdir} holds a SERT run started with another config; rerun with '
        'the same config to resume, or use a new --workdir. Differences:\n  '
        f'config.loop.num_rounds: {saved!r} in the workdir, '
        f'{config.loop.num_rounds!r} now (the distillation after '
        'self-training starts from the last round)')


def run(config: ml_collections.ConfigDict,
        workdir: workdir_lib.PathLike | None = None) -> dict[str, Any]:
  """Runs (or resumes) every SERT stage; returns the summary.

  Args:
    config: the full config, `config.mode == 'sert'`.
    workdir: default `config.workdir`.
  """
  tpt.validate_config(config)
  sert_config.validate_config(config)
  sert_config.check_teacher_weights(config)
  if workdir or config.get('workdir'):
    _check_num_rounds(workdir_lib.as_path(workdir or config.workdir), config)
  workdir = workdir_lib.prepare(config, workdir)
  timings = workdir_lib.Timings(workdir)
  ctx = stages.setup(config, workdir)

  print('SERT self-training: zero-shot prompts, sampling '
        + ', '.join(f'{f}={config.sert.sampling[f]}'
                    for f in sert_config.SAMPLING_FIELDS)
        + f'; filters {config.sert.strategies}.', flush=True)
  self_ctx = dataclasses.replace(ctx, config=sert_config.self_training_config(config),
                                 workdir=workdir / SELF_TRAINING_DIR)
  _, self_params = tpt.run_rounds(self_ctx,
                                  timings.prefixed(SELF_TRAINING_DIR))

  # Later stages reuse the programs the rounds compiled.
  ctx = dataclasses.replace(ctx, engine=self_ctx.engine)
  teacher_report = teacher_traces(ctx, timings)
  if teacher_report is not None:
    distill(ctx, SELF_TRAINING_DISTILLATION_DIR,
            self_params(config.loop.num_rounds), teacher_report, timings)
    distill(ctx, DISTILLATION_DIR, self_params(0), teacher_report, timings)

  summary = build_summary(workdir, config)
  path = workdir / SUMMARY_FILE
  if not (path.exists() and workdir_lib.read_json(path) == summary):
    workdir_lib.write_json(path, summary)
    if workdir_lib.is_writer():
      report.plot_stages(summary['title'], summary['stages'],
                         workdir / SUMMARY_PLOT)
  report.finish(workdir, format_table(summary), timings, SUMMARY_FILE,
                SUMMARY_PLOT)
  return summary
