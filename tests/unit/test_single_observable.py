"""EstimatorPub.single_observable at the API edge: one observable read as Qiskit reads it
(shape ()), where an empty observables_shape is one dimension of len(observables)."""

from __future__ import annotations

import pytest
from qgateway.client import estimator_pub
from qgateway.v1 import job_pb2

from gateway.api.codec import decode_spec
from gateway.domain.circuits import EstimatorPub
from gateway.domain.errors import InvalidArgument

SOURCE = "OPENQASM 3.0;\nqubit[2] q;\n"


def _decoded(pub: job_pb2.JobSpec) -> EstimatorPub:
    decoded = decode_spec(pub).pubs[0]
    assert isinstance(decoded, EstimatorPub)
    return decoded


def _spec(observables: object) -> job_pb2.JobSpec:
    return job_pb2.JobSpec(backend="backends/aer", pubs=[estimator_pub(SOURCE, observables)])


def test_shapes_at_the_edge() -> None:
    assert _decoded(_spec("ZZ")).observables_shape == ()
    assert _decoded(_spec(["ZZ"])).observables_shape == (1,)
    assert _decoded(_spec(["ZZ", "XX"])).observables_shape == (2,)
    assert _decoded(_spec([["ZZ"], ["XX"]])).observables_shape == (2, 1)


@pytest.mark.parametrize("observables", [["ZZ", "XX"], [["ZZ"]]])
def test_single_observable_needs_one_observable_and_no_shape(observables: object) -> None:
    spec = _spec(observables)
    spec.pubs[0].estimator.single_observable = True
    with pytest.raises(InvalidArgument) as refused:
        decode_spec(spec)
    assert refused.value.reason == "INVALID_OBSERVABLE"
    assert "spec.pubs[0].estimator.single_observable" in str(refused.value)
