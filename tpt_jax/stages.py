"""The stages of a run, as functions over one run context.

  setup            config -> `RunContext` (mesh, task problems, tokenizer,
                   model and starting params)
  think            params + problems -> `Sample`s (sampled and verified,
                   written shard by shard)
  prune_and_write  `Trace`s -> the kept ones as a TFDS dataset + prune.json
  fine_tune        datasets + params -> params (orbax checkpoints, resume),
                   and the loss on the round's held-out examples
  warm_up          the task's worked examples -> params (before round 0)
  evaluate         params -> Pass@1 / pass@k / maj@k on the test problems

Experiments (`tpt_jax.experiments.tpt`, `...sert`) compose these; they pass
directories and seeds in, so the same function serves a TPT round, SERT's
teacher and its distillation. Each stage obeys `tpt_jax.workdir`'s rule:
its units are written atomically and a finished unit is read, not redone.

Length: one seam, kept together on purpose: every stage function is short
(the longest, `think` and `evaluate`, about 60 lines each) and an
experiment reads as calls into this one module; splitting it per stage
would scatter the shared `RunContext` and the workdir rule they all obey.
"""

from __future__ import annotations

import dataclasses
import json
import os
import sys
import time
from typing import Any, Callable, Sequence

import jax
from jax.experimental import multihost_utils
from jax.sharding import Mesh
import ml_collections
import numpy as np
import tqdm

from tpt_jax import checkpoints
from tpt_jax import config_fields
from tpt_jax import engines
from tpt_jax import evaluate as evaluate_lib
from tpt_jax import models
from tpt_jax import prune
from tpt_jax import records
from tpt_jax import sampling
from tpt_jax import sharding as sharding_lib
from tpt_jax import tasks
from tpt_jax import tokenizer as tokenizer_lib
from tpt_jax import train as train_lib
from tpt_jax import workdir as workdir_lib
from tpt_jax.verify import parallel
from tpt_jax.types import Problem, Sample, Trace

Stage = workdir_lib.Stage
TOKENIZER_FILE = 'tokenizer.model'
PRUNE_REPORT_FILE = 'prune.json'
DATASET_DIR = 'dataset'
EVAL_FILE = 'eval.json'


# ----------------------------------------------------------------------------
# The run context.
# ----------------------------------------------------------------------------


@dataclasses.dataclass
class RunContext:
  """What every stage of a run shares. Built once by `setup`; experiments
  derive variants with `dataclasses.replace` (another workdir, config or
  model, e.g. SERT's teacher)."""
  config: ml_collections.ConfigDict
  workdir: workdir_lib.Path
  mesh: Mesh
  model: models.Model
  tokenizer: tokenizer_lib.Tokenizer
  task: tasks.Task
  train_problems: list[Problem]
  test_problems: list[Problem]
  exemplars: list[Problem]
  base_params: models.Params
  # Where Think and Evaluate sample (`config.mesh.sampling_shape`, else the
  # training mesh's shape): over all devices in one process; with several,
  # each process samples its own shards on its own devices (no collective
  # per decode step), while training uses the global `mesh`.
  sampling_mesh: Mesh | None = None
  engine: sampling.Engine | None = None

  def round_dir(self, round_index: int) -> workdir_lib.Path:
    return self.workdir / f'round_{round_index}'

  def prompt(self, problem: Problem) -> str:
    return self.task.format_prompt(problem, self.config.task.prompt_style,
                                   self.exemplars,
                                   instruction=tasks.instruction(
                                       self.config.task))

  def engine_for(self, params: models.Params) -> sampling.Engine:
    """The sampling engine for `params`, reusing every program compiled so
    far (the engine is kept on the context)."""
    if jax.process_count() > 1:
      # Global arrays -> each host's full copy (placed on its own devices
      # by the engine).
      params = jax.tree.map(
          lambda x: multihost_utils.process_allgather(x, tiled=True), params)
    if self.engine is None:
      self.engine = engines.make_sampler(
          self.config.sampling, self.model, params, tokenizer=self.tokenizer,
          mesh=self.sampling_mesh or self.mesh)
    else:
      self.engine = self.engine.with_params(params)
    return self.engine


def build_tokenizer(config: ml_collections.ConfigDict,
                    workdir: workdir_lib.Path,
                    task: tasks.Task) -> tokenizer_lib.Tokenizer:
  """The configured tokenizer; for toy models without one, a sentencepiece
  model trained on the task's corpus (once, saved in the workdir)."""
  if config.tokenizer.path:
    return tokenizer_lib.load_tokenizer(config.tokenizer.path)
  if config.model.variant not in models.TOY_VARIANTS:
    try:
      return tokenizer_lib.tokenizer_from_config(
          config.tokenizer, checkpoint_path=config.checkpoint.path)
    except ValueError as e:
      raise config_fields.ConfigError(str(e)) from e
  path = workdir / TOKENIZER_FILE
  if not path.exists():
    if workdir_lib.is_writer():
      vocab_size = config.model.vocab_size or models.DEFAULT_TOY_VOCAB_SIZE
      print(f'Building a {vocab_size}-piece sentencepiece tokenizer from the '
            f'{task.name} corpus: {path}', flush=True)
      tokenizer_lib.train_sentencepiece(
          task.corpus(config.task), os.fspath(path), vocab_size=vocab_size)
    workdir_lib.barrier(f'{path}:built')
  return tokenizer_lib.load_tokenizer(os.fspath(path))


def setup(config: ml_collections.ConfigDict,
          workdir: workdir_lib.Path) -> RunContext:
  """Mesh, task problems, tokenizer, model and starting params.

  `jax.distributed` must be initialised before (`tpt_jax.main` does).
  """
  try:
    mesh = sharding_lib.make_mesh(config.mesh)
    train_lib.validate_config(config, sharding_lib.num_batch_devices(mesh))
  except config_fields.ConfigError:
    raise
  except ValueError as e:
    raise config_fields.ConfigError(str(e)) from e
  task = tasks.get_task(config.task.name)
  train_problems = task.load_problems('train', config.task)
  test_problems = tasks.select_test_subset(
      task.load_problems('test', config.task), config.task)
  exemplars, train_problems = tasks.select_exemplars(
      train_problems, config.task.num_few_shot)
  if config.loop.max_train_problems:
    train_problems = train_problems[:config.loop.max_train_problems]
  if config.loop.max_test_problems:
    test_problems = test_problems[:config.loop.max_test_problems]
  for split, problems in (('train', train_problems), ('test', test_problems)):
    if not problems:
      raise config_fields.ConfigError(
          f'Task {task.name!r} has no {split} problems (config.task: '
          f'{task.name} data, config.task.num_few_shot, config.loop caps); a '
          'run needs both splits.')
  tokenizer = build_tokenizer(config, workdir, task)
  if (config.model.variant in models.TOY_VARIANTS and
      tokenizer.vocab_size > (config.model.vocab_size or
                                models.DEFAULT_TOY_VOCAB_SIZE)):
    raise config_fields.ConfigError(
        f'The tokenizer has {tokenizer.vocab_size} pieces, more than '
        f'config.model.vocab_size={config.model.vocab_size}.')
  model, base_params = checkpoints.model_and_params(config, mesh)
  print(f'Task {task.name}: {len(train_problems)} train problems, '
        f'{len(test_problems)} test problems, {len(exemplars)} exemplars. '
        f'Model: {models.count_params(base_params) / 1e6:.2f}M params on mesh '
        f'{dict(mesh.shape)}.', flush=True)
  if jax.process_count() > 1 or config.mesh.get('sampling_shape'):
    sampling_mesh = sharding_lib.make_sampling_mesh(
        config.mesh, local=jax.process_count() > 1)
  else:
    sampling_mesh = mesh
  return RunContext(config=config, workdir=workdir, mesh=mesh, model=model,
                    tokenizer=tokenizer, task=task,
                    train_problems=train_problems,
                    test_problems=test_problems, exemplars=exemplars,
                    base_params=base_params, sampling_mesh=sampling_mesh)


# ----------------------------------------------------------------------------
# Think: sharded, resumable sampling + verification.
# ----------------------------------------------------------------------------


def sampling_settings(sampling_config: ml_collections.ConfigDict, seed: int
                      ) -> sampling.SamplingSettings:
  """Sampling settings from `config.sampling`, with their own seed."""
  return sampling.SamplingSettings.from_config(sampling_config, seed=seed)


def problems_per_shard(config: ml_collections.ConfigDict,
                       num_samples: int) -> int:
  """Problems per think/eval shard (the unit of resume): 4 batches of rows
  for the static engine; 16 slot-pools for the continuous one, whose slots
  stay full only while rows wait."""
  if config.loop.problems_per_shard:
    return config.loop.problems_per_shard
  pools = 16 if config.sampling.engine == 'continuous' else 4
  return max(1, pools * config.sampling.batch_size // num_samples)


def think(ctx: RunContext, params: models.Params,
          problems: Sequence[Problem], settings: sampling.SamplingSettings,
          directory: workdir_lib.Path, *, crash_prefix: str,
          description: str) -> list[Sample]:
  """Samples and verifies `problems`, one shard of problems at a time.

  A shard (`directory/shard_<k>.json`) holds every sample of a fixed slice of
  `problems` with its verdict; shards already written are read, not redone.
  With several processes, process p samples and verifies the shards k with
  k % num_processes == p on its own devices and writes them; after a barrier
  every process reads them all.

  Returns:
    One `Sample` per (problem, sample), in problem then sample order.
  """
  directory.mkdir(parents=True, exist_ok=True)
  if ctx.model.family != 'gemma2':
    # Gemma2's end ids (1, 107) are ordinary tokens in other vocabularies.
    settings = dataclasses.replace(
        settings, eos_token_ids=tokenizer_lib.eos_token_ids(ctx.tokenizer))
  per_shard = problems_per_shard(ctx.config, settings.num_samples_per_problem)
  slices = [list(problems[start:start + per_shard])
            for start in range(0, len(problems), per_shard)]
  own = [index for index in range(len(slices)) if workdir_lib.owns(index)]
  show_progress = (bool(ctx.config.sampling.show_progress) and
                   workdir_lib.is_writer())
  bar = tqdm.tqdm(total=sum(len(slices[i]) for i in own), desc=description,
                  unit='problem', file=sys.stderr, disable=not show_progress)
  # Every process sees the same shards here (the stage before ended at a
  # barrier), and handing params to the engine is a collective with several
  # processes: all build it, or none.
  engine = None
  if not all(workdir_lib.shard_path(directory, index).exists()
             for index in range(len(slices))):
    engine = ctx.engine_for(params)
  generated_tokens = 0
  start_time = time.perf_counter()
  for index in own:
    shard_problems = slices[index]
    path = workdir_lib.shard_path(directory, index)
    if not path.exists():
      results = engine.sample_all(
          [ctx.prompt(p) for p in shard_problems], settings,
          problem_ids=[p.problem_id for p in shard_problems],
          chat_template=ctx.config.tokenizer.chat_template,
          show_progress=False)
      verdicts = verify_completions(
          ctx, [r.text for r in results],
          [shard_problems[r.problem_index] for r in results])
      shard = [
          Sample(problem_id=result.problem_id,
                 sample_index=result.sample_index,
                 completion=result.text,
                 num_tokens=result.num_generated_tokens,
                 finish_reason=result.finish_reason,
                 logprob_sum=float(result.logprob_sum),
                 correct=bool(correct),
                 extracted_answer=extracted)
          for result, (correct, extracted) in zip(results, verdicts)]
      generated_tokens += sum(s.num_tokens for s in shard)
      workdir_lib.write_json(path, {'records': [s.to_json() for s in shard]},
                             every_process=True)
      workdir_lib.maybe_crash(f'{crash_prefix}:{index}')
    bar.update(len(shard_problems))
    elapsed = time.perf_counter() - start_time
    if generated_tokens:
      bar.set_postfix(tokens_per_s=f'{generated_tokens / elapsed:.0f}')
  bar.close()
  workdir_lib.barrier(f'{directory}:shards')
  samples: list[Sample] = []
  for index in range(len(slices)):
    samples.extend(Sample.from_json(r) for r in workdir_lib.read_json(
        workdir_lib.shard_path(directory, index))['records'])
  return samples


def verify_completions(ctx: RunContext, completions: Sequence[str],
                       problems: Sequence[Problem], *,
                       grader: str | None = None
                       ) -> list[tuple[bool, str | None]]:
  """(correct, extracted answer) of each completion, by `grader` (default
  `config.verify.grader`).

  Tasks with a picklable `verifier` (GSM8K) verify in worker processes with
  a hard limit per completion (`config.verify.timeout_s`): one pathological
  completion is judged wrong after the limit instead of stalling the stage.
  """
  verify_config = ctx.config.verify
  if grader is not None and grader != verify_config.grader:
    verify_config = ml_collections.ConfigDict(verify_config.to_dict())
    verify_config.grader = grader
  verifier = getattr(ctx.task, 'verifier', None)
  if verifier is not None and verify_config.timeout_s > 0 and completions:
    verdicts = parallel.verify_in_workers(
        verifier(verify_config), list(zip(completions, problems)),
        timeout_s=float(verify_config.timeout_s),
        num_workers=int(verify_config.num_workers))
    return [(bool(v.correct), v.extracted) for v in verdicts]
  if grader is not None and grader != ctx.config.verify.grader:
    names = getattr(ctx.task, 'grader_names', ('default',))
    if grader not in names:
      raise config_fields.ConfigError(
          f'Task {ctx.task.name!r} has no grader {grader!r}; its graders: '
          f'{", ".join(names)}.')
  return tasks.verify_all(ctx.task, completions, problems, verify_config)


def verify_samples(ctx: RunContext, completions: Sequence[dict[str, Any]]
                   ) -> list[Sample]:
  """`Sample`s of completions that were not sampled here (e.g. a teacher's
  file): each `{'problem_id', 'sample_index', 'completion',
  'finish_reason'}` verified with the task's verifier, tokens counted."""
  problems = {p.problem_id: p for p in ctx.train_problems}
  verdicts = verify_completions(
      ctx, [c['completion'] for c in completions],
      [problems[c['problem_id']] for c in completions])
  return [Sample(problem_id=c['problem_id'], sample_index=c['sample_index'],
                 completion=c['completion'],
                 num_tokens=len(ctx.tokenizer.encode(c['completion'])),
                 finish_reason=c['finish_reason'], logprob_sum=0.0,
                 correct=bool(correct), extracted_answer=extracted)
          for c, (correct, extracted) in zip(completions, verdicts)]


def traces_of(ctx: RunContext, samples: Sequence[Sample], *,
              round_index: int, settings: sampling.SamplingSettings,
              checkpoint_id: str) -> list[Trace]:
  """The training traces of `samples` of the train problems, with the
  prompts `ctx` gives them."""
  problems = {p.problem_id: p for p in ctx.train_problems}
  settings_text = json.dumps(
      {k: v for k, v in dataclasses.asdict(settings).items()
       if k not in sampling.CONTINUOUS_ONLY_FIELDS}, sort_keys=True)
  return [Trace.from_sample(sample, problems[sample.problem_id],
                            prompt=ctx.prompt(problems[sample.problem_id]),
                            round_index=round_index,
                            sampler_settings=settings_text,
                            checkpoint_id=checkpoint_id)
          for sample in samples]


# ----------------------------------------------------------------------------
# Prune + records.
# ----------------------------------------------------------------------------


def prune_done(round_dir: workdir_lib.Path) -> bool:
  """Whether `prune_and_write` finished in `round_dir` (a dataset was
  committed, or nothing was kept)."""
  report = round_dir / PRUNE_REPORT_FILE
  return report.exists() and (
      records.is_round_dataset(round_dir / DATASET_DIR) or
      workdir_lib.read_json(report)['num_kept'] == 0)


def prune_and_write(ctx: RunContext, round_dir: workdir_lib.Path,
                    traces: Sequence[Trace], *, round_index: int,
                    cap_seed: int, heldout_seed: int,
                    crash_point: str) -> dict[str, Any]:
  """Prunes `traces` with `ctx.config.prune`, caps them at
  `config.loop.max_train_examples_per_round` (a draw seeded by `cap_seed`),
  sets aside `config.prune.num_heldout_examples` of the other survivors (a
  draw seeded by `heldout_seed`; `prune.draw_examples`), and writes the
  dataset to `round_dir/dataset`: the training split, and the held-out one
  when there is one.

  Returns:
    The prune report (also in `round_dir/prune.json`): `num_kept` counts the
    training examples, `num_heldout` (when held-out examples are asked for)
    the held-out ones, `removed_by_cap` the survivors in neither.
  """
  report_path = round_dir / PRUNE_REPORT_FILE
  if prune_done(round_dir):
    return workdir_lib.read_json(report_path)
  result = prune.build_pipeline(ctx.config.prune)(traces)
  num_heldout = int(ctx.config.prune.num_heldout_examples)
  draw = prune.draw_examples(
      len(result.kept), cap=ctx.config.loop.max_train_examples_per_round,
      num_heldout=num_heldout, cap_seed=cap_seed, heldout_seed=heldout_seed)
  kept = [result.kept[i] for i in draw.train]
  heldout = [result.kept[i] for i in draw.heldout]
  capped = draw.num_dropped(len(result.kept))
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
  if num_heldout:
    report['num_heldout'] = len(heldout)
  verdict_names = getattr(ctx.task, 'verdicts', ())
  if verdict_names:
    # Code judged on tests: how many traces got each verdict.
    report['verdicts'] = {name: sum(t.extracted_answer == name
                                    for t in traces)
                          for name in verdict_names}
  # Staging directories of a write that was killed are never read.
  workdir_lib.clear_staging(round_dir, f'.{DATASET_DIR}.tmp-*')
  if kept and workdir_lib.is_writer():
    records.write_round(
        kept, os.fspath(round_dir / DATASET_DIR), round_index=round_index,
        checkpoint_id=f'round_{round_index - 1}',
        extra_splits={records.HELDOUT_SPLIT: heldout}, overwrite=True,
        before_commit=lambda: workdir_lib.maybe_crash(crash_point))
  workdir_lib.write_json(report_path, report)
  workdir_lib.barrier(f'{report_path}:written')
  return report


def print_prune_report(label: str, report: dict[str, Any]) -> None:
  print(f'{label} prune: {report["num_correct"]}/{report["num_traces"]} '
        f'traces correct; kept {report["num_kept"]} ({report["removed"]}).',
        flush=True)


# ----------------------------------------------------------------------------
# Train.
# ----------------------------------------------------------------------------


def trained_params(ctx: RunContext, directory: workdir_lib.Path
                   ) -> models.Params | None:
  """The final params of a finished `fine_tune` in `directory`, else None.

  The params' files are checked against the digest saved with them: when
  one is damaged, the run says which, drops the final params and trains
  again from the newest intact checkpoint (None is returned).
  """
  done_path = directory / workdir_lib.DONE_FILE
  if not done_path.exists():
    return None
  params_dir = directory / train_lib.FINAL_PARAMS_DIR
  expected = workdir_lib.read_json(done_path).get('params_sha256')
  damaged = (workdir_lib.damaged_files(params_dir, expected)
             if expected is not None else [])
  if damaged:
    print(f'Damaged params (checksum mismatch): {", ".join(damaged)}; '
          f'training {directory} again from its newest intact checkpoint.',
          flush=True)
    workdir_lib.barrier(f'{done_path}:checked')
    if workdir_lib.is_writer():
      done_path.unlink()
      params_dir.rmtree(missing_ok=True)
    workdir_lib.barrier(f'{done_path}:dropped')
    return None
  return checkpoints.load_params(os.fspath(params_dir), ctx.model, ctx.mesh)


def fine_tune(ctx: RunContext, directory: workdir_lib.Path,
              sources: Sequence[Any], init_params: models.Params, *,
              seed: int, crash_prefix: str, heldout: Any = None,
              **train_overrides: Any) -> models.Params:
  """SFT of `init_params` on `sources` (round datasets or lists of
  {'prompt', 'completion'}), resuming from `directory`'s checkpoints, unless
  done; returns the final params.

  `heldout`: a round dataset whose 'heldout' split is evaluated at the end
  (its mean per-token loss goes to `directory/done.json` as `heldout_loss`;
  see `heldout_loss`). `train_overrides` replace `config.train` fields (e.g.
  the warm-up's epochs).
  """
  done = trained_params(ctx, directory)
  if done is not None:
    return done

  def on_step(step: int, metrics: dict[str, float]) -> None:
    del metrics
    workdir_lib.maybe_crash(f'{crash_prefix}:{step}')

  train_config = ml_collections.ConfigDict(ctx.config.to_dict())
  train_config.seed = seed
  for name, value in train_overrides.items():
    train_config.train[name] = value
  result = train_lib.train(
      train_config, sources, tokenizer=ctx.tokenizer,
      workdir=os.fspath(directory), init_params=init_params, mesh=ctx.mesh,
      step_callback=on_step, model=ctx.model, heldout_source=heldout,
      heldout_split=records.HELDOUT_SPLIT)
  final_metrics = result.history[-1][1] if result.history else {}
  done = {
      'num_steps': result.num_steps,
      'final_loss': final_metrics.get('loss'),
      'final_token_accuracy': final_metrics.get('token_accuracy'),
      'params_sha256': workdir_lib.directory_digest(
          directory / train_lib.FINAL_PARAMS_DIR),
  }
  if heldout is not None:
    done['heldout_loss'] = result.heldout_loss
  workdir_lib.write_json(directory / workdir_lib.DONE_FILE, done)
  workdir_lib.barrier(f'{directory}:done')
  return result.params


def heldout_dataset(round_dir: workdir_lib.Path,
                    prune_report: dict[str, Any]) -> str | None:
  """The round dataset to evaluate the held-out loss on, when its prune
  report says examples were held out (else None)."""
  if not prune_report.get('num_heldout'):
    return None
  return os.fspath(round_dir / DATASET_DIR)


def heldout_loss(directory: workdir_lib.Path) -> dict[str, float]:
  """`{'heldout_loss': loss}` of the finished fine-tune in `directory`
  (from its done.json), or {} when it has none: the round metric."""
  done_path = directory / workdir_lib.DONE_FILE
  if not done_path.exists():
    return {}
  loss = workdir_lib.read_json(done_path).get('heldout_loss')
  return {} if loss is None else {'heldout_loss': float(loss)}


def warmup_config() -> ml_collections.ConfigDict:
  """A warm-up section (`config.loop.warmup`, `config.sert.teacher.warmup`):
  a fine-tune on the task's worked train solutions before round 0."""
  c = ml_collections.ConfigDict()
  # 0 examples = no warm-up. Its train settings are config.train's, with
  # these epochs and learning rate.
  c.num_examples = 0
  c.num_epochs = 1.0
  c.learning_rate = 0.0  # 0: config.train.learning_rate.
  return c


def validate_warmup(warmup: ml_collections.ConfigDict, name: str) -> None:
  """Raises ConfigError naming the first field of `config.<name>` not
  allowed."""
  if warmup.num_examples < 0:
    raise config_fields.ConfigError(
        f'config.{name}.num_examples={warmup.num_examples} must not be '
        'negative.')
  if warmup.num_examples and not warmup.num_epochs > 0:
    raise config_fields.ConfigError(
        f'config.{name}.num_epochs={warmup.num_epochs} must be > 0.')


def warm_up(ctx: RunContext, directory: workdir_lib.Path,
            warmup: ml_collections.ConfigDict, *, crash_prefix: str
            ) -> models.Params:
  """A short fine-tune of the starting params on worked train solutions
  (the demo's weak but not zero start); returns the params."""
  examples = ctx.task.warmup_examples(
      warmup.num_examples,
      workdir_lib.derived_seed(ctx.config.task.seed, 0, Stage.WARMUP),
      ctx.config.task, style=ctx.config.task.prompt_style,
      exemplars=ctx.exemplars)
  if trained_params(ctx, directory) is None:
    print(f'Warm-up: fine-tuning on {len(examples)} worked solutions.',
          flush=True)
  overrides = {'num_epochs': float(warmup.num_epochs), 'num_steps': 0}
  if warmup.learning_rate:
    overrides['learning_rate'] = float(warmup.learning_rate)
  return fine_tune(
      ctx, directory, [[{'prompt': p, 'completion': c} for p, c in examples]],
      ctx.base_params,
      seed=workdir_lib.derived_seed(ctx.config.seed, 0, Stage.WARMUP),
      crash_prefix=crash_prefix, **overrides)


# ----------------------------------------------------------------------------
# Evaluate.
# ----------------------------------------------------------------------------


def _safe_normalizer(task: tasks.Task) -> Callable[[str], str | None]:
  def normalize(answer: str) -> str | None:
    try:
      return task.normalize_answer(answer)
    except ValueError:
      return None
  return normalize


def evaluate(ctx: RunContext, params: models.Params,
             round_dir: workdir_lib.Path, *, round_index: int,
             extra_metrics: dict[str, float] | None = None
             ) -> dict[str, Any]:
  """Greedy Pass@1 (and pass@k / maj@k from samples) on the test problems.

  Writes `round_dir/eval/` (the completions, shard by shard),
  `round_dir/eval.json` and TensorBoard scalars at step `round_index` in
  `ctx.workdir/tensorboard`; a finished evaluation is read, not redone.
  `extra_metrics` (e.g. the round's `heldout_loss`) join the metrics.
  Crash points (tests): 'eval:<round>:<shard>', 'eval_sampled:<round>:<shard>'.
  """
  eval_path = round_dir / EVAL_FILE
  if eval_path.exists():
    return workdir_lib.read_json(eval_path)
  config = ctx.config
  eval_config = config.eval
  think_settings = sampling_settings(
      config.sampling,
      workdir_lib.derived_seed(config.seed, round_index, Stage.THINK))
  greedy = dataclasses.replace(
      think_settings, num_samples_per_problem=1, temperature=0.0, top_k=0,
      top_p=1.0,
      max_new_tokens=eval_config.max_new_tokens or think_settings.max_new_tokens,
      seed=workdir_lib.derived_seed(config.seed, round_index,
                                    Stage.EVAL_GREEDY))
  eval_dir = round_dir / 'eval'
  greedy_samples = think(
      ctx, params, ctx.test_problems, greedy, eval_dir / 'greedy',
      crash_prefix=f'eval:{round_index}',
      description=f'round {round_index} eval')
  sampled_samples: list[Sample] = []
  if eval_config.num_samples:
    sampled = dataclasses.replace(
        greedy, num_samples_per_problem=eval_config.num_samples,
        temperature=float(eval_config.temperature),
        seed=workdir_lib.derived_seed(config.seed, round_index,
                                      Stage.EVAL_SAMPLED))
    sampled_samples = think(
        ctx, params, ctx.test_problems, sampled, eval_dir / 'sampled',
        crash_prefix=f'eval_sampled:{round_index}',
        description=f'round {round_index} eval samples')
  metrics = _metrics(ctx, greedy_samples, sampled_samples)
  for grader in eval_config.graders:
    graded = [_regraded(ctx, samples, grader)
              for samples in (greedy_samples, sampled_samples)]
    metrics.update({f'{name}/{grader}': value for name, value in
                    _metrics(ctx, *graded).items() if name != 'num_problems'})
  metrics['mean_completion_tokens'] = float(np.mean(
      [s.num_tokens for s in greedy_samples]))
  metrics.update(extra_metrics or {})
  report = {'round': round_index, 'metrics': metrics}
  _write_tensorboard(ctx.workdir, round_index, metrics)
  workdir_lib.write_json(eval_path, report)
  workdir_lib.barrier(f'{eval_path}:written')
  return report


def _regraded(ctx: RunContext, samples: Sequence[Sample], grader: str
              ) -> list[Sample]:
  """`samples` with the verdicts of `grader` (the same when it is the one
  they were verified by)."""
  if grader == ctx.config.verify.grader or not samples:
    return list(samples)
  problems = {p.problem_id: p for p in ctx.test_problems}
  verdicts = verify_completions(
      ctx, [s.completion for s in samples],
      [problems[s.problem_id] for s in samples], grader=grader)
  return [dataclasses.replace(s, correct=bool(c), extracted_answer=a)
          for s, (c, a) in zip(samples, verdicts)]


def _metrics(ctx: RunContext, greedy_samples: Sequence[Sample],
             sampled_samples: Sequence[Sample]) -> dict[str, Any]:
  """Pass@1 (greedy), and pass@k / maj@k from the sampled ones."""
  eval_config = ctx.config.eval
  by_problem: dict[str, list[Sample]] = {}
  for sample in sampled_samples:
    by_problem.setdefault(sample.problem_id, []).append(sample)
  greedy_by_problem = {s.problem_id: s for s in greedy_samples}
  problem_records = [
      evaluate_lib.ProblemRecord(
          problem_id=p.problem_id,
          greedy_correct=greedy_by_problem[p.problem_id].correct,
          sample_correct=[s.correct for s in by_problem.get(p.problem_id, [])],
          sample_answers=[s.extracted_answer
                          for s in by_problem.get(p.problem_id, [])],
          reference=p.answer)
      for p in ctx.test_problems]
  ks = tuple(eval_config.ks) if eval_config.num_samples else ()
  maj_ks = ks if ctx.task.majority_vote else ()
  result = evaluate_lib.evaluate_records(
      problem_records, ks, normalize=_safe_normalizer(ctx.task))
  metrics = result.to_dict()
  if not maj_ks:
    metrics = {k: v for k, v in metrics.items() if not k.startswith('maj@')}
  return metrics


def _write_tensorboard(directory: workdir_lib.Path, step: int,
                       metrics: dict[str, float]) -> None:
  if not workdir_lib.is_writer():
    return
  from flax.metrics import tensorboard  # pylint: disable=g-import-not-at-top
  writer = tensorboard.SummaryWriter(os.fspath(directory / 'tensorboard'))
  for name, value in metrics.items():
    writer.scalar(f'eval/{name}', value, step)
  writer.flush()
  writer.close()
