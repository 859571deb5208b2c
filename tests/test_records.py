"""Tests of the per-round TFDS records."""

import json
import os
import pathlib
import signal
import subprocess
import sys
import textwrap

import pytest
import tensorflow_datasets as tfds

from tpt_jax import types
from tpt_jax import records

REPO_ROOT = pathlib.Path(__file__).resolve().parents[1]


def _traces():
  return [
      types.Trace(problem_id='gsm8k/train/1', sample_index=3,
                  prompt='Question: 2+2?\nAnswer:', completion='2+2=4\n#### 4',
                  correct=True, extracted_answer='4', num_tokens=7,
                  question='2+2?', reference_answer='4', round=1,
                  sampler_settings='{"temperature": 0.7}',
                  checkpoint_id='ckpt/round_0'),
      types.Trace(problem_id='gsm8k/train/2', sample_index=0,
                  prompt='Question: ünïcödé 🌍?', completion='',
                  correct=True, extracted_answer='', num_tokens=None,
                  question='ünïcödé 🌍?', reference_answer='-0.5',
                  round=1,
                  checkpoint_id='ckpt/round_0'),
      types.Trace(problem_id='mbpp/601', sample_index=11,
                  prompt='p' * 10_000, completion='def f():\n  return "\\x00"',
                  correct=True, extracted_answer='passed', num_tokens=0,
                  round=1),
  ]


def _expected(traces):
  return [{
      'problem_id': t.problem_id, 'question': t.question, 'prompt': t.prompt,
      'completion': t.completion, 'reference_answer': t.reference_answer,
      'extracted_answer': t.extracted_answer,
      'sampler_settings': t.sampler_settings,
      'checkpoint_id': t.checkpoint_id, 'round': t.round,
      'sample_index': t.sample_index, 'num_tokens': t.num_tokens,
  } for t in traces]


def _decode(example):
  out = {}
  for key, value in example.items():
    value = value.numpy() if hasattr(value, 'numpy') else value
    out[key] = value.decode('utf-8') if isinstance(value, bytes) else int(value)
  if out['num_tokens'] == -1:
    out['num_tokens'] = None
  return out


@pytest.fixture(scope='module')
def written(tmp_path_factory):
  directory = tmp_path_factory.mktemp('records') / 'round_001'
  return records.write_round(_traces(), directory)


def test_round_trip_with_the_python_reader(written):
  assert records.read_round(written) == _expected(_traces())


def test_round_trip_with_as_dataset(written):
  builder = tfds.builder_from_directory(os.fspath(written))
  examples = [_decode(e) for e in builder.as_dataset(split='train')]
  assert examples == _expected(_traces())
  assert builder.info.splits['train'].num_examples == 3


def test_round_trip_with_as_data_source(written):
  source = tfds.builder_from_directory(os.fspath(written)).as_data_source(
      split='train')
  assert len(source) == 3
  assert [_decode(source[i]) for i in range(len(source))] == _expected(
      _traces())


def test_records_convert_back_to_traces(written):
  traces = [records.to_trace(r) for r in records.read_round(written)]
  originals = [types.Trace(**{**t.__dict__, 'correct': None})
               for t in _traces()]
  assert traces == originals


def test_shards_are_deterministic(tmp_path):
  first = records.write_round(_traces(), tmp_path / 'a')
  second = records.write_round(_traces(), tmp_path / 'b')
  shards = sorted(p.name for p in first.iterdir() if 'tpt_round-' in p.name)
  assert any('.tfrecord-' in s for s in shards)
  assert any('.array_record-' in s for s in shards)
  for name in shards:
    assert (first / name).read_bytes() == (second / name).read_bytes(), name


def _write_in_a_new_process(directory):
  """`write_round(_traces(), directory)` in a fresh interpreter."""
  script = ('import sys; import test_records as t; from tpt_jax import '
            'records; records.write_round(t._traces(), sys.argv[1])')
  env = dict(os.environ,
             PYTHONPATH=f'{REPO_ROOT}{os.pathsep}{REPO_ROOT / "tests"}')
  return subprocess.Popen([sys.executable, '-c', script, str(directory)],
                          env=env, cwd=REPO_ROOT, stderr=subprocess.PIPE)


def test_every_file_is_byte_identical_between_processes(tmp_path):
  """Two processes writing the same traces write the same bytes.

  (Protobuf serializes a tf.train.Example's feature map in an order that
  depends on the process; in one process two writes always agree.)
  """
  writers = [_write_in_a_new_process(tmp_path / name) for name in 'ab']
  for writer in writers:
    _, stderr = writer.communicate(timeout=300)
    assert writer.returncode == 0, stderr[-2000:]
  names = sorted(p.name for p in (tmp_path / 'a').iterdir())
  assert names == sorted(p.name for p in (tmp_path / 'b').iterdir())
  assert any('.tfrecord-' in name for name in names)
  assert any('.array_record-' in name for name in names)
  for name in names:
    assert ((tmp_path / 'a' / name).read_bytes() ==
            (tmp_path / 'b' / name).read_bytes()), name


def test_examples_are_serialized_with_their_features_in_key_order(written):
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  shards = sorted(p for p in written.iterdir() if '.tfrecord-' in p.name)
  serialized = [r.numpy() for shard in shards
                for r in tf.data.TFRecordDataset(os.fspath(shard))]
  assert len(serialized) == len(_traces())
  for record in serialized:
    example = tf.train.Example.FromString(record)
    assert record == example.SerializeToString(deterministic=True)
  source = tfds.builder_from_directory(os.fspath(written)).as_data_source(
      split='train')
  # The ArrayRecord copy holds the same bytes.
  assert [source.data_source[i] for i in range(len(source))] == serialized


def test_round_settings_override_the_traces(tmp_path):
  path = records.write_round(
      _traces(), tmp_path / 'round_002', round_index=2, checkpoint_id='ck-7',
      sampler_settings={'top_k': 0, 'temperature': 1.0})
  rows = records.read_round(path)
  assert {r['round'] for r in rows} == {2}
  assert {r['checkpoint_id'] for r in rows} == {'ck-7'}
  assert {r['sampler_settings'] for r in rows} == {
      json.dumps({'temperature': 1.0, 'top_k': 0})}


def test_existing_round_is_not_replaced_by_default(written):
  before = records.read_round(written)
  with pytest.raises(FileExistsError, match='overwrite'):
    records.write_round(_traces()[:1], written)
  assert records.read_round(written) == before


def test_overwrite_replaces_the_round(tmp_path):
  path = records.write_round(_traces(), tmp_path / 'r')
  records.write_round(_traces()[:1], path, overwrite=True)
  assert records.read_round(path) == _expected(_traces()[:1])
  assert sorted(p.name for p in tmp_path.iterdir()) == ['r']


def test_empty_round_is_refused(tmp_path):
  with pytest.raises(ValueError, match='No traces'):
    records.write_round([], tmp_path / 'r')
  assert not (tmp_path / 'r').exists()


def test_bad_trace_is_refused_before_writing(tmp_path):
  bad = types.Trace(problem_id='p', sample_index=0, prompt=None,
                    completion='x')
  with pytest.raises(TypeError, match='prompt must be a string'):
    records.write_round([bad], tmp_path / 'r')
  assert list(tmp_path.iterdir()) == []


def test_failure_midway_leaves_no_dataset_and_keeps_the_old_one(
    tmp_path, monkeypatch):
  previous = records.write_round(_traces()[:1], tmp_path / 'kept')

  def crash(builder):
    # The TFRecord shards are written at this point: a crash mid-write.
    assert any('.tfrecord-' in p.name
               for p in pathlib.Path(builder.data_dir).iterdir())
    raise RuntimeError('disk on fire')

  monkeypatch.setattr(records, '_add_array_record_copy', crash)
  with pytest.raises(RuntimeError, match='disk on fire'):
    records.write_round(_traces(), tmp_path / 'fresh')
  with pytest.raises(RuntimeError, match='disk on fire'):
    records.write_round(_traces(), previous, overwrite=True)
  assert not (tmp_path / 'fresh').exists()
  assert records.read_round(previous) == _expected(_traces()[:1])
  assert sorted(p.name for p in tmp_path.iterdir()) == ['kept']


def test_killed_write_leaves_no_dataset_and_keeps_the_old_one(tmp_path):
  previous = records.write_round(_traces()[:1], tmp_path / 'round')
  script = textwrap.dedent(f'''
      import os, signal, sys
      sys.path.insert(0, {str(REPO_ROOT)!r})
      from tpt_jax import types, records
      def die(builder):
        os.kill(os.getpid(), signal.SIGKILL)
      records._add_array_record_copy = die
      traces = [types.Trace(problem_id=str(i), sample_index=i, prompt='p',
                            completion='c') for i in range(50)]
      records.write_round(traces, {str(previous)!r}, overwrite=True)
  ''')
  # The writer kills itself once its TFRecord shards are written, while
  # replacing a previous round.
  result = subprocess.run([sys.executable, '-c', script], capture_output=True,
                          timeout=300)
  assert result.returncode == -signal.SIGKILL, result.stderr[-2000:]
  # The previous round is intact; only hidden staging directories may be
  # left beside it, never a visible dataset.
  assert records.read_round(previous) == _expected(_traces()[:1])
  builder = tfds.builder_from_directory(os.fspath(previous))
  assert builder.info.splits['train'].num_examples == 1
  visible = sorted(p.name for p in tmp_path.iterdir()
                   if not p.name.startswith('.'))
  assert visible == ['round']


def test_a_heldout_split_is_written_beside_the_training_one(tmp_path):
  traces = _traces()
  path = records.write_round(traces[:2], tmp_path / 'round',
                             extra_splits={records.HELDOUT_SPLIT: traces[2:]})
  assert records.split_names(path) == ['heldout', 'train']
  assert records.read_round(path) == _expected(traces[:2])
  assert records.read_round(path, split='heldout') == _expected(traces[2:])
  # The training split's shards are those of a round without held-out ones.
  alone = records.write_round(traces[:2], tmp_path / 'alone')
  train_shards = sorted(p.name for p in alone.iterdir()
                        if 'tpt_round-train.' in p.name)
  assert train_shards
  for name in train_shards:
    assert (path / name).read_bytes() == (alone / name).read_bytes(), name
  # An empty extra split is not written (TFDS cannot store one).
  empty = records.write_round(traces, tmp_path / 'empty',
                              extra_splits={records.HELDOUT_SPLIT: []})
  assert records.split_names(empty) == ['train']
  with pytest.raises(ValueError, match="'train' is given twice"):
    records.write_round(traces, tmp_path / 'twice',
                        extra_splits={'train': traces})
