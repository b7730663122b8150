"""Unit tests of gateway.telemetry's metrics: the catalogue matches what the Prometheus exporter
really produces, instruments move with job transitions, the tenant label is capped."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime, timedelta
from types import SimpleNamespace
from typing import cast

import pytest
from opentelemetry.exporter.prometheus import PrometheusMetricReader
from opentelemetry.sdk.metrics import MeterProvider
from prometheus_client import CollectorRegistry, generate_latest

from gateway.domain.jobs import ExecutionInfo, Job, JobState, JobTimings
from gateway.domain.pricing import Cost, Usage
from gateway.jobs.backend import BackendRuntime
from gateway.jobs.hooks import Transition
from gateway.runtime.breaker import BreakerMove, BreakerPolicy, BreakerState, CircuitBreaker
from gateway.telemetry import metric_names as names
from gateway.telemetry.metrics import (
    DURATION_BUCKETS,
    BackendSample,
    GatewayMetrics,
    TenantLabels,
    _Snapshot,
)

T0 = datetime(2026, 1, 1, tzinfo=UTC)


def _metrics(max_tenants: int = 50) -> tuple[GatewayMetrics, CollectorRegistry]:
    registry = CollectorRegistry()
    provider = MeterProvider(metric_readers=[PrometheusMetricReader(registry=registry)])
    return GatewayMetrics(provider.get_meter("test"), max_tenants), registry


def _samples(registry: CollectorRegistry) -> dict[str, float]:
    """name{labels} -> value, for every sample line."""
    out = {}
    for line in generate_latest(registry).decode().splitlines():
        if line and not line.startswith("#"):
            key, _, value = line.rpartition(" ")
            out[key] = float(value)
    return out


def _value(registry: CollectorRegistry, name: str, **labels: str) -> float:
    total = 0.0
    for key, value in _samples(registry).items():
        if key.split("{")[0] == name and all(f'{k}="{v}"' in key for k, v in labels.items()):
            total += value
    return total


def _job(state: JobState, tenant: str = "acme", **kwargs: object) -> Job:
    return Job(
        id="j1",
        tenant=tenant,
        request_id="",
        backend="aer",
        placement="aer",
        state=state,
        created_at=T0,
        num_pubs=1,
        seed=1,
        **kwargs,  # type: ignore[arg-type]
    )


def test_every_catalogued_metric_has_its_documented_prometheus_names() -> None:
    metrics, registry = _metrics()
    # Record each recorded instrument once; observed ones need live state (watched below).
    metrics.record_rpc("qgateway.v1.JobService/Run", "UNAVAILABLE", 0.01, job_known=False)
    metrics.provider_retry("aer")
    started = _job(JobState.RUNNING, started_at=T0 + timedelta(seconds=2))
    metrics.on_transition(Transition(_job(JobState.QUEUED), None, T0))
    metrics.on_transition(Transition(started, JobState.QUEUED, T0))
    done = _job(
        JobState.SUCCEEDED,
        started_at=T0 + timedelta(seconds=2),
        ended_at=T0 + timedelta(seconds=3),
        timings=JobTimings(queued_s=2.0, transpile_s=0.1, execute_s=0.9),
        execution=ExecutionInfo(
            backend="aer", seed=1, usage=Usage(shots=100, execution_seconds=0.9),
            cost=Cost(1.5, "USD"),
        ),
    )  # fmt: skip
    metrics.on_transition(Transition(done, JobState.RUNNING, T0))
    exported = {key.split("{")[0] for key in _samples(registry)}
    observed = {names.QUEUE_DEPTH, names.JOBS_RUNNING, names.POOL_INSTANCES, names.BREAKER_STATE,
                names.BACKEND_HEALTH, names.WORKER_RESTARTS,
                names.BREAKER_TRANSITIONS}  # fmt: skip
    for metric in names.ALL:
        if metric in observed:
            continue
        for series in metric.prometheus_series:
            assert series in exported, series
    assert _value(registry, "qgateway_job_shots_total", tenant="acme", backend="aer") == 100
    assert _value(registry, "qgateway_job_cost_total", currency="USD") == 1.5
    assert _value(registry, "qgateway_job_queue_wait_seconds_sum", backend="aer") == 2.0
    assert _value(registry, "qgateway_job_phase_duration_seconds_sum", phase="total") == 3.0
    assert _value(registry, "qgateway_jobs_refused_total", rpc_response_status_code="UNAVAILABLE")
    assert _value(registry, "qgateway_jobs_finished_total", state="SUCCEEDED") == 1


def test_the_catalogue_spells_prometheus_names_like_the_exporter() -> None:
    assert names.RPC_SERVER_DURATION.prometheus == "rpc_server_call_duration_seconds"
    assert names.JOB_SHOTS.prometheus_series == ("qgateway_job_shots_total",)
    assert names.QUEUE_DEPTH.prometheus_series == ("qgateway_queue_depth",)
    assert names.RPC_SERVER_DURATION.prometheus_labels == (
        "rpc_system_name",
        "rpc_method",
        "rpc_response_status_code",
    )
    assert len({m.name for m in names.ALL}) == len(names.ALL)


def test_durations_fall_into_the_documented_buckets() -> None:
    # The SDK's default boundaries (0, 5, 10, ... 10000) are meant for milliseconds: in seconds
    # every Run and cached compile would share one bucket. The advisory layout must reach the
    # scrape.
    metrics, registry = _metrics()
    for seconds in (0.0007, 0.02, 4000.0):
        metrics.record_rpc("qgateway.v1.JobService/Run", "OK", seconds, job_known=True)
    bucket = f"{names.RPC_SERVER_DURATION.prometheus}_bucket"
    counts = {
        key.split('le="')[1].split('"')[0]: value
        for key, value in _samples(registry).items()
        if key.startswith(bucket + "{")
    }
    assert list(counts) == [*(str(b) for b in DURATION_BUCKETS), "+Inf"]
    assert (counts["0.0005"], counts["0.001"], counts["0.01"], counts["0.025"]) == (0, 1, 1, 2)
    assert (counts["3600.0"], counts["+Inf"]) == (2, 3)


def test_the_tenant_label_is_capped() -> None:
    labels = TenantLabels(2)
    assert [labels(t) for t in ("a", "b", "c", "a", "d")] == ["a", "b", "other", "a", "other"]
    assert TenantLabels(0)("a") == names.OTHER_TENANT


def test_tenants_beyond_the_cap_share_one_series() -> None:
    metrics, registry = _metrics(max_tenants=1)
    for tenant in ("t1", "t2", "t3"):
        metrics.on_transition(Transition(_job(JobState.QUEUED, tenant=tenant), None, T0))
    assert _value(registry, "qgateway_jobs_submitted_total", tenant="t1") == 1
    assert _value(registry, "qgateway_jobs_submitted_total", tenant="other") == 2
    assert _value(registry, "qgateway_jobs_submitted_total", tenant="t2") == 0


@pytest.mark.parametrize("code", ["OK", "INVALID_ARGUMENT", "CANCELLED"])
def test_only_failed_submissions_count_as_refused(code: str) -> None:
    metrics, registry = _metrics()
    metrics.record_rpc("qgateway.v1.JobService/SubmitJob", code, 0.001, job_known=False)
    metrics.record_rpc("qgateway.v1.JobService/GetJob", "NOT_FOUND", 0.001, job_known=False)
    # Run answered DEADLINE_EXCEEDED once its job existed: the job keeps running.
    metrics.record_rpc("qgateway.v1.JobService/Run", "DEADLINE_EXCEEDED", 0.001, job_known=True)
    refused = _value(registry, "qgateway_jobs_refused_total")
    # A call its caller cancelled is no refusal: its shielded commit may still create the
    # job after it left, counted as submitted (both counted before).
    assert refused == (1 if code == "INVALID_ARGUMENT" else 0)
    assert _value(registry, "rpc_server_call_duration_seconds_count") == 3


def test_breaker_transitions_are_the_breakers_own_count_of_states_entered() -> None:
    # Counted by the breaker: an observer comparing what it saw counted a move twice (a sample
    # and the job's hook) or not at all (a trial failing between two samples).
    metrics, registry = _metrics()
    clock = [0.0]
    breaker = CircuitBreaker(BreakerPolicy(failure_threshold=1, cooldown_s=10), lambda: clock[0])
    metrics.watch({"aer": cast(BackendRuntime, SimpleNamespace(breaker=breaker))}, None)
    permit = breaker.try_dispatch()
    assert permit is not None
    assert breaker.record_failure(permit) == BreakerMove(BreakerState.CLOSED, BreakerState.OPEN)
    assert breaker.state is BreakerState.OPEN and breaker.state is BreakerState.OPEN
    clock[0] += 10
    assert breaker.state is BreakerState.HALF_OPEN and breaker.state is BreakerState.HALF_OPEN
    trial = breaker.try_dispatch()
    assert trial is not None and trial.trial
    breaker.record_success(trial)

    def entered(state: str) -> float:
        return _value(registry, "qgateway_breaker_transitions_total", backend="aer", state=state)

    assert (entered("OPEN"), entered("HALF_OPEN"), entered("CLOSED")) == (1, 1, 1)


def test_finished_jobs_of_tenants_beyond_the_cap_share_one_series() -> None:
    metrics, registry = _metrics(max_tenants=1)
    for tenant in ("t1", "t2", "t3"):
        finished = _job(JobState.SUCCEEDED, tenant=tenant, ended_at=T0)
        metrics.on_transition(Transition(finished, JobState.RUNNING, T0))
    assert _value(registry, "qgateway_jobs_finished_total", tenant="t1") == 1
    assert _value(registry, "qgateway_jobs_finished_total", tenant="other") == 2
    assert _value(registry, "qgateway_jobs_finished_total", tenant="t2") == 0


def test_a_job_placed_on_a_fallback_is_counted_under_the_backend_it_ran_on() -> None:
    metrics, registry = _metrics()
    job = replace(_job(JobState.QUEUED), placement="aer-gpu")
    metrics.on_transition(Transition(job, None, T0))
    ended = replace(job, state=JobState.SUCCEEDED, ended_at=T0)
    metrics.on_transition(Transition(ended, JobState.RUNNING, T0))
    assert _value(registry, "qgateway_jobs_submitted_total", backend="aer-gpu") == 1
    assert _value(registry, "qgateway_jobs_finished_total", backend="aer-gpu") == 1
    assert _value(registry, "qgateway_jobs_finished_total", backend="aer") == 0


def test_the_breaker_state_gauge_is_one_for_the_current_state_only() -> None:
    metrics, registry = _metrics()
    sample = BackendSample(
        queue_depth=0, running=0, in_use=0, idle=0, waiting=0, breaker="OPEN", serving=True,
        discarded=None,
    )  # fmt: skip
    metrics._snapshot = _Snapshot(backends={"aer": sample})
    for state in names.BREAKER_STATES:
        value = _value(registry, "qgateway_breaker_state", backend="aer", state=state)
        assert value == (1 if state == "OPEN" else 0), state
