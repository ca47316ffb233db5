"""Helpers shared by the tests."""

import contextlib
import functools

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


def trace_counter(fn):
  """`fn` wrapped to count its calls in `.calls` (each call's kwargs). Under jit or pmap, the
  body of a function runs only while it is traced, once per compilation of the program that
  calls it, so `len(wrapper.calls)` counts the project's own compiles without relying on the
  names JAX gives its programs."""
  @functools.wraps(fn)
  def wrapper(*args, **kwargs):
    wrapper.calls.append(kwargs)
    return fn(*args, **kwargs)

  wrapper.calls = []
  return wrapper


def count_traces(monkeypatch, module, name: str):
  """Replaces `module.name` by its `trace_counter` for the test; returns the counter."""
  counter = trace_counter(getattr(module, name))
  monkeypatch.setattr(module, name, counter)
  return counter
