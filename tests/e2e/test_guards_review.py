"""Review of the suite against DESIGN.md's "Guards against a test that passes while users lose":
end-to-end tests (the session gateway) closing gaps the existing tests leave open."""

from __future__ import annotations

import functools
import threading
from collections.abc import Callable, Iterator

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from qgateway import Client, InvalidArgumentError, RetryPolicy
from qgateway.v1 import (
    backend_service_pb2,
    backend_service_pb2_grpc,
    circuit_pb2,
    job_pb2,
    job_service_pb2,
    job_service_pb2_grpc,
)

from tests.qpy_payloads import dump, nested_block_declaring, nested_ifs
from tests.rpc import ghz, sampler_spec, status_of

INVALID = grpc.StatusCode.INVALID_ARGUMENT
DEFAULT_PRECISION = 0.015625  # circuit.proto: an unset precision is the job's, then this


@pytest.fixture(scope="module")
def channel(address: str) -> Iterator[grpc.Channel]:
    with grpc.insecure_channel(address, options=[("grpc.max_send_message_length", 64 << 20)]) as ch:
        yield ch


@pytest.fixture(scope="module")
def client(address: str) -> Iterator[Client]:
    with Client(address, retry=RetryPolicy(max_attempts=1)) as c:
        yield c


# x on q[0] only: Qiskit's little-endian Pauli labels put q[0] rightmost, so "IZ" is -1 and "ZI"
# is +1. An asymmetric state, so a reversed qubit order shows (the broadcast tests in
# tests/e2e/test_jobs.py use a Bell-like state, on which "ZI" and "IZ" agree).
X0 = 'OPENQASM 3.0;\ninclude "stdgates.inc";\nqubit[2] q;\nx q[0];\n'


@pytest.mark.parametrize("backend", ["aer", "aer-mps"])
def test_an_estimate_without_a_precision_reports_its_sampling_error(
    client: Client, backend: str
) -> None:
    # Every end-to-end estimator test passes precision explicitly (0.0 or a value); only an
    # adapter unit test covers the unset case. A client that leaves it unset asked for no
    # exact value: a standard error of zero there would claim a certainty the sampling lacks.
    result = client.estimate(X0, ["IZ", "ZI"], backend=backend, seed=13, timeout=30)
    assert result.shape == (2,)
    errors = result.standard_errors
    assert all(0 < e <= 3 * DEFAULT_PRECISION for e in errors), errors
    want = [-1.0, 1.0]  # hard-coded, not from the SDK the gateway runs
    for got, expected, error in zip(result.expectation_values, want, errors, strict=True):
        assert abs(got - expected) <= 5.5 * max(error, DEFAULT_PRECISION), (got, expected)


def _refused(call: Callable[[], object]) -> tuple[grpc.StatusCode, str]:
    with pytest.raises(grpc.RpcError) as exc:
        call()
    info = status_of(exc.value)
    assert info.domain == "qgateway.dev", info
    return info.code, info.reason


def test_refusals_the_suite_checks_loosely_have_their_specific_code_and_reason(
    channel: grpc.Channel,
) -> None:
    # tests/integration/test_bad_input.py::test_unknown_and_malformed_job_names checks CancelJob
    # of an unknown job by its code only, test_paging_errors the page-size refusals by their
    # reason only, and tests/e2e/test_hostile_isolation.py::test_errors_are_client_errors_not_
    # internal accepts any INVALID_ARGUMENT for a circuit of nothing but comments: each would
    # pass with another code or reason, which clients branch on.
    jobs = job_service_pb2_grpc.JobServiceStub(channel)
    backends = backend_service_pb2_grpc.BackendServiceStub(channel)
    assert _refused(
        lambda: jobs.CancelJob(
            job_service_pb2.CancelJobRequest(name="jobs/doesnotexist"), timeout=10
        )
    ) == (grpc.StatusCode.NOT_FOUND, "JOB_NOT_FOUND")
    assert _refused(
        lambda: jobs.ListJobs(job_service_pb2.ListJobsRequest(page_size=-1), timeout=10)
    ) == (INVALID, "INVALID_PAGE_SIZE")
    assert _refused(
        lambda: backends.ListBackends(
            backend_service_pb2.ListBackendsRequest(page_size=-3), timeout=10
        )
    ) == (INVALID, "INVALID_PAGE_SIZE")
    for text, reason in [
        ("// nothing here\n", "INVALID_QASM"),  # no statement at all
        ("OPENQASM 3.0;\n/* still nothing */\n", "NO_MEASUREMENTS"),  # a program, no bits
    ]:
        request = job_service_pb2.SubmitJobRequest(spec=sampler_spec(text, shots=1))
        assert _refused(functools.partial(jobs.SubmitJob, request, timeout=20)) == (
            INVALID,
            reason,
        ), text


def _hostile_requests() -> list[tuple[str, bytes]]:
    """The refused-before-arithmetic classes of tests/integration/test_bad_input.py, which
    check each one's refusal but never that anyone else is served while they arrive."""
    huge_shape = sampler_spec(ghz(2))
    huge_shape.pubs[0].sampler.parameter_values.shape.extend([2**31 - 1] * 100_000)
    many_pubs = sampler_spec(ghz(2))
    for _ in range(1000):
        many_pubs.pubs.append(many_pubs.pubs[0])
    observable = circuit_pb2.Pub(
        estimator=circuit_pb2.EstimatorPub(
            circuit=circuit_pb2.Circuit(qasm3="OPENQASM 3.0;\nqubit[1] q;\nh q[0];\n"),
            observables=[circuit_pb2.Observable(terms=[circuit_pb2.PauliTerm(pauli="Z")])],
            observables_shape=[2**31 - 1] * 100_000,
        )
    )
    huge_observables = job_pb2.JobSpec(backend="backends/aer", pubs=[observable])
    oversize = sampler_spec(ghz(2) + "// " + "x" * (5 << 20) + "\n")
    return [
        (name, job_service_pb2.SubmitJobRequest(spec=spec).SerializeToString())
        for name, spec in (
            ("huge-shape", huge_shape),
            ("too-many-pubs", many_pubs),
            ("huge-observables-shape", huge_observables),
            ("oversize", oversize),
        )
    ] + [("undecodable", b"\x12\x80\x80\x80\x80\x10")]


@pytest.mark.timeout(30)
def test_a_stream_of_refused_requests_leaves_others_served(
    channel: grpc.Channel, client: Client
) -> None:
    # Two threads send the hostile requests back to back, so some are always being received,
    # decoded or refused while a bystander's job (a circuit never seen before: it is compiled)
    # runs and health is asked with a short deadline.
    raw = channel.unary_unary("/qgateway.v1.JobService/SubmitJob")
    requests = _hostile_requests()
    stop = threading.Event()
    rounds = [0]  # full rounds of hostile requests ended, under `ended`
    ended = threading.Condition()
    seen: dict[str, set[str]] = {name: set() for name, _ in requests}
    problems: list[str] = []

    def flood() -> None:
        while not stop.is_set():
            for name, payload in requests:
                try:
                    raw(payload, timeout=20)
                except grpc.RpcError as err:
                    seen[name].add(status_of(err).reason)
                else:
                    problems.append(f"{name} was accepted")
            with ended:
                rounds[0] += 1
                ended.notify_all()

    threads = [threading.Thread(target=flood, daemon=True) for _ in range(2)]
    for thread in threads:
        thread.start()
    try:
        # Each class has been refused at least once (the flood is under way) before the
        # bystander starts: a synchronisation, not a sleep.
        with ended:
            assert ended.wait_for(lambda: rounds[0] >= 1, 20), "no round of hostile requests"
            before = rounds[0]
        text = ghz(3).replace("h q[0];", "h q[0];\nrz(0.4242) q[1];")
        # Deadlines bound the bystander: its Run and each health check.
        counts = client.run(text, backend="aer", shots=32, seed=21, timeout=15).counts()
        assert set(counts) <= {"000", "111"} and sum(counts.values()) == 32, counts
        health = health_pb2_grpc.HealthStub(channel)
        for _ in range(5):
            reply = health.Check(health_pb2.HealthCheckRequest(service=""), timeout=2)
            assert reply.status == health_pb2.HealthCheckResponse.SERVING
        # The flood went on meanwhile: more rounds ended while the bystander was served.
        with ended:
            assert ended.wait_for(lambda: rounds[0] > before, 20), "the flood stalled"
        assert all(thread.is_alive() for thread in threads)
    finally:
        stop.set()
        for thread in threads:
            thread.join(30)
    assert not problems, problems
    assert seen == {
        "huge-shape": {"INVALID_PARAMETER_VALUES"},
        "too-many-pubs": {"TOO_MANY_PUBS"},
        "huge-observables-shape": {"INVALID_OBSERVABLE"},
        "oversize": {"REQUEST_TOO_LARGE"},
        "undecodable": {"MALFORMED_REQUEST"},
    }, seen


@pytest.mark.parametrize("qubits", [15, 16])
def test_a_circuit_admitted_within_the_memory_budget_also_runs(client: Client, qubits: int) -> None:
    # tests/integration/test_bad_input.py::test_memory_budget_is_configuration checks only
    # `reply.job.state != JOB_STATE_UNSPECIFIED` for the circuits that fit aer-tiny's 1 MiB
    # budget: true of every job SubmitJob returns, so a job admitted and then failed by its
    # worker (out of memory, budget applied twice) passes it. 16 qubits is the boundary the
    # comment there names (16 bytes * 2^16 = 1 MiB).
    result = client.run(ghz(qubits), backend="aer-tiny", shots=20, seed=5, timeout=30)
    counts = result.counts()
    assert set(counts) <= {"0" * qubits, "1" * qubits} and sum(counts.values()) == 20, counts


@pytest.mark.parametrize(
    ("payload", "reason"),
    [
        (dump(nested_ifs(300)), "CIRCUIT_TOO_COMPLEX"),
        (nested_block_declaring(2**26), "CIRCUIT_TOO_COMPLEX"),
        ("OPENQASM 3.0;\nqubit[1] q;\nbit[" + " " * 4000, "INVALID_QASM"),
    ],
    ids=["qpy-nested-ifs", "qpy-huge-nested-declaration", "backtracking-text"],
)
def test_the_contained_hostile_payloads_are_refused_within_a_short_deadline(
    channel: grpc.Channel, client: Client, payload: str | bytes, reason: str
) -> None:
    # tests/e2e/test_hostile_isolation.py::test_a_qpy_payload_declaring_huge_nested_sizes_is_
    # contained and ::test_pathological_text_is_contained run Bob's job after starting these,
    # but never check (as _bystander_meanwhile does) that the hostile request is still being
    # processed: each is refused in ~20 ms, so Bob runs after it ended, and with Bob's 30 s
    # timeout a regression that froze the serving process for 20 s (the old cubic regex took
    # ~10 s at 2 KB) would pass them. A deadline on the refusal itself closes that (a frozen
    # process answers DEADLINE_EXCEEDED, not the refusal).
    health = health_pb2_grpc.HealthStub(channel)
    with pytest.raises(InvalidArgumentError) as info:
        client.run(payload, backend="aer", shots=1, timeout=5)
    assert info.value.reason == reason, info.value
    reply = health.Check(health_pb2.HealthCheckRequest(service=""), timeout=2)
    assert reply.status == health_pb2.HealthCheckResponse.SERVING
