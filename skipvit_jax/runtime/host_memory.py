"""glibc malloc settings for training on the CPU: keep each step's freed memory for the next.

XLA:CPU allocates a training step's temporaries as one block and frees it when the step ends
(far above glibc's mmap threshold even for configs/fashion_mnist.py's small model). glibc
serves a block that large with a fresh mmap (its mmap threshold tops out at 32 MB, and a
thread's own arena always maps one that large) and unmaps it on free, so every step faults
each of its pages back in, zeroed, and the kernel's page faults, unmaps and TLB flushes take a
large share of the CPU.
One arena that never maps and never trims serves the next step's block from the memory the
last one freed. The measurements: BENCHMARKS.md, "CPU: the trainer with glibc's malloc and
with host_memory's".

The settings are process-wide and must come before any thread allocates (so before JAX starts
its backend), and they cost concurrency: one arena serialises malloc across threads. Where an
accelerator does the training, many input threads decode images on the host and the step's
temporaries live on the device, so they are applied only on CPU-only hosts.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import importlib.metadata
import importlib.util
import os

# mallopt(3) parameters, from glibc's malloc.h.
M_TRIM_THRESHOLD = -1
M_MMAP_MAX = -4
M_ARENA_MAX = -8

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


def retain_freed_memory() -> bool:
  """On a CPU-only Linux host with glibc and no malloc settings of the user's: one arena, no
  mmap, no trimming. Returns whether the settings were applied. Call it first thing in a
  process, before JAX allocates from more than one thread."""
  if not cpu_only_host() or any(name in os.environ for name in USER_SETTINGS):
    return False
  path = ctypes.util.find_library("c")
  if path is None:
    return False
  libc = ctypes.CDLL(path)
  if not hasattr(libc, "mallopt") or not hasattr(libc, "gnu_get_libc_version"):
    return False  # not glibc (musl, macOS): these parameters mean nothing there
  return all(libc.mallopt(param, value) == 1 for param, value in (
      (M_ARENA_MAX, 1), (M_MMAP_MAX, 0), (M_TRIM_THRESHOLD, 2**31 - 1)))
