"""Joining a run of several processes (one per host, or per accelerator) through `jax.distributed`.

    distributed.join(Launch("10.0.0.1:1234", num_processes=2, process_id=0))  # before any JAX work
    distributed.join(Launch())  # under SLURM, Open MPI, a TPU pod slice: the settings are found

Every process then sees every device of every process (`jax.devices()`), runs the same
program on its share of them and gets the same results; only process 0 writes files
(`is_writer`).

JAX's own start-up ends a process that cannot reach the others with a C++ fatal error (an
abort, no exception) once its timeout passes. So the processes first meet on the
coordinator's port in plain Python, within the same timeout: a process that never comes,
a wrong address or a clash of settings becomes a one-line JalError on every process that
came, and JAX starts only once all of them are there.
"""

from __future__ import annotations

import contextlib
import math
import os
import socket
import time
import zlib
from typing import NamedTuple

import jax
import numpy as np

from jal.errors import JalError


class Launch(NamedTuple):
    """How this process joins a run; None: found by JAX's cluster detection (SLURM, Open MPI, TPU, Kubernetes)."""

    coordinator: str | None = None  # HOST:PORT of process 0 (default: $JAX_COORDINATOR_ADDRESS, else detected)
    num_processes: int | None = None
    process_id: int | None = None  # 0 .. num_processes - 1; process 0 runs the coordinator
    timeout: float = 300.0  # seconds to wait for every process to join


def join(launch: Launch) -> None:
    """Joins the run `launch` describes; JalError, on one line and within `launch.timeout`, where it cannot."""
    if not launch.timeout > 0:
        raise JalError(f"`timeout` {launch.timeout}: give a positive number of seconds")
    launch, local_devices = _completed(launch)
    host, port = _address(launch.coordinator)
    if not launch.num_processes >= 1:
        raise JalError(f"`num_processes` {launch.num_processes}: give at least 1")
    if not 0 <= launch.process_id < launch.num_processes:
        raise JalError(
            f"`process_id` {launch.process_id} lies outside 0..{launch.num_processes - 1} "
            f"for {launch.num_processes} processes"
        )
    if launch.num_processes > 1:
        _meet(host, port, launch)
    if jax.config.jax_cpu_collectives_implementation in (None, "none"):
        # Older JAX has no collectives across processes on CPU by default; GPU and TPU ignore this.
        jax.config.update("jax_cpu_collectives_implementation", "gloo")
    try:
        jax.distributed.initialize(
            launch.coordinator,
            launch.num_processes,
            launch.process_id,
            local_device_ids=local_devices,
            initialization_timeout=math.ceil(launch.timeout),
        )
    except (RuntimeError, ValueError) as e:  # JAX already started, say, or the coordinator's port is taken
        message = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise JalError(f"cannot join the run through {launch.coordinator}: {message}") from e


def is_writer() -> bool:
    """Whether this process writes the results: process 0 (and a process alone)."""
    return jax.process_index() == 0


def local(tree):
    """Numpy copies of a pytree of arrays replicated on every device, each read from this host's own copy.

    A result replicated over the devices of several processes cannot be gathered whole
    by one of them, but every process holds all of it.
    """
    return jax.tree.map(np.asarray, tree)


class PeerFailed(JalError):
    """Another process of the run failed; its own output says why."""


class Lockstep:
    """Points all processes of a run pass together: where one fails, all stop at the next point.

        with Lockstep() as lockstep:
            ...  # work that fails alike everywhere, or on one process only
            lockstep.reached()

    Without it, a process whose work failed on it alone (process 0 writing the results,
    say) would leave the others waiting in the next collective until JAX's heartbeat
    timeout ends them with a fatal error. A failing process instead joins the others at
    the point they wait at, with a mark that ends them with PeerFailed; passing the end
    of the block is the last point. The block must not run collectives of its own before
    its first point, where a process may be missing from them. One process: no
    communication at all.
    """

    def __enter__(self) -> Lockstep:
        return self

    def reached(self, value: int = 0) -> np.ndarray:
        """Every process's `value` (>= 0), in process order, once all have reached this point."""
        values = _gather(value + 1)  # 0 marks a process that failed
        failed = np.flatnonzero(values == 0)
        if failed.size:
            raise PeerFailed(f"process {failed[0]} of the run failed; its own output says why")
        return values - 1

    def agree(self, value: bytes, problem: str) -> None:
        """A point where every process must bring the same `value`: else JalError "process I: `problem`"."""
        values = self.reached(zlib.crc32(value) & (2**30 - 1))  # a fingerprint: one number per process
        differing = np.flatnonzero(values != values[0])
        if differing.size:
            raise JalError(f"process {differing[0]}: {problem}")

    def __exit__(self, kind, error, traceback) -> None:
        if kind is None:
            self.reached()
        elif not isinstance(error, PeerFailed):  # the others learn it at the point they wait at
            _gather(0)


def _gather(value: int) -> np.ndarray:
    if jax.process_count() == 1:
        return np.array([value])
    from jax.experimental import multihost_utils

    return np.asarray(multihost_utils.process_allgather(np.array([value], np.int32), tiled=True))


def _completed(launch: Launch) -> tuple[Launch, list[int] | None]:
    """`launch` with what it leaves open found as `jax.distributed.initialize` finds it, and the local devices."""
    coordinator = launch.coordinator or os.environ.get("JAX_COORDINATOR_ADDRESS")
    local_devices = None
    if None in (coordinator, launch.num_processes, launch.process_id):
        # JAX's own detection, which jax.distributed.initialize would run: the meeting needs
        # the settings before JAX starts.
        from jax._src.clusters import ClusterEnv

        coordinator, count, process_id, local_devices = ClusterEnv.auto_detect_unset_distributed_params(
            coordinator, launch.num_processes, launch.process_id, None, None, math.ceil(launch.timeout)
        )
        launch = launch._replace(num_processes=count, process_id=process_id)
    launch = launch._replace(coordinator=coordinator)
    missing = [f"`{name}`" for name in ("coordinator", "num_processes", "process_id") if getattr(launch, name) is None]
    if missing:
        raise JalError(
            f"found no cluster (SLURM, Open MPI, a TPU pod, Kubernetes) that sets {', '.join(missing)}; "
            "give `coordinator`, `num_processes` and `process_id`"
        )
    return launch, local_devices


def _address(coordinator: str) -> tuple[str, int]:
    host, _, port = coordinator.rpartition(":")
    host = host[1:-1] if host.startswith("[") and host.endswith("]") else host  # [::1]:1234
    if not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise JalError(f"`coordinator` {coordinator!r}: give HOST:PORT, such as 10.0.0.1:1234")
    return host, int(port)


def _meet(host: str, port: int, launch: Launch) -> None:
    """Returns once every process has come to the coordinator's port; JalError within `launch.timeout` else.

    Process 0 listens; each other sends "ID COUNT" and waits for "go" or the reason to stop.
    """
    deadline = time.monotonic() + launch.timeout
    if launch.process_id == 0:
        _await_others(port, launch, deadline)
        return
    connection = _connect(host, port, launch, deadline)
    with connection:
        connection.sendall(f"{launch.process_id} {launch.num_processes}\n".encode())
        connection.settimeout(launch.timeout)  # process 0 answers within its own timeout
        try:
            reply = connection.makefile("r").readline().strip()
        except OSError as e:
            raise JalError(f"the coordinator {launch.coordinator} did not answer ({e}); is process 0 running?") from e
    if reply != "go":
        raise JalError(reply or f"the coordinator {launch.coordinator} went away; see process 0's output")


def _connect(host: str, port: int, launch: Launch, deadline: float) -> socket.socket:
    while True:
        try:
            return socket.create_connection((host, port), timeout=max(deadline - time.monotonic(), 0.1))
        except OSError as e:
            if time.monotonic() >= deadline:
                raise JalError(
                    f"no coordinator answered at {launch.coordinator} within {launch.timeout:g} s ({e.strerror or e}); "
                    "start process 0 there, or check `coordinator`"
                ) from None
            time.sleep(0.2)  # process 0 is not listening yet


def _await_others(port: int, launch: Launch, deadline: float) -> None:
    count = launch.num_processes
    try:
        if socket.has_dualstack_ipv6():  # every address, as JAX's coordinator binds ([::]:PORT)
            server = socket.create_server(("", port), family=socket.AF_INET6, dualstack_ipv6=True)
        else:
            server = socket.create_server(("", port))
    except OSError as e:
        raise JalError(f"cannot listen on port {port} ({e.strerror}); choose another port in `coordinator`") from e
    joined: list[tuple[int, socket.socket]] = []
    problem = None
    with server, contextlib.ExitStack() as connections:
        while problem is None and len(joined) < count - 1 and (remaining := deadline - time.monotonic()) > 0:
            server.settimeout(remaining)
            try:
                connection, _ = server.accept()
            except TimeoutError:
                break
            connections.enter_context(connection)
            connection.settimeout(10.0)  # a jal process says who it is at once
            try:
                process_id, their_count = map(int, connection.makefile("r").readline().split())
            except (OSError, ValueError):
                continue  # not a jal process: ignored
            if their_count != count:
                problem = f"process {process_id} was started for {their_count} processes, process 0 for {count}"
            elif process_id in dict(joined) or process_id == 0:
                problem = f"two processes have `process_id` {process_id}; give each process its own, 0..{count - 1}"
            joined.append((process_id, connection))
        missing = sorted(set(range(1, count)) - set(dict(joined)))
        if problem is None and missing:
            problem = (
                f"process{'es' if len(missing) > 1 else ''} {', '.join(map(str, missing))} of {count} did not join "
                f"within {launch.timeout:g} s; start every process with the same `coordinator` and `num_processes`"
            )
        for _, connection in joined:
            with contextlib.suppress(OSError):  # one that gave up meanwhile
                connection.sendall(f"{problem or 'go'}\n".encode())
                connection.settimeout(5.0)
                connection.recv(1)  # its close first: the port is free again for JAX's coordinator
    if problem is not None:
        raise JalError(problem)
