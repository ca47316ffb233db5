"""Whether a workdir's run can be resumed with a config: the settings it must share.

The trainer writes the run's config to WORKDIR/config.json. Rerunning in the same workdir
resumes from the latest checkpoint, which continues that run only where the new config agrees
with config.json on what the parameters, the token layouts and the data order depend on
(RESUME_FIELDS); where and how fast the data is read may change (RESUME_FREE).
"""

from __future__ import annotations

import json
import os

import ml_collections
from absl import logging

from skipvit_jax.train.plan import ADDED_FIELDS
from skipvit_jax.train.validation import ConfigError

CONFIG_FILE = "config.json"
RESUME_FIELDS = ("seed", "model", "routing", "drop_warmup_epochs", "toe", "tome",
                 "patch_dropout", "data", "batch_size", "grad_accum_steps")
RESUME_FREE = ("data.data_dir", "data.source_dir", "data.num_threads", "data.in_memory")


def resume_differences(saved: dict, config: ml_collections.ConfigDict) -> list[str]:
  """"field: saved -> now" for every RESUME_FIELDS leaf that differs between `saved` (a
  config.json) and `config`; a field that one of them predates counts as its ADDED_FIELDS
  value."""
  def leaves(tree, prefix=""):
    if isinstance(tree, dict):
      for key, value in tree.items():
        yield from leaves(value, f"{prefix}{key}.")
    else:
      yield prefix[:-1], tree

  current = json.loads(config.to_json())  # as config.json has it: tuples are lists
  now = {**ADDED_FIELDS, **dict(leaves({k: current[k] for k in RESUME_FIELDS if k in current}))}
  before = {**ADDED_FIELDS, **dict(leaves({k: saved[k] for k in RESUME_FIELDS if k in saved}))}
  return [f"{name}: {before.get(name, '(absent)')!r} -> {now.get(name, '(absent)')!r}"
          for name in sorted(set(now) | set(before))
          if name not in RESUME_FREE and now.get(name) != before.get(name)]


def read_config(workdir: str) -> dict:
  """WORKDIR/config.json, as write_config wrote it (tuples as lists); FileNotFoundError where
  the workdir has none."""
  with open(os.path.join(workdir, CONFIG_FILE), encoding="utf-8") as f:
    return json.load(f)


def check_same_run(config: ml_collections.ConfigDict, workdir: str) -> None:
  """Raises ConfigError when WORKDIR/config.json describes another run than `config` (unless
  config.allow_resume_with_changes, which logs the differences instead)."""
  try:
    saved = read_config(workdir)
  except FileNotFoundError:
    return
  changed = resume_differences(saved, config)
  if changed and not config.allow_resume_with_changes:
    raise ConfigError(
        f"config: {workdir} holds a run with other settings than this config's, so resuming "
        f"it would not continue that run: {'; '.join(changed)}. Use another --workdir, or set "
        "config.allow_resume_with_changes=True to resume anyway.")
  if changed:
    logging.warning("resuming with changed settings (allowed): %s", "; ".join(changed))


def write_config(config: ml_collections.ConfigDict, workdir: str) -> None:
  """Records `config` as WORKDIR/config.json: what the next run in the workdir is compared
  with, and what notebooks and sweeps read."""
  with open(os.path.join(workdir, CONFIG_FILE), "w", encoding="utf-8") as f:
    f.write(config.to_json(indent=1))
