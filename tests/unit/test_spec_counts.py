"""The API edge's element counts (codec.check_counts), at and just past each limit: what a job
may hold before anything is paid per element."""

from __future__ import annotations

import pytest
from qgateway.v1 import circuit_pb2, job_pb2

from gateway.api import codec
from gateway.domain.errors import InvalidArgument


def _estimator(
    terms: int, observables: int = 1, qubits: int = 0, names: int = 0
) -> job_pb2.JobSpec:
    pub = circuit_pb2.EstimatorPub(circuit=circuit_pb2.Circuit(qasm3="OPENQASM 3.0;"))
    for _ in range(observables):
        observable = pub.observables.add()
        for _ in range(terms):
            observable.terms.add(pauli="Z", qubits=[0] * qubits)
    pub.parameter_values.parameters.extend(f"p{i}" for i in range(names))
    return job_pb2.JobSpec(backend="aer", pubs=[circuit_pb2.Pub(estimator=pub)])


@pytest.fixture(autouse=True)
def small_limits(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(codec, "MAX_TERMS", 6)
    monkeypatch.setattr(codec, "MAX_SPARSE_QUBITS", 8)
    monkeypatch.setattr(codec, "MAX_PARAMETERS", 4)


@pytest.mark.parametrize(
    ("at_limit", "past_limit", "reason"),
    [
        (_estimator(6), _estimator(7), "TOO_MANY_TERMS"),
        (_estimator(3, observables=2), _estimator(7, observables=1), "TOO_MANY_TERMS"),
        (_estimator(0, observables=6), _estimator(0, observables=7), "TOO_MANY_TERMS"),
        (_estimator(2, qubits=4), _estimator(3, qubits=3), "TOO_MANY_TERMS"),
        (_estimator(1, names=4), _estimator(1, names=5), "TOO_MANY_PARAMETERS"),
    ],
    ids=["terms", "over-observables", "empty-observables", "sparse-qubits", "parameters"],
)
def test_each_count_is_refused_just_past_its_limit(
    at_limit: job_pb2.JobSpec, past_limit: job_pb2.JobSpec, reason: str
) -> None:
    codec.check_counts(at_limit)
    with pytest.raises(InvalidArgument) as refused:
        codec.check_counts(past_limit)
    assert refused.value.reason == reason
    assert refused.value.metadata["limit"] in {"4", "6", "8"}
