"""Sweeps (skipvit_jax.tools.sweep): sweep files load and validate (spec), command lines,
results rows, tables and files and their reader (results, tables), statistics over seeds
(stats), the committed reproduction sweeps rebuilt from their run dirs, and a tiny real sweep
(finished runs skipped, a failing run recorded while the sweep goes on, a partial run rerun)."""

import csv
import importlib.util
import json
import math
import os
import shutil
from pathlib import Path

import jax
import numpy as np
import pytest
from scipy import stats as scipy_stats

from configs import skipvit_s16_imagenet
from configs.sweeps import paper_row
from skipvit_jax.runtime import workdir_lock
from skipvit_jax.tools.sweep import results, runner, schema, spec, stats
from skipvit_jax.train import plan
from skipvit_jax.train.metrics import METRICS_FILE, MetricWriter
from tests import test_configs

REPO = Path(__file__).resolve().parents[1]
SWEEP_FILES = sorted(p for p in (REPO / "configs" / "sweeps").glob("*.py")
                     if p.name != "__init__.py")
ROUTED = {**paper_row("6-55-11"), "drop_warmup_epochs": 1.0}

# Subprocess runs: one CPU device (no pmap split to compile for) and fast, cached compiles.
RUN_ENV = {
    "XLA_FLAGS": "--xla_force_host_platform_device_count=1",
    "JAX_DISABLE_MOST_OPTIMIZATIONS": "1",
    "JAX_COMPILATION_CACHE_DIR": str(jax.config.jax_compilation_cache_dir),
    "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "0.5",
}


def tiny_overrides(data_dir) -> dict:
  """tests/test_train.py's tiny_config as sweep-wide overrides: 32 px, 4 steps of batch 32 per
  epoch, 2 epochs, one evaluation of 50 examples at the end."""
  return {
      "data.data_dir": str(data_dir), "data.image_size": 32, "model.variant": "Te/4",
      "data.synthetic.num_train": 128,
      "data.synthetic.num_test": 50, "data.num_threads": 2, "batch_size": 32,
      "eval_batch_size": 16, "num_epochs": 2.0, "optimizer.warmup_epochs": 0.5,
      "log_every_steps": 2, "eval_every_epochs": 2.0, "checkpoint_every_steps": 4,
  }


def write_sweep(path: Path, runs: str, extra: str = "") -> Path:
  path.write_text(f'BASE = "configs/default.py:baseline"\nRUNS = {runs}\n{extra}')
  return path


@pytest.mark.parametrize("path", SWEEP_FILES, ids=lambda p: p.stem)
def test_sweep_file_loads_and_every_run_builds_a_valid_model(path):
  module_doc = path.read_text().split('"""')[1]
  assert f"python -m skipvit_jax.tools.sweep --sweep configs/sweeps/{path.name}" in module_doc
  loaded = spec.load_sweep(path, seeds=(0, 1))
  assert loaded.dense is not None
  assert len(loaded.runs) == 2 * len({run.name for run in loaded.runs})
  for run in loaded.runs:
    config = spec.build_config(spec.config_args(run))  # what main.py gets
    assert config.seed == run.seed
    model = plan.build_model(config, num_classes=8 if config.data.name == "synthetic" else 1000)
    if run.name == loaded.dense:
      assert not model.routing.routes and not config.toe.enabled
    test_configs.assert_every_phase_builds(config, model)


@pytest.mark.parametrize("row", skipvit_s16_imagenet.ROWS)
def test_paper_row_overrides_match_the_imagenet_row_config(row):
  run = spec.SweepRun("r", 0, "configs/vit_s16_imagenet.py",
                      {**paper_row(row), "drop_warmup_epochs": 15.0})
  overridden = spec.build_config(spec.config_args(run))
  assert overridden.to_dict() == skipvit_s16_imagenet.get_config(f"row={row}").to_dict()


def test_command_line_gives_one_flag_per_field_with_sweep_overrides_winning():
  run = spec.SweepRun("r", 3, "configs/default.py:toe,baseline",
                      {"routing.drop_layers": (4, 7), "routing.drop_ratios": (0.3, 0.3),
                       "routing.return_layer": 10, "toe.sparse_eval": True, "num_epochs": 2.0})
  cmd = spec.command(run, "/w", {"num_epochs": "1", "data.data_dir": "/d"})
  assert cmd[1:] == [
      "-m", "skipvit_jax", "--config=configs/default.py:toe,baseline", "--config.seed=3",
      "--config.routing.drop_layers=(4, 7)", "--config.routing.drop_ratios=(0.3, 0.3)",
      "--config.routing.return_layer=10", "--config.toe.sparse_eval=true",
      "--config.num_epochs=1", "--config.data.data_dir=/d", "--workdir=/w"]
  config = spec.build_config(cmd[2:-1])
  assert config.seed == 3 and config.toe.enabled and config.toe.sparse_eval
  assert tuple(config.routing.drop_layers) == (4, 7) and config.num_epochs == 1.0
  with pytest.raises(ValueError, match="seeds"):
    spec.config_args(run, {"seed": 1})
  with pytest.raises(AttributeError):
    spec.build_config(spec.config_args(run, {"routing.no_such_field": 1}))


def test_sweep_file_errors_and_seeds(tmp_path):
  path = write_sweep(tmp_path / "s.py", '[{"name": "dense"}, {"name": "r", "overrides": {}}]',
                     "SEEDS = (0, 1)\n")
  assert [r.dir_name for r in spec.load_sweep(path).runs] == [
      "dense_seed0", "r_seed0", "dense_seed1", "r_seed1"]
  assert [r.dir_name for r in spec.load_sweep(path, seeds=[5]).runs] == ["dense_seed5", "r_seed5"]
  path = write_sweep(tmp_path / "own.py", '[{"name": "dense", "seeds": (2, 0)}, {"name": "r"}]')
  assert [r.dir_name for r in spec.load_sweep(path).runs] == ["dense_seed0", "r_seed0",
                                                             "dense_seed2"]
  assert [r.dir_name for r in spec.load_sweep(path, seeds=[1]).runs] == ["dense_seed1", "r_seed1"]
  for runs, message in [('[{"name": "a"}, {"name": "a"}]', "repeat"),
                        ('[{"name": "a/b"}]', "file-name-safe"),
                        ('[{"name": "a", "overide": {}}]', "unknown keys"),
                        ('[{"name": "a", "overrides": {"seed": 1}}]', "SEEDS")]:
    with pytest.raises(ValueError, match=message):
      spec.load_sweep(write_sweep(tmp_path / "bad.py", runs))
  with pytest.raises(ValueError, match="DENSE"):
    spec.load_sweep(write_sweep(tmp_path / "bad.py", '[{"name": "a"}]', 'DENSE = "b"\n'))


def _write_metrics(run_dir: Path, records: list[dict]) -> None:
  """Records as the trainer writes them to RUN_DIR/metrics.jsonl: {"step": s, metric: value}."""
  writer = MetricWriter(str(run_dir), enabled=True)
  for record in records:
    writer.write(record["step"], {k: v for k, v in record.items() if k != "step"})
  writer.close()


def _fake_run(run_dir: Path, *, top1, rate, recall=None, status="done"):
  """A run dir as main.py and the runner leave it, without training."""
  run_dir.mkdir(parents=True)
  routed = {"eval/top1_all_tokens": top1 - 0.01, "eval/kept_object_recall_0": recall,
            "eval/keep_ratio_0": 0.453} if recall is not None else {}
  _write_metrics(run_dir, [
      {"step": 0, "flops/ideal_speedup": 1.2, "flops/run_ideal_speedup": 1.1},
      {"step": 8, "train/loss": 1.0, "train/images_per_sec": rate},
      {"step": 8, "eval/top1": top1, "eval/num_examples": 50.0, **routed},
      {"step": 8, "train/steady_images_per_sec": rate}])
  (run_dir / schema.RUN_FILE).write_text(json.dumps(
      {"status": status, "attempts": 1, "wall_time_s": 60.0, "error": ""}))
  if status == "done":
    (run_dir / schema.DONE_FILE).write_text("{}")


def test_results_compare_with_the_same_seed_dense_run_and_aggregate_over_seeds(tmp_path):
  path = write_sweep(tmp_path / "s.py",
                     '[{"name": "dense"}, {"name": "r", "overrides": {"num_epochs": 2.0}}]')
  loaded = spec.load_sweep(path, seeds=(0, 1, 2))
  _fake_run(tmp_path / "out/dense_seed0", top1=0.30, rate=100.0)
  _fake_run(tmp_path / "out/dense_seed1", top1=0.32, rate=200.0)
  _fake_run(tmp_path / "out/r_seed0", top1=0.31, rate=150.0, recall=0.7)
  _fake_run(tmp_path / "out/r_seed1", top1=0.33, rate=250.0, recall=0.8)
  _fake_run(tmp_path / "out/r_seed2", top1=0.35, rate=300.0, recall=0.9, status="running")
  rows = results.write_results(loaded, tmp_path / "out")
  assert [(r["name"], r["seed"], r["status"]) for r in rows] == [
      ("dense", 0, "done"), ("r", 0, "done"), ("dense", 1, "done"), ("r", 1, "done"),
      ("dense", 2, "pending"), ("r", 2, "incomplete")]
  assert [r["speedup_measured"] for r in rows] == [1.0, 1.5, 1.0, 1.25, None, 2.0]  # 300 / 150
  assert rows[0]["top1_all_tokens"] == 0.30 and rows[1]["kept_object_recall_0"] == 0.7
  markdown = (tmp_path / "out/results.md").read_text()
  assert "## Mean ± std over seeds" in markdown
  assert "| r | 2 | 32.0 ± 1.4 |" in markdown  # seeds 0 and 1 finished; seed 2 did not
  assert "0.700 (0.453)" in markdown


def test_a_non_finite_metric_is_a_float_in_the_row(tmp_path):
  run = spec.SweepRun("r", 0, "configs/default.py:baseline", {})
  _fake_run(tmp_path / "r_seed0", top1=float("nan"), rate=float("inf"))
  row = results.collect_run(run, tmp_path / "r_seed0")
  assert math.isnan(row["top1"]) and row["images_per_sec"] == float("inf")
  assert results.finished_rows([row], "top1") == []


# Student's t quantile t_{0.975, df} in closed form where there is one (df = 1: the Cauchy
# distribution, tan(0.475 pi); df = 2: (2p - 1) / sqrt(2p (1 - p))), otherwise to the six
# digits of published tables.
T_975 = {1: math.tan(0.475 * math.pi), 2: 0.95 / math.sqrt(2 * 0.975 * 0.025), 5: 2.570582,
         12: 2.178813, 40: 2.021075, 120: 1.979930}


@pytest.mark.parametrize("df", sorted(T_975))
def test_t_quantile_is_students_for_every_df(df):
  assert stats.t_975(df) == pytest.approx(T_975[df], abs=1e-6 if df > 2 else 1e-12)
  assert stats.t_975(df) == pytest.approx(scipy_stats.t.ppf(0.975, df), rel=1e-12)


def test_t_quantile_needs_a_degree_of_freedom():
  with pytest.raises(ValueError, match="df >= 1"):
    stats.t_975(0)


@pytest.mark.parametrize("df", [1, 2, 5, 40])
def test_paired_interval_is_scipys_95_percent_t_interval(df):
  rng = np.random.default_rng(df)
  reference = {seed: float(v) for seed, v in enumerate(rng.uniform(0.6, 0.9, df + 1))}
  values = {seed: v + float(rng.normal(0.0, 0.02)) for seed, v in reference.items()}
  values[df + 7] = 0.5  # a seed the reference lacks: not a pair
  difference = stats.paired_difference(values, reference)
  diffs = np.array([values[seed] - reference[seed] for seed in reference])
  low, high = scipy_stats.t.interval(0.95, df, loc=diffs.mean(),
                                     scale=diffs.std(ddof=1) / np.sqrt(df + 1))
  assert difference["pairs"] == df + 1
  assert difference["mean"] == pytest.approx(diffs.mean(), rel=1e-12)
  assert difference["ci95"] == pytest.approx((high - low) / 2, rel=1e-9)


def test_paired_interval_of_a_hand_computed_case():
  # Differences +0.01, +0.02, -0.01: mean 1/150, sample variance 7/30000, so the half-width
  # is t_{0.975, 2} sqrt(7/30000) / sqrt(3) = 4.3026527 * 0.0088192 = 0.0379458.
  difference = stats.paired_difference({0: 0.81, 1: 0.86, 2: 0.81}, {0: 0.80, 1: 0.84, 2: 0.82})
  assert difference["mean"] == pytest.approx(1 / 150)
  assert difference["ci95"] == pytest.approx(0.0379458, abs=1e-7)
  assert stats.paired_difference({0: 0.5}, {0: 0.4}) == pytest.approx(
      {"mean": 0.1, "ci95": None, "pairs": 1})
  assert stats.paired_difference({0: 0.5}, {1: 0.4}) == {"mean": None, "ci95": None, "pairs": 0}


def test_paired_difference_to_dense_with_a_t_interval(tmp_path):
  path = write_sweep(tmp_path / "s.py",
                     '[{"name": "dense"}, {"name": "r", "overrides": {"num_epochs": 2.0}}]')
  loaded = spec.load_sweep(path, seeds=(0, 1, 2, 3))
  dense, routed = [0.80, 0.84, 0.82, 0.90], [0.81, 0.86, 0.81, 0.85]  # seed 3: r unfinished
  for seed in range(4):
    _fake_run(tmp_path / f"out/dense_seed{seed}", top1=dense[seed], rate=100.0)
    _fake_run(tmp_path / f"out/r_seed{seed}", top1=routed[seed], rate=120.0, recall=0.7,
              status="done" if seed < 3 else "failed")
  results.write_results(loaded, tmp_path / "out")
  written = json.loads((tmp_path / "out/results.json").read_text())
  r_entry = next(a for a in written["mean_std_over_seeds"] if a["name"] == "r")
  diffs = np.array(routed[:3]) - np.array(dense[:3])  # only the seeds both finished
  half_width = T_975[2] * diffs.std(ddof=1) / np.sqrt(3)
  difference = r_entry["top1_vs_dense"]
  assert difference["pairs"] == 3
  assert difference["mean"] == pytest.approx(diffs.mean())
  assert difference["ci95"] == pytest.approx(half_width, rel=1e-9)
  assert r_entry["top1_all_tokens_vs_dense"]["mean"] == pytest.approx(diffs.mean() - 0.01)
  assert "top1_vs_dense" not in written["mean_std_over_seeds"][0]  # dense itself
  markdown = (tmp_path / "out/results.md").read_text()
  assert f"{100 * diffs.mean():+.1f} ± {100 * half_width:.1f} (3)" in markdown


def test_results_json_reads_back_with_overrides_as_python_values(tmp_path):
  overrides = {"routing.drop_layers": (4, 7), "routing.drop_ratios": (0.3, 0.3),
               "routing.return_layer": 10, "routing.mode": "skip", "toe.enabled": False}
  runs = [spec.SweepRun("dense", 0, "configs/default.py:baseline", {}),
          spec.SweepRun("4.7-30.30-10", 0, "configs/default.py:baseline", overrides)]
  sweep = spec.Sweep("s.py", runs, "dense")
  written = results.write_results(sweep, tmp_path, {"num_epochs": 1.0})  # never run: pending
  # The file holds the overrides as JSON lists; the reader gives the sweep file's tuples.
  assert json.loads((tmp_path / "results.json").read_text())["runs"][1]["overrides"][
      "routing.drop_layers"] == [4, 7]
  loaded = results.read_results(tmp_path)
  assert (loaded.sweep, loaded.dense, loaded.overrides) == ("s.py", "dense", {"num_epochs": "1.0"})
  assert [(r["name"], r["status"], r["overrides"]) for r in loaded.runs] == [
      ("dense", "pending", {}), ("4.7-30.30-10", "pending", overrides)]
  assert [{**r, "overrides": {}} for r in loaded.runs] == [{**r, "overrides": {}} for r in written]
  assert loaded.mean_std_over_seeds == stats.aggregate(written, "dense")
  assert results.finished_rows(loaded.runs) == []


def test_finished_rows_need_a_finite_number_under_every_field():
  def row(name, status="done", **metrics):
    return {"name": name, "status": status, "top1": None, "speedup_measured": None, **metrics}

  rows = [row("dense", top1=0.31, speedup_measured=1.0),
          row("slow", top1=0.30, speedup_measured=0.9),
          row("bad", status="failed", top1=0.2, speedup_measured=1.0),
          row("nan", top1=float("nan"), speedup_measured=1.1),
          row("no speed", top1=0.3)]
  assert [r["name"] for r in results.finished_rows(rows, "top1", "speedup_measured")] == [
      "dense", "slow"]
  assert [r["name"] for r in results.finished_rows(rows, "top1")] == [
      "dense", "slow", "no speed"]
  assert [r["name"] for r in results.finished_rows(rows)] == [
      "dense", "slow", "nan", "no speed"]


@pytest.mark.parametrize("name", ["synthetic", "fashion_mnist"])
def test_committed_reproduction_sweeps_rebuild_to_their_committed_results(name, tmp_path,
                                                                          monkeypatch):
  # The committed run dirs (metrics.jsonl, sweep_run.json, done.json) give back, byte for
  # byte, the committed results files: rows, speedups, statistics and tables.
  committed = REPO / "docs" / "reproduction" / name
  copy = tmp_path / name
  shutil.copytree(committed, copy)
  recorded = results.read_results(committed)
  monkeypatch.chdir(REPO)  # the sweep file as results.json names it: relative to the root
  results.write_results(spec.load_sweep(recorded.sweep), copy, recorded.overrides)
  for table in ("results.md", "results.csv", "results.json"):
    assert (copy / table).read_text() == (committed / table).read_text(), table


def test_run_that_outlasts_the_timeout_is_stopped_and_recorded(tmp_path):
  run = spec.SweepRun("dense", 0, "configs/default.py:baseline", {})
  state = runner.run_one(run, tmp_path / "dense_seed0", timeout=0.5, env=RUN_ENV)
  assert state["status"] == "failed" and state["error"].startswith("timed out after 0.5 s")
  assert not (tmp_path / "dense_seed0" / schema.DONE_FILE).exists()


@pytest.mark.slow
def test_tiny_sweep_end_to_end(tmp_path):
  path = write_sweep(tmp_path / "three.py", repr([
      {"name": "dense"},
      {"name": "bad", "overrides": {**ROUTED, "routing.return_layer": 3}},  # before drop layer 6
      {"name": "6-55-11", "overrides": ROUTED},
  ]))
  loaded = spec.load_sweep(path)
  out = tmp_path / "out"
  overrides = tiny_overrides(tmp_path / "tfds")
  # An earlier, interrupted attempt at the routed run: no done.json, 5 s already spent.
  (out / "6-55-11_seed0").mkdir(parents=True)
  (out / "6-55-11_seed0" / schema.RUN_FILE).write_text(
      json.dumps({"status": "running", "attempts": 1, "wall_time_s": 5.0}))

  rows = runner.run_sweep(loaded, out, overrides=overrides, env=RUN_ENV)
  dense, bad, routed = rows
  assert [r["status"] for r in rows] == ["done", "failed", "done"]
  assert bad["error"].startswith("exit status ") and "return_layer" in bad["error"]
  assert dense["speedup_measured"] == 1.0 and dense["speedup_ideal"] == 1.0
  assert routed["speedup_ideal"] > 1.0 and routed["speedup_measured"] > 0
  assert routed["attempts"] == 2 and routed["wall_time_s"] > 5.0  # summed over attempts
  assert routed["keep_ratio_0"] == pytest.approx(29 / 64)
  assert 0 <= routed["kept_object_recall_0"] <= 1 and 0 <= routed["top1_all_tokens"] <= 1
  assert dense["num_examples"] == routed["num_examples"] == 50
  assert dense["top1_all_tokens"] == dense["top1"]

  with open(out / "results.csv", newline="") as f:
    table = list(csv.DictReader(f))
  assert [r["name"] for r in table] == ["dense", "bad", "6-55-11"]
  for column in ("seed", "overrides", "status", "top1", "top1_all_tokens", "kept_object_recall_0",
                 "images_per_sec", "speedup_measured", "speedup_ideal", "wall_time_s",
                 "num_examples", "error"):
    assert column in table[0]
  assert float(table[0]["speedup_measured"]) == 1.0
  assert json.loads((out / "results.json").read_text())["runs"] == rows
  markdown = (out / "results.md").read_text()
  assert "| dense | 0 | done |" in markdown and "## Failed runs" in markdown
  assert "Mean ± std" not in markdown  # one seed

  def snapshot(name):
    run_dir = out / f"{name}_seed0"
    return (run_dir / schema.RUN_FILE).read_text(), (run_dir / METRICS_FILE).read_text()

  finished = {name: snapshot(name) for name in ("dense", "6-55-11")}
  again = runner.run_sweep(loaded, out, overrides=overrides, env=RUN_ENV)
  assert {name: snapshot(name) for name in finished} == finished  # not rerun
  assert again[1]["status"] == "failed" and again[1]["attempts"] == 2  # retried


def test_results_figures_contrast_runs_over_the_seeds_both_finished():
  module_spec = importlib.util.spec_from_file_location("figures", REPO / "docs" / "figures.py")
  figures = importlib.util.module_from_spec(module_spec)
  module_spec.loader.exec_module(figures)

  def row(name, seed, top1, status="done"):
    return {"name": name, "seed": seed, "status": status, "top1": top1}

  rows = [row("6-55-11", 0, 0.60), row("6-55-11", 1, 0.50), row("6-55-11", 2, 0.70),
          row("6-55-11_random", 0, 0.58), row("6-55-11_random", 1, 0.49),
          row("6-55-11_random", 2, 0.10, status="failed")]
  by_pair = {(c["run"], c["reference"], c["metric"]): c for c in figures.contrasts(rows)}
  random = by_pair[("6-55-11", "6-55-11_random", "top1")]
  # Seeds 0 and 1 only: differences 0.02 and 0.01, sd 0.01 / sqrt(2); t(1) = tan(0.475 pi).
  assert random["pairs"] == 2
  assert random["mean"] == pytest.approx(0.015)
  assert random["ci95"] == pytest.approx(T_975[1] * 0.01 / 2 ** 0.5 / 2 ** 0.5, rel=1e-9)
  assert by_pair[("toe", "dense", "top1")]["pairs"] == 0
  methods = {name: figures.method(name) for name in (
      "dense", "6-55-11", "6-45-fused", "6-55-11_random", "toe", "toe+6-55-11",
      "tome_3i0.2_from3", "patchdrop_40of49")}
  assert methods == {"dense": "dense", "6-55-11": "SkipViT", "6-45-fused": "SkipViT",
                     "6-55-11_random": "random selection", "toe": "ToE",
                     "toe+6-55-11": "ToE + SkipViT", "tome_3i0.2_from3": "ToMe",
                     "patchdrop_40of49": "PatchDropout"}


def test_only_runs_the_named_runs_and_tabulates_every_run(tmp_path, monkeypatch):
  loaded = spec.load_sweep(write_sweep(tmp_path / "three.py", repr([
      {"name": "dense"}, {"name": "6-55-11", "overrides": ROUTED},
      {"name": "6-45-11", "overrides": {**ROUTED, "routing.drop_ratios": (0.45,)}},
  ]), "SEEDS = (0, 1)\n"))
  trained = []

  def fake_run_one(run, run_dir, **kwargs):
    trained.append(run.dir_name)
    Path(run_dir).mkdir(parents=True)
    (Path(run_dir) / schema.DONE_FILE).write_text(json.dumps({"config_args": []}))
    return {"status": "done", "wall_time_s": 0.0, "error": ""}

  monkeypatch.setattr(runner, "run_one", fake_run_one)
  rows = runner.run_sweep(loaded, tmp_path / "out", only=["6-55-11", "dense"])
  assert trained == ["dense_seed0", "6-55-11_seed0", "dense_seed1", "6-55-11_seed1"]
  assert [(r["name"], r["status"]) for r in rows if r["seed"] == 0] == [
      ("dense", "done"), ("6-55-11", "done"), ("6-45-11", "pending")]
  with pytest.raises(ValueError, match=r"--only: no run named \['6-50-11'\]"):
    runner.run_sweep(loaded, tmp_path / "out", only=["6-50-11"])


def test_a_second_sweep_on_a_held_sweep_dir_runs_nothing(tmp_path, monkeypatch):
  loaded = spec.load_sweep(write_sweep(tmp_path / "one.py", repr([{"name": "dense"}])))
  monkeypatch.setattr(runner, "run_one", lambda *args, **kwargs: pytest.fail("a run started"))
  with workdir_lock.DirectoryLock(tmp_path / "out", name="sweep"):
    with pytest.raises(workdir_lock.WorkdirInUse, match=f"in use by process {os.getpid()} "):
      runner.run_sweep(loaded, tmp_path / "out")
  assert (tmp_path / "out" / "sweep.lock").read_text() == ""
  assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["sweep.lock"]
