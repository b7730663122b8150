"""The servicer's spec cache: a repeated spec is digested and decoded once, and what it hands out
equals what the uncached functions give; failures and large specs are never kept."""

from __future__ import annotations

import numpy as np
import pytest
from qgateway.v1 import circuit_pb2, job_pb2

from gateway.api import codec
from gateway.api.request_digest import request_digest
from gateway.api.spec_cache import SpecCache
from gateway.domain.circuits import SamplerPub
from gateway.domain.errors import InvalidArgument
from gateway.domain.jobs import JobSpec

CIRCUIT = 'OPENQASM 3.0;\ninclude "stdgates.inc";\ninput float[64] a;\nqubit[2] q;\nrz(a) q[0];\n'


def spec(shots: int = 100, backend: str = "backends/aer", values: int = 2) -> job_pb2.JobSpec:
    pub = circuit_pb2.Pub(
        sampler=circuit_pb2.SamplerPub(
            circuit=circuit_pb2.Circuit(qasm3=CIRCUIT),
            shots=shots,
            parameter_values=circuit_pb2.BindingsArray(
                parameters=["a"], shape=[values], values=[0.5] * values
            ),
        )
    )
    return job_pb2.JobSpec(backend=backend, pubs=[pub])


class Counting:
    """The real digest and decoder, counting their calls."""

    def __init__(self) -> None:
        self.digests = 0
        self.decodes = 0

    def digest(self, msg: job_pb2.JobSpec) -> bytes:
        self.digests += 1
        return request_digest(msg)

    def decode(self, msg: job_pb2.JobSpec) -> JobSpec:
        self.decodes += 1
        return codec.decode_spec(msg)


def serialized(msg: job_pb2.JobSpec) -> bytes:
    return msg.SerializeToString(deterministic=True)


def test_a_repeated_spec_is_derived_once_and_equals_the_uncached_result() -> None:
    calls = Counting()
    cache = SpecCache(calls.digest, calls.decode)
    for _ in range(3):
        msg = spec()  # a fresh message each time, as each request brings
        data = serialized(msg)
        assert cache.digest(data, msg) == request_digest(msg)
        decoded = cache.decoded(data, msg)
        assert _same_spec(decoded, codec.decode_spec(msg))
    assert (calls.digests, calls.decodes) == (1, 1)
    other = spec(shots=101)
    assert cache.digest(serialized(other), other) == request_digest(other)
    assert cache.decoded(serialized(other), other).pubs[0] != decoded.pubs[0]
    assert (calls.digests, calls.decodes) == (2, 2)


def _same_spec(a: JobSpec, b: JobSpec) -> bool:
    # Bindings hold numpy arrays, whose == is elementwise: compare field by field.
    pa, pb = a.pubs[0], b.pubs[0]
    assert isinstance(pa, SamplerPub) and isinstance(pb, SamplerPub)
    return (
        (a.backend, a.options, a.labels, pa.circuit, pa.shots)
        == (b.backend, b.options, b.labels, pb.circuit, pb.shots)
        and pa.bindings.parameters == pb.bindings.parameters
        and np.array_equal(pa.bindings.values, pb.bindings.values)
    )


def test_a_kept_spec_cannot_be_changed_by_one_job_for_the_next() -> None:
    cache = SpecCache(request_digest, codec.decode_spec)
    msg = spec()
    data = serialized(msg)
    cache.digest(data, msg)
    pub = cache.decoded(data, msg).pubs[0]
    assert isinstance(pub, SamplerPub)
    with pytest.raises(ValueError):
        pub.bindings.values[0] = 7.0


def test_a_spec_that_fails_to_decode_fails_every_time() -> None:
    calls = Counting()
    cache = SpecCache(calls.digest, calls.decode)
    bad = spec(backend="aer")  # a bare id: INVALID_ARGUMENT
    data = serialized(bad)
    for _ in range(2):
        cache.digest(data, bad)
        with pytest.raises(InvalidArgument):
            cache.decoded(data, bad)
    assert (calls.digests, calls.decodes) == (1, 2)


def test_large_specs_and_old_entries_are_not_kept() -> None:
    calls = Counting()
    cache = SpecCache(calls.digest, calls.decode, max_entries=2, max_spec_bytes=400)
    big = spec(values=100)
    assert len(serialized(big)) > 400
    for _ in range(2):
        cache.digest(serialized(big), big)
        cache.decoded(serialized(big), big)
    assert (calls.digests, calls.decodes) == (2, 2)
    specs = [spec(shots=s) for s in (1, 2, 3)]
    for msg in specs:
        cache.digest(serialized(msg), msg)
    calls.digests = 0
    cache.digest(serialized(specs[0]), specs[0])  # pushed out by the third
    cache.digest(serialized(specs[2]), specs[2])  # still kept
    assert calls.digests == 1
