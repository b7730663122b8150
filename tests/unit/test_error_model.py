"""The error model, in process: one registry of reasons, matched by the source and the README;
RPC errors and job failures become google.rpc.Status by the same rules; the store keeps a job
failure's code and metadata; the Aer adapter names the failing PUB."""

from __future__ import annotations

import ast
import asyncio
import math
import pickle
import re
import sqlite3
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import grpc
import pytest
from google.rpc import error_details_pb2, status_pb2

import gateway
from gateway.api.errors import ERROR_DOMAIN, job_error_status, status_proto, to_status
from gateway.backends.qiskit import frontend as qiskit_frontend
from gateway.domain import errors
from gateway.domain.errors import (
    JOB_RESOURCE,
    REASONS,
    Code,
    ExecutionError,
    FieldViolation,
    InvalidArgument,
    NotFound,
    QuotaViolation,
    ResourceExhausted,
    ResourceInfo,
    Unavailable,
    reason_code,
)
from gateway.domain.jobs import JobError, JobState
from gateway.interceptors.boundary import _Rejected, _wrap_unary, size_checked
from gateway.jobs import manager
from gateway.store import sqlite as sqlite_store
from gateway.store.base import NewJob
from gateway.store.sqlite import SqliteStore

ROOT = Path(gateway.__file__).resolve().parent.parent
SOURCES = sorted((ROOT / "gateway").rglob("*.py"))
README = ROOT / "README.md"
UPPER_SNAKE = re.compile(r"^[A-Z][A-Z0-9]*(_[A-Z0-9]+)*$")
LOWER_CAMEL = re.compile(r"^[a-z][a-zA-Z0-9]*$")
# Class name -> status code of every GatewayError class.
ERROR_CLASS_CODES = {
    name: cls.code
    for name, cls in vars(errors).items()
    if isinstance(cls, type) and issubclass(cls, errors.GatewayError)
}


# ------------------------------------------------------------------------- source scanning


def _trees() -> Iterator[tuple[Path, ast.Module]]:
    for path in SOURCES:
        yield path, ast.parse(path.read_text(), str(path))


def _callee(node: ast.Call) -> str:
    func = node.func
    if isinstance(func, ast.Name):
        return func.id
    if isinstance(func, ast.Attribute):
        return func.attr
    return ""


def _error_classes() -> set[str]:
    """GatewayError and ExecutionError and every class derived from them in gateway/."""
    found = {"GatewayError", "ExecutionError"}
    classes = [
        node for _, tree in _trees() for node in ast.walk(tree) if isinstance(node, ast.ClassDef)
    ]
    grew = True
    while grew:
        grew = False
        for cls in classes:
            bases = {b.id if isinstance(b, ast.Name) else getattr(b, "attr", "") for b in cls.bases}
            if cls.name not in found and bases & found:
                found.add(cls.name)
                grew = True
    return found


def _builders(classes: set[str]) -> dict[str, tuple[int, Code | None]]:
    """What builds an error, with the position of its reason argument and its fixed code (None:
    the reason's registered code): the error classes, JobError, and every function with a
    `reason` parameter that constructs one of them (helpers like `invalid` and `_bad`)."""
    out: dict[str, tuple[int, Code | None]] = {
        name: (0, ERROR_CLASS_CODES.get(name)) for name in classes
    }
    out["JobError"] = (1, None)  # the dataclass: (code, reason, message, metadata)
    out["of"] = (0, None)  # JobError.of
    for _, tree in _trees():
        for node in ast.walk(tree):
            if not isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                continue
            params = [a.arg for a in node.args.args if a.arg not in ("self", "cls")]
            if "reason" not in params or node.name == "__init__":
                continue
            built = [
                _callee(call)
                for call in ast.walk(node)
                if isinstance(call, ast.Call) and _callee(call) in classes
            ]
            if built:
                out.setdefault(node.name, (params.index("reason"), ERROR_CLASS_CODES.get(built[0])))
    return out


def _module_constants(tree: ast.Module) -> dict[str, str]:
    return {
        target.id: node.value.value
        for node in tree.body
        if isinstance(node, ast.Assign) and isinstance(node.value, ast.Constant)
        for target in node.targets
        if isinstance(target, ast.Name) and isinstance(node.value.value, str)
    }


def _literal(node: ast.expr | None, constants: dict[str, str]) -> str | None:
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        return node.value
    if isinstance(node, ast.Name):
        return constants.get(node.id)
    return None


def raised_reasons() -> list[tuple[str, str, Code | None]]:
    """(reason, where, fixed code or None) for every reason literal the gateway raises."""
    classes = _error_classes()
    builders = _builders(classes)
    found: list[tuple[str, str, Code | None]] = []
    for path, tree in _trees():
        constants = _module_constants(tree)
        where = str(path.relative_to(ROOT))
        for node in ast.walk(tree):
            if isinstance(node, ast.Call):
                name = _callee(node)
                if name == "__init__":  # super().__init__(REASON, ...) in an error class
                    spec: tuple[int, Code | None] | None = (0, None)
                else:
                    spec = builders.get(name)
                if spec is None:
                    continue
                index, code = spec
                candidates = [node.args[index]] if len(node.args) > index else []
                candidates += [k.value for k in node.keywords if k.arg == "reason"]
                for arg in candidates:
                    value = _literal(arg, constants)
                    if value is not None and UPPER_SNAKE.match(value):
                        found.append((value, f"{where}:{node.lineno}", code))
            elif (
                isinstance(node, ast.Tuple)
                and len(node.elts) >= 2
                and _literal(node.elts[0], constants) == "failed"
            ):
                # A worker's ("failed", REASON, message, metadata) reply.
                value = _literal(node.elts[1], constants)
                if value is not None:
                    found.append((value, f"{where}:{node.lineno}", None))
    return found


def _keyword_builders(classes: set[str]) -> set[str]:
    """Error-building helpers whose keyword arguments become metadata (`**metadata`)."""
    return {
        node.name
        for _, tree in _trees()
        for node in ast.walk(tree)
        if isinstance(node, ast.FunctionDef)
        and node.args.kwarg is not None
        and "reason" in [a.arg for a in node.args.args]
        and any(isinstance(c, ast.Call) and _callee(c) in classes for c in ast.walk(node))
    }


def metadata_keys() -> list[tuple[str, str]]:
    """(key, where) for every ErrorInfo metadata key written in gateway/."""
    keyword_builders = _keyword_builders(_error_classes())
    keys: list[tuple[str, str]] = []
    for path, tree in _trees():
        where = str(path.relative_to(ROOT))
        for node in ast.walk(tree):
            if not isinstance(node, ast.Call):
                continue
            dicts = [k.value for k in node.keywords if k.arg == "metadata"]
            if _callee(node) == "of" and len(node.args) >= 3:  # JobError.of(reason, msg, md)
                dicts.append(node.args[2])
            for value in dicts:
                if isinstance(value, ast.Dict):
                    keys += [
                        (k.value, f"{where}:{node.lineno}")
                        for k in value.keys
                        if isinstance(k, ast.Constant) and isinstance(k.value, str)
                    ]
            if _callee(node) in keyword_builders:  # keyword arguments become metadata keys
                # The front end's `invalid` turns max_qubits= into "maxQubits".
                name = qiskit_frontend.lower_camel if _callee(node) == "invalid" else str
                keys += [(name(k.arg), f"{where}:{node.lineno}") for k in node.keywords if k.arg]
            func = node.func
            if (
                _callee(node) == "setdefault"
                and isinstance(func, ast.Attribute)
                and isinstance(func.value, ast.Attribute)
                and func.value.attr == "metadata"
                and node.args
                and isinstance(node.args[0], ast.Constant)
            ):
                keys.append((str(node.args[0].value), f"{where}:{node.lineno}"))
    return keys


def readme_table() -> dict[str, str]:
    """Reason -> code, from the README's error table."""
    rows = re.findall(r"^\| `([A-Z0-9_]+)` \| `([A-Z_]+)` \|", README.read_text(), re.M)
    table: dict[str, str] = {}
    for reason, code in rows:
        assert reason not in table, f"{reason} is listed twice in the README"
        table[reason] = code
    return table


def test_the_scan_sees_raises_of_every_kind() -> None:
    # If these stop being found, the scan is broken, not the gateway fixed.
    found = {reason for reason, _, _ in raised_reasons()}
    assert {
        "JOB_NOT_FOUND",  # NotFound(...)
        "INVALID_QASM",  # invalid(...) in the front end
        "NO_PUBS",  # codec._bad(...)
        "TOO_MANY_SHOTS",  # costs._refuse(...)
        "OUT_OF_MEMORY",  # ExecutionError(...) and a worker's reply tuple
        "WORKER_CRASHED",  # super().__init__(WORKER_CRASHED, ...)
        "QUEUE_TIMEOUT",  # JobError.of(...)
        "REQUEST_TOO_LARGE",
    } <= found
    keys = {key for key, _ in metadata_keys()}
    assert {"job", "pubIndex", "maxQubits", "limitBytes", "startPubIndex"} <= keys


def test_every_reason_raised_is_registered_with_its_code() -> None:
    problems = []
    for reason, where, code in raised_reasons():
        if reason not in REASONS:
            problems.append(f"{where}: {reason} is not in gateway.domain.errors.REASONS")
        elif code is not None and REASONS[reason] is not code:
            problems.append(
                f"{where}: {reason} raised as {code.name}, registered as {REASONS[reason].name}"
            )
    assert not problems, "\n".join(problems)


def test_the_job_core_acts_on_failure_kinds_never_on_reason_strings() -> None:
    # Issue 8: the breaker and instance reuse are steered by ExecutionError.kind; a reason is
    # for clients. No comparison in the job core or the runtime reads one.
    offenders = []
    for path in sorted((ROOT / "gateway" / "jobs").glob("*.py")) + sorted(
        (ROOT / "gateway" / "runtime").glob("*.py")
    ):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Compare):
                operands = [node.left, *node.comparators]
                if any(isinstance(o, ast.Attribute) and o.attr == "reason" for o in operands):
                    offenders.append(f"{path.name}:{node.lineno}")
    assert not offenders, offenders


def test_the_readme_table_lists_every_reason_with_its_code() -> None:
    table = readme_table()
    assert set(table) == set(REASONS), (
        f"missing from README: {sorted(set(REASONS) - set(table))}; "
        f"not registered: {sorted(set(table) - set(REASONS))}"
    )
    wrong = {r: (c, REASONS[r].name) for r, c in table.items() if c != REASONS[r].name}
    assert not wrong, wrong


def test_no_reason_is_a_status_code_name() -> None:
    names = {code.name for code in grpc.StatusCode} | {code.name for code in Code}
    assert not names & set(REASONS)
    assert all(UPPER_SNAKE.match(reason) for reason in REASONS)


def test_metadata_keys_in_the_source_are_lower_camel_case() -> None:
    bad = [f"{where}: {key!r}" for key, where in metadata_keys() if not LOWER_CAMEL.match(key)]
    assert not bad, "\n".join(bad)


def test_front_end_keyword_metadata_becomes_lower_camel_case() -> None:
    assert qiskit_frontend.lower_camel("max_source_bytes") == "maxSourceBytes"
    assert qiskit_frontend.lower_camel("gate") == "gate"
    assert qiskit_frontend.lower_camel("estimateBytes") == "estimateBytes"
    error = qiskit_frontend.invalid("TOO_MANY_QUBITS", "m", "f", num_qubits=9, max_qubits=5)
    assert error.metadata == {"numQubits": "9", "maxQubits": "5"}


def test_an_unregistered_reason_is_internal() -> None:
    assert reason_code("NOT_A_REASON") is Code.INTERNAL
    assert ExecutionError("NOT_A_REASON", "m").code is Code.INTERNAL


# ------------------------------------------------------------------------- Status building


def _details(status: status_pb2.Status) -> dict[str, object]:
    kinds = {
        "ErrorInfo": error_details_pb2.ErrorInfo,
        "ResourceInfo": error_details_pb2.ResourceInfo,
        "BadRequest": error_details_pb2.BadRequest,
        "QuotaFailure": error_details_pb2.QuotaFailure,
        "RetryInfo": error_details_pb2.RetryInfo,
    }
    out: dict[str, object] = {}
    for detail in status.details:
        for name, kind in kinds.items():
            if detail.Is(kind.DESCRIPTOR):
                message = kind()
                detail.Unpack(message)
                assert name not in out
                out[name] = message
                break
        else:
            raise AssertionError(f"unexpected detail {detail.type_url}")
    return out


def test_a_job_failure_is_a_status_shaped_like_an_rpc_error() -> None:
    failure = JobError.of("OUT_OF_MEMORY", "PUB 1 ran out of memory", {"pubIndex": "1"})
    assert failure.code is Code.RESOURCE_EXHAUSTED
    status = job_error_status(failure)
    assert status.code == grpc.StatusCode.RESOURCE_EXHAUSTED.value[0]
    assert status.message == "PUB 1 ran out of memory"
    details = _details(status)
    assert set(details) == {"ErrorInfo"}
    info = details["ErrorInfo"]
    assert isinstance(info, error_details_pb2.ErrorInfo)
    assert (info.domain, info.reason, dict(info.metadata)) == (
        "qgateway.dev",
        "OUT_OF_MEMORY",
        {"pubIndex": "1"},
    )
    # The same reason, message and metadata raised on a call give the same ErrorInfo.
    rpc = status_proto(
        ResourceExhausted("OUT_OF_MEMORY", "PUB 1 ran out of memory", metadata={"pubIndex": "1"})
    )
    assert rpc.code == status.code and rpc.details[0] == status.details[0]


def test_a_job_failure_from_a_late_client_error_keeps_its_code() -> None:
    late = InvalidArgument(
        "UNKNOWN_GATE",
        "gate foo is not defined",
        metadata={"gate": "foo"},
        field_violations=[FieldViolation("spec.pubs[0].sampler.circuit.qasm3", "foo")],
    )
    failure = JobError.from_error(late)
    assert (failure.code, failure.reason, dict(failure.metadata)) == (
        Code.INVALID_ARGUMENT,
        "UNKNOWN_GATE",
        {"gate": "foo"},
    )
    crashed = JobError.from_error(ExecutionError("WORKER_CRASHED", "worker died (SIGKILL)"))
    assert crashed.code is Code.INTERNAL


def test_not_found_carries_resource_info_and_no_bad_request() -> None:
    error = NotFound(
        "JOB_NOT_FOUND",
        "job jobs/abc not found",
        metadata={"job": "jobs/abc"},
        resource_info=ResourceInfo(JOB_RESOURCE, "jobs/abc", "no such job for this caller"),
    )
    details = _details(status_proto(error))
    assert set(details) == {"ErrorInfo", "ResourceInfo"}
    resource = details["ResourceInfo"]
    assert isinstance(resource, error_details_pb2.ResourceInfo)
    assert (resource.resource_type, resource.resource_name) == ("qgateway.dev/Job", "jobs/abc")
    assert resource.description


def test_job_not_found_from_the_manager() -> None:
    error = manager._job_not_found("abc")
    assert error.metadata == {"job": "jobs/abc"}
    assert error.resource_info is not None
    assert (error.resource_info.type, error.resource_info.name) == (JOB_RESOURCE, "jobs/abc")
    assert not error.field_violations


def test_retry_info_and_quota_failure_only_where_given() -> None:
    full = ResourceExhausted(
        "QUEUE_FULL",
        "queue full",
        metadata={"backend": "backends/aer", "limit": "3"},
        quota_violations=[QuotaViolation("backends/aer", "queued jobs at the limit")],
        retry_after=1.5,
    )
    details = _details(status_proto(full))
    assert set(details) == {"ErrorInfo", "QuotaFailure", "RetryInfo"}
    retry = details["RetryInfo"]
    assert isinstance(retry, error_details_pb2.RetryInfo)
    assert retry.retry_delay.ToNanoseconds() == 1_500_000_000
    breaker = Unavailable("BACKEND_UNAVAILABLE", "open", retry_after=2.0)
    assert set(_details(status_proto(breaker))) == {"ErrorInfo", "RetryInfo"}


def test_quota_failure_names_the_subject_and_describes_the_limit() -> None:
    error = ResourceExhausted(
        "QUEUE_FULL",
        "queue full",
        quota_violations=[QuotaViolation("backends/aer", "queued jobs at the limit")],
    )
    quota = _details(status_proto(error))["QuotaFailure"]
    assert isinstance(quota, error_details_pb2.QuotaFailure)
    assert [(v.subject, v.description) for v in quota.violations] == [
        ("backends/aer", "queued jobs at the limit")
    ]


def test_long_messages_and_metadata_are_clipped_to_their_limits() -> None:
    from gateway.api.errors import MAX_DETAIL_CHARS, MAX_MESSAGE_CHARS

    error = InvalidArgument("CIRCUIT_TOO_LARGE", "m" * 5000, metadata={"size": "9" * 4000})
    status = status_proto(error)
    assert len(status.message) == MAX_MESSAGE_CHARS and status.message.endswith("...")
    info = _details(status)["ErrorInfo"]
    assert isinstance(info, error_details_pb2.ErrorInfo)
    assert len(info.metadata["size"]) == MAX_DETAIL_CHARS
    # At the limit nothing is clipped.
    exact = status_proto(InvalidArgument("CIRCUIT_TOO_LARGE", "m" * MAX_MESSAGE_CHARS))
    assert exact.message == "m" * MAX_MESSAGE_CHARS


@pytest.mark.parametrize(
    ("after", "seconds"),
    [(math.inf, 366 * 86400), (1e300, 366 * 86400), (1e12, 366 * 86400), (math.nan, 0), (-1, 0)],
)
def test_no_retry_delay_breaks_the_status(after: float, seconds: int) -> None:
    # An infinite delay raised OverflowError inside the error boundary's abort (the caller got
    # UNKNOWN with the exception's text), and 1e12 s is past Duration's range.
    limited = ResourceExhausted("RATE_LIMITED", "slow", retry_after=after)
    retry = _details(status_proto(limited))["RetryInfo"]
    assert isinstance(retry, error_details_pb2.RetryInfo)
    assert retry.retry_delay.ToTimedelta().total_seconds() == seconds


def test_to_status_carries_the_same_status_in_its_trailer() -> None:
    error = NotFound("JOB_NOT_FOUND", "job jobs/x not found", metadata={"job": "jobs/x"})
    rpc = to_status(error)
    assert rpc.code is grpc.StatusCode.NOT_FOUND
    ((key, value),) = rpc.trailing_metadata
    assert key == "grpc-status-details-bin"
    assert status_pb2.Status.FromString(value) == status_proto(error)
    assert ERROR_DOMAIN == "qgateway.dev"


def test_an_oversize_request_is_invalid_argument_without_retry_info() -> None:
    receive = size_checked(max_bytes=10)
    rejected = receive(b"x" * 11)
    assert isinstance(rejected, _Rejected)
    error = rejected.error
    assert (error.code, error.reason) == (Code.INVALID_ARGUMENT, "REQUEST_TOO_LARGE")
    assert error.metadata == {"sizeBytes": "11", "limitBytes": "10"}
    assert error.retry_after is None and not error.quota_violations
    assert set(_details(status_proto(error))) == {"ErrorInfo"}


def test_a_retry_delay_of_zero_is_still_retry_info() -> None:
    # "Retry now" is a retryable answer: its RetryInfo is kept, with a zero delay.
    now = _details(status_proto(ResourceExhausted("RATE_LIMITED", "slow", retry_after=0.0)))
    retry = now["RetryInfo"]
    assert isinstance(retry, error_details_pb2.RetryInfo)
    assert retry.retry_delay.ToNanoseconds() == 0


def test_client_values_in_bad_request_and_resource_info_are_clipped() -> None:
    from gateway.api.errors import MAX_DETAIL_CHARS

    name = "jobs/" + "x" * 4000
    missing = NotFound(
        "JOB_NOT_FOUND",
        "no such job",
        resource_info=ResourceInfo(JOB_RESOURCE, name, "d" * 4000),
    )
    resource = _details(status_proto(missing))["ResourceInfo"]
    assert isinstance(resource, error_details_pb2.ResourceInfo)
    assert len(resource.resource_name) == len(resource.description) == MAX_DETAIL_CHARS
    assert resource.resource_name.endswith("...")
    bad = InvalidArgument(
        "INVALID_REQUEST_ID", "bad", field_violations=[FieldViolation("request_id", "v" * 4000)]
    )
    request = _details(status_proto(bad))["BadRequest"]
    assert isinstance(request, error_details_pb2.BadRequest)
    (violation,) = request.field_violations
    assert violation.field == "request_id" and len(violation.description) == MAX_DETAIL_CHARS


def test_a_request_of_exactly_the_limit_is_received() -> None:
    received = size_checked(max_bytes=10)(b"x" * 10)
    assert not isinstance(received, _Rejected)
    assert received.size == 10


class _Aborted(Exception):
    pass


class _AbortContext:
    def __init__(self) -> None:
        self.aborted: tuple[Any, ...] = ()

    def peer(self) -> str:
        return "ipv4:127.0.0.1:1"

    async def abort(self, *args: object) -> None:
        self.aborted = args
        raise _Aborted


def test_an_unexpected_exception_is_internal_without_its_text(
    caplog: pytest.LogCaptureFixture,
) -> None:
    async def behaviour(request: object, context: object) -> None:
        raise ValueError("secret path /srv/keys/tenant-acme")

    handle = _wrap_unary(behaviour, "/qgateway.v1.JobService/GetJob")
    context = _AbortContext()
    with caplog.at_level("ERROR"), pytest.raises(_Aborted):
        asyncio.run(handle(_no_requests(), context))  # type: ignore[arg-type]
    code, message, trailers = context.aborted
    assert code is grpc.StatusCode.INTERNAL
    assert isinstance(message, str) and "secret" not in message
    ((_, value),) = trailers
    status = status_pb2.Status.FromString(value)
    assert "secret" not in str(status)
    info = _details(status)["ErrorInfo"]
    assert isinstance(info, error_details_pb2.ErrorInfo) and info.reason == "INTERNAL_ERROR"
    assert "secret path" in caplog.text  # logged, with its traceback, for the operator


async def _no_requests() -> AsyncIterator[object]:
    return
    yield


# ------------------------------------------------------------------------- the store


T0 = datetime(2026, 11, 2, 9, 30, tzinfo=UTC)


def _new_job(job_id: str) -> NewJob:
    return NewJob(
        id=job_id,
        tenant="acme",
        request_id=f"req-{job_id}",
        request_hash=b"\x00" * 32,
        backend="aer",
        placement="aer",
        spec=b"spec",
        num_pubs=2,
        seed=7,
        created_at=T0,
    )


@pytest.mark.anyio
async def test_the_store_keeps_a_failures_code_and_metadata(tmp_path: Path) -> None:
    store = SqliteStore(tmp_path / "jobs.db")
    await store.open()
    try:
        await store.create_job(_new_job("a"))
        failure = JobError(
            Code.UNAVAILABLE, "PROVIDER_ERROR", "provider said no", {"providerJobId": "p-1"}
        )
        done = await store.finish_job(
            "a", JobState.FAILED, ended_at=T0 + timedelta(seconds=1), error=failure
        )
        assert done is not None and done.error == failure
        again = await store.get_job("a")
        assert again is not None and again.error == failure
    finally:
        await store.close()


@pytest.mark.anyio
async def test_failures_stored_before_the_migration_get_their_new_reasons(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "jobs.db"
    mine = next(m for m in sqlite_store.MIGRATIONS if "error_code" in m.sql)
    # A database as it was before this step, with failures stored under the old reasons.
    monkeypatch.setattr(
        sqlite_store,
        "MIGRATIONS",
        tuple(m for m in sqlite_store.MIGRATIONS if m.version < mine.version),
    )
    store = SqliteStore(path)
    await store.open()
    await store.close()
    with sqlite3.connect(path) as conn:
        for job_id, reason in [
            ("m", "RESOURCE_EXHAUSTED"),
            ("i", "INTERNAL"),
            ("t", "JOB_TIMEOUT"),
        ]:
            conn.execute(
                "INSERT INTO jobs (id, tenant, request_hash, backend, state, spec, num_pubs, "
                "seed, created_at, ended_at, error_reason, error_message) "
                "VALUES (?, 'acme', x'00', 'aer', 'FAILED', x'00', 1, '1', 0, 1, ?, 'old')",
                (job_id, reason),
            )
    monkeypatch.undo()
    store = SqliteStore(path)
    await store.open()
    try:
        found = {}
        for job_id in "mit":
            job = await store.get_job(job_id)
            assert job is not None and job.error is not None
            found[job_id] = (job.error.reason, job.error.code, dict(job.error.metadata))
    finally:
        await store.close()
    assert found == {
        "m": ("OUT_OF_MEMORY", Code.RESOURCE_EXHAUSTED, {}),
        "i": ("INTERNAL_ERROR", Code.INTERNAL, {}),
        "t": ("JOB_TIMEOUT", Code.DEADLINE_EXCEEDED, {}),
    }


# ------------------------------------------------------------------------- the Aer adapter


def test_aer_names_the_pub_that_ran_out_of_memory() -> None:
    from tests.adapters import prepare_in_process
    from tests.unit.test_aer_adapter import AerAdapter, context, q3, sampler, spec

    def ghz(n: int) -> str:
        cx = "".join(f" cx q[0], q[{i}];" for i in range(1, n))
        return f"qubit[{n}] q; bit[{n}] c; h q[0];{cx} c = measure q;"

    # Prepared where it fits, executed where Aer's memory limit (1 MiB) is too small for the
    # second PUB's 16 MiB state vector: a real refusal by Aer, reported per PUB.
    prepared = prepare_in_process(
        AerAdapter(context()), spec(sampler(q3(ghz(2))), sampler(q3(ghz(20)))), 1
    )
    small = AerAdapter(context(budget=1 << 20))
    with pytest.raises(ExecutionError) as info:
        small.execute(pickle.loads(pickle.dumps(prepared.payload)))
    assert (info.value.reason, info.value.code) == ("OUT_OF_MEMORY", Code.RESOURCE_EXHAUSTED)
    assert info.value.metadata == {"pubIndex": "1"}
