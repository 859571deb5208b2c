"""Problem sources: GSM8K, MBPP and HumanEval as lists of `Problem`.

Every loader returns problems in file order with a stable `problem_id`, so a
problem keeps its id across rounds and runs. Malformed input lines are never
dropped silently: with `on_error='raise'` the load fails naming the file and
line; with `on_error='skip'` the line is skipped and a warning lists how many
lines were skipped and where.

GSM8K comes from its JSONL files (`question`, `answer` ending in `#### N`, N a
number; `Problem.raw_answer` keeps N's text) or from TFDS (`gsm8k`); MBPP
(`text`, `code`, `test_list`, standard task-id splits) and HumanEval
(`prompt`, `test`, `entry_point`) from their JSONL files (HumanEval's may be
gzipped).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
import dataclasses
import gzip
import json
import logging
import os
import pathlib
from typing import Any

import ml_collections

from tpt_jax.types import Problem
from tpt_jax.verify import math_answers

ON_ERROR_CHOICES = ('raise', 'skip')

# MBPP's standard splits, by task id (inclusive ranges), as in the paper and
# in TFDS's `mbpp`: 1-10 are the few-shot prompt problems.
MBPP_SPLITS: Mapping[str, tuple[int, int]] = {
    'prompt': (1, 10),
    'test': (11, 510),
    'validation': (511, 600),
    'train': (601, 974),
}

# Locations of malformed lines listed in a skip warning; the count is complete.
_MAX_LOCATIONS_IN_WARNING = 10


class MalformedInputError(ValueError):
  """A line of an input file that cannot be read; names the file and line."""


def default_config() -> ml_collections.ConfigDict:
  """Defaults of `config.task.sources`."""
  config = ml_collections.ConfigDict()
  # What a malformed input line does: 'raise' (the load fails, naming the file
  # and line) or 'skip' (the line is left out and a warning lists it).
  config.on_malformed_line = 'raise'
  return config


@dataclasses.dataclass(frozen=True)
class _Malformed:
  location: str
  reason: str


def _open_binary(path: pathlib.Path):
  if path.suffix == '.gz':
    return gzip.open(path, 'rb')
  return open(path, 'rb')


def _read_jsonl(
    path: str | os.PathLike[str],
    parse: Callable[[dict[str, Any], int], Problem | None],
    on_error: str,
) -> list[Problem]:
  """Parses each non-blank line of `path` with `parse(record, record_index)`.

  `record_index` counts non-blank lines from 0 (malformed ones included, so
  skipping a bad line does not shift the ids of the lines after it). `parse`
  returns None to leave a record out, and raises ValueError (or KeyError /
  TypeError) for a malformed one, which is raised or skipped as `on_error`
  says. A file without a single non-blank line is an error (naming it)
  whatever `on_error` says.
  """
  if on_error not in ON_ERROR_CHOICES:
    raise ValueError(
        f'on_error={on_error!r} is not one of {", ".join(ON_ERROR_CHOICES)}.')
  path = pathlib.Path(path)
  if not path.is_file():
    raise FileNotFoundError(f'Problem file {path} does not exist.')
  problems = []
  malformed = []
  with _open_binary(path) as f:
    line_number = 0
    record_index = -1
    while True:
      try:
        raw_line = f.readline()
      except (OSError, EOFError) as e:
        # The rest of the file cannot be read (e.g. a truncated gzip).
        malformed.append(_Malformed(f'{path}:{line_number + 1}',
                                    f'unreadable ({e})'))
        break
      if not raw_line:
        break
      line_number += 1
      if not raw_line.strip():
        continue
      record_index += 1
      try:
        record = json.loads(raw_line.decode('utf-8'))
        if not isinstance(record, dict):
          raise ValueError(
              f'expected a JSON object, got {type(record).__name__}')
        problem = parse(record, record_index)
        if problem is not None:
          problems.append(problem)
      except (ValueError, KeyError, TypeError, RecursionError) as e:
        # (UnicodeDecodeError and json's errors are ValueErrors.)
        reason = (f'missing field {e}' if isinstance(e, KeyError) else str(e))
        malformed.append(_Malformed(f'{path}:{line_number}', reason))
        if on_error == 'raise':
          break
  if record_index < 0 and not malformed:
    # Not a malformed line but no data at all: a split of 0 problems would
    # run every stage on nothing.
    raise MalformedInputError(f'{path}: the file holds no records.')
  if malformed:
    if on_error == 'raise':
      first = malformed[0]
      raise MalformedInputError(f'{first.location}: {first.reason}')
    shown = '; '.join(f'{m.location}: {m.reason}'
                      for m in malformed[:_MAX_LOCATIONS_IN_WARNING])
    more = len(malformed) - _MAX_LOCATIONS_IN_WARNING
    logging.warning('Skipped %d malformed line(s) of %s: %s%s', len(malformed),
                    path, shown, f' (and {more} more)' if more > 0 else '')
  return problems


def _string_field(record: Mapping[str, Any], name: str) -> str:
  value = record[name]
  if not isinstance(value, str):
    raise TypeError(f'field {name!r} must be a string, got '
                    f'{type(value).__name__}')
  return value


def _string_list_field(record: Mapping[str, Any], name: str) -> tuple[str, ...]:
  value = record[name]
  if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
    raise TypeError(f'field {name!r} must be a list of strings')
  return tuple(value)


def gsm8k_final_answer(solution: str) -> str:
  """The text after the last '####' of a GSM8K solution (the reference)."""
  marker = solution.rfind('####')
  if marker < 0:
    raise ValueError("GSM8K answer has no '#### <final answer>' line")
  final = solution[marker + len('####'):].strip()
  if not final:
    raise ValueError("GSM8K answer has an empty '####' line")
  return final


def _gsm8k_problem(record: Mapping[str, Any], split: str,
                   index: int) -> Problem:
  """The record as GSM8K writes it: `answer` and `raw_answer` are both the
  text after '####' (the task normalizes `answer`); a final answer that is
  not a number is malformed."""
  question = _string_field(record, 'question')
  solution = _string_field(record, 'answer')
  final = gsm8k_final_answer(solution)
  if math_answers.parse_number(final) is None:
    raise ValueError(f'GSM8K answer {"#### " + final!r} is not a number')
  return Problem(
      problem_id=f'gsm8k/{split}/{index}',
      question=question,
      answer=final,
      solution=solution,
      source='gsm8k',
      raw_answer=final,
  )


def load_gsm8k(path_or_tfds: str | os.PathLike[str],
               split: str = 'train',
               *,
               on_error: str = 'raise',
               tfds_data_dir: str | None = None,
               convert: Callable[[Problem], Problem] | None = None
               ) -> list[Problem]:
  """Loads GSM8K from JSONL or from TFDS.

  Args:
    path_or_tfds: a JSONL file, a directory holding `{split}.jsonl`, or 'tfds'
      to read TFDS's `gsm8k` (prepared in `tfds_data_dir`).
    split: 'train' or 'test'; part of each problem id
      (`gsm8k/{split}/{index}`, index = position in the split from 0).
    on_error: 'raise' or 'skip' for malformed lines (JSONL only).
    tfds_data_dir: TFDS data dir when reading from TFDS.
    convert: applied to each problem as it is read (a task's own checks and
      formatting); a ValueError it raises makes the record malformed, named
      by file and line.

  Returns:
    The problems in file order.
  """
  convert = convert or (lambda problem: problem)
  if str(path_or_tfds) == 'tfds':
    return _load_gsm8k_tfds(split, tfds_data_dir, convert)
  path = pathlib.Path(path_or_tfds)
  if path.is_dir():
    path = path / f'{split}.jsonl'
  # The id is the record's position in the file (blank lines excluded), which
  # is also its position in TFDS's split.
  return _read_jsonl(
      path,
      lambda record, index: convert(_gsm8k_problem(record, split, index)),
      on_error)


def _load_gsm8k_tfds(split: str, data_dir: str | None,
                     convert: Callable[[Problem], Problem]) -> list[Problem]:
  """Reads TFDS's `gsm8k` in its stored order (no download: prepare first)."""
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  dataset = tfds.load('gsm8k', split=split, data_dir=data_dir,
                      shuffle_files=False, download=False)
  problems = []
  for index, example in enumerate(tfds.as_numpy(dataset)):
    record = {k: v.decode('utf-8') if isinstance(v, bytes) else v
              for k, v in example.items()}
    try:
      problems.append(convert(_gsm8k_problem(record, split, index)))
    except (ValueError, KeyError, TypeError) as e:
      raise MalformedInputError(
          f'tfds gsm8k[{split}] example {index}: {e}') from e
  return problems


def _mbpp_problem(record: Mapping[str, Any],
                  task_ids: tuple[int, int] | None) -> Problem | None:
  task_id = record['task_id']
  if isinstance(task_id, bool) or not isinstance(task_id, int):
    raise TypeError('field task_id must be an integer')
  if task_ids is not None and not task_ids[0] <= task_id <= task_ids[1]:
    return None
  code = _string_field(record, 'code')
  return Problem(
      problem_id=f'mbpp/{task_id}',
      question=_string_field(record, 'text'),
      answer=code,
      solution=code,
      test_list=_string_list_field(record, 'test_list'),
      test_setup_code=str(record.get('test_setup_code') or ''),
      source='mbpp',
  )


def load_mbpp(path: str | os.PathLike[str],
              split: str = 'train',
              *,
              on_error: str = 'raise') -> list[Problem]:
  """Loads MBPP from its JSONL file, keeping the tasks of `split`.

  Args:
    path: `mbpp.jsonl` (all 974 tasks).
    split: one of MBPP_SPLITS ('train' 601-974, 'test' 11-510, 'validation'
      511-600, 'prompt' 1-10) or 'full' for every task.
    on_error: 'raise' or 'skip' for malformed lines.

  Returns:
    The split's problems in file order (ids `mbpp/{task_id}`).
  """
  if split != 'full' and split not in MBPP_SPLITS:
    raise ValueError(f'MBPP split {split!r} is not one of '
                     f'{", ".join([*MBPP_SPLITS, "full"])}.')
  task_ids = None if split == 'full' else MBPP_SPLITS[split]
  return _read_jsonl(path,
                     lambda record, _: _mbpp_problem(record, task_ids),
                     on_error)


def _humaneval_problem(record: Mapping[str, Any]) -> Problem:
  prompt = _string_field(record, 'prompt')
  solution = _string_field(record, 'canonical_solution') if (
      'canonical_solution' in record) else ''
  entry_point = _string_field(record, 'entry_point')
  if not entry_point.isidentifier():
    raise ValueError(f'entry_point {entry_point!r} is not a Python name')
  return Problem(
      problem_id=_string_field(record, 'task_id'),
      question=prompt,
      answer=solution,
      solution=prompt + solution,
      test_code=_string_field(record, 'test'),
      entry_point=entry_point,
      source='humaneval',
  )


def load_humaneval(path: str | os.PathLike[str],
                   *,
                   on_error: str = 'raise') -> list[Problem]:
  """Loads HumanEval from `HumanEval.jsonl(.gz)` (ids 'HumanEval/N')."""
  return _read_jsonl(path, lambda record, _: _humaneval_problem(record),
                     on_error)

