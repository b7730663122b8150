"""Noisy-neighbour review: one tenant's requests must not stall another's.

A max-size request of an ordinary (authenticated) tenant was decoded by
gateway.interceptors.decode on the event loop: 16 MiB of empty PUBs is ~8 M messages for
upb to build (~0.23 s holding the GIL), during which no other tenant's call made progress.
Measured against a real gateway with the default configuration: one attacker sending such a
SubmitJob (refused INVALID_ARGUMENT afterwards, ~1/s) took another tenant's GetJob p50 from
1.8 ms to 33 ms and its max to 1.07 s. Fixed: a large request is decoded in a thread, in pieces
(gateway.api.request_pieces), and that one is refused after its 1001st PUB.

In process, on a real grpc.aio server with the gateway's interceptors in the gateway's order
(as tests/unit/test_decode_after_auth.py builds it): the large request's first piece waits
(bounded) for the bystander's call, which completes only if the decode leaves the event loop.
"""

from __future__ import annotations

import threading
from collections.abc import AsyncIterator
from typing import Any

import anyio
import grpc
import pytest
from qgateway.v1 import circuit_pb2, job_pb2, job_service_pb2

from gateway.api import request_pieces
from gateway.api.context import Context
from gateway.api.wire_format import length_delimited
from gateway.interceptors.auth import AuthInterceptor
from gateway.interceptors.boundary import ErrorBoundaryInterceptor
from gateway.interceptors.decode import DecodeInterceptor
from gateway.interceptors.request_reads import RequestReads
from gateway.security.api_keys import METADATA_KEY, KeyRing, KeyVerifier, generate_key
from gateway.security.authenticator import Authenticator

pytestmark = pytest.mark.anyio
METHOD = "/qgateway.v1.Probe/Echo"
ATTACKER = generate_key("mallory")
BYSTANDER = generate_key("bob")
# How long the attacker's decode waits for the bystander before giving up (the test's bound,
# not a threshold: the outcome is whether the bystander finished within it, or not at all).
DECODE_WAIT_S = 3.0


class Decodes:
    """The large request's first piece waits for the bystander's call to be done."""

    def __init__(self) -> None:
        self.bystander_done = threading.Event()
        self.large_started = threading.Event()
        self.bystander_done_during_large_decode: bool | None = None
        self.merged = 0

    def merge(self, message: Any, piece: bytes) -> None:
        if not self.large_started.is_set():
            self.large_started.set()
            self.bystander_done_during_large_decode = self.bystander_done.wait(DECODE_WAIT_S)
        self.merged += len(piece)
        message.MergeFromString(piece)


@pytest.fixture
async def served(
    monkeypatch: pytest.MonkeyPatch,
) -> AsyncIterator[tuple[grpc.aio.Channel, Decodes]]:
    decodes = Decodes()
    monkeypatch.setattr(request_pieces, "_merge", decodes.merge)

    async def echo(request: job_service_pb2.SubmitJobRequest, context: Context) -> bytes:
        return request.request_id.encode()

    handler = grpc.method_handlers_generic_handler(
        "qgateway.v1.Probe",
        {
            "Echo": grpc.unary_unary_rpc_method_handler(
                echo,
                request_deserializer=job_service_pb2.SubmitJobRequest.FromString,
                response_serializer=bytes,
            )
        },
    )
    server = grpc.aio.server(
        interceptors=[
            ErrorBoundaryInterceptor(16 << 20),
            AuthInterceptor(
                Authenticator(KeyVerifier(KeyRing([ATTACKER.config, BYSTANDER.config])))
            ),
            DecodeInterceptor(RequestReads(32, 60.0)),
        ],
        options=[("grpc.max_receive_message_length", 32 << 20)],
    )
    server.add_generic_rpc_handlers((handler,))
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    try:
        async with grpc.aio.insecure_channel(
            f"127.0.0.1:{port}", options=[("grpc.max_send_message_length", 32 << 20)]
        ) as channel:
            yield channel, decodes
    finally:
        await server.stop(None)


async def _call(channel: grpc.aio.Channel, body: bytes, key: str) -> Any:
    call = channel.unary_unary(METHOD)
    return await call(body, metadata=((METADATA_KEY, f"Bearer {key}"),), timeout=30)


def _request(request_id: str, observables: int = 0) -> bytes:
    spec = job_pb2.JobSpec(backend="backends/aer")
    estimator = spec.pubs.add().estimator
    term = circuit_pb2.PauliTerm(pauli="ZZ", coefficient=0.5, qubits=[0, 1])
    estimator.observables.extend([circuit_pb2.Observable(terms=[term])] * observables)
    request = job_service_pb2.SubmitJobRequest(request_id=request_id, spec=spec)
    return bytes(request.SerializeToString())


async def test_a_bystanders_call_completes_while_a_large_request_is_decoded(
    served: tuple[grpc.aio.Channel, Decodes],
) -> None:
    channel, decodes = served
    assert await _call(channel, _request("warm"), BYSTANDER.key) == b"warm"  # no piece: small
    large = _request("large", observables=200_000)  # ~4.6 MB
    assert len(large) > 4 << 20
    async with anyio.create_task_group() as tg:

        async def attacker() -> None:
            assert await _call(channel, large, ATTACKER.key) == b"large"

        tg.start_soon(attacker)
        # The bystander calls once the attacker's request is being decoded.
        await anyio.to_thread.run_sync(decodes.large_started.wait, 20.0)
        assert await _call(channel, _request("bystander"), BYSTANDER.key) == b"bystander"
        decodes.bystander_done.set()
    assert decodes.bystander_done_during_large_decode is True
    assert decodes.merged > 0


async def test_sixteen_mib_of_empty_pubs_is_refused_without_being_parsed(
    served: tuple[grpc.aio.Channel, Decodes],
) -> None:
    channel, decodes = served
    attack = length_delimited(2, b"\x12\x00" * ((16 << 20) // 2 - 16))  # spec of empty PUBs
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await _call(channel, attack, ATTACKER.key)
    assert refused.value.code() is grpc.StatusCode.INVALID_ARGUMENT
    assert refused.value.details().startswith(
        "spec.pubs: a job holds at most 1000 PUBs, got more than 1000;"
    )
    assert decodes.merged == 0
    assert await _call(channel, _request("after"), BYSTANDER.key) == b"after"


# --- StreamJobResult: counts slices are built on the event loop --------------------------
#
# A counts slice is built on the event loop (gateway.api.result_stream._sampler_chunks): it
# copied its part of the stored counts into a Python list and back into a new message, ~74 ms
# per 3 MiB chunk (500,000 outcomes of a 24-bit register); cut and sent as wire bytes since,
# ~11 ms.
# Paced per message (stream_messages_per_s = 5000), not per byte or per CPU second. Measured,
# before the cut, against a real gateway with the default configuration: a tenant's counts-only
# job (24 qubits all in
# superposition, 900,000 shots: 3.5 MB of counts, ~1 s of simulation, run once) streamed
# with chunk_bytes = 3 MiB by two concurrent loops (~16 streams/s) took another tenant's Run
# p50 from 6.4 ms to 110 ms, GetJob from 2.5 ms to 87 ms and health from 0.6 ms to 7.6 ms
# (max 80 ms).


def _counts_result(entries: int) -> bytes:
    from qgateway.v1 import job_pb2

    result = job_pb2.JobResult()
    sampler = result.pub_results.add().sampler
    sampler.shots = entries
    register = sampler.registers.add(name="c", num_bits=24)
    register.counts.add(
        outcomes=b"".join(i.to_bytes(3, "big") for i in range(entries)), counts=[1] * entries
    )
    return result.SerializeToString(deterministic=True)


class ResultManager:
    """A job manager holding one SUCCEEDED job of `mallory` whose stored result is `result`."""

    def __init__(self, result: bytes) -> None:
        from datetime import UTC, datetime

        from gateway.domain.jobs import Job, JobState

        self.data = result
        self.job = Job(
            id="j1",
            tenant="mallory",
            request_id="r1",
            backend="aer",
            state=JobState.SUCCEEDED,
            created_at=datetime(2026, 12, 1, tzinfo=UTC),
            num_pubs=1,
            seed=1,
        )

    async def get(self, tenant: str, job_id: str) -> Any:
        return self.job

    async def result_size(self, job: Any) -> int:
        return len(self.data)

    async def result(self, job: Any) -> bytes:
        return self.data


class _StreamContext:
    def time_remaining(self) -> float:
        return 30.0


async def test_a_bystander_runs_while_a_large_counts_slice_is_built(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from qgateway.v1 import job_service_pb2

    from gateway.api import result_stream
    from gateway.api.counts_slices import CountsSlices
    from gateway.api.job_service import JobServicer
    from gateway.api.paging import PageTokens
    from gateway.api.stream_budget import StreamBudget
    from gateway.api.stream_pace import StreamPace

    bystander_done = threading.Event()
    during: list[bool] = []

    class WaitingSlices(CountsSlices):
        def wire(self, first: int, stop: int) -> bytes:
            # Stands for building a large slice: the bystander should progress meanwhile.
            if min(stop, self.entries) - first > 100_000:
                during.append(bystander_done.wait(DECODE_WAIT_S))
            return super().wire(first, stop)

    monkeypatch.setattr(result_stream, "CountsSlices", WaitingSlices)
    servicer = JobServicer(
        ResultManager(_counts_result(500_000)),  # type: ignore[arg-type]
        4 << 20,
        page_tokens=PageTokens(bytes(32)),
        sessions=None,  # type: ignore[arg-type]
        stream_budget=StreamBudget(1 << 30, 1 << 30),
        stream_pace=StreamPace(5000),
    )
    request = job_service_pb2.StreamJobResultRequest(name="jobs/j1/result", chunk_bytes=3 << 20)

    async def attacker() -> int:
        return len([m async for m in servicer.StreamJobResult(request, _StreamContext())])  # type: ignore[arg-type]

    async def bystander() -> None:
        # Another tenant's call: a few turns of the event loop.
        for _ in range(5):
            await anyio.sleep(0.01)
        bystander_done.set()

    async with anyio.create_task_group() as tg:
        tg.start_soon(attacker)
        tg.start_soon(bystander)
    assert during and all(during), during


# --- Large requests decode two at a time, one per tenant -----------------------------------


async def test_one_tenants_large_requests_decode_one_at_a_time_beside_another_tenants(
    served: tuple[grpc.aio.Channel, Decodes], monkeypatch: pytest.MonkeyPatch
) -> None:
    channel, _ = served
    started: list[str] = []
    release = threading.Event()
    mallorys_started = threading.Event()
    others_started = threading.Event()

    def merge(message: Any, piece: bytes) -> None:
        # The first piece of each request holds its request_id.
        for name in (b"mallory-1", b"mallory-2", b"bob-1"):
            if name in piece:
                started.append(name.decode())
                if name == b"bob-1":
                    others_started.set()
                else:  # mallory's decodes wait until bob's has started
                    mallorys_started.set()
                    assert release.wait(DECODE_WAIT_S)
        message.MergeFromString(piece)

    monkeypatch.setattr(request_pieces, "_merge", merge)
    async with anyio.create_task_group() as tg:
        for name, key in (("mallory-1", ATTACKER), ("mallory-2", ATTACKER)):
            tg.start_soon(_call, channel, _request(name, observables=10_000), key.key)
        # Mallory's first decode holds her slot; her second waits for it, bob's does not.
        assert await anyio.to_thread.run_sync(mallorys_started.wait, DECODE_WAIT_S)
        tg.start_soon(_call, channel, _request("bob-1", observables=10_000), BYSTANDER.key)
        assert await anyio.to_thread.run_sync(others_started.wait, DECODE_WAIT_S)
        assert len(started) == 2 and started[1] == "bob-1", started
        release.set()
    assert sorted(started) == ["bob-1", "mallory-1", "mallory-2"]
