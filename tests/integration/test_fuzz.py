"""Random bytes and random text at SubmitJob: only proper client-error codes, and the gateway
keeps serving."""

from __future__ import annotations

from collections.abc import Iterator

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from qgateway.v1 import job_service_pb2, job_service_pb2_grpc

from tests.rpc import sampler_spec, status_of

# What a client can cause. OK only when the random text happens to be a runnable circuit.
CLIENT_CODES = {
    grpc.StatusCode.OK,
    grpc.StatusCode.INVALID_ARGUMENT,
    grpc.StatusCode.NOT_FOUND,
    grpc.StatusCode.RESOURCE_EXHAUSTED,
}
FUZZ = settings(
    max_examples=300,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
    derandomize=True,
)


@pytest.fixture(scope="module")
def channel(address: str) -> Iterator[grpc.Channel]:
    with grpc.insecure_channel(address) as ch:
        yield ch


def _code(call: object) -> tuple[grpc.StatusCode, str]:
    try:
        call()  # type: ignore[operator]
    except grpc.RpcError as err:
        info = status_of(err)
        if info.code in CLIENT_CODES:
            assert info.reason, f"{info.code} without an ErrorInfo reason: {info}"
        return info.code, info.reason
    return grpc.StatusCode.OK, ""


def _assert_serving(channel: grpc.Channel) -> None:
    health = health_pb2_grpc.HealthStub(channel)
    reply = health.Check(health_pb2.HealthCheckRequest(service=""), timeout=10)
    assert reply.status == health_pb2.HealthCheckResponse.SERVING


@pytest.mark.timeout(240)
def test_random_bytes_on_a_generic_channel(channel: grpc.Channel) -> None:
    raw = channel.unary_unary("/qgateway.v1.JobService/SubmitJob")

    @FUZZ
    @given(st.binary(max_size=512))
    def check(payload: bytes) -> None:
        code, reason = _code(lambda: raw(payload, timeout=20))
        assert code in CLIENT_CODES, (payload, code, reason)

    check()
    _assert_serving(channel)


@pytest.mark.timeout(240)
def test_random_text_as_circuits_through_the_typed_stub(channel: grpc.Channel) -> None:
    stub = job_service_pb2_grpc.JobServiceStub(channel)
    header = st.sampled_from(
        [
            "",
            "OPENQASM 3.0;\n",
            'OPENQASM 3.0;\ninclude "stdgates.inc";\n',
            "OPENQASM 2.0;\n",
            'OPENQASM 2.0;\ninclude "qelib1.inc";\n',
        ]
    )
    tokens = [
        *"qubitregcx[]{}();,=<>->+-*/ 0123456789\n\"'#$@!~",
        *("qubit", "bit", "measure", "gate", "include", "h", "cx", "OPENQASM"),
        *("if", "for", "while", "input", "float", "\x00", "\u00e9", "\ud7ff"),
    ]
    body = st.lists(st.sampled_from(tokens), max_size=60).map("".join)

    @FUZZ
    @given(header, body, st.booleans())
    def check(head: str, text: str, qasm2: bool) -> None:
        spec = sampler_spec(head + text, qasm2=qasm2, shots=8)
        code, reason = _code(
            lambda: stub.SubmitJob(job_service_pb2.SubmitJobRequest(spec=spec), timeout=20)
        )
        assert code in {grpc.StatusCode.OK, grpc.StatusCode.INVALID_ARGUMENT}, (
            head + text,
            code,
            reason,
        )

    check()
    _assert_serving(channel)
