"""Results in qgateway.v1 over real gRPC (issue 7, defect 1): packed counts that split across
messages, sampler_output, admission sized by what was chosen, GetJobResult's size limit,
StreamJobResult's binding-major chunks, resume and digest, and the client's reassembly.

One gateway for the module. Expected bitstrings are hard-coded from X on chosen qubits, never
computed through the SDK path the gateway uses.
"""

from __future__ import annotations

import asyncio
import hashlib
import time
from collections import Counter
from collections.abc import Iterator
from typing import Any

import grpc
import pytest
from qgateway import AsyncClient, Client, sampler_pub
from qgateway.results import JobState
from qgateway.v1 import circuit_pb2, job_pb2, job_service_pb2, job_service_pb2_grpc

from tests.gateway_process import GatewayProcess, write_config
from tests.rpc import status_of

BACKENDS = """
[backends.aer]
adapter = "aer"
pool = { min_instances = 1, max_instances = 1 }

# Results above 1 MiB are refused at admission.
[backends.aer-small]
adapter = "aer"
pool = { min_instances = 1, max_instances = 1 }
max_result_mb = 1
"""

# X on qubits 0, 2, 4, 12 with registers of widths 1, 3 and 9:
#   a = "1"; b[1] <- q2: b = "010"; c[0] <- q4, c[8] <- q12: c = "100000001"
BIT_ORDER = """OPENQASM 3.0;
include "stdgates.inc";
qubit[13] q;
bit[1] a;
bit[3] b;
bit[9] c;
x q[0];
x q[2];
x q[4];
x q[12];
a[0] = measure q[0];
b[0] = measure q[1];
b[1] = measure q[2];
b[2] = measure q[3];
c[0] = measure q[4];
c[1] = measure q[5];
c[2] = measure q[6];
c[3] = measure q[7];
c[4] = measure q[8];
c[5] = measure q[9];
c[6] = measure q[10];
c[7] = measure q[11];
c[8] = measure q[12];
"""
# The same outcomes as packed big-endian rows (padding in the first byte's high bits).
BIT_ORDER_ROWS = {"a": bytes([0x01]), "b": bytes([0x02]), "c": bytes([0x01, 0x01])}


def wide_uniform(qubits: int) -> str:
    """h on every qubit, a dummy parameter so the PUB can be swept."""
    return (
        f'OPENQASM 3.0;\ninclude "stdgates.inc";\ninput float[64] theta;\nqubit[{qubits}] q;\n'
        f"bit[{qubits}] c;\nh q;\nrz(theta) q[0];\nc = measure q;\n"
    )


# Bytes of results open StreamJobResult calls of one tenant may hold: the wide job's result
# (~5 MB) once, not twice.
STREAM_BUDGET_MB = 8


@pytest.fixture(scope="module")
def gw(tmp_path_factory: pytest.TempPathFactory) -> Iterator[GatewayProcess]:
    root = tmp_path_factory.mktemp("results")
    server = f"max_streamed_result_mb_per_tenant = {STREAM_BUDGET_MB}\n"
    config = write_config(root / "g.toml", root / "data", BACKENDS, server=server)
    process = GatewayProcess.start(config, root / "gateway.log")
    yield process
    assert process.terminate() == 0, process.log_path.read_text()[-3000:]


@pytest.fixture(scope="module")
def client(gw: GatewayProcess) -> Iterator[Client]:
    # gRPC's default limits (4 MiB received per message): the point of these tests.
    with Client(gw.address) as c:
        yield c


@pytest.fixture(scope="module")
def jobs(gw: GatewayProcess) -> Iterator[Any]:
    # No BDP probing: the receive window stays at HTTP/2's 64 KiB, so a stream its caller
    # stops reading is held by flow control, as the stream-budget test needs (with probing the
    # window grew past a whole ~5 MB result on a loaded machine, and the first stream ended).
    with grpc.insecure_channel(gw.address, options=[("grpc.http2.bdp_probe", 0)]) as channel:
        yield job_service_pb2_grpc.JobServiceStub(channel)


def submit(jobs: Any, spec: job_pb2.JobSpec) -> str:
    name: str = jobs.SubmitJob(job_service_pb2.SubmitJobRequest(spec=spec), timeout=30).job.name
    for event in jobs.WatchJob(job_service_pb2.WatchJobRequest(name=name), timeout=300):
        if event.job.state == job_pb2.JOB_STATE_SUCCEEDED:
            return name
        assert event.job.state not in (job_pb2.JOB_STATE_FAILED, job_pb2.JOB_STATE_CANCELLED), (
            event.job.error
        )
    raise AssertionError(f"the watch of {name} ended before a final state")


def spec_of(
    pubs: list[circuit_pb2.Pub], output: int = 0, backend: str = "aer", seed: int = 3
) -> job_pb2.JobSpec:
    return job_pb2.JobSpec(
        backend=f"backends/{backend}",
        pubs=pubs,
        options=job_pb2.JobOptions(seed=seed, sampler_output=output),
    )


def stream(
    jobs: Any, name: str, chunk_bytes: int = 0, start: tuple[int, int] = (0, 0)
) -> list[job_service_pb2.StreamJobResultResponse]:
    request = job_service_pb2.StreamJobResultRequest(
        name=f"{name}/result",
        chunk_bytes=chunk_bytes,
        start_pub_index=start[0],
        start_binding_index=start[1],
    )
    return list(jobs.StreamJobResult(request, timeout=120))


# --- (a) a result larger than 4 MiB, every binding's counts larger than one message ----------

WIDE_QUBITS = 22
WIDE_SHOTS = 400_000
WIDE_BINDINGS = 3


@pytest.fixture(scope="module")
def wide_job(client: Client) -> Any:
    pub = sampler_pub(
        wide_uniform(WIDE_QUBITS), shots=WIDE_SHOTS, parameter_values=[[0.0]] * WIDE_BINDINGS
    )
    return client.run_pubs([pub], backend="aer", seed=5, sampler_output="counts", timeout=300)


def test_a_counts_result_larger_than_a_message_arrives_through_default_limits(
    wide_job: Any,
) -> None:
    # Run answered without it (too large for one message); the client streamed it.
    assert wide_job.state is JobState.SUCCEEDED
    assert wide_job.result_too_large and wide_job.result is not None
    pub = wide_job.result.sampler(0)
    assert pub.shape == (WIDE_BINDINGS,) and pub.shots == WIDE_SHOTS
    register = pub["c"]
    assert register.samples == b""  # counts only
    for binding in range(WIDE_BINDINGS):
        counts = pub.counts(binding)
        assert sum(counts.values()) == WIDE_SHOTS
        # 400k draws from 2^22 outcomes: about 381k distinct ones (sd ~ 300).
        assert 375_000 < len(counts) < 388_000
        assert all(len(key) == WIDE_QUBITS and set(key) <= {"0", "1"} for key in counts)


def test_every_binding_s_counts_span_several_messages_and_the_digest_matches(
    wide_job: Any, jobs: Any
) -> None:
    responses = stream(jobs, wide_job.name)
    total = sum(r.ByteSize() for r in responses)
    assert total > 4 << 20
    assert max(r.ByteSize() for r in responses) < 4 << 20
    per_binding = Counter(r.counts.binding_index for r in responses if r.HasField("counts"))
    assert sorted(per_binding) == list(range(WIDE_BINDINGS))
    assert min(per_binding.values()) >= 2
    for r in responses:
        if r.HasField("counts"):
            c = r.counts.counts
            assert len(c.outcomes) == 3 * len(c.counts)  # 22 bits: 3-byte rows
            assert len(c.outcomes) + len(c.counts) * 3 <= 1 << 20  # the default chunk
    assert responses[-1].HasField("digest")
    # The digest is the SHA-256 of the whole result, which the client's reassembly matched.
    whole = job_pb2.JobResult()
    result = wide_job.result.sampler(0)["c"]
    sampler = whole.pub_results.add().sampler
    sampler.shape.append(WIDE_BINDINGS)
    sampler.shots = WIDE_SHOTS
    reg = sampler.registers.add(name="c", num_bits=WIDE_QUBITS)
    for counts in result.counts_by_binding:
        reg.counts.add(outcomes=counts.outcomes, counts=counts.counts)
    canonical = whole.SerializeToString(deterministic=True)
    assert hashlib.sha256(canonical).digest() == responses[-1].digest.sha256


def test_get_job_result_too_large_is_failed_precondition(wide_job: Any, jobs: Any) -> None:
    with pytest.raises(grpc.RpcError) as info:
        jobs.GetJobResult(
            job_service_pb2.GetJobResultRequest(name=f"{wide_job.name}/result"), timeout=30
        )
    status = status_of(info.value)
    assert status.code is grpc.StatusCode.FAILED_PRECONDITION
    assert status.reason == "RESULT_TOO_LARGE"
    assert status.metadata["job"] == wide_job.name
    assert int(status.metadata["resultBytes"]) > int(status.metadata["maxResponseBytes"])
    # GetJob answers the state only, and fits.
    job = jobs.GetJob(job_service_pb2.GetJobRequest(name=wide_job.name), timeout=30).job
    assert job.state == job_pb2.JOB_STATE_SUCCEEDED


def test_open_streams_hold_their_results_against_the_tenants_memory_budget(
    wide_job: Any, jobs: Any
) -> None:
    with pytest.raises(grpc.RpcError) as too_large:
        jobs.GetJobResult(
            job_service_pb2.GetJobResultRequest(name=f"{wide_job.name}/result"), timeout=30
        )
    size = int(status_of(too_large.value).metadata["resultBytes"])
    budget = STREAM_BUDGET_MB << 20
    assert budget // 2 < size <= budget, "the premise: one result fits the budget, two do not"
    request = job_service_pb2.StreamJobResultRequest(name=f"{wide_job.name}/result")
    first = jobs.StreamJobResult(request, timeout=120)
    try:
        # Read one message and stop: the server holds the result while the caller waits
        # (flow control stops it long before the end of ~5 MB).
        assert next(first).HasField("header")
        with pytest.raises(grpc.RpcError) as refused:
            next(jobs.StreamJobResult(request, timeout=30))
        err = status_of(refused.value)
        assert err.code is grpc.StatusCode.RESOURCE_EXHAUSTED
        assert err.reason == "STREAM_MEMORY_EXHAUSTED" and err.metadata["scope"] == "tenant"
        # The first stream holds the stored size (its samples and counts are views of it).
        assert err.metadata["resultBytes"] == str(size)
        assert int(err.metadata["heldBytes"]) == size
        assert err.has_quota_failure and err.retry_delay_s is not None
    finally:
        first.cancel()
    # A stream its caller closed gives its bytes back (once the server has seen it go).
    deadline = time.monotonic() + 30
    while True:
        try:
            assert stream(jobs, wide_job.name)[-1].HasField("digest")
            break
        except grpc.RpcError as again:
            assert status_of(again).reason == "STREAM_MEMORY_EXHAUSTED"
            assert time.monotonic() < deadline, "a closed stream kept its bytes"


def test_client_get_result_falls_back_to_streaming(wide_job: Any, client: Client) -> None:
    result = client.get_result(wide_job.name, timeout=120)
    assert result.sampler(0).counts(2) == wide_job.result.sampler(0).counts(2)


def test_async_client_fetches_the_large_result_too(wide_job: Any, gw: GatewayProcess) -> None:
    async def main() -> tuple[dict[str, int], dict[str, int]]:
        async with AsyncClient(gw.address) as aclient:  # gRPC's default limits as well
            fetched = await aclient.get_result(wide_job.name, timeout=120)
            streamed = await aclient.stream_result(wide_job.name, chunk_bytes=1 << 16)
            return fetched.sampler(0).counts(1), streamed.sampler(0).counts(1)

    fetched, streamed = asyncio.run(main())
    expected = wide_job.result.sampler(0).counts(1)
    assert fetched == expected and streamed == expected


# --- (b) resume ----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def sweep_job(jobs: Any) -> str:
    # Two PUBs of 4 and 3 bindings; 12 qubits of uniform outcomes, both samples and counts.
    pubs = [
        sampler_pub(wide_uniform(12), shots=3000, parameter_values=[[0.1 * i] for i in range(4)]),
        sampler_pub(BIT_ORDER, shots=500, parameter_values=None),
        sampler_pub(wide_uniform(12), shots=2000, parameter_values=[[0.0]] * 3),
    ]
    return submit(jobs, spec_of(pubs))


def _binding(response: job_service_pb2.StreamJobResultResponse, shot_bytes: int) -> int:
    if response.HasField("samples"):
        return response.samples.offset // shot_bytes
    return response.counts.binding_index


@pytest.mark.parametrize("start", [(0, 2), (2, 1), (1, 0), (2, 2)])
def test_a_resumed_stream_is_the_tail_of_the_full_stream(
    sweep_job: str, jobs: Any, start: tuple[int, int]
) -> None:
    full = stream(jobs, sweep_job, chunk_bytes=4096)
    resumed = stream(jobs, sweep_job, chunk_bytes=4096, start=start)
    headers = {r.pub_index: r for r in full if r.HasField("header")}
    shot_bytes = {0: 3000 * 2, 2: 2000 * 2}  # 12 bits: 2-byte rows
    tail = []
    for r in full[:-1]:
        if r.HasField("header"):
            if r.pub_index > start[0]:
                tail.append(r)
            continue
        # PUB 1 has a single binding.
        binding = 0 if r.pub_index == 1 else _binding(r, shot_bytes[r.pub_index])
        if (r.pub_index, binding) >= start:
            tail.append(r)
    assert resumed[0] == headers[start[0]]
    assert resumed[1:-1] == tail
    assert resumed[-1] == full[-1] and resumed[-1].HasField("digest")
    for r in full:
        if r.HasField("samples"):
            assert len(r.samples.data) <= 4096


def test_the_client_resumes_a_stream_that_breaks(
    sweep_job: str, client: Client, monkeypatch: pytest.MonkeyPatch
) -> None:
    whole = client.stream_result(sweep_job, chunk_bytes=1024, timeout=120)
    real = client._jobs
    requests: list[job_service_pb2.StreamJobResultRequest] = []

    class Broken(grpc.RpcError):  # type: ignore[misc]
        def __init__(self, code: grpc.StatusCode) -> None:
            self._code = code

        def code(self) -> grpc.StatusCode:
            return self._code

        def details(self) -> str:
            return "stream reset"

        def trailing_metadata(self) -> tuple[()]:
            return ()

    class BreakingCall:
        """The real stream, cut after a number of messages (a connection reset mid-way)."""

        def __init__(self, call: Any, cut: int | None, code: grpc.StatusCode) -> None:
            self.call, self.cut, self.code = call, cut, code

        def __iter__(self) -> Iterator[job_service_pb2.StreamJobResultResponse]:
            for i, response in enumerate(self.call):
                if i == self.cut:
                    raise Broken(self.code)
                yield response

        def cancel(self) -> None:
            self.call.cancel()

    cuts = [(25, grpc.StatusCode.UNAVAILABLE), (7, grpc.StatusCode.INTERNAL)]

    class Jobs:
        def __getattr__(self, name: str) -> Any:
            return getattr(real, name)

        def StreamJobResult(self, request: Any, **kwargs: Any) -> BreakingCall:
            requests.append(request)
            cut, code = cuts.pop(0) if cuts else (None, grpc.StatusCode.OK)
            return BreakingCall(real.StreamJobResult(request, **kwargs), cut, code)

    monkeypatch.setattr(client, "_jobs_stub", Jobs())
    resumed = client.stream_result(sweep_job, chunk_bytes=1024, timeout=120)
    assert resumed == whole
    starts = [(r.start_pub_index, r.start_binding_index) for r in requests]
    assert len(starts) == 3 and starts[0] == (0, 0) and starts[1] > (0, 0)
    assert starts == sorted(starts)


# --- (c)/(d) what a job asks for ------------------------------------------------------------


@pytest.mark.parametrize(
    ("output", "samples", "counts"),
    [
        (job_pb2.SAMPLER_OUTPUT_UNSPECIFIED, True, True),
        (job_pb2.SAMPLER_OUTPUT_SAMPLES_AND_COUNTS, True, True),
        (job_pb2.SAMPLER_OUTPUT_SAMPLES, True, False),
        (job_pb2.SAMPLER_OUTPUT_COUNTS, False, True),
    ],
)
def test_sampler_output_returns_only_what_was_asked(
    jobs: Any, output: int, samples: bool, counts: bool
) -> None:
    name = submit(jobs, spec_of([sampler_pub(BIT_ORDER, shots=7)], output=output))
    job = jobs.GetJob(job_service_pb2.GetJobRequest(name=name), timeout=10).job
    # The job reports what it asked for, the default written out.
    assert job.sampler_output == (output or job_pb2.SAMPLER_OUTPUT_SAMPLES_AND_COUNTS)
    result = jobs.GetJobResult(
        job_service_pb2.GetJobResultRequest(name=f"{name}/result"), timeout=30
    ).result
    assert result.name == f"{name}/result"
    registers = result.pub_results[0].sampler.registers
    assert [r.name for r in registers] == ["a", "b", "c"]
    for reg in registers:
        row = BIT_ORDER_ROWS[reg.name]
        assert reg.samples == (row * 7 if samples else b"")
        if counts:
            assert [(c.outcomes, list(c.counts)) for c in reg.counts] == [(row, [7])]
        else:
            assert len(reg.counts) == 0


def test_the_client_decodes_packed_counts_in_qiskit_bit_order(client: Client) -> None:
    for output in ("counts", "samples", "samples_and_counts"):
        pub = client.run(BIT_ORDER, shots=5, sampler_output=output, timeout=60).sampler(0)
        assert pub.counts(register="a") == {"1": 5}
        assert pub.counts(register="b") == {"010": 5}
        assert pub.counts(register="c") == {"100000001": 5}
        if output != "counts":
            assert pub.counts() == {"100000001 010 1": 5}


def test_admission_sizes_what_was_chosen(jobs: Any) -> None:
    # 20 bits, 200 000 shots on a backend with a 1 MiB result limit: samples are 600 kB;
    # counts could be 200 000 distinct 3-byte outcomes with 3-byte counts, 1.2 MB.
    qasm = "OPENQASM 3.0;\nqubit[20] q;\nbit[20] c;\nc = measure q;\n"
    pub = sampler_pub(qasm, shots=200_000)
    for output in (job_pb2.SAMPLER_OUTPUT_COUNTS, job_pb2.SAMPLER_OUTPUT_SAMPLES_AND_COUNTS):
        with pytest.raises(grpc.RpcError) as info:
            jobs.SubmitJob(
                job_service_pb2.SubmitJobRequest(spec=spec_of([pub], output, "aer-small")),
                timeout=30,
            )
        status = status_of(info.value)
        assert status.code is grpc.StatusCode.INVALID_ARGUMENT
        assert status.reason == "RESULT_LIMIT_EXCEEDED"
        assert status.metadata["maxResultBytes"] == str(1 << 20)
        assert int(status.metadata["estimateBytes"]) > 1_200_000
        assert status.fields == ["spec.pubs[0]"]
    # Samples only is sized by the samples, and runs.
    name = submit(jobs, spec_of([pub], job_pb2.SAMPLER_OUTPUT_SAMPLES, "aer-small"))
    result = jobs.GetJobResult(
        job_service_pb2.GetJobResultRequest(name=f"{name}/result"), timeout=30
    ).result
    reg = result.pub_results[0].sampler.registers[0]
    assert reg.samples == bytes(3 * 200_000) and len(reg.counts) == 0


# --- hostile or mistaken requests ----------------------------------------------------------


@pytest.mark.parametrize(
    ("fields", "reason", "field"),
    [
        ({"chunk_bytes": -1}, "INVALID_CHUNK_SIZE", "chunk_bytes"),
        ({"start_pub_index": -1}, "INVALID_RESUME_POSITION", "start_pub_index"),
        ({"start_binding_index": -3}, "INVALID_RESUME_POSITION", "start_binding_index"),
        ({"start_pub_index": 3}, "INVALID_RESUME_POSITION", "start_pub_index"),
        ({"start_pub_index": 2, "start_binding_index": 3}, "INVALID_RESUME_POSITION",
         "start_binding_index"),
        ({"start_pub_index": 2**31 - 1}, "INVALID_RESUME_POSITION", "start_pub_index"),
        ({"start_binding_index": 2**63 - 1}, "INVALID_RESUME_POSITION", "start_binding_index"),
    ],
)  # fmt: skip
def test_bad_stream_requests_are_invalid_argument(
    sweep_job: str, jobs: Any, fields: dict[str, int], reason: str, field: str
) -> None:
    request = job_service_pb2.StreamJobResultRequest(name=f"{sweep_job}/result", **fields)
    with pytest.raises(grpc.RpcError) as info:
        list(jobs.StreamJobResult(request, timeout=30))
    status = status_of(info.value)
    assert status.code is grpc.StatusCode.INVALID_ARGUMENT
    assert (status.reason, status.fields) == (reason, [field])


def test_an_unknown_sampler_output_is_invalid_argument(jobs: Any) -> None:
    spec = spec_of([sampler_pub(BIT_ORDER, shots=5)])
    spec.options.sampler_output = 42  # type: ignore[assignment]
    with pytest.raises(grpc.RpcError) as info:
        jobs.SubmitJob(job_service_pb2.SubmitJobRequest(spec=spec), timeout=30)
    status = status_of(info.value)
    assert status.code is grpc.StatusCode.INVALID_ARGUMENT
    assert (status.reason, status.fields) == (
        "INVALID_SAMPLER_OUTPUT",
        ["spec.options.sampler_output"],
    )


@pytest.mark.parametrize("validate_only", [False, True])
def test_a_negative_seed_is_invalid_argument(jobs: Any, validate_only: bool) -> None:
    # It was accepted at the edge, started on a worker before its commit, then refused by the
    # store as INTERNAL, and taken back with a worker kill (every tenant paid the respawn).
    spec = spec_of([sampler_pub(BIT_ORDER, shots=5)])
    spec.options.seed = -1
    request = job_service_pb2.SubmitJobRequest(spec=spec, validate_only=validate_only)
    with pytest.raises(grpc.RpcError) as info:
        jobs.SubmitJob(request, timeout=30)
    status = status_of(info.value)
    assert status.code is grpc.StatusCode.INVALID_ARGUMENT
    assert (status.reason, status.fields) == ("INVALID_SEED", ["spec.options.seed"])


def test_client_sampler_output_argument(client: Client) -> None:
    with pytest.raises(ValueError, match="unknown sampler output"):
        client.run(BIT_ORDER, sampler_output="everything")
    with pytest.raises(ValueError, match="unknown sampler output"):
        client.run(BIT_ORDER, sampler_output=42)
    with pytest.raises(ValueError, match="contradicts"):
        client.run(BIT_ORDER, counts_only=True, sampler_output="samples")
    # counts_only is the shorthand it always was.
    assert client.run(BIT_ORDER, shots=3, counts_only=True).sampler(0)["c"].samples == b""
