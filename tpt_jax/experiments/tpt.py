"""TPT: rounds of Think -> Prune -> Train -> Evaluate.

`run(config)` runs `config.loop.num_rounds` rounds in `config.workdir`:

  DIR/config.json            the config the run started with (a changed
                             config of a half-finished DIR is refused)
  DIR/tokenizer.model        toy models only: built on the spot from the task
  DIR/round_0/               the starting model (after the optional warm-up
                             fine-tune in round_0/warmup/), evaluated
  DIR/round_<N>/think/       sampled + verified traces, one JSON shard per
                             unit of problems
  DIR/round_<N>/dataset/     the survivors of pruning, a TFDS dataset (its
                             'heldout' split: survivors held out of training,
                             with config.prune.num_heldout_examples)
  DIR/round_<N>/prune.json   traces per filter, kept (and held out)
  DIR/round_<N>/train/       checkpoints, TensorBoard events, final_params/,
                             done.json (with the held-out loss)
  DIR/round_<N>/eval/        greedy (and sampled) test completions, shards
  DIR/round_<N>/eval.json    Pass@1 (greedy), pass@k, maj@k on the test split
                             (and `heldout_loss`, the mean per-token loss of
                             the held-out examples after the round's training)
  DIR/summary.json           {"rounds": [{"round": N, "metrics": {...}}]}
  DIR/summary.png            the metrics per round
  DIR/tensorboard/           eval metrics per round
  DIR/timings.json           seconds per stage

A round, top to bottom (`run_round`): think with round N-1's model, prune
and write the dataset, fine-tune (from round N-1's model, or the starting
model with policy 'from_base'), evaluate. Resume follows `tpt_jax.workdir`'s
rule: a rerun after a crash skips what is done and ends with the same
datasets and `summary.json`.
"""

from __future__ import annotations

import os
from typing import Any

import ml_collections

from tpt_jax import config_fields
from tpt_jax import evaluate as evaluate_lib
from tpt_jax import models
from tpt_jax import records
from tpt_jax import report
from tpt_jax import stages
from tpt_jax import workdir as workdir_lib

Stage = workdir_lib.Stage
POLICIES = ('recursive', 'from_base')
SUMMARY_FILE = 'summary.json'
SUMMARY_PLOT = 'summary.png'


def default_config() -> ml_collections.ConfigDict:
  """`config.loop`: rounds and their policy."""
  c = ml_collections.ConfigDict()
  c.num_rounds = 3
  # 'recursive': round N fine-tunes round N-1's model (TPT); 'from_base':
  # every round fine-tunes the starting model.
  c.policy = 'recursive'
  # Train on earlier rounds' datasets too (mixed by config.train weights, or
  # by size).
  c.mix_previous_rounds = False
  # Caps; 0 = no cap. Problems are the first N of the task's fixed order;
  # examples are a seeded choice among the round's survivors.
  c.max_train_problems = 0
  c.max_test_problems = 0
  c.max_train_examples_per_round = 0
  # Problems per think/eval shard (the unit of resume); 0: 4 sampler batches.
  c.problems_per_shard = 0
  # Warm-up fine-tune before round 0 on the task's worked train solutions
  # (Task.warmup_examples): 0 examples = none.
  c.warmup = stages.warmup_config()
  return c


def validate_config(config: ml_collections.ConfigDict) -> None:
  """Raises ConfigError naming the first `config.loop`/`config.eval` field
  not allowed."""
  loop = config.loop
  config_fields.check_choice(loop.policy, 'loop.policy', POLICIES)
  for field in ('num_rounds', 'max_train_problems', 'max_test_problems',
                'max_train_examples_per_round', 'problems_per_shard'):
    if loop[field] < 0:
      raise config_fields.ConfigError(
          f'config.loop.{field}={loop[field]} must not be negative.')
  stages.validate_warmup(loop.warmup, 'loop.warmup')
  try:
    evaluate_lib.validate_config(config.eval)
  except config_fields.ConfigError:
    raise
  except ValueError as e:
    raise config_fields.ConfigError(str(e)) from e


class RoundParams:
  """The model each round ends with, loaded (or trained) once.

  Round 0 is the starting model after the warm-up (if any); round N is
  round N's fine-tune (trained again when its params are missing or
  damaged), or round N-1's model when nothing survived pruning. Only the
  latest round's params are kept in memory.
  """

  def __init__(self, ctx: stages.RunContext):
    self._ctx = ctx
    self._cached: dict[int, models.Params] = {}

  def put(self, round_index: int, params: models.Params) -> None:
    self._cached = {round_index: params}

  def __call__(self, round_index: int) -> models.Params:
    if round_index in self._cached:
      return self._cached[round_index]
    ctx = self._ctx
    round_dir = ctx.round_dir(round_index)
    if round_index == 0:
      params = ctx.base_params
      if ctx.config.loop.warmup.num_examples:
        params = stages.warm_up(ctx, round_dir / 'warmup',
                                ctx.config.loop.warmup, crash_prefix='train:0')
    else:
      params = stages.trained_params(ctx, round_dir / 'train')
      if params is None:
        # Not trained (or its params were damaged and dropped): train it
        # again, from its newest checkpoint; nothing kept: round N-1's.
        params = _train(ctx, self, round_index, workdir_lib.read_json(
            round_dir / stages.PRUNE_REPORT_FILE))
    self.put(round_index, params)
    return params


def run_round(ctx: stages.RunContext, round_params: RoundParams,
              round_index: int, timings: Any) -> dict[str, Any]:
  """One round: think, prune + write, train, evaluate; returns its eval
  report."""
  config = ctx.config
  round_dir = ctx.round_dir(round_index)
  previous = round_params(round_index - 1)
  settings = stages.sampling_settings(
      config.sampling,
      workdir_lib.derived_seed(config.seed, round_index, Stage.THINK))
  samples = timings.time(f'round_{round_index}/think', lambda: stages.think(
      ctx, previous, ctx.train_problems, settings, round_dir / 'think',
      crash_prefix=f'think:{round_index}',
      description=f'round {round_index} think'))
  prune_report = timings.time(
      f'round_{round_index}/prune', lambda: stages.prune_and_write(
          ctx, round_dir,
          stages.traces_of(ctx, samples, round_index=round_index,
                           settings=settings,
                           checkpoint_id=f'round_{round_index - 1}'),
          round_index=round_index,
          cap_seed=workdir_lib.derived_seed(config.seed, round_index,
                                            Stage.EXAMPLE_CAP),
          heldout_seed=workdir_lib.derived_seed(config.seed, round_index,
                                                Stage.HELDOUT),
          crash_point=f'records:{round_index}'))
  stages.print_prune_report(f'Round {round_index}', prune_report)
  params = timings.time(f'round_{round_index}/train', lambda: _train(
      ctx, round_params, round_index, prune_report))
  return timings.time(f'round_{round_index}/eval', lambda: stages.evaluate(
      ctx, params, round_dir, round_index=round_index,
      extra_metrics=stages.heldout_loss(round_dir / 'train')))


def _train(ctx: stages.RunContext, round_params: RoundParams,
           round_index: int, prune_report: dict[str, Any]) -> models.Params:
  """Fine-tunes on the round's survivors (and earlier rounds' if mixed)."""
  if prune_report['num_kept'] == 0:
    print(f'Round {round_index}: no trace survived pruning; the model stays '
          f'round {round_index - 1}\'s.', flush=True)
    return round_params(round_index - 1)
  datasets = [ctx.round_dir(r) / stages.DATASET_DIR
              for r in range(1, round_index)
              if ctx.config.loop.mix_previous_rounds]
  datasets = [d for d in datasets if records.is_round_dataset(d)]
  datasets.append(ctx.round_dir(round_index) / stages.DATASET_DIR)
  init = round_params(round_index - 1 if ctx.config.loop.policy == 'recursive'
                      else 0)
  params = stages.fine_tune(
      ctx, ctx.round_dir(round_index) / 'train',
      [os.fspath(d) for d in datasets], init,
      seed=workdir_lib.derived_seed(ctx.config.seed, round_index, Stage.TRAIN),
      crash_prefix=f'train:{round_index}',
      heldout=stages.heldout_dataset(ctx.round_dir(round_index), prune_report))
  round_params.put(round_index, params)
  return params


def run_rounds(ctx: stages.RunContext, timings: Any) -> tuple[
    dict[str, Any], RoundParams]:
  """Round 0's evaluation, then every round not yet evaluated.

  Rounds already evaluated are only printed; the stages of an unfinished
  round skip their finished units. Returns the summary (written to
  ctx.workdir) and the rounds' params (for experiments that go on from a
  round's model).
  """
  round_params = RoundParams(ctx)
  eval_path = ctx.round_dir(0) / stages.EVAL_FILE
  if eval_path.exists():
    round_report = workdir_lib.read_json(eval_path)
  else:
    params = timings.time('round_0/warmup', lambda: round_params(0))
    round_report = timings.time('round_0/eval', lambda: stages.evaluate(
        ctx, params, ctx.round_dir(0), round_index=0))
  _print_round(round_report)
  for round_index in range(1, ctx.config.loop.num_rounds + 1):
    eval_path = ctx.round_dir(round_index) / stages.EVAL_FILE
    if eval_path.exists():
      round_report = workdir_lib.read_json(eval_path)
    else:
      round_report = run_round(ctx, round_params, round_index, timings)
    _print_round(round_report)
  return write_summary(ctx), round_params


def _round_row(ctx: stages.RunContext, round_index: int) -> dict[str, Any]:
  round_dir = ctx.round_dir(round_index)
  entry = {'round': round_index,
           'metrics': workdir_lib.read_json(
               round_dir / stages.EVAL_FILE)['metrics']}
  prune_path = round_dir / stages.PRUNE_REPORT_FILE
  if prune_path.exists():
    prune_report = workdir_lib.read_json(prune_path)
    entry['data'] = {
        'num_traces': prune_report['num_traces'],
        'train_sample_accuracy': prune_report['num_correct'] /
                                 max(1, prune_report['num_traces']),
        'num_kept': prune_report['num_kept'],
    }
    if 'num_heldout' in prune_report:
      entry['data']['num_heldout'] = prune_report['num_heldout']
  return entry


def write_summary(ctx: stages.RunContext) -> dict[str, Any]:
  """summary.json and summary.png from every evaluated round in the workdir.

  Rounds past `config.loop.num_rounds` that an earlier, longer invocation
  evaluated stay in the summary: it never shrinks.
  """
  num_rounds = ctx.config.loop.num_rounds
  while (ctx.round_dir(num_rounds + 1) / stages.EVAL_FILE).exists():
    num_rounds += 1
  summary = {
      'title': (f'{ctx.task.name}, {ctx.config.model.variant}, prune='
                f'{ctx.config.prune.strategies}'),
      'rounds': [_round_row(ctx, r) for r in range(num_rounds + 1)],
  }
  path = ctx.workdir / SUMMARY_FILE
  if not (path.exists() and workdir_lib.read_json(path) == summary):
    workdir_lib.write_json(path, summary)
    if workdir_lib.is_writer():
      report.plot_rounds(summary['title'], summary['rounds'],
                         ctx.workdir / SUMMARY_PLOT)
  return summary


def format_table(summary: dict[str, Any]) -> str:
  """The summary as a text table, one row per round."""
  rows = [{**entry, 'counts': {'kept': entry.get('data', {}).get(
      'num_kept', '-')}} for entry in summary['rounds']]
  return report.format_table('round', rows, count_columns=('kept',))


def _print_round(round_report: dict[str, Any]) -> None:
  print(f'Round {round_report["round"]}: '
        + report.metrics_text(round_report['metrics']), flush=True)


def run(config: ml_collections.ConfigDict,
        workdir: workdir_lib.PathLike | None = None) -> dict[str, Any]:
  """Runs (or resumes) every round; returns the summary.

  Args:
    config: the full, validated config.
    workdir: default `config.workdir`.
  """
  validate_config(config)
  workdir = workdir_lib.prepare(config, workdir)
  timings = workdir_lib.Timings(workdir)
  ctx = stages.setup(config, workdir)
  summary, _ = run_rounds(ctx, timings)
  report.finish(workdir, format_table(summary), timings, SUMMARY_FILE,
                SUMMARY_PLOT)
  return summary

