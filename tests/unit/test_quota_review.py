"""Hostile review of quota and cost accounting: a provider estimator job re-attached after a
restart was charged no per-shot price, a Braket PUB that runs no task was charged its shots, a
simulator job finishing past its time limit was charged past its quota hold. The job core in
process (tests.core_harness): a real SQLite store, a scripted runner, an injected clock."""

from __future__ import annotations

import asyncio
import dataclasses
import math
from collections.abc import Sequence

import pytest

from gateway.backends.base import ExecutionOutcome, PreparedJob
from gateway.backends.runner import ExecutionModel
from gateway.domain.backends import Primitive
from gateway.domain.circuits import (
    Bindings,
    CircuitLanguage,
    CircuitSource,
    EstimatorPub,
    Observable,
    SamplerPub,
)
from gateway.domain.jobs import JobOptions, JobResult, JobSpec
from gateway.domain.pricing import Cost, Price
from gateway.security.tenant_policy import PeriodQuota, Tenant, TenantPolicy
from gateway.store.sqlite import SqliteStore
from tests.core_harness import Core, EchoAdapter, ScriptedRunner, build_core, spec

pytestmark = pytest.mark.anyio

PRICE = Price(per_task=1.0, per_shot=0.5, per_second=0.0, unit="credits")
PRECISION = 0.25  # a sampling estimator runs ceil(1 / 0.25^2) = 16 shots per binding


class SamplingEstimatorAdapter(EchoAdapter):
    """A provider whose estimator samples, counting its shots in the prepared job as
    gateway.backends.ibm.adapter.IbmAdapter.estimator_shots does (about 1/precision^2 shots
    per binding; qiskit adapter's _estimator_task adds them to the job's shots)."""

    def info(self):  # type: ignore[no-untyped-def]
        return dataclasses.replace(
            super().info(), primitives=frozenset({Primitive.SAMPLER, Primitive.ESTIMATOR})
        )

    def prepare(self, spec: JobSpec, seed: int, circuits: Sequence[object]) -> PreparedJob:
        return PreparedJob(
            payload=tuple(circuits), memory_bytes=0, layouts=(), shots=self._shots(spec)
        )

    def _shots(self, spec: JobSpec) -> int:
        shots = 0
        for pub in spec.pubs:
            bindings = math.prod(pub.bindings.shape)
            if isinstance(pub, SamplerPub):
                shots += bindings * (pub.shots or 10)
            else:
                assert pub.precision is not None
                shots += bindings * math.ceil(1.0 / (pub.precision * pub.precision))
        return shots


def sampling_estimator(core: Core, name: str) -> None:
    runtime = core.backends[name]
    runtime.adapter = SamplingEstimatorAdapter(runtime.adapter.context)
    runtime.info = runtime.adapter.info()
    runtime.settings = dataclasses.replace(runtime.settings, price=PRICE)


def estimator_spec(backend: str) -> JobSpec:
    source = CircuitSource(CircuitLanguage.QASM3, "x")
    return JobSpec(
        backend=backend,
        pubs=(
            EstimatorPub(
                source,
                (Observable((("Z", 1.0),)),),
                (),
                Bindings(),
                precision=PRECISION,
            ),
        ),
        options=JobOptions(),
    )


async def test_a_re_attached_sampling_estimator_job_costs_what_it_was_estimated(
    store: SqliteStore,
) -> None:
    runner = ScriptedRunner(slots=1, model=ExecutionModel.REMOTE)
    core = await build_core(store, "memory", {"qpu": runner})
    sampling_estimator(core, "qpu")
    estimate = await core.manager.validate("alice", estimator_spec("qpu"))
    assert estimate.shots == 16 and estimate.cost == Cost(1.0 + 0.5 * 16, "credits")
    # Not restarted, the job costs its estimate.
    plain = await core.submit("alice", estimator_spec("qpu"))
    await core.until("alice", plain.id, "RUNNING")
    runner.succeed(plain.id)
    ran = await core.until("alice", plain.id, "SUCCEEDED")
    assert ran.execution is not None and ran.execution.cost == estimate.cost
    job = await core.submit("alice", estimator_spec("qpu"))
    await core.until("alice", job.id, "RUNNING")
    await core.manager.close()
    again = ScriptedRunner(slots=1, model=ExecutionModel.REMOTE, remote=runner.remote)
    core2 = await build_core(store, "memory", {"qpu": again}, clock=core.clock)
    sampling_estimator(core2, "qpu")
    try:
        await asyncio.wait_for(again.started.wait(), 5)
        assert again.reattached == [job.id]
        again.succeed(job.id)
        done = await core2.until("alice", job.id, "SUCCEEDED")
        assert done.execution is not None and done.execution.usage is not None
        assert done.execution.usage.shots == 16
        assert done.execution.cost == estimate.cost
    finally:
        await core2.manager.close()


# A Braket PUB that writes no bit: no task is created for it (cloud._task_specs), so Braket
# runs and bills none of its shots.
_MEASURED = """OPENQASM 3.0;
include "stdgates.inc";
qubit[1] q;
bit[1] c;
h q[0];
c = measure q;
"""
_UNMEASURED = """OPENQASM 3.0;
include "stdgates.inc";
qubit[1] q;
bit[1] c;
h q[0];
"""


def measured_and_unmeasured() -> JobSpec:
    """A Braket job of a measured PUB of 100 shots and an unmeasured one of 1000."""
    return JobSpec(
        backend="sv1",
        pubs=(
            SamplerPub(CircuitSource(CircuitLanguage.QASM3, _MEASURED), Bindings(), 100),
            SamplerPub(CircuitSource(CircuitLanguage.QASM3, _UNMEASURED), Bindings(), 1000),
        ),
    )


def test_a_braket_pub_that_runs_no_task_charges_no_shots() -> None:
    from gateway.domain.pricing import estimate
    from tests.adapters import prepare_in_process
    from tests.unit.test_braket_cloud import _cloud_adapter

    adapter = _cloud_adapter()
    spec = measured_and_unmeasured()
    prepared = prepare_in_process(adapter, spec, seed=1)
    assert prepared.tasks == 1  # the unmeasured PUB is no task
    price = Price(per_task=0.075, per_shot=0.001, unit="USD")
    # Braket bills one task of 100 shots.
    assert prepared.shots == 100
    cost = estimate(price, prepared.shots, prepared.tasks).cost
    assert cost is not None and cost.amount == pytest.approx(0.075 + 0.1)


class FinishesWhenStoppedRunner(ScriptedRunner):
    """A simulator whose job, stopped at its run-time limit, finishes on its worker first (the
    WorkerPoolRunner lets a job that has run under KILL_AFTER_S finish rather than kill it)."""

    async def cancel(self, handle):  # type: ignore[no-untyped-def]
        self.cancelled.append(handle.job_id)
        if not handle.done.done():
            handle.done.set_result(ExecutionOutcome(JobResult(pubs=()), {}))


async def test_a_simulator_job_is_charged_no_more_than_its_run_time_limit(
    store: SqliteStore,
) -> None:
    limit = 0.02
    runner = FinishesWhenStoppedRunner(slots=1)
    core = await build_core(store, "memory", {"sim": runner})
    runtime = core.backends["sim"]
    runtime.settings = dataclasses.replace(
        runtime.settings, price=Price(per_second=100.0, unit="USD")
    )
    quota = PeriodQuota(cost=1000.0, cost_unit="USD")
    core.manager.policies.load([Tenant("alice", "", TenantPolicy(quota=quota), "e")])
    try:
        job = await core.submit("alice", spec("sim", max_execution_time_s=limit))
        period = TenantPolicy(quota=quota).period(core.clock())
        held = await store.tenant_usage("alice", period.start, period.end)
        assert held.cost_reserved == pytest.approx(100.0 * limit)  # the hold: its limit
        done = await core.until("alice", job.id, "SUCCEEDED")
        assert runner.cancelled == [job.id]  # stopped at its limit, finished first
        assert done.execution is not None and done.execution.usage is not None
        assert done.execution.usage.execution_seconds <= limit
        assert done.execution.cost is not None
        assert done.execution.cost.amount <= 100.0 * limit
    finally:
        await core.manager.close()
