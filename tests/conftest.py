"""Test-wide JAX setup: two fake CPU devices (for pmap tests) and fast compiles."""

import gc
import os

# Must happen before jax is imported anywhere in the test process.
_flags = os.environ.get("XLA_FLAGS", "")
if "xla_force_host_platform_device_count" not in _flags:
  os.environ["XLA_FLAGS"] = f"{_flags} --xla_force_host_platform_device_count=2".strip()

import jax  # noqa: E402
import pytest  # noqa: E402

# Tiny models: compile time dominates run time, so skip most XLA optimisation passes.
jax.config.update("jax_disable_most_optimizations", True)

# Many tests compile the same programs (a trainer run per test); a persistent compilation
# cache shared by the session turns the repeats into cache hits. Compile counts are unchanged:
# JAX reports a compile event for hits too.
jax.config.update("jax_compilation_cache_dir",
                  os.path.join(os.path.dirname(__file__), "..", ".pytest_cache", "jax"))
jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.5)


@pytest.fixture(autouse=True, scope="module")
def _release_compiled_programs():
  """Each test module's compiled programs are dropped after it: a pytest worker runs hundreds
  of modules' programs, whose executables and traces JAX otherwise keeps for the process's
  life (gigabytes by the end of the suite, on a 2-worker machine with 24 GiB)."""
  yield
  jax.clear_caches()
  gc.collect()
