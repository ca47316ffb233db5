"""Two local CPU processes on jax.distributed train like one process with the same devices."""

import os
import socket
import subprocess
import sys
from pathlib import Path

import jax
import numpy as np
import pytest

from skipvit_jax.data import pipeline
from skipvit_jax.runtime import workdir_lock
from skipvit_jax.train import loop
from skipvit_jax.train.metrics import read_metrics
from tests import test_train

REPO = Path(__file__).resolve().parents[1]
TIMEOUT_S = 600  # generous: with two pytest workers the two processes share the CPU


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def run_two_processes(data_dir: str, out_dir) -> list[tuple[int, str]]:
  """(exit status, output) of each process of tests/support/multihost_driver.py's run."""
  port = _free_port()
  procs = []
  try:
    for process_id in range(2):
      env = dict(os.environ, JAX_PLATFORMS="cpu", PYTHONPATH=str(REPO),
                 XLA_FLAGS="--xla_force_host_platform_device_count=1",
                 JAX_COORDINATOR_ADDRESS=f"127.0.0.1:{port}", JAX_NUM_PROCESSES="2",
                 JAX_PROCESS_ID=str(process_id), JAX_DISABLE_MOST_OPTIMIZATIONS="1")
      procs.append(subprocess.Popen(
          [sys.executable, "-m", "tests.support.multihost_driver", data_dir, str(out_dir)],
          env=env, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True))
    outputs = [p.communicate(timeout=TIMEOUT_S)[0] for p in procs]
  finally:
    for p in procs:  # never leave a process behind, whatever happened
      if p.poll() is None:
        p.kill()
        p.wait()
  return [(p.returncode, output) for p, output in zip(procs, outputs)]


@pytest.mark.slow
def test_two_processes_agree_with_each_other_and_with_one_process(tmp_path):
  data_dir = str(tmp_path / "tfds")
  pipeline.load_sources(test_train.tiny_config(data_dir).data)  # generate once, up front
  for returncode, output in run_two_processes(data_dir, tmp_path):
    assert returncode == 0, output[-3000:]
  assert (tmp_path / "workdir" / "run.lock").read_text() == ""  # process 0 released it

  # Metrics are written by process 0 only: one metrics file, its records once each.
  records = read_metrics(tmp_path / "workdir")
  assert [r["step"] for r in records if "train/loss" in r] == [2, 4, 6, 8]

  # The same run in this process: 2 devices (conftest), the same global batch of 32.
  assert jax.device_count() == 2
  single = loop.train_and_evaluate(test_train.tiny_config(data_dir), str(tmp_path / "single"))
  runs = [np.load(tmp_path / f"params_{i}.npz") for i in range(2)]
  leaves = jax.tree.leaves(single.params)
  max_diff = max(float(np.max(np.abs(run[str(i)] - leaf)))
                 for run in runs for i, leaf in enumerate(leaves))
  print(f"max |param(2 processes) - param(1 process)| = {max_diff:.3g}")  # pytest -s shows it
  for run in runs:
    assert (int(run["process_count"]), int(run["local_devices"])) == (2, 1)
    assert int(run["step"]) == 8
    assert float(run["num_examples"]) == test_train.NUM_TEST  # eval counted each example once
    assert float(run["top1"]) == pytest.approx(single.eval_metrics["eval/top1"], abs=1e-6)
    for i, leaf in enumerate(leaves):
      np.testing.assert_array_equal(runs[0][str(i)], run[str(i)])  # processes agree exactly
      np.testing.assert_allclose(run[str(i)], leaf, rtol=1e-5, atol=1e-6)


@pytest.mark.slow
def test_a_held_workdir_stops_every_process_before_training(tmp_path):
  # Process 0 finds the lock held (by this process) and says by whom; process 1 learns it from
  # process 0 instead of waiting for it in the first collective.
  with workdir_lock.DirectoryLock(tmp_path / "workdir"):
    (first, output_0), (second, output_1) = run_two_processes(str(tmp_path / "tfds"), tmp_path)
  assert first != 0 and second != 0
  assert f"is in use by process {os.getpid()} on host" in output_0
  assert "process 0 could not lock it" in output_1
  assert not (tmp_path / "tfds").exists()  # stopped before generating the dataset
