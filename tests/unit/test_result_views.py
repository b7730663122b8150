"""The stored result split into its samples and counts (views of the stored bytes) and the
rest."""

from __future__ import annotations

import pytest
from qgateway.v1 import job_pb2

from gateway.api.result_views import Split, split_result
from tests.unit.test_result_stream import big_result


def _joined(stored: Split) -> job_pb2.JobResult:
    whole = job_pb2.JobResult()
    whole.CopyFrom(stored.result)
    for pub, registers, counts in zip(
        whole.pub_results, stored.samples, stored.counts, strict=True
    ):
        if not pub.HasField("sampler"):
            assert registers == [] and counts == []
            continue
        for reg, data, tables in zip(pub.sampler.registers, registers, counts, strict=True):
            assert not reg.samples and not reg.counts
            reg.samples = bytes(data)
            reg.counts.extend(job_pb2.Counts.FromString(bytes(t)) for t in tables)
    return whole


def _counts_only() -> job_pb2.JobResult:
    result = job_pb2.JobResult()
    sampler = result.pub_results.add().sampler
    sampler.shots = 3
    reg = sampler.registers.add(name="c", num_bits=2)
    reg.counts.add(outcomes=b"\x00\x03", counts=[1, 2])
    sampler.registers.add(name="empty", num_bits=0)
    return result


@pytest.mark.parametrize("make", [big_result, _counts_only, job_pb2.JobResult])
def test_the_rest_and_the_samples_make_the_result(make: type[job_pb2.JobResult]) -> None:
    result = make()
    data = result.SerializeToString(deterministic=True)
    stored = split_result(data)
    assert _joined(stored) == result
    assert len(stored.samples) == len(stored.counts) == len(result.pub_results)
    views = [v for registers in stored.samples for v in registers]
    views += [v for registers in stored.counts for tables in registers for v in tables]
    for view in views:
        # Slices of the stored bytes, not copies: a stream holds them once.
        assert view.obj is data or len(view) == 0
    stripped = sum(len(v) for v in views)
    assert stored.result.ByteSize() <= len(data) - stripped


def test_a_big_result_keeps_its_samples_and_counts_out_of_the_parse() -> None:
    result = big_result()
    stored = split_result(result.SerializeToString(deterministic=True))
    sampler = result.pub_results[0].sampler
    assert [bytes(v) for v in stored.samples[0]] == [reg.samples for reg in sampler.registers]
    counts = [[job_pb2.Counts.FromString(bytes(t)) for t in r] for r in stored.counts[0]]
    assert counts == [list(reg.counts) for reg in sampler.registers]
    assert not any(reg.counts for reg in stored.result.pub_results[0].sampler.registers)
    assert stored.result.pub_results[2] == result.pub_results[2]  # the estimator PUB, whole


def _field(number: int, payload: bytes) -> bytes:
    assert len(payload) < 128
    return bytes([number << 3 | 2, len(payload)]) + payload


@pytest.mark.parametrize(
    "data",
    [
        # A register with two samples fields: protobuf keeps the last, a canonical store
        # never writes two.
        _field(1, _field(1, _field(3, _field(3, b"ab") + _field(3, b"cd")))),
        # Samples after counts: canonical serialisation writes fields in ascending order.
        _field(1, _field(1, _field(3, _field(4, b"") + _field(3, b"ab")))),
        # Counts after a later field of the sampler (fields past registers are copied whole).
        _field(1, _field(1, _field(4, b"") + _field(3, _field(4, b"")))),
        # A PUB with two sampler fields (merged by protobuf).
        _field(1, _field(1, b"") + _field(1, b"")),
        _field(1, b"\x0a\x05ab"),  # a field longer than its message
        b"\x0a\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\x01",  # a varint of 11 bytes
        b"\x0b",  # a group (wire type 3)
    ],
)
def test_what_a_canonical_store_never_writes_is_refused(data: bytes) -> None:
    with pytest.raises(ValueError):
        split_result(data)
