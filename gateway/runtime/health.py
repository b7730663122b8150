"""Periodic health probes per backend.

Simulators run a tiny circuit on a pooled worker. A pool whose instances are all busy running
jobs is not probed that round: busy is not sick. Each round also lets the pool evict idle or
old instances and top itself up to its minimum.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import re
from collections.abc import Awaitable, Callable, Mapping
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

# BackendHealth.last_error is a reason and a fixed short description, never exception text:
# that can hold paths, addresses, process ids or another tenant's data, and admins read it over
# the API. The raw text goes to the log, for operators.
_FAILURES: Mapping[str, str] = {
    "WORKER_CRASHED": "worker crashed",
    "OUT_OF_MEMORY": "out of memory",
    "JOB_TIMEOUT": "execution timed out",
    "EXECUTION_FAILED": "execution failed",
    "PROVIDER_ERROR": "provider error",
}
_REASON = re.compile(r"[A-Z][A-Z0-9_]{0,63}")


def _reason(reason: str) -> str | None:
    """A reason code as it may be shown (UPPER_SNAKE, bounded), or None."""
    return reason if _REASON.fullmatch(reason) else None


def probe_refused(reason: str) -> str:
    """last_error when the probe circuit itself was refused (a configuration problem)."""
    code = _reason(reason)
    return f"PROBE_REFUSED: {code}" if code else "PROBE_REFUSED"


def probe_failed(reason: str) -> str:
    """last_error when the probe job failed with an execution reason."""
    description = _FAILURES.get(reason) or _reason(reason)
    return f"PROBE_FAILED: {description}" if description else "PROBE_FAILED"


def probe_timeout(seconds: float) -> str:
    return f"PROBE_TIMEOUT: no answer within {seconds:g} s"


NO_INSTANCE = "NO_INSTANCE: no backend instance could be started"
PROBE_ERROR = "PROBE_FAILED: unexpected error"


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
            self._log_failure("probe circuit refused", err)
            await self._publish(False, probe_refused(err.reason))
            return
        try:
            worker = await runtime.pool.acquire(timeout=timeout)
        except TimeoutError:
            return
        except Exception as exc:  # instances cannot even be created
            self._log_failure("no instance", exc)
            await self._publish(False, NO_INSTANCE)
            return
        error = ""
        try:
            async with asyncio.timeout(timeout):
                await worker.execute(prepared.payload)
        except TimeoutError:
            worker.kill()
            error = probe_timeout(timeout)
        except ExecutionError as err:
            self._log_failure("probe failed", err)
            error = probe_failed(err.reason)
        except Exception as exc:  # a gateway bug: the backend is not known to be healthy
            log.exception("backend %s: probe failed unexpectedly", runtime.name, exc_info=exc)
            error = PROBE_ERROR
        finally:
            await runtime.pool.release(worker, broken=not worker.alive)
        await self._publish(not error, error)

    def _log_failure(self, what: str, exc: BaseException) -> None:
        # Operators get the whole text; the API shows only the sanitised reason.
        log.warning("backend %s: %s: %s: %s", self._runtime.name, what, type(exc).__name__, exc)

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
