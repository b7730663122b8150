"""A configured backend at run time: its adapter, worker pool, queue and running jobs."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field

from gateway.backends.base import BackendAdapter
from gateway.backends.pool import WorkerPool
from gateway.domain.backends import BackendInfo
from gateway.jobs.queue import FairQueue, QueuedJob


@dataclass(eq=False)
class RunningJob:
    entry: QueuedJob
    cancel_requested: asyncio.Event = field(default_factory=asyncio.Event)
    task: asyncio.Task[None] | None = None


@dataclass(eq=False)
class BackendRuntime:
    name: str
    adapter: BackendAdapter
    info: BackendInfo
    pool: WorkerPool
    queue: FairQueue = field(default_factory=FairQueue)
    running: dict[str, RunningJob] = field(default_factory=dict)
    ready: bool = False
