"""An exclusive lock on a run's directory, held for the life of the run, so that two trainers
(or two sweeps) never write into one directory.

The lock is `fcntl.flock` on DIR/<name>.lock. The kernel releases it however the holder ends,
kill -9 included, so a dead holder never blocks the rerun. The file records the holder (host,
process id, start time, command) and is emptied when the holder exits normally. A new holder
that finds a record there knows that the last one died holding the lock, and says so as it takes
over: never silently.

flock is not shared between hosts on every network filesystem (older NFS, FUSE mounts of object
stores). So the holder also refreshes a heartbeat in its record every HEARTBEAT_S seconds: a
record from another host whose heartbeat is younger than STALE_S counts as a live holder even
when flock succeeds, and an older one is a stale lease, taken over with a warning. Where flock
is not supported at all, the record decides on the same host too (is the process alive?).

In a multi-process run only process 0 writes to the workdir, so only process 0 takes the lock;
the others learn its outcome through one broadcast, so that all stop together (`hold_for_run`).
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import os
import shlex
import socket
import sys
import threading
import time
from collections.abc import Iterator
from typing import Any

import jax
from absl import logging
from jax.experimental import multihost_utils

HEARTBEAT_S = 60.0  # how often a holder refreshes its record
STALE_S = 600.0  # a record from another host older than this is a dead holder's


class WorkdirInUse(RuntimeError):
  """Another live process holds the directory's lock."""


def _describe(record: dict[str, Any]) -> str:
  return (f"process {record.get('pid', '?')} on host {record.get('host', '?')}, started "
          f"{record.get('started', '?')} ({record.get('command', '?')})")


def _alive_on_this_host(pid: int) -> bool:
  try:
    os.kill(pid, 0)
  except ProcessLookupError:
    return False
  except PermissionError:  # it exists, under another user
    return True
  return True


class DirectoryLock:
  """The lock on `directory` (a context manager); `name` tells the trainer's ("run") and the
  sweep runner's ("sweep") apart in the file name and in the messages."""

  def __init__(self, directory: str | os.PathLike, *, name: str = "run",
               heartbeat_s: float = HEARTBEAT_S, stale_s: float = STALE_S):
    self.directory = os.path.abspath(directory)
    self.path = os.path.join(self.directory, f"{name}.lock")
    self._name, self._heartbeat_s, self._stale_s = name, heartbeat_s, stale_s
    self._fd: int | None = None
    self._record: dict[str, Any] = {}
    self._stop = threading.Event()
    self._beat: threading.Thread | None = None

  # ---- acquiring

  def acquire(self) -> None:
    """Takes the lock or raises WorkdirInUse naming the holder and what to do."""
    os.makedirs(self.directory, exist_ok=True)
    fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
      flocked = self._flock(fd)
      previous = self._read(fd)
      if flocked is False or (previous is not None and self._live(previous, flocked)):
        raise WorkdirInUse(self._in_use_message(previous))
      if previous is not None:
        logging.warning("%s: taking over the lock of %s, which ended without releasing it%s",
                        self.path, _describe(previous), self._staleness(previous))
    except BaseException:
      os.close(fd)  # releases the flock, if taken
      raise
    self._fd = fd
    self._record = {"host": socket.gethostname(), "pid": os.getpid(),
                    "started": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
                    "command": shlex.join([os.path.basename(sys.executable), *sys.argv])}
    self._write()
    self._beat = threading.Thread(target=self._heartbeat, name=f"{self._name}-lock-heartbeat",
                                  daemon=True)
    self._beat.start()

  def _flock(self, fd: int) -> bool | None:
    """True: flocked; False: another open file holds it; None: no flock on this filesystem."""
    try:
      fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
      return True
    except BlockingIOError:
      return False
    except OSError as e:
      if e.errno not in (errno.ENOLCK, errno.EOPNOTSUPP, errno.EINVAL):
        raise
      logging.warning("%s: this filesystem does not support flock (%s); relying on the "
                      "holder's record and heartbeat", self.path, e.strerror)
      return None

  @staticmethod
  def _read(fd: int) -> dict[str, Any] | None:
    """The holder's record, None when the file is empty (released); a record cut short by a
    concurrent rewrite reads as an unknown holder."""
    size = os.fstat(fd).st_size
    if size == 0:
      return None
    text = os.pread(fd, size, 0).decode("utf-8", "replace")
    try:
      record = json.loads(text)
    except json.JSONDecodeError:
      return {}
    return record if isinstance(record, dict) else {}

  def _live(self, record: dict[str, Any], flocked: bool | None) -> bool:
    """Whether a record left in a file this process could flock (or one without flock) is a
    live holder's: on this host, flock (else the process table) decides; from another host,
    the heartbeat's age."""
    if record.get("host") == socket.gethostname():
      return flocked is None and _alive_on_this_host(int(record.get("pid", -1)))
    return time.time() - float(record.get("heartbeat", 0.0)) < self._stale_s

  def _staleness(self, record: dict[str, Any]) -> str:
    if record.get("host") == socket.gethostname():
      return " (that process is gone)"
    age = time.time() - float(record.get("heartbeat", 0.0))
    return f" (its last heartbeat is {age:.0f} s old, over {self._stale_s:.0f} s)"

  def _in_use_message(self, record: dict[str, Any] | None) -> str:
    holder = _describe(record) if record else "a process that has not written its record yet"
    message = f"{self.directory} is in use by {holder}. "
    if record and record.get("host") not in (None, socket.gethostname()):
      message += (f"Wait for it to finish or stop it, or use another directory; if that host "
                  f"is down, the lock is free {self._stale_s:.0f} s after its last heartbeat, "
                  f"or at once if you delete {self.path}.")
    else:
      pid = record.get("pid", "PID") if record else "PID"
      message += (f"Wait for it to finish, stop it (kill -TERM {pid}: it checkpoints, and "
                  "rerunning this command resumes), or use another directory.")
    return message

  # ---- holding and releasing

  def _write(self) -> None:
    self._record["heartbeat"] = time.time()
    data = json.dumps(self._record).encode()
    os.pwrite(self._fd, data, 0)
    os.ftruncate(self._fd, len(data))

  def _heartbeat(self) -> None:
    while not self._stop.wait(self._heartbeat_s):
      try:
        self._write()
      except OSError as e:  # a full or failing disk: the run itself reports that
        logging.warning("%s: could not refresh the heartbeat (%s)", self.path, e.strerror)

  def release(self) -> None:
    """Empties the record (a clean exit) and unlocks. The file stays: removing it would let a
    process that opened it before the removal lock a file no one else can see."""
    if self._fd is None:
      return
    self._stop.set()
    if self._beat is not None:
      self._beat.join()
    try:
      os.ftruncate(self._fd, 0)
    finally:
      os.close(self._fd)
      self._fd = None

  def __enter__(self) -> "DirectoryLock":
    self.acquire()
    return self

  def __exit__(self, *exc) -> None:
    self.release()


@contextlib.contextmanager
def hold_for_run(workdir: str | os.PathLike) -> Iterator[None]:
  """The trainer's lock on `workdir` for the life of the run. Process 0 takes it; in a
  multi-process run the others wait for its outcome and raise WorkdirInUse with it, so no
  process goes on to a collective that another never reaches."""
  lock, error = DirectoryLock(workdir), None
  if jax.process_index() == 0:
    try:
      lock.acquire()
    except WorkdirInUse as e:
      error = e
  if jax.process_count() > 1:
    held = multihost_utils.broadcast_one_to_all(error is None)
    if not held and error is None:
      error = WorkdirInUse(f"{os.path.abspath(workdir)} is in use by another run: process 0 "
                           "could not lock it (its log names the holder)")
  if error is not None:
    raise error
  try:
    yield
  finally:
    lock.release()
