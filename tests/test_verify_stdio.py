"""Tests of the stdin/stdout judge (`tpt_jax.verify.stdio_judge`)."""

import json
import os
import pathlib
import signal
import subprocess
import sys
import time

import pytest

from tpt_jax.verify import code_exec
from tpt_jax.verify import stdio_judge as sj

REPO_ROOT = pathlib.Path(__file__).resolve().parents[1]
PROBLEMS_FILE = REPO_ROOT / 'tests' / 'data' / 'stdio_problems.jsonl'
# The problems' 1 s limits, scaled down: too-slow programs stop quickly.
FACTOR = 0.4
ADD_TESTS = (sj.StdioTest('1 2\n', '3\n'), sj.StdioTest('10 -4\n', '6\n'))
ADD = 'a, b = map(int, input().split())\nprint(a + b)\n'


def _problems():
  with PROBLEMS_FILE.open(encoding='utf-8') as f:
    return [json.loads(line) for line in f]


def _tests(record):
  return tuple(sj.StdioTest(i, o) for name in ('public', 'private',
                                               'generated')
               for i, o in zip(record[f'{name}_tests']['input'],
                               record[f'{name}_tests']['output']))


@pytest.fixture(scope='module')
def judge():
  with sj.StdioJudge(options=sj.JudgeOptions(time_limit_factor=FACTOR,
                                             float_tolerance=1e-6),
                     num_workers=2) as j:
    yield j


@pytest.fixture(scope='module')
def problem_verdicts(judge):
  """Every test program of every test problem, judged in one batch."""
  records = _problems()
  keys, judge_tasks = [], []
  for record in records:
    for expected, program in record['test_programs'].items():
      keys.append((record['name'], expected))
      judge_tasks.append(sj.StdioTask(
          program, _tests(record),
          record['time_limit']['seconds']))
  return dict(zip(keys, judge.judge_many(judge_tasks)))


def test_at_least_20_problems_with_4_programs_each():
  records = _problems()
  assert len(records) >= 20
  for record in records:
    assert set(record['test_programs']) == {
        'passed', 'wrong_answer', 'timeout', 'runtime_error'}


@pytest.mark.parametrize('name', [r['name'] for r in _problems()])
def test_each_program_of_each_problem_is_judged_right(name,
                                                      problem_verdicts):
  for expected in ('passed', 'wrong_answer', 'timeout', 'runtime_error'):
    verdict = problem_verdicts[(name, expected)]
    assert verdict.status == expected, (name, expected, verdict)
    assert verdict.passed == (expected == 'passed')
    if expected == 'passed':
      assert verdict.first_failed_test is None and not verdict.reason
    else:
      assert verdict.first_failed_test == len(verdict.test_statuses) - 1
      assert verdict.reason.startswith(f'test {verdict.first_failed_test}:')


def test_first_failing_test_index(problem_verdicts):
  # sum_two's slow program is right on tests 0 and 1 and too slow on 2.
  verdict = problem_verdicts[('sum_two', 'timeout')]
  assert verdict.first_failed_test == 2
  assert verdict.test_statuses == ('passed', 'passed', 'timeout')
  # diagonal_sum's wrong program only differs on the third matrix.
  assert problem_verdicts[('diagonal_sum', 'wrong_answer')
                          ].first_failed_test == 2


def test_timeout_is_the_scaled_cpu_limit(problem_verdicts):
  verdict = problem_verdicts[('sum_two', 'timeout')]
  assert 'exceeded the 0.4 s time limit' in verdict.reason
  # (The limit is checked on /proc ticks, the report uses rusage.)
  assert FACTOR - 0.05 <= verdict.test_cpu_s[-1] < FACTOR + 0.3
  # A sleeping program uses no CPU: the wall-clock backstop stops it.
  sleeper = problem_verdicts[('reverse_words', 'timeout')]
  assert sleeper.status == 'timeout' and sleeper.duration_s < 5


@pytest.mark.parametrize('actual, expected, same', [
    ('3\n', '3', True),  # Missing final newline.
    ('3   \n', '3\n', True),  # Trailing spaces.
    ('1 2\r\n3\r\n', '1 2\n3\n', True),  # Windows line ends.
    ('1\n2\n3', '1 2 3\n', True),  # Token by token: layout does not count.
    ('\t1  2\n\n\n', '1 2', True),
    ('', '', True),
    ('', '\n', True),
    ('1 2', '1 2 3', False),  # A missing token.
    ('1 2 3', '1 2', False),  # An extra token.
    ('YES', 'yes', False),  # Case counts.
    ('12', '1 2', False),
])
def test_whitespace_rules(actual, expected, same):
  assert sj.outputs_match(actual, expected) == same


@pytest.mark.parametrize('actual, expected, tolerance, same', [
    ('3.1415926', '3.14159265358979', 1e-6, True),
    ('3.1415926', '3.14159265358979', 0.0, False),
    ('3.1416', '3.14159265358979', 1e-6, False),
    ('1000000.5', '1000000.0', 1e-6, True),  # Relative: 0.5 <= 1e-6 * 1e6.
    ('1000002.0', '1000000.0', 1e-6, False),
    ('0.0000005', '0.0', 1e-6, True),  # Absolute near zero.
    ('1e-7', '0.0', 1e-6, True),
    ('3', '3.0000000', 1e-6, True),
    # Integers are exact even with a tolerance.
    ('1000000000000000001', '1000000000000000000', 1e-6, False),
    ('3.0', '3', 1e-6, False),
    ('nan', '0.5', 1e-6, False),
    ('abc', '0.5', 1e-6, False),
])
def test_float_tolerance_rules(actual, expected, tolerance, same):
  assert sj.outputs_match(actual, expected, tolerance) == same


def test_first_difference_index():
  assert sj.first_difference('1 2 4', '1 2 3') == 2
  assert sj.first_difference('1 2', '1 2 3') == 2
  assert sj.first_difference('1 2 3', '1 2 3') is None


# Programs run through the sandbox for the input/output edge cases.
EDGE_PROGRAMS = {
    # (program, tests, expected status, expected first failing test)
    'trailing_spaces_no_newline': (
        'import sys\na, b = map(int, input().split())\n'
        'sys.stdout.write(str(a + b) + "   ")\n', ADD_TESTS, 'passed', None),
    'reads_less_input_than_given': (
        'print(int(input()) * 2)\n',
        (sj.StdioTest('4\nignored line\n5 6 7\n', '8\n'),), 'passed', None),
    'reads_more_input_than_given': (
        'a = input()\nb = input()\nprint(a, b)\n',
        (sj.StdioTest('only one line\n', 'only one line'),), 'runtime_error',
        0),
    'reads_all_of_a_large_input': (
        'import sys\nprint(sum(map(int, sys.stdin.read().split())))\n',
        (sj.StdioTest(' '.join(['1'] * 200_000) + '\n', '200000\n'),),
        'passed', None),
    'huge_output': (
        'import sys\nwhile True:\n  sys.stdout.write("9" * 65536 + "\\n")\n',
        ADD_TESTS, 'output_limit', 0),
    'huge_output_on_stderr': (
        'import sys\nwhile True:\n  sys.stderr.write("9" * 65536)\n',
        ADD_TESTS, 'output_limit', 0),
    'syntax_error': ('print(1 +\n', ADD_TESTS, 'syntax_error', 0),
    'main_guard_and_exit': (
        'import sys\ndef main():\n  print(sum(map(int, sys.stdin.read().split()'
        ')))\n  exit()\nif __name__ == "__main__":\n  main()\n', ADD_TESTS,
        'passed', None),
    'nonzero_exit_after_right_output': (
        ADD + 'import sys\nsys.exit(1)\n', ADD_TESTS, 'runtime_error', 0),
    'memory': ('x = [0] * (10 ** 10)\n', ADD_TESTS, 'memory', 0),
    'deep_recursion_with_raised_limit': (
        'import sys\nsys.setrecursionlimit(10 ** 7)\n'
        'def f(n):\n  return 0 if n == 0 else 1 + f(n - 1)\n'
        'print(f(5000))\n', (sj.StdioTest('', '5000'),), 'passed', None),
    'output_is_flushed_at_exit': (
        'import atexit\natexit.register(lambda: print(3))\n',
        ADD_TESTS[:1], 'passed', None),
    'reads_dev_stdin_and_fd_0': (
        'a = open("/dev/stdin").read().split()\n'
        'print(int(a[0]) + int(a[1]))\n', ADD_TESTS, 'passed', None),
    'imports_numpy_and_pickles_a_main_class': (
        'import pickle\nimport numpy as np\nclass Pair:\n  pass\n'
        'pickle.dumps(Pair())\n'
        'print(int(np.array(input().split(), dtype=int).sum()))\n',
        ADD_TESTS, 'passed', None),
    'non_daemon_thread_finishes': (
        'import threading, time\n'
        'def work():\n  time.sleep(0.05)\n  print(3)\n'
        'threading.Thread(target=work).start()\n', ADD_TESTS[:1], 'passed',
        None),
}


@pytest.fixture(scope='module')
def edge_verdicts(judge):
  judge_tasks = [sj.StdioTask(program, tests, time_limit_s=2.0)
                 for program, tests, _, _ in EDGE_PROGRAMS.values()]
  return dict(zip(EDGE_PROGRAMS, judge.judge_many(judge_tasks)))


@pytest.mark.parametrize('name', list(EDGE_PROGRAMS))
def test_input_output_edge_cases(name, edge_verdicts):
  _, _, status, first_failed = EDGE_PROGRAMS[name]
  verdict = edge_verdicts[name]
  assert verdict.status == status, verdict
  assert verdict.first_failed_test == first_failed


def test_huge_output_is_capped_quickly(edge_verdicts):
  verdict = edge_verdicts['huge_output']
  assert verdict.duration_s < 3
  assert 'more than' in verdict.reason


def test_reading_past_the_input_names_eof(edge_verdicts):
  verdict = edge_verdicts['reads_more_input_than_given']
  assert 'EOFError' in verdict.reason
  assert 'EOFError' in verdict.stderr


def test_stop_at_first_failure_or_run_all():
  tests = (sj.StdioTest('1 2', '3'), sj.StdioTest('1 1', '3'),
           sj.StdioTest('2 2', '4'), sj.StdioTest('0 0', '1'))
  task = sj.StdioTask(ADD, tests, time_limit_s=2.0)
  first = sj.judge(task)
  assert first.status == 'wrong_answer' and first.first_failed_test == 1
  assert first.test_statuses == ('passed', 'wrong_answer')
  every = sj.judge(task, options=sj.JudgeOptions(stop_at_first_failure=False))
  assert every.status == 'wrong_answer' and every.first_failed_test == 1
  assert every.test_statuses == ('passed', 'wrong_answer', 'passed',
                                 'wrong_answer')


def test_time_limit_factor_scales_the_limit():
  busy = ('import time\nend = time.process_time() + 0.3\n'
          'while time.process_time() < end:\n  pass\nprint(3)\n')
  task = sj.StdioTask(busy, ADD_TESTS[:1], time_limit_s=1.0)
  assert sj.judge(task).status == 'passed'
  slow = sj.judge(task, options=sj.JudgeOptions(time_limit_factor=0.2))
  assert slow.status == 'timeout'
  assert 'exceeded the 0.2 s time limit' in slow.reason


def test_expected_outputs_never_enter_the_sandbox():
  # A program that searches its own memory for the expected output finds
  # only what the sandbox holds: the input.
  secret = 'expected-7f3a9c'
  program = ('import gc\nfound = any(isinstance(o, (str, bytes)) and '
             f'{secret!r}.encode() in (o if isinstance(o, bytes) else '
             'o.encode("utf-8", "replace")) for o in gc.get_objects())\n'
             'print("found" if found else "clean")\n')
  verdict = sj.judge(sj.StdioTask(program, (sj.StdioTest('x\n', secret),)))
  assert verdict.status == 'wrong_answer'
  assert "got 'clean'" in verdict.reason


def test_bad_tasks_are_refused_by_name():
  with pytest.raises(ValueError, match='tests is empty'):
    sj.StdioTask(ADD, ())
  with pytest.raises(ValueError, match='time_limit_s'):
    sj.StdioTask(ADD, ADD_TESTS, time_limit_s=0)
  with pytest.raises(ValueError, match='StdioTest.output'):
    sj.StdioTest('1', 3)
  with pytest.raises(ValueError, match='time_limit_factor'):
    sj.JudgeOptions(time_limit_factor=0)


def test_count_statuses():
  counts = sj.count_statuses([sj.StdioVerdict('passed'),
                              sj.StdioVerdict('timeout'),
                              sj.StdioVerdict('passed')])
  assert counts['passed'] == 2 and counts['timeout'] == 1
  assert set(counts) == set(sj.STDIO_STATUSES)


# --- the code verifier's hostile programs, as stdio programs -------------


def _hostile_programs():
  sys.path.insert(0, str(REPO_ROOT / 'tests'))
  try:
    import test_verify_code  # pylint: disable=g-import-not-at-top
  finally:
    sys.path.pop(0)
  return test_verify_code.HOSTILE_PROGRAMS, test_verify_code._sandbox_processes


HOSTILE, SANDBOX_PROCESSES = _hostile_programs()
HOSTILE_LIMITS = code_exec.SandboxLimits(memory_mb=512)
# Expected verdicts where there is only one right one.
HOSTILE_STATUSES = {
    'infinite_loop': 'timeout',
    'tamper_with_signals': 'timeout',
    'allocate_100gb': 'memory',
    'print_gigabytes': 'output_limit',
    'sys_exit_before_tests': 'wrong_answer',  # Exits 0 printing nothing.
    'os_exit_before_tests': 'wrong_answer',
    'kill_its_parent': 'runtime_error',
    'use_the_network': 'runtime_error',
    'write_outside_its_directory': 'runtime_error',
}


@pytest.fixture(scope='module')
def hostile_verdicts(tmp_path_factory):
  escape_dir = tmp_path_factory.mktemp('escape')
  escape_path = str(escape_dir / 'escaped.txt')
  judge_tasks = [sj.StdioTask(
      program.format(escape_path=escape_path) if '{escape_path' in program
      else program, ADD_TESTS[:1], time_limit_s=1.0)
                 for program in HOSTILE.values()]
  with sj.StdioJudge(HOSTILE_LIMITS, num_workers=2) as judge:
    verdicts = judge.judge_many(judge_tasks)
  return dict(zip(HOSTILE, verdicts)), escape_dir


@pytest.mark.parametrize('name', list(HOSTILE))
def test_hostile_stdio_program_is_contained(name, hostile_verdicts):
  verdicts, _ = hostile_verdicts
  verdict = verdicts[name]
  assert not verdict.passed, verdict
  assert verdict.status in sj.STDIO_STATUSES
  assert verdict.status != 'judge_error', verdict
  assert verdict.duration_s < 6, verdict
  if name in HOSTILE_STATUSES:
    assert verdict.status == HOSTILE_STATUSES[name], verdict


def test_hostile_stdio_programs_leave_nothing(hostile_verdicts):
  _, escape_dir = hostile_verdicts
  assert list(escape_dir.iterdir()) == []
  if os.geteuid() == 0:
    time.sleep(0.1)
    assert SANDBOX_PROCESSES() == []


# --- a killed verification leaves nothing behind (issue 18, item 7) -----

_DAEMON_PROGRAM = """
import os, time
if os.fork() == 0:
  os.setsid()  # A daemon: outlives its parent unless killed by uid.
  time.sleep(1000)
time.sleep(1000)
"""
# A verification (stdin/stdout judge, or the code verifier) of it, to kill.
_KILLED_HOSTS = {
    'stdio': (
        'from tpt_jax.verify import stdio_judge as sj\n'
        'sj.judge(sj.StdioTask(PROGRAM, (sj.StdioTest("", ""),), '
        'time_limit_s=500))\n'),
    'code': (
        'from tpt_jax.verify import code_exec\n'
        'code_exec.run_sandboxed(code_exec.CodeTask(PROGRAM), '
        'code_exec.SandboxLimits(timeout_s=500, cpu_time_s=500))\n'),
}


def _live_processes_of(uid, session):
  """The sandbox's live processes: by uid (root), else by session."""
  if uid is not None:
    return code_exec.sandbox_processes(uid)
  return code_exec._processes(None, session)


@pytest.mark.parametrize('mode', list(_KILLED_HOSTS))
def test_sigkilled_verification_leaves_no_sandbox(tmp_path, mode):
  env = {**os.environ, 'TMPDIR': str(tmp_path),
         'PYTHONPATH': str(REPO_ROOT)}
  script = f'PROGRAM = {_DAEMON_PROGRAM!r}\n' + _KILLED_HOSTS[mode]
  host = subprocess.Popen([sys.executable, '-c', script], env=env)
  owner = None
  deadline = time.monotonic() + 60
  while owner is None and time.monotonic() < deadline:
    for path in tmp_path.glob('tpt_sandbox_*/owner.json'):
      record = json.loads(path.read_text())
      if 'session' in record:
        owner = record
    time.sleep(0.05)
  assert owner is not None, 'the sandbox never started'
  uid, session = owner['uid'], owner['session']
  # Wait for the supervisor, the program and its daemon.
  while (len(_live_processes_of(uid, session)) < 3 and
         time.monotonic() < deadline):
    time.sleep(0.05)
  assert len(_live_processes_of(uid, session)) >= 3
  host.send_signal(signal.SIGKILL)
  host.wait()
  # The sandbox dies with its host, except what escaped with setsid();
  # the next verification run removes the rest.
  assert list(tmp_path.glob('tpt_sandbox_*')), 'nothing left to clean up?'
  assert code_exec.cleanup_stale_sandboxes(str(tmp_path)) == 1
  assert list(tmp_path.glob('tpt_sandbox_*')) == []
  time.sleep(0.1)
  assert _live_processes_of(uid, session) == []


def test_cleanup_leaves_live_sandboxes_alone(tmp_path):
  base = tmp_path / 'tpt_sandbox_live'
  base.mkdir()
  (base / 'owner.json').write_text(json.dumps({
      'host_pid': os.getpid(),
      'host_start': code_exec._process_start_time(os.getpid()),
      'uid': None, 'session': None}))
  assert code_exec.cleanup_stale_sandboxes(str(tmp_path)) == 0
  assert base.exists()


# --- CLI -------------------------------------------------------------------


def test_cli_stdio_task(tmp_path):
  records = [
      {'program': ADD, 'tests': [{'input': '1 2\n', 'output': '3\n'},
                                 {'input': '2 2', 'output': '4'}]},
      {'program': 'print(0)\n', 'tests': [{'input': '1 2', 'output': '3'}],
       'time_limit_s': 1.0},
      {'program': 'while True: pass\n',
       'tests': [{'input': '1 2', 'output': '3'}], 'time_limit_s': 0.3},
  ]
  source = tmp_path / 'in.jsonl'
  source.write_text(''.join(json.dumps(r) + '\n' for r in records))
  target = tmp_path / 'out.jsonl'
  result = subprocess.run(
      [sys.executable, '-m', 'tpt_jax.verify', '--task=stdio',
       f'--input={source}', f'--output={target}', '--num_workers=2'],
      capture_output=True, text=True, cwd=REPO_ROOT, timeout=120,
      check=False)
  assert result.returncode == 0, result.stderr
  out = [json.loads(line) for line in target.read_text().splitlines()]
  assert [r['status'] for r in out] == ['passed', 'wrong_answer', 'timeout']
  assert [r['first_failed_test'] for r in out] == [None, 0, 0]
  assert [r['correct'] for r in out] == [True, False, False]
  assert result.stdout.strip().splitlines()[-1].startswith('correct: 1/3')


@pytest.mark.parametrize('line, message', [
    ('{"program": "print(1)"}', "missing field 'tests'"),
    ('{"program": "print(1)", "tests": []}', 'tests'),
    ('{"program": "print(1)", "tests": [{"input": "1"}]}', 'tests[0]'),
    ('{"program": "print(1)", "tests": [{"input": "", "output": ""}], '
     '"time_limit_s": -1}', 'time_limit_s'),
])
def test_cli_stdio_names_file_and_line_of_bad_input(tmp_path, line, message):
  source = tmp_path / 'in.jsonl'
  source.write_text('\n' + line + '\n')
  result = subprocess.run(
      [sys.executable, '-m', 'tpt_jax.verify', '--task=stdio',
       f'--input={source}', f'--output={tmp_path / "out.jsonl"}'],
      capture_output=True, text=True, cwd=REPO_ROOT, timeout=120,
      check=False)
  assert result.returncode == 2
  assert f'{source}:2:' in result.stderr
  assert message in result.stderr
