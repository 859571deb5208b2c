"""A round's surviving traces as a TFDS dataset, one directory per round.

    path = records.write_round(kept_traces, workdir / 'records' / 'round_001')
    builder = tfds.builder_from_directory(path)
    builder.as_dataset(split='train')     # tf.data, from TFRecord shards
    builder.as_data_source(split='train')  # random access, ArrayRecord shards
    records.read_round(path)                # python dicts (for the Train stage)
    records.read_round(path, split=records.HELDOUT_SPLIT)  # if written

A round may have a second split, 'heldout': survivors set aside from
training for an evaluation loss (`config.prune.num_heldout_examples`),
written with the training split in the same directory.

The directory holds the dataset twice, as TFRecord (what `as_dataset` reads
in this TFDS version) and as ArrayRecord (what `as_data_source` needs), with
identical examples in identical order. Examples are stored in the order
given, without shuffling, and each `tf.train.Example` is serialized with its
features in key order: TFDS serializes the feature map in protobuf's map
order, which differs from one process to the next, so its TFRecord shards
are rewritten in that canonical form before the ArrayRecord copy is made.
The same traces therefore give the same bytes in every file of the
directory (shards, `dataset_info.json`, `features.json`), in any process,
with the same library versions.

Writing is atomic: everything is written into a hidden staging directory
beside the target (`.NAME.tmp-*`) and renamed into place at the end. A write
that fails or is killed leaves no directory at the target (a killed one may
leave its staging directory, which nothing reads and which can be deleted),
and a dataset already at the target stays as it was unless the write
succeeds with `overwrite=True`.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
import json
import os
import pathlib
import shutil
import tempfile
from typing import Any, Callable
import uuid

import numpy as np
import tensorflow_datasets as tfds

from tpt_jax.types import Trace

DATASET_NAME = 'tpt_round'
VERSION = '1.0.0'
DEFAULT_SPLIT = 'train'
# Survivors held out of training (for the evaluation loss).
HELDOUT_SPLIT = 'heldout'
# Text features, in the order of Trace where they come from.
TEXT_FEATURES = ('problem_id', 'question', 'prompt', 'completion',
                 'reference_answer', 'extracted_answer', 'sampler_settings',
                 'checkpoint_id')
INT_FEATURES = ('round', 'sample_index', 'num_tokens')
# num_tokens is stored as -1 when unknown.
_UNKNOWN_NUM_TOKENS = -1
_TFRECORD_INFIX = '.tfrecord-'
_ARRAY_RECORD_INFIX = '.array_record-'


def features() -> tfds.features.FeaturesDict:
  """The features of one record."""
  spec = {name: tfds.features.Text() for name in TEXT_FEATURES}
  spec.update({name: tfds.features.Scalar(dtype=np.int64)
               for name in INT_FEATURES})
  return tfds.features.FeaturesDict(spec)


class _RoundBuilder(tfds.dataset_builders.AdhocBuilder,
                    skip_registration=True):
  """TFDS's builder for in-memory examples, without a checksums file.

  `code_path` locates a builder's checksums file; builders made at run time
  have none, and looking for one needs a package TFDS does not declare.
  """
  code_path = None


def _as_example(trace: Trace, overrides: Mapping[str, Any]
                ) -> dict[str, Any]:
  values = {
      'problem_id': trace.problem_id,
      'question': trace.question,
      'prompt': trace.prompt,
      'completion': trace.completion,
      'reference_answer': trace.reference_answer,
      'extracted_answer': trace.extracted_answer or '',
      'sampler_settings': trace.sampler_settings,
      'checkpoint_id': trace.checkpoint_id,
      'round': trace.round,
      'sample_index': trace.sample_index,
      'num_tokens': (_UNKNOWN_NUM_TOKENS if trace.num_tokens is None
                     else trace.num_tokens),
  }
  values.update(overrides)
  for name in TEXT_FEATURES:
    if not isinstance(values[name], str):
      raise TypeError(f'Trace ({trace.problem_id}, sample '
                      f'{trace.sample_index}): {name} must be a string, got '
                      f'{type(values[name]).__name__}.')
  for name in INT_FEATURES:
    if isinstance(values[name], bool) or not isinstance(
        values[name], (int, np.integer)):
      raise TypeError(f'Trace ({trace.problem_id}, sample '
                      f'{trace.sample_index}): {name} must be an int, got '
                      f'{type(values[name]).__name__}.')
  return values


def _sampler_settings_text(settings: str | Mapping[str, Any]) -> str:
  if isinstance(settings, str):
    return settings
  return json.dumps(dict(settings), sort_keys=True)


def _keyed_examples(traces: Sequence[Trace],
                    overrides: Mapping[str, Any]
                    ) -> Iterator[tuple[str, dict[str, Any]]]:
  for index, trace in enumerate(traces):
    # Keys only need to be unique: shuffling is off, order is as given.
    yield f'{index:012d}', _as_example(trace, overrides)


def _add_array_record_copy(builder: tfds.core.DatasetBuilder) -> None:
  """Rewrites each TFRecord shard in canonical form (features in key order),
  writes an ArrayRecord copy of it and records that copy."""
  # pylint: disable=g-import-not-at-top
  import tensorflow as tf
  from tensorflow_datasets.core import file_adapters
  # pylint: enable=g-import-not-at-top
  data_dir = pathlib.Path(builder.data_dir)
  for shard in sorted(data_dir.iterdir()):
    if _TFRECORD_INFIX not in shard.name:
      continue
    # (Inside the staging directory: nothing reads it before the rename.)
    canonical = shard.with_name(shard.name + '.canonical')
    file_adapters.TfRecordFileAdapter.write_examples(
        canonical,
        ((None, tf.train.Example.FromString(record.numpy()).SerializeToString(
            deterministic=True))
         for record in tf.data.TFRecordDataset(os.fspath(shard))))
    os.replace(canonical, shard)
    serialized = (record.numpy() for record in
                  tf.data.TFRecordDataset(os.fspath(shard)))
    file_adapters.ArrayRecordFileAdapter.write_examples(
        data_dir / shard.name.replace(_TFRECORD_INFIX, _ARRAY_RECORD_INFIX),
        ((None, example) for example in serialized))
  info = builder.info
  info.add_alternative_file_format(file_adapters.FileFormat.ARRAY_RECORD)
  info.write_to_directory(data_dir)


def write_round(traces: Sequence[Trace],
                directory: str | os.PathLike[str],
                *,
                round_index: int | None = None,
                checkpoint_id: str | None = None,
                sampler_settings: str | Mapping[str, Any] | None = None,
                split: str = DEFAULT_SPLIT,
                extra_splits: Mapping[str, Sequence[Trace]] | None = None,
                overwrite: bool = False,
                before_commit: Callable[[], None] | None = None
                ) -> pathlib.Path:
  """Writes `traces` as a TFDS dataset at `directory`, atomically.

  Args:
    traces: the round's survivors, stored in this order.
    directory: the round's directory (created; its parent too).
    round_index: if set, replaces each trace's `round`.
    checkpoint_id: if set, replaces each trace's `checkpoint_id`.
    sampler_settings: if set (a JSON string or a dict), replaces each trace's
      `sampler_settings`.
    split: the split name.
    extra_splits: more splits of the same dataset (e.g. HELDOUT_SPLIT), by
      name, each stored in the order given with the same overrides; an
      empty one is not written.
    overwrite: replace a dataset already at `directory`; otherwise that is an
      error.
    before_commit: called once the dataset is fully written in its staging
      directory, just before it is moved to `directory` (progress and
      fault-injection hooks).

  Returns:
    The directory, for `tfds.builder_from_directory`.
  """
  target = pathlib.Path(directory).absolute()
  if not traces:
    raise ValueError(f'No traces to write to {target}: TFDS cannot store an '
                     'empty dataset.')
  if target.exists() and not overwrite:
    raise FileExistsError(
        f'{target} already exists; pass overwrite=True to replace it.')
  overrides: dict[str, Any] = {}
  if round_index is not None:
    overrides['round'] = round_index
  if checkpoint_id is not None:
    overrides['checkpoint_id'] = checkpoint_id
  if sampler_settings is not None:
    overrides['sampler_settings'] = _sampler_settings_text(sampler_settings)
  splits = {split: traces}
  for name, split_traces in (extra_splits or {}).items():
    if name in splits:
      raise ValueError(f'Split {name!r} is given twice.')
    if split_traces:
      splits[name] = split_traces
  # Check every trace before writing anything.
  for split_traces in splits.values():
    for _, _ in _keyed_examples(split_traces, overrides):
      pass

  target.parent.mkdir(parents=True, exist_ok=True)
  staging = pathlib.Path(tempfile.mkdtemp(prefix=f'.{target.name}.tmp-',
                                          dir=target.parent))
  try:
    builder = _RoundBuilder(
        name=DATASET_NAME, version=VERSION, features=features(),
        split_datasets={name: list(_keyed_examples(split_traces, overrides))
                        for name, split_traces in splits.items()},
        data_dir=os.fspath(staging),
        description='Surviving traces of one Think-Prune-Train round.',
        disable_shuffling=True)
    builder.download_and_prepare(file_format='tfrecord')
    _add_array_record_copy(builder)
    written = pathlib.Path(builder.data_dir)
    if before_commit is not None:
      before_commit()
    if target.exists():
      previous = target.parent / f'.{target.name}.old-{uuid.uuid4().hex}'
      os.rename(target, previous)
      os.rename(written, target)
      shutil.rmtree(previous, ignore_errors=True)
    else:
      os.rename(written, target)
  finally:
    shutil.rmtree(staging, ignore_errors=True)
  return target


def is_round_dataset(directory: str | os.PathLike[str]) -> bool:
  """Whether `directory` holds a complete dataset written by write_round."""
  return (pathlib.Path(directory) / 'dataset_info.json').is_file()


def split_names(directory: str | os.PathLike[str]) -> list[str]:
  """The splits of the round dataset at `directory`, sorted."""
  if not is_round_dataset(directory):
    raise FileNotFoundError(
        f'{directory} is not a round dataset (no dataset_info.json).')
  return sorted(tfds.builder_from_directory(os.fspath(directory)).info.splits)


def _decode(value: Any) -> Any:
  if isinstance(value, bytes):
    return value.decode('utf-8')
  if isinstance(value, np.ndarray) and value.shape == ():
    value = value.item()
  if isinstance(value, np.integer):
    return int(value)
  return value


def read_round(directory: str | os.PathLike[str],
               split: str = DEFAULT_SPLIT) -> list[dict[str, Any]]:
  """The records of a round as python dicts (str and int values), in order.

  Keys are the fields of `Trace` that records keep; `num_tokens` is None
  when it was not known.
  """
  if not is_round_dataset(directory):
    raise FileNotFoundError(
        f'{directory} is not a round dataset (no dataset_info.json).')
  builder = tfds.builder_from_directory(os.fspath(directory))
  data_source = builder.as_data_source(split=split)
  records = []
  for index in range(len(data_source)):
    record = {name: _decode(value)
              for name, value in data_source[index].items()}
    if record['num_tokens'] == _UNKNOWN_NUM_TOKENS:
      record['num_tokens'] = None
    records.append(record)
  return records


def to_trace(record: Mapping[str, Any]) -> Trace:
  """A `Trace` from a `read_round` record (verdicts are not stored)."""
  return Trace(**{name: record[name] for name in
                        (*TEXT_FEATURES, *INT_FEATURES)})
