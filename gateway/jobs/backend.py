"""A configured backend at run time: adapter, instance pool, breaker, queue, health."""

from __future__ import annotations

import asyncio
from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime

from gateway.backends.base import BackendAdapter
from gateway.domain.backends import BackendInfo, BackendStatus
from gateway.jobs.queue import FairQueue, QueuedJob
from gateway.runtime.breaker import CircuitBreaker
from gateway.runtime.pool import Pool
from gateway.runtime.worker import WorkerProcess


@dataclass(frozen=True)
class BackendSettings:
    max_run_time_s: float
    max_queue_time_s: float
    health_interval_s: float
    probe_timeout_s: float


@dataclass(eq=False)
class RunningJob:
    entry: QueuedJob
    trial: bool  # the breaker's half-open trial
    cancel_requested: asyncio.Event = field(default_factory=asyncio.Event)
    task: asyncio.Task[None] | None = None


@dataclass
class HealthState:
    serving: bool = False
    last_probe: datetime | None = None
    last_error: str = ""


@dataclass(eq=False)
class BackendRuntime:
    name: str
    adapter: BackendAdapter
    info: BackendInfo
    pool: Pool[WorkerProcess]
    breaker: CircuitBreaker
    settings: BackendSettings
    queue: FairQueue = field(default_factory=FairQueue)
    running: dict[str, RunningJob] = field(default_factory=dict)
    health: HealthState = field(default_factory=HealthState)
    ready: bool = False
    # Set when something the dispatcher waits for may have changed (breaker, drain).
    wake: asyncio.Event = field(default_factory=asyncio.Event)

    def running_by_tenant(self) -> Counter[str]:
        return Counter(r.entry.job.tenant for r in self.running.values())

    def status(self) -> BackendStatus:
        pool = self.pool.stats()
        return BackendStatus(
            ready=self.ready,
            serving=self.health.serving,
            last_probe=self.health.last_probe,
            last_error=self.health.last_error,
            breaker_state=self.breaker.state.value,
            queue_depth=len(self.queue),
            running=len(self.running),
            pool_in_use=pool.in_use,
            pool_idle=pool.idle,
            pool_waiting=pool.waiting,
            pool_min=pool.min_instances,
            pool_max=pool.max_instances,
            pool_peak=pool.high_water,
        )
