"""The workdir layer: atomic JSON, config refusal, seeds, timings."""

import json
import os

import ml_collections
import pytest

from tpt_jax import config_fields
from tpt_jax import workdir as workdir_lib


def test_config_differences_ignore_progress_fields_only():
  saved = {'sampling': {'temperature': 1.0, 'show_progress': True},
           'workdir': '/a', 'loop': {'num_rounds': 3}}
  now = {'sampling': {'temperature': 1.0, 'show_progress': False},
         'workdir': '/b', 'loop': {'num_rounds': 5}}
  assert workdir_lib.config_differences(saved, now) == []
  now['sampling']['temperature'] = 0.7
  now['extra'] = 1
  assert workdir_lib.config_differences(saved, now) == [
      "config.extra: '<absent>' in the workdir, 1 now",
      'config.sampling.temperature: 1.0 in the workdir, 0.7 now']


def test_derived_seeds_differ_by_round_and_stage_and_are_stable():
  seeds = {workdir_lib.derived_seed(0, r, s) for r in range(4) for s in range(4)}
  assert len(seeds) == 16
  assert workdir_lib.derived_seed(3, 2, 1) == workdir_lib.derived_seed(3, 2, 1)
  assert all(0 <= s < 2**31 for s in seeds)


def test_write_json_atomic_writes_and_replaces(tmp_path):
  path = tmp_path / 'eval.json'
  workdir_lib.write_json_atomic(path, {'pass@1': 0.25})
  workdir_lib.write_json_atomic(str(path), {'pass@1': 0.5, 'num_problems': 3})
  assert json.loads(path.read_text()) == {'pass@1': 0.5, 'num_problems': 3}
  assert os.listdir(tmp_path) == ['eval.json']  # No temporary file left.


def test_write_json_atomic_failure_keeps_the_old_file(tmp_path):
  path = tmp_path / 'eval.json'
  workdir_lib.write_json_atomic(path, {'pass@1': 0.25})
  with pytest.raises(ValueError):
    workdir_lib.write_json_atomic(path, {'pass@1': float('nan')})
  with pytest.raises(TypeError):
    workdir_lib.write_json_atomic(path, {'pass@1': object()})
  assert json.loads(path.read_text()) == {'pass@1': 0.25}
  assert os.listdir(tmp_path) == ['eval.json']


def test_json_files_are_readable_as_the_umask_allows(tmp_path):
  old = os.umask(0o022)
  try:
    workdir_lib.write_json(tmp_path / 'summary.json', {'rounds': []})
  finally:
    os.umask(old)
  assert (tmp_path / 'summary.json').stat().st_mode & 0o777 == 0o644


def _config(temperature=1.0):
  config = ml_collections.ConfigDict()
  config.sampling = ml_collections.ConfigDict({'temperature': temperature})
  config.workdir = '/a'
  return config


def test_a_finished_workdir_is_not_written_on_resume(tmp_path):
  workdir_lib.check_or_save_config(tmp_path, _config())
  path = tmp_path / workdir_lib.CONFIG_FILE
  mtime = path.stat().st_mtime_ns
  os.chmod(tmp_path, 0o555)  # Read-only: a rewrite would fail.
  try:
    workdir_lib.check_or_save_config(tmp_path, _config())
  finally:
    os.chmod(tmp_path, 0o755)
  assert path.stat().st_mtime_ns == mtime


def test_a_moved_workdir_or_fewer_rounds_write_no_config(tmp_path):
  """Resumable differences (the workdir's path, loop.num_rounds) leave the
  saved config, that of the start, untouched."""
  workdir_lib.check_or_save_config(tmp_path, _config())
  (tmp_path / 'round_0').mkdir()
  path = tmp_path / workdir_lib.CONFIG_FILE
  before = (path.read_text(), path.stat().st_mtime_ns)
  moved = _config()
  moved.workdir = '/mounted/read-only/elsewhere'
  moved.loop = ml_collections.ConfigDict({'num_rounds': 0})
  workdir_lib.check_or_save_config(tmp_path, moved)
  assert (path.read_text(), path.stat().st_mtime_ns) == before


def test_another_config_or_an_old_layout_is_refused(tmp_path):
  workdir_lib.check_or_save_config(tmp_path, _config())
  (tmp_path / 'round_0').mkdir()  # Something was computed with it.
  with pytest.raises(config_fields.ConfigError,
                     match='config.sampling.temperature: 1.0 in the workdir, '
                     '0.5 now'):
    workdir_lib.check_or_save_config(tmp_path, _config(0.5))
  path = tmp_path / workdir_lib.CONFIG_FILE
  saved = json.loads(path.read_text())
  del saved[workdir_lib.LAYOUT_KEY]
  path.write_text(json.dumps(saved))
  with pytest.raises(config_fields.ConfigError, match='workdir layout 1'):
    workdir_lib.check_or_save_config(tmp_path, _config())


def test_timings_of_a_rerun_are_merged_not_lost(tmp_path):
  first = workdir_lib.Timings(tmp_path)
  assert first.time('round_1/think', lambda: 7) == 7
  first.save()
  second = workdir_lib.Timings(tmp_path)
  second.time('round_2/think', lambda: None)
  saved = second.save()
  assert set(saved) >= {'round_1/think', 'round_2/think', 'total'}
  # An invocation that timed nothing (a finished run) writes nothing.
  before = (tmp_path / workdir_lib.TIMINGS_FILE).read_text()
  workdir_lib.Timings(tmp_path).save()
  assert (tmp_path / workdir_lib.TIMINGS_FILE).read_text() == before


def test_prepare_removes_temporaries_of_killed_json_writes(tmp_path):
  shards = tmp_path / 'round_1' / 'think'
  shards.mkdir(parents=True)
  stale = [tmp_path / '.summary.json.0a1b2c3d.tmp',
           shards / '.shard_00000.json.deadbeef.tmp']
  for path in stale:
    path.write_text('{"records": [')  # Killed mid-write.
  kept = [shards / 'shard_00001.json', tmp_path / '.processes']
  kept[0].write_text('{}')
  kept[1].mkdir()
  workdir_lib.prepare(_config(), tmp_path)
  assert [p for p in stale if p.exists()] == []
  assert all(p.exists() for p in kept)
