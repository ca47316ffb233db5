"""Smoke tests of the benchmarks at tiny sizes: the JSON they print is complete and sane."""

import subprocess
import sys
from pathlib import Path

import pytest

from benchmarks import input_pipeline, train_step
from skipvit_jax import flops

REPO = Path(__file__).resolve().parents[1]


def test_train_step_benchmark_smoke(tmp_path):
  report = train_step.main([
      "--variant=Te/4", "--image_size=32", "--num_classes=10", "--batch_size=4",
      "--dtype=float32", "--steps=2", "--rounds=2", "--warmup=1", "--matmul_sizes=128,256",
      "--configs=6-55-11,6-45-fused,toe1+6-55-11", f"--profile_dir={tmp_path}",
      "--profile_steps=1",
  ])
  for r in report["results"]:
    assert list((tmp_path / r["config"]).rglob("*.xplane.pb")), f"no trace for {r['config']}"
    kinds = r["profile"]["op_ms_per_step"]
    assert kinds["matmul"] > 0 and kinds["other"] > 0, kinds
    routed = r["config"] != "dense"
    assert (kinds.get("routing (sort / gather / scatter)", 0) > 0) == routed, kinds
  assert [r["config"] for r in report["results"]] == [
      "dense", "6-55-11", "6-45-fused", "toe1+6-55-11"]
  assert report["peak_matmul_tflops_per_device"] > 0
  for r in report["results"]:
    assert r["images_per_sec"] > 0 and r["measured_speedup"] > 0 and r["timed_steps"] == 2
    assert 0 < r["mfu"]
    config = train_step.parse_config(r["config"])
    toe_plan = None
    if config.toe_stage:
      toe_plan = train_step.toe.make_plan(64, epoch=config.toe_stage - 1, **train_step.TOE_DEIT_S)
    assert r["ideal_speedup"] == pytest.approx(flops.ideal_speedup(
        "Te/4", image_size=32, num_classes=10, routing=config.routing, toe=toe_plan), rel=1e-12)
  dense = report["results"][0]
  assert dense["measured_speedup"] == 1.0 and dense["ideal_speedup"] == 1.0
  assert report["results"][3]["toe_tokens"] == 33


def test_paper_rows_parse_to_the_configs_routing():
  row = train_step.parse_config("4.7-30.30-10")
  assert (row.routing.drop_layers, row.routing.drop_ratios, row.routing.return_layer) == (
      (4, 7), (0.3, 0.3), 10)
  fused = train_step.parse_config("6-45-fused")
  assert fused.routing.mode == "fused" and fused.routing.return_layer is None
  assert train_step.parse_config("toe2+6-55-11").toe_stage == 2


def test_input_pipeline_benchmark_smoke(tmp_path):
  report = input_pipeline.main([
      f"--data_dir={tmp_path}", "--synthetic_examples=64", "--batch_size=8", "--batches=3",
      "--threads=1,2",
  ])
  assert report["dataset"] == "synthetic"
  assert [r["threads"] for r in report["results"]] == [1, 2]
  for r in report["results"]:
    assert r["train_images_per_sec"] > 0 and r["eval_images_per_sec"] > 0


def test_model_and_benchmarks_import_without_the_data_stack():
  # The GPU machine has JAX, Flax, optax, chex and absl only.
  code = ("import sys\n"
          "for m in ('ml_collections', 'grain', 'tensorflow_datasets', 'array_record', 'orbax',"
          " 'tensorboardX'):\n"
          "  sys.modules[m] = None  # any import of them raises ImportError\n"
          "import benchmarks.train_step, benchmarks.gather_attention, kernels.gather_attention\n"
          "import skipvit_jax.models.vit, skipvit_jax.training_step, skipvit_jax.flops\n")
  subprocess.run([sys.executable, "-c", code], cwd=REPO, check=True, timeout=300)
