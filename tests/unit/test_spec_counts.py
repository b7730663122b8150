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


def _mixed(terms: int) -> job_pb2.JobSpec:
    """An observable of `terms` terms, then an empty one (which counts as one term)."""
    spec = _estimator(terms)
    spec.pubs[0].estimator.observables.add()
    return spec


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
        (_mixed(5), _mixed(6), "TOO_MANY_TERMS"),
        (_estimator(2, qubits=4), _estimator(3, qubits=3), "TOO_MANY_TERMS"),
        (_estimator(1, names=4), _estimator(1, names=5), "TOO_MANY_PARAMETERS"),
    ],
    ids=[
        "terms",
        "over-observables",
        "empty-observables",
        "an-empty-observable-counts-as-one",
        "sparse-qubits",
        "parameters",
    ],
)
def test_each_count_is_refused_just_past_its_limit(
    at_limit: job_pb2.JobSpec, past_limit: job_pb2.JobSpec, reason: str
) -> None:
    codec.check_counts(at_limit)
    with pytest.raises(InvalidArgument) as refused:
        codec.check_counts(past_limit)
    assert refused.value.reason == reason
    assert refused.value.metadata["limit"] in {"4", "6", "8"}


def test_pubs_and_shape_dimensions_are_refused_just_past_their_limits() -> None:
    at_limit = job_pb2.JobSpec(backend="aer", pubs=[circuit_pb2.Pub()] * codec.MAX_PUBS)
    codec.check_counts(at_limit)
    at_limit.pubs.add()
    with pytest.raises(InvalidArgument) as refused:
        codec.check_counts(at_limit)
    assert refused.value.reason == "TOO_MANY_PUBS"
    for field in ("observables_shape", "parameter_values"):
        spec = _estimator(1)
        dims = (
            spec.pubs[0].estimator.observables_shape
            if field == "observables_shape"
            else spec.pubs[0].estimator.parameter_values.shape
        )
        dims.extend([1] * codec.MAX_SHAPE_DIMS)
        codec.check_counts(spec)
        dims.append(1)
        with pytest.raises(InvalidArgument) as refused:
            codec.check_counts(spec)
        assert refused.value.reason in {"INVALID_OBSERVABLE", "INVALID_PARAMETER_VALUES"}
        assert refused.value.metadata["maxDimensions"] == str(codec.MAX_SHAPE_DIMS)
