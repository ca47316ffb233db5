"""Test-wide JAX setup: two fake CPU devices (for pmap tests) and fast compiles."""

import os

# Must happen before jax is imported anywhere in the test process.
_flags = os.environ.get("XLA_FLAGS", "")
if "xla_force_host_platform_device_count" not in _flags:
  os.environ["XLA_FLAGS"] = f"{_flags} --xla_force_host_platform_device_count=2".strip()

import jax  # noqa: E402

# Tiny models: compile time dominates run time, so skip most XLA optimisation passes.
jax.config.update("jax_disable_most_optimizations", True)
