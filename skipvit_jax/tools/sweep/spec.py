"""Sweep files: their format, their runs expanded over seeds, and each run's trainer flags and
command line. Pure: nothing here trains (runner.py does).

A sweep file (configs/sweeps/*.py) is a Python module:

  BASE = "configs/default.py:baseline"  # config file (in the `configs` package's root), ":arg"
  RUNS = [                               # or a function runs() returning the list
      {"name": "dense"},
      {"name": "6-55-11", "overrides": {"routing.drop_layers": (6,), "routing.drop_ratios": (0.55,),
                                        "routing.return_layer": 11, "drop_warmup_epochs": 1.0}},
      {"name": "toe", "base": "configs/default.py:toe,baseline"},  # a run's own base config
      {"name": "6-45-fused", "overrides": {...}, "seeds": (0, 1)},  # this run's own seeds
  ]
  DENSE = "dense"  # optional (default: the run named "dense"): the throughput reference
  SEEDS = (0,)     # optional (default (0,)); --seeds 0,1,2 replaces it and every run's seeds

Override keys are dotted config fields (configs/common.py lists them all); values are Python
values (tuples for tuple fields). Run names are file-name safe and unique.

A run trains as

  python -m skipvit_jax --config BASE --workdir SWEEP_DIR/<name>_seed<k> --config.seed=<k> \
      --config.<field>=<value> ...

with the run's overrides, then the sweep-wide ones (they win), in the directory that holds the
installed `configs` package (the repository root, in a checkout).
"""

from __future__ import annotations

import dataclasses
import importlib.util
import os
import re
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import ml_collections
from absl import flags
from ml_collections import config_flags

import configs

# Base configs are named relative to the directory holding the `configs` package: the
# repository root in a checkout, site-packages in an installed wheel. Runs start there.
CONFIG_ROOT = Path(configs.__file__).resolve().parents[1]
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._+-]*")
_RUN_KEYS = {"name", "overrides", "base", "seeds"}


@dataclasses.dataclass
class SweepRun:
  """One training run of a sweep: a named set of overrides at one seed."""
  name: str
  seed: int
  base: str  # config file with an optional ":arg", relative to CONFIG_ROOT
  overrides: dict[str, Any]  # dotted config field -> Python value

  @property
  def dir_name(self) -> str:
    # Always suffixed, so adding seeds later keeps the existing run dirs.
    return f"{self.name}_seed{self.seed}"


@dataclasses.dataclass
class Sweep:
  """A loaded sweep file, expanded over its seeds."""
  path: str
  runs: list[SweepRun]  # every (seed, run), seed-major: one seed's table completes first
  dense: str | None  # name of the throughput reference run


def load_sweep(path: str | os.PathLike, seeds: Sequence[int] | None = None) -> Sweep:
  """Reads a sweep file (format: this module's docstring); `seeds` replaces its SEEDS."""
  module_spec = importlib.util.spec_from_file_location(f"sweep_{Path(path).stem}", path)
  module = importlib.util.module_from_spec(module_spec)
  module_spec.loader.exec_module(module)
  entries = module.runs() if hasattr(module, "runs") else module.RUNS
  base = getattr(module, "BASE", None)
  names = [entry.get("name") for entry in entries]
  for entry in entries:
    unknown = set(entry) - _RUN_KEYS
    if unknown:
      raise ValueError(f"{path}: run {entry.get('name')!r} has unknown keys {sorted(unknown)}")
    if not isinstance(entry.get("name"), str) or not _NAME.fullmatch(entry["name"]):
      raise ValueError(f"{path}: run name {entry.get('name')!r} is not a file-name-safe string")
    if "seed" in entry.get("overrides", {}):
      raise ValueError(f"{path}: run {entry['name']!r} overrides seed; use SEEDS or --seeds")
    if entry.get("base", base) is None:
      raise ValueError(f"{path}: run {entry['name']!r} has no base config and there is no BASE")
  if len(set(names)) != len(names):
    raise ValueError(f"{path}: run names repeat: {names}")
  dense = getattr(module, "DENSE", "dense" if "dense" in names else None)
  if dense is not None and dense not in names:
    raise ValueError(f"{path}: DENSE = {dense!r} is not a run name")
  default_seeds = tuple(getattr(module, "SEEDS", (0,)))
  # Extra seeds only where differences are small: a run's "seeds" replaces SEEDS for it.
  run_seeds = [tuple(entry.get("seeds", default_seeds)) if seeds is None else tuple(seeds)
               for entry in entries]
  runs = [SweepRun(name=entry["name"], seed=int(seed), base=entry.get("base", base),
                   overrides=dict(entry.get("overrides", {})))
          for seed in sorted(set().union(*run_seeds))
          for entry, own in zip(entries, run_seeds) if seed in own]
  return Sweep(path=str(path), runs=runs, dense=dense)


def overrides_text(overrides: Mapping[str, Any]) -> str:
  """{"routing.drop_layers": (6,)} -> "routing.drop_layers=(6,)": overrides as tables show
  them."""
  return " ".join(f"{k}={format_value(tuple(v) if isinstance(v, list) else v)}"
                  for k, v in overrides.items())


def format_value(value: Any) -> str:
  """A Python value as ml_collections' config flags parse it: `(6,)`, `true`, `0.55`."""
  if isinstance(value, bool):
    return "true" if value else "false"
  if isinstance(value, (tuple, list)):
    return repr(tuple(value))
  return str(value)


def config_args(run: SweepRun, overrides: Mapping[str, Any] | None = None) -> list[str]:
  """The trainer's config flags for `run`: --config=BASE, the seed, its overrides, then
  `overrides`.

  BASE stays relative to CONFIG_ROOT, where the trainer runs, so that a finished run's recorded
  flags (done.json) match in any checkout or installation. One flag per field: config flags
  concatenate repeated tuple flags instead of replacing."""
  if "seed" in (overrides or {}):
    raise ValueError("override seed: use the sweep's SEEDS or --seeds")
  merged = {"seed": run.seed, **run.overrides, **(overrides or {})}
  return [f"--config={run.base}",
          *(f"--config.{field}={format_value(value)}" for field, value in merged.items())]


def build_config(args: Sequence[str]) -> ml_collections.ConfigDict:
  """The config the trainer builds from these flags, parsed the same way (ml_collections
  config flags), without training: an unknown field or a badly typed value raises here."""
  # The config file is relative to CONFIG_ROOT, which need not be this process's cwd.
  argv = ["skipvit_jax", *(f"--config={CONFIG_ROOT / arg.partition('=')[2]}"
                           if arg.startswith("--config=") else arg for arg in args)]
  flag_values = flags.FlagValues()
  config_flags.DEFINE_config_file("config", None, "Training configuration file.",
                                  flag_values=flag_values, lock_config=True, sys_argv=argv)
  flag_values(argv)
  return flag_values.config


def command(run: SweepRun, workdir: str | os.PathLike,
            overrides: Mapping[str, Any] | None = None) -> list[str]:
  """The subprocess that trains `run` in `workdir`."""
  return [sys.executable, "-m", "skipvit_jax", *config_args(run, overrides),
          f"--workdir={workdir}"]
