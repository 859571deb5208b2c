r"""Checks a model's outputs from the command line.

  python -m tpt_jax.verify --task=gsm8k --input=in.jsonl --output=out.jsonl

Input: one JSON object per line.
  --task=gsm8k / --task=math: {"completion": ..., "answer": ...}; the answer is
    a bare value or a full solution (GSM8K's ending in `#### N`, MATH's with
    `\boxed{}`).
  --task=code: {"program": ..., "test": ...}; the test is Python that raises
    on failure, run after the program in its namespace (optional
    "entry_point": then `check(<entry_point>)` is called too, as HumanEval).
  --task=stdio: {"program": ..., "tests": [{"input": ..., "output": ...}],
    "time_limit_s"?: per test, default 2}; judged on stdin/stdout
    (`verify.stdio_judge`); adds "status" (passed, wrong_answer, ...),
    "first_failed_test" (index, or null) and "reason".
Output: each input object plus "correct" and "extracted" (math) or "status"
and "reason" (code), in input order. The output file is written atomically:
it appears complete or not at all. The last line printed is a summary:
`correct: C/T (P%)`.

--task=gsm8k --grader=paper_strict grades by the TPT authors' protocol
instead of ours (see tpt_jax/verify/graders.py).

Exit status: 0 done, 2 bad arguments, bad input (the message names the file
and line) or an output that cannot be written (checked before any work).
A temporary file that a killed run left beside the output is removed by the
next run.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
import glob
import json
import os
import pathlib
import sys
import tempfile
from typing import Any

from tpt_jax.verify import code_exec
from tpt_jax.verify import graders
from tpt_jax.verify import math_latex
from tpt_jax.verify import stdio_judge

TASKS = ('gsm8k', 'math', 'code', 'stdio')
_FIELDS = {
    'gsm8k': {'completion': (str,), 'answer': (str, int, float)},
    'math': {'completion': (str,), 'answer': (str, int, float)},
    'code': {'program': (str,), 'test': (str,)},
    'stdio': {'program': (str,), 'tests': (list,)},
}
_OPTIONAL_FIELDS = {'code': {'entry_point': (str,)}}


class InputError(ValueError):
  """A bad input line; the message names the file and line."""


def _parse_bool(text: str) -> bool:
  lowered = text.lower()
  if lowered in ('1', 'true', 'yes'):
    return True
  if lowered in ('0', 'false', 'no'):
    return False
  raise argparse.ArgumentTypeError(f'expected true or false, got {text!r}')


def _positive_float(text: str) -> float:
  value = float(text)
  if not 0 < value < float('inf'):
    raise argparse.ArgumentTypeError(f'expected a number > 0, got {text!r}')
  return value


def _tolerance(text: str) -> float:
  value = float(text)
  if not 0 <= value < 1:
    raise argparse.ArgumentTypeError(f'expected a number in [0, 1), got '
                                     f'{text!r}')
  return value


def _parser() -> argparse.ArgumentParser:
  parser = argparse.ArgumentParser(
      prog='python -m tpt_jax.verify',
      description='Verify model outputs (math answers or programs).')
  parser.add_argument('--task', required=True, choices=TASKS)
  parser.add_argument('--input', required=True, help='JSONL file to check.')
  parser.add_argument('--output', required=True,
                      help='JSONL file to write (replaced atomically).')
  parser.add_argument('--last_number_fallback', type=_parse_bool,
                      default=True,
                      help='gsm8k: use the last number when no answer marker '
                      'is found.')
  parser.add_argument('--grader', default='default',
                      choices=graders.GRADER_NAMES,
                      help='gsm8k: how answers are graded (default: ours; '
                      "paper_strict: the TPT authors' regex and exact "
                      'string equality).')
  parser.add_argument('--sympy_timeout_s', type=float, default=2.0,
                      help='math: time limit of one sympy comparison.')
  parser.add_argument('--timeout_s', type=float, default=10.0,
                      help='code: wall-clock limit per program.')
  parser.add_argument('--cpu_time_s', type=int, default=10,
                      help='code: CPU seconds per program.')
  parser.add_argument('--memory_mb', type=int, default=1024,
                      help='code: address-space limit per program.')
  parser.add_argument('--num_workers', type=int, default=0,
                      help='code: programs run at once (0: one per core).')
  parser.add_argument('--time_limit_factor', type=_positive_float,
                      default=1.0,
                      help='stdio: multiplies each line\'s time_limit_s.')
  parser.add_argument('--float_tolerance', type=_tolerance, default=0.0,
                      help='stdio: tolerance of real-number outputs (e.g. '
                      '1e-6); 0: exact.')
  return parser


def read_records(path: str, task: str) -> list[dict[str, Any]]:
  """The input objects; raises InputError naming the file and line."""
  records = []
  try:
    with open(path, 'rt', encoding='utf-8') as f:
      for line_number, line in enumerate(f, start=1):
        if not line.strip():
          continue
        try:
          record = json.loads(line)
        except ValueError as e:
          raise InputError(f'{path}:{line_number}: not valid JSON ({e})') from e
        if not isinstance(record, dict):
          raise InputError(f'{path}:{line_number}: expected a JSON object, '
                           f'got {type(record).__name__}')
        for name, types in _FIELDS[task].items():
          if name not in record:
            raise InputError(f'{path}:{line_number}: missing field {name!r} '
                             f'(--task={task} needs '
                             f'{", ".join(_FIELDS[task])})')
          if isinstance(record[name], bool) or not isinstance(
              record[name], types):
            raise InputError(f'{path}:{line_number}: field {name!r} must be '
                             f'a {" or ".join(t.__name__ for t in types)}, '
                             f'got {type(record[name]).__name__}')
        for name, types in _OPTIONAL_FIELDS.get(task, {}).items():
          if name in record and not isinstance(record[name], types):
            raise InputError(f'{path}:{line_number}: field {name!r} must be '
                             'a string')
        if task == 'stdio':
          try:
            stdio_judge.task_from_record(record)
          except ValueError as e:
            raise InputError(f'{path}:{line_number}: {e}') from e
        records.append(record)
  except UnicodeDecodeError as e:
    raise InputError(f'{path}: not UTF-8 text ({e})') from e
  except OSError as e:
    raise InputError(f'{path}: cannot read ({e.strerror or e})') from e
  return records


def verify_records(records: Sequence[dict[str, Any]], task: str,
                   args: argparse.Namespace) -> list[dict[str, Any]]:
  """Each record plus its verdict fields."""
  out = []
  if task == 'gsm8k':
    grade = graders.get_grader(args.grader,
                               last_number_fallback=args.last_number_fallback)
    for record in records:
      verdict = grade(record['completion'], str(record['answer']))
      out.append({**record, 'correct': verdict.correct,
                  'extracted': verdict.extracted})
  elif task == 'math':
    with math_latex.SympyChecker(timeout_s=args.sympy_timeout_s) as checker:
      for record in records:
        verdict = math_latex.verify_math(record['completion'],
                                         str(record['answer']),
                                         checker=checker)
        out.append({**record, 'correct': verdict.correct,
                    'extracted': verdict.extracted})
  elif task == 'stdio':
    options = stdio_judge.JudgeOptions(
        time_limit_factor=args.time_limit_factor,
        float_tolerance=args.float_tolerance)
    with stdio_judge.StdioJudge(
        code_exec.SandboxLimits(memory_mb=args.memory_mb), options,
        args.num_workers) as judge:
      verdicts = judge.judge_many(
          [stdio_judge.task_from_record(r) for r in records])
    for record, verdict in zip(records, verdicts):
      out.append({**record, 'correct': verdict.passed,
                  'status': verdict.status,
                  'first_failed_test': verdict.first_failed_test,
                  'reason': verdict.reason})
  else:
    limits = code_exec.SandboxLimits(timeout_s=args.timeout_s,
                                     cpu_time_s=args.cpu_time_s,
                                     memory_mb=args.memory_mb)
    tasks = [code_exec.CodeTask(program=r['program'], test_code=r['test'],
                                entry_point=r.get('entry_point', ''))
             for r in records]
    with code_exec.CodeVerifier(limits, args.num_workers) as verifier:
      verdicts = verifier.verify_many(tasks)
    for record, verdict in zip(records, verdicts):
      out.append({**record, 'correct': verdict.passed,
                  'status': verdict.status, 'reason': verdict.reason})
  return out


def _temporary_prefix(target: pathlib.Path, pid: int) -> str:
  """Temporaries beside `target` are named `.<name>.<pid>.<random>.tmp`."""
  return f'.{target.name}.{pid}.'


def check_output(path: str) -> None:
  """Raises InputError unless `path` can be written (a file, in a writable
  directory); removes the temporaries of killed runs beside it."""
  target = pathlib.Path(path)
  if target.is_dir():
    raise InputError(f'{path}: is a directory; --output must name a file')
  if not target.parent.is_dir():
    raise InputError(f'{path}: directory {target.parent} does not exist')
  try:
    descriptor, probe = tempfile.mkstemp(
        dir=target.parent, prefix=_temporary_prefix(target, os.getpid()),
        suffix='.tmp')
    os.close(descriptor)
    os.unlink(probe)
  except OSError as e:
    raise InputError(f'{path}: cannot write in {target.parent} '
                     f'({e.strerror or e})') from e
  remove_stale_temporaries(target)


def remove_stale_temporaries(target: pathlib.Path) -> list[pathlib.Path]:
  """Removes temporaries beside `target` whose writing process is gone."""
  removed = []
  for temporary in target.parent.glob(f'.{glob.escape(target.name)}.*.tmp'):
    pid = temporary.name[len(target.name) + 2:].split('.', 1)[0]
    if not pid.isdigit() or _process_exists(int(pid)):
      continue
    try:
      temporary.unlink()
      removed.append(temporary)
    except OSError:
      pass
  return removed


def _process_exists(pid: int) -> bool:
  try:
    os.kill(pid, 0)
  except ProcessLookupError:
    return False
  except (PermissionError, OverflowError):
    return True
  return True


def _umask() -> int:
  mask = os.umask(0o077)
  os.umask(mask)
  return mask


def write_jsonl_atomically(path: str, records: Sequence[dict[str, Any]]):
  """Writes `records` to `path` via a temporary file and a rename."""
  target = pathlib.Path(path)
  descriptor, temporary = tempfile.mkstemp(
      dir=target.parent or '.',
      prefix=_temporary_prefix(target, os.getpid()), suffix='.tmp')
  try:
    with os.fdopen(descriptor, 'wt', encoding='utf-8') as f:
      # mkstemp makes it 0600; the output is as readable as the umask says.
      os.fchmod(f.fileno(), 0o666 & ~_umask())
      for record in records:
        f.write(json.dumps(record, ensure_ascii=False) + '\n')
      f.flush()
      os.fsync(f.fileno())
    os.replace(temporary, target)
  except BaseException:
    try:
      os.unlink(temporary)
    except OSError:
      pass
    raise


def summary(results: Sequence[dict[str, Any]]) -> str:
  correct = sum(bool(r['correct']) for r in results)
  total = len(results)
  percent = 100.0 * correct / total if total else 0.0
  return f'correct: {correct}/{total} ({percent:.1f}%)'


def main(argv: Sequence[str] | None = None) -> int:
  args = _parser().parse_args(argv)
  if args.num_workers < 0:
    print('error: --num_workers must be >= 0', file=sys.stderr)
    return 2
  if args.grader != 'default' and args.task != 'gsm8k':
    print(f'error: --grader={args.grader} applies to --task=gsm8k only',
          file=sys.stderr)
    return 2
  try:
    check_output(args.output)
    records = read_records(args.input, args.task)
  except InputError as e:
    print(f'error: {e}', file=sys.stderr)
    return 2
  results = verify_records(records, args.task, args)
  write_jsonl_atomically(args.output, results)
  print(summary(results))
  return 0


if __name__ == '__main__':
  sys.exit(main())
