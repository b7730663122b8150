"""The catalogue of every metric the gateway exports: name, kind, unit, labels, and the names
Prometheus shows for it.

This module is the contract for dashboards and alert rules (deploy/observability): a metric the
gateway exports is declared here, and `tests/unit/test_telemetry_metrics.py` checks that the
Prometheus exporter really produces these names. It imports nothing from OpenTelemetry, so
tools may read it without the telemetry stack.

Prometheus spelling (opentelemetry-exporter-prometheus): dots become underscores, the unit is
appended (`s` -> `_seconds`; `{annotation}` and `1` add nothing), counters end in `_total`,
histograms export `_bucket`, `_sum` and `_count`, and label names have their dots replaced by
underscores (`rpc.method` -> `rpc_method`). Every series also carries the exporter's
`otel_scope_name`/`otel_scope_version` labels.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

# The tenant label holds at most this many distinct tenants by default ([telemetry]
# max_tenant_labels); the rest are reported as OTHER_TENANT.
OTHER_TENANT = "other"


class Kind(enum.Enum):
    COUNTER = "counter"  # monotonic, recorded as things happen
    HISTOGRAM = "histogram"
    GAUGE = "gauge"  # observed when collected (a snapshot of live state)
    OBSERVED_COUNTER = "observed_counter"  # monotonic, observed when collected


_UNIT_SUFFIX = {"s": "_seconds", "By": "_bytes"}


@dataclass(frozen=True)
class MetricName:
    """One exported metric.

    Attributes:
        name: The OpenTelemetry instrument name.
        kind: What instrument it is.
        unit: UCUM unit as OpenTelemetry takes it.
        labels: Attribute (label) names, in the OpenTelemetry spelling.
        description: What it measures.
    """

    name: str
    kind: Kind
    unit: str
    labels: tuple[str, ...]
    description: str

    @property
    def prometheus(self) -> str:
        """The metric family name in Prometheus (without `_total`/`_bucket`...)."""
        base = self.name.replace(".", "_")
        suffix = _UNIT_SUFFIX.get(self.unit, "")
        return base if base.endswith(suffix) else base + suffix

    @property
    def prometheus_series(self) -> tuple[str, ...]:
        """The sample names a scrape shows for it."""
        base = self.prometheus
        if self.kind is Kind.HISTOGRAM:
            return (f"{base}_bucket", f"{base}_sum", f"{base}_count")
        if self.kind in (Kind.COUNTER, Kind.OBSERVED_COUNTER):
            return (f"{base}_total",)
        return (base,)

    @property
    def prometheus_labels(self) -> tuple[str, ...]:
        return tuple(label.replace(".", "_") for label in self.labels)


# ---------------------------------------------------------------------------- label values
# rpc.response.status_code: the gRPC status code name ("OK", "INVALID_ARGUMENT", ...).
# phase: one of JOB_PHASES. state (jobs): SUCCEEDED, FAILED or CANCELLED. state (pools): one of
# POOL_STATES. state (breaker): CLOSED, OPEN or HALF_OPEN. pool: a backend's name, or
# COMPILE_POOL for the compile workers. tenant: capped (OTHER_TENANT beyond the cap).
JOB_PHASES = ("queue", "transpile", "execute", "total")
POOL_STATES = ("in_use", "idle", "waiting")
BREAKER_STATES = ("CLOSED", "OPEN", "HALF_OPEN")
COMPILE_POOL = "compile"

# ---------------------------------------------------------------------------- RPCs
RPC_SERVER_DURATION = MetricName(
    # The RPC semantic conventions' own metric and attribute names.
    "rpc.server.call.duration",
    Kind.HISTOGRAM,
    "s",
    ("rpc.system.name", "rpc.method", "rpc.response.status_code"),
    "Duration of qgateway.v1 RPCs as the server saw them, by method and status code "
    "(health and reflection excluded).",
)

# ---------------------------------------------------------------------------- jobs
JOBS_SUBMITTED = MetricName(
    "qgateway.jobs.submitted",
    Kind.COUNTER,
    "{job}",
    ("tenant", "backend"),
    "Jobs accepted (durably queued), by tenant and the backend they were placed on.",
)
JOBS_FINISHED = MetricName(
    "qgateway.jobs.finished",
    Kind.COUNTER,
    "{job}",
    ("tenant", "backend", "state"),
    "Jobs that reached a final state (SUCCEEDED, FAILED, CANCELLED), by tenant and backend.",
)
JOBS_REFUSED = MetricName(
    "qgateway.jobs.refused",
    Kind.COUNTER,
    "{job}",
    ("rpc.method", "rpc.response.status_code"),
    "SubmitJob/Run calls answered with an error, so no job was created or found "
    "(quota, full queue, open breaker, bad circuit, unauthenticated...); a call its caller "
    "cancelled is not counted.",
)
JOB_PHASE_DURATION = MetricName(
    "qgateway.job.phase.duration",
    Kind.HISTOGRAM,
    "s",
    ("phase", "backend"),
    "Time a finished job spent per phase: queue, transpile, execute, and total "
    "(created to final state).",
)
JOB_QUEUE_WAIT = MetricName(
    "qgateway.job.queue.wait",
    Kind.HISTOGRAM,
    "s",
    ("backend",),
    "Time from a job's creation to its start on the backend (recorded when it starts).",
)
JOB_SHOTS = MetricName(
    "qgateway.job.shots",
    Kind.COUNTER,
    "{shot}",
    ("tenant", "backend"),
    "Shots run by finished jobs.",
)
JOB_COST = MetricName(
    "qgateway.job.cost",
    Kind.COUNTER,
    "1",
    ("tenant", "backend", "currency"),
    "Cost of finished jobs, in the backend's price unit (the `currency` label).",
)

# ---------------------------------------------------------------------------- backends
QUEUE_DEPTH = MetricName(
    "qgateway.queue.depth",
    Kind.GAUGE,
    "{job}",
    ("backend",),
    "Jobs waiting in a backend's queue.",
)
JOBS_RUNNING = MetricName(
    "qgateway.jobs.running",
    Kind.GAUGE,
    "{job}",
    ("backend",),
    "Jobs running on a backend now.",
)
POOL_INSTANCES = MetricName(
    "qgateway.pool.instances",
    Kind.GAUGE,
    "{instance}",
    ("pool", "state"),
    "Pool instances (worker processes, provider clients) in use or idle, and callers waiting "
    "for one; pool = backend name or 'compile'.",
)
BREAKER_STATE = MetricName(
    "qgateway.breaker.state",
    Kind.GAUGE,
    "1",
    ("backend", "state"),
    "1 for the breaker's current state (CLOSED, OPEN, HALF_OPEN), 0 for the others.",
)
BREAKER_TRANSITIONS = MetricName(
    "qgateway.breaker.transitions",
    Kind.OBSERVED_COUNTER,
    "{transition}",
    ("backend", "state"),
    "Breaker state changes, by the state entered (counted by the breaker; HALF_OPEN when "
    "first seen after its cool-down).",
)
BACKEND_HEALTH = MetricName(
    "qgateway.backend.health",
    Kind.GAUGE,
    "1",
    ("backend",),
    "1 while the backend's health probe passes (SERVING), else 0.",
)
WORKER_RESTARTS = MetricName(
    "qgateway.worker.restarts",
    Kind.OBSERVED_COUNTER,
    "{restart}",
    ("pool",),
    "Pool instances discarded as broken (crashed, killed, out of memory) and replaced.",
)
PROVIDER_RETRIES = MetricName(
    "qgateway.provider.retries",
    Kind.COUNTER,
    "{retry}",
    ("backend",),
    "Provider calls retried after a transient error.",
)

ALL: tuple[MetricName, ...] = (
    RPC_SERVER_DURATION,
    JOBS_SUBMITTED,
    JOBS_FINISHED,
    JOBS_REFUSED,
    JOB_PHASE_DURATION,
    JOB_QUEUE_WAIT,
    JOB_SHOTS,
    JOB_COST,
    QUEUE_DEPTH,
    JOBS_RUNNING,
    POOL_INSTANCES,
    BREAKER_STATE,
    BREAKER_TRANSITIONS,
    BACKEND_HEALTH,
    WORKER_RESTARTS,
    PROVIDER_RETRIES,
)
