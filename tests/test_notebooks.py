"""The notebooks run headless from top to bottom (nbclient, a kernel on this interpreter), with
tiny values injected into their parameter cell."""

import dataclasses
import os
import re
import sys
from pathlib import Path

import jax
import nbclient
import nbformat
import pytest

from skipvit_jax.tools.sweep import results, schema

REPO = Path(__file__).resolve().parents[1]
NOTEBOOKS = REPO / "notebooks"


def _set_parameters(notebook, values: dict) -> None:
  """Rewrites `NAME = ...` lines of the cell tagged "parameters" (as papermill injects them)."""
  cell = next(c for c in notebook.cells if "parameters" in c.metadata.get("tags", []))
  for name, value in values.items():
    cell.source, count = re.subn(rf"^{name} = .*$", f"{name} = {value!r}", cell.source,
                                 flags=re.MULTILINE)
    assert count == 1, f"{name} is not a parameter"


def _kernel_env() -> dict:
  # One CPU device (conftest's two fake ones are for the pmap tests), fast compiles, the test
  # session's compilation cache, and ipykernel's inline plots (which record PNG outputs).
  xla_flags = re.sub(r"--xla_force_host_platform_device_count=\d+", "",
                     os.environ.get("XLA_FLAGS", "")).strip()
  env = {k: v for k, v in os.environ.items() if k != "MPLBACKEND"}
  return dict(env, XLA_FLAGS=xla_flags, JAX_DISABLE_MOST_OPTIMIZATIONS="1",
              JAX_COMPILATION_CACHE_DIR=jax.config.jax_compilation_cache_dir,
              JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0.5")


def _execute(name: str, tmp_path: Path, checks: str = "", **parameters):
  """Runs notebooks/<name> in notebooks/ with `parameters`, temporary files in `tmp_path`,
  then the code `checks` in the notebook's namespace; returns the executed notebook."""
  notebook = nbformat.read(NOTEBOOKS / name, as_version=4)
  _set_parameters(notebook, parameters)
  notebook.cells.append(nbformat.v4.new_code_cell(checks))
  notebook.cells.append(nbformat.v4.new_code_cell("import sys; print(sys.executable)"))
  client = nbclient.NotebookClient(notebook, kernel_name="python3", timeout=300,
                                   resources={"metadata": {"path": str(NOTEBOOKS)}})
  client.execute(env=dict(_kernel_env(), TMPDIR=str(tmp_path)))
  # The kernel ran on this interpreter (the venv the package is installed in).
  assert notebook.cells[-1].outputs[0]["text"].strip() == sys.executable
  return notebook


def _images(notebook) -> int:
  return sum("image/png" in out.get("data", {}) for cell in notebook.cells
             for out in cell.get("outputs", []))


@pytest.mark.parametrize("name,images", [("attention_maps.ipynb", 4), ("sweep_results.ipynb", 2)])
def test_committed_notebooks_are_executed_top_to_bottom(name, images):
  # Committed with outputs, so the pictures show on the repository page: every code cell ran
  # once, in order, in one kernel, and no cell raised.
  notebook = nbformat.read(NOTEBOOKS / name, as_version=4)
  nbformat.validate(notebook)
  code = [cell for cell in notebook.cells if cell.cell_type == "code"]
  assert [cell.execution_count for cell in code] == list(range(1, len(code) + 1))
  assert not [out for cell in code for out in cell.outputs if out.output_type == "error"]
  assert _images(notebook) == images


# Run in the attention notebook after its cells: the checkpoint it loaded is the trained state,
# and the ToE decisions it plotted are those the ToE model itself makes.
ATTENTION_CHECKS = """
import jax
import numpy as np
assert run.step == result.step == 4
for loaded, trained in zip(jax.tree.leaves(run.params), jax.tree.leaves(result.params)):
  np.testing.assert_array_equal(loaded, trained)
np.testing.assert_array_equal(decisions["out_index"], toe_aux["toe"]["out_index"])
assert maps.shape == (12, NUM_IMAGES, 64) and images.shape == (NUM_IMAGES, 48, 48, 3)
assert 0 <= images.min() and images.max() <= 1
"""


@pytest.mark.slow
def test_attention_maps_notebook_trains_a_demo_and_plots(tmp_path):
  notebook = _execute("attention_maps.ipynb", tmp_path, ATTENTION_CHECKS, NUM_IMAGES=2,
                      DEMO_TRAIN_EXAMPLES=256, DEMO_TEST_EXAMPLES=16, DEMO_EPOCHS=2.0,
                      DEMO_DATA_DIR=str(tmp_path / "data"))
  # Attention maps, kept patches, ToE, attention maps with ToE.
  assert _images(notebook) == 4


@pytest.mark.slow
def test_sweep_results_notebook_plots_a_sweep(tmp_path):
  def row(name, top1, speedup, overrides=None, status="done"):
    return {"name": name, "seed": 0, "base": "configs/default.py:baseline",
            "overrides": overrides or {}, "status": status, "top1": top1, "top1_all_tokens": top1,
            "speedup_measured": speedup, "speedup_ideal": speedup, "wall_time_s": 60.0}

  rows = [row("dense", 0.31, 1.0), row("broken", None, None, status="failed")]
  for layer, ratio, back in [(3, 0.3, 9), (3, 0.55, 11), (6, 0.3, 9), (6, 0.55, 11)]:
    overrides = {"routing.drop_layers": [layer], "routing.drop_ratios": [ratio],
                 "routing.return_layer": back, "drop_warmup_epochs": 1.0}
    rows.append(row(f"{layer}-{int(ratio * 100)}-{back}", 0.3 - ratio / 10 + layer / 100,
                    1 + ratio * (12 - layer) / 10, overrides))
  schema.write_json(tmp_path / schema.RESULTS_JSON, dataclasses.asdict(results.SweepResults(
      sweep="grid.py", dense="dense", overrides={}, runs=rows, mean_std_over_seeds=[])))
  notebook = _execute("sweep_results.ipynb", tmp_path, SWEEP_DIR=str(tmp_path))
  assert _images(notebook) == 2  # the Pareto plot and the per-parameter effects


@pytest.mark.slow
def test_sweep_results_notebook_shows_the_committed_reproduction_by_default(tmp_path):
  notebook = _execute("sweep_results.ipynb", tmp_path)
  text = "".join(out.get("text", "") for cell in notebook.cells for out in cell.get("outputs", []))
  assert "committed reproduction on the synthetic data" in text and "6-55-11_random" in text
  assert _images(notebook) == 2
