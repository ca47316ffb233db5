"""Trains a ViT (dense, SkipViT or ToE) from a config file: `python -m skipvit_jax`, or the
repository's main.py.

  python -m skipvit_jax --config configs/default.py --workdir /tmp/skipvit
  python -m skipvit_jax --config configs/default.py:baseline --workdir /tmp/dense
  python -m skipvit_jax --config configs/default.py --config.routing.drop_ratios='(0.5,)' \
      --workdir ...

Rerunning with the same --workdir resumes from its latest checkpoint. Exit status: 0 when the
run finished (or stopped at config.stop_after_step), 143 when SIGTERM stopped it after writing a
checkpoint (skipvit_jax/train/stopping.py), 1 on an error.
"""

import sys

from absl import app, flags, logging
from ml_collections import config_flags

from skipvit_jax.runtime import host_memory
from skipvit_jax.train import loop, stopping

_CONFIG = config_flags.DEFINE_config_file("config", None, "Training configuration file.",
                                          lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Directory for checkpoints and metrics.")
flags.mark_flags_as_required(["config", "workdir"])


def main(argv) -> None:
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  if host_memory.retain_freed_memory():  # before JAX starts its threads
    logging.info("CPU-only host: glibc malloc set to one arena, no mmap, no trimming "
                 "(skipvit_jax/runtime/host_memory.py)")
  result = loop.train_and_evaluate(_CONFIG.value, _WORKDIR.value)
  if result.preempted:  # SIGTERM: checkpointed; the same command resumes
    sys.exit(stopping.EXIT_PREEMPTED)


if __name__ == "__main__":
  app.run(main)
