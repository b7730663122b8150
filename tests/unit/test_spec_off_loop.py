"""A large JobSpec is digested and decoded off the event loop: both walk every Pauli term in
Python, and a 15 MB observable held the loop ~6 s. The error boundary tells the servicer the
request's size on the wire; small specs stay on the loop (and in the spec cache)."""

from __future__ import annotations

import asyncio
import threading
from typing import Any

import pytest
from qgateway.v1 import circuit_pb2, job_pb2

from gateway.api import codec, job_service
from gateway.api.context import Context, request_bytes, set_request_bytes
from gateway.api.job_service import JobServicer
from gateway.api.request_digest import request_digest
from gateway.domain.errors import GatewayError, InvalidArgument
from gateway.interceptors import boundary
from gateway.jobs.runner_step import RunnerStep
from gateway.offload import INLINE_BYTES

_QASM = 'OPENQASM 3.0;\ninclude "stdgates.inc";\nqubit[2] q;\nh q[0];\n'


def _spec(terms: int) -> job_pb2.JobSpec:
    observable = circuit_pb2.Observable(
        terms=[circuit_pb2.PauliTerm(pauli="ZZ", coefficient=0.5) for _ in range(terms)]
    )
    pub = circuit_pb2.EstimatorPub(
        circuit=circuit_pb2.Circuit(qasm3=_QASM), observables=[observable]
    )
    return job_pb2.JobSpec(backend="backends/aer", pubs=[circuit_pb2.Pub(estimator=pub)])


def test_the_boundary_tells_the_servicer_the_request_size() -> None:
    data = _spec(3).SerializeToString()
    receive = boundary.size_checked(1 << 20)
    seen: list[tuple[Any, int]] = []

    async def behaviour(request: Any, context: Context) -> None:
        seen.append((request, request_bytes()))

    async def requests() -> Any:
        yield receive(data)

    async def behaviour_reading(request: Any, context: Context) -> None:
        await behaviour(await request.read(), context)  # as the decode interceptor does

    handle = boundary._wrap_unary(behaviour_reading, "/qgateway.v1.JobService/SubmitJob")
    asyncio.run(handle(requests(), None))
    # The bytes as received (decoded inside authentication), and their size for the call.
    assert seen == [(data, len(data))]


@pytest.mark.parametrize(("terms", "on_loop"), [(10, True), (INLINE_BYTES // 10, False)])
def test_large_specs_are_digested_and_decoded_off_the_loop(
    monkeypatch: pytest.MonkeyPatch, terms: int, on_loop: bool
) -> None:
    threads: list[tuple[str, int]] = []
    decode_spec = codec.decode_spec

    def digest(spec: job_pb2.JobSpec) -> bytes:
        threads.append(("digest", threading.get_ident()))
        return request_digest(spec)

    def decode(spec: job_pb2.JobSpec) -> Any:
        threads.append(("decode", threading.get_ident()))
        return decode_spec(spec)

    monkeypatch.setattr(job_service, "request_digest", digest)
    monkeypatch.setattr(job_service.codec, "decode_spec", decode)
    none: Any = None
    servicer = JobServicer(
        none, 4 << 20, page_tokens=none, sessions=none, stream_budget=none, stream_pace=none
    )
    spec = _spec(terms)
    size = spec.ByteSize()

    async def derive() -> tuple[bytes, bytes, Any]:
        set_request_bytes(size)  # as the boundary records it for the call
        return await servicer._derived("acme", spec, digest=True)

    loop_thread = threading.get_ident()
    spec_bytes, spec_digest, decoded = asyncio.run(derive())
    assert spec_bytes == spec.SerializeToString(deterministic=True)
    assert spec_digest == request_digest(spec)
    assert not isinstance(decoded, GatewayError)
    assert len(decoded.pubs[0].observables[0].terms) == terms
    assert [name for name, _ in threads] == ["digest", "decode"]
    assert all((ident == loop_thread) is on_loop for _, ident in threads)


def test_large_specs_are_derived_one_per_tenant_at_a_time(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Each derivation is pure Python holding the GIL: two of one tenant's at once took a
    # bystander's GetJob from 2.4 to 21 ms under four clients' large specs, one at a time to
    # 6 ms. One per tenant, and another tenant's spec takes the second slot at once: it is not
    # queued behind every spec one tenant sent, nor behind the one it derives.
    order: list[str] = []
    first_started, release = threading.Event(), threading.Event()

    def derive(spec: job_pb2.JobSpec, digest: bool, specs: Any) -> tuple[bytes, bytes, Any]:
        order.append(spec.labels["who"])
        if spec.labels["who"] == "heavy-1":
            first_started.set()
            release.wait(10)
        return b"", b"", None

    monkeypatch.setattr(job_service, "_derive", derive)
    none: Any = None
    servicer = JobServicer(
        none, 4 << 20, page_tokens=none, sessions=none, stream_budget=none, stream_pace=none
    )

    async def derived(tenant: str, who: str) -> None:
        set_request_bytes(INLINE_BYTES + 1)
        spec = job_pb2.JobSpec(backend="backends/aer", labels={"who": who})
        await servicer._derived(tenant, spec, digest=True)

    async def main() -> None:
        first = asyncio.ensure_future(derived("heavy", "heavy-1"))
        await asyncio.to_thread(first_started.wait, 10)
        rest = [asyncio.ensure_future(derived("heavy", f"heavy-{i}")) for i in (2, 3)]
        await asyncio.sleep(0)  # queued before the other tenant asks
        other = asyncio.ensure_future(derived("other", "other-1"))
        await asyncio.wait_for(other, 10)  # while heavy-1 still holds its slot
        assert order == ["heavy-1", "other-1"]  # heavy's others wait for its one slot
        release.set()
        await asyncio.gather(first, *rest)

    asyncio.run(main())
    assert order == ["heavy-1", "other-1", "heavy-2", "heavy-3"]


class _Format:
    """A stored format that records the thread each spec is decoded on."""

    def __init__(self) -> None:
        self.threads: list[int] = []

    def decode_spec(self, data: bytes) -> Any:
        self.threads.append(threading.get_ident())
        return data


@pytest.mark.anyio
@pytest.mark.parametrize(("size", "on_loop"), [(100, True), (INLINE_BYTES + 1, False)])
async def test_stored_specs_are_decoded_off_the_loop_when_large(size: int, on_loop: bool) -> None:
    # Re-preparing a job after a restart (or on another replica) decodes its stored spec: a
    # spec of megabytes of Pauli terms took seconds on the loop.
    stored = _Format()
    step = RunnerStep(None, stored, None, None)  # type: ignore[arg-type]
    assert await step._decode(b"x" * size) == b"x" * size
    assert (stored.threads == [threading.get_ident()]) is on_loop


class _Retrying:
    """A manager that has the job of an earlier request with the same request_id."""

    def __init__(self) -> None:
        self.looked_up: list[tuple[str, str, bytes]] = []

    async def find_request(self, tenant: str, request_id: str, digest: bytes) -> Any:
        self.looked_up.append((tenant, request_id, digest))
        return "the earlier job"


@pytest.mark.parametrize("terms", [10, INLINE_BYTES // 10])
def test_a_retry_that_no_longer_decodes_gets_its_job(
    monkeypatch: pytest.MonkeyPatch, terms: int
) -> None:
    # The request_id is looked up when the submission fails, its decoding included (a limit
    # lowered since), on either path: a retry gets its job.
    def refuse(spec: job_pb2.JobSpec) -> Any:
        raise InvalidArgument("TOO_MANY_TERMS", "a limit lowered since")

    monkeypatch.setattr(job_service.codec, "decode_spec", refuse)
    manager = _Retrying()
    none: Any = None
    servicer = JobServicer(
        manager,  # type: ignore[arg-type]
        4 << 20,
        page_tokens=none,
        sessions=none,
        stream_budget=none,
        stream_pace=none,
    )
    spec = _spec(terms)

    async def submit() -> tuple[Any, bool]:
        set_request_bytes(spec.ByteSize())
        return await servicer._submit(None, "r-1", spec)

    assert asyncio.run(submit()) == ("the earlier job", False)
    [(_, request_id, digest)] = manager.looked_up
    assert request_id == "r-1" and digest == request_digest(spec)
