"""Moving trees between the host and `jax.pmap`'s layout (a leading local-device axis)."""

from __future__ import annotations

import jax
import numpy as np

AXIS = "batch"  # the pmap axis name every step uses


def device_put_sharded(tree):
  """Host arrays with a leading local-device axis -> one slice on each local device.

  The sharding is named after AXIS: exactly the sharding of pmap's outputs, so a step's first
  call does not compile a second copy of it for differently-sharded inputs.
  """
  mesh = jax.sharding.Mesh(np.array(jax.local_devices()), (AXIS,))
  return jax.device_put(tree, jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec(AXIS)))


def replicate(tree):
  """Host (or device) tree -> one copy per local device, built from numpy (no compiles)."""
  n = jax.local_device_count()
  host = jax.device_get(tree)
  return device_put_sharded(jax.tree.map(lambda x: np.broadcast_to(x, (n,) + np.shape(x)), host))


def unreplicate(tree):
  """The first local device's copy, as numpy (reading a shard needs no compiled gather)."""
  return jax.tree.map(lambda x: np.asarray(x.addressable_shards[0].data)[0], tree)


def shard(batch: dict) -> dict:
  """(host_batch, ...) -> (local_devices, host_batch / local_devices, ...), still on the host."""
  n = jax.local_device_count()
  return jax.tree.map(lambda x: np.asarray(x).reshape((n, -1) + x.shape[1:]), batch)
