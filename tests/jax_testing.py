"""Helpers shared by the tests."""

import contextlib

import jax

_BACKEND_COMPILE_EVENT = "/jax/core/compile/backend_compile_duration"


@contextlib.contextmanager
def count_compilations(name_contains: str = ""):
  """Counts XLA backend compilations inside the block, of functions whose name contains
  `name_contains`: `with count_compilations() as n: ...`, then read `n[0]`; `n[1]` lists
  the compiled function names."""
  count = [0, []]

  def listener(event, duration, **kwargs):
    del duration
    name = str(kwargs.get("fun_name", ""))
    if event == _BACKEND_COMPILE_EVENT and name_contains in name:
      count[0] += 1
      count[1].append(name)

  jax.monitoring.register_event_duration_secs_listener(listener)
  try:
    yield count
  finally:
    jax.monitoring.unregister_event_duration_listener(listener)
