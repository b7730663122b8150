"""Results in the v1 form, in process: packed counts, StreamJobResult chunking, resume, digest,
and the client's resuming fetch.

Expected bitstrings are written out by hand; the stream tests compare reassembled messages with
the message that was chunked, and resumed streams with the tail of the full stream.
"""

from __future__ import annotations

import asyncio
import hashlib
import pickle
from collections import Counter
from types import SimpleNamespace

import grpc  # type: ignore[import-untyped, unused-ignore]
import numpy as np
import pytest
from qgateway import results as client_results
from qgateway.client import AsyncClient, Client, RetryPolicy, _ResultFetch
from qgateway.errors import (
    InternalError,
    InvalidArgumentError,
    QGatewayError,
    ResultDigestError,
    UnavailableError,
)
from qgateway.results import PackedCounts, ResultAssembler, job_result_from_stream
from qgateway.v1 import job_pb2, job_service_pb2

from gateway.api import codec, result_stream
from gateway.api.preserialized import Preserialized
from gateway.api.result_views import split_result
from gateway.domain.bitarray import Counts
from gateway.domain.costs import varint_bytes
from gateway.domain.errors import InvalidArgument
from gateway.domain.jobs import (
    EstimatorResult,
    JobResult,
    RegisterResult,
    SamplerResult,
)
from tests.unit.test_client_errors import CutStream, FakeRpcError

Resp = job_service_pb2.StreamJobResultResponse

# --- Counts in the domain ---------------------------------------------------------------------


def _rows(values: list[int], bits: int) -> np.ndarray:
    width = (bits + 7) // 8
    data = b"".join(v.to_bytes(width, "big") for v in values)
    return np.frombuffer(data, dtype=np.uint8).reshape(len(values), width)


@pytest.mark.parametrize("bits", [1, 3, 8, 9, 22, 63, 64, 65, 70, 130])
def test_counts_from_rows_are_ascending_packed_rows(bits: int) -> None:
    rng = np.random.default_rng(bits)
    # Few distinct values, the highest bit set in some, so repeats and full width both occur.
    pool = [int.from_bytes(rng.bytes((bits + 7) // 8), "big") % (1 << bits) for _ in range(40)]
    pool.append((1 << bits) - 1)
    values = [pool[int(i)] for i in rng.integers(0, len(pool), 3000)]
    counts = Counts.from_rows(_rows(values, bits), bits)
    expected = Counter(values)
    got = [int.from_bytes(row.tobytes(), "big") for row in counts.outcomes]
    assert got == sorted(expected)
    assert counts.counts.tolist() == [expected[v] for v in got]
    assert counts.counts.dtype == np.int64 and counts.total == 3000
    # The same outcomes given once each with weights (Aer's counts) add up the same way.
    weighted = Counts.from_rows(_rows(values, bits), bits, np.full(3000, 5, dtype=np.int64))
    assert weighted.counts.tolist() == [5 * expected[v] for v in got]
    restored = pickle.loads(pickle.dumps(counts))
    assert restored == counts and restored.num_bits == bits


def test_counts_mapping_view_is_in_qiskit_bit_order() -> None:
    # 0b1_0000_0001 (9 bits) is "100000001"; 3 is "000000011".
    counts = Counts.from_rows(_rows([0x101, 3, 0x101], 9), 9)
    assert counts.outcomes.tolist() == [[0x00, 0x03], [0x01, 0x01]]
    assert dict(counts) == {"000000011": 1, "100000001": 2}
    assert Counts.from_dict({"100000001": 2, "000000011": 1}, 9) == counts


def test_zero_bit_register_counts_every_shot_as_the_empty_outcome() -> None:
    counts = Counts.from_rows(np.zeros((7, 0), dtype=np.uint8), 0)
    assert dict(counts) == {"": 7}
    msg = codec.encode_result(_single_register(counts, 0, shots=7))
    entry = msg.pub_results[0].sampler.registers[0].counts[0]
    assert (entry.outcomes, list(entry.counts)) == (b"", [7])
    assert dict(PackedCounts.from_proto(entry, 0)) == {"": 7}


def test_rows_of_the_wrong_width_are_refused() -> None:
    with pytest.raises(ValueError, match="expected"):
        Counts.from_rows(np.zeros((4, 1), dtype=np.uint8), 9)


def _single_register(counts: Counts, bits: int, shots: int) -> JobResult:
    register = RegisterResult(name="c", num_bits=bits, samples=None, counts=(counts,))
    return JobResult(pubs=(SamplerResult(shape=(), shots=shots, registers=(register,)),))


def test_codec_writes_counts_as_the_packed_arrays() -> None:
    counts = Counts.from_dict({"110100101": 3, "000000011": 1}, 9)
    msg = codec.encode_result(_single_register(counts, 9, shots=4))
    entry = msg.pub_results[0].sampler.registers[0].counts[0]
    assert entry.outcomes == bytes([0x00, 0x03, 0x01, 0xA5])
    assert list(entry.counts) == [1, 3]
    assert dict(PackedCounts.from_proto(entry, 9)) == {"110100101": 3, "000000011": 1}


def test_codec_writes_an_estimator_pub_s_values_errors_and_precision() -> None:
    # Each array in its own field: standard errors written from the expectation values (or a
    # precision left out) would reach the client as plausible numbers, nothing refused.
    values = np.array([[0.5, -0.25], [1.0, 0.0]])
    errors = np.array([[0.01, 0.02], [0.03, 0.04]])
    result = JobResult(
        pubs=(
            EstimatorResult(
                shape=(2, 2), expectation_values=values, standard_errors=errors, precision=0.05
            ),
        )
    )
    e = codec.encode_result(result).pub_results[0].estimator
    assert list(e.shape) == [2, 2]
    assert list(e.expectation_values) == [0.5, -0.25, 1.0, 0.0]
    assert list(e.standard_errors) == [0.01, 0.02, 0.03, 0.04]
    assert e.precision == 0.05


# --- StreamJobResult chunks -------------------------------------------------------------------

SHOTS = 300


def big_result() -> job_pb2.JobResult:
    """A sampler PUB of shape (2, 3) with registers of 3 and 22 bits (samples and counts; the
    wide register's counts span many chunks of the sizes tested), a samples-only PUB, and an
    estimator PUB of shape (5, 4)."""
    rng = np.random.default_rng(7)
    registers = []
    for name, bits in (("low", 3), ("wide", 22)):
        width = (bits + 7) // 8
        samples = rng.integers(0, 1 << bits, (6, SHOTS), dtype=np.uint64)
        rows = samples.astype(">u8").view(np.uint8).reshape(6, SHOTS, 8)[:, :, 8 - width :]
        rows = np.ascontiguousarray(rows)
        counts = tuple(Counts.from_rows(rows[b], bits) for b in range(6))
        registers.append(
            RegisterResult(
                name=name, num_bits=bits, samples=rows.reshape(2, 3, SHOTS, width), counts=counts
            )
        )
    only_samples = RegisterResult(
        name="s", num_bits=5, samples=rng.integers(0, 32, (4, 10, 1), dtype=np.uint8), counts=()
    )
    values = rng.normal(size=(5, 4))
    result = JobResult(
        pubs=(
            SamplerResult(shape=(2, 3), shots=SHOTS, registers=tuple(registers)),
            SamplerResult(shape=(4,), shots=10, registers=(only_samples,)),
            EstimatorResult(
                shape=(5, 4),
                expectation_values=values,
                standard_errors=np.abs(values) / 10,
                precision=0.1,
            ),
        )
    )
    return codec.encode_result(result)


def _payload(response: job_service_pb2.StreamJobResultResponse) -> int:
    kind = response.WhichOneof("chunk")
    if kind == "samples":
        return len(response.samples.data)
    if kind == "counts":
        c = response.counts.counts
        return len(c.outcomes) + sum(varint_bytes(n) for n in c.counts)
    if kind == "values":
        return 8 * (len(response.values.expectation_values) + len(response.values.standard_errors))
    return 0


def _binding(response: job_service_pb2.StreamJobResultResponse, result: job_pb2.JobResult) -> int:
    kind = response.WhichOneof("chunk")
    if kind == "samples":
        sampler = result.pub_results[response.pub_index].sampler
        reg = sampler.registers[response.samples.register_index]
        return response.samples.offset // (sampler.shots * ((reg.num_bits + 7) // 8))
    if kind == "counts":
        return response.counts.binding_index
    return response.values.offset


def _chunks(
    result: job_pb2.JobResult, chunk: int, *position: int
) -> list[job_service_pb2.StreamJobResultResponse]:
    """What the gateway streams: from the stored result split into samples and the rest."""
    stored = split_result(result.SerializeToString(deterministic=True))
    registers = [reg for pub in stored.result.pub_results for reg in pub.sampler.registers]
    assert not any(reg.samples or reg.counts for reg in registers)
    return [as_sent(r) for r in result_stream.result_chunks(stored, chunk, *position)]


def as_sent(
    response: job_service_pb2.StreamJobResultResponse | Preserialized,
) -> job_service_pb2.StreamJobResultResponse:
    """The message a client reads (a counts slice is sent as wire bytes)."""
    if isinstance(response, Preserialized):
        return response.parse(job_service_pb2.StreamJobResultResponse)
    return response


def test_headers_hold_everything_but_the_data() -> None:
    result = big_result()
    headers = [r.header for r in _chunks(result, 1 << 20) if r.HasField("header")]
    assert len(headers) == 3
    for header, pub in zip(headers, result.pub_results, strict=True):
        expected = job_pb2.PubResult()
        expected.CopyFrom(pub)
        if pub.HasField("sampler"):
            for reg in expected.sampler.registers:
                reg.ClearField("samples")
                reg.ClearField("counts")
        else:
            expected.estimator.ClearField("expectation_values")
            expected.estimator.ClearField("standard_errors")
        assert header == expected
        assert header.WhichOneof("result") == pub.WhichOneof("result")


@pytest.mark.parametrize("chunk", [64, 1000, 4096, 1 << 20])
def test_chunks_are_binding_major_bounded_and_reassemble(chunk: int) -> None:
    result = big_result()
    data = result.SerializeToString(deterministic=True)
    chunks = _chunks(result, chunk)
    for response in chunks:
        assert _payload(response) <= chunk
    # Per PUB: header first, then bindings in non-decreasing order; per binding and register,
    # samples before counts, registers in order.
    order = [(r.pub_index, -1 if r.HasField("header") else _binding(r, result)) for r in chunks]
    assert order == sorted(order)
    for pub in range(3):
        assert chunks[[r.pub_index for r in chunks].index(pub)].HasField("header")
    wide_counts = [r for r in chunks if r.HasField("counts") and r.counts.register_index == 1]
    if chunk <= 1000:
        # Every binding's counts of the wide register span several messages.
        per_binding = Counter(r.counts.binding_index for r in wide_counts)
        assert set(per_binding) == set(range(6)) and min(per_binding.values()) > 1
    assembler = ResultAssembler()
    for response in chunks:
        assembler.add(response)
    assembler.add(result_stream.digest_response(result_stream.result_digest(data)))
    assert assembler.proto() == result


def test_the_digest_is_the_sha256_of_the_canonical_result() -> None:
    result = big_result()
    canonical = result.SerializeToString(deterministic=True)
    expected = hashlib.sha256(canonical).digest()
    assert result_stream.result_digest(canonical) == expected


def _positions(result: job_pb2.JobResult) -> list[tuple[int, int]]:
    return [
        (p, b)
        for p, pub in enumerate(result.pub_results)
        for b in range(result_stream.num_bindings(pub))
    ]


def test_a_resumed_stream_is_the_tail_of_the_full_stream() -> None:
    result = big_result()
    full = _chunks(result, 1000)
    headers = {r.pub_index: r for r in full if r.HasField("header")}
    for pub, binding in _positions(result):
        resumed = _chunks(result, 1000, pub, binding)
        # The PUB's header again, then what the full stream sends from that binding on.
        assert resumed[0] == headers[pub]
        tail = [
            r
            for r in full
            if (r.pub_index, -1 if r.HasField("header") else _binding(r, result)) >= (pub, binding)
            or (r.HasField("header") and r.pub_index > pub)
        ]
        if pub < 2:
            assert resumed[1:] == tail
        else:
            # Estimator values come in runs from the start binding: the same values.
            values = [v for r in resumed[1:] for v in r.values.expectation_values]
            errors = [v for r in resumed[1:] for v in r.values.standard_errors]
            estimator = result.pub_results[2].estimator
            assert values == list(estimator.expectation_values)[binding:]
            assert errors == list(estimator.standard_errors)[binding:]


def test_a_binding_whose_counts_exceed_a_chunk_alone_is_split() -> None:
    # One binding, 22 bits, 200 distinct outcomes of 3 bytes; with 200 shots a count takes up
    # to 2 bytes, so 20 entries (at most 100 bytes) go in each 100-byte message.
    values = list(range(0, 200 * 1000, 1000))
    counts = Counts.from_rows(_rows(values, 22), 22)
    result = codec.encode_result(_single_register(counts, 22, shots=200))
    chunks = _chunks(result, 100)
    slices = [r.counts for r in chunks if r.HasField("counts")]
    assert [s.offset for s in slices] == list(range(0, 200, 20))
    assert all(len(s.counts.outcomes) == 60 and len(s.counts.counts) == 20 for s in slices)
    assert all(s.binding_index == 0 and s.register_index == 0 for s in slices)
    assert b"".join(s.counts.outcomes for s in slices) == counts.outcomes.tobytes()


@pytest.mark.parametrize(
    ("requested", "expected"),
    [(0, 1 << 20), (1, 1024), (5000, 5000), (3 << 20, 3 << 20), (2**31 - 1, 3 << 20)],
)
def test_chunk_size(requested: int, expected: int) -> None:
    assert result_stream.chunk_size(requested, 4 << 20) == expected


@pytest.mark.parametrize(
    ("requested", "expected"),
    [(0, (1 << 19) - 1024), (3 << 20, (1 << 19) - 1024), (5000, 5000), (1, 1024)],
)
def test_chunks_stay_within_the_largest_response(requested: int, expected: int) -> None:
    # server.max_response_bytes lowered to 512 KiB: a 3 MiB chunk went past it, and past
    # gRPC's send limit the stream failed with a bare RESOURCE_EXHAUSTED.
    assert result_stream.chunk_size(requested, 1 << 19) == expected
    assert result_stream.chunk_size(requested, 100) == 1024  # never below the minimum


def _refused(error: InvalidArgument, reason: str, field: str) -> None:
    assert error.reason == reason
    assert [v.field for v in error.field_violations] == [field]


def test_negative_request_fields_are_refused() -> None:
    with pytest.raises(InvalidArgument) as info:
        result_stream.chunk_size(-1, 4 << 20)
    _refused(info.value, "INVALID_CHUNK_SIZE", "chunk_bytes")
    assert info.value.metadata == {"chunkBytes": "-1"}
    with pytest.raises(InvalidArgument) as info:
        result_stream.check_start_fields(-1, 0)
    _refused(info.value, "INVALID_RESUME_POSITION", "start_pub_index")
    with pytest.raises(InvalidArgument) as info:
        result_stream.check_start_fields(0, -5)
    _refused(info.value, "INVALID_RESUME_POSITION", "start_binding_index")


def test_positions_past_the_end_are_refused() -> None:
    result = big_result()
    result_stream.check_position(result, 2, 19)  # the last binding of the last PUB
    with pytest.raises(InvalidArgument) as info:
        result_stream.check_position(result, 3, 0)
    _refused(info.value, "INVALID_RESUME_POSITION", "start_pub_index")
    assert info.value.metadata == {"startPubIndex": "3", "numPubs": "3"}
    with pytest.raises(InvalidArgument) as info:
        result_stream.check_position(result, 0, 6)
    _refused(info.value, "INVALID_RESUME_POSITION", "start_binding_index")
    assert info.value.metadata == {"startBindingIndex": "6", "numBindings": "6", "pubIndex": "0"}


# --- The client's resuming fetch --------------------------------------------------------------


def _error(cls: type[QGatewayError]) -> QGatewayError:
    return cls("broken")


def _stream(result: job_pb2.JobResult) -> list[job_service_pb2.StreamJobResultResponse]:
    data = result.SerializeToString(deterministic=True)
    return [
        *_chunks(result, 1000),
        result_stream.digest_response(result_stream.result_digest(data)),
    ]


def _serve(
    result: job_pb2.JobResult, request: job_service_pb2.StreamJobResultRequest
) -> list[job_service_pb2.StreamJobResultResponse]:
    """What the gateway answers to a request (digest included)."""
    data = result.SerializeToString(deterministic=True)
    return [
        *_chunks(result, 1000, request.start_pub_index, request.start_binding_index),
        result_stream.digest_response(result_stream.result_digest(data)),
    ]


def test_fetch_resumes_where_each_stream_broke() -> None:
    result = big_result()
    fetch = _ResultFetch("j1", 1000, RetryPolicy(max_attempts=3, initial_backoff=0.0), None)
    starts = []
    for cut in (5, 1, 20, 3):  # messages delivered before each break (of 39 in all)
        request = fetch.request()
        assert request.name == "jobs/j1/result" and request.chunk_bytes == 1000
        starts.append((request.start_pub_index, request.start_binding_index))
        for response in _serve(result, request)[:cut]:
            fetch.add(response)
        assert fetch.retry_delay(_error(UnavailableError)) is not None
    for response in _serve(result, fetch.request()):
        fetch.add(response)
    assert fetch.assembler.proto() == result
    assert starts[0] == (0, 0) and starts == sorted(starts)


def test_fetch_gives_up_on_errors_that_are_not_a_broken_stream() -> None:
    policy = RetryPolicy(max_attempts=5, initial_backoff=0.0)
    fetch = _ResultFetch("j1", 0, policy, None)
    fetch.request()
    # INTERNAL before anything arrived is the gateway's answer, not a broken stream.
    assert fetch.retry_delay(_error(InternalError)) is None
    assert fetch.retry_delay(_error(InvalidArgumentError)) is None
    fetch.add(_stream(big_result())[0])
    assert fetch.retry_delay(_error(InternalError)) is not None


def test_fetch_attempts_without_progress_are_bounded() -> None:
    result = big_result()
    fetch = _ResultFetch("j1", 0, RetryPolicy(max_attempts=3, initial_backoff=0.0), None)
    fetch.request()
    for response in _serve(result, job_service_pb2.StreamJobResultRequest())[:30]:
        fetch.add(response)
    assert fetch.retry_delay(_error(UnavailableError)) is not None  # progress: 1 of 3
    fetch.request()
    assert fetch.retry_delay(_error(UnavailableError)) is not None  # 2 of 3
    fetch.request()
    assert fetch.retry_delay(_error(UnavailableError)) is None  # 3 of 3: give up


def test_fetch_stops_when_the_deadline_would_pass() -> None:
    fetch = _ResultFetch("j1", 0, RetryPolicy(initial_backoff=1.0, jitter=0.0), 0.0)
    fetch.request()
    error = _error(UnavailableError)
    assert error.code is grpc.StatusCode.UNAVAILABLE
    assert fetch.retry_delay(error) is None


def test_fetch_clamps_and_caps_the_gateways_retry_delay() -> None:
    """The RetryInfo delay was used as sent: a negative one made time.sleep raise ValueError, a
    huge one slept for hours. The rules are those of every other retry."""
    policy = RetryPolicy(initial_backoff=0.0, jitter=0.5, max_retry_delay=60.0)
    fetch = _ResultFetch("j1", 0, policy, None)
    fetch.request()
    assert fetch.retry_delay(UnavailableError("draining", retry_delay=-3.0)) == 0.0
    fetch.request()
    delay = fetch.retry_delay(UnavailableError("draining", retry_delay=2.0))
    assert delay is not None and 2.0 <= delay <= 3.0  # only ever lengthened, by the jitter
    fetch.request()
    assert fetch.retry_delay(UnavailableError("breaker open", retry_delay=3600.0)) is None


BREAKS = [
    FakeRpcError(grpc.StatusCode.UNAVAILABLE, "upstream connect error / stream reset"),
    FakeRpcError(grpc.StatusCode.INTERNAL, "RST_STREAM"),
    FakeRpcError(grpc.StatusCode.DEADLINE_EXCEEDED, "Deadline Exceeded"),
]


@pytest.mark.parametrize("error", BREAKS, ids=lambda e: e.code().name)
def test_a_stream_broken_after_its_digest_gives_the_result(error: FakeRpcError) -> None:
    """Every message, the digest included, had arrived; the break was raised all the same."""
    result = big_result()
    streams = [CutStream(_stream(result), error)]  # a second call would find none
    with Client("127.0.0.1:1") as client:
        client._jobs_stub = SimpleNamespace(StreamJobResult=lambda *a, **k: streams.pop(0))
        fetched = client.stream_result("j1", chunk_bytes=1000)
    assert fetched == job_result_from_stream(_stream(result))  # the stream, unbroken

    async def fetch_async() -> client_results.JobResult:
        streams.append(CutStream(_stream(result), error))
        async with AsyncClient("127.0.0.1:1") as aclient:
            _ = aclient.channel  # opened inside the loop, then its stub replaced
            aclient._jobs_stub = SimpleNamespace(StreamJobResult=lambda *a, **k: streams.pop(0))
            return await aclient.stream_result("j1", chunk_bytes=1000)

    assert asyncio.run(fetch_async()) == fetched


def test_a_stream_broken_after_a_wrong_digest_is_refused() -> None:
    result = big_result()
    wrong = [*_stream(result)[:-1], result_stream.digest_response(bytes(32))]
    with Client("127.0.0.1:1") as client:
        client._jobs_stub = SimpleNamespace(
            StreamJobResult=lambda *a, **k: CutStream(wrong, BREAKS[0])
        )
        with pytest.raises(ResultDigestError):
            client.stream_result("j1", chunk_bytes=1000)


def test_packed_counts_decode_across_blocks_and_ignore_padding_bits() -> None:
    # 9-bit rows, more of them than one decoding block holds; the 7 padding bits of every
    # row's first byte set (a sloppy producer): they are not part of the bitstring.
    values = list(range(0, 512, 1)) * 80  # 40 960 rows
    data = b"".join((0xFE00 | v).to_bytes(2, "big") for v in values)
    keys = [format(v, "09b") for v in values]
    counts = PackedCounts(data, [1] * len(values), 9)
    assert list(counts) == sorted(set(keys), key=keys.index)
    assert counts["100000001"] == 80 and counts["000000000"] == 80 and len(counts) == 512
