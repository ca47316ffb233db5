"""Joining a multi-process (multi-host) run through JAX's own distributed runtime.

Where the coordinates come from, first match wins:
  1. flags: --coordinator_address=host:port --num_processes=N --process_id=i
  2. environment: JAX_COORDINATOR_ADDRESS, JAX_NUM_PROCESSES, JAX_PROCESS_ID
  3. a cluster JAX detects by itself: SLURM (srun, more than one task), Open MPI (mpirun),
     Cloud TPU pods (TPU_WORKER_HOSTNAMES with more than one host).
With none of them, the run is single-process and nothing is initialised. See docs/multihost.md.
"""

from __future__ import annotations

import os

import jax
from absl import flags, logging

_COORDINATOR = flags.DEFINE_string(
    "coordinator_address", None, "host:port of process 0's coordinator (multi-process runs).")
_NUM_PROCESSES = flags.DEFINE_integer("num_processes", None, "Processes in a multi-process run.")
_PROCESS_ID = flags.DEFINE_integer("process_id", None, "This process's index, 0..num_processes-1.")


def _explicit_coordinates() -> tuple[str, int, int] | None:
  if flags.FLAGS.is_parsed() and _COORDINATOR.value:
    if _NUM_PROCESSES.value is None or _PROCESS_ID.value is None:
      raise ValueError("--coordinator_address needs --num_processes and --process_id too")
    return _COORDINATOR.value, _NUM_PROCESSES.value, _PROCESS_ID.value
  env = os.environ
  if env.get("JAX_COORDINATOR_ADDRESS"):
    missing = [k for k in ("JAX_NUM_PROCESSES", "JAX_PROCESS_ID") if k not in env]
    if missing:
      raise ValueError(f"JAX_COORDINATOR_ADDRESS is set but {', '.join(missing)} is not")
    return env["JAX_COORDINATOR_ADDRESS"], int(env["JAX_NUM_PROCESSES"]), int(env["JAX_PROCESS_ID"])
  return None


def _cluster_detected() -> bool:
  env = os.environ
  return (int(env.get("SLURM_NTASKS", "1")) > 1
          or int(env.get("OMPI_COMM_WORLD_SIZE", "1")) > 1
          or len(env.get("TPU_WORKER_HOSTNAMES", "").split(",")) > 1)


def use_cpu_devices(count: int) -> None:
  """Lets the CPU backend present `count` devices (config.num_cpu_devices; 0 = JAX's default,
  one), over which the trainer's pmap splits each batch: on a host without accelerators the
  devices run in parallel threads, which keeps several cores busy with a model too small to
  fill them in one program. Must run before anything touches a JAX backend; afterwards, as in
  a notebook or a test that already used JAX, the devices stay as they are and a warning says
  so."""
  if count < 0:
    raise ValueError(f"config.num_cpu_devices: must be >= 0 (0: JAX's default), got {count}")
  if count == 0:
    return
  try:
    jax.config.update("jax_num_cpu_devices", count)
  except RuntimeError:  # the backends already started
    if jax.default_backend() == "cpu" and jax.local_device_count() != count:
      logging.warning("config.num_cpu_devices=%d not applied: JAX already started with %d "
                      "CPU devices", count, jax.local_device_count())


def maybe_initialize() -> None:
  """Calls `jax.distributed.initialize` when flags or the environment describe a multi-process
  run; must run before anything touches a JAX backend."""
  if jax.distributed.is_initialized():
    return
  coordinates = _explicit_coordinates()
  if coordinates is None and not _cluster_detected():
    return
  if jax.config.jax_platforms in ("cpu",) or os.environ.get("JAX_PLATFORMS") == "cpu":
    # CPU processes exchange gradients through gloo (tests, local multi-process runs).
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
  if coordinates is None:
    jax.distributed.initialize()
  else:
    address, num_processes, process_id = coordinates
    jax.distributed.initialize(coordinator_address=address, num_processes=num_processes,
                               process_id=process_id)
  logging.info("joined a %d-process run as process %d (%d local devices, %d in all)",
               jax.process_count(), jax.process_index(), jax.local_device_count(),
               jax.device_count())
