"""Device mesh and shardings: batches split over the `data` axis, parameters replicated."""

from __future__ import annotations

import jax
import ml_collections
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P


def make_mesh(mesh_cfg: ml_collections.ConfigDict) -> jax.sharding.Mesh:
    """A 1-D mesh over `mesh_cfg.data` devices (-1: all devices of all processes)."""
    devices = jax.devices()
    size = len(devices) if mesh_cfg.data == -1 else mesh_cfg.data
    if size <= 0 or size > len(devices) or len(devices) % size:
        raise ValueError(f"config.mesh.data={mesh_cfg.data} does not fit {len(devices)} devices")
    # Auto axes: jit propagates shardings from the in/out annotations (no explicit-mode typing).
    return jax.make_mesh(
        (size,), ("data",), axis_types=(jax.sharding.AxisType.Auto,), devices=devices[:size]
    )


def batch_sharding(mesh: jax.sharding.Mesh) -> NamedSharding:
    return NamedSharding(mesh, P("data"))


def replicated(mesh: jax.sharding.Mesh) -> NamedSharding:
    return NamedSharding(mesh, P())
