r"""Measures the verifiers and shows the sandbox's containment of hostile code.

  python scripts/bench_verify.py [--num_workers=0] [--data_dir=../shared/data]

Prints verifications per second for GSM8K answers (every train solution
against its own answer) and for code (HumanEval's canonical solutions in the
sandbox pool), then one row per hostile program (the ones in
tests/test_verify_code.py): its verdict, how long it took, and whether it was
contained (not passed, stopped within its timeout, no process left behind,
nothing written outside its directory).
"""

from __future__ import annotations

import argparse
import importlib.util
import os
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
# pylint: enable=g-import-not-at-top,wrong-import-position


def _load_hostile_programs() -> tuple[dict[str, str], str]:
  """HOSTILE_PROGRAMS and their test from tests/test_verify_code.py."""
  path = REPO_ROOT / 'tests' / 'test_verify_code.py'
  spec = importlib.util.spec_from_file_location('hostile_programs', path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.HOSTILE_PROGRAMS, module.ADD_TEST


def bench_math(data_dir: pathlib.Path) -> None:
  problems = sources.load_gsm8k(data_dir / 'gsm8k', 'train')
  start = time.perf_counter()
  correct = sum(math_answers.verify_gsm8k(p.reference_solution,
                                          p.reference_answer).correct
                for p in problems)
  elapsed = time.perf_counter() - start
  print(f'math (GSM8K train, {len(problems)} solutions): {correct} correct, '
        f'{elapsed:.2f} s, {len(problems) / elapsed:,.0f} verifications/s '
        '(one process)')


def bench_code(data_dir: pathlib.Path, num_workers: int) -> None:
  problems = sources.load_humaneval(data_dir / 'humaneval' /
                                    'HumanEval.jsonl.gz')
  tasks = [code_exec.task_for_problem(p, p.reference_answer)
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
                      help='sandboxes at once (0: one per core)')
  parser.add_argument('--data_dir', type=pathlib.Path,
                      default=REPO_ROOT / '..' / 'shared' / 'data')
  args = parser.parse_args()
  bench_math(args.data_dir)
  bench_code(args.data_dir, args.num_workers)
  containment_table(args.num_workers)


if __name__ == '__main__':
  main()
