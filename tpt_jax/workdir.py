"""The run directory: the rule every stage obeys, and the files it keeps.

The rule. A run is a sequence of units (a shard of samples, a round's
dataset, a training checkpoint, an eval report). A unit's output depends only
on its inputs and its seed (`derived_seed`), and it is written atomically:
JSON through a temporary file renamed into place, datasets in a staging
directory renamed into place, checkpoints by orbax. A stage reads only
committed units of the stage before. So a run killed at any moment (even
SIGKILL) and started again with the same command skips what is done, redoes
only unfinished units, and ends with the same results as an uninterrupted run.

What this module owns:
  paths        `as_path`: every workdir path is an `etils.epath.Path`, so a
               workdir may be local, on NFS, or `gs://...`.
  JSON         `write_json` (atomic, process 0 only, readable as the umask
               allows) and `read_json`.
  config       `check_or_save_config`: DIR/config.json holds the config a run
               started with; a resumed run with a config that differs in
               anything that changes results is refused, naming each field.
  seeds        `Stage` (one id per seeded stage) and `derived_seed`.
  timings      `Timings`: wall time per stage, merged across invocations.
  crash points `maybe_crash` (fault injection for the resume tests).
"""

from __future__ import annotations

import contextlib
import enum
import hashlib
import json
import os
import secrets
import signal
import time
from typing import Any, Callable

from etils import epath
import jax
import ml_collections
import numpy as np

from tpt_jax import config_fields

Path = epath.Path
PathLike = str | os.PathLike[str] | epath.Path

CONFIG_FILE = 'config.json'
TIMINGS_FILE = 'timings.json'
# A training unit's marker: written after its final params are saved.
DONE_FILE = 'done.json'
# The workdir layout this code writes, saved in config.json. Layout 1 (until
# the stage-seams change) kept the verifier settings in config.prune.
LAYOUT_VERSION = 2
LAYOUT_KEY = '_tpt_jax_layout'
# Fields that may differ when a workdir is resumed: they change how a run
# shows progress or where it runs, not what it computes.
RESUMABLE_CHANGES = ('workdir', 'loop.num_rounds', 'sampling.show_progress',
                     'train.progress_bar', 'train.log_every',
                     'train.checkpoint_checksums', 'mesh.shape',
                     'mesh.distributed', 'mesh.heartbeat_timeout_s',
                     'sampling.page_size', 'sampling.cache_tokens_per_slot',
                     'sampling.steps_per_call', 'sampling.refill_fraction')
# Fault injection for the resume tests: a comma-separated list of points
# (e.g. 'think:<round>:<shard>', 'records:<round>', 'train:<round>:<step>',
# 'eval:<round>:<shard>') at which the process kills itself with SIGKILL.
CRASH_ENV = 'TPT_JAX_CRASH_AT'


class Stage(enum.IntEnum):
  """The seeded stages; each draws its randomness from its own seed.

  The values are part of every run's results: never renumber them.
  """
  THINK = 0
  EVAL_GREEDY = 1
  EVAL_SAMPLED = 2
  TRAIN = 3
  WARMUP = 4
  EXAMPLE_CAP = 5
  HELDOUT = 6
  DISTILL = 16


def derived_seed(seed: int, round_index: int, stage: int) -> int:
  """A seed for one stage of one round, a pure function of its inputs."""
  return int(np.random.SeedSequence(
      [seed, round_index, int(stage)]).generate_state(1)[0] >> 1)


def as_path(path: PathLike) -> Path:
  """`path` as an absolute `epath.Path` (local paths made absolute)."""
  path = epath.Path(path)
  if '://' not in os.fspath(path) and not path.is_absolute():
    path = epath.Path(os.path.abspath(os.fspath(path)))
  return path


def is_local(path: PathLike) -> bool:
  return '://' not in os.fspath(path)


def is_writer() -> bool:
  """Whether this process writes the run's shared files (process 0)."""
  return jax.process_index() == 0


def owns(unit_index: int) -> bool:
  """Whether this process does unit `unit_index` of a stage split across
  processes (units are dealt round-robin; one process does them all)."""
  return unit_index % jax.process_count() == jax.process_index()


# How long a process waits at a barrier for the others. A dead peer is found
# sooner, by the heartbeat (config.mesh.heartbeat_timeout_s); this only
# bounds a peer that hangs.
BARRIER_TIMEOUT_S = 6 * 3600


def barrier(name: str) -> None:
  """Waits until every process reaches the barrier `name` (a no-op in a
  single process). Stages call it after committing shared files, so that no
  process reads a unit another process is still writing. `name` must be
  unique within the run (e.g. the committed unit's path)."""
  if jax.process_count() == 1:
    return
  from jax._src import distributed  # pylint: disable=g-import-not-at-top
  distributed.global_state.client.wait_at_barrier(
      f'tpt_jax:{name}', BARRIER_TIMEOUT_S * 1000)


# ----------------------------------------------------------------------------
# JSON.
# ----------------------------------------------------------------------------


def write_json_atomic(path: PathLike, obj: Any) -> None:
  """Writes `obj` as JSON so that readers see the old file or the new one.

  The text goes to a temporary file beside `path` and is then renamed over
  it (atomic on POSIX; on object stores the rename is a copy, and readers
  see whole objects). Locally the file is flushed to disk first, and created
  with the permissions the umask allows (not 0600). A crash leaves at most a
  stray temporary file (`.<name>.<random>.tmp`), never a truncated `path`.
  NaN and infinity are refused, as they are not JSON.
  """
  text = json.dumps(obj, indent=2, allow_nan=False) + '\n'
  path = epath.Path(path)
  tmp = path.parent / f'.{path.name}.{secrets.token_hex(4)}.tmp'
  if not is_local(path):
    tmp.write_text(text)
    tmp.rename(path)
    return
  tmp_name = os.fspath(tmp)
  fd = os.open(tmp_name, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
  try:
    with os.fdopen(fd, 'w', encoding='utf-8') as f:
      f.write(text)
      f.flush()
      os.fsync(f.fileno())
    os.replace(tmp_name, os.fspath(path))
  except BaseException:
    with contextlib.suppress(FileNotFoundError):
      os.remove(tmp_name)
    raise
  _fsync_directory(os.fspath(path.parent))


def _fsync_directory(directory: str) -> None:
  """Makes the rename durable (best effort: not every OS allows it)."""
  try:
    fd = os.open(directory, os.O_RDONLY)
  except OSError:
    return
  try:
    os.fsync(fd)
  except OSError:
    pass
  finally:
    os.close(fd)


def write_json(path: PathLike, obj: Any, *, every_process: bool = False
               ) -> None:
  """Writes `obj` as JSON atomically: by process 0, or by the calling
  process when `every_process` (a file this process owns, e.g. its shard)."""
  if every_process or is_writer():
    path = epath.Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    write_json_atomic(path, obj)


def read_json(path: PathLike) -> Any:
  """The JSON value in `path`."""
  return json.loads(epath.Path(path).read_text())


def directory_digest(directory: PathLike) -> dict[str, str]:
  """sha256 of every file under `directory`, by relative path: written
  beside saved params and checked before they are loaded, so damaged
  weights are an error instead of a silently different model."""
  directory = epath.Path(directory)
  digests = {}
  pending = [directory]
  while pending:  # (epath's rglob refuses '**' on object stores.)
    for path in pending.pop().iterdir():
      if path.is_dir():
        pending.append(path)
      else:
        digests[os.fspath(path.relative_to(directory))] = hashlib.sha256(
            path.read_bytes()).hexdigest()
  return dict(sorted(digests.items()))


def damaged_files(directory: PathLike, expected: dict[str, str]) -> list[str]:
  """The files of `directory` that are missing or differ from `expected`
  (a `directory_digest`), as paths."""
  actual = directory_digest(directory)
  return [os.fspath(epath.Path(directory) / name)
          for name, digest in sorted(expected.items())
          if actual.get(name) != digest]


def shard_path(directory: PathLike, index: int) -> Path:
  """The `index`-th shard file of a sharded stage output."""
  return epath.Path(directory) / f'shard_{index:05d}.json'


def clear_staging(directory: PathLike, pattern: str) -> None:
  """Removes staging leftovers (`pattern`) of writes that were killed."""
  directory = epath.Path(directory)
  if not directory.exists():
    return
  for stale in directory.glob(pattern):
    if stale.is_dir():
      stale.rmtree(missing_ok=True)
    else:
      stale.unlink(missing_ok=True)


# ----------------------------------------------------------------------------
# Fault injection.
# ----------------------------------------------------------------------------


def maybe_crash(point: str) -> None:
  """SIGKILLs this process at `point` if CRASH_ENV names it (tests only)."""
  if point in os.environ.get(CRASH_ENV, '').split(','):
    print(f'{CRASH_ENV}: killing the process at {point}.', flush=True)
    os.kill(os.getpid(), signal.SIGKILL)


# ----------------------------------------------------------------------------
# The config a workdir was started with.
# ----------------------------------------------------------------------------


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
    if name in RESUMABLE_CHANGES or name == LAYOUT_KEY:
      continue
    missing = '<absent>'
    old = saved_flat.get(name, missing)
    new = current_flat.get(name, missing)
    if old != new:
      lines.append(f'config.{name}: {old!r} in the workdir, {new!r} now')
  return lines


def config_as_json(config: ml_collections.ConfigDict) -> dict[str, Any]:
  """The config as saved in config.json (through JSON, so that tuples and
  lists compare equal after a round trip)."""
  return json.loads(json.dumps(config.to_dict(), default=str))


def check_or_save_config(workdir: PathLike,
                         config: ml_collections.ConfigDict) -> None:
  """Saves the config in a new workdir; in one already started, refuses a
  config that differs (in anything that changes results) or a workdir of
  another layout, and leaves the saved config as it is."""
  path = epath.Path(workdir) / CONFIG_FILE
  current = config_as_json(config)
  if path.exists():
    saved = read_json(path)
    layout = saved.get(LAYOUT_KEY, 1)
    if layout != LAYOUT_VERSION:
      raise config_fields.ConfigError(
          f'{workdir} was written by a tpt_jax of workdir layout {layout} '
          f'(this one writes layout {LAYOUT_VERSION}: the verifier settings '
          'moved from config.prune.{math,code,demo} to config.verify); its '
          'rounds cannot be resumed. Use a new --workdir, or the tpt_jax '
          'version that started it.')
    differences = config_differences(saved, current)
    starting_over = False
    if differences and not _computed_anything(epath.Path(workdir)):
      # Nothing was computed with the old values (the run failed at start):
      # the workdir is not locked to them.
      print(f'{workdir}: nothing was computed with its saved config; '
            'starting over with this one.', flush=True)
      if is_writer():
        (epath.Path(workdir) / 'tokenizer.model').unlink(missing_ok=True)
      differences = []
      starting_over = True
    if differences:
      raise config_fields.ConfigError(
          f'{workdir} holds a run started with another config; rerun with '
          'the same config to resume, or use a new --workdir. Differences:\n  '
          + '\n  '.join(differences))
    if not starting_over:
      # The saved config stays the one the run started with: what may differ
      # (RESUMABLE_CHANGES: the workdir's path, loop.num_rounds, progress and
      # mesh fields) changes nothing computed, and a finished workdir, moved
      # or read-only, is not written to.
      return
  write_json(path, {**current, LAYOUT_KEY: LAYOUT_VERSION})


PROCESSES_DIR = '.processes'


def _config_digest(config: ml_collections.ConfigDict) -> str:
  flat = _flatten(config_as_json(config))
  kept = {k: v for k, v in flat.items() if k not in RESUMABLE_CHANGES}
  return hashlib.sha256(
      json.dumps(kept, sort_keys=True).encode()).hexdigest()[:16]


def check_processes(workdir: Path, config: ml_collections.ConfigDict
                    ) -> None:
  """With several processes: refuses a workdir the processes do not share,
  and processes started with different configs.

  Each process writes a marker (this invocation's nonce, its config's
  digest) into DIR/.processes/; after a barrier each checks it sees every
  process's marker of this invocation with its own digest.
  """
  count = jax.process_count()
  if count == 1:
    return
  from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top
  nonce = int(multihost_utils.broadcast_one_to_all(
      np.asarray(secrets.randbits(31), np.int32)))
  directory = workdir / PROCESSES_DIR
  directory.mkdir(parents=True, exist_ok=True)
  digest = _config_digest(config)
  write_json(directory / f'process_{jax.process_index()}.json',
             {'nonce': nonce, 'config': digest}, every_process=True)
  # (Names without the path: processes may have been given different ones.)
  barrier(f'processes:{nonce}')
  unseen, other_configs = [], []
  for index in range(count):
    path = directory / f'process_{index}.json'
    marker = read_json(path) if path.exists() else {}
    if marker.get('nonce') != nonce:
      unseen.append(index)
    elif marker.get('config') != digest:
      other_configs.append(index)
  if unseen:
    raise config_fields.ConfigError(
        f'--workdir={workdir} is not shared by the {count} processes: '
        f'process {jax.process_index()} does not see the marker of '
        f'process(es) {unseen}. Every host must see the same directory '
        '(NFS, GCS Fuse, or a gs:// path), or each writes a run of its own.')
  if other_configs:
    raise config_fields.ConfigError(
        f'Process(es) {other_configs} started with another config than '
        f'process {jax.process_index()}: start every process with the same '
        'command.')
  barrier(f'processes_checked:{nonce}')


# What a workdir holds before any stage has computed anything.
_SETUP_FILES = (CONFIG_FILE, TIMINGS_FILE, PROCESSES_DIR, 'tokenizer.model')


def _computed_anything(workdir: Path) -> bool:
  return any(entry.name not in _SETUP_FILES and not entry.name.startswith('.')
             for entry in workdir.iterdir())


def prepare(config: ml_collections.ConfigDict,
            workdir: PathLike | None = None) -> Path:
  """Creates the workdir, checks that every process shares it, and saves
  (or checks) its config; returns it.

  Args:
    config: the full, validated config.
    workdir: default `config.workdir`.
  """
  workdir = workdir or config.get('workdir')
  if not workdir:
    raise config_fields.ConfigError(
        'No workdir: pass --workdir=DIR (or set config.workdir).')
  workdir = as_path(workdir)
  workdir.mkdir(parents=True, exist_ok=True)
  check_processes(workdir, config)
  check_or_save_config(workdir, config)
  barrier('config_saved')
  if is_writer() and is_local(workdir):
    # Temporary files of JSON writes that were killed are never read.
    for directory, _, names in os.walk(os.fspath(workdir)):
      for name in names:
        if name.startswith('.') and name.endswith('.tmp'):
          os.remove(os.path.join(directory, name))
  return workdir


# ----------------------------------------------------------------------------
# Timings.
# ----------------------------------------------------------------------------


class Timings:
  """Wall seconds per stage, saved in DIR/timings.json.

  Stages timed by an earlier invocation keep their times (a resumed run adds
  its own, and `total` sums the invocations), so a rerun loses nothing.
  """

  def __init__(self, workdir: PathLike):
    self._path = epath.Path(workdir) / TIMINGS_FILE
    self._start = time.perf_counter()
    self.seconds: dict[str, float] = {}
    self._earlier: dict[str, float] = {}
    if self._path.exists():
      try:
        self._earlier = dict(read_json(self._path))
      except (ValueError, TypeError):
        self._earlier = {}

  def time(self, name: str, fn: Callable[[], Any]) -> Any:
    """Returns `fn()`, recording its wall time as `name`."""
    start = time.perf_counter()
    value = fn()
    self.seconds[name] = round(time.perf_counter() - start, 2)
    return value

  def prefixed(self, prefix: str) -> _PrefixedTimings:
    """A view whose names get `prefix/` (for an experiment's sub-stages)."""
    return _PrefixedTimings(self, prefix)

  def elapsed(self) -> float:
    """Seconds since this invocation started."""
    return round(time.perf_counter() - self._start, 2)

  def save(self) -> dict[str, float]:
    """Merges this invocation's times into timings.json (unless it timed
    nothing: a finished workdir is not written to); returns them."""
    merged = {k: v for k, v in self._earlier.items() if k != 'total'}
    merged.update(self.seconds)
    merged['total'] = round(self._earlier.get('total', 0.0) +
                            self.elapsed(), 2)
    if self.seconds:
      write_json(self._path, merged)
    return merged


class _PrefixedTimings:
  """`Timings.time` with a name prefix."""

  def __init__(self, timings: Timings, prefix: str):
    self._timings = timings
    self._prefix = prefix

  def time(self, name: str, fn: Callable[[], Any]) -> Any:
    return self._timings.time(f'{self._prefix}/{name}', fn)
