"""Shared by the benchmarks: synchronised medians, measured device peaks, and the report output."""

from __future__ import annotations

import json
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp


def time_ms(fn: Callable[..., Any], args: Sequence[Any], warmup: int, runs: int) -> list[float]:
  """Wall time of `runs` calls in ms, each waited for, after a compile and `warmup` calls."""
  jax.block_until_ready(fn(*args))  # compile
  for _ in range(warmup):
    jax.block_until_ready(fn(*args))
  times = []
  for _ in range(runs):
    start = time.perf_counter()
    jax.block_until_ready(fn(*args))
    times.append(1e3 * (time.perf_counter() - start))
  return times


def peak_matmul_flops(dtype, size: int, warmup: int = 2, runs: int = 10) -> float:
  """Achievable FLOP/s of one device: a (size x size) @ (size x size) matmul in `dtype`."""
  key_a, key_b = jax.random.split(jax.random.key(0))
  a = jax.random.normal(key_a, (size, size), dtype)
  b = jax.random.normal(key_b, (size, size), dtype)
  milliseconds = statistics.median(time_ms(jax.jit(jnp.matmul), (a, b), warmup, runs))
  return 2 * size**3 / milliseconds * 1e3


def peak_bandwidth(copy_mib: int, warmup: int = 2, runs: int = 10) -> float:
  """Achievable bytes/s of one device: one read and one write of a `copy_mib` MiB array."""
  x = jnp.ones((copy_mib * 2**20 // 4,), jnp.float32)
  # x * 2 cannot be elided, unlike a copy.
  milliseconds = statistics.median(time_ms(jax.jit(lambda x: x * 2), (x,), warmup, runs))
  return 2 * x.nbytes / milliseconds * 1e3


def emit(report: dict, table: str, json_out: str = "") -> None:
  """A benchmark's output: the table on stderr, the JSON report on stdout (so stdout holds
  exactly one JSON object) and in `json_out` when given."""
  print(table, file=sys.stderr)
  text = json.dumps(report, indent=1)
  if json_out:
    Path(json_out).write_text(text)
  print(text)
