"""Helpers shared by the tests."""

import contextlib
import functools

import jax
import numpy as np

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


def _module_of(path) -> tuple:
  """A parameter's module group: its encoder block ("Transformer", "encoderblock_3"), or its
  top-level module ("embedding", "cls", "head", ...)."""
  names = tuple(getattr(k, "key", k) for k in path)
  return names[:2] if names[0] == "Transformer" else names[:1]


def assert_grads_close(got, want, tol: float, *, scale=None, rtol: float = 0.0):
  """Each leaf of the parameter-shaped tree `got` within `tol` times S (plus `rtol` of the
  entry) of `want`'s, S the largest |entry| of `scale` (default: `want`) among the
  parameters of the leaf's encoder block (or top-level module).

  For float32 gradients (or updates) of one model computed two ways: rounding makes an
  entry's error a fraction of the terms summed into it, which have the size of its block's
  gradients, not of the entry itself; an entry can be 0 up to rounding (a key bias: softmax
  ignores a shift common to all keys), where no relative tolerance holds."""
  want_leaves = jax.tree_util.tree_leaves_with_path(want)
  got_leaves = jax.tree.leaves(got)
  scale_leaves = jax.tree.leaves(want if scale is None else scale)
  assert len(got_leaves) == len(want_leaves) == len(scale_leaves)
  block_scale = {}
  for (path, _), s in zip(want_leaves, scale_leaves):
    group = _module_of(path)
    block_scale[group] = max(block_scale.get(group, 0.0), float(np.abs(np.asarray(s)).max()))
  for (path, w), g in zip(want_leaves, got_leaves):
    np.testing.assert_allclose(g, w, rtol=rtol, atol=tol * block_scale[_module_of(path)],
                               err_msg=jax.tree_util.keystr(path))
