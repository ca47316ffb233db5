"""glibc malloc settings: keep freed memory for its next use instead of faulting it back in.

CPU-only hosts (`retain_freed_memory`). XLA:CPU allocates a training step's temporaries as one
block and frees it when the step ends (far above glibc's mmap threshold even for
configs/fashion_mnist.py's small model). glibc serves a block that large with a fresh mmap
(its mmap threshold tops out at 32 MB, and a thread's own arena always maps one that large)
and unmaps it on free, so every step faults each of its pages back in, zeroed, and the
kernel's page faults, unmaps and TLB flushes take a large share of the CPU. One arena that
never maps and never trims serves the next step's block from the memory the last one freed.
The measurements: BENCHMARKS.md, "CPU: the trainer with glibc's malloc and with host_memory's".
That costs concurrency (one arena serialises malloc across threads), which a CPU-only host's
few loader threads can spare.

Every other host (`keep_loader_memory`). The step's temporaries live on the device; the host
runs many loader threads, each decoding and cropping one image at a time. glibc's defaults
trim a thread's arena whenever the free memory at its top exceeds twice the mmap threshold
(which rises to the largest mapped block freed so far: about an image), so once an image's
blocks are freed they go back to the kernel and the next image faults them in again. A
fixed mmap threshold of 32 MiB (glibc's largest) and a trim threshold of 64 MiB (a thread
arena's whole heap) keep them in each thread's own arena, without serialising the threads as
one arena would. Only blocks over 32 MiB (a large batch) are still mapped afresh each time.
The measurements: BENCHMARKS.md, "CPU: input pipeline".

The settings are process-wide and must come before any thread allocates (so before JAX starts
its backend); `tune_malloc` picks the host's.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import importlib.metadata
import importlib.util
import os

# mallopt(3) parameters, from glibc's malloc.h.
M_TRIM_THRESHOLD = -1
M_MMAP_THRESHOLD = -3
M_MMAP_MAX = -4
M_ARENA_MAX = -8

# (parameter, value) pairs. RETAIN: one arena, no mmap, no trimming.
RETAIN = ((M_ARENA_MAX, 1), (M_MMAP_MAX, 0), (M_TRIM_THRESHOLD, 2**31 - 1))
# LOADER: blocks under 32 MiB from the thread's arena, which keeps up to 64 MiB free.
LOADER = ((M_MMAP_THRESHOLD, 32 * 2**20), (M_TRIM_THRESHOLD, 64 * 2**20))

# Set by a user who tunes malloc themselves; their choice wins.
USER_SETTINGS = ("GLIBC_TUNABLES", "MALLOC_ARENA_MAX", "MALLOC_MMAP_MAX_",
                 "MALLOC_TRIM_THRESHOLD_", "MALLOC_MMAP_THRESHOLD_", "LD_PRELOAD")


def cpu_only_host() -> bool:
  """True when JAX can only run on the CPU here: JAX_PLATFORMS says so, or no accelerator
  plugin (CUDA, ROCm, TPU, or any other PJRT plugin JAX would discover) is installed."""
  platforms = os.environ.get("JAX_PLATFORMS", "").strip()
  if platforms:
    return platforms == "cpu"
  if importlib.metadata.entry_points(group="jax_plugins"):
    return False
  return not any(importlib.util.find_spec(name) for name in ("jax_plugins", "libtpu"))


def apply(settings: tuple[tuple[int, int], ...]) -> bool:
  """mallopt each (parameter, value) on a Linux host with glibc, unconditionally; returns
  whether every one was applied."""
  path = ctypes.util.find_library("c")
  if path is None:
    return False
  libc = ctypes.CDLL(path)
  if not hasattr(libc, "mallopt") or not hasattr(libc, "gnu_get_libc_version"):
    return False  # not glibc (musl, macOS): these parameters mean nothing there
  return all(libc.mallopt(param, value) == 1 for param, value in settings)


def _users_settings() -> bool:
  return any(name in os.environ for name in USER_SETTINGS)


def retain_freed_memory() -> bool:
  """On a CPU-only Linux host with glibc and no malloc settings of the user's: RETAIN.
  Returns whether the settings were applied. Call it first thing in a process, before JAX
  allocates from more than one thread."""
  if not cpu_only_host() or _users_settings():
    return False
  return apply(RETAIN)


def keep_loader_memory() -> bool:
  """On any Linux host with glibc and no malloc settings of the user's: LOADER. Returns
  whether the settings were applied. Call it first thing in a process."""
  return not _users_settings() and apply(LOADER)


def tune_malloc() -> str | None:
  """The host's settings, applied first thing in a process (before JAX starts its threads):
  "retain" on a CPU-only host, "loader" on any other, None where glibc is absent or the user
  set malloc themselves."""
  if retain_freed_memory():
    return "retain"
  if not cpu_only_host() and keep_loader_memory():
    return "loader"
  return None
