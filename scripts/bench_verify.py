r"""Measures the verifiers and shows the sandbox's containment of hostile code.

  python scripts/bench_verify.py [--num_workers=0] [--data_dir=../shared/data]

Prints verifications per second for GSM8K answers (every train solution
against its own answer; in this process, then in worker processes with a
per-item time limit), for code (HumanEval's canonical solutions in the
sandbox pool) and for stdin/stdout programs (the correct programs of
tests/data/stdio_problems.jsonl, with the judge's median overhead per test),
the verdict table of those test problems (each with a correct, a
wrong-answer, a too-slow and a crashing program), then one row per hostile
program (the ones in
tests/test_verify_code.py): its verdict, how long it took, and whether it was
contained (not passed, stopped within its timeout, no process left behind,
nothing written outside its directory).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import statistics
import pathlib
import sys
import tempfile
import time

REPO_ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))

# pylint: disable=g-import-not-at-top,wrong-import-position
from tpt_jax import sources
from tpt_jax.verify import code_exec
from tpt_jax.verify import math_answers
from tpt_jax.verify import parallel
from tpt_jax.verify import stdio_judge
# pylint: enable=g-import-not-at-top,wrong-import-position


def _load_hostile_programs() -> tuple[dict[str, str], str]:
  """HOSTILE_PROGRAMS and their test from tests/test_verify_code.py."""
  path = REPO_ROOT / 'tests' / 'test_verify_code.py'
  spec = importlib.util.spec_from_file_location('hostile_programs', path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.HOSTILE_PROGRAMS, module.ADD_TEST


def bench_math(data_dir: pathlib.Path, num_workers: int) -> None:
  problems = sources.load_gsm8k(data_dir / 'gsm8k', 'train')
  start = time.perf_counter()
  correct = sum(math_answers.verify_gsm8k(p.solution,
                                          p.answer).correct
                for p in problems)
  elapsed = time.perf_counter() - start
  print(f'math (GSM8K train, {len(problems)} solutions): {correct} correct, '
        f'{elapsed:.2f} s, {len(problems) / elapsed:,.0f} verifications/s '
        '(one process)')
  items = [(p.solution, p.answer) for p in problems]
  start = time.perf_counter()
  with parallel.WorkerPool(math_answers.verify_gsm8k, timeout_s=5.0,
                           num_workers=num_workers) as pool:
    verdicts = pool.verify(items)
    workers = pool.num_workers
  elapsed = time.perf_counter() - start
  print(f'math in worker processes ({workers} workers, 5 s limit per item): '
        f'{sum(v.correct for v in verdicts)} correct, {elapsed:.2f} s '
        f'with start-up, {len(items) / elapsed:,.0f} verifications/s')


def bench_code(data_dir: pathlib.Path, num_workers: int) -> None:
  problems = sources.load_humaneval(data_dir / 'humaneval' /
                                    'HumanEval.jsonl.gz')
  tasks = [code_exec.task_for_problem(p, p.answer)
           for p in problems]
  with code_exec.CodeVerifier(code_exec.SandboxLimits(),
                              num_workers) as verifier:
    start = time.perf_counter()
    verdicts = verifier.verify_many(tasks)
    elapsed = time.perf_counter() - start
    workers = verifier.num_workers
  passed = sum(v.passed for v in verdicts)
  print(f'code (HumanEval canonical, {len(tasks)} programs, {workers} '
        f'workers): {passed} passed, {elapsed:.2f} s, '
        f'{len(tasks) / elapsed:.1f} verifications/s; median run '
        f'{sorted(v.duration_s for v in verdicts)[len(verdicts) // 2]:.3f} s')


def bench_stdio(num_workers: int, repeats: int = 5) -> None:
  """Programs/s of the stdin/stdout judge, and what one more test costs."""
  path = REPO_ROOT / 'tests' / 'data' / 'stdio_problems.jsonl'
  tasks = []
  with path.open(encoding='utf-8') as f:
    for line in f:
      record = json.loads(line)
      tests = tuple(stdio_judge.StdioTest(i, o)
                    for name in ('public', 'private', 'generated')
                    for i, o in zip(record[f'{name}_tests']['input'],
                                    record[f'{name}_tests']['output']))
      tasks.append(stdio_judge.StdioTask(record['test_programs']['passed'],
                                         tests, 2.0))
  tasks *= repeats
  num_tests = sum(len(task.tests) for task in tasks)
  # The code_contests task's tolerance: two problems print real numbers.
  options = stdio_judge.JudgeOptions(float_tolerance=1e-6)
  with stdio_judge.StdioJudge(options=options,
                              num_workers=num_workers) as judge:
    start = time.perf_counter()
    verdicts = judge.judge_many(tasks)
    elapsed = time.perf_counter() - start
    workers = judge.num_workers
  passed = sum(v.passed for v in verdicts)
  # The judge's own cost per test: an echo program on 101 tests vs on 1,
  # judged one at a time (median of 7 each).
  echo = 'print(input())\n'
  one = stdio_judge.StdioTask(echo, (stdio_judge.StdioTest('7\n', '7'),))
  many = stdio_judge.StdioTask(echo, one.tests * 101)
  durations = {}
  for name, task in (('one', one), ('many', many)):
    durations[name] = statistics.median(
        stdio_judge.judge(task).duration_s for _ in range(7))
  per_test_ms = 1000 * (durations['many'] - durations['one']) / 100
  print(f'stdio ({len(tasks)} correct programs of the test problems, '
        f'{num_tests} tests, {workers} workers): {passed} passed, '
        f'{elapsed:.2f} s, {len(tasks) / elapsed:.1f} programs/s; median '
        f'per-test overhead {per_test_ms:.1f} ms (echo program, 101 vs 1 '
        f'tests: {durations["many"]:.3f} s vs {durations["one"]:.3f} s)')


def stdio_verdict_table(num_workers: int) -> None:
  """Each test problem's four programs, judged as the tests judge them."""
  path = REPO_ROOT / 'tests' / 'data' / 'stdio_problems.jsonl'
  with path.open(encoding='utf-8') as f:
    records = [json.loads(line) for line in f]
  kinds = ('passed', 'wrong_answer', 'timeout', 'runtime_error')
  tasks = []
  for record in records:
    tests = tuple(stdio_judge.StdioTest(i, o)
                  for name in ('public', 'private', 'generated')
                  for i, o in zip(record[f'{name}_tests']['input'],
                                  record[f'{name}_tests']['output']))
    tasks += [stdio_judge.StdioTask(record['test_programs'][kind], tests,
                                    record['time_limit']['seconds'])
              for kind in kinds]
  factor = 0.4  # As tests/test_verify_stdio.py: 0.4 s per test.
  options = stdio_judge.JudgeOptions(time_limit_factor=factor,
                                     float_tolerance=1e-6)
  with stdio_judge.StdioJudge(options=options,
                              num_workers=num_workers) as judge:
    verdicts = judge.judge_many(tasks)
  print(f'\nstdio test problems (time limit 1 s x {factor}; verdict '
        '[first failing test]; * = not the expected verdict)')
  print(f'{"problem":16s} ' + ' '.join(f'{k:>19s}' for k in kinds))
  right = 0
  for index, record in enumerate(records):
    cells = []
    for kind, verdict in zip(kinds, verdicts[4 * index:4 * index + 4]):
      where = ('' if verdict.first_failed_test is None else
               f' [{verdict.first_failed_test}]')
      mark = '' if verdict.status == kind else '*'
      right += not mark
      cells.append(f'{verdict.status + where + mark:>19s}')
    print(f'{record["name"]:16s} ' + ' '.join(cells))
  print(f'{right}/{len(verdicts)} programs judged as expected')


def _sandbox_processes() -> int:
  """Live processes running as a sandbox uid."""
  return len(code_exec.sandbox_processes())


def containment_table(num_workers: int) -> None:
  programs, test = _load_hostile_programs()
  limits = code_exec.SandboxLimits(timeout_s=3.0, cpu_time_s=2,
                                   memory_mb=512)
  with tempfile.TemporaryDirectory() as outside:
    escape_path = os.path.join(outside, 'escaped.txt')
    tasks = [code_exec.CodeTask(
        program.format(escape_path=escape_path)
        if '{escape_path' in program else program, test_code=test)
             for program in programs.values()]
    with code_exec.CodeVerifier(limits, num_workers) as verifier:
      verdicts = verifier.verify_many(tasks)
    time.sleep(0.2)
    leftovers = _sandbox_processes() if os.geteuid() == 0 else 0
    escaped = os.listdir(outside)
  print(f'\ncontainment (timeout {limits.timeout_s:g} s, CPU '
        f'{limits.cpu_time_s} s, {limits.memory_mb} MB; running as '
        f'{"root: private uid + namespaces" if os.geteuid() == 0 else "user"})')
  print(f'{"program":30s} {"status":8s} {"time":>6s}  contained  reason')
  all_contained = True
  for name, verdict in zip(programs, verdicts):
    contained = (not verdict.passed and
                 verdict.duration_s < limits.timeout_s + 2.5)
    all_contained &= contained
    print(f'{name:30s} {verdict.status:8s} {verdict.duration_s:5.2f}s  '
          f'{"yes" if contained else "NO":9s}  {verdict.reason[:90]}')
  print(f'processes left afterwards: {leftovers}; files written outside: '
        f'{len(escaped)}; all contained: '
        f'{all_contained and not leftovers and not escaped}')


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('--num_workers', type=int, default=0,
                      help='sandboxes / math workers at once (0: one per '
                      'core)')
  parser.add_argument('--data_dir', type=pathlib.Path,
                      default=REPO_ROOT / '..' / 'shared' / 'data')
  args = parser.parse_args()
  bench_math(args.data_dir, args.num_workers)
  bench_code(args.data_dir, args.num_workers)
  bench_stdio(args.num_workers)
  stdio_verdict_table(args.num_workers)
  containment_table(args.num_workers)


if __name__ == '__main__':
  main()
