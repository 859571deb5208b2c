"""Sandboxed execution of candidate programs against their tests.

Each candidate runs in a fresh Python process (`run_sandboxed`); a
`CodeVerifier` runs `num_workers` of them at a time. The sandbox, in layers:

* Limits (setrlimit, soft = hard so they cannot be raised): CPU seconds,
  address space, size of any file written (stdout/stderr go to files, so
  this also caps output), open files, no core dumps, and a process count.
* A wall-clock timeout enforced from outside with SIGKILL, which no signal
  handling inside can stop.
* A fresh temporary working directory, deleted afterwards.
* When run as root (the usual case in containers): a private mount namespace
  where every mount is read-only and the working directory is a small
  private tmpfs (so the host's disk cannot be filled), a private
  network namespace (no network at all), and the candidate runs as a random
  unprivileged uid (no capabilities except reading files, so it can import
  the standard library; `no_new_privs` set). A per-sandbox uid makes
  RLIMIT_NPROC a real per-sandbox process limit (root ignores it), stops the
  candidate from signalling anything outside the sandbox, and lets every
  leftover process be found and killed by uid, even ones that left the
  process group with setsid().
* A supervisor process (the candidate's parent, a child subreaper) waits for
  the candidate, then kills and reaps every descendant it left behind, even
  ones that left the process group with setsid(); the host then kills the
  process group, and after a timeout or a killed supervisor also searches
  /proc (by uid, or by session when not root).
* Not root: no namespaces and no uid of its own, so sockets are blocked
  inside Python only, the filesystem is protected by file permissions only,
  and RLIMIT_NPROC counts the user's other processes too. This is weaker:
  prefer running as root or in a container.

Passing needs a positive signal: after the tests complete, the harness
writes a random nonce to a pipe only the harness knows about. A candidate
that exits early (`sys.exit(0)`, `os._exit(0)`), kills its parent, crashes or
is killed is never `passed`. The nonce defends against accidents and crude
tricks, not against a program written to introspect the harness's memory
(it runs in the same interpreter as the tests, so nothing can).

Verdicts: `passed`, `failed` (the tests ran and raised), `timeout` (wall
clock or CPU limit), `error` (the program could not be run, or exited or was
killed before the tests completed), each with a reason.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
import concurrent.futures
import dataclasses
import marshal
import os
import re
import secrets
import select
import shutil
import signal
import subprocess
import sys
import sysconfig
import tempfile
import time

STATUS_PASSED = 'passed'
STATUS_FAILED = 'failed'
STATUS_TIMEOUT = 'timeout'
STATUS_ERROR = 'error'
STATUSES = (STATUS_PASSED, STATUS_FAILED, STATUS_TIMEOUT, STATUS_ERROR)

# Characters of stdout / stderr kept in a verdict (for debugging).
_KEPT_OUTPUT_CHARS = 2000
# Sandbox uids are drawn from [_UID_LOW, _UID_HIGH): far above real users.
_UID_LOW, _UID_HIGH = 1 << 20, 1 << 30
# How long cleanup keeps killing leftover processes before giving up.
_CLEANUP_S = 2.0


@dataclasses.dataclass(frozen=True)
class SandboxLimits:
  """Resource limits of one sandboxed run.

  Attributes:
    timeout_s: wall-clock limit, enforced from outside with SIGKILL.
    cpu_time_s: CPU seconds per process (RLIMIT_CPU).
    memory_mb: address space per process (RLIMIT_AS).
    max_output_bytes: largest file the program may write (RLIMIT_FSIZE);
      stdout and stderr are files, so this also caps output.
    max_processes: processes and threads the program may have at once.
    max_open_files: file descriptors per process (RLIMIT_NOFILE).
    workdir_mb: size of the working directory, a private tmpfs (root only).
  """
  timeout_s: float = 10.0
  cpu_time_s: int = 10
  memory_mb: int = 1024
  max_output_bytes: int = 1 << 20
  max_processes: int = 32
  max_open_files: int = 256
  workdir_mb: int = 64

  def __post_init__(self):
    for field in dataclasses.fields(self):
      value = getattr(self, field.name)
      if not value > 0:
        raise ValueError(f'SandboxLimits.{field.name}={value!r} must be > 0.')


@dataclasses.dataclass(frozen=True)
class CodeTask:
  """A candidate program and the tests it must pass.

  Attributes:
    program: the candidate's complete Python source.
    test_code: Python run after the program, in its namespace; it raises on
      failure (HumanEval: defines `check`; the CLI: asserts).
    test_list: statements run one by one after `test_code` (MBPP asserts).
    entry_point: if set, `check(<entry_point>)` is called last (HumanEval).
    test_setup_code: Python run between the program and the tests.
  """
  program: str
  test_code: str = ''
  test_list: tuple[str, ...] = ()
  entry_point: str = ''
  test_setup_code: str = ''


@dataclasses.dataclass(frozen=True)
class CodeVerdict:
  """The outcome of one sandboxed run.

  Attributes:
    status: one of STATUSES.
    reason: why, in words ('' when passed).
    duration_s: wall-clock seconds of the run.
    stdout: the start of the program's stdout.
    stderr: the start of the program's stderr.
  """
  status: str
  reason: str = ''
  duration_s: float = 0.0
  stdout: str = ''
  stderr: str = ''

  @property
  def passed(self) -> bool:
    return self.status == STATUS_PASSED


_CODE_FENCE = re.compile(r'```[ \t]*(?:python|py|Python)?[ \t]*\n(.*?)```',
                         re.DOTALL)


def extract_code(completion: str) -> str:
  """The program in a completion: its first fenced code block, else the text.

  Also understands MBPP's few-shot `[BEGIN] ... [DONE]` format.
  """
  if not isinstance(completion, str):
    return ''
  for match in _CODE_FENCE.finditer(completion):
    if match.group(1).strip():
      return match.group(1)
  if '[BEGIN]' in completion:
    body = completion.split('[BEGIN]', 1)[1]
    return body.split('[DONE]', 1)[0]
  return completion


def task_for_problem(problem, completion: str) -> CodeTask:
  """The `CodeTask` checking `completion` against a `sources.Problem`.

  HumanEval completions may be the function body only (the usual format):
  then the prompt is prepended; a completion that defines the entry point
  itself is used as is.
  """
  code = extract_code(completion)
  if problem.entry_point and not re.search(
      rf'^\s*def\s+{re.escape(problem.entry_point)}\s*\(', code, re.MULTILINE):
    code = problem.question + code
  return CodeTask(program=code, test_code=problem.test_code,
                  test_list=tuple(problem.test_list),
                  entry_point=problem.entry_point,
                  test_setup_code=problem.test_setup_code)


# The process started for each run. It reads its job as JSON on stdin, sets
# up isolation and limits, then forks: the child runs the candidate and the
# tests and reports on the result pipe; the parent (the supervisor) waits for
# it, kills every leftover process of the sandbox uid and reports how the
# child ended. Kept to the standard library and self-contained: it must not
# import this package (whose package __init__ may import heavy libraries).
_DRIVER = r'''
import marshal, os, resource, signal, sys

def main():
  job = marshal.loads(sys.stdin.buffer.read())
  null = os.open(os.devnull, os.O_RDONLY)
  os.dup2(null, 0)
  os.close(null)
  nonce, result_fd = job['nonce'], job['result_fd']
  write, getpid, exit_now = os.write, os.getpid, os._exit

  def report(message):
    # One line of space-separated fields: nonce, pid, then key=hex(value).
    fields = [nonce, str(getpid())]
    for key, value in message.items():
      fields.append(key + '=' + str(value).encode('utf-8', 'replace').hex())
    try:
      write(result_fd, (' '.join(fields) + '\n').encode())
    except BaseException:
      pass

  def describe(error):
    try:
      text = str(error)
    except BaseException:
      text = '?'
    return (type(error).__name__ + (': ' + text if text else ''))[:1000]

  isolated_network = False
  try:
    if job['uid'] is not None:
      isolated_network = isolate(job, job['workdir'], job['uid'])
    set_limits(job)
  except BaseException as e:
    report({'status': 'error',
            'reason': 'sandbox setup failed: ' + describe(e)})
    exit_now(70)

  # Orphaned descendants of the candidate become the supervisor's children,
  # so it can kill and reap them (even those that left with setsid()).
  import ctypes
  ctypes.CDLL(None).prctl(36, 1, 0, 0, 0)  # PR_SET_CHILD_SUBREAPER
  child = os.fork()
  if child:
    supervise(child, job, report)
  run_candidate(job, report, describe, isolated_network)

def isolate(job, workdir, uid):
  """Read-only filesystem but `workdir`, no network, unprivileged `uid`."""
  import ctypes
  libc = ctypes.CDLL(None, use_errno=True)
  clone_newns, clone_newnet = 0x00020000, 0x40000000
  ms_rdonly, ms_nosuid, ms_nodev, ms_remount, ms_bind = 1, 2, 4, 32, 4096
  ms_rec, ms_private = 16384, 1 << 18
  isolated_network = libc.unshare(clone_newnet) == 0
  if libc.unshare(clone_newns) == 0:
    if libc.mount(None, b'/', None, ms_rec | ms_private, None) != 0:
      raise OSError(ctypes.get_errno(), 'cannot make mounts private')
    # The working directory becomes a private tmpfs of bounded size: the
    # host's disk cannot be filled, and it vanishes with the namespace.
    options = 'size=%d,mode=0700,uid=%d,gid=%d' % (job['workdir_bytes'], uid,
                                                   uid)
    if libc.mount(b'tmpfs', workdir.encode(), b'tmpfs', ms_nosuid | ms_nodev,
                  options.encode()) != 0:
      raise OSError(ctypes.get_errno(), 'cannot mount the workdir')
    with open('/proc/self/mounts') as mounts:
      points = [line.split()[1] for line in mounts]
    for point in points:
      if point == workdir:
        continue
      point = point.replace('\\040', ' ').encode()
      libc.mount(None, point, None, ms_remount | ms_bind | ms_rdonly, None)
    if libc.mount(None, b'/', None, ms_remount | ms_bind | ms_rdonly, None):
      raise OSError(ctypes.get_errno(), 'cannot make / read-only')
    os.chdir(workdir)  # Onto the new mount, not the directory below it.
  # Drop to `uid`, keeping only CAP_DAC_READ_SEARCH (read any file, e.g. a
  # standard library under /root), then forbid gaining privileges.
  pr_set_keepcaps, pr_set_no_new_privs = 8, 38
  libc.prctl(pr_set_keepcaps, 1, 0, 0, 0)
  os.setgroups([])
  os.setresgid(uid, uid, uid)
  os.setresuid(uid, uid, uid)

  class Header(ctypes.Structure):
    _fields_ = [('version', ctypes.c_uint32), ('pid', ctypes.c_int)]

  class Data(ctypes.Structure):
    _fields_ = [('effective', ctypes.c_uint32), ('permitted', ctypes.c_uint32),
                ('inheritable', ctypes.c_uint32)]

  header = Header(0x20080522, 0)
  data = (Data * 2)()
  data[0].effective = data[0].permitted = 1 << 2  # CAP_DAC_READ_SEARCH
  libc.capset(ctypes.byref(header), data)  # Best effort: imports may fail.
  if libc.prctl(pr_set_no_new_privs, 1, 0, 0, 0) != 0:
    raise OSError(ctypes.get_errno(), 'cannot set no_new_privs')
  if os.getuid() == 0 or os.geteuid() == 0:
    raise OSError('still root after dropping privileges')
  return isolated_network

def set_limits(job):
  def limit(kind, value):
    resource.setrlimit(kind, (value, value))
  cpu = job['cpu_time_s']
  resource.setrlimit(resource.RLIMIT_CPU, (cpu, cpu + 1))
  limit(resource.RLIMIT_AS, job['memory_bytes'])
  limit(resource.RLIMIT_FSIZE, job['max_output_bytes'])
  limit(resource.RLIMIT_NOFILE, job['max_open_files'])
  limit(resource.RLIMIT_CORE, 0)
  processes = job['max_processes']
  if job['uid'] is None:
    # The count is per user: add the processes the user already has.
    uid = os.getuid()
    existing = 0
    for name in os.listdir('/proc'):
      if name.isdigit():
        try:
          existing += os.stat('/proc/' + name).st_uid == uid
        except OSError:
          pass
    processes += existing
  limit(resource.RLIMIT_NPROC, processes)

def supervise(child, job, report):
  while True:
    try:
      _, status, usage = os.wait4(child, 0)
      break
    except InterruptedError:
      continue
  report({'supervisor': 1, 'wait_status': status,
          'cpu_s': usage.ru_utime + usage.ru_stime})
  me = str(os.getpid()).encode()
  for _ in range(1000):
    if job['uid'] is not None:
      try:
        os.kill(-1, signal.SIGKILL)  # Every process of the sandbox uid but us.
      except OSError:
        pass
    else:
      for name in os.listdir('/proc'):
        try:
          with open('/proc/' + name + '/stat', 'rb') as stat:
            if stat.read().rsplit(b')', 1)[1].split()[1] == me:
              os.kill(int(name), signal.SIGKILL)
        except (OSError, ValueError, IndexError):
          pass
    try:
      while os.waitpid(-1, os.WNOHANG)[0]:
        pass
    except ChildProcessError:
      os._exit(0)  # No descendant left: the host need not look for any.
  os._exit(3)

def block_sockets():
  import socket
  def refuse(*args, **kwargs):
    raise OSError('network access is disabled in the sandbox')
  for name in ('socket', 'create_connection', 'create_server', 'socketpair',
               'fromfd', 'getaddrinfo'):
    setattr(socket, name, refuse)

def run_candidate(job, report, describe, isolated_network):
  exit_now = os._exit
  flush_outputs = lambda: [s.flush() for s in (sys.stdout, sys.stderr)]
  def finish(status, reason):
    report({'status': status, 'reason': reason})
    try:
      flush_outputs()
    except BaseException:
      pass
    exit_now(0)

  if not isolated_network:
    block_sockets()
  # Started with -S (site processing costs more than the rest of start-up):
  # put site-packages on the path and provide site's exit()/quit().
  sys.path.extend(job['site_packages'])
  import builtins
  builtins.exit = builtins.quit = sys.exit
  sys.argv = ['candidate']
  namespace = {'__name__': '__candidate__', '__builtins__': __builtins__}
  try:
    program = compile(job['program'], '<candidate>', 'exec')
  except BaseException as e:
    finish('error', 'the program does not compile: ' + describe(e))
  try:
    exec(program, namespace)
  except BaseException as e:
    finish('error', 'the program raised %s before the tests ran' % describe(e))
  try:
    if job['test_setup_code']:
      exec(compile(job['test_setup_code'], '<test setup>', 'exec'), namespace)
  except BaseException as e:
    finish('error', 'the test setup raised ' + describe(e))
  stage = 'the tests'
  try:
    if job['test_code']:
      exec(compile(job['test_code'], '<tests>', 'exec'), namespace)
    tests = job['test_list']
    for index, test in enumerate(tests):
      stage = 'test %d of %d (%s)' % (index + 1, len(tests), test[:200])
      exec(compile(test, '<test %d>' % (index + 1), 'exec'), namespace)
    entry_point = job['entry_point']
    if entry_point:
      stage = 'check(%s)' % entry_point
      if entry_point not in namespace:
        finish('failed', 'the program does not define ' + entry_point)
      namespace['check'](namespace[entry_point])
  except AssertionError as e:
    finish('failed', stage + ' failed: ' + describe(e))
  except BaseException as e:
    finish('failed', stage + ' raised ' + describe(e))
  finish('passed', '')

main()
'''


def _sandbox_env(workdir: str) -> dict[str, str]:
  return {
      'PATH': '/usr/local/bin:/usr/bin:/bin',
      'HOME': workdir,
      'TMPDIR': workdir,
      'LANG': 'C.UTF-8',
      'PYTHONHASHSEED': '0',  # Deterministic set order across runs.
      'PYTHONDONTWRITEBYTECODE': '1',
      'PYTHONIOENCODING': 'utf-8',
      'OMP_NUM_THREADS': '1',
      'OPENBLAS_NUM_THREADS': '1',
      'MKL_NUM_THREADS': '1',
  }


def _site_packages() -> list[str]:
  """This interpreter's site-packages, for candidates that import numpy etc."""
  paths = sysconfig.get_paths()
  return sorted({paths['purelib'], paths['platlib']})


def _wait(process: subprocess.Popen[bytes], timeout_s: float) -> bool:
  """Waits up to `timeout_s` for `process` to exit; whether it did."""
  try:
    pidfd = os.pidfd_open(process.pid)
  except (AttributeError, OSError):
    try:
      process.wait(timeout_s)
      return True
    except subprocess.TimeoutExpired:
      return False
  try:
    poller = select.poll()
    poller.register(pidfd, select.POLLIN)
    deadline = time.monotonic() + timeout_s
    while True:
      remaining = deadline - time.monotonic()
      if remaining <= 0 or poller.poll(remaining * 1000):
        break
  finally:
    os.close(pidfd)
  return process.poll() is not None


def _processes(uid: int | None, session: int) -> list[int]:
  """Live (non-zombie) processes of the sandbox: by uid if set, else session."""
  found = []
  for name in os.listdir('/proc'):
    if not name.isdigit():
      continue
    pid = int(name)
    try:
      if uid is not None:
        if os.stat(f'/proc/{name}').st_uid != uid:
          continue
      elif os.getsid(pid) != session:
        continue
      with open(f'/proc/{name}/stat', 'rb') as stat:
        state = stat.read().rsplit(b')', 1)[1].split()[0]
      if state not in (b'Z', b'X'):
        found.append(pid)
    except (OSError, IndexError):
      continue
  return found


def _kill_sandbox(session: int, uid: int | None, scan: bool = True) -> int:
  """Kills every process of the sandbox; returns how many were left over.

  `scan=False` only signals the process group: enough when the supervisor
  has already killed and reaped every descendant.
  """
  try:
    os.killpg(session, signal.SIGKILL)
  except OSError:
    pass
  if not scan:
    return 0
  leftovers = 0
  deadline = time.monotonic() + _CLEANUP_S
  while True:
    pids = _processes(uid, session)
    if not pids or time.monotonic() > deadline:
      return leftovers
    leftovers = max(leftovers, len(pids))
    for pid in pids:
      try:
        os.kill(pid, signal.SIGKILL)
      except OSError:
        pass
    time.sleep(0.005)


def _parse_message(line: bytes) -> dict[str, str] | None:
  """A harness message: 'nonce pid key=hexvalue ...' -> dict, or None."""
  fields = line.split()
  if len(fields) < 2:
    return None
  message = {'nonce': fields[0].decode('ascii', 'replace'),
             'pid': fields[1].decode('ascii', 'replace')}
  for field in fields[2:]:
    key, _, value = field.partition(b'=')
    try:
      message[key.decode('ascii')] = bytes.fromhex(value.decode('ascii')
                                                  ).decode('utf-8', 'replace')
    except ValueError:
      return None
  return message


def _read_messages(fd: int) -> list[dict[str, str]]:
  os.set_blocking(fd, False)
  chunks = []
  total = 0
  while total < (1 << 20):
    try:
      chunk = os.read(fd, 65536)
    except BlockingIOError:
      break
    if not chunk:
      break
    chunks.append(chunk)
    total += len(chunk)
  messages = []
  for line in b''.join(chunks).splitlines():
    message = _parse_message(line)
    if message is not None:
      messages.append(message)
  return messages


def _read_start(path: str) -> str:
  try:
    with open(path, 'rb') as f:
      return f.read(_KEPT_OUTPUT_CHARS).decode('utf-8', 'replace')
  except OSError:
    return ''


def _describe_wait_status(status: int) -> str:
  if os.WIFSIGNALED(status):
    number = os.WTERMSIG(status)
    try:
      return f'was killed by {signal.Signals(number).name}'
    except ValueError:
      return f'was killed by signal {number}'
  if os.WIFEXITED(status):
    return f'exited with code {os.WEXITSTATUS(status)}'
  return f'ended with wait status {status}'


def _judge(messages: Sequence[dict[str, str]], nonce: str, timed_out: bool,
           returncode: int | None, limits: SandboxLimits) -> tuple[str, str]:
  """The (status, reason) of a run from the harness's messages."""
  ours = [m for m in messages if m.get('nonce') == nonce]
  reports = [m for m in ours if m.get('status') in STATUSES]
  supervisor = next((m for m in ours if m.get('supervisor')), None)
  if timed_out:
    return STATUS_TIMEOUT, (f'exceeded the {limits.timeout_s:g} s wall-clock '
                            'limit')
  not_passed = [r for r in reports if r['status'] != STATUS_PASSED]
  if not_passed:
    return not_passed[0]['status'], str(not_passed[0].get('reason', ''))
  if supervisor is None:
    return STATUS_ERROR, (
        'the sandbox supervisor ended before the program did (exit code '
        f'{returncode}); did the program kill its parent?')
  try:
    status = int(supervisor.get('wait_status', ''))
    cpu_s = float(supervisor.get('cpu_s', '0'))
  except ValueError:
    return STATUS_ERROR, 'malformed supervisor report'
  if reports and status == 0:
    return STATUS_PASSED, ''
  how = _describe_wait_status(status)
  if reports:
    return STATUS_ERROR, f'the program {how} after the tests'
  if os.WIFSIGNALED(status):
    number = os.WTERMSIG(status)
    if number == signal.SIGXCPU or (number == signal.SIGKILL and
                                    cpu_s >= limits.cpu_time_s - 0.05):
      return STATUS_TIMEOUT, (f'exceeded the {limits.cpu_time_s} s CPU time '
                              'limit')
    if number == signal.SIGXFSZ:
      return STATUS_ERROR, (f'wrote more than {limits.max_output_bytes} bytes '
                            'to stdout, stderr or a file')
    if number == signal.SIGSEGV:
      return STATUS_ERROR, ('the program crashed (SIGSEGV, e.g. a stack '
                            'overflow from deep recursion)')
  return STATUS_ERROR, f'the program {how} before the tests completed'


def run_sandboxed(task: CodeTask,
                  limits: SandboxLimits = SandboxLimits()) -> CodeVerdict:
  """Runs `task` in a fresh sandbox process; never raises."""
  start = time.monotonic()
  try:
    return _run_sandboxed(task, limits, start)
  except Exception as e:  # pylint: disable=broad-except
    return CodeVerdict(STATUS_ERROR,
                       f'sandbox failure: {type(e).__name__}: {e}'[:1000],
                       time.monotonic() - start)


def _run_sandboxed(task: CodeTask, limits: SandboxLimits,
                   start: float) -> CodeVerdict:
  if not isinstance(task.program, str):
    return CodeVerdict(STATUS_ERROR, 'the program is not a string')
  nonce = secrets.token_hex(16)
  uid = (_UID_LOW + secrets.randbelow(_UID_HIGH - _UID_LOW)
         if os.geteuid() == 0 else None)
  base = tempfile.mkdtemp(prefix='tpt_sandbox_')
  result_read = result_write = -1
  process = None
  try:
    workdir = os.path.join(base, 'work')
    os.mkdir(workdir, 0o700)
    if uid is not None:
      os.chown(workdir, uid, uid)
    stdout_path = os.path.join(base, 'stdout')
    stderr_path = os.path.join(base, 'stderr')
    result_read, result_write = os.pipe()
    job = {
        'nonce': nonce, 'result_fd': result_write, 'uid': uid,
        'workdir': workdir, 'program': task.program,
        'test_code': task.test_code, 'test_list': list(task.test_list),
        'entry_point': task.entry_point,
        'test_setup_code': task.test_setup_code,
        'cpu_time_s': int(limits.cpu_time_s),
        'memory_bytes': int(limits.memory_mb) << 20,
        'max_output_bytes': int(limits.max_output_bytes),
        'max_processes': int(limits.max_processes),
        'max_open_files': int(limits.max_open_files),
        'workdir_bytes': int(limits.workdir_mb) << 20,
        'site_packages': _site_packages(),
    }
    with open(stdout_path, 'wb') as stdout, open(stderr_path, 'wb') as stderr:
      process = subprocess.Popen(
          [sys.executable, '-S', '-c', _DRIVER],
          stdin=subprocess.PIPE, stdout=stdout, stderr=stderr,
          pass_fds=(result_write,), cwd=workdir, env=_sandbox_env(workdir),
          start_new_session=True)
    os.close(result_write)
    result_write = -1
    try:
      process.stdin.write(marshal.dumps(job))
      process.stdin.close()
    except BrokenPipeError:
      pass
    timed_out = not _wait(process, limits.timeout_s - (time.monotonic() -
                                                       start))
    # Exit code 0: the supervisor ran to its end, leaving no descendant.
    _kill_sandbox(process.pid, uid, scan=timed_out or process.returncode != 0)
    process.wait()
    duration_s = time.monotonic() - start
    status, reason = _judge(_read_messages(result_read), nonce, timed_out,
                            process.returncode, limits)
    return CodeVerdict(status, reason, duration_s, _read_start(stdout_path),
                       _read_start(stderr_path))
  finally:
    if process is not None and process.returncode is None:
      _kill_sandbox(process.pid, uid)
      process.wait()
    for fd in (result_read, result_write):
      if fd >= 0:
        os.close(fd)
    shutil.rmtree(base, ignore_errors=True)


class CodeVerifier:
  """Runs code tasks in sandboxes, `num_workers` processes at a time.

  Each task gets its own fresh sandbox process (nothing is reused between
  candidates); threads here only wait on those processes.
  """

  def __init__(self, limits: SandboxLimits = SandboxLimits(),
               num_workers: int = 0):
    """`num_workers=0` means one per CPU core."""
    if num_workers < 0:
      raise ValueError(f'num_workers={num_workers} must be >= 0.')
    self.limits = limits
    self.num_workers = num_workers or os.cpu_count() or 1
    self._executor = concurrent.futures.ThreadPoolExecutor(
        self.num_workers, thread_name_prefix='sandbox')

  def __enter__(self) -> CodeVerifier:
    return self

  def __exit__(self, *unused_exc_info) -> None:
    self.close()

  def close(self) -> None:
    self._executor.shutdown(wait=True, cancel_futures=True)

  def verify(self, task: CodeTask) -> CodeVerdict:
    return run_sandboxed(task, self.limits)

  def verify_many(self, tasks: Iterable[CodeTask]) -> list[CodeVerdict]:
    """Verdicts in the order of `tasks`."""
    return list(self._executor.map(
        lambda task: run_sandboxed(task, self.limits), tasks))
