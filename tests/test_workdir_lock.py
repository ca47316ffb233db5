"""The run directory's lock (skipvit_jax/runtime/workdir_lock.py), held by real processes:
a live holder refuses a second one and is named; a killed one's lock is taken over with a
warning; a record from another host counts by its heartbeat. The trainer's use of it is in
test_faults.py (two trainers) and test_multihost.py (two processes)."""

import errno
import json
import logging
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from skipvit_jax.runtime import workdir_lock

REPO = Path(__file__).resolve().parents[1]
HOLD = """
import sys
from skipvit_jax.runtime import workdir_lock
with workdir_lock.DirectoryLock(sys.argv[1]):
  print("held", flush=True)
  sys.stdin.read()  # until the test closes stdin (a clean exit) or kills this process
"""


def start_holder(directory) -> subprocess.Popen:
  holder = subprocess.Popen([sys.executable, "-c", HOLD, str(directory)], cwd=REPO,
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
  assert holder.stdout.readline() == "held\n"
  return holder


def takeover_warnings(caplog) -> list[str]:
  return [r.getMessage() for r in caplog.records if "taking over" in r.getMessage()]


def test_a_live_holder_refuses_a_second_and_a_clean_exit_frees_the_lock(tmp_path, caplog):
  holder = start_holder(tmp_path)
  try:
    with pytest.raises(workdir_lock.WorkdirInUse) as refused:
      workdir_lock.DirectoryLock(tmp_path).acquire()
    message = str(refused.value)
    assert f"in use by process {holder.pid} on host {socket.gethostname()}, started " in message
    assert f"kill -TERM {holder.pid}" in message and "-c" in message  # its command line
  finally:
    holder.communicate("")  # closing stdin ends it normally
  assert holder.returncode == 0
  assert (tmp_path / "run.lock").read_text() == ""  # released: the record emptied
  with caplog.at_level(logging.WARNING), workdir_lock.DirectoryLock(tmp_path) as lock:
    assert json.loads(Path(lock.path).read_text())["pid"] == os.getpid()
  assert not takeover_warnings(caplog)


def test_a_killed_holders_lock_is_taken_over_with_a_warning(tmp_path, caplog):
  holder = start_holder(tmp_path)
  holder.kill()  # SIGKILL: nothing in the holder runs, its record stays
  holder.wait()
  assert json.loads((tmp_path / "run.lock").read_text())["pid"] == holder.pid
  with caplog.at_level(logging.WARNING), workdir_lock.DirectoryLock(tmp_path):
    pass
  [warning] = takeover_warnings(caplog)
  assert f"process {holder.pid} on host {socket.gethostname()}" in warning
  assert "that process is gone" in warning


def write_record(directory: Path, **record) -> None:
  (directory / "run.lock").write_text(json.dumps(record))


def test_another_hosts_record_holds_until_its_heartbeat_is_stale(tmp_path, caplog):
  # flock succeeds here (nothing on this host holds it), as on a filesystem that does not share
  # flock between hosts: the heartbeat decides.
  write_record(tmp_path, host="elsewhere", pid=123, started="then", command="python main.py",
               heartbeat=time.time() - 10)
  with pytest.raises(workdir_lock.WorkdirInUse) as refused:
    workdir_lock.DirectoryLock(tmp_path, stale_s=60).acquire()
  assert "process 123 on host elsewhere" in str(refused.value)
  assert f"delete {tmp_path / 'run.lock'}" in str(refused.value)

  write_record(tmp_path, host="elsewhere", pid=123, started="then", command="python main.py",
               heartbeat=time.time() - 61)
  with caplog.at_level(logging.WARNING), workdir_lock.DirectoryLock(tmp_path, stale_s=60):
    pass
  [warning] = takeover_warnings(caplog)
  assert "process 123 on host elsewhere" in warning and "over 60 s" in warning


def test_the_holder_refreshes_its_heartbeat(tmp_path):
  with workdir_lock.DirectoryLock(tmp_path, heartbeat_s=0.05) as lock:
    first = json.loads(Path(lock.path).read_text())["heartbeat"]
    deadline = time.monotonic() + 30
    while json.loads(Path(lock.path).read_text() or "{}").get("heartbeat", first) == first:
      assert time.monotonic() < deadline, "no heartbeat in 30 s"
      time.sleep(0.05)


def test_without_flock_the_record_decides_on_this_host_too(tmp_path, monkeypatch, caplog):
  def no_flock(fd, operation):
    raise OSError(errno.ENOLCK, os.strerror(errno.ENOLCK))

  monkeypatch.setattr(workdir_lock.fcntl, "flock", no_flock)
  sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
  try:
    write_record(tmp_path, host=socket.gethostname(), pid=sleeper.pid, started="now",
                 command="python main.py", heartbeat=time.time())
    with pytest.raises(workdir_lock.WorkdirInUse, match=f"process {sleeper.pid} "):
      workdir_lock.DirectoryLock(tmp_path).acquire()
  finally:
    sleeper.kill()
    sleeper.wait()
  with caplog.at_level(logging.WARNING), workdir_lock.DirectoryLock(tmp_path):
    pass
  assert "does not support flock" in caplog.text
  [warning] = takeover_warnings(caplog)
  assert f"process {sleeper.pid}" in warning
