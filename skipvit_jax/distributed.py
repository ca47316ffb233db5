"""Joining a multi-process (multi-host) run through JAX's own distributed runtime."""

from __future__ import annotations

import os

import jax
from absl import logging


def maybe_initialize() -> None:
  """Calls `jax.distributed.initialize` when the environment describes a multi-process run.

  Explicit: JAX_COORDINATOR_ADDRESS (host:port), JAX_NUM_PROCESSES, JAX_PROCESS_ID. Otherwise
  a SLURM or Open MPI job with more than one task, which JAX detects by itself.
  """
  if jax.distributed.is_initialized():
    return
  env = os.environ
  if "JAX_COORDINATOR_ADDRESS" in env:
    jax.distributed.initialize(
        coordinator_address=env["JAX_COORDINATOR_ADDRESS"],
        num_processes=int(env["JAX_NUM_PROCESSES"]),
        process_id=int(env["JAX_PROCESS_ID"]),
    )
  elif int(env.get("SLURM_NTASKS", "1")) > 1 or int(env.get("OMPI_COMM_WORLD_SIZE", "1")) > 1:
    jax.distributed.initialize()
  else:
    return
  logging.info("joined a %d-process run as process %d", jax.process_count(), jax.process_index())
