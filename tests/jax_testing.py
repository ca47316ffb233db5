"""Helpers shared by the tests."""

import contextlib

import jax

_BACKEND_COMPILE_EVENT = "/jax/core/compile/backend_compile_duration"


@contextlib.contextmanager
def count_compilations():
  """Counts XLA backend compilations inside the block: `with count_compilations() as n: ...`;
  read `n[0]` afterwards."""
  count = [0]

  def listener(event, duration, **kwargs):
    del duration, kwargs
    if event == _BACKEND_COMPILE_EVENT:
      count[0] += 1

  jax.monitoring.register_event_duration_secs_listener(listener)
  try:
    yield count
  finally:
    jax.monitoring.unregister_event_duration_listener(listener)
