"""QPY circuits, sparse Pauli terms, max_execution_time and provider_options over real gRPC.

Issue 7 points 6 and 10, on the session gateway. Expected bitstrings and expectation values are
hard-coded from the physics of each circuit (X-prepared qubits read -1 under Z); every hostile
input gets its exact status code and reason, and the gateway keeps serving after each.
"""

from __future__ import annotations

import time
from collections.abc import Iterator

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from qgateway import (
    Client,
    InvalidArgumentError,
    RetryPolicy,
    estimator_pub,
    sampler_pub,
)
from qgateway.results import JobState
from qgateway.v1 import circuit_pb2, job_pb2, job_service_pb2
from qiskit import QuantumCircuit

from tests.qpy_payloads import dump, nested_block_declaring, x_on
from tests.rpc import ghz, slow_circuit, status_of

INVALID = grpc.StatusCode.INVALID_ARGUMENT
QPY_FIELD = "spec.pubs[0].sampler.circuit.qpy"
OPTIONS = "spec.options.provider_options"


@pytest.fixture(scope="module")
def client(address: str) -> Iterator[Client]:
    # No retries: a refusal is the answer under test.
    with Client(address, retry=RetryPolicy(max_attempts=1)) as c:
        yield c


@pytest.fixture(scope="module")
def channel(address: str) -> Iterator[grpc.Channel]:
    with grpc.insecure_channel(address) as ch:
        yield ch


def serving(channel: grpc.Channel, client: Client, tag: int) -> None:
    """Health answers and a fresh job runs: the gateway survived what came before."""
    reply = health_pb2_grpc.HealthStub(channel).Check(
        health_pb2.HealthCheckRequest(service="qgateway.v1.JobService"), timeout=10
    )
    assert reply.status == health_pb2.HealthCheckResponse.SERVING
    assert set(client.run(ghz(2), shots=4, seed=tag, timeout=60).counts()) <= {"00", "11"}


def refused(call: object) -> InvalidArgumentError:
    with pytest.raises(InvalidArgumentError) as info:
        call()  # type: ignore[operator]
    assert info.value.from_gateway, info.value
    return info.value


# ------------------------------------------------------------------------------------- QPY


@pytest.mark.parametrize("version", [13, 18])
def test_a_qpy_circuit_runs_in_qiskits_bit_order(client: Client, version: int) -> None:
    # X on qubits 0 and 2 of 3: character 0 is the highest bit.
    result = client.run(dump(x_on([0, 2], 3), version), shots=32, seed=1, timeout=60)
    assert result.counts() == {"101": 32}


def test_qpy_and_openqasm_sources_of_one_circuit_agree(client: Client) -> None:
    qasm = (
        'OPENQASM 3.0;\ninclude "stdgates.inc";\nqubit[3] q;\nbit[3] c;\nx q[1];\nc = measure q;\n'
    )
    qpy_result = client.run(dump(x_on([1], 3)), shots=8, seed=2, timeout=60)
    assert qpy_result.counts() == client.run(qasm, shots=8, seed=2, timeout=60).counts()
    assert qpy_result.counts() == {"010": 8}


def test_the_backend_states_the_qpy_versions_it_reads(client: Client) -> None:
    assert client.get_backend("aer").properties["qpy_versions"] == "13-18"


@pytest.mark.parametrize(
    ("payload", "reason"),
    [
        (lambda: b"\x00garbage" * 10, "INVALID_QPY"),
        (lambda: (lambda d: d[:6] + bytes([19]) + d[7:])(dump(x_on([0], 1))), "INVALID_QPY"),
        (lambda: dump([x_on([0], 1), x_on([], 1)]), "INVALID_QPY"),
        (lambda: dump(x_on([0], 1))[:40], "INVALID_QPY"),
        (lambda: dump(QuantumCircuit(70, 1)), "TOO_MANY_QUBITS"),
        # A nested block's header declaring 2**26 classical bits: only the compile worker's
        # memory limit stops the reader.
        (lambda: nested_block_declaring(2**26), "CIRCUIT_TOO_COMPLEX"),
    ],
    ids=["garbage", "version-19", "two-circuits", "truncated", "70-qubits", "nested-2^26-bits"],
)
def test_hostile_qpy_is_refused_with_its_reason(
    client: Client, channel: grpc.Channel, payload: object, reason: str
) -> None:
    data = payload()  # type: ignore[operator]
    error = refused(lambda: client.run(data, shots=1, timeout=60))
    assert error.reason == reason, error
    assert [f for f, _ in error.field_violations] == [QPY_FIELD]
    serving(channel, client, tag=len(data) % 1000)


def test_a_newer_qpy_version_names_the_range(client: Client) -> None:
    data = dump(x_on([0], 1))
    error = refused(lambda: client.run(data[:6] + bytes([19]) + data[7:], shots=1, timeout=30))
    assert error.metadata == {"qpyVersion": "19", "minQpyVersion": "13", "maxQpyVersion": "18"}


# ----------------------------------------------------------------------------- sparse Paulis

# X on qubits 1 and 3 of 5, no measurements.
X13 = 'OPENQASM 3.0;\ninclude "stdgates.inc";\nqubit[5] q;\nx q[1];\nx q[3];\n'


def test_sparse_terms_give_the_hard_coded_values(client: Client) -> None:
    result = client.estimate(
        X13,
        [
            ("Z", [3], 1.0),  # -1
            ("IZIII", 1.0),  # the same observable, dense: -1
            ("Z", [4], 1.0),  # +1
            ("ZZ", [3, 1], 0.5),  # 0.5 (-1)(-1)
            [("ZZ", [0, 3], 1.0), ("X", [2], 3.0)],  # (+1)(-1) + 3 <0|X|0> = -1
        ],
        precision=0.0,
        timeout=60,
    )
    assert result.expectation_values == [-1.0, -1.0, 1.0, 0.5, -1.0]
    assert result.standard_errors == [0.0] * 5


def test_a_sparse_term_on_a_wide_mps_circuit(client: Client) -> None:
    # 60 qubits: the term travels and runs as given, never as a 60-character string.
    wide = 'OPENQASM 3.0;\ninclude "stdgates.inc";\nqubit[60] q;\nx q[57];\n'
    pub = estimator_pub(wide, [("Z", [57], 1.0), ("ZZ", [0, 57], 2.0)], precision=0.0)
    job = client.run_pubs([pub], backend="aer-mps", timeout=60)
    assert job.state is JobState.SUCCEEDED, job
    assert job.result is not None
    assert job.result[0].expectation_values == [-1.0, -2.0]  # type: ignore[union-attr]


@pytest.mark.parametrize(
    ("term", "words"),
    [
        (("Z", [5], 1.0), "qubit 5 is not a qubit of the 5-qubit circuit"),
        (("ZZ", [2, 2], 1.0), "listed twice"),
        (("ZZ", [2], 1.0), "2 Paulis for 1 qubits"),
        (("Q", [2], 1.0), "I, X, Y and Z"),
    ],
    ids=["out-of-range", "duplicate", "length", "letter"],
)
def test_malformed_sparse_terms_are_refused(
    client: Client, term: tuple[str, list[int], float], words: str
) -> None:
    error = refused(lambda: client.estimate(X13, [[("IIIIZ", 1.0), term]], timeout=30))
    assert error.reason == "INVALID_OBSERVABLE"
    assert words in error.message


# ------------------------------------------------------------------------ max_execution_time


def test_a_long_job_stops_at_its_own_max_execution_time(client: Client) -> None:
    # Shot by shot, 40k shots of a 12-qubit circuit run for tens of seconds; the session
    # backend's own limit is an hour.
    pub = sampler_pub(slow_circuit(12, layers=4), shots=40_000)
    job = client.submit_pubs([pub], backend="aer", seed=3, max_execution_time=1.0)
    final = client.wait(job.name, timeout=60)
    assert final.state is JobState.FAILED, final
    assert final.error is not None
    assert final.error_reason == "JOB_TIMEOUT"
    assert final.error.metadata["limitSeconds"] == "1"
    assert "max_execution_time" in final.error_message
    assert final.start_time is not None and final.end_time is not None
    ran = (final.end_time - final.start_time).total_seconds()
    assert 0.9 <= ran < 10.0, ran


def test_a_job_within_its_max_execution_time_succeeds(client: Client) -> None:
    pub = sampler_pub(ghz(3), shots=16)
    job = client.run_pubs([pub], seed=4, max_execution_time=60.0, timeout=60)
    assert job.state is JobState.SUCCEEDED, job


@pytest.mark.parametrize("seconds", [0.0, -1.0, 1e-10])
def test_a_max_execution_time_that_is_not_positive_is_refused(
    client: Client, seconds: float
) -> None:
    # 1e-10 s rounds to a zero Duration on the way.
    error = refused(
        lambda: client.run_pubs([sampler_pub(ghz(2), shots=1)], max_execution_time=seconds)
    )
    assert error.reason == "INVALID_MAX_EXECUTION_TIME"
    assert [f for f, _ in error.field_violations] == ["spec.options.max_execution_time"]


# -------------------------------------------------------------------------- provider_options


def _deep(depth: int) -> dict[str, object]:
    value: dict[str, object] = {"x": 1}
    for _ in range(depth - 1):
        value = {"a": value}
    return value


@pytest.mark.parametrize(
    ("options", "field", "limit"),
    [
        ({"method": "statevector"}, f"{OPTIONS}.method", None),
        ({"bad key": 1}, f'{OPTIONS}["bad key"]', None),
        (_deep(9), OPTIONS + ".a.a.a.a.a.a.a.a", "max_provider_options_depth"),
        ({"s": "x" * 20_000}, OPTIONS, "max_provider_options_bytes"),
        ({"l": list(range(5_000))}, OPTIONS, "max_provider_options_bytes"),
        ({"n": float("nan")}, f"{OPTIONS}.n", None),
    ],
    ids=["unknown-key", "odd-key", "depth-9", "20-KiB", "huge-list", "nan"],
)
def test_provider_options_are_bounded_and_checked_by_the_backend(
    client: Client, options: dict[str, object], field: str, limit: str | None
) -> None:
    error = refused(
        lambda: client.run_pubs([sampler_pub(ghz(2), shots=1)], provider_options=options)
    )
    assert error.reason == "INVALID_PROVIDER_OPTIONS"
    assert [f for f, _ in error.field_violations] == [field]
    if limit is not None:
        assert error.metadata["limit"] == limit


def _field(number: int, payload: bytes) -> bytes:
    """A length-delimited protobuf field."""
    tag = (number << 3) | 2
    out = bytearray()
    for value in (tag, len(payload)):
        while value >= 0x80:
            out.append((value & 0x7F) | 0x80)
            value >>= 7
        out.append(value)
    return bytes(out) + payload


def _deep_struct_bytes(depth: int) -> bytes:
    """A serialised google.protobuf.Struct nested `depth` levels ({"a": {"a": ...}}), built as
    bytes from the inside out (no Python recursion, no message objects)."""
    struct = b""
    for _ in range(depth):
        value = _field(5, struct)  # Value.struct_value
        entry = _field(1, b"a") + _field(2, value)  # map entry: key, value
        struct = _field(1, entry)  # Struct.fields
    return struct


@pytest.mark.parametrize("depth", [20, 10_000])
def test_a_deeply_nested_struct_on_the_wire_is_invalid_argument(
    client: Client, channel: grpc.Channel, depth: int
) -> None:
    # Within the protobuf runtime's own nesting limit the gateway's depth check answers; past
    # it the request cannot be parsed at all: INVALID_ARGUMENT either way, never INTERNAL.
    request = job_service_pb2.SubmitJobRequest(
        spec=job_pb2.JobSpec(
            backend="backends/aer",
            pubs=[circuit_pb2.Pub(sampler=circuit_pb2.SamplerPub(circuit={"qasm3": ghz(2)}))],
        )
    )
    spec_number = job_service_pb2.SubmitJobRequest.DESCRIPTOR.fields_by_name["spec"].number
    options_number = job_pb2.JobSpec.DESCRIPTOR.fields_by_name["options"].number
    struct_number = job_pb2.JobOptions.DESCRIPTOR.fields_by_name["provider_options"].number
    # A second occurrence of a message field merges into the first.
    extra = _field(
        spec_number, _field(options_number, _field(struct_number, _deep_struct_bytes(depth)))
    )
    raw = channel.unary_unary("/qgateway.v1.JobService/SubmitJob")
    with pytest.raises(grpc.RpcError) as exc:
        raw(request.SerializeToString() + extra, timeout=30)
    info = status_of(exc.value)
    assert info.code == INVALID, info
    assert info.reason in ("INVALID_PROVIDER_OPTIONS", "MALFORMED_REQUEST"), info
    if depth == 20:
        assert info.reason == "INVALID_PROVIDER_OPTIONS"
        assert info.metadata["limit"] == "max_provider_options_depth"
    serving(channel, client, tag=depth % 1000)


def test_an_empty_options_struct_is_no_options(client: Client) -> None:
    job = client.run_pubs([sampler_pub(ghz(2), shots=4)], seed=5, provider_options={})
    assert job.state is JobState.SUCCEEDED, job


def test_the_breaker_does_not_count_a_jobs_own_time_limit(client: Client) -> None:
    # Five jobs stopped at their own max_execution_time: the client's choice, not a backend
    # fault, so the backend's breaker stays closed (its threshold is 5 failures).
    pub = sampler_pub(slow_circuit(12, layers=4), shots=40_000)
    jobs = [
        client.submit_pubs([pub], backend="aer", seed=10 + i, max_execution_time=0.2)
        for i in range(5)
    ]
    started = time.monotonic()
    for job in jobs:
        final = client.wait(job.name, timeout=60)
        assert final.error_reason == "JOB_TIMEOUT", final
    assert time.monotonic() - started < 60
    assert client.run(ghz(2), shots=4, seed=6, timeout=60).counts()
