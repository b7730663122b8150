"""Which CPUs the gateway's own threads run on (`server.cpu_affinity`), and its workers' release.

The gateway's Python threads (the event loop, gRPC's completion-queue poller, the store's
writer) take turns on one interpreter lock: more cores give them nothing, while every hand-off
between two of them on different cores wakes an idle core, which on a VM costs tens of
microseconds each (an inter-processor interrupt and a VM exit). A Run makes dozens of such
hand-offs. Bound to one CPU, they become context switches on a core that is awake.

Workers do the heavy work in their own processes and must keep every CPU the gateway had: they
inherit its binding through fork, so the gateway names the original CPUs on each worker's
command line (worker_args) and the worker's entry point binds itself back to them
(release_worker) before anything imports numpy (gateway.runtime.worker_main).
"""

from __future__ import annotations

import os
from collections.abc import Collection, Sequence
from pathlib import Path

_CPUS_ARG = "cpus="
# The CPUs this process had before bind_gateway (None: never bound). Process-wide by nature:
# the binding is the process's own.
_unbound: frozenset[int] | None = None


class AffinityError(ValueError):
    """The requested CPUs cannot be bound (not Linux, or not CPUs this process may use)."""


def bind_gateway(cpus: Collection[int]) -> frozenset[int]:
    """Binds every thread of this process, present and future, to `cpus`; workers started from
    now on are given the CPUs this process had (worker_args). Returns those CPUs.

    Raises:
        AffinityError: not on Linux, or a CPU outside the ones this process may use.
    """
    if not hasattr(os, "sched_setaffinity"):
        raise AffinityError("server.cpu_affinity needs Linux (sched_setaffinity)")
    allowed = frozenset(os.sched_getaffinity(0))
    wanted = frozenset(cpus)
    outside = sorted(wanted - allowed)
    if outside:
        raise AffinityError(
            f"server.cpu_affinity: CPU {', '.join(map(str, outside))} is not one this process "
            f"may use (CPUs {', '.join(map(str, sorted(allowed)))})"
        )
    global _unbound
    _bind_threads(wanted)
    _unbound = allowed
    return allowed


def worker_args() -> list[str]:
    """Command-line arguments for a worker: the CPUs it binds itself back to, if any."""
    if _unbound is None:
        return []
    return [_CPUS_ARG + ",".join(map(str, sorted(_unbound)))]


def release_worker(args: Sequence[str]) -> None:
    """In a worker, given its command-line arguments: binds its threads back to the CPUs the
    gateway had, if the gateway was bound."""
    for arg in args:
        if arg.startswith(_CPUS_ARG):
            _bind_threads(frozenset(int(cpu) for cpu in arg[len(_CPUS_ARG) :].split(",")))


def thread_ids(pid: int | None = None) -> list[int]:
    """The ids of every thread of process `pid` (this process by default)."""
    task = Path("/proc/self/task" if pid is None else f"/proc/{pid}/task")
    return [int(entry.name) for entry in task.iterdir()]


def _bind_threads(cpus: frozenset[int]) -> None:
    # sched_setaffinity(0) binds only the calling thread; threads that exist already (gRPC's
    # and the interpreter's) are bound one by one, later ones inherit from their creator.
    for tid in thread_ids():
        try:
            os.sched_setaffinity(tid, cpus)
        except ProcessLookupError:  # the thread ended meanwhile
            continue
