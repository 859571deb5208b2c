r"""Plan before you book: compile a config's programs for a TPU slice from a CPU host.

  python -m tpt_jax.plan --config=configs/gemma2_9b.py --topology=v5e-16 \
      [--config.train.batch_size=32 ...] [--programs=train,think,eval]

Builds the programs a run of the config executes, in the shardings it uses,
from abstract inputs (`jax.ShapeDtypeStruct`s: nothing is allocated):

  train_step          `train.make_trainer`'s step (optimizer state, LoRA,
                      remat, gradient accumulation as configured), one batch
                      of `train.batch_size` x `train.max_seq_len`.
  think_prefill/decode  the sampler's programs for one batch of
                      `sampling.batch_size` rows whose prompts fill the
                      largest prompt bucket, decoding `max_new_tokens`.
  eval_prefill/decode   the same for the Evaluate stage (greedy; its sampled
                      pass@k programs when they differ from Think's).
  *_decode_step       one decode step over the full cache (for the step
                      time: XLA's cost analysis counts a loop body once, so
                      the decode loop's own figures are per iteration).

Each is compiled for the slice by libtpu's ahead-of-time compiler
(`tpt_jax.topologies`) and reported per chip: argument bytes (params,
optimizer state, KV cache), temporaries, total vs the chip's HBM; FLOPs and
bytes accessed; an estimated step time (XLA's `optimal_seconds` when it is
positive, else the roofline max(FLOPs / peak, bytes / HBM bandwidth), and
the printout says which); the fraction of peak that implies (train: MFU from
model FLOPs; decode: the share of the HBM roofline, i.e. time to read the
step's arguments once / the estimate). A round's wall time is then
estimated from the config and the assumptions printed with it.

XLA's `bytes accessed` also counts the copies the compiler makes into the
chip's on-core memory (a lone decode matmul counts its weight 5 times), so
each program also gets the HBM traffic of its compiled buffers
(`tpt_jax.hlo_traffic`), a roofline time from that (a lower bound: no
latency, no overlap losses), the fractions of peak both ways, and a second
round estimate from those times. The first estimate is the pessimistic one.

Exit status: 0 when every program fits; 3 when one does not (arguments alone
over HBM are caught before compiling; the compiler's RESOURCE_EXHAUSTED
counts too), naming the program, the chip's capacity, the overflow and what
to change; 2 for an unknown slice (the known ones are listed) or a missing
libtpu (`pip install -e '.[tpu]'`).

Length: one report built from several program builders (train, think,
eval), the compiler's memory and cost analyses, their parsing (including
RESOURCE_EXHAUSTED messages) and the round estimate; the slice table lives
apart in `topologies`.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import os
import re
import sys
import time
from typing import Any, Callable, Sequence, TextIO

import jax
import jax.numpy as jnp
from jax.sharding import Mesh
import ml_collections

from tpt_jax import decode_models
from tpt_jax import hlo_traffic
from tpt_jax import models
from tpt_jax import sampling
from tpt_jax import sampling_continuous
from tpt_jax import sampling_utils
from tpt_jax import sharding as sharding_lib
from tpt_jax import topologies
from tpt_jax import train

GIB = topologies.GIB
EXIT_FITS = 0
EXIT_BAD_INPUT = 2
EXIT_DOES_NOT_FIT = 3
PROGRAM_GROUPS = ('train', 'think', 'eval')

# Problems per split of the tasks with a fixed dataset (train, test).
KNOWN_TASK_SIZES = {'gsm8k': (7473, 1319), 'mbpp': (374, 500)}

_ADVICE = {
    'train': ('shard wider (config.mesh.shape, e.g. more fsdp or tensor, or a '
              'larger slice), fewer rows per micro-batch '
              '(config.train.grad_accum_steps or batch_size), '
              "config.train.remat_policy='full', LoRA (config.train.lora_rank"
              "), config.train.optimizer='adafactor' or "
              'config.train.f32_master_weights=False'),
    'sample': ('fewer rows (config.sampling.batch_size), a shorter cache '
               '(cap config.sampling.prompt_length_buckets at the longest '
               'prompt, or max_new_tokens), or shard kv heads over '
               "config.mesh.sampling_shape's tensor axis"),
}


@dataclasses.dataclass(frozen=True)
class Assumptions:
  """What the round-time estimate assumes beyond the config.

  Attributes:
    prompt_tokens: tokens of a prompt (GSM8K 4-shot: the 4 fixed solved
      exemplars, 1,610 characters, and a question of 235 on average, at
      ~3.8 characters per Gemma2 token).
    completion_tokens: mean tokens of a kept completion, for training
      (gemma-2-2b-it on GSM8K: mean 183, `../shared/data/gsm8k`).
    decode_steps: decode steps per sampling batch; 0: max_new_tokens (the
      static sampler runs a batch until its longest row stops, and among
      hundreds of rows one reaches the cap).
    keep_fraction: share of the samples that pruning keeps for training.
    slot_utilization: continuous engine: share of slot-steps that make a
      token of a row (0.92 measured by `scripts/bench_sampler.py
      --workload=real_lengths`); its decode steps are rows x
      `completion_tokens` / (slots x this).
    prompt_bucket: prompt bucket the sampling programs are compiled for;
      0: the largest configured one (the worst case a batch can hit).
  """
  prompt_tokens: int = 485
  completion_tokens: int = 183
  decode_steps: int = 0
  keep_fraction: float = 0.5
  slot_utilization: float = 0.9
  prompt_bucket: int = 0


@dataclasses.dataclass(frozen=True)
class Program:
  """A program to compile: the jitted function, its abstract arguments.

  Attributes:
    name: e.g. 'train_step'.
    kind: 'train', 'prefill', 'decode' or 'decode_step'.
    fn: the jitted function.
    args: its arguments, sharded `jax.ShapeDtypeStruct`s.
    arg_groups: named parts of `args` to report bytes of (e.g. params).
    model_flops: model FLOPs of one call over all chips (train: 6N-style;
      0 when not used).
    cost_multiplier: how many times XLA's cost analysis undercounts (loop
      bodies are counted once: the micro-batch scan of gradient
      accumulation).
    notes: lines printed with the program's report.
  """
  name: str
  kind: str
  fn: Callable[..., Any]
  args: tuple[Any, ...]
  arg_groups: dict[str, Any]
  model_flops: float = 0.0
  cost_multiplier: int = 1
  notes: tuple[str, ...] = ()


@dataclasses.dataclass(frozen=True)
class ProgramReport:
  """A compiled program's per-chip memory and cost on one slice.

  Attributes:
    name, kind: as in `Program`.
    group_bytes: per-chip bytes of each named argument group.
    argument_bytes, output_bytes, alias_bytes, temp_bytes, code_bytes: from
      XLA's memory analysis (arguments from the shardings when not
      compiled).
    total_bytes: what the program holds at its peak, per chip: arguments +
      outputs - donated (aliased) + temporaries + code.
    hbm_bytes: the chip's HBM usable by a program (`ChipSpec`).
    compiled: False when the arguments alone exceed HBM (not compiled).
    error: the compiler's RESOURCE_EXHAUSTED message, if any.
    flops, bytes_accessed: per chip and call (scaled by cost_multiplier).
    xla_seconds: XLA's `optimal_seconds` (None when absent).
    seconds: the estimated time of one call.
    seconds_source: which estimate `seconds` is.
    peak_fraction: train MFU, or a decode step's HBM-roofline share.
    hbm_traffic_bytes: per chip and call, what the compiled program moves
      to and from HBM by its buffers' placement (`hlo_traffic`); unlike
      XLA's `bytes accessed` it leaves out traffic to on-chip memory.
    buffer_seconds, buffer_peak_fraction: `seconds` and `peak_fraction`
      with the roofline's bytes taken from `hbm_traffic_bytes` instead.
    hbm_traffic_loops_counted_once: loops of unknown trip count in the
      program, counted once (then the traffic is a lower bound).
    compile_seconds: wall time of lowering + compiling here.
    notes: the program's notes.
  """
  name: str
  kind: str
  group_bytes: dict[str, int]
  argument_bytes: int
  output_bytes: int
  alias_bytes: int
  temp_bytes: int
  code_bytes: int
  hbm_bytes: int
  compiled: bool
  error: str | None = None
  flops: float = 0.0
  bytes_accessed: float = 0.0
  xla_seconds: float | None = None
  seconds: float = 0.0
  seconds_source: str = ''
  peak_fraction: float | None = None
  hbm_traffic_bytes: float = 0.0
  buffer_seconds: float = 0.0
  buffer_peak_fraction: float | None = None
  hbm_traffic_loops_counted_once: int = 0
  compile_seconds: float = 0.0
  notes: tuple[str, ...] = ()

  @property
  def total_bytes(self) -> int:
    return (self.argument_bytes + self.output_bytes - self.alias_bytes +
            self.temp_bytes + self.code_bytes)

  @property
  def fits(self) -> bool:
    return self.error is None and self.total_bytes <= self.hbm_bytes


@dataclasses.dataclass(frozen=True)
class RoundEstimate:
  """One round's estimated wall time and what it assumed (lines)."""
  think_seconds: float
  train_seconds: float
  eval_seconds: float
  assumptions: tuple[str, ...]

  @property
  def total_seconds(self) -> float:
    return self.think_seconds + self.train_seconds + self.eval_seconds


@dataclasses.dataclass(frozen=True)
class Plan:
  """Reports for every program of a config on a slice, and a round's time."""
  topology: topologies.Topology
  mesh_shape: dict[str, int]
  sampling_mesh_shape: dict[str, int]
  reports: tuple[ProgramReport, ...]
  round_estimate: RoundEstimate | None
  # The same, from each program's `buffer_seconds`.
  buffer_round_estimate: RoundEstimate | None = None

  @property
  def fits(self) -> bool:
    return all(r.fits for r in self.reports)


# --- sizes --------------------------------------------------------------------


def _leaf_bytes_per_chip(x: jax.ShapeDtypeStruct) -> int:
  """Bytes one chip holds of a sharded abstract array."""
  shape = x.sharding.shard_shape(x.shape) if x.sharding is not None else (
      x.shape)
  if jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key):
    itemsize = jax.random.key_data(jax.random.key(0, impl=x.dtype._impl)  # pylint: disable=protected-access
                                   ).nbytes
  else:
    itemsize = jnp.dtype(x.dtype).itemsize
  return math.prod(shape) * itemsize


def bytes_per_chip(tree: Any) -> int:
  """Bytes one chip holds of a tree of sharded `jax.ShapeDtypeStruct`s (the
  largest shard: uneven splits are padded)."""
  return sum(_leaf_bytes_per_chip(x) for x in jax.tree.leaves(tree))


# --- programs -----------------------------------------------------------------


def train_program(config: ml_collections.ConfigDict, mesh: Mesh) -> Program:
  """The train step exactly as `train.train` jits it."""
  trainer = train.make_trainer(config, num_steps=max(
      int(config.train.num_steps), 1), mesh=mesh)
  state, batch, frozen = trainer.abstract_step_args()
  train_config = config.train
  num_params = models.count_params(trainer.base_model.abstract_params())
  tokens = train_config.batch_size * train_config.max_seq_len
  model_flops = tokens * train.model_flops_per_token(
      trainer.base_model.config, num_params, train_config.max_seq_len,
      trained_fraction=0.0 if trainer.is_lora else 1.0)
  batch_devices = math.prod(
      mesh.shape[a] for a in sharding_lib.LOGICAL_AXIS_RULES['batch'])
  rows_per_chip = train_config.batch_size / train_config.grad_accum_steps / (
      batch_devices)
  logits_bytes = (rows_per_chip * train_config.max_seq_len *
                  trainer.base_model.config.num_embed * 4)
  notes = (f'{rows_per_chip:g} rows of {train_config.max_seq_len} tokens per '
           f'chip and micro-batch: their f32 logits alone are '
           f'{_gib(logits_bytes)} (and the loss keeps a few such arrays)',)
  groups = {'params (trained, master dtype)': state.params,
            'optimizer state': state.opt_state, 'batch': batch}
  if frozen is not None:
    groups['frozen base params'] = frozen
  return Program(name='train_step', kind='train', fn=trainer.step_fn,
                 args=(state, batch, frozen), arg_groups=groups,
                 model_flops=model_flops,
                 cost_multiplier=int(train_config.grad_accum_steps),
                 notes=notes)


def _decode_one_step(params, tokens, positions, cache, attention_mask, *,
                     model: models.Model):
  out = model.apply(params, tokens[:, None], positions=positions[:, None],
                    cache=cache, attention_mask=attention_mask[:, None, :])
  return jnp.argmax(out.logits[:, 0], axis=-1), out.cache


def uses_continuous_engine(config: ml_collections.ConfigDict,
                           model: models.Model) -> bool:
  """Whether a run samples with the continuous engine (as
  `engines.make_sampler` decides: configured, and the family has a paged
  decode path)."""
  if config.sampling.engine != 'continuous':
    return False
  try:
    decode_models.decoder_for(model)
  except ValueError:
    return False
  return True


def continuous_programs(model: models.Model, mesh: Mesh,
                        settings: sampling.SamplingSettings, *, prefix: str,
                        prompt_bucket: int) -> list[Program]:
  """The continuous engine's prefill (one chunk of prompts), decode call and
  one decode step over the whole page pool (its per-step cost)."""
  programs = sampling_continuous.abstract_programs(
      model, mesh, settings, prompt_bucket=prompt_bucket)
  note = ('continuous engine: slots refilled as rows end; each step reads '
          'the whole page pool (config.sampling.cache_tokens_per_slot)')
  return [Program(name=f'{prefix}_{kind}', kind=kind, fn=program.fn,
                  args=program.args, arg_groups=program.arg_groups,
                  notes=(note,) if kind == 'decode_step' else ())
          for kind, program in programs.items()]


def sampling_programs(model: models.Model, mesh: Mesh,
                      settings: sampling.SamplingSettings, *, prefix: str,
                      prompt_bucket: int, num_problems: int
                      ) -> list[Program]:
  """The static engine's prefill and decode of one sampling batch, and one
  decode step over the full cache (the decode's per-step cost)."""
  (prefill, prefill_args), (decode, decode_args) = (
      sampling.abstract_batch_programs(model, mesh, settings,
                                       prompt_bucket=prompt_bucket,
                                       num_problems=num_problems))
  params, state = decode_args[0], decode_args[1]
  num_rows = state.last_tokens.shape[0]
  cache_length = prompt_bucket + settings.max_new_tokens - 1
  abstract_cache = jax.eval_shape(functools.partial(
      model.config.init_cache, batch_size=num_rows,
      dtype=model.compute_dtype, cache_length=cache_length))
  cache = jax.tree.map(
      lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s),
      abstract_cache, sharding_lib.cache_shardings(abstract_cache, mesh))
  rows = lambda shape, dtype: jax.ShapeDtypeStruct(
      shape, dtype, sharding=sharding_lib.batch_sharding(mesh, len(shape)))
  step = jax.jit(functools.partial(_decode_one_step, model=model),
                 donate_argnums=(3,))
  step_args = (params, rows((num_rows,), jnp.int32),
               rows((num_rows,), jnp.int32), cache,
               rows((num_rows, cache_length), jnp.bool_))
  return [
      Program(name=f'{prefix}_prefill', kind='prefill', fn=prefill,
              args=prefill_args,
              arg_groups={'params': params, 'prompts': prefill_args[1]}),
      Program(name=f'{prefix}_decode', kind='decode', fn=decode,
              args=decode_args,
              arg_groups={'params': params, 'KV cache (prompt bucket)':
                              state.cache}),
      Program(name=f'{prefix}_decode_step', kind='decode_step', fn=step,
              args=step_args,
              arg_groups={'params': params,
                          f'KV cache ({cache_length} slots)': cache}),
  ]


def think_settings(config: ml_collections.ConfigDict
                   ) -> sampling.SamplingSettings:
  return sampling.SamplingSettings.from_config(config.sampling,
                                               seed=config.seed)


def eval_settings(config: ml_collections.ConfigDict
                  ) -> list[tuple[str, sampling.SamplingSettings]]:
  """The Evaluate stage's sampling settings, as the loop derives them."""
  think = think_settings(config)
  greedy = dataclasses.replace(
      think, num_samples_per_problem=1, temperature=0.0, top_k=0, top_p=1.0,
      max_new_tokens=config.eval.max_new_tokens or think.max_new_tokens)
  out = [('eval', greedy)]
  if config.eval.num_samples:
    out.append(('eval_sampled', dataclasses.replace(
        greedy, num_samples_per_problem=config.eval.num_samples,
        temperature=float(config.eval.temperature))))
  return out


def problem_counts(config: ml_collections.ConfigDict) -> tuple[int, int]:
  """(train, test) problems a round samples, from the task and loop caps."""
  task = config.task
  if task.name in KNOWN_TASK_SIZES:
    num_train, num_test = KNOWN_TASK_SIZES[task.name]
  else:
    num_train = task.get('num_train_problems', 0)
    num_test = task.get('num_test_problems', 0)
    if not num_train or not num_test:
      raise ValueError(f'config.task.name={task.name!r}: the plan does not '
                       'know its number of problems.')
  loop_config = config.loop
  if loop_config.max_train_problems:
    num_train = min(num_train, loop_config.max_train_problems)
  if loop_config.max_test_problems:
    num_test = min(num_test, loop_config.max_test_problems)
  return num_train, num_test


def _spec_key(settings: sampling.SamplingSettings, num_problems: int,
              row_multiple: int) -> tuple[Any, ...]:
  """What decides a sampling program's shape (not seed or temperature)."""
  shape = sampling_utils.batch_shape(
      num_problems, settings.num_samples_per_problem, settings.batch_size,
      row_multiple)
  normalized = dataclasses.replace(
      settings, seed=0, temperature=0.0 if settings.greedy else 1.0,
      top_p=1.0 if settings.top_p == 1 else 0.5)
  return (normalized, shape)


def build_programs(config: ml_collections.ConfigDict, mesh: Mesh, *,
                   groups: Sequence[str] = PROGRAM_GROUPS,
                   prompt_bucket: int = 0, sampling_mesh: Mesh | None = None
                   ) -> tuple[list[Program], dict[str, str]]:
  """The config's programs (by group: 'train', 'think', 'eval'): training
  on `mesh`, sampling on `sampling_mesh` (default `mesh`).

  Returns:
    The programs, and for each sampling stage ('think', 'eval',
    'eval_sampled') the prefix of the programs that serve it (a stage whose
    batches have the shapes of an earlier one's runs the same programs).
  """
  unknown = set(groups) - set(PROGRAM_GROUPS)
  if unknown:
    raise ValueError(f'--programs={",".join(groups)}: {sorted(unknown)} not '
                     f'among {", ".join(PROGRAM_GROUPS)}.')
  programs = []
  if 'train' in groups:
    programs.append(train_program(config, mesh))
  model = models.build_model(config.model)
  continuous = uses_continuous_engine(config, model)
  mesh = sampling_mesh or mesh
  row_multiple = sharding_lib.num_batch_devices(mesh)
  served_by: dict[str, str] = {}
  seen: dict[tuple[Any, ...], str] = {}
  for prefix, settings, num_problems in sampling_stages(config, groups):
    bucket = prompt_bucket or settings.prompt_length_buckets[-1]
    key = _spec_key(settings, num_problems, row_multiple) + (bucket,)
    if key not in seen:
      seen[key] = prefix
      if continuous:
        programs += continuous_programs(model, mesh, settings, prefix=prefix,
                                        prompt_bucket=bucket)
      else:
        programs += sampling_programs(model, mesh, settings, prefix=prefix,
                                      prompt_bucket=bucket,
                                      num_problems=num_problems)
    served_by[prefix] = seen[key]
  return programs, served_by


def sampling_stages(config: ml_collections.ConfigDict, groups: Sequence[str]
                    ) -> list[tuple[str, sampling.SamplingSettings, int]]:
  """(name, settings, number of problems) of each sampling stage a round
  runs, among `groups`."""
  num_train, num_test = problem_counts(config)
  stages = []
  if 'think' in groups:
    stages.append(('think', think_settings(config), num_train))
  if 'eval' in groups:
    stages += [(n, s, num_test) for n, s in eval_settings(config)]
  return stages


# --- compiling ----------------------------------------------------------------


def _first_line_with(text: str, needle: str) -> str:
  for line in text.splitlines():
    if needle in line:
      return line.strip()
  return text.strip().splitlines()[0] if text.strip() else needle


def compile_program(program: Program, topology: topologies.Topology
                    ) -> ProgramReport:
  """Compiles `program` for the slice (unless its arguments alone overflow
  HBM) and reads memory and cost."""
  chip = topology.chip
  group_bytes = {name: bytes_per_chip(tree)
                 for name, tree in program.arg_groups.items()}
  argument_bytes = bytes_per_chip(program.args)
  base = dict(name=program.name, kind=program.kind, group_bytes=group_bytes,
              hbm_bytes=chip.usable_hbm_bytes, notes=program.notes)
  if argument_bytes > chip.usable_hbm_bytes:
    return ProgramReport(argument_bytes=argument_bytes, output_bytes=0,
                         alias_bytes=0, temp_bytes=0, code_bytes=0,
                         compiled=False, **base)
  start = time.perf_counter()
  try:
    compiled = program.fn.lower(*program.args).compile()
  except Exception as e:  # pylint: disable=broad-except
    if 'RESOURCE_EXHAUSTED' not in str(e):
      raise
    message = _first_line_with(str(e), 'RESOURCE_EXHAUSTED')
    # e.g. '... HLO temporaries (50.04G) exceeds available HBM (15.75G)'.
    needed = re.search(r'temporaries \(([\d.]+)G\)', message)
    return ProgramReport(
        argument_bytes=argument_bytes, output_bytes=0, alias_bytes=0,
        temp_bytes=int(float(needed.group(1)) * GIB) if needed else 0,
        code_bytes=0, compiled=True, error=message,
        compile_seconds=time.perf_counter() - start, **base)
  compile_seconds = time.perf_counter() - start
  memory = compiled.memory_analysis()
  cost = compiled.cost_analysis() or {}
  if isinstance(cost, (list, tuple)):  # Older jax: one dict per module.
    cost = cost[0] if cost else {}
  k = program.cost_multiplier
  flops = float(cost.get('flops', 0.0)) * k
  bytes_accessed = float(cost.get('bytes accessed', 0.0)) * k
  xla_seconds = cost.get('optimal_seconds')
  xla_seconds = float(xla_seconds) if xla_seconds is not None else None
  if xla_seconds is not None and xla_seconds > 0 and k == 1:
    seconds, source = xla_seconds, "XLA's optimal_seconds"
  else:
    compute, memory_time = (flops / chip.peak_bf16_flops,
                            bytes_accessed / chip.hbm_bytes_per_s)
    seconds = max(compute, memory_time)
    why = ('loop counted once' if k > 1 else
           f'XLA optimal_seconds {"absent" if xla_seconds is None else "<= 0"}'
           )
    source = (f'roofline max(flops/peak, bytes/HBM BW) ({why}'
              f'{f", x{k} micro-batches" if k > 1 else ""})')
  # Loops are counted by their trip counts here, so no cost_multiplier.
  traffic = hlo_traffic.hbm_traffic(compiled.as_text())
  hbm_traffic_bytes = float(traffic.bytes)
  buffer_seconds = max(flops / chip.peak_bf16_flops,
                       hbm_traffic_bytes / chip.hbm_bytes_per_s)

  def peak_fraction_at(step_seconds: float) -> float | None:
    if step_seconds > 0 and program.kind == 'train' and program.model_flops:
      return program.model_flops / (
          topology.num_chips * chip.peak_bf16_flops * step_seconds)
    if step_seconds > 0 and program.kind == 'decode_step':
      return (argument_bytes / chip.hbm_bytes_per_s) / step_seconds
    return None

  return ProgramReport(
      argument_bytes=int(memory.argument_size_in_bytes),
      output_bytes=int(memory.output_size_in_bytes),
      alias_bytes=int(memory.alias_size_in_bytes),
      temp_bytes=int(memory.temp_size_in_bytes),
      code_bytes=int(memory.generated_code_size_in_bytes),
      compiled=True, flops=flops, bytes_accessed=bytes_accessed,
      xla_seconds=xla_seconds, seconds=seconds, seconds_source=source,
      peak_fraction=peak_fraction_at(seconds),
      hbm_traffic_bytes=hbm_traffic_bytes, buffer_seconds=buffer_seconds,
      buffer_peak_fraction=peak_fraction_at(buffer_seconds),
      hbm_traffic_loops_counted_once=traffic.loops_without_trip_count,
      compile_seconds=compile_seconds, **base)


# --- a round's time -----------------------------------------------------------


def _mean_decode_step_seconds(step: ProgramReport, prompt_bucket: int,
                              cache_length: int, decode_steps: int,
                              segments: int) -> float:
  """Mean decode step time over a batch: a step reads the params and the
  cache up to its segment's end; the full-cache step was compiled."""
  cache_bytes = sum(v for k, v in step.group_bytes.items()
                    if k.startswith('KV cache'))
  total = step.argument_bytes or 1
  cache_share = cache_bytes / total
  if segments > 1:
    mean_length = prompt_bucket + decode_steps / 2
  else:
    mean_length = cache_length
  return step.seconds * (1 - cache_share +
                         cache_share * min(mean_length / cache_length, 1.0))


def estimate_round(config: ml_collections.ConfigDict,
                   reports: Sequence[ProgramReport],
                   served_by: dict[str, str], assumptions: Assumptions,
                   sampling_mesh: Mesh, *, continuous: bool = False
                   ) -> RoundEstimate | None:
  """One round: Think over the train problems, Train on the kept samples,
  Evaluate on the test problems, from the compiled programs' step times
  (sampling on `sampling_mesh`); None unless each program it needs compiled
  (fitting or not)."""
  by_name = {r.name: r for r in reports if r.seconds > 0}
  needed = ['train_step'] + [
      f'{served_by.get(stage, "-")}_{kind}'
      for stage, _, _ in sampling_stages(config, PROGRAM_GROUPS)
      for kind in ('prefill', 'decode_step')]
  if any(name not in by_name for name in needed):
    return None  # Not compiled (a group left out, or over HBM).
  row_multiple = sharding_lib.num_batch_devices(sampling_mesh)
  lines = []
  seconds_by_stage = {}
  for name, settings, num_problems in sampling_stages(config,
                                                      PROGRAM_GROUPS):
    prefix = served_by[name]
    prefill = by_name[f'{prefix}_prefill']
    step = by_name[f'{prefix}_decode_step']
    if continuous:
      seconds, line = _continuous_stage_seconds(
          settings, num_problems, prefill, step, assumptions, row_multiple)
      seconds_by_stage[name] = seconds
      lines.append(f'{name}: {line}')
      continue
    rows, _ = sampling_utils.batch_shape(
        num_problems, settings.num_samples_per_problem, settings.batch_size,
        row_multiple)
    batches = math.ceil(num_problems * settings.num_samples_per_problem /
                        rows)
    steps = assumptions.decode_steps or settings.max_new_tokens
    bucket = assumptions.prompt_bucket or settings.prompt_length_buckets[-1]
    cache_length = bucket + settings.max_new_tokens - 1
    step_seconds = _mean_decode_step_seconds(
        step, bucket, cache_length, steps, settings.max_cache_segments)
    seconds = batches * (prefill.seconds + steps * step_seconds)
    seconds_by_stage[name] = seconds
    lines.append(
        f'{name}: {num_problems} problems x '
        f'{settings.num_samples_per_problem} samples = {batches} batches of '
        f'{rows} rows; per batch one prefill ({prefill.seconds:.3f} s) + '
        f'{steps} decode steps ({step_seconds * 1e3:.2f} ms mean) = '
        f'{_duration(seconds)}')

  train_report = by_name['train_step']
  train_config = config.train
  num_train, _ = problem_counts(config)
  samples = num_train * config.sampling.num_samples_per_problem
  examples = samples * assumptions.keep_fraction
  if config.loop.max_train_examples_per_round:
    examples = min(examples, config.loop.max_train_examples_per_round)
  examples *= float(train_config.num_epochs)
  example_tokens = assumptions.prompt_tokens + assumptions.completion_tokens
  if train_config.num_steps > 0:
    steps = int(train_config.num_steps)
    how = 'config.train.num_steps'
  elif train_config.packing:
    rows = math.ceil(examples * example_tokens / train_config.max_seq_len)
    steps = math.ceil(rows / train_config.batch_size)
    how = (f'{examples:.0f} examples ({assumptions.keep_fraction:.0%} of '
           f'{samples} samples kept, x{float(train_config.num_epochs):g} '
           f'epochs) of {example_tokens} tokens packed into rows of '
           f'{train_config.max_seq_len}')
  else:
    steps = math.ceil(examples / train_config.batch_size)
    how = f'{examples:.0f} examples, one per row'
  train_seconds = steps * train_report.seconds
  lines.insert(1, f'train: {steps} steps ({how}) x '
                  f'{train_report.seconds:.3f} s = {_duration(train_seconds)}')
  if continuous:
    decode = (f'the continuous engine keeps {assumptions.slot_utilization:.0%}'
              ' of its slot-steps busy with rows of that mean length')
  elif assumptions.decode_steps:
    decode = f'decode runs {assumptions.decode_steps} steps per batch'
  else:
    decode = ('decode runs max_new_tokens steps per batch (a batch ends with '
              'its longest row)')
  lines.append(
      f'assumed: prompts of {assumptions.prompt_tokens} tokens, '
      f'completions of {assumptions.completion_tokens} tokens; {decode}; '
      'prefill at the compiled prompt bucket; compile, verification, '
      'checkpointing and host time not included')
  return RoundEstimate(
      think_seconds=seconds_by_stage['think'], train_seconds=train_seconds,
      eval_seconds=sum(v for k, v in seconds_by_stage.items()
                       if k != 'think'),
      assumptions=tuple(lines))


def _continuous_stage_seconds(settings: sampling.SamplingSettings,
                              num_problems: int, prefill: ProgramReport,
                              step: ProgramReport, assumptions: Assumptions,
                              row_multiple: int) -> tuple[float, str]:
  """A sampling stage on the continuous engine: each problem prefilled once
  (in chunks), then slot-steps enough for every row's mean length."""
  spec = sampling_continuous.decode_spec(
      settings, num_shards=row_multiple,
      prompt_bucket=settings.prompt_length_buckets[-1])
  rows = num_problems * settings.num_samples_per_problem
  mean_tokens = min(assumptions.completion_tokens, settings.max_new_tokens)
  steps = math.ceil(rows * mean_tokens /
                    (spec.num_slots * assumptions.slot_utilization))
  chunk = sampling_continuous.prefill_rows_per_call(row_multiple)
  prefills = math.ceil(num_problems / chunk)
  seconds = prefills * prefill.seconds + steps * step.seconds
  return seconds, (
      f'{num_problems} problems x {settings.num_samples_per_problem} samples'
      f' = {rows} rows on {spec.num_slots} slots; {prefills} prefills of '
      f'{chunk} prompts ({prefill.seconds:.3f} s) + {steps} decode steps '
      f'({step.seconds * 1e3:.2f} ms) = {_duration(seconds)}')


# --- the plan -----------------------------------------------------------------


def make_plan(config: ml_collections.ConfigDict, topology_name: str, *,
              groups: Sequence[str] = PROGRAM_GROUPS,
              assumptions: Assumptions = Assumptions(),
              progress: TextIO | None = None) -> Plan:
  """Compiles the config's programs for the slice `topology_name`.

  Raises:
    topologies.UnknownTopologyError: unknown slice name.
    topologies.LibtpuMissingError: libtpu is not installed.
    ValueError: a config that does not fit the slice's device count.
  """
  topology = topologies.get_topology(topology_name)
  devices = topologies.abstract_devices(topology)
  mesh = sharding_lib.make_mesh(config.mesh, devices=devices)
  sampling_mesh = sharding_lib.make_sampling_mesh(config.mesh, devices=devices)
  programs, served_by = build_programs(
      config, mesh, groups=groups, prompt_bucket=assumptions.prompt_bucket,
      sampling_mesh=sampling_mesh)
  reports = []
  for program in programs:
    if progress is not None:
      print(f'compiling {program.name} for {topology.name} ...',
            file=progress, flush=True)
    reports.append(compile_program(program, topology))
  estimate = functools.partial(
      estimate_round, config, served_by=served_by, assumptions=assumptions,
      sampling_mesh=sampling_mesh,
      continuous=uses_continuous_engine(config,
                                        models.build_model(config.model)))
  return Plan(topology=topology, mesh_shape=dict(mesh.shape),
              sampling_mesh_shape=dict(sampling_mesh.shape),
              reports=tuple(reports), round_estimate=estimate(reports),
              buffer_round_estimate=estimate([
                  dataclasses.replace(r, seconds=r.buffer_seconds)
                  for r in reports]))


def _gib(num_bytes: float) -> str:
  return f'{num_bytes / GIB:.2f} GiB'


def _duration(seconds: float) -> str:
  if seconds >= 3600:
    return f'{seconds / 3600:.1f} h'
  if seconds >= 60:
    return f'{seconds / 60:.1f} min'
  return f'{seconds:.1f} s'


def format_plan(plan: Plan) -> str:
  """The plan as the CLI prints it."""
  topology, chip = plan.topology, plan.topology.chip
  lines = [
      f'{topology.name} ({topology.libtpu_name}): {topology.num_chips} chips,'
      f' {_gib(chip.hbm_bytes)} HBM, {chip.peak_bf16_flops / 1e12:.0f} bf16 '
      f'TFLOP/s, {chip.hbm_bytes_per_s / 1e9:.0f} GB/s HBM per chip; mesh '
      + ', '.join(f'{k}={v}' for k, v in plan.mesh_shape.items())
      + ('' if plan.sampling_mesh_shape == plan.mesh_shape else
         '; sampling mesh ' + ', '.join(
             f'{k}={v}' for k, v in plan.sampling_mesh_shape.items())), '']
  for r in plan.reports:
    status = 'fits' if r.fits else 'DOES NOT FIT'
    lines.append(f'{r.name}: {status}, {_gib(r.total_bytes)} of '
                 f'{_gib(r.hbm_bytes)} usable per chip'
                 + (f' (compiled in {r.compile_seconds:.0f} s)'
                    if r.compiled and not r.error else ''))
    for name, size in r.group_bytes.items():
      lines.append(f'  {name}: {size} bytes per chip ({_gib(size)})')
    lines += [f'  {note}' for note in r.notes]
    if not r.compiled:
      lines.append(f'  arguments alone: {_gib(r.argument_bytes)} per chip '
                   '(not compiled)')
      continue
    if r.error:
      lines.append(f'  compiler: {r.error}')
      continue
    lines.append(
        f'  arguments {_gib(r.argument_bytes)}, outputs {_gib(r.output_bytes)}'
        f' (donated {_gib(r.alias_bytes)}), temporaries {_gib(r.temp_bytes)}'
        f', code {_gib(r.code_bytes)}')
    xla = ('absent' if r.xla_seconds is None else f'{r.xla_seconds:.4g} s')
    lines.append(
        f'  per chip: {r.flops / 1e12:.3f} TFLOP, {r.bytes_accessed / 1e9:.3f}'
        f' GB accessed; est. {r.seconds * 1e3:.2f} ms per call from '
        f'{r.seconds_source}; XLA optimal_seconds {xla}')
    lines.append(
        f'  HBM traffic of the compiled buffers: '
        f'{r.hbm_traffic_bytes / 1e9:.3f} GB; est. '
        f'{r.buffer_seconds * 1e3:.2f} ms per call from roofline '
        'max(flops/peak, HBM traffic/BW), a lower bound'
        + (f' ({r.hbm_traffic_loops_counted_once} loops of unknown length '
           'counted once)' if r.hbm_traffic_loops_counted_once else ''))
    if r.peak_fraction is not None:
      label = ('est. MFU (model FLOPs)' if r.kind == 'train' else
               'est. HBM-roofline fraction (argument bytes / BW / est.)')
      buffer = ('' if r.buffer_peak_fraction is None else
                f', {r.buffer_peak_fraction:.1%} from the HBM traffic')
      lines.append(f'  {label}: {r.peak_fraction:.1%} from XLA\'s bytes '
                   f'accessed{buffer}')
  lines.append('')
  failing = [r for r in plan.reports if not r.fits]
  if failing:
    for r in failing:
      advice = _ADVICE['train' if r.kind == 'train' else 'sample']
      over = f'over by {_gib(r.total_bytes - r.hbm_bytes)}'
      if r.error:
        over += ", the compiler's RESOURCE_EXHAUSTED"
      lines.append(
          f'DOES NOT FIT: {r.name} needs {_gib(r.total_bytes)} per chip; a '
          f'{chip.generation} chip has {_gib(r.hbm_bytes)} usable ({over}). '
          f'To change: {advice}.')
  else:
    lines.append(f'All {len(plan.reports)} programs fit on {topology.name}.')
  if plan.round_estimate is not None:
    estimate = plan.round_estimate
    lines.append(
        f'Round estimate{"" if plan.fits else " (if every program fit)"}: '
        f'{_duration(estimate.total_seconds)} (think '
        f'{_duration(estimate.think_seconds)}, train '
        f'{_duration(estimate.train_seconds)}, eval '
        f'{_duration(estimate.eval_seconds)})')
    lines += [f'  {line}' for line in estimate.assumptions]
  if plan.buffer_round_estimate is not None:
    estimate = plan.buffer_round_estimate
    lines.append(
        'Round estimate from the HBM traffic of the compiled buffers (XLA\'s '
        'bytes accessed above also count copies into on-chip memory): '
        f'{_duration(estimate.total_seconds)} (think '
        f'{_duration(estimate.think_seconds)}, train '
        f'{_duration(estimate.train_seconds)}, eval '
        f'{_duration(estimate.eval_seconds)})')
  return '\n'.join(lines)


def use_host_cpu() -> None:
  """Makes jax run on the host CPU unless JAX_PLATFORMS says otherwise.

  A plan needs no accelerator, and with libtpu installed on a host without a
  TPU, jax would otherwise try (and fail) to start a TPU backend, holding
  libtpu's lock file that the ahead-of-time compiler then cannot take. Has
  no effect once jax's backends are running.
  """
  if not os.environ.get('JAX_PLATFORMS'):
    jax.config.update('jax_platforms', 'cpu')


def run(config: ml_collections.ConfigDict, topology_name: str, *,
        groups: Sequence[str] = PROGRAM_GROUPS,
        assumptions: Assumptions = Assumptions(),
        stdout: TextIO = sys.stdout, stderr: TextIO = sys.stderr) -> int:
  """Prints the plan; returns the exit status (0 fits, 3 does not, 2 bad
  slice name, missing libtpu or a config that does not divide the slice).

  What `main --dry_run --topology=...` calls.
  """
  use_host_cpu()
  try:
    plan = make_plan(config, topology_name, groups=groups,
                     assumptions=assumptions, progress=stderr)
  except topologies.UnknownTopologyError as e:
    print(str(e), file=stderr)
    return EXIT_BAD_INPUT
  except topologies.LibtpuMissingError as e:
    print(str(e), file=stderr)
    return EXIT_BAD_INPUT
  except ValueError as e:
    print(f'Invalid config for {topology_name}: {e}', file=stderr)
    return EXIT_BAD_INPUT
  print(format_plan(plan), file=stdout, flush=True)
  return EXIT_FITS if plan.fits else EXIT_DOES_NOT_FIT


# --- the command --------------------------------------------------------------


def _main(argv: Sequence[str]) -> None:
  # pylint: disable=g-import-not-at-top
  from absl import flags
  from absl import logging
  from tpt_jax import config as config_lib
  # pylint: enable=g-import-not-at-top
  if len(argv) > 1:
    raise SystemExit(f'Unexpected arguments: {argv[1:]}')
  if not flags.FLAGS['verbosity'].present:
    logging.set_verbosity(logging.ERROR)
  f = flags.FLAGS
  if f.config is None or not f.topology:
    print('--config=configs/<name>.py and --topology=<slice> are required.\n'
          + topologies.topology_table(), file=sys.stderr)
    sys.exit(EXIT_BAD_INPUT)
  config = f.config
  try:
    config_lib.validate(config)
  except config_lib.ConfigError as e:
    print(f'Invalid config: {e}', file=sys.stderr)
    sys.exit(EXIT_BAD_INPUT)
  assumptions = Assumptions(
      prompt_tokens=f.prompt_tokens, completion_tokens=f.completion_tokens,
      decode_steps=f.decode_steps, keep_fraction=f.keep_fraction,
      prompt_bucket=f.prompt_bucket)
  groups = tuple(g for g in f.programs.split(',') if g)
  sys.exit(run(config, f.topology, groups=groups, assumptions=assumptions))


def _parse_flags(argv: list[str]) -> list[str]:
  """absl flag parsing; a bad flag or config override exits 2 in one line."""
  from absl import flags  # pylint: disable=g-import-not-at-top
  try:
    return flags.FLAGS(argv)
  except (AttributeError, KeyError) as e:  # ml_collections: unknown field.
    message = str(e.args[0] if e.args else e).strip('\'"').replace('\n', ' ')
    print(f'Unknown config field: {message}', file=sys.stderr)
  except flags.Error as e:
    print(f'Invalid flag: {e}', file=sys.stderr)
  sys.exit(EXIT_BAD_INPUT)


def _define_flags() -> None:
  # pylint: disable=g-import-not-at-top
  from absl import flags
  from ml_collections import config_flags
  # pylint: enable=g-import-not-at-top
  config_flags.DEFINE_config_file(
      'config', None, 'Path of an ml_collections config file (configs/*.py).',
      lock_config=True)
  flags.DEFINE_string('topology', None, 'TPU slice, e.g. v5e-16 (see the '
                      'table printed without it).')
  flags.DEFINE_string('programs', ','.join(PROGRAM_GROUPS),
                      'Which programs to compile: train, think, eval.')
  defaults = Assumptions()
  flags.DEFINE_integer('prompt_bucket', defaults.prompt_bucket,
                       'Prompt bucket to compile the sampler for (0: the '
                       'largest configured).')
  flags.DEFINE_integer('prompt_tokens', defaults.prompt_tokens,
                       'Assumed tokens per prompt (train examples).')
  flags.DEFINE_integer('completion_tokens', defaults.completion_tokens,
                       'Assumed tokens per kept completion.')
  flags.DEFINE_integer('decode_steps', defaults.decode_steps,
                       'Assumed decode steps per batch (0: max_new_tokens).')
  flags.DEFINE_float('keep_fraction', defaults.keep_fraction,
                     'Assumed share of samples kept by pruning.')


if __name__ == '__main__':
  from absl import app as absl_app  # pylint: disable=g-import-not-at-top
  _define_flags()
  absl_app.run(_main, flags_parser=_parse_flags)
