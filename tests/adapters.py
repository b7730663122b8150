"""Adapters in process: compile every PUB's circuit as a compile worker would, then prepare
(and execute, the payload pickled as it travels to a simulator worker)."""

from __future__ import annotations

import pickle
from typing import Any

from gateway.backends.base import AdapterContext, BackendAdapter, CircuitLimits, PreparedJob
from gateway.domain.backends import BackendLimits
from gateway.domain.circuits import EstimatorPub, circuit_field
from gateway.domain.errors import InvalidArgument
from gateway.domain.jobs import EstimatorResult, FloatArray, JobOptions, JobSpec, PubResult
from gateway.runtime.compiler import relocated


def prepare_in_process(adapter: BackendAdapter, spec: JobSpec, seed: int) -> PreparedJob:
    circuits = []
    for index, pub in enumerate(spec.pubs):
        try:
            circuits.append(adapter.compile_circuit(pub.circuit))
        except InvalidArgument as refusal:
            raise relocated(refusal, circuit_field(index, pub)) from None
    return adapter.prepare(spec, seed, circuits)


def execute_in_process(adapter: BackendAdapter, spec: JobSpec, seed: int) -> tuple[PubResult, ...]:
    prepared = prepare_in_process(adapter, spec, seed)
    return adapter.execute(pickle.loads(pickle.dumps(prepared.payload))).result.pubs


def estimate_in_process(adapter: BackendAdapter, pub: EstimatorPub) -> FloatArray:
    """The expectation values of one estimator PUB, run alone with default options (seed 5)."""
    spec = JobSpec(backend=adapter.context.name, pubs=(pub,), options=JobOptions())
    (result,) = execute_in_process(adapter, spec, 5)
    assert isinstance(result, EstimatorResult)
    return result.expectation_values


def adapter_context(name: str, *, max_shots: int = 100_000, **options: Any) -> AdapterContext:
    """An adapter's context for in-process tests: a 1 GiB budget, 64 MiB results."""
    return AdapterContext(
        name=name,
        limits=BackendLimits(
            max_shots=max_shots,
            memory_budget_bytes=1 << 30,
            max_queued_jobs=100,
            max_result_bytes=64 << 20,
        ),
        default_shots=1024,
        circuit_limits=CircuitLimits(),
        options=options,
    )
