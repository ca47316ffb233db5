"""A checkpoint that cannot be written (skipvit_jax/train/checkpointing.py): reported with its
step, the reason in one line and the checkpoint still intact. On a real filesystem that fills
up and then turns read-only (a tmpfs in a private mount namespace, where the machine allows
one), and with the error injected at the writer in the trainer itself (test_faults.py)."""

import errno
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from skipvit_jax.train import checkpointing

REPO = Path(__file__).resolve().parents[1]

# Run as root in a private mount namespace (`unshare --mount`, or with `--map-root-user` where
# user namespaces stand in for root): the tmpfs goes away with the process.
SMALL_FILESYSTEM = r"""
import subprocess, sys
import numpy as np
from skipvit_jax.train import checkpointing

directory, noise = sys.argv[1], np.random.default_rng(0)  # noise: incompressible
subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", directory], check=True)
with checkpointing.Checkpoints(directory, keep=2) as checkpoints:
  checkpoints.save(1, {"w": noise.random(32 * 1024, np.float32)})  # 128 KiB: fits
  checkpoints.wait()
  checkpoints.save(2, {"w": noise.random(512 * 1024, np.float32)})  # 2 MiB: cannot fit
  try:
    checkpoints.wait()
  except checkpointing.CheckpointWriteError as e:
    print("FULL:", e)
  subprocess.run(["mount", "-o", "remount,ro", directory], check=True)
  checkpoints.save(3, {"w": noise.random(32 * 1024, np.float32)})  # would fit: read-only
  try:
    checkpoints.wait()
  except checkpointing.CheckpointWriteError as e:
    print("READ-ONLY:", e)
  print("STEPS:", checkpoints._manager.all_steps())
"""


def _in_private_mount_namespace(args: list[str]) -> subprocess.CompletedProcess | None:
  """`args` run in a new mount namespace; None where this machine allows none."""
  for unshare in (["unshare", "--mount"], ["unshare", "--mount", "--map-root-user"]):
    if shutil.which("unshare") is None:
      return None
    probe = subprocess.run([*unshare, "mount", "-t", "tmpfs", "tmpfs", "/mnt"],
                           capture_output=True)
    if probe.returncode == 0:
      return subprocess.run([*unshare, *args], capture_output=True, text=True, cwd=REPO,
                            timeout=300)
  return None


def test_a_full_then_read_only_filesystem_fails_writes_with_the_reason_and_the_intact_step(
    tmp_path):
  ran = _in_private_mount_namespace([sys.executable, "-c", SMALL_FILESYSTEM, str(tmp_path)])
  if ran is None:  # the injected errors below and in test_faults.py still run
    pytest.skip("this machine allows no private mount namespace (unshare --mount)")
  assert ran.returncode == 0, ran.stderr[-3000:]
  lines = ran.stdout.splitlines()
  assert lines[0] == (f"FULL: could not write the checkpoint at step 2 in {tmp_path}/checkpoints: "
                      "no space left on device. The checkpoint at step 1 is intact: once that is "
                      "fixed, rerunning the same command resumes from it.")
  assert lines[1].startswith("READ-ONLY: could not write the checkpoint at step 3 in ")
  assert "read-only file system. The checkpoint at step 1 is intact" in lines[1]
  assert lines[2] == "STEPS: [1]"
  assert "Traceback" not in ran.stderr and "Event loop is closed" not in ran.stderr


@pytest.mark.parametrize("code", [errno.ENOSPC, errno.EROFS])
def test_a_failed_write_names_the_step_the_reason_and_the_intact_checkpoint(tmp_path,
                                                                            monkeypatch, code):
  reason = {errno.ENOSPC: "no space left on device", errno.EROFS: "read-only file system"}[code]
  state = {"w": np.arange(4, dtype=np.float32)}
  checkpoints = checkpointing.Checkpoints(str(tmp_path), keep=3)
  checkpoints.save(1, state)
  checkpoints.wait()
  write = checkpointing.ocp.CheckpointManager.save

  def failing(self, step, *args, **kwargs):
    (Path(self.directory) / f"{step}.orbax-checkpoint-tmp").mkdir()  # a partial write
    raise OSError(code, os.strerror(code))

  monkeypatch.setattr(checkpointing.ocp.CheckpointManager, "save", failing)
  checkpoints.save(2, state)
  with pytest.raises(checkpointing.CheckpointWriteError) as failed:
    checkpoints.close()
  assert str(failed.value) == (
      f"could not write the checkpoint at step 2 in {tmp_path}/checkpoints: {reason}. The "
      "checkpoint at step 1 is intact: once that is fixed, rerunning the same "
      "command resumes from it.")
  assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == ["1"]  # partial gone

  monkeypatch.setattr(checkpointing.ocp.CheckpointManager, "save", write)
  fresh = checkpointing.Checkpoints(str(tmp_path / "fresh"), keep=3)
  monkeypatch.setattr(checkpointing.ocp.CheckpointManager, "save", failing)
  fresh.save(1, state)
  with pytest.raises(checkpointing.CheckpointWriteError, match=f"{reason}. No "
                     "earlier checkpoint exists: once that is fixed, rerunning starts over."):
    fresh.wait()


@pytest.mark.parametrize("error,reason", [
    (OSError(errno.EACCES, "Permission denied"), "permission denied"),
    (ValueError('RESOURCE_EXHAUSTED: Error writing "w/0" in OCDBT database: Failed to write 8 '
                "bytes to file 13: No space left on device [os_error_code='28']"),
     "no space left on device"),
    (RuntimeError("the writer broke\nwith details"), "RuntimeError: the writer broke"),
])
def test_the_reason_is_one_line(error, reason):
  try:
    try:
      raise error
    except Exception as inner:
      raise RuntimeError("wrapped") from inner
  except RuntimeError as outer:
    assert checkpointing.failure_reason(outer) == reason
