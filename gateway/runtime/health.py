"""Periodic health probes per backend.

Each round the backend's runner runs its probe job (Runner.probe): simulators run a tiny circuit
on a pooled worker, and a pool whose instances are all busy running jobs is not probed that round
(busy is not sick). Each round also lets the runner evict idle or old instances and top itself
up to its minimum.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import re
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime

from gateway.backends.base import PreparedJob
from gateway.backends.runner import ProbeSkipped, Runner
from gateway.domain.errors import ExecutionError, GatewayError

log = logging.getLogger(__name__)

# Called with the backend's name when its serving status changed.
OnChange = Callable[[str], Awaitable[None]]
# Compiles and assembles the backend's probe job (BackendAdapter.probe_spec) with a seed, the way
# any job is prepared, so the probe circuit is cached like any other.
PrepareProbe = Callable[[int], Awaitable[PreparedJob]]
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
TARGET_UNAVAILABLE = "TARGET_UNAVAILABLE"
PROBE_ERROR = "PROBE_FAILED: unexpected error"


@dataclass
class HealthState:
    serving: bool = False
    last_probe: datetime | None = None
    last_error: str = ""


class HealthMonitor:
    def __init__(
        self,
        backend: str,
        runner: Runner,
        prepare_probe: PrepareProbe,
        health: HealthState,
        *,
        interval_s: float,
        timeout_s: float,
        on_change: OnChange,
        fetch_target: Callable[[], Awaitable[None]] | None = None,
    ) -> None:
        self._backend = backend
        self._runner = runner
        self._prepare_probe = prepare_probe
        self._health = health
        self._interval = interval_s
        self._timeout = timeout_s
        self._on_change = on_change
        # Before each probe: the provider's description of the backend, if it is not fetched
        # yet (raises TargetUnavailable).
        self._fetch_target = fetch_target
        self._seeds = itertools.count()

    async def run(self) -> None:
        """The probes after the start-up one (`probe`, awaited before the backend serves)."""
        upkeep: asyncio.Task[None] | None = None
        try:
            while True:
                if upkeep is None or upkeep.done():
                    upkeep = asyncio.create_task(self._upkeep())
                # An upkeep still running after a probe interval (a cloud runner's stray
                # watch searching a provider out of reach, job after job) goes on beside the
                # probe: awaited, it held the probe back, and the backend's health stayed
                # SERVING all that time.
                await asyncio.wait({upkeep}, timeout=self._interval)
                if upkeep.done():
                    await asyncio.sleep(self._interval)  # the probe schedule
                await self.probe()
        finally:
            if upkeep is not None:
                upkeep.cancel()

    async def _upkeep(self) -> None:
        try:
            await self._runner.maintain()
        except Exception:  # a runner's upkeep failing must not end its backend's probes
            log.exception("backend %s: upkeep failed", self._backend)

    async def probe(self) -> None:
        """One probe; publishes the result when serving changed."""
        try:
            if self._fetch_target is not None:
                await self._fetch_target()
        except Exception as exc:  # TargetUnavailable; anything else must not end the monitor
            self._log_failure("no target", exc)
            await self._publish(False, TARGET_UNAVAILABLE)
            return
        try:
            prepared = await self._prepare_probe(next(self._seeds))
        except GatewayError as err:
            self._log_failure("probe circuit refused", err)
            await self._publish(False, probe_refused(err.reason))
            return
        error = ""
        try:
            await self._runner.probe(prepared, self._timeout)
        except ProbeSkipped:
            return
        except TimeoutError:
            error = probe_timeout(self._timeout)
        except ExecutionError as err:
            self._log_failure("probe failed", err)
            error = probe_failed(err.reason)
        except GatewayError as err:  # e.g. the pool cannot create instances
            self._log_failure("no instance", err)
            error = NO_INSTANCE
        except Exception as exc:  # no instance could be started, or a gateway bug
            self._log_failure("probe failed unexpectedly", exc)
            error = NO_INSTANCE if isinstance(exc, OSError | RuntimeError) else PROBE_ERROR
        await self._publish(not error, error)

    def _log_failure(self, what: str, exc: BaseException) -> None:
        # Operators get the whole text; the API shows only the sanitised reason.
        log.warning("backend %s: %s: %s: %s", self._backend, what, type(exc).__name__, exc)

    async def _publish(self, serving: bool, error: str) -> None:
        health = self._health
        changed = health.serving != serving or health.last_probe is None
        health.serving = serving
        health.last_error = error
        health.last_probe = datetime.now(UTC)
        if changed:
            level = logging.INFO if serving else logging.WARNING
            log.log(
                level,
                "backend %s: %s %s",
                self._backend,
                "SERVING" if serving else "NOT_SERVING",
                error,
            )
            await self._on_change(self._backend)
