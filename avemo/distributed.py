"""Multi-process start: `jax.distributed.initialize` from flags, AVEMO_* variables or SLURM.

Called by `avemo.main` before training. A single process (the default) initialises nothing. Several
processes are recognised from, in this order: explicit arguments (`--coordinator host:port
--num_processes N --process_id i`), the environment `AVEMO_COORDINATOR`, `AVEMO_NUM_PROCESSES`,
`AVEMO_PROCESS_ID`, or a SLURM step with `SLURM_NTASKS > 1` (jax's own SLURM cluster detection).
"""

from __future__ import annotations

import dataclasses
import logging
import os
from collections.abc import Mapping, Sequence

log = logging.getLogger("avemo")

ENV_COORDINATOR = "AVEMO_COORDINATOR"
ENV_NUM_PROCESSES = "AVEMO_NUM_PROCESSES"
ENV_PROCESS_ID = "AVEMO_PROCESS_ID"
# Comma-separated local device ids for this process (e.g. "0,1,2,3"); rarely needed.
ENV_LOCAL_DEVICE_IDS = "AVEMO_LOCAL_DEVICE_IDS"
# What jax's SlurmCluster requires to detect a SLURM step.
_SLURM_REQUIRED = (
    "SLURM_JOB_ID",
    "SLURM_STEP_NODELIST",
    "SLURM_NTASKS",
    "SLURM_PROCID",
    "SLURM_LOCALID",
)


class DistributedError(ValueError):
    """The multi-process settings are incomplete or contradictory."""


@dataclasses.dataclass(frozen=True)
class Plan:
    """How to call `jax.distributed.initialize` (None fields are left to jax's SLURM detection)."""

    source: str  # "flags", "env" or "slurm"
    coordinator: str | None
    num_processes: int | None
    process_id: int | None
    local_device_ids: tuple[int, ...] | None


def _int(value: str | int | None, name: str) -> int | None:
    if value is None or value == "":
        return None
    try:
        return int(value)
    except ValueError as err:
        raise DistributedError(f"{name} must be an integer, got {value!r}") from err


def _device_ids(text: str | None) -> tuple[int, ...] | None:
    if not text:
        return None
    try:
        return tuple(int(x) for x in text.split(",") if x.strip())
    except ValueError as err:
        raise DistributedError(
            f"{ENV_LOCAL_DEVICE_IDS} must be like '0,1,2', got {text!r}"
        ) from err


def _slurm_local_device_ids(environ: Mapping[str, str]) -> tuple[int, ...] | None:
    """All GPUs of the node for one task per node; None (jax's one-device-per-task) otherwise.

    jax's SLURM detection pins each task to the device `SLURM_LOCALID`, which is right for one task
    per GPU but would leave G-1 GPUs idle with one task per node (our sbatch template).
    """
    explicit = _device_ids(environ.get(ENV_LOCAL_DEVICE_IDS))
    if explicit is not None:
        return explicit
    tasks, nodes = (
        environ.get("SLURM_NTASKS"),
        environ.get("SLURM_STEP_NUM_NODES", environ.get("SLURM_NNODES")),
    )
    gpus = environ.get("SLURM_GPUS_ON_NODE")
    if tasks and nodes and gpus and int(tasks) == int(nodes) and int(gpus) > 1:
        return tuple(range(int(gpus)))
    return None


def plan(
    coordinator: str | None = None,
    num_processes: int | None = None,
    process_id: int | None = None,
    environ: Mapping[str, str] | None = None,
) -> Plan | None:
    """Decides whether and how to initialise; None for a single process. Pure (no jax calls).

    Raises:
      DistributedError: for a partial or inconsistent multi-process specification.
    """
    environ = os.environ if environ is None else environ
    explicit = (coordinator, num_processes, process_id)
    from_env = (
        environ.get(ENV_COORDINATOR) or None,
        _int(environ.get(ENV_NUM_PROCESSES), ENV_NUM_PROCESSES),
        _int(environ.get(ENV_PROCESS_ID), ENV_PROCESS_ID),
    )
    for source, (addr, count, index) in (("flags", explicit), ("env", from_env)):
        if addr is None and count is None and index is None:
            continue
        if count is None or count < 1:
            raise DistributedError(
                f"multi-process start from {source}: the number of processes "
                f"must be >= 1, got {count}"
            )
        if count == 1:
            return None
        if addr is None or index is None:
            raise DistributedError(
                f"multi-process start from {source} with {count} processes needs the "
                "coordinator address (host:port) and this process's id as well"
            )
        if ":" not in addr:
            raise DistributedError(f"coordinator {addr!r} must be host:port")
        if not 0 <= index < count:
            raise DistributedError(f"process id {index} is not in [0, {count})")
        return Plan(source, addr, count, index, _device_ids(environ.get(ENV_LOCAL_DEVICE_IDS)))
    if all(k in environ for k in _SLURM_REQUIRED) and int(environ["SLURM_NTASKS"]) > 1:
        return Plan("slurm", None, None, None, _slurm_local_device_ids(environ))
    return None


def initialize(
    coordinator: str | None = None,
    num_processes: int | None = None,
    process_id: int | None = None,
    local_device_ids: Sequence[int] | None = None,
) -> bool:
    """Calls `jax.distributed.initialize` when launched as several processes.

    Must run before any JAX computation. Returns True if this process joined a multi-process run
    (or one was already initialised), False for a single process.
    """
    import jax

    if jax.distributed.is_initialized():
        return True
    p = plan(coordinator, num_processes, process_id)
    if p is None:
        return False
    device_ids = (
        list(local_device_ids)
        if local_device_ids is not None
        else (list(p.local_device_ids) if p.local_device_ids is not None else None)
    )
    jax.distributed.initialize(
        coordinator_address=p.coordinator,
        num_processes=p.num_processes,
        process_id=p.process_id,
        local_device_ids=device_ids,
    )
    log.info(
        "jax.distributed initialised from %s: process %d of %d, %d local / %d global devices.",
        p.source,
        jax.process_index(),
        jax.process_count(),
        jax.local_device_count(),
        jax.device_count(),
    )
    return True


def quiet_unless_chief() -> None:
    """Progress logs come from process 0 only; the others keep warnings and errors."""
    import jax

    if jax.process_index() != 0:
        log.setLevel(logging.WARNING)
