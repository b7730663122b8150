"""Result views over hand-built protos, stream reassembly, and request building.

Expected bitstrings and values are written out by hand (never recomputed by the code under
test): registers a (1 bit), b (3 bits) and c (9 bits), a PUB of shape (2, 3), 2 shots each.
"""

from __future__ import annotations

import asyncio
import hashlib
from datetime import UTC, datetime, timedelta
from types import SimpleNamespace
from typing import Any

import grpc  # type: ignore[import-untyped, unused-ignore]
import numpy as np
import pytest
from google.protobuf import duration_pb2
from google.rpc import error_details_pb2, status_pb2
from qgateway.client import (
    AsyncClient,
    Client,
    bindings_array,
    circuit_from_source,
    estimator_pub,
    observables_from,
    sampler_pub,
)
from qgateway.errors import InternalError, ResultDigestError
from qgateway.results import (
    Cost,
    CostEstimate,
    EstimatorPubResult,
    Job,
    JobResult,
    JobState,
    PackedCounts,
    ResultAssembler,
    SamplerPubResult,
    job_result_from_stream,
)
from qgateway.sessions import Session, SessionState
from qgateway.v1 import circuit_pb2, job_pb2, job_service_pb2, session_pb2

# Per binding (row-major over shape (2, 3)), 2 shots each: 12 rows per register.
A_SAMPLES = bytes([1, 0, 0, 0, 1, 1, 0, 1, 1, 0, 0, 0])
B_SAMPLES = bytes([5, 2, 7, 0, 1, 3, 4, 6, 5, 5, 0, 7])
# 9 bits: two bytes per row, big-endian; the 7 padding bits are the first byte's high bits.
C_SAMPLES = bytes(
    [
        0x01, 0xA5, 0x00, 0x03,  # binding 0: 110100101, 000000011
        0x01, 0x00, 0x00, 0xFF,  # binding 1: 100000000, 011111111
        0x01, 0xFF, 0x00, 0x00,  # binding 2: 111111111, 000000000
        0x01, 0x55, 0x00, 0xAA,  # binding 3: 101010101, 010101010
        0x01, 0xA5, 0x01, 0xA5,  # binding 4: 110100101, 110100101
        0x00, 0x01, 0x01, 0x80,  # binding 5: 000000001, 110000000
    ]
)  # fmt: skip
A_COUNTS = [{"1": 1, "0": 1}, {"0": 2}, {"1": 2}, {"0": 1, "1": 1}, {"1": 1, "0": 1}, {"0": 2}]
B_COUNTS = [
    {"101": 1, "010": 1},
    {"111": 1, "000": 1},
    {"001": 1, "011": 1},
    {"100": 1, "110": 1},
    {"101": 2},
    {"000": 1, "111": 1},
]
C_COUNTS = [
    {"110100101": 1, "000000011": 1},
    {"100000000": 1, "011111111": 1},
    {"111111111": 1, "000000000": 1},
    {"101010101": 1, "010101010": 1},
    {"110100101": 2},
    {"000000001": 1, "110000000": 1},
]


def packed(counts: dict[str, int], bits: int) -> job_pb2.Counts:
    """The wire form of one binding's counts: outcome rows ascending, counts alongside."""
    width = (bits + 7) // 8
    items = sorted((int(key, 2), n) for key, n in counts.items())
    return job_pb2.Counts(
        outcomes=b"".join(v.to_bytes(width, "big") for v, _ in items), counts=[n for _, n in items]
    )


def register(
    name: str, bits: int, samples: bytes, counts: list[dict[str, int]], with_counts: bool = True
) -> job_pb2.RegisterResult:
    return job_pb2.RegisterResult(
        name=name,
        num_bits=bits,
        samples=samples,
        counts=[packed(c, bits) for c in counts] if with_counts else [],
    )


def test_packed_counts_are_bitstrings_in_qiskit_order() -> None:
    # 9 bits in two bytes: 0x01A5 is 110100101 (character 0 is the highest bit).
    msg = job_pb2.Counts(outcomes=bytes([0x00, 0x03, 0x01, 0xA5]), counts=[5, 7])
    counts = PackedCounts.from_proto(msg, 9)
    assert dict(counts) == {"000000011": 5, "110100101": 7}
    assert counts == {"110100101": 7, "000000011": 5} and len(counts) == 2
    with pytest.raises(ValueError, match="outcome bytes"):
        PackedCounts.from_proto(job_pb2.Counts(outcomes=b"\x01", counts=[1, 2]), 9)


def sampler_result(samples: bool = True, counts: bool = True) -> job_pb2.PubResult:
    def s(data: bytes) -> bytes:
        return data if samples else b""

    return job_pb2.PubResult(
        sampler=job_pb2.SamplerPubResult(
            shape=[2, 3],
            shots=2,
            registers=[
                register("a", 1, s(A_SAMPLES), A_COUNTS, counts),
                register("b", 3, s(B_SAMPLES), B_COUNTS, counts),
                register("c", 9, s(C_SAMPLES), C_COUNTS, counts),
            ],
        )
    )


def estimator_result() -> job_pb2.PubResult:
    return job_pb2.PubResult(
        estimator=job_pb2.EstimatorPubResult(
            shape=[3],
            expectation_values=[1.0, -0.5, 0.25],
            standard_errors=[0.0, 0.0125, 0.03],
            precision=0.015625,
        )
    )


def full_result() -> job_pb2.JobResult:
    return job_pb2.JobResult(pub_results=[sampler_result(), estimator_result()])


def test_register_bitstrings_decode_the_packed_rows() -> None:
    pub = JobResult.from_proto(full_result()).sampler(0)
    assert pub.shape == (2, 3)
    assert pub.shots == 2
    assert pub.register_names == ["a", "b", "c"]
    assert pub["a"].bitstrings(0) == ["1", "0"]
    assert pub["b"].bitstrings(0) == ["101", "010"]
    assert pub["c"].bitstrings(0) == ["110100101", "000000011"]
    assert pub["c"].bitstrings((0, 1)) == ["100000000", "011111111"]
    assert pub["c"].bitstrings((1, 0)) == ["101010101", "010101010"]
    assert pub["c"].bitstrings((1, 2)) == ["000000001", "110000000"]
    assert pub["c"].bitstrings(-1) == ["000000001", "110000000"]
    assert pub["c"].bitstrings((-1, -2)) == ["110100101", "110100101"]  # (1, 1): flat 4
    assert pub["c"].bitstrings((-2, 2)) == ["111111111", "000000000"]  # (0, 2): flat 2
    assert pub["c"].ints(5) == [1, 384]
    assert pub["c"].get_int_counts(5) == {1: 1, 384: 1}


def test_a_whole_byte_register_has_no_padding_byte() -> None:
    # 8 and 16 bits fill their bytes: one and two bytes per shot, no extra byte.
    msg = job_pb2.SamplerPubResult(
        shots=2,
        registers=[
            register("m", 8, bytes([0xFF, 0x01]), [{"11111111": 1, "00000001": 1}]),
            register("w", 16, bytes([0x80, 0x01, 0x00, 0x02]), [], with_counts=False),
        ],
    )
    pub = SamplerPubResult.from_proto(msg)
    assert pub["m"].num_bytes == 1 and pub["w"].num_bytes == 2
    assert pub["m"].bitstrings() == ["11111111", "00000001"]
    assert pub["w"].bitstrings() == ["1000000000000001", "0000000000000010"]
    assert pub.counts(register="w") == {"1000000000000001": 1, "0000000000000010": 1}


def test_padding_bits_and_empty_registers() -> None:
    # A producer that left padding bits set (0xFD: 11111 101) cannot widen a 3-bit outcome;
    # a register of no bits has empty outcomes, not "no samples".
    msg = job_pb2.SamplerPubResult(
        shots=2,
        registers=[
            register("p", 3, bytes([0xFD, 0xFA]), [], with_counts=False),
            register("z", 0, b"", [], with_counts=False),
        ],
    )
    pub = SamplerPubResult.from_proto(msg)
    assert pub["p"].ints() == [5, 2]
    assert pub["p"].bitstrings() == ["101", "010"]
    assert pub["z"].has_samples and pub["z"].bitstrings() == ["", ""]
    assert pub["z"].counts() == {"": 2}


def test_counts_for_too_few_bindings_are_refused() -> None:
    msg = job_pb2.SamplerPubResult(
        shape=[2], shots=1, registers=[register("b", 1, b"", [{"1": 1}], with_counts=True)]
    )
    with pytest.raises(ValueError, match="1 counts entries for 2 bindings"):
        SamplerPubResult.from_proto(msg)["b"].counts(0)


def test_counts_from_samples_match_the_gateway_counts() -> None:
    with_counts = SamplerPubResult.from_proto(sampler_result().sampler)
    from_samples = SamplerPubResult.from_proto(sampler_result(counts=False).sampler)
    for name, expected in (("a", A_COUNTS), ("b", B_COUNTS), ("c", C_COUNTS)):
        for flat in range(6):
            assert with_counts[name].counts(flat) == expected[flat]
            assert from_samples[name].counts(flat) == expected[flat]


def test_joint_counts_put_the_last_declared_register_first() -> None:
    result = JobResult.from_proto(full_result())
    assert result.sampler(0).bitstrings(0) == ["110100101 101 1", "000000011 010 0"]
    assert result.counts() == {"110100101 101 1": 1, "000000011 010 0": 1}
    assert result.counts(index=(1, 1)) == {"110100101 101 1": 1, "110100101 101 0": 1}
    assert result.counts(index=(1, 2)) == {"000000001 000 0": 1, "110000000 111 0": 1}
    assert result.counts(register="b", index=(0, 2)) == {"001": 1, "011": 1}
    assert result.sampler(0).get_int_counts(4) == {0b1101001011011: 1, 0b1101001011010: 1}


def test_counts_only_needs_a_register_name() -> None:
    result = JobResult.from_proto(job_pb2.JobResult(pub_results=[sampler_result(samples=False)]))
    with pytest.raises(ValueError, match="counts only") as info:
        result.counts()
    assert "register" in str(info.value)
    assert result.counts(register="c", index=4) == {"110100101": 2}
    with pytest.raises(ValueError, match="counts only"):
        result.sampler(0)["a"].bitstrings(0)


def test_single_register_counts_need_no_name() -> None:
    pub = job_pb2.PubResult(
        sampler=job_pb2.SamplerPubResult(
            shots=3, registers=[register("meas", 2, bytes([3, 0, 3]), [{"11": 2, "00": 1}])]
        )
    )
    result = JobResult.from_proto(job_pb2.JobResult(pub_results=[pub]))
    assert result.counts() == {"11": 2, "00": 1}
    assert result.sampler(0).bitstrings() == ["11", "00", "11"]


def test_bad_indexes_and_kinds() -> None:
    result = JobResult.from_proto(full_result())
    with pytest.raises(IndexError):
        result.counts(index=6)
    with pytest.raises(IndexError):
        result.counts(index=(2, 0))
    with pytest.raises(IndexError):
        result.counts(index=(1,))
    with pytest.raises(KeyError):
        result.counts(register="nope")
    with pytest.raises(TypeError):
        result.counts(pub=1)
    with pytest.raises(TypeError):
        result.estimator(0)


def test_session_from_proto() -> None:
    msg = session_pb2.Session(
        name="sessions/s1",
        backend="backends/aer",
        state=session_pb2.SESSION_STATE_FAILED,
        max_ttl=duration_pb2.Duration(seconds=60),
        idle_ttl=duration_pb2.Duration(seconds=1, nanos=500_000_000),
    )
    session = Session.from_proto(msg)
    assert session.state is SessionState.FAILED and session.state.is_final
    assert session.max_ttl == 60.0 and session.idle_ttl == 1.5
    assert SessionState.CLOSED.is_final
    assert not SessionState.ACTIVE.is_final and not SessionState.CLOSING.is_final


def test_estimator_result() -> None:
    est = JobResult.from_proto(full_result()).estimator(1)
    assert isinstance(est, EstimatorPubResult)
    assert est.shape == (3,)
    assert est.expectation_values == [1.0, -0.5, 0.25]
    assert est.standard_errors == [0.0, 0.0125, 0.03]
    assert est.expectation_value(1) == -0.5
    assert est.standard_error((2,)) == 0.03
    assert est.precision == 0.015625


def test_job_from_proto() -> None:
    msg = job_pb2.Job(
        name="jobs/j7",
        tenant="default",
        backend="backends/aer",
        state=job_pb2.JOB_STATE_SUCCEEDED,
        create_time=datetime(2025, 1, 2, 3, 4, 5, tzinfo=UTC),
        execution=job_pb2.ExecutionInfo(
            backend="backends/aer",
            seed=0,  # 0 is a seed, not "unset"
            sdk_versions={"qiskit": "2.6.2"},
            layouts=[job_pb2.Layout(physical_qubits=[2, 0, 1])],
            attempts=1,
        ),
        timings=job_pb2.JobTimings(execute=timedelta(milliseconds=1500)),
        num_pubs=2,
    )
    job = Job.from_proto(msg)
    assert job.id == "j7"
    assert job.state is JobState.SUCCEEDED and job.done
    assert job.create_time == datetime(2025, 1, 2, 3, 4, 5, tzinfo=UTC)
    assert job.start_time is None
    assert job.execution is not None
    assert job.execution.seed == 0
    assert job.execution.layouts == [[2, 0, 1]]
    assert job.timings is not None
    assert job.timings.execute == timedelta(seconds=1.5)
    assert job.timings.queued is None
    assert job.result is None

    error = status_pb2.Status(code=grpc.StatusCode.INTERNAL.value[0], message="killed")
    error.details.add().Pack(
        error_details_pb2.ErrorInfo(
            reason="WORKER_CRASHED", domain="qgateway.dev", metadata={"pubIndex": "1"}
        )
    )
    failed = Job.from_proto(
        job_pb2.Job(
            name="jobs/j8",
            state=job_pb2.JOB_STATE_FAILED,
            error=error,
            execution=job_pb2.ExecutionInfo(backend="backends/aer"),
        )
    )
    assert failed.state == "FAILED"
    assert failed.error_reason == "WORKER_CRASHED"
    assert failed.error_message == "killed"
    assert isinstance(failed.error, InternalError)
    assert failed.error.code is grpc.StatusCode.INTERNAL
    assert (failed.error.reason, failed.error.domain) == ("WORKER_CRASHED", "qgateway.dev")
    assert (failed.error.message, failed.error.metadata) == ("killed", {"pubIndex": "1"})
    assert job.error is None
    assert failed.execution is not None and failed.execution.seed is None
    assert failed.result is None
    assert JobState.parse("running") is JobState.RUNNING
    assert JobState.from_proto(99) is JobState.UNSPECIFIED


# --- Streaming --------------------------------------------------------------------------------

Resp = job_service_pb2.StreamJobResultResponse


def header(pub: job_pb2.PubResult) -> job_pb2.PubResult:
    out = job_pb2.PubResult()
    out.CopyFrom(pub)
    if out.HasField("sampler"):
        for reg in out.sampler.registers:
            reg.ClearField("samples")
            reg.ClearField("counts")
    else:
        out.estimator.ClearField("expectation_values")
        out.estimator.ClearField("standard_errors")
    return out


def samples(
    pub: int, reg: int, offset: int, data: bytes
) -> job_service_pb2.StreamJobResultResponse:
    return Resp(
        pub_index=pub,
        samples=job_service_pb2.SamplesChunk(register_index=reg, offset=offset, data=data),
    )


def counts(
    pub: int, reg: int, binding: int, entries: dict[str, int], bits: int, offset: int = 0
) -> job_service_pb2.StreamJobResultResponse:
    return Resp(
        pub_index=pub,
        counts=job_service_pb2.CountsChunk(
            register_index=reg, binding_index=binding, offset=offset, counts=packed(entries, bits)
        ),
    )


def digest(result: job_pb2.JobResult) -> job_service_pb2.StreamJobResultResponse:
    data = result.SerializeToString(deterministic=True)
    return Resp(digest=job_service_pb2.ResultDigest(sha256=hashlib.sha256(data).digest()))


def counts_chunks() -> list[job_service_pb2.StreamJobResultResponse]:
    out = []
    for r, (bits, per_binding) in enumerate(((1, A_COUNTS), (3, B_COUNTS), (9, C_COUNTS))):
        for b, entries in enumerate(per_binding):
            out.append(counts(0, r, b, entries, bits))
    # Register c's binding 3 in two slices: its outcomes 010101010 and 101010101 ascending.
    index = 12 + 3
    out[index : index + 1] = [
        counts(0, 2, 3, {"010101010": 1}, 9, offset=0),
        counts(0, 2, 3, {"101010101": 1}, 9, offset=1),
    ]
    return out


def chunked_stream() -> list[job_service_pb2.StreamJobResultResponse]:
    """The full result's messages (data in any order within a PUB), digest last."""
    return [
        Resp(pub_index=0, header=header(sampler_result())),
        samples(0, 0, 0, A_SAMPLES),
        samples(0, 1, 6, B_SAMPLES[6:]),  # out of order within the register
        samples(0, 1, 0, B_SAMPLES[:6]),
        samples(0, 2, 0, C_SAMPLES[:10]),
        samples(0, 2, 10, C_SAMPLES[10:20]),
        samples(0, 2, 20, C_SAMPLES[20:]),
        *counts_chunks(),
        Resp(pub_index=1, header=header(estimator_result())),
        Resp(
            pub_index=1,
            values=job_service_pb2.EstimatorValuesChunk(
                offset=0, expectation_values=[1.0, -0.5], standard_errors=[0.0, 0.0125]
            ),
        ),
        Resp(
            pub_index=1,
            values=job_service_pb2.EstimatorValuesChunk(
                offset=2, expectation_values=[0.25], standard_errors=[0.03]
            ),
        ),
        digest(full_result()),
    ]


def test_stream_reassembles_the_full_message() -> None:
    assembler = ResultAssembler()
    for response in chunked_stream():
        assembler.add(response)
    assert assembler.complete
    assert assembler.proto() == full_result()
    result = job_result_from_stream(chunked_stream())
    assert result == JobResult.from_proto(full_result())
    assert result.sampler(0)["c"].bitstrings((1, 2)) == ["000000001", "110000000"]
    assert result.counts(index=(1, 1)) == {"110100101 101 1": 1, "110100101 101 0": 1}
    assert result.counts(register="c", index=3) == {"101010101": 1, "010101010": 1}


def test_stream_of_counts_only_result() -> None:
    without_samples = job_pb2.JobResult(
        pub_results=[sampler_result(samples=False), estimator_result()]
    )
    stream = [r for r in chunked_stream()[:-1] if r.WhichOneof("chunk") != "samples"]
    result = job_result_from_stream([*stream, digest(without_samples)])
    assert result.sampler(0)["c"].samples == b""
    assert result.counts(register="a", index=2) == {"1": 2}


def test_stream_of_samples_only_result() -> None:
    without_counts = job_pb2.JobResult(
        pub_results=[sampler_result(counts=False), estimator_result()]
    )
    stream = [r for r in chunked_stream()[:-1] if r.WhichOneof("chunk") != "counts"]
    result = job_result_from_stream([*stream, digest(without_counts)])
    assert result.sampler(0)["c"].counts_by_binding == ()
    # Counted from the samples instead.
    assert result.counts(register="c", index=3) == {"101010101": 1, "010101010": 1}


def test_a_result_that_does_not_match_its_digest_is_refused() -> None:
    tampered = chunked_stream()
    # One shot of register a flipped: still a well-formed result, just not the gateway's.
    tampered[1] = samples(0, 0, 0, bytes([0]) + A_SAMPLES[1:])
    with pytest.raises(ResultDigestError) as info:
        job_result_from_stream(tampered)
    err = info.value
    assert err.reason == "RESULT_DIGEST_MISMATCH"
    assert err.code is grpc.StatusCode.DATA_LOSS
    assert err.expected == chunked_stream()[-1].digest.sha256
    assert err.metadata["expectedSha256"] == err.expected.hex()


def _position(response: job_service_pb2.StreamJobResultResponse) -> tuple[int, int] | None:
    """Where a message sits in binding-major order (None for the digest)."""
    kind = response.WhichOneof("chunk")
    if kind == "header":
        return (response.pub_index, -1)
    if kind == "samples":
        return (
            response.pub_index,
            response.samples.offset // 2 // (1, 1, 2)[response.samples.register_index],
        )
    if kind == "counts":
        return (response.pub_index, response.counts.binding_index)
    if kind == "values":
        return (response.pub_index, response.values.offset)
    return None


def binding_major_stream() -> list[job_service_pb2.StreamJobResultResponse]:
    """The gateway's order: per PUB its header, then binding by binding (per register its
    samples, then its counts)."""
    out = [Resp(pub_index=0, header=header(sampler_result()))]
    chunks = counts_chunks()
    for b in range(6):
        for r, (data, row) in enumerate(((A_SAMPLES, 1), (B_SAMPLES, 1), (C_SAMPLES, 2))):
            out.append(samples(0, r, b * 2 * row, data[b * 2 * row : (b + 1) * 2 * row]))
            out.extend(
                c for c in chunks if c.counts.register_index == r and c.counts.binding_index == b
            )
    out.extend(chunked_stream()[-4:])  # the estimator PUB and the digest
    return out


@pytest.mark.parametrize("cut", range(1, 42))
def test_a_broken_stream_resumes_from_the_binding_it_was_in(cut: int) -> None:
    full = binding_major_stream()
    assert len(full) == 42  # every cut but "nothing yet" and "all of it"
    assembler = ResultAssembler()
    for response in full[:cut]:
        assembler.add(response)
    pub, binding = assembler.resume_position()
    # The gateway's answer to the resumed request: the PUB's header again, then from the
    # binding on (a later PUB from its start).
    resumed = [Resp(pub_index=pub, header=full[0].header if pub == 0 else full[-4].header)]
    for response in full[:-1]:
        position = _position(response)
        assert position is not None
        if position[1] < 0:  # a header: later PUBs' come again
            if position[0] > pub:
                resumed.append(response)
        elif position >= (pub, binding):
            resumed.append(response)
    resumed.append(full[-1])
    for response in resumed:
        assembler.add(response)
    assert assembler.proto() == full_result()


def test_a_stream_broken_in_estimator_values_resumes_at_their_offset() -> None:
    # Not from the PUB's first value: resuming a large PUB's values from the start every time
    # never counts as progress, so breaks a few streams apart would end the fetch.
    full = chunked_stream()
    assembler = ResultAssembler()
    for response in full[:-1]:  # up to the values chunk at offset 2, no digest
        assembler.add(response)
    assert assembler.resume_position() == (1, 2)
    assembler.add(full[-2])  # the gateway's answer from value 2 on
    assembler.add(full[-1])
    assert assembler.proto() == full_result()


def test_resuming_a_complete_stream_is_an_error() -> None:
    assembler = ResultAssembler()
    for response in chunked_stream():
        assembler.add(response)
    with pytest.raises(ValueError, match="complete"):
        assembler.resume_position()


@pytest.mark.parametrize(
    "broken",
    [
        # A samples chunk lost in the middle of register c.
        [r for i, r in enumerate(chunked_stream()) if i != 5],
        # One binding's counts missing (register a, binding 3).
        [
            r
            for r in chunked_stream()
            if not (r.HasField("counts") and r.counts.register_index == 0)
            or r.counts.binding_index != 3
        ],
        # The second slice of a split binding missing: its counts do not add up to the shots.
        [
            r
            for r in chunked_stream()
            if not (r.HasField("counts") and r.counts.register_index == 2 and r.counts.offset == 1)
        ],
        # A gap between slices.
        [*chunked_stream()[:-1], counts(0, 2, 3, {"111111111": 1}, 9, offset=5)],
        # Outcome bytes that do not divide into rows.
        [
            *chunked_stream()[:-1],
            Resp(
                pub_index=0,
                counts=job_service_pb2.CountsChunk(
                    register_index=2,
                    binding_index=0,
                    counts=job_pb2.Counts(outcomes=b"\x01", counts=[1]),
                ),
            ),
        ],
        # Counts of a binding past the PUB's shape.
        [*chunked_stream()[:-1], counts(0, 0, 6, {"1": 2}, 1)],
        # Data before its header.
        chunked_stream()[1:],
        # Headers out of order.
        [chunked_stream()[-4], *chunked_stream()[:-4]],
        # Bytes beyond the register's size.
        [*chunked_stream()[:2], samples(0, 0, 12, b"\x01")],
        # No digest at the end.
        chunked_stream()[:-1],
        # Data after the digest.
        [*chunked_stream(), samples(0, 0, 0, A_SAMPLES)],
        # Nothing at all.
        [],
    ],
)
def test_malformed_streams_are_refused(
    broken: list[job_service_pb2.StreamJobResultResponse],
) -> None:
    with pytest.raises(ValueError, match="malformed result stream"):
        job_result_from_stream(broken)


# --- Request building -------------------------------------------------------------------------


def test_language_detection() -> None:
    assert circuit_from_source("OPENQASM 2.0;\nqreg q[1];").WhichOneof("source") == "qasm2"
    commented = "// a Bell pair\n/* old\n style */\n  OPENQASM 2.0;"
    assert circuit_from_source(commented).WhichOneof("source") == "qasm2"
    assert circuit_from_source("OPENQASM 3.0;\nqubit q;").WhichOneof("source") == "qasm3"
    assert circuit_from_source("qubit q;").WhichOneof("source") == "qasm3"
    assert circuit_from_source("// OPENQASM 2.0;\nOPENQASM 3;").WhichOneof("source") == "qasm3"


def test_bindings_array_shapes() -> None:
    single = bindings_array([0.1, 0.2], ["a", "b"])
    assert single == circuit_pb2.BindingsArray(parameters=["a", "b"], shape=[], values=[0.1, 0.2])
    sweep = bindings_array([[[0, 1], [2, 3], [4, 5]], [[6, 7], [8, 9], [10, 11]]])
    assert sweep is not None
    assert list(sweep.shape) == [2, 3]
    assert list(sweep.values) == [float(v) for v in range(12)]
    assert bindings_array(0.5) == circuit_pb2.BindingsArray(values=[0.5])
    assert bindings_array(None) is None
    with pytest.raises(ValueError, match="no parameter_values"):
        bindings_array(None, ["a"])  # names without values: not silently an unbound circuit
    with pytest.raises(ValueError, match="ragged"):
        bindings_array([[0.1, 0.2], [0.3]])
    with pytest.raises(ValueError):
        bindings_array([0.1, 0.2], ["only_one"])
    with pytest.raises(TypeError):
        bindings_array([[True, 0.2]])


def test_an_array_of_no_bindings_is_refused_not_sent_as_no_parameters() -> None:
    import numpy as np

    for empty in (np.zeros((0, 1)), np.zeros((2, 0, 3))):
        with pytest.raises(ValueError, match="no bindings"):
            bindings_array(empty)
    one = bindings_array(np.zeros((1, 2)))
    assert one is not None and list(one.shape) == [1] and len(one.values) == 2


def test_observables_forms() -> None:
    def terms(
        array: tuple[list[circuit_pb2.Observable], tuple[int, ...]],
    ) -> list[list[tuple[str, float]]]:
        return [[(t.pauli, t.coefficient) for t in o.terms] for o in array[0]]

    assert terms(observables_from("IZ")) == [[("IZ", 1.0)]]
    assert terms(observables_from(["ZZ", "XX"])) == [[("ZZ", 1.0)], [("XX", 1.0)]]
    assert terms(observables_from(("ZZ", 0.5))) == [[("ZZ", 0.5)]]
    assert terms(observables_from([[("ZZ", 0.5), ("XX", -0.5)], "YY"])) == [
        [("ZZ", 0.5), ("XX", -0.5)],
        [("YY", 1.0)],
    ]
    assert terms(observables_from({"ZI": 2.0, "IZ": 1.0})) == [[("ZI", 2.0), ("IZ", 1.0)]]
    with pytest.raises(ValueError):
        observables_from([])
    with pytest.raises(ValueError):
        observables_from([("ZZ", 1j)])


def test_observables_as_qiskit_writes_them() -> None:
    """Hermitian operators Qiskit's estimator takes were refused: a product whose iY and -iY
    terms cancel (each refused alone), a coefficient with a rounding-sized imaginary part, the
    sparse identity ("", [], c) from_sparse_list writes, and a Pauli object."""
    from qiskit.quantum_info import Pauli, SparsePauliOp

    def terms(
        array: tuple[list[circuit_pb2.Observable], tuple[int, ...]],
    ) -> list[list[tuple[str, list[int], float]]]:
        return [[(t.pauli, list(t.qubits), t.coefficient) for t in o.terms] for o in array[0]]

    square = SparsePauliOp(["Z", "X"]) @ SparsePauliOp(["Z", "X"])  # 2 I, unsimplified
    assert terms(observables_from(square)) == [[("I", [], 2.0)]]
    rounded = SparsePauliOp(["X", "Z"], [0.5 + 1e-17j, 0.5])
    assert terms(observables_from(rounded)) == [[("X", [], 0.5), ("Z", [], 0.5)]]
    sparse = [("", [], -0.5), ("ZZ", [0, 1], 1.0)]
    assert terms(observables_from([sparse])) == [[("I", [0], -0.5), ("ZZ", [0, 1], 1.0)]]
    assert terms(observables_from(Pauli("-XZ"))) == [[("XZ", [], -1.0)]]
    assert terms(observables_from([Pauli("XX"), "ZZ"])) == [[("XX", [], 1.0)], [("ZZ", [], 1.0)]]
    with pytest.raises(ValueError, match="not real"):
        observables_from(Pauli("iXZ"))
    with pytest.raises(ValueError, match="not real"):
        observables_from(SparsePauliOp(["X"], [0.5 + 1e-9j]))
    # Simplified at a tolerance relative to the operator: an absolute 1e-8 dropped every term
    # of a Hamiltonian in SI units, which was then sent as 0 * I.
    si = SparsePauliOp(["ZZ", "XI", "IZ", "ZZ"], [3e-22, -1.1e-22, 0.5e-22, 1e-22])
    assert terms(observables_from(si)) == [
        [("ZZ", [], 4e-22), ("XI", [], -1.1e-22), ("IZ", [], 5e-23)]
    ]
    tiny_square = SparsePauliOp(["Z", "X"], [1e-22, 1e-22]) @ SparsePauliOp(
        ["Z", "X"], [1e-22, 1e-22]
    )
    [[(pauli, qubits, coefficient)]] = terms(observables_from(tiny_square))  # iY, -iY cancel
    assert (pauli, qubits) == ("I", []) and coefficient == pytest.approx(2e-44, rel=1e-12, abs=0)
    # At unit scale it drops what Qiskit's own simplify drops.
    assert terms(observables_from(SparsePauliOp(["Z", "X"], [1.0, 1e-9]))) == [[("Z", [], 1.0)]]


def test_nested_observables_are_arrays_as_in_qiskit() -> None:
    """Qiskit reads [["ZZ", "XX"]] as a 1x2 array of observables; the client read it as one
    observable ZZ + XX (other numbers without a word), then refused it. Nested lists and numpy
    arrays are arrays of their shape; a list of (pauli, coefficient) tuples stays one
    observable, which Qiskit has no other reading of."""
    import numpy as np
    from qiskit.quantum_info import Pauli, SparsePauliOp

    def paulis(obs: list[circuit_pb2.Observable]) -> list[list[str]]:
        return [[t.pauli for t in o.terms] for o in obs]

    for nested, shape, expected in (
        ([["ZZ", "XX"]], (1, 2), [["ZZ"], ["XX"]]),
        ([["ZZ"], ["XX"]], (2, 1), [["ZZ"], ["XX"]]),
        ([[SparsePauliOp("ZZ"), Pauli("XX")]], (1, 2), [["ZZ"], ["XX"]]),
        ([[{"ZZ": 1.0}], [[("XX", 0.5), ("YY", 0.5)]]], (2, 1), [["ZZ"], ["XX", "YY"]]),
        (np.array([["ZZ", "XX"], ["YY", "ZI"]]), (2, 2), [["ZZ"], ["XX"], ["YY"], ["ZI"]]),
        ([[["Z"], ["X"]]], (1, 2, 1), [["Z"], ["X"]]),
        (np.array(["ZZ", "XX"]), (2,), [["ZZ"], ["XX"]]),
        (np.array("ZZ"), (), [["ZZ"]]),
    ):
        flat, got = observables_from(nested)  # type: ignore[arg-type]
        assert (paulis(flat), got) == (expected, shape), nested
    for ragged in ([["ZZ"], ["XX", "YY"]], [["ZZ"], "XX"]):
        with pytest.raises(ValueError, match="not rectangular"):
            observables_from(ragged)
    with pytest.raises(ValueError, match="every dimension"):
        observables_from([[]])
    with pytest.raises(TypeError):
        observables_from([["ZZ", 0.5]])  # a term is a tuple; this is a row holding 0.5
    pub = estimator_pub("qubit q;", [["Z", "X"], ["Y", "Z"], ["X", "X"]]).estimator
    assert list(pub.observables_shape) == [3, 2] and len(pub.observables) == 6
    assert list(estimator_pub("qubit q;", ["Z", "X"]).estimator.observables_shape) == []
    # One observable is Qiskit's shape (), a list of one an array of shape (1,).
    assert estimator_pub("qubit q;", "Z").estimator.single_observable
    assert not estimator_pub("qubit q;", ["Z"]).estimator.single_observable


def test_numpy_scalars_are_numbers_in_parameter_values_and_terms() -> None:
    """Lists built from an array's elements hold numpy scalars (np.float32 and np.int64 are not
    float/int subclasses): they were refused as 'not a number'."""
    message = bindings_array([[np.float32(0.5)], [np.int64(3)]])
    assert message is not None
    assert list(message.shape) == [2] and list(message.values) == [0.5, 3.0]
    (observable,), _ = observables_from(
        [[("ZZ", np.float32(0.5)), ("XX", np.complex64(2)), ("Z", [np.int64(1)], np.float64(3))]]
    )
    assert [(t.pauli, t.coefficient, list(t.qubits)) for t in observable.terms] == [
        ("ZZ", 0.5, []),
        ("XX", 2.0, []),
        ("Z", 3.0, [1]),
    ]
    with pytest.raises(ValueError, match="not real"):
        observables_from([[("ZZ", np.complex64(1 + 1j))]])
    with pytest.raises(TypeError):
        bindings_array([[np.bool_(True)]])


def test_the_async_client_validates_as_the_sync_one() -> None:
    """AsyncClient had no validate, though the README documents client.validate(...)."""
    answer = job_service_pb2.SubmitJobResponse(
        cost_estimate=job_pb2.CostEstimate(shots=300, cost=job_pb2.Cost(amount=0.5, unit="USD"))
    )
    sent: list[job_service_pb2.SubmitJobRequest] = []

    def submit(request: Any, timeout: float | None = None, metadata: Any = None) -> Any:
        sent.append(request)
        return answer

    async def async_submit(request: Any, timeout: float | None = None, metadata: Any = None) -> Any:
        return submit(request)

    pubs = [sampler_pub("OPENQASM 3.0;", shots=100), sampler_pub("OPENQASM 3.0;", shots=200)]
    arguments: dict[str, Any] = {
        "backend": "priced",
        "seed": 7,
        "provider_options": {"optimization_level": 1},
        "session": "s1",
    }
    with Client("127.0.0.1:1") as client:
        client._jobs_stub = SimpleNamespace(SubmitJob=submit)
        estimate = client.validate(pubs, **arguments)

    async def validate_async() -> CostEstimate:
        async with AsyncClient("127.0.0.1:1") as aclient:
            _ = aclient.channel  # opened inside the loop, then its stub replaced
            aclient._jobs_stub = SimpleNamespace(SubmitJob=async_submit)
            return await aclient.validate(pubs, **arguments)

    expected = CostEstimate(shots=300, cost=Cost(amount=0.5, unit="USD"), per_second_excluded=False)
    assert asyncio.run(validate_async()) == estimate == expected
    synchronous, asynchronous = sent
    assert asynchronous == synchronous
    assert synchronous.validate_only and not synchronous.request_id
    assert (
        synchronous.spec.backend == "backends/priced" and synchronous.spec.session == "sessions/s1"
    )
    assert list(synchronous.spec.pubs) == pubs
