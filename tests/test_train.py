"""The trainer end to end: main.py, resume, phases, exact evaluation, config errors."""

import os
import subprocess
import sys
from pathlib import Path

import jax
import numpy as np
import pytest

from configs import default
from skipvit_jax.data import pipeline
from skipvit_jax.runtime import distributed
from skipvit_jax.tools import inspect_run
from skipvit_jax.train import evaluate, loop, validation
from skipvit_jax.train import step as step_lib
from skipvit_jax.train.checkpointing import Checkpoints
from skipvit_jax.train.metrics import read_metrics
from tests.support.jax_testing import count_compilations, count_traces

REPO = Path(__file__).resolve().parents[1]
NUM_TRAIN, NUM_TEST = 128, 50  # 50 is not a multiple of the eval batch


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
  return str(tmp_path_factory.mktemp("tfds"))


def tiny_config(data_dir, **overrides):
  """default.py shrunk to seconds: 32 px images (Te/4: the same 64 patches), 4 steps per epoch
  of batch 32, 50 eval examples."""
  config = default.get_config()
  config.data.data_dir = data_dir
  config.data.image_size = 32
  config.model.variant = "Te/4"
  config.data.synthetic.num_train = NUM_TRAIN
  config.data.synthetic.num_test = NUM_TEST
  config.data.num_threads = 2
  config.batch_size = 32
  config.eval_batch_size = 16
  config.num_epochs = 2.0
  config.drop_warmup_epochs = 1.0
  config.optimizer.warmup_epochs = 0.5
  config.log_every_steps = 2
  config.eval_every_epochs = 2.0
  config.checkpoint_every_steps = 4
  for key, value in overrides.items():
    node = config
    *parents, leaf = key.split(".")
    for name in parents:
      node = node[name]
    node[leaf] = value
  return config


@pytest.mark.slow
def test_main_end_to_end_on_two_devices(data_dir, tmp_path):
  workdir = tmp_path / "run"
  # The two CPU devices come from config.num_cpu_devices, not from XLA_FLAGS.
  env = dict(os.environ, XLA_FLAGS="", JAX_DISABLE_MOST_OPTIMIZATIONS="1", PYTHONPATH=str(REPO),
             JAX_COMPILATION_CACHE_DIR=jax.config.jax_compilation_cache_dir,
             JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0.5")
  args = [
      sys.executable, str(REPO / "main.py"), f"--config={REPO / 'configs/default.py'}",
      f"--workdir={workdir}", f"--config.data.data_dir={data_dir}",
      "--config.data.image_size=32", "--config.model.variant=Te/4",
      f"--config.data.synthetic.num_train={NUM_TRAIN}",
      f"--config.data.synthetic.num_test={NUM_TEST}",
      "--config.batch_size=32", "--config.eval_batch_size=16", "--config.num_epochs=2",
      "--config.drop_warmup_epochs=1", "--config.log_every_steps=2",
      "--config.eval_every_epochs=1", "--config.data.num_threads=2",
      "--config.num_cpu_devices=2",
  ]
  result = subprocess.run(args, env=env, capture_output=True, text=True, timeout=600)
  assert result.returncode == 0, result.stderr[-3000:]
  assert "devices: 2" in result.stderr
  records = read_metrics(workdir)
  train_records = [r for r in records if "train/loss" in r]
  eval_records = [r for r in records if "eval/top1" in r]
  assert [r["step"] for r in train_records] == [2, 4, 6, 8]
  assert all(np.isfinite(r["train/loss"]) for r in train_records)
  timed = [r["train/images_per_sec"] for r in train_records if "train/images_per_sec" in r]
  assert timed and all(rate > 0 for rate in timed)
  assert [r["step"] for r in eval_records] == [4, 8]
  for r in eval_records:
    assert r["eval/num_examples"] == NUM_TEST and r["eval/num_examples_all_tokens"] == NUM_TEST
    assert 0 <= r["eval/top1_all_tokens"] <= 1 and 0 <= r["eval/kept_object_recall_0"] <= 1
  assert any("train/steady_images_per_sec" in r for r in records)
  assert records[-1]["train/finished"] == 1 and records[-1]["step"] == 8
  assert (workdir / "checkpoints" / "8").is_dir()
  assert list((workdir / "tensorboard").glob("events.out.tfevents.*"))


def test_cpu_devices_cannot_change_once_jax_has_started(caplog):
  assert jax.local_device_count() == 2  # conftest's, already in use
  with caplog.at_level("WARNING"):
    distributed.use_cpu_devices(5)
  assert "config.num_cpu_devices=5 not applied" in caplog.text
  assert jax.local_device_count() == 2


@pytest.mark.slow
def test_resumed_run_ends_with_the_same_parameters(data_dir, tmp_path):
  config = tiny_config(data_dir, eval_every_epochs=10.0)
  straight = loop.train_and_evaluate(config, str(tmp_path / "straight"))
  interrupted = tiny_config(data_dir, eval_every_epochs=10.0, stop_after_step=3)
  assert loop.train_and_evaluate(interrupted, str(tmp_path / "resumed")).step == 3
  assert Checkpoints(str(tmp_path / "resumed"), keep=3).latest_step() == 3
  assert not any("train/finished" in r for r in read_metrics(tmp_path / "resumed"))
  resumed = loop.train_and_evaluate(config, str(tmp_path / "resumed"))  # picks up at step 3
  assert straight.step == resumed.step == 8
  assert Checkpoints(str(tmp_path / "resumed"), keep=3).latest_step() == 8
  assert read_metrics(tmp_path / "resumed")[-1]["train/finished"] == 1
  # Bitwise: the same compiled steps replay the same float32 operations on this machine (not
  # the same values as another machine's run, which only has to equal its own resume).
  for a, b in zip(jax.tree.leaves(straight.params), jax.tree.leaves(resumed.params)):
    np.testing.assert_array_equal(a, b)


@pytest.mark.slow
def test_a_rerun_at_stop_after_step_trains_nothing(data_dir, tmp_path, caplog):
  config = tiny_config(data_dir, eval_every_epochs=10.0, stop_after_step=3)
  assert loop.train_and_evaluate(config, str(tmp_path)).step == 3
  steps_logged = [r["step"] for r in read_metrics(tmp_path) if "train/loss" in r]
  with caplog.at_level("INFO"):
    again = loop.train_and_evaluate(config, str(tmp_path))
  assert again.step == 3 and not again.preempted
  assert ("stopping at step 3 as config.stop_after_step asks; to go on, rerun with a later "
          "config.stop_after_step (-1: to the end)") in caplog.text
  assert "compiled the train step" not in caplog.text
  assert Checkpoints(str(tmp_path), keep=3).latest_step() == 3
  assert [r["step"] for r in read_metrics(tmp_path) if "train/loss" in r] == steps_logged
  later = loop.train_and_evaluate(tiny_config(data_dir, eval_every_epochs=10.0,
                                              stop_after_step=5), str(tmp_path))
  assert later.step == 5  # a later stop trains on from the checkpoint

  # At the run's end, a rerun neither trains nor evaluates again: its final evaluation is
  # recorded (a SIGTERM during it leaves it missing, and the rerun evaluates: test_faults.py).
  finished = loop.train_and_evaluate(tiny_config(data_dir, eval_every_epochs=10.0), str(tmp_path))
  records = len(read_metrics(tmp_path))
  caplog.clear()
  with caplog.at_level("INFO"):
    again = loop.train_and_evaluate(tiny_config(data_dir, eval_every_epochs=10.0), str(tmp_path))
  assert again.step == 8 and again.eval_metrics == finished.eval_metrics
  assert "eval at step" not in caplog.text and "compiled" not in caplog.text
  assert len(read_metrics(tmp_path)) == records + 1  # train/finished again, no eval record


@pytest.mark.slow
def test_the_whole_recipe_together_resumes_exactly(data_dir, tmp_path):
  """Mixup, cutmix, label smoothing, random translation, RandAugment, random erasing,
  repeated augmentation, the EMA and gradient accumulation in one run; stopped and resumed, it
  ends where an uninterrupted run does, EMA included (the EMA is in the checkpoint)."""
  recipe = {"mixup_alpha": 0.8, "cutmix_alpha": 1.0, "label_smoothing": 0.1,
            "data.rand_augment": "rand-m9-mstd0.5-inc1", "data.random_erase": 0.25,
            "data.random_translate": 2, "data.repeated_augmentations": 3, "ema_decay": 0.9,
            "grad_accum_steps": 2,
            "batch_size": 24, "num_epochs": 1.2, "eval_every_epochs": 1.0,
            "drop_warmup_epochs": 0.0}  # 5 steps per epoch of 24 = 8 images x 3; 6 steps
  straight = loop.train_and_evaluate(tiny_config(data_dir, **recipe), str(tmp_path / "a"))
  interrupted = tiny_config(data_dir, stop_after_step=4, **recipe)
  assert loop.train_and_evaluate(interrupted, str(tmp_path / "b")).step == 4
  resumed = loop.train_and_evaluate(tiny_config(data_dir, **recipe), str(tmp_path / "b"))
  assert straight.step == resumed.step == 6
  # Bitwise: the same compiled steps replay the same float32 operations on this machine (not
  # the same values as another machine's run, which only has to equal its own resume).
  for a, b in zip(jax.tree.leaves(straight.params), jax.tree.leaves(resumed.params)):
    np.testing.assert_array_equal(a, b)
  records = read_metrics(tmp_path / "b")
  evals = [r for r in records if "eval_ema/top1" in r]
  assert [r["step"] for r in evals] == [5, 6]
  for r in evals:
    assert r["eval_ema/num_examples"] == r["eval/num_examples"] == NUM_TEST
    assert np.isfinite(r["eval_ema/loss"]) and 0 <= r["eval_ema/kept_object_recall_0"] <= 1
  assert straight.eval_metrics["eval_ema/loss"] == resumed.eval_metrics["eval_ema/loss"]
  # The EMA lags the parameters: its evaluation differs from theirs.
  assert resumed.eval_metrics["eval_ema/loss"] != resumed.eval_metrics["eval/loss"]
  assert all(np.isfinite(r["train/loss"]) for r in records if "train/loss" in r)
  # The EMA is in the checkpoint, and the notebooks' loader restores it beside the parameters.
  run = inspect_run.load_run(str(tmp_path / "b"))
  assert run.step == 6 and run.ema_params is not None
  for a, b in zip(jax.tree.leaves(run.params), jax.tree.leaves(resumed.params)):
    np.testing.assert_array_equal(a, b)
  assert not all(np.array_equal(a, b) for a, b in zip(jax.tree.leaves(run.ema_params),
                                                      jax.tree.leaves(run.params)))


@pytest.mark.slow
def test_drop_warmup_then_routing_compiles_two_train_steps(data_dir, tmp_path, monkeypatch):
  train_steps = count_traces(monkeypatch, step_lib, "train_step")
  eval_steps = count_traces(monkeypatch, evaluate, "eval_step")
  loop.train_and_evaluate(tiny_config(data_dir), str(tmp_path))
  # Two train steps (warm-up, then routed) and two eval steps (routed and all tokens), over 8
  # steps and two evaluations.
  assert [c["model"].routing.routes for c in train_steps.calls] == [False, True]
  assert [c["model"].routing.routes for c in eval_steps.calls] == [True, False]


@pytest.mark.slow
def test_nonfinite_loss_stops_naming_the_step(data_dir, tmp_path):
  config = tiny_config(data_dir, **{"optimizer.lr": 1e30, "optimizer.warmup_epochs": 0.0})
  with pytest.raises(loop.NonFiniteError, match=r"step \d+: loss or gradient is not finite"):
    loop.train_and_evaluate(config, str(tmp_path))


def test_eval_batches_cover_the_split_exactly_once_across_hosts(data_dir):
  config = tiny_config(data_dir)
  sources = pipeline.load_sources(config.data)
  seen = []
  counts = []
  for host in range(2):
    batches = list(pipeline.eval_batches(
        sources.eval, sources.info, global_batch=16, image_size=32, process_index=host,
        process_count=2, num_threads=1))
    counts.append(len(batches))
    for batch in batches:
      assert batch["image"].shape == (8, 32, 32, 3)
      seen.extend(
          tuple(image.ravel()[:8]) for image, valid in zip(batch["image"], batch["valid"]) if valid)
  assert counts[0] == counts[1] == 4  # ceil(50 / 16), the same on every host
  everything = [tuple(pipeline._preprocess(sources.eval[i], None, sources.info, image_size=32)
                      ["image"].ravel()[:8]) for i in range(NUM_TEST)]
  assert sorted(seen) == sorted(everything)


def test_train_batches_shard_disjointly_and_resume_by_step(data_dir):
  config = tiny_config(data_dir)
  sources = pipeline.load_sources(config.data)

  def labels_of(host, start, hosts=2):
    it = pipeline.train_batches(
        sources.train, sources.info, global_batch=32, image_size=32, seed=0, start_step=start,
        total_steps=6, process_index=host, process_count=hosts, num_threads=1)
    return [b["image"][:, 0, 0, 0].tolist() for b in it]

  one_host = labels_of(0, 0, hosts=1)
  two_hosts = [labels_of(0, 0), labels_of(1, 0)]
  for step in range(6):
    assert two_hosts[0][step] + two_hosts[1][step] == one_host[step]
  assert labels_of(1, 2) == two_hosts[1][2:]


@pytest.mark.parametrize(
    "overrides,field",
    [
        ({"batch_size": 33}, "config.batch_size"),
        ({"eval_batch_size": 15}, "config.eval_batch_size"),
        ({"data.name": "no_such_dataset_anywhere"}, "config.data.name"),
        ({"routing.return_layer": 5}, "RoutingConfig.return_layer"),
        ({"routing.drop_ratios": (1.2,)}, "RoutingConfig.drop_ratios"),
        ({"model.variant": "Q/4"}, "config.model.variant: expected"),
        ({"model.dtype": "float16"}, "config.model.dtype"),
    ],
)
def test_bad_config_fails_before_compiling(data_dir, tmp_path, overrides, field):
  assert jax.device_count() == 2  # conftest's fake devices: 33 and 15 do not divide
  with count_compilations() as compiles:
    with pytest.raises(validation.ConfigError, match=field):  # main.py: one line, exit 1
      loop.train_and_evaluate(tiny_config(data_dir, **overrides), str(tmp_path))
  assert compiles[0] == 0
