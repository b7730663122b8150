"""Every bad input gets its specific status code and reason, with details; never INTERNAL."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from qgateway.v1 import (
    backend_service_pb2,
    backend_service_pb2_grpc,
    circuit_pb2,
    job_pb2,
    job_service_pb2,
    job_service_pb2_grpc,
)

from tests.rpc import ghz, sampler_spec, status_of

INVALID = grpc.StatusCode.INVALID_ARGUMENT


@pytest.fixture(scope="module")
def channel(address: str) -> Iterator[grpc.Channel]:
    with grpc.insecure_channel(address, options=[("grpc.max_send_message_length", 64 << 20)]) as ch:
        yield ch


@pytest.fixture(scope="module")
def jobs(channel: grpc.Channel) -> job_service_pb2_grpc.JobServiceStub:
    return job_service_pb2_grpc.JobServiceStub(channel)


def submit_error(jobs: job_service_pb2_grpc.JobServiceStub, spec: job_pb2.JobSpec, **kw: str):  # type: ignore[no-untyped-def]
    with pytest.raises(grpc.RpcError) as exc:
        jobs.SubmitJob(job_service_pb2.SubmitJobRequest(spec=spec, **kw), timeout=20)
    info = status_of(exc.value)
    assert info.domain == "qgateway.dev", info
    return info


HEADER = 'OPENQASM 3.0;\ninclude "stdgates.inc";\n'

CASES = [
    ("malformed", HEADER + "qubit[2] q; h q[0]\nbit[1] c; c[0] = measure q[0];", "INVALID_QASM"),
    (
        "unknown gate",
        HEADER + "qubit[1] q; bit[1] c; frobnicate q[0]; c[0] = measure q[0];",
        "UNKNOWN_GATE",
    ),
    (
        "unbound parameter",
        HEADER + "input float[64] theta; qubit[1] q; bit[1] c; rx(theta) q[0];"
        " c[0] = measure q[0];",
        "UNBOUND_PARAMETERS",
    ),
    (
        "non-standard include",
        'OPENQASM 3.0;\ninclude "/etc/passwd";\nqubit[1] q;',
        "INCLUDE_NOT_ALLOWED",
    ),
    ("no measurements", HEADER + "qubit[1] q; h q[0];", "NO_MEASUREMENTS"),
    ("too many qubits", ghz(70), "TOO_MANY_QUBITS"),
    ("state vector over budget", ghz(40), "MEMORY_BUDGET_EXCEEDED"),
]


@pytest.mark.parametrize(("name", "qasm", "reason"), CASES, ids=[c[0] for c in CASES])
def test_bad_circuit_is_invalid_argument_with_reason(
    jobs: job_service_pb2_grpc.JobServiceStub, name: str, qasm: str, reason: str
) -> None:
    info = submit_error(jobs, sampler_spec(qasm))
    assert info.code == INVALID, info
    assert info.reason == reason, info
    assert any(f.startswith("spec.pubs[0]") for f in info.fields), info


def test_include_of_a_real_file_is_refused_without_reading_it(
    jobs: job_service_pb2_grpc.JobServiceStub, tmp_path: Path
) -> None:
    secret = tmp_path / "secret.inc"
    secret.write_text("gate leaked_secret_7f3a q { x q; }\n")
    for qasm2, text in (
        (False, f'OPENQASM 3.0;\ninclude "{secret}";\nqubit[1] q; bit[1] c; c[0] = measure q[0];'),
        (True, f'OPENQASM 2.0;\ninclude "{secret}";\nqreg q[1]; creg c[1]; measure q -> c;'),
    ):
        info = submit_error(jobs, sampler_spec(text, qasm2=qasm2))
        assert (info.code, info.reason) == (INVALID, "INCLUDE_NOT_ALLOWED")
        assert "leaked_secret_7f3a" not in info.message + str(info.metadata)


def test_exponential_gate_definitions_are_refused(
    jobs: job_service_pb2_grpc.JobServiceStub,
) -> None:
    lines = ["OPENQASM 2.0;", 'include "qelib1.inc";', "gate g0 a { x a; }"]
    lines += [f"gate g{i} a {{ g{i - 1} a; g{i - 1} a; }}" for i in range(1, 64)]
    lines += ["qreg q[1];", "creg c[1];", "g63 q[0];", "measure q -> c;"]
    info = submit_error(jobs, sampler_spec("\n".join(lines), qasm2=True))
    assert (info.code, info.reason) == (INVALID, "CIRCUIT_TOO_LARGE")


def test_extra_parameter_is_refused(jobs: job_service_pb2_grpc.JobServiceStub) -> None:
    spec = sampler_spec(ghz(2))
    spec.pubs[0].sampler.parameter_values.parameters.append("nope")
    spec.pubs[0].sampler.parameter_values.values.append(0.5)
    info = submit_error(jobs, spec)
    assert (info.code, info.reason) == (INVALID, "UNKNOWN_PARAMETERS")


def test_parameter_values_of_the_wrong_size(jobs: job_service_pb2_grpc.JobServiceStub) -> None:
    spec = sampler_spec(
        HEADER + "input float[64] theta; qubit[1] q; bit[1] c; rx(theta) q[0]; c[0] = measure q[0];"
    )
    values = spec.pubs[0].sampler.parameter_values
    values.parameters.append("theta")
    values.shape.append(3)
    values.values.extend([0.1, 0.2])
    info = submit_error(jobs, spec)
    assert (info.code, info.reason) == (INVALID, "INVALID_PARAMETER_VALUES")
    assert "spec.pubs[0].sampler.parameter_values.values" in info.fields


@pytest.mark.parametrize(
    ("dims", "detail"),
    [
        # 100 000 dimensions near 2^31: their product was one huge integer, computed on the
        # event loop for seconds; now refused by their count before any arithmetic.
        ([2**31 - 1] * 100_000, "at most 32 dimensions, got 100000"),
        ([2, -3], "every dimension must be >= 0, got -3"),
        ([-1, -1], "every dimension must be >= 0, got -1"),
        ([1] * 33, "at most 32 dimensions, got 33"),
        ([2**31 - 1] * 3, "the shape holds more than 50000000 elements"),
    ],
    ids=["huge", "negative", "negatives", "too-many-dims", "too-many-elements"],
)
def test_hostile_sweep_shapes_are_refused_before_any_arithmetic(
    jobs: job_service_pb2_grpc.JobServiceStub, dims: list[int], detail: str
) -> None:
    spec = sampler_spec(ghz(2))
    spec.pubs[0].sampler.parameter_values.shape.extend(dims)
    info = submit_error(jobs, spec)
    assert (info.code, info.reason) == (INVALID, "INVALID_PARAMETER_VALUES")
    assert "spec.pubs[0].sampler.parameter_values.shape" in info.fields
    assert detail in info.message and len(info.message) < 300  # quotes no dimension list
    if "must be >= 0" in detail:  # the values quoted are in the metadata too
        assert info.metadata == {"minimum": "0", "dimension": detail.rsplit(" ", 1)[1]}


@pytest.mark.parametrize(
    ("dims", "detail"),
    [
        ([2**31 - 1] * 100_000, "at most 32 dimensions"),
        ([1, 0], "every dimension must be >= 1, got 0"),
        ([2, 2], "the shape holds more than 1 elements"),
    ],
    ids=["huge", "zero", "more-than-observables"],
)
def test_hostile_observable_shapes_are_refused_before_any_arithmetic(
    jobs: job_service_pb2_grpc.JobServiceStub, dims: list[int], detail: str
) -> None:
    pub = circuit_pb2.Pub(
        estimator=circuit_pb2.EstimatorPub(
            circuit=circuit_pb2.Circuit(qasm3=HEADER + "qubit[1] q; h q[0];"),
            observables=[circuit_pb2.Observable(terms=[circuit_pb2.PauliTerm(pauli="Z")])],
            observables_shape=dims,
        )
    )
    spec = job_pb2.JobSpec(backend="backends/aer", pubs=[pub])
    info = submit_error(jobs, spec)
    assert (info.code, info.reason) == (INVALID, "INVALID_OBSERVABLE")
    assert detail in info.message and len(info.message) < 300


def test_a_job_of_too_many_pubs_is_refused_before_any_compile(
    jobs: job_service_pb2_grpc.JobServiceStub,
) -> None:
    spec = sampler_spec(ghz(2))
    for _ in range(1000):
        spec.pubs.append(spec.pubs[0])
    info = submit_error(jobs, spec)
    assert (info.code, info.reason) == (INVALID, "TOO_MANY_PUBS")
    # ~90 KB: decoded in pieces (gateway.api.request_pieces), refused at the 1001st PUB with
    # no count of them all.
    assert info.metadata == {"maxPubs": "1000"}
    assert "spec.pubs" in info.fields
    # A request small enough to be decoded at once is counted whole.
    tiny = circuit_pb2.Pub(sampler=circuit_pb2.SamplerPub(circuit=circuit_pb2.Circuit(qasm3="x")))
    small = job_pb2.JobSpec(backend="backends/aer", pubs=[tiny] * 1002)
    assert small.ByteSize() < 64 << 10
    info = submit_error(jobs, small)
    assert (info.code, info.reason) == (INVALID, "TOO_MANY_PUBS")
    assert info.metadata == {"maxPubs": "1000", "pubs": "1002"}
    del spec.pubs[1000]  # at the limit: accepted
    jobs.SubmitJob(job_service_pb2.SubmitJobRequest(spec=spec, validate_only=True), timeout=60)


@pytest.mark.parametrize("shots", [0, -5, 100_001])
def test_shots_out_of_range(jobs: job_service_pb2_grpc.JobServiceStub, shots: int) -> None:
    info = submit_error(jobs, sampler_spec(ghz(2), shots=shots))
    assert (info.code, info.reason) == (INVALID, "INVALID_SHOTS")
    assert info.fields == ["spec.pubs[0].sampler.shots"]


def test_unknown_backend_is_not_found(jobs: job_service_pb2_grpc.JobServiceStub) -> None:
    info = submit_error(jobs, sampler_spec(ghz(2), backend="no-such-backend"))
    assert (info.code, info.reason) == (grpc.StatusCode.NOT_FOUND, "BACKEND_NOT_FOUND")


def test_empty_job_and_missing_circuit(jobs: job_service_pb2_grpc.JobServiceStub) -> None:
    info = submit_error(jobs, job_pb2.JobSpec(backend="backends/aer"))
    assert (info.code, info.reason) == (INVALID, "NO_PUBS")
    spec = job_pb2.JobSpec(
        backend="backends/aer", pubs=[circuit_pb2.Pub(sampler=circuit_pb2.SamplerPub())]
    )
    info = submit_error(jobs, spec)
    assert (info.code, info.reason) == (INVALID, "MISSING_CIRCUIT")


def test_memory_budget_is_configuration(jobs: job_service_pb2_grpc.JobServiceStub) -> None:
    # aer-tiny has a 1 MiB budget: 16 qubits (16 * 2^16 bytes = 1 MiB) fit, 17 do not; the
    # same 17-qubit circuit is fine on aer's default budget.
    info = submit_error(jobs, sampler_spec(ghz(17), backend="aer-tiny"))
    assert (info.code, info.reason) == (INVALID, "MEMORY_BUDGET_EXCEEDED")
    assert int(info.metadata["budgetBytes"]) == 1 << 20
    for backend, n in (("aer-tiny", 15), ("aer", 17)):
        reply = jobs.SubmitJob(
            job_service_pb2.SubmitJobRequest(spec=sampler_spec(ghz(n), backend=backend)),
            timeout=20,
        )
        assert reply.job.state != job_pb2.JOB_STATE_UNSPECIFIED


def test_request_id_reuse_with_another_payload(jobs: job_service_pb2_grpc.JobServiceStub) -> None:
    first = jobs.SubmitJob(
        job_service_pb2.SubmitJobRequest(request_id="reuse-1", spec=sampler_spec(ghz(2))),
        timeout=20,
    )
    again = jobs.SubmitJob(
        job_service_pb2.SubmitJobRequest(request_id="reuse-1", spec=sampler_spec(ghz(2))),
        timeout=20,
    )
    assert again.job.name == first.job.name
    info = submit_error(jobs, sampler_spec(ghz(3)), request_id="reuse-1")
    assert (info.code, info.reason) == (INVALID, "REQUEST_ID_REUSED")
    assert info.metadata.get("job") == first.job.name
    assert info.metadata.get("requestId") == "reuse-1"


def test_oversize_request_gets_the_gateways_detailed_error(
    jobs: job_service_pb2_grpc.JobServiceStub,
) -> None:
    # The session gateway's own limit is 4 MiB; gRPC's transport limit sits above it.
    spec = sampler_spec(ghz(2) + "// " + "x" * (5 << 20) + "\n")
    info = submit_error(jobs, spec)
    # It can never succeed as sent: INVALID_ARGUMENT, which no retry policy retries.
    assert (info.code, info.reason) == (INVALID, "REQUEST_TOO_LARGE")
    assert info.retry_delay_s is None and not info.has_quota_failure
    assert int(info.metadata["limitBytes"]) == 4 << 20


@pytest.mark.parametrize(
    "payload",
    [b"\xff\xff\xff\xff", b"\x0a\x05\xc3\x28\xa0\xa1\xff", b"\x12\x80\x80\x80\x80\x10"],
    ids=["garbage", "invalid-utf8", "truncated-length"],
)
def test_undecodable_request_is_invalid_argument(channel: grpc.Channel, payload: bytes) -> None:
    raw = channel.unary_unary("/qgateway.v1.JobService/SubmitJob")
    with pytest.raises(grpc.RpcError) as exc:
        raw(payload, timeout=10)
    info = status_of(exc.value)
    assert (info.code, info.reason) == (INVALID, "MALFORMED_REQUEST")


def test_paging_errors(jobs: job_service_pb2_grpc.JobServiceStub, channel: grpc.Channel) -> None:
    with pytest.raises(grpc.RpcError) as exc:
        jobs.ListJobs(job_service_pb2.ListJobsRequest(page_token="not-a-token"), timeout=10)
    assert (status_of(exc.value).code, status_of(exc.value).reason) == (
        INVALID,
        "INVALID_PAGE_TOKEN",
    )
    with pytest.raises(grpc.RpcError) as exc:
        jobs.ListJobs(job_service_pb2.ListJobsRequest(page_size=-1), timeout=10)
    assert status_of(exc.value).reason == "INVALID_PAGE_SIZE"
    backends = backend_service_pb2_grpc.BackendServiceStub(channel)
    with pytest.raises(grpc.RpcError) as exc:
        backends.ListBackends(backend_service_pb2.ListBackendsRequest(page_size=-3), timeout=10)
    assert status_of(exc.value).reason == "INVALID_PAGE_SIZE"


def test_page_token_is_bound_to_its_filters(jobs: job_service_pb2_grpc.JobServiceStub) -> None:
    for i in range(3):
        jobs.SubmitJob(
            job_service_pb2.SubmitJobRequest(spec=sampler_spec(ghz(2), seed=i)), timeout=20
        )
    page = jobs.ListJobs(job_service_pb2.ListJobsRequest(page_size=1), timeout=10)
    assert page.next_page_token
    with pytest.raises(grpc.RpcError) as exc:
        jobs.ListJobs(
            job_service_pb2.ListJobsRequest(
                page_token=page.next_page_token, filter='backend = "backends/aer-mps"'
            ),
            timeout=10,
        )
    assert status_of(exc.value).reason == "INVALID_PAGE_TOKEN"


def test_unknown_and_malformed_job_names(jobs: job_service_pb2_grpc.JobServiceStub) -> None:
    with pytest.raises(grpc.RpcError) as exc:
        jobs.GetJob(job_service_pb2.GetJobRequest(name="jobs/doesnotexist"), timeout=10)
    assert (status_of(exc.value).code, status_of(exc.value).reason) == (
        grpc.StatusCode.NOT_FOUND,
        "JOB_NOT_FOUND",
    )
    with pytest.raises(grpc.RpcError) as exc:
        jobs.GetJob(job_service_pb2.GetJobRequest(name="jobs/a/b"), timeout=10)
    assert (status_of(exc.value).code, status_of(exc.value).reason) == (INVALID, "INVALID_JOB_NAME")
    with pytest.raises(grpc.RpcError) as exc:
        jobs.CancelJob(job_service_pb2.CancelJobRequest(name="jobs/doesnotexist"), timeout=10)
    assert status_of(exc.value).code == grpc.StatusCode.NOT_FOUND


def test_cancelling_a_succeeded_job_is_failed_precondition(
    jobs: job_service_pb2_grpc.JobServiceStub,
) -> None:
    done = jobs.Run(job_service_pb2.RunRequest(spec=sampler_spec(ghz(2))), timeout=30)
    assert done.job.state == job_pb2.JOB_STATE_SUCCEEDED
    with pytest.raises(grpc.RpcError) as exc:
        jobs.CancelJob(job_service_pb2.CancelJobRequest(name=done.job.name), timeout=10)
    info = status_of(exc.value)
    assert (info.code, info.reason) == (grpc.StatusCode.FAILED_PRECONDITION, "JOB_ALREADY_FINISHED")


def test_only_documented_resource_names_are_accepted(
    jobs: job_service_pb2_grpc.JobServiceStub, channel: grpc.Channel
) -> None:
    # Before the v1 freeze a bare id ("aer", "<job id>") was accepted where a resource name is
    # documented; every client must now mean the same thing by a name.
    done = jobs.Run(job_service_pb2.RunRequest(spec=sampler_spec(ghz(2))), timeout=30)
    bare_job = done.job.name.removeprefix("jobs/")
    backends = backend_service_pb2_grpc.BackendServiceStub(channel)
    calls = [
        (
            lambda: jobs.GetJob(job_service_pb2.GetJobRequest(name=bare_job), timeout=10),
            "INVALID_JOB_NAME",
        ),
        (
            lambda: jobs.CancelJob(job_service_pb2.CancelJobRequest(name=bare_job), timeout=10),
            "INVALID_JOB_NAME",
        ),
        (
            lambda: list(jobs.WatchJob(job_service_pb2.WatchJobRequest(name=bare_job), timeout=10)),
            "INVALID_JOB_NAME",
        ),
        (
            lambda: jobs.GetJobResult(
                job_service_pb2.GetJobResultRequest(name=done.job.name), timeout=10
            ),
            "INVALID_RESULT_NAME",
        ),
        (
            lambda: list(
                jobs.StreamJobResult(
                    job_service_pb2.StreamJobResultRequest(name=f"{bare_job}/result"), timeout=10
                )
            ),
            "INVALID_RESULT_NAME",
        ),
        (
            lambda: backends.GetBackend(
                backend_service_pb2.GetBackendRequest(name="aer"), timeout=10
            ),
            "INVALID_BACKEND_NAME",
        ),
        (
            lambda: backends.GetBackendTarget(
                backend_service_pb2.GetBackendTargetRequest(name="backends/aer"), timeout=10
            ),
            "INVALID_TARGET_NAME",
        ),
        (
            lambda: jobs.SubmitJob(
                job_service_pb2.SubmitJobRequest(
                    spec=job_pb2.JobSpec(backend="aer", pubs=sampler_spec(ghz(2)).pubs)
                ),
                timeout=10,
            ),
            "INVALID_BACKEND_NAME",
        ),
    ]
    for call, reason in calls:
        with pytest.raises(grpc.RpcError) as exc:
            call()
        info = status_of(exc.value)
        assert (info.code, info.reason) == (INVALID, reason)
    # The full names work.
    assert jobs.GetJob(job_service_pb2.GetJobRequest(name=done.job.name), timeout=10).job.name
    result = jobs.GetJobResult(
        job_service_pb2.GetJobResultRequest(name=f"{done.job.name}/result"), timeout=10
    ).result
    assert result.name == f"{done.job.name}/result"


@pytest.mark.parametrize(
    ("shape", "reason", "field"),
    [
        # 16 MB of empty Pauli terms cost 19 s of CPU and 1.7 GB, refused only after decoding.
        ("terms", "TOO_MANY_TERMS", "spec.pubs[0].estimator.observables"),
        ("observables", "TOO_MANY_TERMS", "spec.pubs[0].estimator.observables"),
        ("sparse-qubits", "TOO_MANY_TERMS", "spec.pubs[0].estimator.observables"),
        ("parameters", "TOO_MANY_PARAMETERS", "spec.pubs[0].estimator.parameter_values"),
        # 16 million zeros of a shape were digested (5 s) before the dimension check.
        ("dimensions", "INVALID_PARAMETER_VALUES", "spec.pubs[0].estimator.parameter_values.shape"),
    ],
)
def test_a_job_of_too_many_elements_is_refused_before_it_is_decoded(
    jobs: job_service_pb2_grpc.JobServiceStub, shape: str, reason: str, field: str
) -> None:
    estimator = circuit_pb2.EstimatorPub(circuit=circuit_pb2.Circuit(qasm3=HEADER + "qubit[1] q;"))
    observable = estimator.observables.add()
    if shape == "terms":
        observable.terms.extend([circuit_pb2.PauliTerm()] * 1_000_001)
    elif shape == "observables":
        estimator.observables.extend([circuit_pb2.Observable()] * 1_000_001)
    elif shape == "sparse-qubits":
        observable.terms.add(qubits=[0] * 4_000_001)
    elif shape == "parameters":
        observable.terms.add(pauli="Z")
        estimator.parameter_values.parameters.extend([""] * 1_000_001)
    else:
        observable.terms.add(pauli="Z")
        estimator.parameter_values.shape.extend([0] * 1_000_000)
    spec = job_pb2.JobSpec(backend="backends/aer", pubs=[circuit_pb2.Pub(estimator=estimator)])
    info = submit_error(jobs, spec)
    assert (info.code, info.reason) == (INVALID, reason)
    assert info.fields == [field]
