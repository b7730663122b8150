"""Metrics: the instruments of gateway.telemetry.metric_names, fed by job transitions (a
lifecycle hook), by the RPC interceptor, and by a sampler of the backends' live state.

Imported only when `[telemetry.metrics]` is on (it imports the OpenTelemetry metrics API).
Live state (queue depth, pools, breakers, health) is read on the event loop every
`sample_interval_s` and kept as a snapshot the exporters' callbacks read from their threads:
a queue's depth may need the store, which a collector thread must not touch.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field

from opentelemetry.metrics import CallbackOptions, Meter, Observation

from gateway.domain.jobs import Job, JobState
from gateway.interceptors.handlers import SUBMIT_METHODS
from gateway.jobs.backend import BackendRuntime
from gateway.jobs.hooks import Transition
from gateway.runtime.pool import Pool
from gateway.telemetry import metric_names as names

log = logging.getLogger(__name__)

# Seconds: from a cached compile (sub-millisecond) to a long provider job.
DURATION_BUCKETS = (
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5,
    1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 900.0, 3600.0,
)  # fmt: skip


class Sums:
    """Monotonic sums per attribute set, observed by an observable counter at collection.

    Call sites pass their attributes in one fixed order, so the items tuple is the key.
    """

    def __init__(self) -> None:
        self._values: dict[tuple[tuple[str, str], ...], float] = {}
        self._lock = threading.Lock()  # provider retries are counted from worker threads

    def add(self, value: float, attributes: Mapping[str, str]) -> None:
        key = tuple(attributes.items())
        with self._lock:
            self._values[key] = self._values.get(key, 0.0) + value

    def observe(self, _: CallbackOptions) -> Iterable[Observation]:
        with self._lock:
            items = list(self._values.items())
        return [Observation(value, dict(key)) for key, value in items]


class TenantLabels:
    """The tenant label's value: the tenant's id for the first `limit` tenants seen, then
    names.OTHER_TENANT, so a gateway with many tenants cannot blow up the series count."""

    def __init__(self, limit: int) -> None:
        self._limit = limit
        self._known: set[str] = set()
        self._lock = threading.Lock()

    def __call__(self, tenant: str) -> str:
        if tenant in self._known:
            return tenant
        with self._lock:
            if len(self._known) < self._limit:
                self._known.add(tenant)
                return tenant
        return names.OTHER_TENANT


@dataclass(frozen=True)
class BackendSample:
    queue_depth: int
    running: int
    in_use: int
    idle: int
    waiting: int
    breaker: str
    serving: bool
    discarded: int | None


@dataclass
class _Snapshot:
    backends: dict[str, BackendSample] = field(default_factory=dict)
    compile_pool: tuple[int, int, int, int] | None = None  # in use, idle, waiting, discarded


# How long one backend's state may take to read before its last sample is kept.
SAMPLE_TIMEOUT_S = 2.0


class GatewayMetrics:
    """Every instrument of the gateway.

    Args:
        meter: From the configured MeterProvider.
        max_tenants: Distinct tenant label values before OTHER_TENANT.
    """

    def __init__(self, meter: Meter, max_tenants: int) -> None:
        self.tenant = TenantLabels(max_tenants)
        self._snapshot = _Snapshot()
        self._backends: Mapping[str, BackendRuntime] = {}
        self._compile_pool: Pool[object] | None = None

        def histogram(metric: names.MetricName):  # type: ignore[no-untyped-def]
            return meter.create_histogram(
                metric.name,
                unit=metric.unit,
                description=metric.description,
                explicit_bucket_boundaries_advisory=DURATION_BUCKETS,
            )

        def counter(metric: names.MetricName) -> Sums:
            # Summed here and observed when collected: an add is a dict update, where an SDK
            # counter's add costs tens of microseconds per reader on the event loop.
            sums = Sums()
            meter.create_observable_counter(
                metric.name, [sums.observe], unit=metric.unit, description=metric.description
            )
            return sums

        def gauge(
            metric: names.MetricName,
            read: Callable[[], Iterable[tuple[float, dict[str, str]]]],
        ) -> None:
            def observe(_: CallbackOptions) -> Iterable[Observation]:
                return [Observation(value, attrs) for value, attrs in read()]

            create = (
                meter.create_observable_counter
                if metric.kind is names.Kind.OBSERVED_COUNTER
                else meter.create_observable_gauge
            )
            create(metric.name, [observe], unit=metric.unit, description=metric.description)

        self.rpc_duration = histogram(names.RPC_SERVER_DURATION)
        self.jobs_submitted = counter(names.JOBS_SUBMITTED)
        self.jobs_finished = counter(names.JOBS_FINISHED)
        self.jobs_refused = counter(names.JOBS_REFUSED)
        self.phase_duration = histogram(names.JOB_PHASE_DURATION)
        self.queue_wait = histogram(names.JOB_QUEUE_WAIT)
        self.shots = counter(names.JOB_SHOTS)
        self.cost = counter(names.JOB_COST)
        self.provider_retries = counter(names.PROVIDER_RETRIES)
        gauge(names.QUEUE_DEPTH, self._queue_depth)
        gauge(names.JOBS_RUNNING, self._running)
        gauge(names.POOL_INSTANCES, self._pools)
        gauge(names.BREAKER_STATE, self._breaker_states)
        gauge(names.BREAKER_TRANSITIONS, self._breaker_transitions)
        gauge(names.BACKEND_HEALTH, self._health)
        gauge(names.WORKER_RESTARTS, self._restarts)

    # ------------------------------------------------------------------ recording

    def record_rpc(self, method: str, code: str, seconds: float, *, job_known: bool) -> None:
        """One call's duration; a refusal too for SubmitJob or Run answered with an error
        before it had its job (`job_known`: created, or an earlier request's found). A call
        its caller cancelled is none: its job's commit, shielded, may land after it left (and
        count as submitted)."""
        self.rpc_duration.record(
            seconds,
            {"rpc.system.name": "grpc", "rpc.method": method, "rpc.response.status_code": code},
        )
        refused = code not in ("OK", "CANCELLED") and not job_known
        if refused and f"/{method}" in SUBMIT_METHODS:
            self.jobs_refused.add(1, {"rpc.method": method, "rpc.response.status_code": code})

    def provider_retry(self, backend: str) -> None:
        self.provider_retries.add(1, {"backend": backend})

    def on_transition(self, transition: Transition) -> None:
        job = transition.job
        backend = job.placement or job.backend
        if transition.previous is None:
            self.jobs_submitted.add(1, {"tenant": self.tenant(job.tenant), "backend": backend})
        elif job.state is JobState.RUNNING and transition.previous is not JobState.RUNNING:
            if job.started_at is not None:
                waited = (job.started_at - job.created_at).total_seconds()
                self.queue_wait.record(max(waited, 0.0), {"backend": backend})
        elif job.state.is_final:
            self._finished(job, backend)

    def _finished(self, job: Job, backend: str) -> None:
        tenant = self.tenant(job.tenant)
        self.jobs_finished.add(1, {"tenant": tenant, "backend": backend, "state": job.state.value})
        timings = job.timings
        if timings is not None:
            for phase, seconds in (
                ("queue", timings.queued_s),
                ("transpile", timings.transpile_s),
                ("execute", timings.execute_s),
            ):
                self.phase_duration.record(seconds, {"phase": phase, "backend": backend})
        if job.ended_at is not None:
            total = max((job.ended_at - job.created_at).total_seconds(), 0.0)
            self.phase_duration.record(total, {"phase": "total", "backend": backend})
        execution = job.execution
        if execution is not None and execution.usage is not None:
            self.shots.add(execution.usage.shots, {"tenant": tenant, "backend": backend})
        if execution is not None and execution.cost is not None:
            self.cost.add(
                execution.cost.amount,
                {"tenant": tenant, "backend": backend, "currency": execution.cost.unit},
            )

    # ------------------------------------------------------------------ live state

    def watch(
        self, backends: Mapping[str, BackendRuntime], compile_pool: Pool[object] | None
    ) -> None:
        self._backends = backends
        self._compile_pool = compile_pool

    async def sample(self) -> None:
        """Reads every backend's live state once (on the event loop). A backend whose state
        cannot be read now (a store read failing or hanging) keeps its last sample; the
        others' are read as usual."""
        snapshot = _Snapshot()
        for name, runtime in self._backends.items():
            try:
                async with asyncio.timeout(SAMPLE_TIMEOUT_S):
                    status = await runtime.status()
            except Exception:
                log.warning("metrics: backend %s's state could not be read", name, exc_info=True)
                last = self._snapshot.backends.get(name)
                if last is not None:
                    snapshot.backends[name] = last
                continue
            # Through the runner's own stats: a wrapped runner (faults, telemetry) passes them on.
            stats = runtime.runner.stats()
            snapshot.backends[name] = BackendSample(
                queue_depth=status.queue_depth,
                running=status.running,
                in_use=status.pool_in_use,
                idle=status.pool_idle,
                waiting=status.pool_waiting,
                breaker=status.breaker_state,
                serving=status.serving,
                discarded=None if stats is None else stats.discarded,
            )
        if self._compile_pool is not None:
            stats = self._compile_pool.stats()
            snapshot.compile_pool = (
                stats.in_use,
                stats.idle,
                stats.waiting,
                stats.discarded,
            )
        self._snapshot = snapshot

    async def run_sampler(self, interval_s: float) -> None:
        while True:
            try:
                await self.sample()
            except Exception:
                log.exception("metrics: sampling the backends failed")
            await asyncio.sleep(interval_s)

    def _queue_depth(self) -> Iterable[tuple[float, dict[str, str]]]:
        for name, s in self._snapshot.backends.items():
            yield s.queue_depth, {"backend": name}

    def _running(self) -> Iterable[tuple[float, dict[str, str]]]:
        for name, s in self._snapshot.backends.items():
            yield s.running, {"backend": name}

    def _pools(self) -> Iterable[tuple[float, dict[str, str]]]:
        rows = [
            (name, (s.in_use, s.idle, s.waiting)) for name, s in self._snapshot.backends.items()
        ]
        compile_pool = self._snapshot.compile_pool
        if compile_pool is not None:
            rows.append((names.COMPILE_POOL, compile_pool[:3]))
        for pool, counts in rows:
            for state, value in zip(names.POOL_STATES, counts, strict=True):
                yield value, {"pool": pool, "state": state}

    def _breaker_states(self) -> Iterable[tuple[float, dict[str, str]]]:
        for name, s in self._snapshot.backends.items():
            for state in names.BREAKER_STATES:
                yield (1 if s.breaker == state else 0), {"backend": name, "state": state}

    def _breaker_transitions(self) -> Iterable[tuple[float, dict[str, str]]]:
        # Each breaker's own count of the states it entered (CircuitBreaker.entered).
        # Copied first: collected on the exporter's thread while the loop may count.
        for name, runtime in list(self._backends.items()):
            for state, count in list(runtime.breaker.entered.items()):
                yield count, {"backend": name, "state": state.value}

    def _health(self) -> Iterable[tuple[float, dict[str, str]]]:
        for name, s in self._snapshot.backends.items():
            yield (1 if s.serving else 0), {"backend": name}

    def _restarts(self) -> Iterable[tuple[float, dict[str, str]]]:
        for name, s in self._snapshot.backends.items():
            if s.discarded is not None:
                yield s.discarded, {"pool": name}
        compile_pool = self._snapshot.compile_pool
        if compile_pool is not None:
            yield compile_pool[3], {"pool": names.COMPILE_POOL}
