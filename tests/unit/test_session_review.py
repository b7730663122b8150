"""Hostile review of bc72339..HEAD: each finding is fixed (its test failed before);
the plain tests kill mutants of the new code that no other test killed."""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
import threading
import time
import types
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

from gateway.domain.errors import FailureKind
from gateway.security import jwt_auth

# The admin fixtures (a SqliteStore and an AdminServicer acting as a gateway admin).
from tests.unit.test_tenant_policies import admin, db_path, store  # noqa: F401

# --- 1. IBM: a cancel that met the provider's 5xx is "refused", never asked again -----------


class _Always502(BaseHTTPRequestHandler):
    def do_POST(self) -> None:
        self.send_response(502)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def bad_gateway() -> Iterator[str]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Always502)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_port}"
    server.shutdown()
    server.server_close()
    thread.join(5)


def test_an_ibm_cancel_that_met_a_5xx_is_no_refusal(bad_gateway: str) -> None:
    from qiskit_ibm_runtime.api.exceptions import RequestsApiError
    from qiskit_ibm_runtime.api.session import RetrySession
    from qiskit_ibm_runtime.exceptions import IBMRuntimeError

    from gateway.backends.ibm.cloud import IbmCloudRunner

    session = RetrySession(bad_gateway, retries_total=1, backoff_factor=0)
    try:
        try:  # what RuntimeJobV2.cancel does with the client's failure
            session.post("/jobs/x/cancel")
        except RequestsApiError as ex:
            raise IBMRuntimeError(f"Failed to cancel job: {ex}") from None
    except IBMRuntimeError as exc:
        err = IbmCloudRunner._error(types.SimpleNamespace(name="ibm"), exc, "rid")  # type: ignore[arg-type]
    finally:
        session.close()
    assert err.kind is not FailureKind.CLIENT_ERROR, err.kind  # not a refusal: asked again


# --- 2. A Usage row the previous version stored is still unreadable -------------------------


def test_an_old_row_with_an_infinite_duration_is_readable_now() -> None:
    from gateway.store import sqlite

    stored = {
        "seed": None,
        "backend": "ibm-cloud",
        "sdk_versions": {},
        "layouts": [[0, 1]],
        "attempts": 1,
        "usage": {
            "shots": 100,
            "execution_seconds": float("inf"),
            "provider_cost": None,
            "provider_unit": "",
            "tasks": 1,
        },
        "cost": None,
    }
    info = sqlite._execution_from_json(json.dumps(stored))
    assert info.usage is not None


# --- 3. The JWKS fetch's deadline is not enforced while headers arrive -----------------------


def _drip_headers(listener: socket.socket, seconds: float) -> None:
    conn, _ = listener.accept()
    with conn, contextlib.suppress(OSError):  # the client shutting its socket ends the drip
        conn.recv(65536)
        conn.sendall(b"HTTP/1.1 200 OK\r\n")
        end = time.monotonic() + seconds
        i = 0
        while time.monotonic() < end:
            conn.sendall(f"X-Drip-{i}: a\r\n".encode())
            i += 1
            time.sleep(0.05)
        body = b'{"keys": []}'
        conn.sendall(b"Content-Length: %d\r\n\r\n%s" % (len(body), body))


def test_the_jwks_deadline_covers_the_headers(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(jwt_auth, "_JWKS_FETCH_S", 0.5)
    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]
    server = threading.Thread(target=_drip_headers, args=(listener, 2.5), daemon=True)
    server.start()
    t0 = time.monotonic()
    with contextlib.suppress(Exception):
        jwt_auth._fetch_url(f"http://127.0.0.1:{port}/jwks")
    elapsed = time.monotonic() - t0
    server.join(10)
    listener.close()
    assert elapsed < 1.5, f"the fetch took {elapsed:.1f}s against a 0.5s deadline"


# --- 4. UpdateTenant: one lock for every tenant ----------------------------------------------


@pytest.mark.anyio
async def test_a_hung_update_of_one_tenant_does_not_block_another(
    admin: Any,  # noqa: F811
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from google.protobuf import field_mask_pb2
    from qgateway.v1 import admin_pb2, admin_service_pb2

    for tid in ("slow", "other"):
        await admin.CreateTenant(
            admin_service_pb2.CreateTenantRequest(tenant_id=tid, tenant=admin_pb2.Tenant()), None
        )
    real = admin._store.update_tenant
    release = asyncio.Event()

    async def update_tenant(stored: Any, etag: str) -> Any:
        if stored.id == "slow":
            await release.wait()
        return await real(stored, etag)

    monkeypatch.setattr(admin._store, "update_tenant", update_tenant)

    def update(tid: str) -> Any:
        return admin.UpdateTenant(
            admin_service_pb2.UpdateTenantRequest(
                tenant=admin_pb2.Tenant(
                    name=f"tenants/{tid}", policy=admin_pb2.TenantPolicy(max_qubits=3)
                ),
                update_mask=field_mask_pb2.FieldMask(paths=["policy.max_qubits"]),
            ),
            None,
        )

    slow = asyncio.ensure_future(update("slow"))
    await asyncio.sleep(0.1)
    try:
        got = await asyncio.wait_for(update("other"), 2.0)
        assert got.tenant.policy.max_qubits == 3
    finally:
        release.set()
        await slow


# --- 5. Braket: a multi-task cancel reports its first failure, hiding an outage -------------


@pytest.mark.anyio
async def test_a_braket_cancel_with_one_task_unreached_is_asked_again() -> None:
    from botocore.exceptions import EndpointConnectionError

    from gateway.backends.braket.cloud import BraketCloudHandle
    from gateway.domain.errors import ExecutionError
    from tests.unit.test_braket_cloud import FakeBraket, _client_error, _runner

    fake = FakeBraket()

    def cancel_quantum_task(arn: str) -> None:
        if arn == "arn:task-0":
            raise _client_error("ValidationException", 400)
        raise EndpointConnectionError(endpoint_url="https://braket.us-east-1.amazonaws.com")

    fake.cancel_quantum_task = cancel_quantum_task  # type: ignore[method-assign]
    runner = _runner(fake)
    with pytest.raises(ExecutionError) as failed:
        await runner.cancel(BraketCloudHandle("job-1", ["arn:task-0", "arn:task-1"]))
    assert failed.value.kind is not FailureKind.CLIENT_ERROR, failed.value.kind


# --- 6. The phase watchdog cannot be turned off ---------------------------------------------


def test_a_zero_phase_bound_means_no_bound(tmp_path: Any) -> None:
    import os
    import subprocess
    import sys
    from pathlib import Path

    repo = Path(__file__).resolve().parents[2]
    (tmp_path / "test_quick.py").write_text(
        "import pytest\n\n@pytest.fixture\ndef quick():\n    yield\n\n"
        "def test_uses_it(quick):\n    pass\n"
    )
    (tmp_path / "conftest.py").write_text('pytest_plugins = ["tests.phase_watchdog"]\n')
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(repo), os.environ.get("PYTHONPATH", "")]),
    }
    done = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-p", "no:randomly",
         "-c", os.devnull, "--rootdir", str(tmp_path),
         "-o", "phase_timeout_setup=0", "-o", "phase_timeout_teardown=0", "test_quick.py"],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr[-2000:]


# --- 7. The per-second hold is not a bound: a report past the run-time limit is charged -----


@pytest.mark.anyio
async def test_a_report_past_the_jobs_run_limit_is_not_charged_past_its_hold(
    store: Any,  # noqa: F811
) -> None:
    from gateway.backends.base import ExecutionOutcome
    from gateway.backends.runner import ExecutionModel
    from gateway.domain.jobs import JobResult
    from tests.core_harness import ScriptedRunner, spec
    from tests.unit.test_provider_hostile_review import priced_quota_core

    runner = ScriptedRunner(slots=1, model=ExecutionModel.REMOTE)
    core = await priced_quota_core(store, runner)
    try:
        job = await core.submit("alice", spec("qpu", max_execution_time_s=10.0))
        await core.until("alice", job.id, "RUNNING")
        runner.handles[job.id].done.set_result(
            ExecutionOutcome(JobResult(pubs=()), {}, execution_seconds=1000.0)
        )
        ended = await core.until("alice", job.id, "SUCCEEDED")
        assert ended.execution is not None and ended.execution.cost is not None
        assert ended.execution.cost.amount <= 10.0, ended.execution.cost
    finally:
        await core.manager.close()


# --- 8. A key document without "keys" is taken as an empty key set ---------------------------


def test_a_document_without_keys_is_not_a_jwk_set() -> None:
    with pytest.raises(ValueError):
        jwt_auth._parse_jwks(b'{"error": "upstream unavailable"}')


# --- Plain tests that kill mutants of the new code -------------------------------------------


@pytest.mark.anyio
async def test_a_cancel_that_failed_as_the_backends_fault_is_asked_again(store: Any) -> None:  # noqa: F811
    # Kills: the refusal check in RunnerStep._stop widened past CLIENT_ERROR (an outage the
    # SDK reports as a backend fault was then never asked again).
    from gateway.backends.runner import ExecutionModel, RunHandle
    from gateway.domain.errors import ExecutionError
    from tests.core_harness import ScriptedRunner, build_core, spec

    class FlakyCancel(ScriptedRunner):
        calls: int = 0

        async def cancel(self, handle: RunHandle) -> None:
            self.calls += 1
            if self.calls < 3:
                raise ExecutionError("PROVIDER_ERROR", "502", kind=FailureKind.BACKEND_FAULT)
            await super().cancel(handle)

    runner = FlakyCancel(slots=1, model=ExecutionModel.REMOTE)
    core = await build_core(store, "memory", {"qpu": runner})
    try:
        job = await core.submit("alice", spec("qpu"))
        await core.until("alice", job.id, "RUNNING")
        await core.manager.cancel("alice", job.id)
        await core.until("alice", job.id, "CANCELLED")
        assert runner.calls == 3
    finally:
        await core.manager.close()


def test_a_providers_zero_is_reported_as_zero() -> None:
    # Kills: `value >= 0` -> `value > 0` in pricing.reported (a reported 0 s became "none
    # reported", and a local runner was then charged its wall time instead).
    from gateway.domain import pricing

    assert pricing.reported(0.0) == 0.0
    assert pricing.reported(0) == 0


def test_an_estimator_answer_with_a_negative_standard_error_is_refused() -> None:
    # Kills: dropping `(stds >= 0).all()` in ibm.cloud._outcome (the existing test refuses a
    # NaN value in the same answer, which hides it).
    import numpy as np
    from qiskit.primitives import DataBin, PrimitiveResult
    from qiskit.primitives.containers import PubResult

    from gateway.backends.ibm import cloud
    from gateway.domain.jobs import SamplerOutput

    good = PubResult(DataBin(evs=np.array([0.5]), stds=np.array([0.1]), shape=(1,)), metadata={})
    cloud._outcome(PrimitiveResult([good]), SamplerOutput.COUNTS, None, None, 1)
    bad = PubResult(DataBin(evs=np.array([0.5]), stds=np.array([-0.1]), shape=(1,)), metadata={})
    with pytest.raises(ValueError):
        cloud._outcome(PrimitiveResult([bad]), SamplerOutput.COUNTS, None, None, 1)


def test_ibm_tags_that_are_one_string_do_not_match_by_substring() -> None:
    # Kills: dropping `isinstance(tags, list | tuple)` in ibm.cloud._tagged_for (a string tag
    # field "x-qgateway-job:mine-too" contains "qgateway-job:mine").
    from gateway.backends.ibm import cloud

    job = types.SimpleNamespace(tags=f"x-{cloud.JOB_TAG_PREFIX}mine-too")
    assert not cloud._tagged_for(job, "mine")
    assert cloud._tagged_for(types.SimpleNamespace(tags=[cloud.JOB_TAG_PREFIX + "mine"]), "mine")


@pytest.mark.anyio
async def test_a_failed_jobs_impossible_run_time_is_not_charged(store: Any) -> None:  # noqa: F811
    # Kills: `seconds = handle.execution_seconds` (no pricing.reported) in RunnerStep's ran():
    # a job that failed after its provider reported Infinity seconds was unreadable.
    from gateway.api import codec
    from gateway.backends.runner import ExecutionModel
    from gateway.domain.errors import ExecutionError
    from tests.core_harness import ScriptedRunner, build_core, spec

    runner = ScriptedRunner(slots=1, model=ExecutionModel.REMOTE)
    core = await build_core(store, "memory", {"qpu": runner})
    try:
        job = await core.submit("alice", spec("qpu"))
        await core.until("alice", job.id, "RUNNING")
        handle = runner.handles[job.id]
        handle.execution_seconds = float("inf")
        handle.done.set_exception(
            ExecutionError("EXECUTION_FAILED", "boom", kind=FailureKind.CLIENT_ERROR)
        )
        ended = await core.until("alice", job.id, "FAILED")
        codec.encode_job(ended)  # readable back
        assert ended.error is not None
        assert (ended.error.reason, ended.error.message) == ("EXECUTION_FAILED", "boom"), (
            ended.error
        )
        assert ended.execution is not None and ended.execution.backend == "qpu"
        if ended.execution is not None and ended.execution.usage is not None:
            assert ended.execution.usage.execution_seconds == 0.0
    finally:
        await core.manager.close()


_PROXY_PROBE = r"""
import os, sys, threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

def server(body):
    class H(BaseHTTPRequestHandler):
        def do_GET(self):
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)
        def log_message(self, *a):
            pass
    s = ThreadingHTTPServer(("127.0.0.1", 0), H)
    threading.Thread(target=s.serve_forever, daemon=True).start()
    return s

real, proxy = server(b"REAL"), server(b"PROXY")
os.environ["http_proxy"] = os.environ["HTTP_PROXY"] = f"http://127.0.0.1:{proxy.server_port}"
os.environ.pop("no_proxy", None); os.environ.pop("NO_PROXY", None)
from gateway.security import jwt_auth  # the openers are built now, with this environment
sys.stdout.write(jwt_auth._fetch_url(f"http://127.0.0.1:{real.server_port}/jwks").decode())
"""


def test_plain_http_key_fetches_never_use_the_environments_proxy() -> None:
    # Kills: _PLAIN_OPENER built without ProxyHandler({}) (the default reads $http_proxy when
    # the module is imported, which an in-process test set later never sees).
    import os
    import subprocess
    import sys

    env = {k: v for k, v in os.environ.items() if k.lower() not in ("http_proxy", "no_proxy")}
    got = subprocess.run(
        [sys.executable, "-c", _PROXY_PROBE],
        capture_output=True,
        text=True,
        timeout=60,
        env={**env, "PYTHONDONTWRITEBYTECODE": "1"},
        check=False,
    )
    assert got.stdout == "REAL", got.stderr[-2000:]


def _estimator_answer(evs: float, stds: float) -> Any:
    import numpy as np
    from qiskit.primitives import DataBin, PrimitiveResult
    from qiskit.primitives.containers import PubResult

    data = DataBin(evs=np.array([evs]), stds=np.array([stds]), shape=(1,))
    return PrimitiveResult([PubResult(data, metadata={})])


def test_a_finite_estimator_answer_to_a_sampler_job_is_refused() -> None:
    # Kills: dropping the `shots_asked is not None` refusal in ibm.cloud._outcome (the
    # existing test's answer also holds NaN and a negative error, refused anyway).
    from gateway.backends.ibm import cloud
    from gateway.domain.jobs import SamplerOutput

    cloud._outcome(_estimator_answer(0.5, 0.1), SamplerOutput.COUNTS, None, None, 1)
    with pytest.raises(ValueError):
        cloud._outcome(_estimator_answer(0.5, 0.1), SamplerOutput.COUNTS, None, 8, 1)


def test_a_non_finite_expectation_value_with_a_finite_error_is_refused() -> None:
    # Kills: dropping `np.isfinite(evs).all()` in ibm.cloud._outcome.
    from gateway.backends.ibm import cloud
    from gateway.domain.jobs import SamplerOutput

    for value in (float("nan"), float("inf")):
        with pytest.raises(ValueError):
            cloud._outcome(_estimator_answer(value, 0.1), SamplerOutput.COUNTS, None, None, 1)


def test_ibm_tags_that_raise_anything_are_not_this_jobs() -> None:
    # Kills: `except Exception` -> `except AttributeError` in ibm.cloud._tagged_for.
    from gateway.backends.ibm import cloud

    class Job:
        @property
        def tags(self) -> list[str]:
            raise RuntimeError("the SDK could not decode the job")

    assert cloud._tagged_for(Job(), "mine") is False


@pytest.mark.anyio
async def test_braket_task_index_tags_that_are_no_number_are_skipped() -> None:
    # Kills: dropping ValueError from _search_with's `except (TypeError, ValueError)`.
    from tests.unit.test_braket_cloud import _job
    from tests.unit.test_provider_hostile_review import _finished_braket_job

    fake, runner, handle = await _finished_braket_job()
    job = _job()
    fake.tasks[handle.arns[0]]["tags"] = {
        "qgateway:job": job.id,
        "qgateway:task": "first",
        "qgateway:tasks": "1",
    }
    assert await runner.reattach(job, None) is None


@pytest.mark.anyio
async def test_braket_a_completed_task_with_an_empty_bucket_is_a_backend_fault() -> None:
    # Kills: dropping `and bucket` from the results' location check in _follow's view.
    from gateway.domain.errors import ExecutionError
    from tests.unit.test_provider_hostile_review import _finished_braket_job

    fake, runner, handle = await _finished_braket_job()
    fake.tasks[handle.arns[0]]["outputS3Bucket"] = ""
    with pytest.raises(ExecutionError) as failed:
        await runner.wait(handle)
    assert (failed.value.kind, failed.value.reason) == (
        FailureKind.BACKEND_FAULT,
        "EXECUTION_FAILED",
    )
    assert "results' location" in failed.value.message


@pytest.mark.anyio
async def test_braket_reattach_by_tag_with_a_missing_index_is_not_followed() -> None:
    # Kills: `any(i not in found for i in range(total))` -> `len(found) < total` in
    # BraketCloudRunner.reattach: tasks tagged 2-of-3 then 0-of-2 are two, as many as the last
    # count, yet task 1 is missing (the mutant raised KeyError building the handle).
    import copy

    from tests.unit.test_braket_cloud import _job
    from tests.unit.test_provider_hostile_review import _finished_braket_job

    fake, runner, handle = await _finished_braket_job()
    job = _job()
    first = handle.arns[0]
    other = first + "-other"
    fake.tasks[other] = copy.deepcopy(fake.tasks[first])
    fake.tasks[other]["quantumTaskArn"] = other
    # The search lists the newest first: `other`, then `first`.
    fake.tasks[other]["tags"] = {
        "qgateway:job": job.id,
        "qgateway:task": "2",
        "qgateway:tasks": "3",
    }
    fake.tasks[first]["tags"] = {
        "qgateway:job": job.id,
        "qgateway:task": "0",
        "qgateway:tasks": "2",
    }
    assert await runner.reattach(job, None) is None
