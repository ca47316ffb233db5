"""main.py's command line: each mistake in it, or in the config, is one line on stderr and a
non-zero exit, before any data is generated or anything compiles; a crash keeps its traceback."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
TIMEOUT_S = 120  # each run stops while parsing or validating: seconds, not a training run


def run_main(*args: str, data_dir: Path) -> subprocess.CompletedProcess:
  """main.py with `args` (after --config and --workdir, which args may repeat to override),
  its data directory `data_dir` (which must stay absent: no data generated)."""
  env = dict(os.environ, JAX_PLATFORMS="cpu")
  command = [sys.executable, "main.py", "--config=configs/default.py",
             f"--config.data.data_dir={data_dir}", *args]
  return subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True,
                        timeout=TIMEOUT_S)


def error_line(result: subprocess.CompletedProcess, data_dir: Path) -> str:
  """The one error line of a run that failed early; asserts there is no traceback."""
  assert result.returncode == 1, result.stderr[-3000:]
  assert "Traceback" not in result.stderr, result.stderr[-3000:]
  lines = result.stderr.strip().splitlines()
  assert lines[-1].startswith("error: "), result.stderr[-3000:]
  assert not [line for line in lines if line.startswith("error")][:-1]
  assert not data_dir.exists()  # failed before any data was generated
  return lines[-1]


@pytest.mark.slow
def test_an_unknown_config_field_is_named_with_the_nearest_fields(tmp_path):
  result = run_main("--config.model.no_such_field=3", f"--workdir={tmp_path / 'run'}",
                    data_dir=tmp_path / "tfds")
  assert error_line(result, tmp_path / "tfds") == (
      "error: --config.model.no_such_field: the config has no field 'model.no_such_field'; "
      "the nearest are model.stem, model.gelu, model.stochastic_depth")
  result = run_main("--config.routing.drop_ratio=(0.5,)", f"--workdir={tmp_path / 'run'}",
                    data_dir=tmp_path / "tfds")
  assert "the nearest are routing.drop_ratios," in error_line(result, tmp_path / "tfds")


def test_a_value_of_the_wrong_type_is_one_line(tmp_path):
  result = run_main("--config.batch_size=abc", f"--workdir={tmp_path / 'run'}",
                    data_dir=tmp_path / "tfds")
  assert error_line(result, tmp_path / "tfds") == (
      "error: flag --config.batch_size=abc: invalid literal for int() with base 10: 'abc'")


@pytest.mark.slow
def test_a_missing_config_file_and_a_bad_config_argument_are_one_line(tmp_path):
  result = run_main("--config=configs/no_such_config.py", f"--workdir={tmp_path / 'run'}",
                    data_dir=tmp_path / "tfds")
  assert error_line(result, tmp_path / "tfds") == (
      "error: --config=configs/no_such_config.py: no config file 'configs/no_such_config.py'")
  result = run_main("--config=configs/default.py:nope", f"--workdir={tmp_path / 'run'}",
                    data_dir=tmp_path / "tfds")
  assert error_line(result, tmp_path / "tfds") == (
      "error: --config=configs/default.py:nope: config argument 'nope': allowed keys are "
      "['baseline', 'toe']")


@pytest.mark.slow
def test_a_workdir_that_cannot_be_created_is_one_line(tmp_path):
  not_a_directory = tmp_path / "a_file"
  not_a_directory.write_text("")
  result = run_main(f"--workdir={not_a_directory / 'run'}", data_dir=tmp_path / "tfds")
  assert error_line(result, tmp_path / "tfds") == (
      f"error: cannot create workdir {not_a_directory / 'run'}: Not a directory")


@pytest.mark.slow
def test_missing_flags_and_extra_arguments_are_one_line(tmp_path):
  result = run_main(data_dir=tmp_path / "tfds")
  assert error_line(result, tmp_path / "tfds") == (
      "error: flag --workdir=None: Flag --workdir must have a value other than None.")
  result = run_main(f"--workdir={tmp_path / 'run'}", "extra", data_dir=tmp_path / "tfds")
  assert error_line(result, tmp_path / "tfds") == "error: unexpected arguments: extra"


@pytest.mark.parametrize("override,message", [
    ("--config.optimizer.lr=-1.0", "error: config.optimizer.lr: must be a number > 0, got -1.0"),
    ("--config.routing.return_layer=5",  # before the drop layer 6
     "error: RoutingConfig.return_layer: must be in 7..12 (after the last drop layer 6), got 5 "
     "(config.routing)"),
])
@pytest.mark.slow
def test_a_config_that_validation_rejects_is_one_line_naming_the_field(tmp_path, override,
                                                                       message):
  result = run_main(override, f"--workdir={tmp_path / 'run'}", data_dir=tmp_path / "tfds")
  assert error_line(result, tmp_path / "tfds") == message


@pytest.mark.slow
def test_a_crash_in_a_config_file_keeps_its_traceback(tmp_path):
  broken = tmp_path / "broken.py"
  broken.write_text("def get_config(arg=None):\n  return None + 1\n")
  result = run_main(f"--config={broken}", f"--workdir={tmp_path / 'run'}",
                    data_dir=tmp_path / "tfds")
  assert result.returncode == 1
  assert "Traceback" in result.stderr and "TypeError: unsupported operand" in result.stderr
