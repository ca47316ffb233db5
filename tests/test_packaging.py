"""Packaging: `import kernels` loads this repository's kernels/, not the unrelated `kernels`
distribution on PyPI that shares the top-level name; and the project works installed from a
wheel, configs included."""

import importlib.metadata
import json
import os
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

import kernels
from kernels import gather_attention
from skipvit_jax.tools.sweep import results, schema

REPO_ROOT = Path(__file__).resolve().parent.parent


def test_kernels_resolves_to_this_repository():
  assert Path(kernels.__file__).resolve().parent == REPO_ROOT / "kernels"
  assert Path(gather_attention.__file__).resolve() == REPO_ROOT / "kernels" / "gather_attention.py"


def test_gather_attention_exposes_the_public_api():
  for name in ("gather_attention", "gather_attention_reference", "can_lower"):
    assert callable(getattr(gather_attention, name)), name


def test_no_other_distribution_provides_kernels():
  # Empty when the project runs from a checkout without being installed.
  owners = set(importlib.metadata.packages_distributions().get("kernels", []))
  assert owners <= {"skipvit_jax"}, f"`kernels` is also installed by {owners - {'skipvit_jax'}}"


@pytest.mark.slow
def test_a_wheel_install_runs_a_sweep_outside_the_repository(tmp_path):
  # A real (non-editable) install: this checkout built into a wheel with this environment's
  # setuptools (no network), installed into a fresh venv that borrows only this environment's
  # third-party packages, then a one-run sweep started from a directory outside the checkout.
  dist = tmp_path / "dist"
  subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation",
                  "-w", str(dist), str(REPO_ROOT)], check=True, capture_output=True, timeout=600)
  [wheel] = dist.glob("skipvit_jax-*.whl")
  venv = tmp_path / "venv"
  subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
  python = venv / "bin" / "python"
  site = Path(subprocess.run([python, "-c", "import sysconfig; print(sysconfig.get_paths()"
                              "['purelib'])"], check=True, capture_output=True, text=True
                             ).stdout.strip())
  subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "--target", str(site),
                  str(wheel)], check=True, capture_output=True, timeout=600)
  # A .pth line only appends a directory: this environment's editable-install hooks, which
  # would map the packages back to the checkout, are not run.
  (site / "borrowed.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
  where = subprocess.run(
      [python, "-c", "import configs, kernels, skipvit_jax; print(skipvit_jax.__file__, "
       "configs.__file__, kernels.__file__)"],
      cwd=tmp_path, check=True, capture_output=True, text=True).stdout.split()
  assert all(Path(f).is_relative_to(site) for f in where), where

  work = tmp_path / "elsewhere"
  work.mkdir()
  (work / "one.py").write_text('BASE = "configs/default.py:baseline"\nRUNS = [{"name": "dense"}]\n')
  tiny = {"data.data_dir": str(tmp_path / "tfds"), "data.image_size": 32,
          "model.variant": "Te/8", "data.synthetic.num_train": 64,
          "data.synthetic.num_test": 16, "data.num_threads": 1, "batch_size": 16,
          "eval_batch_size": 16, "num_epochs": 1.0, "log_every_steps": 2,
          "eval_every_epochs": 1.0, "checkpoint_every_steps": 4}
  env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=1",
             JAX_DISABLE_MOST_OPTIMIZATIONS="1", PYTHONPATH="")
  result = subprocess.run(
      [python, "-m", "skipvit_jax.tools.sweep", "--sweep", "one.py", "--sweep_dir", "out",
       *(f"--override={field}={value}" for field, value in tiny.items())],
      cwd=work, env=env, capture_output=True, text=True, timeout=900)
  assert result.returncode == 0, result.stderr[-3000:]
  [row] = results.read_results(work / "out").runs
  assert row[schema.STATUS] == schema.DONE and row[schema.NUM_EXAMPLES] == 16
  run = json.loads((work / "out" / "dense_seed0" / schema.RUN_FILE).read_text())
  assert run["command"][:3] == [str(python), "-m", "skipvit_jax"]
