"""Trains a ViT (dense, SkipViT or ToE) from a config file: `python -m skipvit_jax`, or the
repository's main.py.

  python -m skipvit_jax --config configs/default.py --workdir /tmp/skipvit
  python -m skipvit_jax --config configs/default.py:baseline --workdir /tmp/dense
  python -m skipvit_jax --config configs/default.py --config.routing.drop_ratios='(0.5,)' \
      --workdir ...

Rerunning with the same --workdir resumes from its latest checkpoint. Exit status: 0 when the
run finished (or stopped at config.stop_after_step), 143 when SIGTERM stopped it after writing a
checkpoint (skipvit_jax/train/stopping.py), 1 on an error.

A mistake in the command line or the config (a config file that does not exist, an override of
a field the config does not have, a value that does not parse, a workdir that cannot be created,
a value validation rejects), or a workdir another run holds (skipvit_jax/runtime/workdir_lock.py),
ends the process before any data is generated or anything compiles, with one line on stderr:
`error: ` and what to change. A checkpoint that cannot be written (a full disk, a read-only
directory) ends it the same way, naming the step, the reason and the intact checkpoint a rerun
resumes from. Anything else that fails shows its traceback.
"""

from __future__ import annotations

import difflib
import os
import sys
from typing import Iterator, NoReturn

from absl import app, flags, logging
from ml_collections import config_flags

from skipvit_jax.runtime import host_memory, workdir_lock
from skipvit_jax.train import checkpointing, loop, stopping, validation

_CONFIG = config_flags.DEFINE_config_file("config", None, "Training configuration file.",
                                          lock_config=True)
_PREFIX = "config."  # of an override: --config.model.stem=conv, --noconfig.model.remat
_WORKDIR = flags.DEFINE_string("workdir", None, "Directory for checkpoints and metrics.")
flags.mark_flags_as_required(["config", "workdir"])


def _fail(message: str) -> NoReturn:
  sys.exit(f"error: {message}")


def _config_argument(argv: list[str]) -> str | None:
  """The value of the last --config flag in `argv` ("file.py" or "file.py:arg"), if any."""
  value = None
  for i, arg in enumerate(argv[1:], 1):
    name, equals, rest = arg.partition("=")
    if name in ("-config", "--config"):
      value = rest if equals else (argv[i + 1] if i + 1 < len(argv) else None)
  return value


def _field_names(config, prefix: str = "") -> Iterator[str]:
  """Dotted names of every field of `config`, groups ("model") and leaves ("model.stem")."""
  for key, value in config.items():
    yield prefix + key
    if hasattr(value, "items"):
      yield from _field_names(value, f"{prefix}{key}.")


def _unknown_override(argv: list[str], config_argument: str) -> str | None:
  """The message for the first --config.<field> override whose field the config does not
  have, with the nearest field names; None when every override names a field."""
  config = flags.FLAGS["config"].parser.parse(config_argument)  # as --config loads it
  known = list(_field_names(config))
  for arg in argv[1:]:
    flag = arg.partition("=")[0]
    name = flag.lstrip("-")
    name = name.removeprefix("no")
    if not name.startswith(_PREFIX):
      continue
    field = name.removeprefix(_PREFIX)
    if field not in known:
      nearest = difflib.get_close_matches(field, known, n=3, cutoff=0.0)
      return f"{flag}: the config has no field {field!r}; the nearest are {', '.join(nearest)}"
  return None


def _flag_error_line(error: flags.Error, config_argument: str | None) -> str:
  """absl's message for a command line it could not parse, as one line."""
  lines = [line.strip() for line in str(error).splitlines() if line.strip()]
  if "Error whilst parsing config file:" in lines[0]:
    # get_config(arg) raised, its traceback in the message: a ValueError rejects the argument
    # (configs/common.py's parse_arg); anything else is a bug in the config file.
    kind, _, message = lines[-1].partition(": ")
    if kind != "ValueError":
      raise error
    return f"--config={config_argument}: {message}"
  return "; ".join(lines)


def parse_flags(argv: list[str]) -> list[str]:
  """absl's flag parsing, where a mistake in the command line ends the process with one line
  (see the module docstring); returns the program name, the only argument left."""
  config_argument = _config_argument(argv)
  if config_argument is not None:
    path = config_argument.partition(":")[0]
    if not os.path.isfile(path):
      _fail(f"--config={config_argument}: no config file {path!r}")
  try:
    rest = flags.FLAGS(argv)
  except flags.Error as e:
    _fail(_flag_error_line(e, config_argument))
  except (AttributeError, KeyError, IndexError, TypeError):
    # ml_collections meets an override of a field the config lacks deep in its own parser.
    unknown = _unknown_override(argv, config_argument) if config_argument else None
    if unknown is None:
      raise
    _fail(unknown)
  if len(rest) > 1:
    _fail(f"unexpected arguments: {' '.join(rest[1:])}")
  return rest


def main(argv: list[str]) -> None:
  del argv  # parse_flags left only the program name
  workdir = _WORKDIR.value
  try:
    os.makedirs(workdir, exist_ok=True)
  except OSError as e:
    _fail(f"cannot create workdir {workdir}: {e.strerror or e}")
  malloc = host_memory.tune_malloc()  # before JAX starts its threads
  if malloc == "retain":
    logging.info("CPU-only host: glibc malloc set to one arena, no mmap, no trimming "
                 "(skipvit_jax/runtime/host_memory.py)")
  elif malloc == "loader":
    logging.info("glibc malloc set to keep blocks under 32 MiB in the arenas, untrimmed, for "
                 "the loader threads (skipvit_jax/runtime/host_memory.py)")
  try:
    result = loop.train_and_evaluate(_CONFIG.value, workdir)
  except (validation.ConfigError, workdir_lock.WorkdirInUse,
          checkpointing.CheckpointWriteError) as e:
    _fail(str(e))
  if result.preempted:  # SIGTERM: checkpointed; the same command resumes
    sys.exit(stopping.EXIT_PREEMPTED)


def run() -> None:
  """The command line: flags, then `main`."""
  app.run(main, flags_parser=parse_flags)


if __name__ == "__main__":
  run()
