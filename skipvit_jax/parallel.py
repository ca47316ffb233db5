"""Moving trees between the host and `jax.pmap`'s layout (a leading local-device axis)."""

from __future__ import annotations

import flax
import jax
import numpy as np

AXIS = "batch"  # the pmap axis name every step uses


def replicate(tree):
  """Host tree -> one copy per local device.

  Built from numpy (no per-leaf compiles) with a sharding named after AXIS: exactly the
  sharding of pmap's outputs, so a step's first call does not compile a second copy of it.
  """
  return flax.jax_utils.replicate(jax.device_get(tree), axis_name=AXIS)


def unreplicate(tree):
  """The first local device's copy, as numpy (reading a shard needs no compiled gather)."""
  return jax.tree.map(lambda x: np.asarray(x.addressable_shards[0].data)[0], tree)


def shard(batch: dict) -> dict:
  """(host_batch, ...) -> (local_devices, host_batch / local_devices, ...)."""
  n = jax.local_device_count()
  return jax.tree.map(lambda x: np.asarray(x).reshape((n, -1) + x.shape[1:]), batch)
