"""Faults a long run meets, each ending where an uninterrupted run ends, bitwise: SIGTERM and
SIGKILL at a step, during an evaluation and during a checkpoint write; damaged checkpoints; a
changed config on resume; a non-finite loss; and the log a run prints."""

import errno
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import jax
import numpy as np
import pytest

from skipvit_jax.models import pretrained
from skipvit_jax.train import checkpointing, loop, plan, resume, stopping, validation
from skipvit_jax.train.metrics import read_metrics
from tests.test_train import NUM_TEST, NUM_TRAIN, tiny_config

REPO = Path(__file__).resolve().parents[1]

# tests/test_train.py's tiny run: 4 steps per epoch, 8 steps; evaluations at 4 and 8 (4 batches
# of 16 each), checkpoints at 4 and 8, the routing from step 5 (a second compiled step).
FAULT_STEP = 4


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
  return str(tmp_path_factory.mktemp("tfds"))


@pytest.fixture(scope="module")
def reference(data_dir, tmp_path_factory):
  """The uninterrupted run's final parameters, flat."""
  result = loop.train_and_evaluate(tiny_config(data_dir, eval_every_epochs=1.0),
                                    str(tmp_path_factory.mktemp("reference")))
  assert result.step == 8
  return pretrained._flatten(result.params)


def final_params(workdir) -> dict:
  """The parameters of a workdir's latest checkpoint, flat (what a rerun ended with)."""
  return pretrained._flatten(pretrained._unflatten(pretrained._read_orbax(Path(workdir))))


def assert_bitwise_equal(params: dict, reference: dict) -> None:
  # Exact within one machine: a rerun replays the same compiled float32 steps; another
  # machine's values differ by rounding, and only have to equal its own rerun's.
  assert params.keys() == reference.keys()
  for name in reference:
    np.testing.assert_array_equal(params[name], reference[name], err_msg=name)


# --------------------------------------------------------------------------------------------
# SIGTERM: in this process (the trainer sends it to itself at the named point).


@pytest.mark.parametrize("point", stopping.FAULT_POINTS)
@pytest.mark.slow
def test_sigterm_checkpoints_the_last_step_and_the_rerun_ends_bitwise_equal(
    data_dir, reference, tmp_path, monkeypatch, point):
  workdir = str(tmp_path / "run")
  monkeypatch.setenv(stopping.FAULT_ENV, f"SIGTERM@{point}:{FAULT_STEP}")
  stopped = loop.train_and_evaluate(tiny_config(data_dir, eval_every_epochs=1.0), workdir)
  assert stopped.preempted and stopped.step == FAULT_STEP
  assert checkpointing.Checkpoints(workdir, keep=3).latest_step() == FAULT_STEP
  records = read_metrics(workdir)
  assert not any("train/finished" in r for r in records)
  # A SIGTERM during the evaluation cuts it short: nothing half-evaluated is recorded.
  assert any("eval/top1" in r for r in records) == (point == "save")
  assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL  # the handler is gone again

  monkeypatch.delenv(stopping.FAULT_ENV)
  resumed = loop.train_and_evaluate(tiny_config(data_dir, eval_every_epochs=1.0), workdir)
  assert resumed.step == 8 and not resumed.preempted
  assert_bitwise_equal(pretrained._flatten(resumed.params), reference)
  assert read_metrics(workdir)[-1]["train/finished"] == 1


# --------------------------------------------------------------------------------------------
# Subprocesses: main.py's exit status, and SIGKILL (nothing in the process can react to it).


def main_command(data_dir, workdir, fault: str = "", *overrides: str) -> tuple[list, dict]:
  """main.py's command line for the tiny run (with `overrides`, --config.field=value flags)
  and its environment."""
  env = dict(os.environ, JAX_DISABLE_MOST_OPTIMIZATIONS="1", PYTHONPATH=str(REPO),
             JAX_COMPILATION_CACHE_DIR=jax.config.jax_compilation_cache_dir,
             JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0.5")
  env.pop(stopping.FAULT_ENV, None)
  if fault:
    env[stopping.FAULT_ENV] = fault
  args = [  # tiny_config as flags; XLA_FLAGS (conftest's) gives the same two CPU devices
      sys.executable, str(REPO / "main.py"), f"--config={REPO / 'configs/default.py'}",
      f"--workdir={workdir}", f"--config.data.data_dir={data_dir}",
      "--config.data.image_size=32", "--config.model.variant=Te/4",
      f"--config.data.synthetic.num_train={NUM_TRAIN}",
      f"--config.data.synthetic.num_test={NUM_TEST}", "--config.data.num_threads=2",
      "--config.batch_size=32", "--config.eval_batch_size=16", "--config.num_epochs=2",
      "--config.drop_warmup_epochs=1", "--config.optimizer.warmup_epochs=0.5",
      "--config.log_every_steps=2", "--config.eval_every_epochs=1",
      "--config.checkpoint_every_steps=4", *overrides,
  ]
  return args, env


def run_main(data_dir, workdir, fault: str = "", *overrides: str) -> subprocess.CompletedProcess:
  args, env = main_command(data_dir, workdir, fault, *overrides)
  return subprocess.run(args, env=env, capture_output=True, text=True, timeout=600)


@pytest.mark.slow
def test_main_exits_143_on_sigterm_and_resumes(data_dir, reference, tmp_path):
  stopped = run_main(data_dir, tmp_path, f"SIGTERM@eval:{FAULT_STEP}")
  assert stopped.returncode == stopping.EXIT_PREEMPTED, stopped.stderr[-2000:]
  assert f"stopping at step {FAULT_STEP} on SIGTERM; rerun to resume" in stopped.stderr
  finished = run_main(data_dir, tmp_path)
  assert finished.returncode == 0, finished.stderr[-2000:]
  assert_bitwise_equal(final_params(tmp_path), reference)


@pytest.mark.parametrize("point,step,latest", [
    ("step", 3, {None}),  # mid-step, before the first checkpoint
    ("save", FAULT_STEP, {None, 4}),  # the write at 4 may or may not have completed
    ("save", 8, {4, 8}),
])
@pytest.mark.slow
def test_sigkill_anywhere_loses_at_most_the_steps_since_the_last_checkpoint(
    data_dir, reference, tmp_path, point, step, latest):
  killed = run_main(data_dir, tmp_path, f"SIGKILL@{point}:{step}")
  assert killed.returncode == -signal.SIGKILL, killed.stderr[-2000:]
  assert checkpointing.Checkpoints(str(tmp_path), keep=3).latest_step() in latest
  finished = run_main(data_dir, tmp_path)
  assert finished.returncode == 0, finished.stderr[-2000:]
  assert_bitwise_equal(final_params(tmp_path), reference)
  if latest == {None}:  # the rerun trained every step: its log is a whole run's
    assert_one_line_per_checkpoint_and_no_orbax_chatter(finished.stderr, saves=["4", "8"])


# --------------------------------------------------------------------------------------------
# Two trainers on one workdir.


@pytest.mark.slow
def test_a_second_trainer_on_a_held_workdir_stops_before_reading_data(data_dir, tmp_path):
  # The first runs long (1000 epochs) and is stopped with SIGTERM, as the refusal suggests.
  args, env = main_command(data_dir, tmp_path, "", "--config.num_epochs=1000")
  first = subprocess.Popen(args, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                           text=True)
  try:
    lock = tmp_path / "run.lock"
    while not (lock.exists() and lock.read_text()):  # the first holds the lock
      assert first.poll() is None, first.stderr.read()[-2000:]
      time.sleep(0.05)
    second = run_main(data_dir, tmp_path)
    assert first.poll() is None  # the first trains on
  finally:
    first.terminate()
    first_log = first.communicate(timeout=600)[1]
  assert second.returncode == 1
  refusal = second.stderr.splitlines()[-1]
  assert refusal.startswith(f"error: {tmp_path} is in use by process {first.pid} on host "
                            f"{socket.gethostname()}, started ")
  assert f"main.py --config={REPO / 'configs/default.py'}" in refusal
  assert f"kill -TERM {first.pid}" in refusal
  assert "compiled" not in second.stderr and "restored" not in second.stderr
  assert first.returncode == stopping.EXIT_PREEMPTED, first_log[-2000:]
  assert "on SIGTERM; rerun to resume" in first_log
  assert lock.read_text() == ""  # the first released it on its way out


# --------------------------------------------------------------------------------------------
# A checkpoint that cannot be written (a full disk on a real filesystem: test_checkpoint_writes.py).


@pytest.mark.slow
def test_a_failed_checkpoint_write_stops_the_run_and_the_rerun_ends_bitwise_equal(
    data_dir, reference, tmp_path, monkeypatch):
  write = checkpointing.ocp.CheckpointManager.save

  def failing_at_4(self, step, *args, **kwargs):  # the error orbax's writer meets at step 4
    if step == 4:
      raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
    return write(self, step, *args, **kwargs)

  monkeypatch.setattr(checkpointing.ocp.CheckpointManager, "save", failing_at_4)
  every_2 = {"eval_every_epochs": 1.0, "checkpoint_every_steps": 2}
  with pytest.raises(checkpointing.CheckpointWriteError) as failed:
    loop.train_and_evaluate(tiny_config(data_dir, **every_2), str(tmp_path))
  assert str(failed.value) == (
      f"could not write the checkpoint at step 4 in {tmp_path}/checkpoints: no space left on "
      "device. The "
      "checkpoint at step 2 is intact: once that is fixed, rerunning the same command resumes "
      "from it.")
  # It stopped at once: at the step after the failed write, or at the next save at the latest.
  assert max(r["step"] for r in read_metrics(tmp_path) if "train/loss" in r) <= 6
  assert (tmp_path / "run.lock").read_text() == ""  # released on the way out

  monkeypatch.setattr(checkpointing.ocp.CheckpointManager, "save", write)
  resumed = loop.train_and_evaluate(tiny_config(data_dir, **every_2), str(tmp_path))
  assert resumed.step == 8
  assert_bitwise_equal(pretrained._flatten(resumed.params), reference)


# --------------------------------------------------------------------------------------------
# Damaged checkpoints and changed configs.


def damage(workdir, step: int, how: str) -> None:
  directory = Path(workdir) / "checkpoints" / str(step) / "default"
  if how == "truncate":
    data = max((p for p in directory.rglob("*") if p.is_file()), key=lambda p: p.stat().st_size)
    with open(data, "r+b") as f:
      f.truncate(data.stat().st_size // 2)
  else:
    (directory / "manifest.ocdbt").unlink()


@pytest.mark.parametrize("how", ["truncate", "delete"])
@pytest.mark.slow
def test_a_damaged_latest_checkpoint_falls_back_to_the_previous_one(
    data_dir, reference, tmp_path, caplog, how):
  workdir = str(tmp_path)
  stopped = tiny_config(data_dir, eval_every_epochs=1.0, stop_after_step=6,
                        checkpoint_every_steps=2)
  loop.train_and_evaluate(stopped, workdir)  # checkpoints at 2, 4, 6
  damage(workdir, 6, how)
  with caplog.at_level("INFO"):
    resumed = loop.train_and_evaluate(tiny_config(data_dir, eval_every_epochs=1.0), workdir)
  assert "checkpoint at step 6 is damaged" in caplog.text
  assert "resuming from step 4 instead" in caplog.text
  assert os.path.isdir(os.path.join(workdir, "checkpoints", "6.damaged"))
  assert resumed.step == 8
  assert_bitwise_equal(pretrained._flatten(resumed.params), reference)


@pytest.mark.slow
def test_no_usable_checkpoint_is_one_clear_error(data_dir, tmp_path):
  workdir = str(tmp_path)
  loop.train_and_evaluate(tiny_config(data_dir, stop_after_step=4, checkpoint_every_steps=2),
                           workdir)  # checkpoints at 2 and 4
  damage(workdir, 2, "truncate")
  damage(workdir, 4, "delete")
  with pytest.raises(checkpointing.CheckpointError) as error:
    loop.train_and_evaluate(tiny_config(data_dir), workdir)
  message = str(error.value)
  assert "None of the checkpoints" in message and "step 4:" in message and "step 2:" in message
  assert "To start over from step 0, move the checkpoints directory aside" in message
  assert "\n" not in message  # one paragraph
  assert sorted(os.listdir(os.path.join(workdir, "checkpoints"))) == ["2", "4"]  # left as found


@pytest.mark.slow
def test_resuming_with_a_changed_config_lists_the_differences(data_dir, tmp_path, caplog):
  workdir = str(tmp_path)
  loop.train_and_evaluate(tiny_config(data_dir, stop_after_step=4), workdir)
  changed = {"routing.drop_ratios": (0.3,), "batch_size": 16, "data.data_dir": data_dir,
             "data.in_memory": False}
  with pytest.raises(validation.ConfigError) as error:  # main.py: one line, exit 1
    loop.train_and_evaluate(tiny_config(data_dir, **changed), workdir)
  message = str(error.value)
  assert "routing.drop_ratios: [0.55] -> [0.3]" in message and "batch_size: 32 -> 16" in message
  assert "data.data_dir" not in message  # where the data lives may change, and how it is read
  assert "data.in_memory" not in message
  assert "config.allow_resume_with_changes=True" in message
  with caplog.at_level("WARNING"):
    result = loop.train_and_evaluate(
        tiny_config(data_dir, allow_resume_with_changes=True, **{"routing.drop_ratios": (0.3,)}),
        workdir)
  assert result.step == 8 and "resuming with changed settings (allowed)" in caplog.text


def test_a_workdir_from_before_data_in_memory_resumes_unchanged(data_dir):
  config = tiny_config(data_dir)
  saved = json.loads(config.to_json())
  del saved["data"]["in_memory"]  # config.json as runs wrote it before the field existed
  assert resume.resume_differences(saved, config) == []


def test_a_workdir_from_before_model_stem_resumes_as_the_patch_stem(data_dir):
  config = tiny_config(data_dir)
  saved = json.loads(config.to_json())
  del saved["model"]["stem"]  # runs before the field existed had the patch embedding
  assert resume.resume_differences(saved, config) == []
  assert resume.resume_differences(saved, tiny_config(data_dir, **{"model.stem": "conv"})) == [
      "model.stem: 'patch' -> 'conv'"]


def test_a_workdir_from_before_model_gelu_resumes_as_the_tanh_gelu(data_dir):
  config = plan.resolve_choices(tiny_config(data_dir))  # as the trainer compares it
  saved = json.loads(config.to_json())
  del saved["model"]["gelu"]  # runs before the field existed had the tanh approximation
  assert resume.resume_differences(saved, config) == []
  exact = plan.resolve_choices(tiny_config(data_dir, **{"model.gelu": "exact"}))
  assert resume.resume_differences(saved, exact) == ["model.gelu: 'tanh' -> 'exact'"]


def test_a_workdir_from_before_data_augment_on_resumes_on_the_host_path(data_dir):
  config = tiny_config(data_dir)
  saved = json.loads(config.to_json())
  del saved["data"]["augment_on"]  # runs before the field existed augmented on the host
  assert resume.resume_differences(saved, config) == []
  on_device = tiny_config(data_dir, **{"data.augment_on": "device"})
  assert resume.resume_differences(saved, on_device) == ["data.augment_on: 'host' -> 'device'"]


def test_a_workdir_from_before_the_token_reducers_resumes_without_them(data_dir):
  config = tiny_config(data_dir)
  saved = json.loads(config.to_json())
  del saved["tome"], saved["patch_dropout"]  # runs before the groups existed reduced neither way
  assert resume.resume_differences(saved, config) == []
  merging = tiny_config(data_dir, **{"routing.drop_layers": (), "routing.drop_ratios": (),
                                     "routing.return_layer": 0, "tome.r": 2,
                                     "patch_dropout.keep_rate": 0.5})
  assert resume.resume_differences(saved, merging) == [
      "patch_dropout.keep_rate: 1.0 -> 0.5", "routing.drop_layers: [6] -> []",
      "routing.drop_ratios: [0.55] -> []", "routing.return_layer: 11 -> 0", "tome.r: 0 -> 2"]


# --------------------------------------------------------------------------------------------
# A non-finite loss.


@pytest.mark.slow
def test_nonfinite_loss_stops_and_keeps_the_last_finite_state(data_dir, tmp_path):
  # Step 1 runs at the warm-up's 1e-6; step 2's learning rate (~5e29) blows the parameters up,
  # so step 3's loss is not finite.
  blow_up = {"optimizer.lr": 1e30, "optimizer.warmup_epochs": 0.5, "drop_warmup_epochs": 0.0,
             "eval_every_epochs": 10.0, "checkpoint_every_steps": 100}
  with pytest.raises(loop.NonFiniteError, match=r"step 3: loss or gradient is not finite") as e:
    loop.train_and_evaluate(tiny_config(data_dir, **blow_up), str(tmp_path / "nan"))
  assert "the checkpoint at step 2 holds the last finite state" in str(e.value)
  saved = final_params(tmp_path / "nan")
  assert all(np.isfinite(v).all() for v in saved.values())
  finite_run = loop.train_and_evaluate(tiny_config(data_dir, stop_after_step=2, **blow_up),
                                        str(tmp_path / "two_steps"))
  assert_bitwise_equal(saved, pretrained._flatten(finite_run.params))
  assert checkpointing.Checkpoints(str(tmp_path / "nan"), keep=3).latest_step() == 2


# --------------------------------------------------------------------------------------------
# The log (checked on a whole run's output above).


def assert_one_line_per_checkpoint_and_no_orbax_chatter(log: str, saves: list[str]) -> None:
  lines = log.splitlines()
  assert not [line for line in lines if "orbax" in line or "checkpoint_manager.py" in line]
  saved = [line.rsplit(" ", 1)[-1] for line in lines if "saving the checkpoint at step" in line]
  assert saved == saves
