"""Smoke tests of the benchmarks at tiny sizes: the JSON they print is complete and sane."""

import json
import subprocess
import sys
import tempfile
from pathlib import Path

import jax
import pytest

from benchmarks import gpu_check, host_malloc, input_pipeline, train_step
from skipvit_jax.models import flops, routing
from skipvit_jax.models import tome as tome_lib

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.slow
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


@pytest.mark.slow
def test_train_step_benchmark_times_the_conv_stem_model(capsys):
  report = train_step.main([
      "--variant=Te/4", "--stem=conv", "--image_size=32", "--num_classes=10", "--batch_size=4",
      "--dtype=float32", "--steps=2", "--rounds=1", "--warmup=1", "--matmul_sizes=128",
      "--configs=6-55-11",
  ])
  assert report["stem"] == "conv" and "Te/4 (conv stem) 32px" in capsys.readouterr().err
  routed = report["results"][1]
  assert routed["ideal_speedup"] == pytest.approx(flops.ideal_speedup(
      "Te/4", image_size=32, num_classes=10, routing=train_step.parse_config("6-55-11").routing,
      stem="conv"), rel=1e-12)
  assert routed["ideal_speedup"] < flops.ideal_speedup(
      "Te/4", image_size=32, num_classes=10, routing=train_step.parse_config("6-55-11").routing)


def test_paper_rows_parse_to_the_configs_routing():
  row = train_step.parse_config("4.7-30.30-10")
  assert (row.routing.drop_layers, row.routing.drop_ratios, row.routing.return_layer) == (
      (4, 7), (0.3, 0.3), 10)
  fused = train_step.parse_config("6-45-fused")
  assert fused.routing.mode == "fused" and fused.routing.return_layer is None
  assert train_step.parse_config("toe2+6-55-11").toe_stage == 2


def test_token_reducer_names_parse_to_the_race_configs():
  """The race's rows by name (configs/sweeps/race_fashion_mnist.py): ToMe's schedule and
  PatchDropout's kept count, which at 49 patches a whole percentage cannot always name."""
  tome = train_step.parse_config("tome3i0.2from3").routing.tome
  assert (tome.r, tome.inflection, tome.start_layer) == (3, 0.2, 3)
  assert tome_lib.merge_schedule(tome, depth=12, num_tokens=50) == (
      0, 0, 2, 2, 2, 2, 2, 3, 3, 3, 3, 4)
  plain = train_step.parse_config("tome7").routing.tome
  assert (plain.r, plain.inflection, plain.start_layer) == (7, 0.0, 1)
  for name, kept in (("pd40of49", 40), ("pd31of49", 31), ("pd80", 39)):
    rate = train_step.parse_config(name).routing.patch_keep_rate
    assert routing.patch_dropout_count(49, rate) == kept, name
  assert train_step.parse_config("pd40of49+6-55-11").routing.drop_layers == (6,)
  for bad in ("tome3x", "pd40of", "pdx"):
    with pytest.raises(ValueError, match="--configs"):
      train_step.parse_config(bad)


def test_input_pipeline_benchmark_smoke(tmp_path):
  report = input_pipeline.main([
      f"--data_dir={tmp_path}", "--synthetic_examples=64", "--batch_size=8", "--batches=3",
      "--threads=1,2", "--read=memory,disk",
  ])
  assert report["dataset"] == "synthetic"
  assert [(r["read"], r["threads"]) for r in report["results"]] == [
      ("memory", 1), ("memory", 2), ("disk", 1), ("disk", 2)]
  for r in report["results"]:
    assert r["train_images_per_sec"] > 0 and r["eval_images_per_sec"] > 0


def test_input_pipeline_benchmark_jpeg_with_deit_augmentation():
  report = input_pipeline.main([
      "--dataset=jpeg", "--image_size=64", "--synthetic_examples=48", "--batch_size=6",
      "--batches=2", "--threads=1", "--augment=deit", "--repeats=3", "--paths=host,device",
      "--stages", "--stage_images=2",
  ])
  assert (report["dataset"], report["augment"], report["repeats"]) == ("jpeg", "deit", 3)
  host, device = report["results"]
  assert (host["path"], device["path"]) == ("host", "device")
  assert host["train_images_per_sec"] > 0 and host["eval_images_per_sec"] > 0
  assert device["train_images_per_sec"] > 0 and device["train_cpu_ms_per_image"] > 0
  stages = {s["stage"] for s in report["stages"]}
  assert {"decode", "crop + resize", "RandAugment", "normalisation", "random erasing"} <= stages


@pytest.mark.slow
def test_host_malloc_benchmark_smoke(tmp_path, monkeypatch):
  """Two tiny trainer runs, glibc's malloc and the retained one, each timed and accounted."""
  # The runs inherit the environment: this suite's fast compiles and its compilation cache,
  # so the second run reuses the first one's programs.
  monkeypatch.setenv("JAX_DISABLE_MOST_OPTIMIZATIONS", "1")
  monkeypatch.setenv("JAX_COMPILATION_CACHE_DIR", jax.config.jax_compilation_cache_dir)
  monkeypatch.setenv("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0.5")
  tiny = [f"--config.data.data_dir={tmp_path}", "--config.data.synthetic.num_train=64",
          "--config.data.synthetic.num_test=16", "--config.data.image_size=32",
          "--config.model.variant=Te/8", "--config.eval_batch_size=16"]
  report = host_malloc.main(["--config=configs/default.py", "--batch_size=8", "--steps=4",
                             "--skip=0", "--log_every=2", "--pairs=1",
                             *(f"--override={flag}" for flag in tiny)])
  assert [r["mode"] for r in report["runs"]] == ["system", "retained"]
  for r in report["runs"]:
    assert r["images_per_sec"] > 0 and r["user_s"] > 0 and r["system_s"] >= 0
  mean = report["mean_images_per_sec"]
  assert report["speedup"] == pytest.approx(mean["retained"] / mean["system"])


def test_model_and_benchmarks_import_without_the_data_stack():
  # The GPU machine has JAX, Flax, optax, chex and absl only.
  code = ("import sys\n"
          "for m in ('ml_collections', 'grain', 'tensorflow_datasets', 'array_record', 'orbax',"
          " 'tensorboardX'):\n"
          "  sys.modules[m] = None  # any import of them raises ImportError\n"
          "import benchmarks.train_step, benchmarks.gather_attention, kernels.gather_attention\n"
          "import benchmarks.device_augment, benchmarks.gpu_check\n"
          "import skipvit_jax.models.vit, skipvit_jax.train.step, skipvit_jax.models.flops\n")
  subprocess.run([sys.executable, "-c", code], cwd=REPO, check=True, timeout=300)


@pytest.mark.slow
def test_gpu_check_smoke_writes_every_field(tmp_path):
  report = gpu_check.main(["--smoke", f"--out_dir={tmp_path}"])
  written = json.loads((tmp_path / "gpu_check.json").read_text())
  assert written == json.loads(json.dumps(report))
  assert {"benchmark", "argv", "environment", "kernel_checks", "train_step", "device_augment",
          "timm", "targets", "attention_choice", "runtime_s"} <= written.keys()
  # The device augmentation (benchmarks/device_augment.py), timed every way.
  augment = written["device_augment"]
  assert set(augment["ms"]) == {"plain", "augmenting", "separate", "all", "flip + normalise",
                                "+ RandAugment", "+ erasing"}
  assert all(ms > 0 for ms in augment["ms"].values()) and augment["share_alone"] > 0
  assert "### Device augmentation" in (tmp_path / "gpu_check.md").read_text()
  assert {"date", "jax", "flax", "optax", "backend", "device_kind", "local_devices",
          "platform_version", "smoke"} <= written["environment"].keys()
  # Correctness: both kernels, both dtypes, all within tolerance (on CPU: the Pallas kernel
  # in interpret mode, the cuDNN path's padding on XLA).
  checks = written["kernel_checks"]
  assert {(c["kernel"], c["dtype"]) for c in checks} == {
      (kernel, dtype) for kernel in ("pallas", "cudnn") for dtype in ("float32", "bfloat16")}
  for c in checks:
    assert c["passed"] and set(c["errors"]) == {"out", "cls_scores", "dq", "dk", "dv"}, c
  # The training step: every configuration with every attention implementation.
  steps = written["train_step"]
  assert steps["dtype"] == "bfloat16" and steps["peak_matmul_tflops_per_device"] > 0
  assert [(r["attention"], r["config"]) for r in steps["results"]] == [
      (a, c) for a in ("cudnn", "pallas") for c in ("dense", "6-55-11")]
  for r in steps["results"]:
    assert r["images_per_sec"] > 0 and r["mfu"] > 0 and r["step_memory_mib"] > 0, r
    # On a CPU both fall back, and the record says to what.
    assert r["attention_runs_as"].startswith(
        {"cudnn": "xla (cudnn cannot run", "pallas": "pallas jnp reference"}[r["attention"]]), r
  peer = written["timm"]
  assert peer["ran"] == ("images_per_sec" in peer) and (peer["ran"] or peer["reason"])
  assert {(v["target"], v["attention"]) for v in written["targets"]} == {
      (target, a) for a in ("cudnn", "pallas") for target in (
          "dense MFU >= 35%", "dense images/s >= timm's", "6-55-11 speedup >= 1.24x",
          "every routed step's memory < dense's")}
  assert written["attention_choice"]["fastest"] in ("cudnn", "pallas")
  assert written["runtime_s"]["total"] > 0
  text = (tmp_path / "gpu_check.md").read_text()
  for heading in ("### Kernel correctness", "### Training step", "### Peer: timm", "### Targets"):
    assert heading in text
  assert text.count("| pallas (pallas jnp reference") == 2


def _step_result(attention, config, images_per_sec, *, mfu=0.4, ideal=1.0, memory=100.0):
  speedup = images_per_sec / 100.0
  return {"attention": attention, "config": config, "images_per_sec": images_per_sec,
          "mfu": mfu, "measured_speedup": speedup, "ideal_speedup": ideal,
          "realised_fraction_of_ideal_gain": (speedup - 1) / (ideal - 1) if ideal > 1 else None,
          "step_memory_mib": memory}


def test_gpu_check_judges_every_target_and_names_the_fastest_attention():
  results = [
      _step_result("xla", "dense", 100.0, mfu=0.30),
      _step_result("xla", "6-55-11", 120.0, ideal=1.27, memory=80.0),
      _step_result("xla", "toe1", 190.0, ideal=1.88, memory=60.0),
      _step_result("xla", "toe1+6-55-11", 230.0, ideal=2.32, memory=110.0),
      _step_result("cudnn", "dense", 100.0, mfu=0.40),  # speedups are per implementation
      _step_result("cudnn", "6-55-11", 130.0, ideal=1.27, memory=80.0),
      _step_result("cudnn", "toe1", 175.0, ideal=1.88, memory=60.0),
      _step_result("cudnn", "toe1+6-55-11", 240.0, ideal=2.32, memory=70.0),
  ]
  verdicts = {(v["target"], v["attention"]): v for v in gpu_check.judge(
      results, {"ran": True, "images_per_sec": 105.0})}
  assert verdicts[("dense MFU >= 35%", "xla")]["passed"] is False
  assert verdicts[("dense MFU >= 35%", "cudnn")]["passed"] is True
  assert verdicts[("dense images/s >= timm's", "cudnn")]["passed"] is False
  assert verdicts[("6-55-11 speedup >= 1.24x", "xla")]["passed"] is False  # 1.20x
  assert verdicts[("6-55-11 speedup >= 1.24x", "cudnn")]["passed"] is True  # 1.30x
  # ToE stage 1 alone: xla realises 0.90 / 0.88 of the ideal gain (over 100%), cudnn 0.75 / 0.88.
  assert verdicts[("toe1 realises >= 90% of its ideal gain", "xla")]["passed"] is True
  assert verdicts[("toe1 realises >= 90% of its ideal gain", "cudnn")]["passed"] is False
  assert ("toe1+6-55-11 realises >= 90% of its ideal gain", "xla") not in verdicts
  assert verdicts[("every routed step's memory < dense's", "xla")]["passed"] is False
  assert verdicts[("every routed step's memory < dense's", "cudnn")]["passed"] is True
  unmeasured = gpu_check.judge(results, {"ran": False, "reason": "no torch"})
  assert [v["passed"] for v in unmeasured if v["target"] == "dense images/s >= timm's"] == [
      None, None]
  choice = gpu_check.fastest_attention(results)
  assert choice["fastest"] == "cudnn"  # geometric mean 152.9 against 151.3 img/s
  assert choice["auto_picks"] == "xla" and not choice["auto_agrees"]  # a CPU


def test_gpu_check_judges_a_dense_only_run_without_comparing_memory():
  verdicts = gpu_check.judge([_step_result("xla", "dense", 100.0)], {"ran": False})
  assert [v["target"] for v in verdicts] == ["dense MFU >= 35%", "dense images/s >= timm's"]


def test_gpu_check_writes_where_told_or_else_into_a_fresh_temporary_directory(
    tmp_path, monkeypatch, capsys):
  # The measurements are faked (the smoke test runs them): this is about where files go.
  monkeypatch.setattr(gpu_check, "kernel_checks", lambda shape, num_keep: [])
  monkeypatch.setattr(gpu_check.train_step, "run",
                      lambda args: {"results": [_step_result("xla", "dense", 100.0)]})
  monkeypatch.setattr(gpu_check, "markdown", lambda report: "the table")
  named = tmp_path / "named" / "deeper"
  gpu_check.main(["--smoke", "--no_timm", f"--out_dir={named}"])
  assert sorted(p.name for p in named.iterdir()) == ["gpu_check.json", "gpu_check.md"]
  assert f"gpu_check.json and gpu_check.md are in {named}" in capsys.readouterr().err

  cwd, temp = tmp_path / "cwd", tmp_path / "tmp"
  cwd.mkdir()
  temp.mkdir()
  monkeypatch.chdir(cwd)
  monkeypatch.setattr(tempfile, "tempdir", str(temp))
  report = gpu_check.main(["--smoke", "--no_timm"])
  assert list(cwd.iterdir()) == []  # nothing where it was started
  [out_dir] = temp.iterdir()
  assert out_dir.name.startswith("gpu_check_")
  assert f"gpu_check.json and gpu_check.md are in {out_dir}" in capsys.readouterr().err
  assert json.loads((out_dir / "gpu_check.json").read_text()) == json.loads(json.dumps(report))
  assert (out_dir / "gpu_check.md").read_text() == "the table\n"
