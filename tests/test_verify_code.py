"""Tests of the sandboxed code verifier and the `--task=code` CLI."""

import json
import os
import pathlib
import subprocess
import sys
import time

import pytest

from tpt_jax import sources
from tpt_jax.verify import code_exec

REPO_ROOT = pathlib.Path(__file__).resolve().parents[1]
DATA_DIR = REPO_ROOT / '..' / 'shared' / 'data'
HUMANEVAL = DATA_DIR / 'humaneval' / 'HumanEval.jsonl.gz'
MBPP = DATA_DIR / 'mbpp' / 'mbpp.jsonl'

# Short limits: hostile programs must be stopped quickly.
HOSTILE_LIMITS = code_exec.SandboxLimits(timeout_s=3.0, cpu_time_s=2,
                                         memory_mb=512)
# Cleanup after a timeout is allowed this much on top of the timeout.
CLEANUP_SLACK_S = 2.5

ADD = 'def add(a, b):\n  return a + b\n'
ADD_TEST = 'assert add(1, 2) == 3\nassert add(-1, 1) == 0\n'

# Each would pass under a naive harness (exit status 0 = pass) or harm the
# host, and must be contained and never `passed`. Tests use {escape_path}.
HOSTILE_PROGRAMS = {
    'infinite_loop': ADD + 'while True:\n  pass\n',
    'fork_bomb': ADD + (
        'import os\n'
        'while True:\n'
        '  try:\n'
        '    os.fork()\n'
        '  except OSError:\n'
        '    pass\n'),
    'allocate_100gb': ADD + 'blob = bytearray(100 * 2**30)\n',
    'write_outside_its_directory': ADD + (
        'open({escape_path!r}, "w").write("escaped")\n'),
    'write_to_parent_directory': ADD + (
        'open("../escaped.txt", "w").write("escaped")\n'),
    'kill_its_parent': ADD + 'import os\nos.kill(os.getppid(), 9)\n',
    'sys_exit_before_tests': ADD + 'import sys\nsys.exit(0)\n',
    'os_exit_before_tests': ADD + 'import os\nos._exit(0)\n',
    'print_gigabytes': ADD + (
        'import sys\n'
        'chunk = "x" * (1 << 20)\n'
        'for _ in range(4096):\n'
        '  sys.stdout.write(chunk)\n'),
    'deep_recursion': ADD + (
        'import sys\n'
        'sys.setrecursionlimit(10**9)\n'
        'def down(n):\n'
        '  return down(n + 1)\n'
        'down(0)\n'),
    'tamper_with_signals': ADD + (
        'import signal\n'
        'for s in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP,\n'
        '          signal.SIGXCPU, signal.SIGALRM, signal.SIGXFSZ):\n'
        '  signal.signal(s, signal.SIG_IGN)\n'
        'signal.pthread_sigmask(signal.SIG_BLOCK, range(1, signal.NSIG))\n'
        'while True:\n'
        '  pass\n'),
    'fill_the_disk': ADD + (
        'import os\n'
        'for i in range(100_000):\n'
        '  with open("f%d" % i, "wb") as f:\n'
        '    f.write(os.urandom(1 << 20))\n'),
    'use_the_network': ADD + (
        'import socket\n'
        'socket.create_connection(("1.1.1.1", 53), timeout=1)\n'),
    'leave_a_daemon_behind': ADD + (
        'import os, sys, time\n'
        'if os.fork() == 0:\n'
        '  os.setsid()\n'
        '  print("daemon", os.getpid(), flush=True)\n'
        '  time.sleep(1000)\n'
        'time.sleep(0.3)\n'
        'os._exit(0)\n'),
}


def _sandbox_processes() -> list[int]:
  """Live processes running as a sandbox uid (root mode) right now."""
  return code_exec.sandbox_processes()


@pytest.fixture(scope='module')
def verifier():
  with code_exec.CodeVerifier(code_exec.SandboxLimits(timeout_s=10.0),
                              num_workers=2) as v:
    yield v


@pytest.fixture(scope='module')
def humaneval():
  return sources.load_humaneval(HUMANEVAL)


@pytest.fixture(scope='module')
def hostile_verdicts(tmp_path_factory):
  escape_dir = tmp_path_factory.mktemp('outside')
  escape_path = str(escape_dir / 'escaped.txt')
  tasks = [code_exec.CodeTask(program.format(escape_path=escape_path)
                              if '{escape_path' in program else program,
                              test_code=ADD_TEST)
           for program in HOSTILE_PROGRAMS.values()]
  with code_exec.CodeVerifier(HOSTILE_LIMITS, num_workers=2) as v:
    verdicts = v.verify_many(tasks)
  return dict(zip(HOSTILE_PROGRAMS, verdicts)), escape_dir


def test_correct_program_passes():
  verdict = code_exec.run_sandboxed(code_exec.CodeTask(ADD, ADD_TEST))
  assert verdict.status == 'passed', verdict
  assert verdict.passed and verdict.reason == ''


def test_wrong_program_fails_with_reason():
  verdict = code_exec.run_sandboxed(
      code_exec.CodeTask('def add(a, b):\n  return a - b\n', ADD_TEST))
  assert verdict.status == 'failed'
  assert not verdict.passed
  assert 'failed' in verdict.reason


def test_syntax_error_is_an_error():
  verdict = code_exec.run_sandboxed(
      code_exec.CodeTask('def add(a, b) return a + b', ADD_TEST))
  assert verdict.status == 'error'
  assert 'SyntaxError' in verdict.reason


def test_test_list_reports_which_assert_failed():
  verdict = code_exec.run_sandboxed(code_exec.CodeTask(
      ADD, test_list=('assert add(1, 1) == 2', 'assert add(2, 2) == 5')))
  assert verdict.status == 'failed'
  assert 'test 2 of 2' in verdict.reason


def test_missing_entry_point_fails():
  verdict = code_exec.run_sandboxed(code_exec.CodeTask(
      'def other():\n  pass\n', test_code='def check(f):\n  assert f(1)\n',
      entry_point='solve'))
  assert verdict.status == 'failed'
  assert 'solve' in verdict.reason


def test_working_directory_is_fresh_and_writable():
  program = ('import os\n'
             'assert not os.path.exists("state.txt"), "not a fresh directory"\n'
             'open("state.txt", "w").write("x")\n')
  task = code_exec.CodeTask(program, test_code='pass')
  first = code_exec.run_sandboxed(task)
  second = code_exec.run_sandboxed(task)
  assert first.passed, first
  assert second.passed, second


def test_standard_library_and_site_packages_import():
  program = ('import fractions, heapq, collections, itertools, hashlib\n'
             'import numpy\n' + ADD)
  verdict = code_exec.run_sandboxed(code_exec.CodeTask(program, ADD_TEST))
  assert verdict.passed, verdict


def test_hash_seed_is_fixed():
  # Set iteration order must not change from run to run.
  program = 'order = list({"apple", "banana", "cherry", "date"})\nprint(order)'
  outputs = {code_exec.run_sandboxed(
      code_exec.CodeTask(program, test_code='pass')).stdout
             for _ in range(3)}
  assert len(outputs) == 1


def test_all_humaneval_canonical_solutions_pass(verifier, humaneval):
  tasks = [code_exec.task_for_problem(p, p.answer)
           for p in humaneval]
  verdicts = verifier.verify_many(tasks)
  failures = {p.problem_id: v for p, v in zip(humaneval, verdicts)
              if not v.passed}
  assert len(humaneval) == 164
  assert not failures


# Wraps the canonical solution so it returns a slightly wrong value.
_BREAK_SOLUTION = '''
_original_{name} = {name}
def {name}(*args, **kwargs):
  result = _original_{name}(*args, **kwargs)
  if isinstance(result, bool):
    return not result
  if isinstance(result, (int, float)):
    return result + 1
  if isinstance(result, str):
    return result + "x"
  if isinstance(result, list):
    return result + [None]
  if isinstance(result, tuple):
    return result + (None,)
  return 0
'''


def test_a_broken_variant_of_each_humaneval_solution_fails(
    verifier, humaneval):
  tasks = [code_exec.task_for_problem(
      p, p.solution + _BREAK_SOLUTION.format(name=p.entry_point))
           for p in humaneval]
  verdicts = verifier.verify_many(tasks)
  passed = [p.problem_id for p, v in zip(humaneval, verdicts) if v.passed]
  assert not passed
  assert all(v.status == 'failed' for v in verdicts)


def test_humaneval_completion_may_be_body_or_whole_program(humaneval):
  problem = humaneval[0]
  body = code_exec.task_for_problem(problem, problem.answer)
  whole = code_exec.task_for_problem(problem, problem.solution)
  fenced = code_exec.task_for_problem(
      problem, 'Here:\n```python\n' + problem.solution + '```\n')
  assert body.program == whole.program == fenced.program


def test_mbpp_reference_solutions(verifier):
  problems = {p.problem_id: p for p in sources.load_mbpp(MBPP, 'full')}
  # A sample that passes, and the three whose references fail their own
  # tests (see shared/data/mbpp/README.md).
  passing = [f'mbpp/{i}' for i in range(11, 31)]
  quirks = ['mbpp/341', 'mbpp/596', 'mbpp/642']
  tasks = [code_exec.task_for_problem(problems[i],
                                      problems[i].solution)
           for i in passing + quirks]
  verdicts = dict(zip(passing + quirks, verifier.verify_many(tasks)))
  assert all(verdicts[i].passed for i in passing), verdicts
  assert all(verdicts[i].status == 'failed' for i in quirks)


@pytest.mark.parametrize('name', list(HOSTILE_PROGRAMS))
def test_hostile_program_is_contained_and_not_passed(name, hostile_verdicts):
  verdicts, _ = hostile_verdicts
  verdict = verdicts[name]
  assert verdict.status in ('failed', 'timeout', 'error'), verdict
  assert not verdict.passed
  assert verdict.reason
  assert verdict.duration_s < HOSTILE_LIMITS.timeout_s + CLEANUP_SLACK_S


def test_hostile_programs_expected_statuses(hostile_verdicts):
  verdicts, escape_dir = hostile_verdicts
  assert verdicts['infinite_loop'].status == 'timeout'
  assert verdicts['tamper_with_signals'].status == 'timeout'
  assert 'MemoryError' in verdicts['allocate_100gb'].reason
  assert 'SystemExit' in verdicts['sys_exit_before_tests'].reason
  assert 'before the tests' in verdicts['os_exit_before_tests'].reason
  assert 'parent' in verdicts['kill_its_parent'].reason
  # Output is capped both on disk and in the verdict.
  assert len(verdicts['print_gigabytes'].stdout) <= 2000
  # Nothing was written outside the sandbox.
  assert list(escape_dir.iterdir()) == []
  if os.geteuid() == 0:  # The working directory is a small private tmpfs.
    assert 'No space left' in verdicts['fill_the_disk'].reason


def test_no_sandbox_process_outlives_its_run(hostile_verdicts):
  verdicts, _ = hostile_verdicts
  daemon_output = verdicts['leave_a_daemon_behind'].stdout.split()
  if daemon_output:
    pid = int(daemon_output[1])
    time.sleep(0.1)
    try:
      with open(f'/proc/{pid}/stat', 'rb') as stat:
        state = stat.read().rsplit(b')', 1)[1].split()[0]
    except OSError:
      state = b'gone'
    assert state in (b'gone', b'Z')
  if os.geteuid() == 0:
    assert _sandbox_processes() == []


def test_parent_survives_hostile_programs(hostile_verdicts):
  # Reaching this line means the test process (an ancestor) was not killed.
  assert os.getpid() > 0
  assert code_exec.run_sandboxed(code_exec.CodeTask(ADD, ADD_TEST)).passed


def test_never_raises_on_odd_input():
  for program in ('', '\x00', '\ud800', 'x' * 100_000, None):
    verdict = code_exec.run_sandboxed(code_exec.CodeTask(program, 'pass'))
    assert verdict.status in code_exec.STATUSES


def test_limits_are_validated():
  with pytest.raises(ValueError, match='timeout_s'):
    code_exec.SandboxLimits(timeout_s=0)


def _run_cli(*args, cwd=REPO_ROOT):
  env = dict(os.environ, PYTHONPATH=str(REPO_ROOT))
  return subprocess.run([sys.executable, '-m', 'tpt_jax.verify', *args],
                        capture_output=True, text=True, cwd=cwd, env=env,
                        timeout=120)


def test_cli_code_task(tmp_path):
  rows = [
      {'id': 1, 'program': ADD, 'test': ADD_TEST},
      {'id': 2, 'program': 'def add(a, b):\n  return 0\n', 'test': ADD_TEST},
      {'id': 3, 'program': ADD + 'import sys\nsys.exit(0)\n',
       'test': ADD_TEST},
  ]
  source = tmp_path / 'in.jsonl'
  source.write_text(''.join(json.dumps(r) + '\n' for r in rows))
  target = tmp_path / 'out.jsonl'
  result = _run_cli('--task=code', f'--input={source}', f'--output={target}',
                    '--timeout_s=5')
  assert result.returncode == 0, result.stderr
  out = [json.loads(line) for line in target.read_text().splitlines()]
  assert [r['id'] for r in out] == [1, 2, 3]
  assert [r['correct'] for r in out] == [True, False, False]
  assert [r['status'] for r in out] == ['passed', 'failed', 'error']
  assert all('reason' in r and 'program' in r for r in out)
  assert result.stdout.strip().splitlines()[-1].startswith('correct: 1/3')


def test_cli_names_file_and_line_of_bad_input(tmp_path):
  source = tmp_path / 'in.jsonl'
  source.write_text(json.dumps({'program': ADD, 'test': ADD_TEST}) + '\n' +
                    json.dumps({'program': ADD}) + '\n')
  target = tmp_path / 'out.jsonl'
  result = _run_cli('--task=code', f'--input={source}', f'--output={target}')
  assert result.returncode == 2
  assert f'{source}:2' in result.stderr
  assert "'test'" in result.stderr
  assert not target.exists()
