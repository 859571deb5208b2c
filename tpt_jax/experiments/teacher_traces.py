"""A teacher's traces read from a file, for SERT's distillation.

`read_teacher_traces(path, problems)` reads a JSONL file, one JSON object per
line:

  problem_id    the task's id of a train problem (e.g. 'gsm8k/train/12'), or
                instead
  question      its exact question text (up to whitespace);
  completion    the teacher's solution, ending in the task's answer format
                (e.g. 'The answer is 18.'), or `rationale`;
  sample_index  optional: which of the problem's traces this is (default:
                its count among the problem's lines).

or a round dataset directory (`records.write_round`). Other fields are
ignored; lines naming problems outside the run's train problems are counted,
not used. A bad line is an error naming the file, the line and the field.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
import json
import os
import pathlib
from typing import Any

from tpt_jax import records
from tpt_jax.types import Problem

# The problem, the solution: accepted field names, in order of preference.
PROBLEM_FIELDS = ('problem_id', 'question')
COMPLETION_FIELDS = ('completion', 'rationale')


class TeacherTracesError(ValueError):
  """Teacher traces that cannot be used; the message names file and line."""


def _jsonl_rows(path: pathlib.Path):
  """(where, object) per non-blank line of a JSONL file."""
  with path.open(encoding='utf-8') as f:
    for line_number, line in enumerate(f, start=1):
      if not line.strip():
        continue
      where = f'{path}:{line_number}'
      try:
        row = json.loads(line)
      except json.JSONDecodeError as e:
        raise TeacherTracesError(
            f'{where}: not valid JSON ({e.msg} at column {e.colno}).') from e
      if not isinstance(row, dict):
        raise TeacherTracesError(
            f'{where}: a line must be a JSON object with "problem_id" (or '
            f'"question") and "completion" (or "rationale"), got '
            f'{type(row).__name__}.')
      yield where, row


def _first_field(row: Mapping[str, Any], names: Sequence[str], where: str
                 ) -> tuple[str, str]:
  """(name, value) of the first of `names` in `row`; its value must be a
  string."""
  for name in names:
    if name in row and row[name] is not None:
      if not isinstance(row[name], str):
        raise TeacherTracesError(
            f'{where}: field "{name}" must be a string, got '
            f'{type(row[name]).__name__}.')
      return name, row[name]
  alternatives = ' (or '.join(f'"{n}"' for n in names) + ')' * (
      len(names) - 1)
  raise TeacherTracesError(f'{where}: missing field {alternatives}.')


def _whitespace_normalized(text: str) -> str:
  return ' '.join(text.split())


def read_teacher_traces(path: str | os.PathLike[str],
                        problems: Sequence[Problem]
                        ) -> tuple[list[dict[str, Any]], int]:
  """Reads teacher traces (JSONL or a round dataset) matched to `problems`.

  Args:
    path: a JSONL file (schema in the module docstring) or a round dataset
      directory written by `records.write_round`.
    problems: the run's train problems.

  Returns:
    ({'problem_id', 'sample_index', 'completion'} per trace of one of
    `problems`, in file order; the number of traces naming other problems).

  Raises:
    FileNotFoundError: `path` does not exist.
    TeacherTracesError: a malformed line (naming the file, the line and the
      field), a repeated (problem, sample_index), or no trace matching any
      of `problems`.
  """
  path = pathlib.Path(path)
  if path.is_dir():
    if not records.is_round_dataset(path):
      raise TeacherTracesError(
          f'Teacher traces {path} is a directory but not a round dataset '
          '(records.write_round writes dataset_info.json); give a JSONL file '
          'or such a directory.')
    rows = [(f'{path} record {index}', row)
            for index, row in enumerate(records.read_round(path))]
  elif path.is_file():
    rows = list(_jsonl_rows(path))
  else:
    raise FileNotFoundError(f'Teacher traces {path} do not exist.')
  by_id = {p.problem_id: p for p in problems}
  by_question = {_whitespace_normalized(p.question): p for p in problems}
  traces: list[dict[str, Any]] = []
  seen: dict[tuple[str, int], str] = {}
  counts: dict[str, int] = {}
  unmatched = 0
  for where, row in rows:
    key, value = _first_field(row, PROBLEM_FIELDS, where)
    _, completion = _first_field(row, COMPLETION_FIELDS, where)
    problem = (by_id.get(value) if key == 'problem_id' else
               by_question.get(_whitespace_normalized(value)))
    if problem is None:
      unmatched += 1
      continue
    sample_index = row.get('sample_index')
    if sample_index is None:
      sample_index = counts.get(problem.problem_id, 0)
    elif isinstance(sample_index, bool) or not isinstance(
        sample_index, int) or sample_index < 0:
      raise TeacherTracesError(
          f'{where}: field "sample_index" must be an int >= 0, got '
          f'{sample_index!r}.')
    counts[problem.problem_id] = counts.get(problem.problem_id, 0) + 1
    trace_key = (problem.problem_id, sample_index)
    if trace_key in seen:
      raise TeacherTracesError(
          f'{where}: problem {problem.problem_id!r} sample {sample_index} '
          f'repeats {seen[trace_key]}.')
    seen[trace_key] = where
    traces.append({'problem_id': problem.problem_id,
                   'sample_index': sample_index, 'completion': completion})
  if rows and not traces:
    raise TeacherTracesError(
        f'None of the {len(rows)} teacher traces in {path} names one of the '
        f'run\'s {len(problems)} train problems; "problem_id" must be the '
        f'task\'s id (e.g. {problems[0].problem_id!r}) or "question" its '
        'exact text.' if problems else
        f'The run has no train problems to match the traces in {path} to.')
  return traces, unmatched
