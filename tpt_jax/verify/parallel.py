"""Verification of a whole stage in worker processes, each item time-limited.

  verdicts = verify_in_workers(task.verify, items, timeout_s=5.0)

`items` are (completion, problem) pairs; the verify function (`Task.verify`,
a `verify.graders` grader, any picklable callable) returns `(correct,
extracted)` or a `MathVerdict`. Items are spread over worker processes; an
item that runs past `timeout_s` is judged incorrect with a reason and its
worker is killed and replaced, so one pathological completion never stalls a
stage. Verdicts come back in input order; apart from which items time out,
they equal those of calling the function in this process.

A worker's start-up (interpreter, imports) is not part of any item's time: an
item is handed only to a worker that has said it is ready. Workers are plain
subprocesses (`python -c`, not `multiprocessing`), so a parent that runs JAX
threads forks nothing, and the parent's `__main__` is never re-imported; they
get the parent's `sys.path`, so the function is importable there as here.
"""

from __future__ import annotations

import collections
from collections.abc import Callable, Sequence
import dataclasses
import os
import pickle
import select
import struct
import subprocess
import sys
import threading
import time
from typing import Any

# How long a worker may take to start (import the verify function's module).
_START_UP_TIMEOUT_S = 120.0
_HEADER = struct.Struct('>I')
_READ_SIZE = 1 << 16


@dataclasses.dataclass(frozen=True)
class ItemVerdict:
  """The verdict on one item.

  Attributes:
    correct: the verify function said correct (False when it did not answer).
    extracted: the answer it extracted, None if none or it did not answer.
    reason: '' when the function answered; else why not ('timed out after
      5 s', 'raised ValueError: ...', 'worker exited with code -9').
    duration_s: wall time of the item in its worker (the limit if it timed
      out).
  """
  correct: bool
  extracted: str | None
  reason: str = ''
  duration_s: float = 0.0


def verify_in_workers(verify_fn: Callable[[str, Any], Any],
                      items: Sequence[tuple[str, Any]], *,
                      timeout_s: float = 5.0,
                      num_workers: int = 0) -> list[ItemVerdict]:
  """`verify_fn(completion, problem)` of each item, in worker processes.

  Args:
    verify_fn: picklable (a module-level function, a bound method of a
      picklable object, a functools.partial of one); returns `(correct,
      extracted)` or an object with `.correct` and `.extracted`.
    items: (completion, problem) pairs; problems must be picklable.
    timeout_s: hard wall-clock limit per item.
    num_workers: worker processes; 0 means one per CPU core (at most 8), and
      never more than there are items.

  Returns:
    One ItemVerdict per item, in input order.
  """
  if not items:
    return []
  with WorkerPool(verify_fn, timeout_s=timeout_s,
                  num_workers=_resolve_workers(num_workers, len(items))
                  ) as pool:
    return pool.verify(items)


def _resolve_workers(num_workers: int, num_items: int) -> int:
  if num_workers < 0:
    raise ValueError(f'num_workers={num_workers} must be >= 0.')
  if num_workers == 0:
    num_workers = min(os.cpu_count() or 1, 8)
  return max(1, min(num_workers, num_items))


class _Worker:
  """One worker process: its pipes, its read buffer and the items it holds."""

  def __init__(self, payload: bytes):
    code = ('import sys; sys.path.insert(0, sys.argv[1]); '
            'from tpt_jax.verify import parallel; parallel._worker_main()')
    self.process = subprocess.Popen(
        [sys.executable, '-s', '-c', code, _package_root()],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE,
        start_new_session=True)
    self.started = time.monotonic()
    self.ready = False
    self.buffer = bytearray()
    self.assigned: collections.deque[int] = collections.deque()
    self.item_started = 0.0  # When its current item began (as seen here).
    self.send(payload)

  def fileno(self) -> int:
    return self.process.stdout.fileno()

  def send(self, payload: bytes) -> None:
    self.process.stdin.write(_HEADER.pack(len(payload)) + payload)
    self.process.stdin.flush()

  def receive(self) -> list[Any] | None:
    """The complete messages now readable; None once the worker has exited."""
    data = os.read(self.fileno(), _READ_SIZE)
    if not data:
      return None
    self.buffer += data
    messages = []
    while len(self.buffer) >= _HEADER.size:
      (length,) = _HEADER.unpack_from(self.buffer)
      if len(self.buffer) < _HEADER.size + length:
        break
      messages.append(pickle.loads(
          self.buffer[_HEADER.size:_HEADER.size + length]))
      del self.buffer[:_HEADER.size + length]
    return messages

  def kill(self) -> int:
    self.process.kill()
    code = self.process.wait()
    for stream in (self.process.stdin, self.process.stdout):
      try:
        stream.close()
      except OSError:
        pass
    return code


def _package_root() -> str:
  return os.path.dirname(os.path.dirname(os.path.dirname(
      os.path.abspath(__file__))))


class WorkerPool:
  """Worker processes that verify items with a hard per-item time limit.

  Keep one for a stage (workers start once) and call `verify` per batch; use
  as a context manager or call close(). Not thread-safe.
  """

  def __init__(self, verify_fn: Callable[[str, Any], Any], *,
               timeout_s: float = 5.0, num_workers: int = 0):
    if not timeout_s > 0:
      raise ValueError(f'timeout_s={timeout_s} must be > 0.')
    try:
      function = pickle.dumps(verify_fn)
    except Exception as e:  # pylint: disable=broad-except
      raise TypeError(
          f'verify_fn={verify_fn!r} cannot be sent to a worker process '
          f'({type(e).__name__}: {e}); pass a module-level function, a '
          'bound method of a picklable object or a functools.partial.'
      ) from e
    self.timeout_s = timeout_s
    self.num_workers = _resolve_workers(num_workers, sys.maxsize)
    self._payload = pickle.dumps((list(sys.path), function))
    self._workers = [_Worker(self._payload) for _ in range(self.num_workers)]

  def __enter__(self) -> WorkerPool:
    return self

  def __exit__(self, *unused_exc_info) -> None:
    self.close()

  def close(self) -> None:
    for worker in self._workers:
      worker.kill()
    self._workers = []

  def verify(self, items: Sequence[tuple[str, Any]]) -> list[ItemVerdict]:
    """One ItemVerdict per (completion, problem) item, in input order."""
    if not self._workers and items:
      raise RuntimeError('WorkerPool.verify called after close().')
    verdicts: list[ItemVerdict | None] = [None] * len(items)
    pending = collections.deque(range(len(items)))
    chunk_size = max(1, min(64, len(items) // (4 * self.num_workers)))
    remaining = len(items)
    while remaining:
      now = time.monotonic()
      for worker in self._workers:
        if worker.ready and not worker.assigned and pending:
          chunk = [pending.popleft()
                   for _ in range(min(chunk_size, len(pending)))]
          try:
            worker.send(pickle.dumps(
                [(index, items[index][0], items[index][1])
                 for index in chunk]))
          except OSError:
            pending.extendleft(reversed(chunk))  # Seen as exited below.
            continue
          worker.assigned.extend(chunk)
          worker.item_started = time.monotonic()
      readable, _, _ = select.select(self._workers, [], [],
                                     self._next_deadline(now) - now)
      for worker in readable:
        messages = worker.receive()
        if messages is None:
          remaining -= self._replace(worker, verdicts, pending, exited=True)
          continue
        for message in messages:
          remaining -= self._handle(worker, message, verdicts)
      now = time.monotonic()
      for worker in list(self._workers):
        if worker.assigned and now - worker.item_started > self.timeout_s:
          remaining -= self._replace(worker, verdicts, pending, exited=False)
        elif (not worker.ready and
              now - worker.started > _START_UP_TIMEOUT_S):
          raise RuntimeError(
              f'A verification worker did not start within '
              f'{_START_UP_TIMEOUT_S:g} s.')
    return verdicts  # type: ignore[return-value]

  def _next_deadline(self, now: float) -> float:
    deadlines = [worker.item_started + self.timeout_s
                 for worker in self._workers if worker.assigned]
    deadlines += [worker.started + _START_UP_TIMEOUT_S
                  for worker in self._workers if not worker.ready]
    return max(now, min(deadlines, default=now + 1.0))

  def _handle(self, worker: _Worker, message: tuple[Any, ...],
              verdicts: list[ItemVerdict | None]) -> int:
    """Applies one message from `worker`; returns the verdicts it settled."""
    kind = message[0]
    if kind == 'ready':
      worker.ready = True
      return 0
    if kind == 'start_up_error':
      self.close()
      raise RuntimeError(f'A verification worker cannot start: {message[1]}')
    _, index, correct, extracted, reason, duration_s = message
    if not worker.assigned or worker.assigned[0] != index:
      raise RuntimeError(f'Verification worker answered item {index} out of '
                         'turn.')
    worker.assigned.popleft()
    worker.item_started = time.monotonic()
    verdicts[index] = ItemVerdict(correct, extracted, reason, duration_s)
    return 1

  def _replace(self, worker: _Worker, verdicts: list[ItemVerdict | None],
               pending: collections.deque[int], *, exited: bool) -> int:
    """Kills `worker` (its current item fails), requeues the rest of its
    items and starts a replacement; returns the verdicts settled (0 or 1)."""
    code = worker.kill()
    self._workers.remove(worker)
    if not worker.ready:
      self.close()
      raise RuntimeError(
          f'A verification worker exited at start-up with code {code}.')
    settled = 0
    if worker.assigned:
      index = worker.assigned.popleft()
      reason = (f'worker exited with code {code}' if exited else
                f'timed out after {self.timeout_s:g} s')
      verdicts[index] = ItemVerdict(
          False, None, reason,
          time.monotonic() - worker.item_started if exited else
          self.timeout_s)
      settled = 1
      pending.extendleft(reversed(worker.assigned))
    self._workers.append(_Worker(self._payload))
    return settled


def _as_pair(result: Any) -> tuple[bool, str | None]:
  if hasattr(result, 'correct'):
    correct, extracted = result.correct, getattr(result, 'extracted', None)
  else:
    correct, extracted = result
  return bool(correct), None if extracted is None else str(extracted)


def _watch_parent(parent: int) -> None:
  """Exits this worker once its parent is gone (even mid-item)."""
  while os.getppid() == parent:
    time.sleep(1.0)
  os._exit(1)  # pylint: disable=protected-access


def _worker_main() -> None:
  """A worker: reads its function, then chunks of items; one answer each."""
  # Protocol on the original stdout; anything the function prints goes to
  # stderr instead.
  protocol_out = os.fdopen(os.dup(1), 'wb')
  os.dup2(2, 1)
  protocol_in = sys.stdin.buffer
  threading.Thread(target=_watch_parent, args=(os.getppid(),),
                   daemon=True).start()

  def read() -> Any:
    header = protocol_in.read(_HEADER.size)
    if len(header) < _HEADER.size:
      return None
    (length,) = _HEADER.unpack(header)
    return pickle.loads(protocol_in.read(length))

  def write(message: tuple[Any, ...]) -> None:
    payload = pickle.dumps(message)
    protocol_out.write(_HEADER.pack(len(payload)) + payload)
    protocol_out.flush()

  try:
    path, function = read()
    sys.path[:] = path
    verify_fn = pickle.loads(function)
  except Exception as e:  # pylint: disable=broad-except
    write(('start_up_error', f'{type(e).__name__}: {e}'[:500]))
    return
  write(('ready',))
  while (chunk := read()) is not None:
    for index, completion, problem in chunk:
      start = time.perf_counter()
      try:
        correct, extracted = _as_pair(verify_fn(completion, problem))
        reason = ''
      except Exception as e:  # pylint: disable=broad-except
        correct, extracted = False, None
        reason = f'raised {type(e).__name__}: {e}'[:500]
      write(('result', index, correct, extracted, reason,
             time.perf_counter() - start))
