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
* The driver and every process it forks die with their parent
  (PR_SET_PDEATHSIG), so a verification killed with SIGKILL takes its
  sandboxes with it; what escaped (a daemon that called setsid()) and the
  `tpt_sandbox_*` directory are removed by the next `CodeVerifier`
  (`cleanup_stale_sandboxes`, which each sandbox's `owner.json` makes safe
  for sandboxes of other live processes).
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

`run_driver` is the one place a sandbox is made, watched and removed; the
driver has two modes: 'code' (the above) and 'stdio' (a whole program run
once per test input, for `stdio_judge`, which judges its outputs).

Length: the sandbox is a security boundary; its process set-up, limits,
watchdog, clean-up after a kill and the harness that runs inside it are
kept in one module so that they can be audited together.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
import concurrent.futures
import dataclasses
import json
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
from typing import Any

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
# Every sandbox is a directory of this prefix in the temporary directory,
# holding _OWNER_FILE (its host process, uid and session) while it runs.
_SANDBOX_PREFIX = 'tpt_sandbox_'
_OWNER_FILE = 'owner.json'
# A sandbox directory without an owner record is stale after this long.
_OWNERLESS_MAX_AGE_S = 600.0


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
      if not isinstance(value, bytes):
        value = str(value).encode('utf-8', 'replace')
      fields.append(key + '=' + value.hex())
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
    # Die with the host (set after the uid change, which clears it).
    die_with_parent(job['host_pid'])
    set_limits(job)
  except BaseException as e:
    report({'status': 'error',
            'reason': 'sandbox setup failed: ' + describe(e)})
    exit_now(70)

  # Orphaned descendants of the candidate become the supervisor's children,
  # so it can kill and reap them (even those that left with setsid()).
  import ctypes
  ctypes.CDLL(None).prctl(36, 1, 0, 0, 0)  # PR_SET_CHILD_SUBREAPER
  if job['mode'] == 'stdio':
    job['isolated_network'] = isolated_network
    run_stdio(job, report, describe)
  supervisor = getpid()
  child = os.fork()
  if child:
    supervise(child, job, report)
  die_with_parent(supervisor)
  run_candidate(job, report, describe, isolated_network)

def die_with_parent(parent):
  """SIGKILL this process when `parent` dies (PR_SET_PDEATHSIG)."""
  import ctypes
  ctypes.CDLL(None).prctl(1, signal.SIGKILL, 0, 0, 0)
  if os.getppid() != parent:  # It died before the signal was armed.
    os._exit(71)

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
  limit(resource.RLIMIT_FSIZE, job.get('supervisor_file_bytes',
                                      job['max_output_bytes']))
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
  os._exit(0 if kill_descendants(job) else 3)

def kill_descendants(job):
  """Kills and reaps every process the candidate left; whether none is left.

  With a sandbox uid: every process of that uid but this one; else this
  process's children (orphans come to it: it is a child subreaper).
  """
  import time
  me = str(os.getpid()).encode()
  deadline = time.monotonic() + 2.0
  rounds = 0
  while rounds < 1000 or time.monotonic() < deadline:
    rounds += 1
    if rounds > 1000:
      time.sleep(0.001)  # Let processes caught mid-fork finish forking.
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
      return True  # No descendant left.
  return False

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

def run_stdio(job, report, describe):
  """Runs the program once per input, each in a fresh forked child.

  Reports one message per test (how the child ended, its CPU and wall time,
  its stdout and the start of its stderr); the host compares the outputs
  (the expected outputs never enter the sandbox). Never returns.
  """
  import time
  try:
    code = compile(job['program'], '<program>', 'exec')
  except BaseException as e:
    report({'status': 'syntax_error', 'reason': describe(e)})
    os._exit(0)
  cpu_limit, wall_limit = job['test_cpu_s'], job['test_wall_s']
  ticks = os.sysconf('SC_CLK_TCK')
  supervisor = os.getpid()
  for index, data in enumerate(job['inputs']):
    stdin_fd = scratch_file(job, 'stdin')
    write_all(stdin_fd, data)
    os.lseek(stdin_fd, 0, os.SEEK_SET)
    stdout_fd, stderr_fd = scratch_file(job, 'stdout'), scratch_file(job,
                                                                     'stderr')
    status_read, status_write = os.pipe()
    start = time.monotonic()
    child = os.fork()
    if not child:
      os.close(status_read)
      run_test(code, job, supervisor, stdin_fd, stdout_fd, stderr_fd,
               status_write)
    os.close(status_write)
    os.close(stdin_fd)
    status, cpu_s, killed = wait_test(child, cpu_limit, wall_limit, start,
                                      ticks)
    wall_s = time.monotonic() - start
    left_processes = not kill_descendants(job)
    os.set_blocking(status_read, False)
    try:
      flags = os.read(status_read, 16)
    except OSError:
      flags = b''
    os.close(status_read)
    output_bytes = os.fstat(stdout_fd).st_size
    stdout = read_back(stdout_fd, job['max_output_bytes'] + 1)
    stderr = read_back(stderr_fd, 2000)
    report({'test': index, 'wait_status': status, 'cpu_s': cpu_s,
            'wall_s': wall_s, 'time_killed': int(killed),
            'memory': int(flags[:1] == b'M'), 'setup_failed':
            int(flags[:1] == b'S'), 'output_bytes': output_bytes,
            'left_processes': int(left_processes), 'stdout': stdout,
            'stderr': stderr})
    if left_processes:
      os._exit(3)  # The host kills them by uid (or session).
  report({'done': len(job['inputs'])})
  os._exit(0)

def write_all(fd, data):
  view = memoryview(data)
  while view:
    view = view[os.write(fd, view):]

def scratch_file(job, name):
  """A new anonymous file (memfd, else an unlinked file in the workdir)."""
  try:
    return os.memfd_create(name, 0)
  except (AttributeError, OSError):
    path = os.path.join(job['workdir'], '.%s_%d' % (name, os.getpid()))
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_TRUNC, 0o600)
    os.unlink(path)
    return fd

def read_back(fd, limit):
  os.lseek(fd, 0, os.SEEK_SET)
  chunks, total = [], 0
  while total < limit:
    chunk = os.read(fd, min(1 << 20, limit - total))
    if not chunk:
      break
    chunks.append(chunk)
    total += len(chunk)
  os.close(fd)
  return b''.join(chunks)

def cpu_seconds(pid, ticks):
  try:
    with open('/proc/%d/stat' % pid, 'rb') as stat:
      fields = stat.read().rsplit(b')', 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / ticks
  except (OSError, ValueError, IndexError):
    return 0.0

def wait_test(child, cpu_limit, wall_limit, start, ticks):
  """Waits for a test's child, killing it past its CPU or wall limit.

  Returns (wait status, CPU seconds, whether it was killed for time).
  """
  import select, time
  try:
    pidfd = os.pidfd_open(child)
    poller = select.poll()
    poller.register(pidfd, select.POLLIN)
  except (AttributeError, OSError):
    poller = None
  killed = False
  while True:
    pid, status, usage = os.wait4(child, 0 if killed else os.WNOHANG)
    if pid:
      break
    elapsed = time.monotonic() - start
    cpu = cpu_seconds(child, ticks)
    if cpu > cpu_limit or elapsed > wall_limit:
      os.kill(child, signal.SIGKILL)
      killed = True
      continue
    # CPU time grows no faster than wall time (one thread at a time).
    pause = max(0.002, min(cpu_limit - cpu, wall_limit - elapsed) + 0.001)
    if poller is not None:
      poller.poll(pause * 1000)
    else:
      time.sleep(min(pause, 0.005))
  if poller is not None:
    os.close(pidfd)
  return status, usage.ru_utime + usage.ru_stime, killed

def run_test(code, job, supervisor, stdin_fd, stdout_fd, stderr_fd,
             status_fd):
  """The child of one test: the program as `python3 program.py < input`."""
  import io, types
  try:
    die_with_parent(supervisor)
    for target, fd in ((0, stdin_fd), (1, stdout_fd), (2, stderr_fd)):
      os.dup2(fd, target)
    for fd in (stdin_fd, stdout_fd, stderr_fd, job['result_fd']):
      os.close(fd)
    output_cap = job['max_output_bytes'] + 1
    resource.setrlimit(resource.RLIMIT_FSIZE, (output_cap, output_cap))
    cpu = job['test_cpu_backstop_s']
    resource.setrlimit(resource.RLIMIT_CPU, (cpu, cpu + 1))
    # Python ignores SIGXFSZ; a program writing past the cap is killed.
    signal.signal(signal.SIGXFSZ, signal.SIG_DFL)
    # Streams as Python makes them for files: stdout fully buffered.
    sys.stdin = sys.__stdin__ = io.TextIOWrapper(
        io.BufferedReader(io.FileIO(0, 'r', closefd=False)),
        encoding='utf-8', errors='strict', newline='\n')
    sys.stdout = sys.__stdout__ = io.TextIOWrapper(
        io.BufferedWriter(io.FileIO(1, 'w', closefd=False)),
        encoding='utf-8', errors='strict', newline='\n')
    sys.stderr = sys.__stderr__ = io.TextIOWrapper(
        io.BufferedWriter(io.FileIO(2, 'w', closefd=False)),
        encoding='utf-8', errors='backslashreplace', newline='\n',
        line_buffering=True)
    if not job['isolated_network']:
      block_sockets()
    sys.path.extend(job['site_packages'])
    import builtins
    builtins.exit = builtins.quit = sys.exit
    sys.argv = ['program.py']
    main_module = types.ModuleType('__main__')
    main_module.__builtins__ = builtins
    sys.modules['__main__'] = main_module
  except BaseException:
    os.write(status_fd, b'S')
    os._exit(70)
  exit_code = 0
  try:
    exec(code, main_module.__dict__)
  except SystemExit as e:
    exit_code = exit_status(e.code)
  except BaseException as e:
    if isinstance(e, MemoryError):
      os.write(status_fd, b'M')
    exit_code = 1
    try:
      sys.__excepthook__(type(e), e, e.__traceback__)
    except BaseException:
      pass
  try:
    threading = sys.modules.get('threading')
    if threading is not None:
      threading._shutdown()
    import atexit
    atexit._run_exitfuncs()
  except SystemExit as e:
    exit_code = exit_status(e.code)
  except BaseException:
    pass
  for stream in (sys.stdout, sys.stderr):
    try:
      stream.flush()
    except BaseException:
      exit_code = exit_code or 120  # As Python when flushing at exit fails.
  os._exit(exit_code)

def exit_status(code):
  """The exit status of SystemExit(code), as Python computes it."""
  if code is None:
    return 0
  if isinstance(code, int):
    return code & 0xff
  try:
    sys.stderr.write(str(code) + '\n')
  except BaseException:
    pass
  return 1

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


def _process_uid_and_state(pid: int) -> tuple[int, bytes] | None:
  """(real uid, state letter) of process `pid`, or None if it is gone.

  Read from /proc/<pid>/status: sandbox processes changed their uid, which
  makes them non-dumpable, so /proc/<pid> itself is owned by root.
  """
  try:
    with open(f'/proc/{pid}/status', 'rb') as status:
      fields = dict(line.split(b':', 1) for line in status.read().splitlines()
                    if b':' in line)
    return int(fields[b'Uid'].split()[0]), fields[b'State'].split()[0]
  except (OSError, KeyError, ValueError, IndexError):
    return None


def sandbox_processes(uid: int | None = None) -> list[int]:
  """Live (non-zombie) processes running as sandbox uid `uid`, or as any
  sandbox uid when None (root mode; as a user there are none)."""
  found = []
  for name in os.listdir('/proc'):
    if not name.isdigit():
      continue
    info = _process_uid_and_state(int(name))
    if info is None or info[1] in (b'Z', b'X'):
      continue
    if (info[0] == uid if uid is not None else
        _UID_LOW <= info[0] < _UID_HIGH):
      found.append(int(name))
  return found


def _processes(uid: int | None, session: int | None) -> list[int]:
  """Live (non-zombie) processes of the sandbox: by uid if set, else session.
  """
  if uid is not None:
    return sandbox_processes(uid)
  if session is None:
    return []
  found = []
  for name in os.listdir('/proc'):
    if not name.isdigit():
      continue
    pid = int(name)
    try:
      if os.getsid(pid) != session:
        continue
      with open(f'/proc/{name}/stat', 'rb') as stat:
        state = stat.read().rsplit(b')', 1)[1].split()[0]
      if state not in (b'Z', b'X'):
        found.append(pid)
    except (OSError, IndexError):
      continue
  return found


def _kill_sandbox(session: int | None, uid: int | None,
                  scan: bool = True) -> int:
  """Kills every process of the sandbox; returns how many were left over.

  `session` is the driver's pid (its process group and session; None when
  unknown). `scan=False` only signals the process group: enough when the
  supervisor has already killed and reaped every descendant.
  """
  if session is not None and session > 0:
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


def _parse_message(line: bytes, raw_keys: frozenset[str] = frozenset()
                   ) -> dict[str, str | bytes] | None:
  """A harness message: 'nonce pid key=hexvalue ...' -> dict, or None.

  Values are text, except those of `raw_keys`, kept as bytes.
  """
  fields = line.split()
  if len(fields) < 2:
    return None
  message = {'nonce': fields[0].decode('ascii', 'replace'),
             'pid': fields[1].decode('ascii', 'replace')}
  for field in fields[2:]:
    key, _, value = field.partition(b'=')
    try:
      name = key.decode('ascii')
      raw = bytes.fromhex(value.decode('ascii'))
    except ValueError:
      return None
    message[name] = raw if name in raw_keys else raw.decode('utf-8',
                                                            'replace')
  return message


@dataclasses.dataclass(frozen=True)
class _DriverRun:
  """How a sandbox driver process ended (see `_run_driver`)."""
  timed_out: bool
  stopped: bool
  returncode: int | None
  duration_s: float
  stdout: str
  stderr: str


class _MessageReader:
  """Reads the result pipe while the driver runs: whole lines, bounded."""

  def __init__(self, fd: int, nonce: str, raw_keys: frozenset[str],
               max_line_bytes: int, max_total_bytes: int):
    self.fd = fd
    self.open = True
    self._nonce = nonce
    self._raw_keys = raw_keys
    self._max_line_bytes = max_line_bytes
    self._max_total_bytes = max_total_bytes
    self._pending = bytearray()
    self._total = 0
    os.set_blocking(fd, False)

  def read(self) -> list[dict[str, str | bytes]]:
    """The complete messages of this driver available now."""
    messages = []
    while self.open:
      try:
        chunk = os.read(self.fd, 1 << 20)
      except BlockingIOError:
        break
      if not chunk:
        self.open = False
        break
      self._total += len(chunk)
      self._pending += chunk
      while True:
        end = self._pending.find(b'\n')
        if end < 0:
          break
        message = _parse_message(bytes(self._pending[:end]), self._raw_keys)
        del self._pending[:end + 1]
        if message is not None and message['nonce'] == self._nonce:
          messages.append(message)
      if (len(self._pending) > self._max_line_bytes or
          self._total > self._max_total_bytes):
        self.open = False  # A flood: stop reading, the rest is not trusted.
    return messages


def _process_start_time(pid: int) -> int | None:
  """The start time of process `pid` in clock ticks since boot, or None."""
  try:
    with open(f'/proc/{pid}/stat', 'rb') as stat:
      return int(stat.read().rsplit(b')', 1)[1].split()[19])
  except (OSError, ValueError, IndexError):
    return None


def _write_owner(base: str, owner: dict[str, int | None]) -> None:
  """Records who runs the sandbox in `base` (for `cleanup_stale_sandboxes`)."""
  temporary = os.path.join(base, _OWNER_FILE + '.tmp')
  with open(temporary, 'w', encoding='utf-8') as f:
    json.dump(owner, f)
  os.replace(temporary, os.path.join(base, _OWNER_FILE))


def cleanup_stale_sandboxes(directory: str | None = None) -> int:
  """Removes the sandboxes of verifications that were killed.

  A sandbox directory (`tpt_sandbox_*` in `directory`, by default the
  temporary directory) records the host process that runs it. When that
  process is gone (killed before it could clean up), every process still
  running in the sandbox (by its uid, or its session when not root) is
  killed and the directory removed. A directory without the record (older
  versions, or a host killed within microseconds of creating it) is removed
  once it is `_OWNERLESS_MAX_AGE_S` old. Live sandboxes are left alone.

  Returns:
    How many sandboxes were removed.
  """
  directory = directory or tempfile.gettempdir()
  try:
    names = [n for n in os.listdir(directory)
             if n.startswith(_SANDBOX_PREFIX)]
  except OSError:
    return 0
  removed = 0
  for name in names:
    base = os.path.join(directory, name)
    try:
      with open(os.path.join(base, _OWNER_FILE), encoding='utf-8') as f:
        owner = json.load(f)
      host_pid, host_start = int(owner['host_pid']), owner['host_start']
      uid, session = owner.get('uid'), owner.get('session')
    except FileNotFoundError:
      try:
        age_s = time.time() - os.stat(base).st_mtime
      except OSError:
        continue
      if age_s < _OWNERLESS_MAX_AGE_S:
        continue
      uid = session = None
    except (OSError, ValueError, KeyError, TypeError):
      continue
    else:
      if _process_start_time(host_pid) == host_start:
        continue  # Its host still runs it.
      _kill_sandbox(session, uid)
    shutil.rmtree(base, ignore_errors=True)
    removed += not os.path.exists(base)
  return removed


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


def _judge(messages: Sequence[dict[str, str]], returncode: int | None,
           limits: SandboxLimits) -> tuple[str, str]:
  """The (status, reason) of a run from the harness's messages (all carrying
  its nonce) when it did not time out."""
  reports = [m for m in messages if m.get('status') in STATUSES]
  supervisor = next((m for m in messages if m.get('supervisor')), None)
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
  job = {
      'mode': 'code', 'program': task.program,
      'test_code': task.test_code, 'test_list': list(task.test_list),
      'entry_point': task.entry_point,
      'test_setup_code': task.test_setup_code,
  }
  messages = []

  def keep(message: dict[str, str | bytes]) -> bool:
    messages.append(message)
    return False  # Never stop early: the verdict needs every message.

  run = run_driver(job, limits, limits.timeout_s, start, keep)
  if run.timed_out:
    return CodeVerdict(STATUS_TIMEOUT, f'exceeded the {limits.timeout_s:g} s '
                       'wall-clock limit', run.duration_s, run.stdout,
                       run.stderr)
  status, reason = _judge(messages, run.returncode, limits)
  return CodeVerdict(status, reason, run.duration_s, run.stdout, run.stderr)


def run_driver(job: dict[str, Any], limits: SandboxLimits, timeout_s: float,
               start: float,
               on_message: Callable[[dict[str, str | bytes]], bool],
               raw_keys: frozenset[str] = frozenset(),
               max_message_bytes: int = 1 << 20,
               max_total_bytes: int = 1 << 20) -> _DriverRun:
  """Runs the sandbox driver on `job` and feeds it each harness message.

  The one place a sandbox is made, started, watched and removed; the code
  verifier (`mode='code'`) and the stdin/stdout judge (`mode='stdio'`,
  `stdio_judge`) differ only in `job` and in what they make of the messages.

  Args:
    job: the mode's fields (`mode`, `program`, ...); the sandbox's own
      (nonce, uid, limits, ...) are added here.
    limits: the sandbox's limits.
    timeout_s: wall-clock limit of the whole run, from `start`.
    start: `time.monotonic()` when the caller started timing.
    on_message: called with each message from the driver as it arrives;
      returning True stops the run (its processes are killed).
    raw_keys: message fields kept as bytes (e.g. a program's stdout).
    max_message_bytes: longest message line read.
    max_total_bytes: most bytes read from the driver in all.

  Returns:
    How the run ended; the sandbox is gone when it returns.
  """
  nonce = secrets.token_hex(16)
  uid = (_UID_LOW + secrets.randbelow(_UID_HIGH - _UID_LOW)
         if os.geteuid() == 0 else None)
  base = tempfile.mkdtemp(prefix=_SANDBOX_PREFIX)
  owner = {'host_pid': os.getpid(),
           'host_start': _process_start_time(os.getpid()), 'uid': uid}
  result_read = result_write = -1
  process = None
  try:
    _write_owner(base, owner)
    workdir = os.path.join(base, 'work')
    os.mkdir(workdir, 0o700)
    if uid is not None:
      os.chown(workdir, uid, uid)
    stdout_path = os.path.join(base, 'stdout')
    stderr_path = os.path.join(base, 'stderr')
    result_read, result_write = os.pipe()
    job = {
        **job,
        'nonce': nonce, 'result_fd': result_write, 'uid': uid,
        'host_pid': os.getpid(), 'workdir': workdir,
        'cpu_time_s': int(job.get('cpu_time_s', limits.cpu_time_s)),
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
    _write_owner(base, {**owner, 'session': process.pid})
    os.close(result_write)
    result_write = -1
    try:
      process.stdin.write(marshal.dumps(job))
      process.stdin.close()
    except BrokenPipeError:
      pass
    reader = _MessageReader(result_read, nonce, raw_keys, max_message_bytes,
                            max_total_bytes)
    timed_out, stopped = _watch(process, reader, start + timeout_s,
                                on_message)
    # Exit code 0: the supervisor ran to its end, leaving no descendant.
    _kill_sandbox(process.pid, uid, scan=(timed_out or stopped or
                                          process.returncode != 0))
    process.wait()
    return _DriverRun(timed_out, stopped, process.returncode,
                      time.monotonic() - start, _read_start(stdout_path),
                      _read_start(stderr_path))
  finally:
    if process is not None and process.returncode is None:
      _kill_sandbox(process.pid, uid)
      process.wait()
    for fd in (result_read, result_write):
      if fd >= 0:
        os.close(fd)
    shutil.rmtree(base, ignore_errors=True)


def _watch(process: subprocess.Popen[bytes], reader: _MessageReader,
           deadline: float,
           on_message: Callable[[dict[str, str | bytes]], bool]
           ) -> tuple[bool, bool]:
  """Feeds messages to `on_message` until the driver exits, `on_message`
  asks to stop, or `deadline`; returns (timed out, stopped)."""
  poller = select.poll()
  poller.register(reader.fd, select.POLLIN)
  try:
    pidfd = os.pidfd_open(process.pid)
    poller.register(pidfd, select.POLLIN)
  except (AttributeError, OSError):
    pidfd = -1
  try:
    while True:
      exited = process.poll() is not None
      for message in reader.read():
        if on_message(message):
          return False, True
      if exited:
        return False, False
      if not reader.open:
        try:
          poller.unregister(reader.fd)
        except KeyError:
          pass
      remaining = deadline - time.monotonic()
      if remaining <= 0:
        return True, False
      # Without a pidfd, look at the process every 10 ms.
      poller.poll(min(remaining, 0.01 if pidfd < 0 else remaining) * 1000)
  finally:
    if pidfd >= 0:
      os.close(pidfd)


class CodeVerifier:
  """Runs code tasks in sandboxes, `num_workers` processes at a time.

  Each task gets its own fresh sandbox process (nothing is reused between
  candidates); threads here only wait on those processes.
  """

  def __init__(self, limits: SandboxLimits = SandboxLimits(),
               num_workers: int = 0):
    """`num_workers=0` means one per CPU core.

    Also removes the sandboxes that killed verifications left behind
    (`cleanup_stale_sandboxes`).
    """
    if num_workers < 0:
      raise ValueError(f'num_workers={num_workers} must be >= 0.')
    cleanup_stale_sandboxes()
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
    return self.map(lambda task: run_sandboxed(task, self.limits), tasks)

  def map(self, run: Callable[[Any], Any], items: Iterable[Any]) -> list[Any]:
    """`[run(item) for item in items]`, `num_workers` at a time, in order.

    For other judges built on `run_driver` (e.g. `stdio_judge`).
    """
    return list(self._executor.map(run, items))
