"""How work is spread over devices: a one-axis mesh over every device, and what a run records of it.

Scoring splits a pool's inputs over the mesh's `data` axis; an input's dropout draws are
keyed by its global position, so a score does not depend on which device computed it.
Whatever is reduced over inputs (accuracy, top-k, BatchBALD's joint entropies) is
gathered onto every device first and computed there whole, as on one device: the
results are the same, bit for bit, on 1, 2 or 8 devices.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from jal.errors import JalError

DATA = "data"  # the mesh axis inputs are split over


def data_mesh(devices=None) -> Mesh:
    """A one-axis mesh over `devices` (default: every device of every process)."""
    devices = jax.devices() if devices is None else list(devices)
    return Mesh(np.asarray(devices), (DATA,))


def is_split(mesh: Mesh | None) -> bool:
    """Whether `mesh` spreads work over more than one device."""
    return mesh is not None and mesh.size > 1


def replicated(x, mesh: Mesh | None):
    """`x` whole on every device of `mesh` (inside jit): what follows computes as on one device."""
    if not is_split(mesh):
        return x
    return jax.tree.map(lambda a: jax.lax.with_sharding_constraint(a, NamedSharding(mesh, PartitionSpec())), x)


def devices(count: int | None = None) -> list:
    """The first `count` devices (default: all) of every process alike, process by process.

    Every process keeps devices of its own, so each holds a run of the mesh's rows.
    """
    present, processes = jax.devices(), jax.process_count()
    if count is None:
        return present
    if count > len(present):
        raise JalError(f"`devices` {count}: more than the {len(present)} present; give at most {len(present)}")
    if count % processes:
        raise JalError(f"`devices` {count}: give a multiple of the {processes} processes, as many from each")
    return [d for p in range(processes) for d in [d for d in present if d.process_index == p][: count // processes]]


def spread(x, mesh: Mesh, *, prepare: Callable[[Any], np.ndarray] = np.asarray) -> jax.Array:
    """`prepare(x)` with its rows split over `mesh`'s devices where they divide evenly, else whole on each.

    `x` is anything read by slices of rows: a device or numpy array, or a memory map's
    lazy view (`jal.data.host.PoolRows`). Each process reads and prepares only the rows its
    own devices hold, so a pool split over several hosts is read once in all; rows that do
    not divide evenly are read whole by every process.
    """
    spec = PartitionSpec(DATA) if x.shape[0] % mesh.size == 0 else PartitionSpec()
    return jax.make_array_from_callback(x.shape, NamedSharding(mesh, spec), lambda index: prepare(x[index[0]]))


def pad_rows(x: jax.Array, multiple: int) -> jax.Array:
    """`x` zero-padded along its first axis to a multiple of `multiple`."""
    pad = -x.shape[0] % multiple
    return jnp.pad(x, [(0, pad)] + [(0, 0)] * (x.ndim - 1)) if pad else x


def describe(mesh: Mesh) -> dict:
    """What a run records of where it ran: devices, processes and the mesh (results do not depend on them)."""
    devices = mesh.devices.reshape(-1)
    return {
        "platform": devices[0].platform,
        "device_kind": devices[0].device_kind,
        "devices": int(devices.size),
        "processes": jax.process_count(),
        "mesh": dict(mesh.shape),
    }
