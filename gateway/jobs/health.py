"""Periodic health probes per backend.

Simulators run a tiny circuit on a pooled worker. A pool whose instances are all busy running
jobs is not probed that round: busy is not sick. Each round also lets the pool evict idle or
old instances and top itself up to its minimum.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime

from gateway.backends.base import PreparedJob
from gateway.domain.errors import ExecutionError, GatewayError
from gateway.domain.jobs import JobSpec
from gateway.jobs.backend import BackendRuntime

log = logging.getLogger(__name__)

OnChange = Callable[[BackendRuntime], Awaitable[None]]
# Compiles and assembles a job (JobManager.prepare): runtime, tenant, spec, seed.
Prepare = Callable[[BackendRuntime, str, JobSpec, int], Awaitable[PreparedJob]]
# The tenant health probes compile as: their circuit is cached after the first probe.
PROBE_TENANT = "qgateway.health"


class HealthMonitor:
    def __init__(self, runtime: BackendRuntime, prepare: Prepare, on_change: OnChange) -> None:
        self._runtime = runtime
        self._prepare = prepare
        self._on_change = on_change
        self._seeds = itertools.count()

    async def run(self) -> None:
        interval = self._runtime.settings.health_interval_s
        while True:
            await self.probe()
            await self._runtime.pool.maintain()
            await asyncio.sleep(interval)  # the probe schedule

    async def probe(self) -> None:
        """One probe; publishes the result when serving changed."""
        runtime = self._runtime
        timeout = runtime.settings.probe_timeout_s
        try:
            prepared = await self._prepare(
                runtime, PROBE_TENANT, runtime.adapter.probe_spec(), next(self._seeds)
            )
        except GatewayError as err:
            await self._publish(False, f"probe circuit refused: {err.reason}")
            return
        try:
            worker = await runtime.pool.acquire(timeout=timeout)
        except TimeoutError:
            return
        except Exception as exc:  # instances cannot even be created
            await self._publish(False, f"no instance: {type(exc).__name__}: {exc}")
            return
        error = ""
        try:
            async with asyncio.timeout(timeout):
                await worker.execute(prepared.payload)
        except TimeoutError:
            worker.kill()
            error = f"probe did not finish within {timeout}s"
        except ExecutionError as err:
            error = f"{err.reason}: {err.message}"
        finally:
            await runtime.pool.release(worker, broken=not worker.alive)
        await self._publish(not error, error)

    async def _publish(self, serving: bool, error: str) -> None:
        health = self._runtime.health
        changed = health.serving != serving or health.last_probe is None
        health.serving = serving
        health.last_error = error
        health.last_probe = datetime.now(UTC)
        if changed:
            level = logging.INFO if serving else logging.WARNING
            log.log(
                level,
                "backend %s: %s %s",
                self._runtime.name,
                "SERVING" if serving else "NOT_SERVING",
                error,
            )
            await self._on_change(self._runtime)
