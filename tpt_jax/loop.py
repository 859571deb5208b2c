"""Improve: the multi-round Think -> Prune -> Train -> Evaluate loop.

`run(config)` runs `config.loop.num_rounds` TPT rounds in `config.workdir`:

  DIR/config.json            the config the run started with (a changed
                             config of a half-finished DIR is refused)
  DIR/tokenizer.model        toy models only: built on the spot from the task
  DIR/round_0/               the starting model (after the optional warm-up
                             fine-tune in round_0/warmup/), evaluated
  DIR/round_<N>/think/       sampled + verified traces, one JSON shard per
                             unit of problems
  DIR/round_<N>/dataset/     the survivors of pruning, a TFDS dataset
  DIR/round_<N>/prune.json   traces per filter, kept
  DIR/round_<N>/train/       checkpoints, TensorBoard events, final_params/
  DIR/round_<N>/eval/        greedy (and sampled) test completions, shards
  DIR/round_<N>/eval.json    Pass@1 (greedy), pass@k, maj@k on the test split
  DIR/summary.json           {"rounds": [{"round": N, "metrics": {...}}]}
  DIR/summary.png            the metrics per round
  DIR/tensorboard/           eval metrics per round

Resume. Every unit of work is written atomically (a JSON shard, a dataset
directory renamed into place, an orbax checkpoint, a marker file) and a stage
reads only completed units of the stage before. Rerunning the same command
after a crash (even SIGKILL) skips what is done, resamples only unfinished
shards (each shard always holds the same problems, and a trace depends only
on (seed, round, problem, sample), so the redo is identical), continues
training from its last checkpoint, and ends with the same datasets and
`summary.json` as an uninterrupted run.

Round policy (`config.loop`): 'recursive' fine-tunes round N-1's model on
round N's data (the paper's TPT); 'from_base' always fine-tunes the starting
model. `mix_previous_rounds` adds earlier rounds' datasets to the training
mixture; `max_train_examples_per_round` caps the examples (data-volume
studies).
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import pathlib
import random
import shutil
import signal
import sys
import time
from typing import Any, Callable, Sequence

from absl import logging
import jax
from jax.sharding import Mesh
import ml_collections
import numpy as np
import tqdm

from tpt_jax import checkpoints
from tpt_jax import config as config_lib
from tpt_jax import evaluate
from tpt_jax import models
from tpt_jax import prune
from tpt_jax import records
from tpt_jax import sampling
from tpt_jax import sharding as sharding_lib
from tpt_jax import tasks
from tpt_jax import tokenizer as tokenizer_lib
from tpt_jax import train as train_lib

POLICIES = ('recursive', 'from_base')
CONFIG_FILE = 'config.json'
SUMMARY_FILE = 'summary.json'
SUMMARY_PLOT = 'summary.png'
TOKENIZER_FILE = 'tokenizer.model'
TRAIN_DONE_FILE = 'done.json'
# Fields that may differ when a workdir is resumed: they change how a run
# shows progress or where it runs, not what it computes.
RESUMABLE_CHANGES = ('workdir', 'loop.num_rounds', 'sampling.show_progress',
                     'train.progress_bar', 'train.log_every', 'mesh.shape',
                     'mesh.distributed')
# Fault injection for the resume tests: a comma-separated list of points
# ('think:<round>:<shard>', 'records:<round>', 'train:<round>:<step>',
# 'eval:<round>:<shard>') at which the process kills itself with SIGKILL.
CRASH_ENV = 'TPT_JAX_CRASH_AT'
# Stages whose seeds differ (folded into the round's seed).
_STAGE_THINK, _STAGE_EVAL_GREEDY, _STAGE_EVAL_SAMPLED, _STAGE_TRAIN = range(4)
_STAGE_WARMUP, _STAGE_CAP = 4, 5


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
  # (tasks with `warmup_examples`, e.g. the demo): 0 examples = none. Its
  # train settings are config.train's, with these epochs and learning rate.
  c.warmup = ml_collections.ConfigDict()
  c.warmup.num_examples = 0
  c.warmup.num_epochs = 1.0
  c.warmup.learning_rate = 0.0  # 0: config.train.learning_rate.
  return c


def validate_config(config: ml_collections.ConfigDict) -> None:
  """Raises ConfigError naming the first `config.loop`/`config.eval` field
  not allowed."""
  loop = config.loop
  if loop.policy not in POLICIES:
    raise config_lib.ConfigError(
        f'config.loop.policy={loop.policy!r} is not one of '
        f'{", ".join(POLICIES)}.')
  for field in ('num_rounds', 'max_train_problems', 'max_test_problems',
                'max_train_examples_per_round', 'problems_per_shard'):
    if loop[field] < 0:
      raise config_lib.ConfigError(
          f'config.loop.{field}={loop[field]} must not be negative.')
  if loop.warmup.num_examples < 0:
    raise config_lib.ConfigError(
        f'config.loop.warmup.num_examples={loop.warmup.num_examples} must not '
        'be negative.')
  if loop.warmup.num_examples and not loop.warmup.num_epochs > 0:
    raise config_lib.ConfigError(
        f'config.loop.warmup.num_epochs={loop.warmup.num_epochs} must be > 0.')
  try:
    evaluate.validate_config(config.eval)
  except ValueError as e:
    raise config_lib.ConfigError(str(e)) from e


# ----------------------------------------------------------------------------
# Small helpers: seeds, files, fault injection.
# ----------------------------------------------------------------------------


def derived_seed(seed: int, round_index: int, stage: int) -> int:
  """A seed for one stage of one round, a pure function of its inputs."""
  return int(np.random.SeedSequence(
      [seed, round_index, stage]).generate_state(1)[0] >> 1)


def is_writer() -> bool:
  """Whether this process writes the run's files (process 0)."""
  return jax.process_index() == 0


def write_json(path: pathlib.Path, obj: Any) -> None:
  """Writes `obj` as JSON atomically (process 0 only)."""
  if is_writer():
    path.parent.mkdir(parents=True, exist_ok=True)
    evaluate.write_json_atomic(path, obj)


def read_json(path: pathlib.Path) -> Any:
  """The JSON value in `path`."""
  return json.loads(path.read_text())


def maybe_crash(point: str) -> None:
  """SIGKILLs this process at `point` if CRASH_ENV names it (tests only)."""
  if point in os.environ.get(CRASH_ENV, '').split(','):
    print(f'{CRASH_ENV}: killing the process at {point}.', flush=True)
    os.kill(os.getpid(), signal.SIGKILL)


def _flatten(tree: Any, prefix: str = '') -> dict[str, Any]:
  if isinstance(tree, dict):
    flat = {}
    for key, value in tree.items():
      flat.update(_flatten(value, f'{prefix}{key}.'))
    return flat
  return {prefix[:-1]: tree}


def config_differences(saved: dict[str, Any], current: dict[str, Any]
                       ) -> list[str]:
  """'config.x: a (saved) != b (now)' for each field that differs, except
  RESUMABLE_CHANGES."""
  saved_flat, current_flat = _flatten(saved), _flatten(current)
  lines = []
  for name in sorted(set(saved_flat) | set(current_flat)):
    if name in RESUMABLE_CHANGES:
      continue
    missing = '<absent>'
    old = saved_flat.get(name, missing)
    new = current_flat.get(name, missing)
    if old != new:
      lines.append(f'config.{name}: {old!r} in the workdir, {new!r} now')
  return lines


def _config_as_json(config: ml_collections.ConfigDict) -> dict[str, Any]:
  # Through JSON so that tuples and lists compare equal after a round trip.
  return json.loads(json.dumps(config.to_dict(), default=str))


def check_or_save_config(workdir: pathlib.Path,
                         config: ml_collections.ConfigDict) -> None:
  """Saves the config in a new workdir; in one already started, refuses a
  config that differs (in anything that changes results)."""
  path = workdir / CONFIG_FILE
  current = _config_as_json(config)
  if path.exists():
    differences = config_differences(read_json(path), current)
    if differences:
      raise config_lib.ConfigError(
          f'{workdir} holds a run started with another config; rerun with '
          'the same config to resume, or use a new --workdir. Differences:\n  '
          + '\n  '.join(differences))
  write_json(path, current)


# ----------------------------------------------------------------------------
# The run's fixed context.
# ----------------------------------------------------------------------------


@dataclasses.dataclass
class Context:
  """What every round shares. Built once by `setup`."""
  config: ml_collections.ConfigDict
  workdir: pathlib.Path
  mesh: Mesh
  model: models.Model
  tokenizer: tokenizer_lib.Tokenizer
  task: tasks.Task
  train_problems: list[tasks.Problem]
  test_problems: list[tasks.Problem]
  exemplars: list[tasks.Problem]
  base_params: models.Params
  sampler: sampling.Sampler | None = None
  _params_cache: dict[int, models.Params] = dataclasses.field(
      default_factory=dict)

  def round_dir(self, round_index: int) -> pathlib.Path:
    return self.workdir / f'round_{round_index}'

  def prompt(self, problem: tasks.Problem) -> str:
    return self.task.format_prompt(problem, self.config.task.prompt_style,
                                   self.exemplars)

  def sampler_for(self, params: models.Params) -> sampling.Sampler:
    """A sampler for `params` that reuses every program compiled so far."""
    if self.sampler is None:
      self.sampler = sampling.Sampler(self.model, params,
                                      tokenizer=self.tokenizer,
                                      mesh=self.mesh)
    else:
      self.sampler = self.sampler.with_params(params)
    return self.sampler


def _build_tokenizer(config: ml_collections.ConfigDict, workdir: pathlib.Path,
                     task: tasks.Task) -> tokenizer_lib.Tokenizer:
  """The configured tokenizer; for toy models without one, a sentencepiece
  model trained on the task's corpus (once, saved in the workdir)."""
  if config.tokenizer.path:
    return tokenizer_lib.load_tokenizer(config.tokenizer.path)
  if config.model.variant not in models.TOY_VARIANTS:
    return tokenizer_lib.tokenizer_from_config(config.tokenizer)  # Raises.
  path = workdir / TOKENIZER_FILE
  if path.exists():
    return tokenizer_lib.load_tokenizer(path)
  module = sys.modules[type(task).__module__]
  corpus = getattr(module, 'corpus', None)
  if corpus is None:
    raise config_lib.ConfigError(
        f'config.tokenizer.path is not set and task {task.name!r} has no '
        'corpus to build a tokenizer from; point config.tokenizer.path at a '
        'sentencepiece model.')
  vocab_size = config.model.vocab_size or models.DEFAULT_TOY_VOCAB_SIZE
  print(f'Building a {vocab_size}-piece sentencepiece tokenizer from the '
        f'{task.name} corpus: {path}', flush=True)
  return tokenizer_lib.train_sentencepiece(
      corpus(config.task.seed, config=config.task), path,
      vocab_size=vocab_size)


def setup(config: ml_collections.ConfigDict,
          workdir: pathlib.Path) -> Context:
  """Mesh, task problems, tokenizer, model and starting params."""
  sharding_lib.maybe_initialize_distributed(config.mesh)
  mesh = sharding_lib.make_mesh(config.mesh)
  batch_devices = int(np.prod(
      [mesh.shape[a] for a in sharding_lib.LOGICAL_AXIS_RULES['batch']]))
  try:
    train_lib.validate_config(config, batch_devices)
  except ValueError as e:
    raise config_lib.ConfigError(str(e)) from e
  task = tasks.get_task(config.task.name)
  train_problems = task.load_problems('train', config.task)
  test_problems = task.load_problems('test', config.task)
  exemplars, train_problems = tasks.select_exemplars(
      train_problems, config.task.num_few_shot)
  if config.loop.max_train_problems:
    train_problems = train_problems[:config.loop.max_train_problems]
  if config.loop.max_test_problems:
    test_problems = test_problems[:config.loop.max_test_problems]
  tokenizer = _build_tokenizer(config, workdir, task)
  if (config.model.variant in models.TOY_VARIANTS and
      tokenizer.vocab_size > (config.model.vocab_size or
                                models.DEFAULT_TOY_VOCAB_SIZE)):
    raise config_lib.ConfigError(
        f'The tokenizer has {tokenizer.vocab_size} pieces, more than '
        f'config.model.vocab_size={config.model.vocab_size}.')
  model, base_params = checkpoints.model_and_params(config, mesh)
  print(f'Task {task.name}: {len(train_problems)} train problems, '
        f'{len(test_problems)} test problems, {len(exemplars)} exemplars. '
        f'Model: {models.count_params(base_params) / 1e6:.2f}M params on mesh '
        f'{dict(mesh.shape)}.', flush=True)
  return Context(config=config, workdir=workdir, mesh=mesh, model=model,
                 tokenizer=tokenizer, task=task,
                 train_problems=train_problems, test_problems=test_problems,
                 exemplars=exemplars, base_params=base_params)


# ----------------------------------------------------------------------------
# Think (and the sampling half of Evaluate): sharded, resumable sampling.
# ----------------------------------------------------------------------------


def _shard_path(directory: pathlib.Path, index: int) -> pathlib.Path:
  return directory / f'shard_{index:05d}.json'


def problems_per_shard(config: ml_collections.ConfigDict,
                       num_samples: int) -> int:
  if config.loop.problems_per_shard:
    return config.loop.problems_per_shard
  return max(1, 4 * config.sampling.batch_size // num_samples)


def sample_and_verify(ctx: Context, params: models.Params,
                      problems: Sequence[tasks.Problem],
                      settings: sampling.SamplingSettings,
                      directory: pathlib.Path, *, crash_prefix: str,
                      description: str) -> list[dict[str, Any]]:
  """Samples and verifies `problems`, one shard of problems at a time.

  A shard (`directory/shard_<k>.json`) holds every sample of a fixed slice of
  `problems` with its verdict; shards already written are read, not redone.

  Returns:
    One record per (problem, sample), in problem then sample order.
  """
  directory.mkdir(parents=True, exist_ok=True)
  per_shard = problems_per_shard(ctx.config, settings.num_samples_per_problem)
  slices = [list(problems[start:start + per_shard])
            for start in range(0, len(problems), per_shard)]
  show_progress = bool(ctx.config.sampling.show_progress) and is_writer()
  bar = tqdm.tqdm(total=len(problems), desc=description, unit='problem',
                  file=sys.stderr, disable=not show_progress)
  all_records: list[dict[str, Any]] = []
  sampler = None
  generated_tokens = 0
  start_time = time.perf_counter()
  for index, shard_problems in enumerate(slices):
    path = _shard_path(directory, index)
    if path.exists():
      shard_records = read_json(path)['records']
    else:
      sampler = sampler or ctx.sampler_for(params)
      results = sampler.sample_all(
          [ctx.prompt(p) for p in shard_problems], settings,
          problem_ids=[p.problem_id for p in shard_problems],
          chat_template=ctx.config.tokenizer.chat_template,
          show_progress=False)
      verdicts = tasks.verify_all(
          ctx.task, [r.text for r in results],
          [shard_problems[r.problem_index] for r in results],
          ctx.config.prune)
      shard_records = []
      for result, (correct, extracted) in zip(results, verdicts):
        generated_tokens += result.num_generated_tokens
        shard_records.append({
            'problem_id': result.problem_id,
            'sample_index': result.sample_index,
            'completion': result.text,
            'num_tokens': result.num_generated_tokens,
            'finish_reason': result.finish_reason,
            'logprob_sum': float(result.logprob_sum),
            'correct': bool(correct),
            'extracted_answer': extracted,
        })
      write_json(path, {'records': shard_records})
      maybe_crash(f'{crash_prefix}:{index}')
    all_records.extend(shard_records)
    bar.update(len(shard_problems))
    elapsed = time.perf_counter() - start_time
    if generated_tokens:
      bar.set_postfix(tokens_per_s=f'{generated_tokens / elapsed:.0f}')
  bar.close()
  return all_records


# ----------------------------------------------------------------------------
# The stages of one round.
# ----------------------------------------------------------------------------


def sampling_settings(config: ml_collections.ConfigDict, round_index: int
                      ) -> sampling.SamplingSettings:
  """The Think stage's settings for a round (its own seed)."""
  return sampling.SamplingSettings.from_config(
      config.sampling,
      seed=derived_seed(config.seed, round_index, _STAGE_THINK))


def think(ctx: Context, round_index: int, params: models.Params
          ) -> list[dict[str, Any]]:
  """Samples the train problems with the previous round's model."""
  settings = sampling_settings(ctx.config, round_index)
  return sample_and_verify(
      ctx, params, ctx.train_problems, settings,
      ctx.round_dir(round_index) / 'think',
      crash_prefix=f'think:{round_index}',
      description=f'round {round_index} think')


def _traces(ctx: Context, round_index: int,
            think_records: Sequence[dict[str, Any]]) -> list[prune.Trace]:
  problems = {p.problem_id: p for p in ctx.train_problems}
  settings = json.dumps(dataclasses.asdict(
      sampling_settings(ctx.config, round_index)), sort_keys=True)
  traces = []
  for record in think_records:
    problem = problems[record['problem_id']]
    traces.append(prune.Trace(
        problem_id=record['problem_id'],
        sample_index=record['sample_index'],
        prompt=ctx.prompt(problem),
        completion=record['completion'],
        correct=record['correct'],
        extracted_answer=record['extracted_answer'] or '',
        num_tokens=record['num_tokens'],
        question=problem.question,
        reference_answer=problem.answer,
        round=round_index,
        sampler_settings=settings,
        checkpoint_id=f'round_{round_index - 1}',
        verdict_reason='' if record['correct'] else
        f'finish={record["finish_reason"]}, answer='
        f'{record["extracted_answer"]!r}'))
  return traces


def prune_and_write(ctx: Context, round_index: int,
                    think_records: Sequence[dict[str, Any]]
                    ) -> dict[str, Any]:
  """Prunes the round's traces and writes the survivors' dataset.

  Returns:
    The prune report (also in round_<N>/prune.json).
  """
  round_dir = ctx.round_dir(round_index)
  dataset_dir = round_dir / 'dataset'
  report_path = round_dir / 'prune.json'
  if report_path.exists() and (
      records.is_round_dataset(dataset_dir) or
      read_json(report_path)['num_kept'] == 0):
    return read_json(report_path)
  traces = _traces(ctx, round_index, think_records)
  result = prune.build_pipeline(ctx.config.prune)(traces)
  kept = result.kept
  cap = ctx.config.loop.max_train_examples_per_round
  capped = 0
  if cap and len(kept) > cap:
    chosen = sorted(random.Random(derived_seed(
        ctx.config.seed, round_index, _STAGE_CAP)).sample(
            range(len(kept)), cap))
    capped = len(kept) - cap
    kept = [kept[i] for i in chosen]
  report = {
      'round': round_index,
      'num_traces': len(traces),
      'num_correct': sum(bool(t.correct) for t in traces),
      'removed': dict(result.removed),
      'removed_by_cap': capped,
      'num_kept': len(kept),
      'num_problems_kept': len({t.problem_id for t in kept}),
      'strategies': list(prune.parse_strategies(ctx.config.prune.strategies)),
  }
  # Staging directories of a write that was killed are never read; clear
  # them.
  for stale in round_dir.glob('.dataset.tmp-*'):
    shutil.rmtree(stale, ignore_errors=True)
  if kept and is_writer():
    records.write_round(
        kept, dataset_dir, round_index=round_index,
        checkpoint_id=f'round_{round_index - 1}', overwrite=True,
        before_commit=lambda: maybe_crash(f'records:{round_index}'))
  write_json(report_path, report)
  return report


def _train_config(config: ml_collections.ConfigDict, seed: int,
                  **train_overrides: Any) -> ml_collections.ConfigDict:
  copy = ml_collections.ConfigDict(config.to_dict())
  copy.seed = seed
  for name, value in train_overrides.items():
    copy.train[name] = value
  return copy


def fine_tune(ctx: Context, directory: pathlib.Path,
              sources: Sequence[Any], init_params: models.Params, *,
              seed: int, crash_prefix: str,
              **train_overrides: Any) -> models.Params:
  """Trains (resuming from `directory`'s checkpoints) unless done; returns
  the final params."""
  done_path = directory / TRAIN_DONE_FILE
  if done_path.exists():
    return checkpoints.load_params(
        directory / train_lib.FINAL_PARAMS_DIR, ctx.model, ctx.mesh)

  def on_step(step: int, metrics: dict[str, float]) -> None:
    del metrics
    maybe_crash(f'{crash_prefix}:{step}')

  result = train_lib.train(
      _train_config(ctx.config, seed, **train_overrides), sources,
      tokenizer=ctx.tokenizer, workdir=directory, init_params=init_params,
      mesh=ctx.mesh, step_callback=on_step)
  final_metrics = result.history[-1][1] if result.history else {}
  write_json(done_path, {
      'num_steps': result.num_steps,
      'final_loss': final_metrics.get('loss'),
      'final_token_accuracy': final_metrics.get('token_accuracy'),
  })
  return result.params


def params_of_round(ctx: Context, round_index: int) -> models.Params:
  """The model a round ends with (round 0: the starting model)."""
  if round_index in ctx._params_cache:  # pylint: disable=protected-access
    return ctx._params_cache[round_index]  # pylint: disable=protected-access
  round_dir = ctx.round_dir(round_index)
  if round_index == 0:
    params = ctx.base_params
    if ctx.config.loop.warmup.num_examples:
      params = warm_up(ctx)
  elif (round_dir / 'train' / TRAIN_DONE_FILE).exists():
    params = checkpoints.load_params(
        round_dir / 'train' / train_lib.FINAL_PARAMS_DIR, ctx.model, ctx.mesh)
  elif read_json(round_dir / 'prune.json')['num_kept'] == 0:
    params = params_of_round(ctx, round_index - 1)
  else:
    raise FileNotFoundError(f'Round {round_index} has not finished training.')
  # Only the latest rounds are needed again.
  ctx._params_cache = {round_index: params}  # pylint: disable=protected-access
  return params


def warm_up(ctx: Context) -> models.Params:
  """Round 0's short fine-tune on worked train solutions (the demo's weak
  but not zero start)."""
  warmup = ctx.config.loop.warmup
  module = sys.modules[type(ctx.task).__module__]
  examples_fn = getattr(module, 'warmup_examples', None)
  if examples_fn is None:
    raise config_lib.ConfigError(
        f'config.loop.warmup.num_examples={warmup.num_examples} but task '
        f'{ctx.task.name!r} has no warm-up examples; set it to 0.')
  examples = examples_fn(
      warmup.num_examples, derived_seed(ctx.config.task.seed, 0, _STAGE_WARMUP),
      config=ctx.config.task, style=ctx.config.task.prompt_style,
      exemplars=ctx.exemplars)
  print(f'Round 0 warm-up: fine-tuning on {len(examples)} worked solutions.',
        flush=True)
  overrides = {'num_epochs': float(warmup.num_epochs), 'num_steps': 0}
  if warmup.learning_rate:
    overrides['learning_rate'] = float(warmup.learning_rate)
  return fine_tune(
      ctx, ctx.round_dir(0) / 'warmup',
      [[{'prompt': p, 'completion': c} for p, c in examples]],
      ctx.base_params, seed=derived_seed(ctx.config.seed, 0, _STAGE_WARMUP),
      crash_prefix='train:0', **overrides)


def train_round(ctx: Context, round_index: int,
                prune_report: dict[str, Any]) -> models.Params:
  """Fine-tunes on the round's survivors (and earlier rounds' if mixed)."""
  if prune_report['num_kept'] == 0:
    print(f'Round {round_index}: no trace survived pruning; the model stays '
          f'round {round_index - 1}\'s.', flush=True)
    return params_of_round(ctx, round_index - 1)
  sources = []
  if ctx.config.loop.mix_previous_rounds:
    sources.extend(
        os.fspath(ctx.round_dir(r) / 'dataset') for r in range(1, round_index)
        if records.is_round_dataset(ctx.round_dir(r) / 'dataset'))
  sources.append(os.fspath(ctx.round_dir(round_index) / 'dataset'))
  init = (params_of_round(ctx, round_index - 1)
          if ctx.config.loop.policy == 'recursive'
          else params_of_round(ctx, 0))
  params = fine_tune(
      ctx, ctx.round_dir(round_index) / 'train', sources, init,
      seed=derived_seed(ctx.config.seed, round_index, _STAGE_TRAIN),
      crash_prefix=f'train:{round_index}')
  ctx._params_cache = {round_index: params}  # pylint: disable=protected-access
  return params


def evaluate_round(ctx: Context, round_index: int,
                   params: models.Params) -> dict[str, Any]:
  """Greedy Pass@1 (and pass@k / maj@k from samples) on the test problems."""
  eval_path = ctx.round_dir(round_index) / 'eval.json'
  if eval_path.exists():
    return read_json(eval_path)
  eval_config = ctx.config.eval
  think_settings = sampling_settings(ctx.config, round_index)
  greedy = dataclasses.replace(
      think_settings, num_samples_per_problem=1, temperature=0.0, top_k=0,
      top_p=1.0,
      max_new_tokens=eval_config.max_new_tokens or think_settings.max_new_tokens,
      seed=derived_seed(ctx.config.seed, round_index, _STAGE_EVAL_GREEDY))
  eval_dir = ctx.round_dir(round_index) / 'eval'
  greedy_records = sample_and_verify(
      ctx, params, ctx.test_problems, greedy, eval_dir / 'greedy',
      crash_prefix=f'eval:{round_index}',
      description=f'round {round_index} eval')
  sampled_records: list[dict[str, Any]] = []
  if eval_config.num_samples:
    sampled = dataclasses.replace(
        greedy, num_samples_per_problem=eval_config.num_samples,
        temperature=float(eval_config.temperature),
        seed=derived_seed(ctx.config.seed, round_index, _STAGE_EVAL_SAMPLED))
    sampled_records = sample_and_verify(
        ctx, params, ctx.test_problems, sampled, eval_dir / 'sampled',
        crash_prefix=f'eval_sampled:{round_index}',
        description=f'round {round_index} eval samples')
  by_problem: dict[str, list[dict[str, Any]]] = {}
  for record in sampled_records:
    by_problem.setdefault(record['problem_id'], []).append(record)
  greedy_by_problem = {r['problem_id']: r for r in greedy_records}
  problem_records = [
      evaluate.ProblemRecord(
          problem_id=p.problem_id,
          greedy_correct=greedy_by_problem[p.problem_id]['correct'],
          sample_correct=[r['correct'] for r in by_problem.get(p.problem_id,
                                                               [])],
          sample_answers=[r['extracted_answer']
                          for r in by_problem.get(p.problem_id, [])],
          reference=p.answer)
      for p in ctx.test_problems]
  ks = tuple(eval_config.ks) if eval_config.num_samples else ()
  if not ctx.task.majority_vote:
    maj_ks: tuple[int, ...] = ()
  else:
    maj_ks = ks
  result = evaluate.evaluate_records(
      problem_records, ks, normalize=_safe_normalizer(ctx.task))
  metrics = result.to_dict()
  if not maj_ks:
    metrics = {k: v for k, v in metrics.items() if not k.startswith('maj@')}
  metrics['mean_completion_tokens'] = float(np.mean(
      [r['num_tokens'] for r in greedy_records]))
  report = {'round': round_index, 'metrics': metrics}
  _write_tensorboard(ctx.workdir, round_index, metrics)
  write_json(eval_path, report)
  return report


def _safe_normalizer(task: tasks.Task) -> Callable[[str], str | None]:
  def normalize(answer: str) -> str | None:
    try:
      return task.normalize_answer(answer)
    except ValueError:
      return None
  return normalize


def _write_tensorboard(workdir: pathlib.Path, round_index: int,
                       metrics: dict[str, float]) -> None:
  if not is_writer():
    return
  from flax.metrics import tensorboard  # pylint: disable=g-import-not-at-top
  writer = tensorboard.SummaryWriter(os.fspath(workdir / 'tensorboard'))
  for name, value in metrics.items():
    writer.scalar(f'eval/{name}', value, round_index)
  writer.flush()
  writer.close()


# ----------------------------------------------------------------------------
# Summary.
# ----------------------------------------------------------------------------


def round_summary(ctx: Context, round_index: int) -> dict[str, Any]:
  entry = {'round': round_index,
           'metrics': read_json(ctx.round_dir(round_index) /
                                 'eval.json')['metrics']}
  prune_path = ctx.round_dir(round_index) / 'prune.json'
  if prune_path.exists():
    report = read_json(prune_path)
    entry['data'] = {
        'num_traces': report['num_traces'],
        'train_sample_accuracy': report['num_correct'] /
                                 max(1, report['num_traces']),
        'num_kept': report['num_kept'],
    }
  return entry


def format_metric(name: str, value: float | None) -> str:
  """A table cell: pass@/maj@ metrics as percentages, '-' when missing."""
  if value is None:
    return '-'
  if name.startswith(('pass@', 'maj@')):
    return f'{100 * value:.1f}%'
  return f'{value:.1f}'


def format_table(summary: dict[str, Any]) -> str:
  """The summary as a text table, one row per round."""
  names = []
  for entry in summary['rounds']:
    for name in entry['metrics']:
      if name not in names and name != 'num_problems':
        names.append(name)
  header = ['round', *names, 'kept']
  rows = []
  for entry in summary['rounds']:
    row = [str(entry['round'])]
    row.extend(format_metric(name, entry['metrics'].get(name))
               for name in names)
    row.append(str(entry.get('data', {}).get('num_kept', '-')))
    rows.append(row)
  widths = [max(len(r[i]) for r in [header, *rows])
            for i in range(len(header))]
  return '\n'.join('  '.join(cell.rjust(w) for cell, w in zip(r, widths))
                   for r in [header, *rows])


def plot_summary(summary: dict[str, Any], path: pathlib.Path) -> None:
  """Plots each pass@/maj@ metric against the round."""
  # The object API, not pyplot: no global backend switch for the caller.
  from matplotlib import figure as figure_lib  # pylint: disable=g-import-not-at-top
  rounds = [entry['round'] for entry in summary['rounds']]
  names = sorted({name for entry in summary['rounds']
                  for name in entry['metrics']
                  if name.startswith(('pass@', 'maj@'))})
  figure = figure_lib.Figure(figsize=(6, 4))
  axes = figure.add_subplot()
  for name in names:
    values = [100 * entry['metrics'].get(name, math.nan)
              for entry in summary['rounds']]
    axes.plot(rounds, values, marker='o', label=name)
  axes.set_xlabel('round')
  axes.set_ylabel('% of test problems')
  axes.set_xticks(rounds)
  axes.set_title(summary.get('title', 'TPT'))
  axes.grid(alpha=0.3)
  axes.legend()
  figure.tight_layout()
  tmp = path.with_suffix('.tmp.png')
  figure.savefig(tmp, dpi=100)
  os.replace(tmp, path)


def write_summary(ctx: Context) -> dict[str, Any]:
  summary = {
      'title': (f'{ctx.task.name}, {ctx.config.model.variant}, prune='
                f'{ctx.config.prune.strategies}'),
      'rounds': [round_summary(ctx, r)
                 for r in range(ctx.config.loop.num_rounds + 1)],
  }
  write_json(ctx.workdir / SUMMARY_FILE, summary)
  if is_writer():
    plot_summary(summary, ctx.workdir / SUMMARY_PLOT)
  return summary


# ----------------------------------------------------------------------------
# The loop.
# ----------------------------------------------------------------------------


def prepare_workdir(config: ml_collections.ConfigDict,
                    workdir: str | os.PathLike[str] | None = None
                    ) -> pathlib.Path:
  """Validates the loop's config, creates the workdir and saves (or checks)
  its config; returns the absolute workdir.

  Args:
    config: the full, validated config.
    workdir: default `config.workdir`.
  """
  workdir = workdir or config.get('workdir')
  if not workdir:
    raise config_lib.ConfigError(
        'No workdir: pass --workdir=DIR (or set config.workdir).')
  validate_config(config)
  workdir = pathlib.Path(workdir).absolute()
  workdir.mkdir(parents=True, exist_ok=True)
  check_or_save_config(workdir, config)
  return workdir


def timed(timings: dict[str, float], name: str, fn: Callable[[], Any]) -> Any:
  """Returns `fn()`, recording its wall time in seconds as timings[name]."""
  stage_start = time.perf_counter()
  value = fn()
  timings[name] = round(time.perf_counter() - stage_start, 2)
  return value


def run_rounds(ctx: Context, timings: dict[str, float]) -> dict[str, Any]:
  """Round 0's evaluation, then every round not yet evaluated; returns the
  summary (written to ctx.workdir).

  Rounds already evaluated are only printed; the stages of an unfinished
  round skip their finished units. `timings` gets each stage's seconds.
  """
  config = ctx.config
  if (ctx.round_dir(0) / 'eval.json').exists():
    report = read_json(ctx.round_dir(0) / 'eval.json')
  else:
    params = timed(timings, 'round_0/warmup', lambda: params_of_round(ctx, 0))
    report = timed(timings, 'round_0/eval',
                   lambda: evaluate_round(ctx, 0, params))
  _print_round(report)
  for round_index in range(1, config.loop.num_rounds + 1):
    if (ctx.round_dir(round_index) / 'eval.json').exists():
      _print_round(read_json(ctx.round_dir(round_index) / 'eval.json'))
      continue
    previous = params_of_round(ctx, round_index - 1)
    think_records = timed(timings, f'round_{round_index}/think',
                          lambda: think(ctx, round_index, previous))
    prune_report = timed(
        timings, f'round_{round_index}/prune',
        lambda: prune_and_write(ctx, round_index, think_records))
    print(f'Round {round_index} prune: {prune_report["num_correct"]}/'
          f'{prune_report["num_traces"]} traces correct; kept '
          f'{prune_report["num_kept"]} ({prune_report["removed"]}).',
          flush=True)
    params = timed(timings, f'round_{round_index}/train',
                   lambda: train_round(ctx, round_index, prune_report))
    report = timed(timings, f'round_{round_index}/eval',
                   lambda: evaluate_round(ctx, round_index, params))
    _print_round(report)
  return write_summary(ctx)


def run(config: ml_collections.ConfigDict,
        workdir: str | os.PathLike[str] | None = None) -> dict[str, Any]:
  """Runs (or resumes) every round; returns the summary.

  Args:
    config: the full, validated config.
    workdir: default `config.workdir`.
  """
  workdir = prepare_workdir(config, workdir)
  start = time.perf_counter()
  ctx = setup(config, workdir)
  timings: dict[str, float] = {}
  summary = run_rounds(ctx, timings)
  timings['total'] = round(time.perf_counter() - start, 2)
  write_json(workdir / 'timings.json', timings)
  print('\n' + format_table(summary), flush=True)
  print(f'\nSummary: {workdir / SUMMARY_FILE}, plot: '
        f'{workdir / SUMMARY_PLOT}; this invocation took '
        f'{timings["total"]:.0f}s.', flush=True)
  return summary


def _print_round(report: dict[str, Any]) -> None:
  metrics = report['metrics']
  parts = [f'{name}={100 * value:.1f}%' for name, value in metrics.items()
           if name.startswith(('pass@', 'maj@'))]
  print(f'Round {report["round"]}: ' + ', '.join(parts), flush=True)
