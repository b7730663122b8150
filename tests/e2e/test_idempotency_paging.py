"""Idempotency (AIP-155), sealed page tokens (AIP-158), the ListJobs filter (AIP-160) and job
labels, over real gRPC: one gateway with two tenants, plus a restart with a changed
configuration."""

from __future__ import annotations

import base64
import secrets
import sqlite3
import stat
import struct
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from qgateway import Client, RetryPolicy
from qgateway.v1 import (
    backend_service_pb2,
    backend_service_pb2_grpc,
    job_pb2,
    job_service_pb2,
    job_service_pb2_grpc,
)

from gateway.security.api_keys import generate_key
from gateway.server import DB_FILE
from tests.gateway_process import GatewayProcess, keys_toml, write_config
from tests.rpc import ghz, sampler_spec, slow_circuit, status_of

INVALID = grpc.StatusCode.INVALID_ARGUMENT
ALICE = generate_key("alice")
BOB = generate_key("bob")

BACKENDS = """
[backends.aer]
adapter = "aer"
pool = { min_instances = 1, max_instances = 1 }

[backends.aer-mps]
adapter = "aer"
pool = { min_instances = 1, max_instances = 1 }
options = { method = "matrix_product_state" }
"""


@pytest.fixture(scope="module")
def gw(tmp_path_factory: pytest.TempPathFactory) -> Iterator[GatewayProcess]:
    root = tmp_path_factory.mktemp("idempotency")
    config = write_config(root / "g.toml", root / "data", keys_toml(ALICE, BOB) + BACKENDS)
    process = GatewayProcess.start(config, root / "gateway.log")
    yield process
    assert process.terminate() == 0, process.log_path.read_text()[-3000:]


@pytest.fixture(scope="module")
def data_dir(gw: GatewayProcess) -> Path:
    return Path(gw.log_path).parent / "data"


def _client(gw: GatewayProcess, key: object) -> Client:
    return Client(
        gw.address,
        metadata=[("authorization", f"Bearer {key.key}")],  # type: ignore[attr-defined]
        retry=RetryPolicy(max_attempts=1),
    )


@pytest.fixture(scope="module")
def alice(gw: GatewayProcess) -> Iterator[Client]:
    with _client(gw, ALICE) as c:
        yield c


@pytest.fixture(scope="module")
def bob(gw: GatewayProcess) -> Iterator[Client]:
    with _client(gw, BOB) as c:
        yield c


def _md(key: object) -> list[tuple[str, str]]:
    return [("authorization", f"Bearer {key.key}")]  # type: ignore[attr-defined]


class Stubs:
    """Raw stubs of one tenant (the typed client would add prefixes and request ids)."""

    def __init__(self, client: Client, key: object) -> None:
        self.jobs = job_service_pb2_grpc.JobServiceStub(client.channel)
        self.backends = backend_service_pb2_grpc.BackendServiceStub(client.channel)
        self.md = _md(key)

    def submit(
        self, spec: job_pb2.JobSpec, request_id: str = ""
    ) -> job_service_pb2.SubmitJobResponse:
        return self.jobs.SubmitJob(
            job_service_pb2.SubmitJobRequest(request_id=request_id, spec=spec),
            metadata=self.md,
            timeout=30,
        )

    def run(self, spec: job_pb2.JobSpec, request_id: str = "") -> job_service_pb2.RunResponse:
        return self.jobs.Run(
            job_service_pb2.RunRequest(request_id=request_id, spec=spec),
            metadata=self.md,
            timeout=60,
        )

    def list(
        self, filter: str = "", page_size: int = 0, token: str = ""
    ) -> job_service_pb2.ListJobsResponse:
        return self.jobs.ListJobs(
            job_service_pb2.ListJobsRequest(filter=filter, page_size=page_size, page_token=token),
            metadata=self.md,
            timeout=10,
        )

    def names(self, filter: str, page_size: int = 0) -> list[str]:
        names: list[str] = []
        token = ""
        while True:
            page = self.list(filter, page_size, token)
            names.extend(j.name for j in page.jobs)
            if not page.next_page_token:
                return names
            token = page.next_page_token


@pytest.fixture(scope="module")
def a(alice: Client) -> Stubs:
    return Stubs(alice, ALICE)


@pytest.fixture(scope="module")
def b(bob: Client) -> Stubs:
    return Stubs(bob, BOB)


def _rid() -> str:
    return f"req-{secrets.token_hex(8)}"


def _error(call: object) -> object:
    assert callable(call)
    with pytest.raises(grpc.RpcError) as exc:
        call()
    return status_of(exc.value)


# ------------------------------------------------------------------------------- idempotency


def test_aer_and_backends_aer_are_one_request(a: Stubs) -> None:
    rid = _rid()
    spec = sampler_spec(ghz(2), backend="aer", shots=32, seed=1)
    spec.options.fallback_backend = "backends/aer-mps"
    spec.labels.update({"team": "qml", "env": "dev"})
    first = a.submit(spec, rid)
    assert first.created and first.job.state == job_pb2.JOB_STATE_QUEUED

    # The same request spelled differently: bare names (which validation alone would refuse),
    # labels in another order, the documented default written out, unknown-free.
    again = job_pb2.JobSpec()
    again.CopyFrom(spec)
    again.backend = "aer"
    again.options.fallback_backend = "aer-mps"
    again.ClearField("labels")
    again.labels.update({"env": "dev", "team": "qml"})
    again.options.sampler_output = job_pb2.SAMPLER_OUTPUT_SAMPLES_AND_COUNTS
    retry = a.submit(again, rid)
    assert not retry.created
    assert retry.job.name == first.job.name

    # Run with the same request_id is the same request too: it waits for that job.
    ran = a.run(spec, rid)
    assert not ran.created
    assert ran.job.name == first.job.name
    assert ran.job.state == job_pb2.JOB_STATE_SUCCEEDED

    # Without the request_id the bare name is what it is: refused by validation.
    info = _error(lambda: a.submit(again))
    assert (info.code, info.reason) == (INVALID, "INVALID_BACKEND_NAME")  # type: ignore[attr-defined]


def test_run_says_whether_it_created_the_job(a: Stubs) -> None:
    rid = _rid()
    spec = sampler_spec(ghz(3), backend="aer-mps", shots=16, seed=2)
    first = a.run(spec, rid)
    assert first.created and first.job.state == job_pb2.JOB_STATE_SUCCEEDED
    second = a.run(spec, rid)
    assert not second.created and second.job.name == first.job.name
    assert second.result == first.result  # the stored result, not a second run
    no_id = a.run(spec)
    assert no_id.created and no_id.job.name != first.job.name


def test_the_same_request_id_for_another_request_is_refused(a: Stubs) -> None:
    rid = _rid()
    first = a.submit(sampler_spec(ghz(2), shots=32, seed=1), rid)
    for changed in (
        sampler_spec(ghz(2), shots=33, seed=1),
        sampler_spec(ghz(2), shots=32, seed=2),
        sampler_spec(ghz(2), shots=32, seed=1, backend="aer-mps"),
    ):
        info = _error(lambda changed=changed: a.submit(changed, rid))
        assert (info.code, info.reason, info.domain) == (
            INVALID,
            "REQUEST_ID_REUSED",
            "qgateway.dev",
        )  # type: ignore[attr-defined]
        assert info.metadata == {"requestId": rid, "job": first.job.name}  # type: ignore[attr-defined]
        assert info.fields == ["request_id"]  # type: ignore[attr-defined]
    labelled = sampler_spec(ghz(2), shots=32, seed=1)
    labelled.labels["x"] = "y"
    info = _error(lambda: a.run(labelled, rid))
    assert info.reason == "REQUEST_ID_REUSED"  # type: ignore[attr-defined]


def test_request_ids_belong_to_their_tenant(a: Stubs, b: Stubs) -> None:
    rid = _rid()
    mine = a.submit(sampler_spec(ghz(2), shots=32, seed=1), rid)
    # Bob's request with Alice's id is his own: neither her job nor a reuse error.
    theirs = b.submit(sampler_spec(ghz(2), shots=64, seed=9), rid)
    assert theirs.created and theirs.job.name != mine.job.name
    same = b.submit(sampler_spec(ghz(2), shots=64, seed=9), rid)
    assert not same.created and same.job.name == theirs.job.name
    # Alice's own retry still finds hers.
    assert a.submit(sampler_spec(ghz(2), shots=32, seed=1), rid).job.name == mine.job.name


@pytest.mark.parametrize(
    "request_id",
    ["x" * 129, "caf\u00e9", "tab\there", "new\nline", "\x00", "\u200b"],
    ids=["129-chars", "non-ascii", "tab", "newline", "nul", "zero-width-space"],
)
def test_request_ids_outside_the_documented_format_are_refused(a: Stubs, request_id: str) -> None:
    info = _error(lambda: a.submit(sampler_spec(ghz(2)), request_id))
    assert (info.code, info.reason) == (INVALID, "INVALID_REQUEST_ID")  # type: ignore[attr-defined]
    assert info.metadata == {"maxLength": "128"}  # type: ignore[attr-defined]
    assert info.fields == ["request_id"]  # type: ignore[attr-defined]


def test_the_longest_request_id_is_accepted(a: Stubs) -> None:
    rid = ("~ !" + secrets.token_hex(8)).ljust(128, "z")
    assert a.submit(sampler_spec(ghz(2)), rid).created
    assert not a.submit(sampler_spec(ghz(2)), rid).created


# ------------------------------------------------------------------------------------ labels


def test_labels_are_stored_and_returned(a: Stubs) -> None:
    spec = sampler_spec(ghz(2))
    labels = {"team": "qml", "cost-center": "c_42", "empty": "", "k" + "x" * 62: "v" * 63}
    spec.labels.update(labels)
    reply = a.submit(spec)
    assert dict(reply.job.labels) == labels
    got = a.jobs.GetJob(job_service_pb2.GetJobRequest(name=reply.job.name), metadata=a.md)
    assert dict(got.job.labels) == labels
    listed = a.list('labels.team = "qml" AND labels:empty').jobs
    assert [(j.name, dict(j.labels)) for j in listed] == [(reply.job.name, labels)]


@pytest.mark.parametrize(
    ("labels", "metadata"),
    [
        ({f"k{i}": "v" for i in range(65)}, {"labelCount": "65", "limit": "64"}),
        ({"Team": "qml"}, {"labelKey": "Team"}),
        ({"9lives": "x"}, {"labelKey": "9lives"}),
        ({"": "x"}, {"labelKey": ""}),
        ({"k" * 64: "x"}, {"labelKey": "k" * 64}),
        ({"team": "QML"}, {"labelKey": "team"}),
        ({"team": "a b"}, {"labelKey": "team"}),
        ({"team": "v" * 64}, {"labelKey": "team"}),
        ({"team": "caf\u00e9"}, {"labelKey": "team"}),
        ({"team": "a' OR 1=1 --"}, {"labelKey": "team"}),
    ],
    ids=[
        "65-labels",
        "upper-key",
        "digit-first",
        "empty-key",
        "64-char-key",
        "upper-value",
        "space",
        "64-char-value",
        "non-ascii",
        "sql",
    ],
)
def test_labels_outside_the_documented_limits_are_refused(
    a: Stubs, labels: dict[str, str], metadata: dict[str, str]
) -> None:
    spec = sampler_spec(ghz(2))
    spec.labels.update(labels)
    info = _error(lambda: a.submit(spec, _rid()))
    assert (info.code, info.reason) == (INVALID, "INVALID_LABELS")  # type: ignore[attr-defined]
    assert info.metadata == metadata  # type: ignore[attr-defined]
    assert info.fields == ["spec.labels"]  # type: ignore[attr-defined]


# ------------------------------------------------------------------------------------ filter


def _rfc3339(ts: object) -> str:
    dt = ts.ToDatetime()  # type: ignore[attr-defined]
    return dt.strftime("%Y-%m-%dT%H:%M:%S.%fZ")


@pytest.fixture(scope="module")
def batch(a: Stubs, alice: Client) -> dict[str, job_pb2.Job]:
    """Five jobs of Alice with a batch label: four SUCCEEDED on two backends with various team
    labels, one CANCELLED."""
    tag = secrets.token_hex(6)
    plan = [
        ("j1", "aer", {"team": "qml"}),
        ("j2", "aer-mps", {"team": "chem"}),
        ("j3", "aer", {}),
        ("j4", "aer-mps", {"team": "qml"}),
    ]
    jobs: dict[str, job_pb2.Job] = {}
    for key, backend, labels in plan:
        spec = sampler_spec(ghz(2), backend=backend, shots=16, seed=1)
        spec.labels.update({"batch": tag, **labels})
        jobs[key] = a.run(spec).job
        assert jobs[key].state == job_pb2.JOB_STATE_SUCCEEDED
    # j5 waits behind a long job on aer-mps (one worker) and is cancelled while still queued,
    # so it ends CANCELLED whatever the machine's speed.
    blocker = a.submit(sampler_spec(slow_circuit(), backend="aer-mps", shots=20_000, seed=1)).job
    queued = sampler_spec(ghz(2), backend="aer-mps", shots=16, seed=1)
    queued.labels["batch"] = tag
    j5 = a.submit(queued).job
    alice.cancel(j5.name, timeout=30)
    final = alice.wait(j5.name, timeout=60)
    assert final.state.value == "CANCELLED"
    alice.cancel(blocker.name, timeout=30)  # frees the worker for the other tests
    jobs["j5"] = a.jobs.GetJob(job_service_pb2.GetJobRequest(name=j5.name), metadata=a.md).job
    jobs["tag"] = job_pb2.Job(name=tag)  # the label value, for the tests
    times = [jobs[k].create_time.ToNanoseconds() for k in ("j1", "j2", "j3", "j4", "j5")]
    assert times == sorted(set(times))  # distinct and in submission order
    return jobs


@pytest.mark.parametrize(
    ("extra", "expected"),
    [
        ("", ["j5", "j4", "j3", "j2", "j1"]),
        ('backend = "backends/aer"', ["j3", "j1"]),
        ('backend != "backends/aer"', ["j5", "j4", "j2"]),
        ('labels.team = "qml"', ["j4", "j1"]),
        ('labels.team != "qml"', ["j5", "j3", "j2"]),
        ("labels:team", ["j4", "j2", "j1"]),
        ('(labels.team = "qml" OR labels.team = "chem")', ["j4", "j2", "j1"]),
        ("state = CANCELLED", ["j5"]),
        ("state = JOB_STATE_SUCCEEDED", ["j4", "j3", "j2", "j1"]),
        ("state != SUCCEEDED", ["j5"]),
        ("(state = CANCELLED OR state = FAILED)", ["j5"]),
        ('state = SUCCEEDED AND backend = "backends/aer-mps" AND labels.team = "qml"', ["j4"]),
        ('session = "sessions/s1"', []),
        ("create_time >= {j3}", ["j5", "j4", "j3"]),
        ("create_time > {j3}", ["j5", "j4"]),
        ("create_time < {j2}", ["j1"]),
        ("create_time <= {j2}", ["j2", "j1"]),
        ("create_time > {j1} AND create_time < {j4}", ["j3", "j2"]),
    ],
)
def test_the_filter_returns_exactly_the_matching_jobs(
    a: Stubs, batch: dict[str, job_pb2.Job], extra: str, expected: list[str]
) -> None:
    times = {k: f'"{_rfc3339(batch[k].create_time)}"' for k in ("j1", "j2", "j3", "j4")}
    text = f'labels.batch = "{batch["tag"].name}"'
    if extra:
        text += " AND " + extra.format(**times)
    want = [batch[k].name for k in expected]
    assert a.names(text) == want
    assert a.names(text, page_size=1) == want  # paged one by one: the same jobs, in order


def test_the_client_builds_filters_from_typed_arguments(
    alice: Client, batch: dict[str, job_pb2.Job]
) -> None:
    tag = batch["tag"].name
    listed = alice.list_jobs(
        filter=f'labels.batch = "{tag}" AND labels:team', states=["SUCCEEDED"], backend="aer-mps"
    )
    assert [j.name for j in listed] == [batch["j4"].name, batch["j2"].name]
    by_state = alice.list_jobs(filter=f'labels.batch = "{tag}"', states=["CANCELLED", "FAILED"])
    jobs = list(by_state)
    assert [j.name for j in jobs] == [batch["j5"].name]
    assert jobs[0].labels == {"batch": tag}


def test_filters_are_per_tenant(b: Stubs, batch: dict[str, job_pb2.Job]) -> None:
    assert b.names(f'labels.batch = "{batch["tag"].name}"') == []


@pytest.mark.parametrize(
    ("text", "position", "limit"),
    [
        ('labels.x = "a\' OR 1=1 --"', "11", None),
        ('labels.x\' OR 1=1 -- = "a"', "8", None),
        ("state = RUNNING OR state = QUEUED", "16", None),
        ("(" * 100 + "state = RUNNING" + ")" * 100, "8", "8"),
        ('tenant = "bob"', "0", None),
        ('backend = "aer"', "10", None),
        ('create_time > "yesterday"', "14", None),
        ("state = RUNNİNG", "12", None),
        ("labels:a AND " * 200 + "labels:a", "2048", "2048"),
    ],
    ids=[
        "sql-in-value",
        "sql-in-key",
        "or-across-clauses",
        "deep-parentheses",
        "unknown-field",
        "bare-backend",
        "bad-time",
        "unicode",
        "too-long",
    ],
)
def test_hostile_filters_are_invalid_filter(
    a: Stubs, text: str, position: str, limit: str | None
) -> None:
    info = _error(lambda: a.list(text))
    assert (info.code, info.reason, info.domain) == (INVALID, "INVALID_FILTER", "qgateway.dev")  # type: ignore[attr-defined]
    # A refusal that quotes a bound (nesting depth, length) carries it too.
    expected = {"position": position} if limit is None else {"position": position, "limit": limit}
    assert info.metadata == expected  # type: ignore[attr-defined]
    assert info.fields == ["filter"]  # type: ignore[attr-defined]


# ------------------------------------------------------------------------------- page tokens


def _raw(token: str) -> bytes:
    return base64.urlsafe_b64decode(token + "=" * (-len(token) % 4))


def _token(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def _first_token(stubs: Stubs, text: str) -> str:
    page = stubs.list(text, page_size=1)
    assert page.next_page_token
    return page.next_page_token


def _invalid_token(info: object) -> None:
    assert (info.code, info.reason, info.domain) == (INVALID, "INVALID_PAGE_TOKEN", "qgateway.dev")  # type: ignore[attr-defined]
    assert info.fields == ["page_token"]  # type: ignore[attr-defined]


def test_an_edited_token_is_invalid(a: Stubs, batch: dict[str, job_pb2.Job]) -> None:
    text = f'labels.batch = "{batch["tag"].name}"'
    token = _first_token(a, text)
    raw = _raw(token)
    for index in (0, 1, len(raw) // 2, len(raw) - 1):
        edited = bytearray(raw)
        edited[index] ^= 0x04
        _invalid_token(_error(lambda edited=edited: a.list(text, 1, _token(bytes(edited)))))
    _invalid_token(_error(lambda: a.list(text, 1, token[:-2])))
    _invalid_token(_error(lambda: a.list(text, 1, token + "AA")))
    assert a.list(text, 1, token).jobs[0].name == batch["j4"].name  # the real one still pages


def test_another_tenants_token_is_invalid(
    a: Stubs, b: Stubs, batch: dict[str, job_pb2.Job]
) -> None:
    for text in (f'labels.batch = "{batch["tag"].name}"', ""):
        token = _first_token(a, text)
        _invalid_token(_error(lambda token=token, text=text: b.list(text, 1, token)))


def test_a_token_is_bound_to_its_filter_but_not_its_page_size_or_spelling(
    a: Stubs, batch: dict[str, job_pb2.Job]
) -> None:
    tag = batch["tag"].name
    text = f'labels.batch = "{tag}" AND state = SUCCEEDED'
    token = _first_token(a, text)
    for other in (f'labels.batch = "{tag}"', "", f'labels.batch = "{tag}" AND state = FAILED'):
        _invalid_token(_error(lambda other=other: a.list(other, 1, token)))
    # The same query spelled otherwise, with another page size: the token still pages.
    respelled = f"state=JOB_STATE_SUCCEEDED AND labels.batch='{tag}'"
    rest = a.list(respelled, 10, token)
    assert [j.name for j in rest.jobs] == [batch[k].name for k in ("j3", "j2", "j1")]
    assert rest.next_page_token == ""


def test_list_backends_tokens_are_sealed_and_per_tenant(a: Stubs, b: Stubs) -> None:
    def backends(stubs: Stubs, token: str = "") -> backend_service_pb2.ListBackendsResponse:
        return stubs.backends.ListBackends(
            backend_service_pb2.ListBackendsRequest(page_size=1, page_token=token),
            metadata=stubs.md,
            timeout=10,
        )

    first = backends(a)
    assert [x.name for x in first.backends] == ["backends/aer"]
    assert b"aer" not in _raw(first.next_page_token)  # the cursor is not readable
    assert [x.name for x in backends(a, first.next_page_token).backends] == ["backends/aer-mps"]
    _invalid_token(_error(lambda: backends(b, first.next_page_token)))
    edited = bytearray(_raw(first.next_page_token))
    edited[-1] ^= 1
    _invalid_token(_error(lambda: backends(a, _token(bytes(edited)))))
    # A ListJobs token is no ListBackends token (and the other way round).
    _invalid_token(_error(lambda: backends(a, _first_token(a, ""))))
    _invalid_token(_error(lambda: a.list("", 1, first.next_page_token)))


def _seq_of(data_dir: Path, job: str) -> int:
    """The store's global sequence number of a job (what the old tokens exposed)."""
    conn = sqlite3.connect(f"file:{data_dir / DB_FILE}?mode=ro", uri=True)
    try:
        row = conn.execute("SELECT seq FROM jobs WHERE id = ?", (job.removeprefix("jobs/"),))
        return int(row.fetchone()[0])
    finally:
        conn.close()


def test_tokens_reveal_nothing_about_other_tenants(
    a: Stubs, b: Stubs, batch: dict[str, job_pb2.Job], data_dir: Path
) -> None:
    text = f'labels.batch = "{batch["tag"].name}"'
    before = _first_token(a, text)
    for seed in range(5):  # another tenant's traffic between Alice's two calls
        b.submit(sampler_spec(ghz(2), shots=8, seed=seed))
    after = _first_token(a, text)
    # Same position, same length, nothing in common: a token is a fresh sealed blob.
    assert len(before) == len(after) and before != after
    seq = _seq_of(data_dir, batch["j5"].name)
    for token in (before, after):
        raw = _raw(token)
        for encoded in (
            struct.pack(">q", seq),
            struct.pack("<q", seq),
            struct.pack(">i", seq),
            struct.pack("<i", seq),
            batch["j5"].name.removeprefix("jobs/").encode(),
            batch["j5"].name.removeprefix("jobs/")[:8].encode(),
        ):
            assert encoded not in raw
    # Both still page to the same job.
    assert a.list(text, 1, before).jobs[0].name == a.list(text, 1, after).jobs[0].name


def test_the_token_key_is_private(data_dir: Path, a: Stubs) -> None:
    _first_token(a, "")
    key = data_dir / "page-token.key"
    assert stat.S_IMODE(key.stat().st_mode) == 0o600
    assert len(key.read_bytes()) == 32


# ------------------------------------------------------------------ retries across a restart


RESTART_BEFORE = """
[backends.aer]
adapter = "aer"
pool = { min_instances = 1, max_instances = 1 }

[backends.doomed]
adapter = "aer"
pool = { min_instances = 1, max_instances = 1 }
"""

RESTART_AFTER = """
[backends.aer]
adapter = "aer"
max_shots = 1000
default_shots = 1000
pool = { min_instances = 1, max_instances = 1 }
"""


@pytest.mark.timeout(240)
def test_a_retry_gets_its_job_after_the_configuration_changed(tmp_path: Path) -> None:
    data = tmp_path / "data"
    before = write_config(tmp_path / "before.toml", data, RESTART_BEFORE)
    after = write_config(tmp_path / "after.toml", data, RESTART_AFTER)
    gw = GatewayProcess.start(before, tmp_path / "gateway.log")
    try:
        with grpc.insecure_channel(gw.address) as channel:
            jobs = job_service_pb2_grpc.JobServiceStub(channel)
            doomed = jobs.Run(
                job_service_pb2.RunRequest(
                    request_id="on-doomed", spec=sampler_spec(ghz(2), backend="doomed", shots=10)
                ),
                timeout=60,
            )
            big = jobs.Run(
                job_service_pb2.RunRequest(
                    request_id="many-shots", spec=sampler_spec(ghz(2), shots=5000)
                ),
                timeout=60,
            )
            assert doomed.created and big.created
            assert {doomed.job.state, big.job.state} == {job_pb2.JOB_STATE_SUCCEEDED}
            token = jobs.ListJobs(
                job_service_pb2.ListJobsRequest(page_size=1), timeout=10
            ).next_page_token
            assert token
    finally:
        assert gw.terminate() == 0, gw.log_path.read_text()[-3000:]

    gw = GatewayProcess.start(after, tmp_path / "gateway.log")
    try:
        with grpc.insecure_channel(gw.address) as channel:
            jobs = job_service_pb2_grpc.JobServiceStub(channel)
            # The backend is gone: a new request for it is refused ...
            with pytest.raises(grpc.RpcError) as exc:
                jobs.SubmitJob(
                    job_service_pb2.SubmitJobRequest(
                        spec=sampler_spec(ghz(2), backend="doomed", shots=10)
                    ),
                    timeout=30,
                )
            assert status_of(exc.value).reason == "BACKEND_NOT_FOUND"
            # ... and so are 5000 shots on aer now ...
            with pytest.raises(grpc.RpcError) as exc:
                jobs.SubmitJob(
                    job_service_pb2.SubmitJobRequest(spec=sampler_spec(ghz(2), shots=5000)),
                    timeout=30,
                )
            assert (status_of(exc.value).code, status_of(exc.value).reason) == (
                INVALID,
                "INVALID_SHOTS",
            )
            # ... but the retries get their jobs, with their results.
            for request_id, spec, original in (
                ("on-doomed", sampler_spec(ghz(2), backend="doomed", shots=10), doomed),
                ("many-shots", sampler_spec(ghz(2), shots=5000), big),
            ):
                again = jobs.SubmitJob(
                    job_service_pb2.SubmitJobRequest(request_id=request_id, spec=spec), timeout=30
                )
                assert not again.created and again.job.name == original.job.name
                ran = jobs.Run(
                    job_service_pb2.RunRequest(request_id=request_id, spec=spec), timeout=30
                )
                assert not ran.created and ran.result == original.result
            # The page token issued before the restart still pages: the key was kept.
            page = jobs.ListJobs(
                job_service_pb2.ListJobsRequest(page_size=1, page_token=token), timeout=10
            )
            assert [j.name for j in page.jobs] == [doomed.job.name]
    finally:
        assert gw.terminate() == 0, gw.log_path.read_text()[-3000:]
