"""A loopback stand-in for IBM Quantum's Runtime REST API and IBM Cloud IAM, as its own process.

qiskit-ibm-runtime's own client (QiskitRuntimeService, IBMBackend, the V2 primitives and
RuntimeJobV2) is pointed at it, so the gateway's IBM cloud runner is exercised through the real
SDK up to the network boundary. Jobs run on Qiskit Aer (ideal simulation of the ISA circuits
the SDK sends, seeded) and their results are written in the Runtime's own JSON format, so the
SDK's decoders read them: the "executor" program of the client-side primitives (schema v2.0:
the QuantumProgram run by qiskit-ibm-runtime's own local runner, its QuantumProgramResult with
the client's passthrough data), and the legacy "sampler"/"estimator" programs (RuntimeEncoder
of a PrimitiveResult).

    python -m gateway.backends.ibm.stub_service --port 0 --state-dir DIR [--token T]

prints ``ibm runtime stub listening on 127.0.0.1:PORT``. Configure the SDK with
``url = http://127.0.0.1:PORT/api/v1`` (the Runtime API base itself) and
``iam_url = http://127.0.0.1:PORT``.

Calls answered (the ones qiskit-ibm-runtime 0.51 makes for job-mode primitives):

- ``POST /identity/token`` (IAM API-key exchange, form encoded) -> a bearer token.
- ``GET /api/v1/backends`` -> ``{devices: [...]}``.
- ``GET /api/v1/backends/{name}/configuration | /properties | /status``: the fake
  backend's (FakeManilaV2 by default) configuration and calibration data.
- ``GET /api/v1/instances/usage`` (checked before every job).
- ``POST /api/v1/jobs`` (create; tags stored), ``GET /api/v1/jobs/{id}``,
  ``GET /api/v1/jobs/{id}/results``, ``POST /api/v1/jobs/{id}/cancel``,
  ``GET /api/v1/jobs?tags=...`` (jobs carrying every tag given, newest first).
- ``/control/stall_job_gets`` ``{on}``: ``GET /api/v1/jobs/{id}`` accepts the request and
  answers nothing (for up to a minute) until turned off.
- ``GET /api/v1/jobs/{id}/metrics``: timestamps and ``usage`` (``quantum_seconds``,
  ``seconds``, ``qpu_charge_time_seconds``, ``status`` "final" once the job ended; the quantum
  seconds a job that ran is charged are set with ``/control/usage``, 1 by default).
- Sessions (the SDK's Session and Batch): ``POST /api/v1/sessions`` ``{mode, backend,
  instance, max_ttl}`` -> ``{id}``; ``GET /api/v1/sessions/{id}`` (details: ``backend_name``,
  ``mode``, ``state``, ``accepting_jobs``); ``PATCH /api/v1/sessions/{id}``
  ``{accepting_jobs: false}`` (close: no more jobs, the queued ones still run);
  ``DELETE /api/v1/sessions/{id}/close`` (cancel: closed, and its queued jobs cancelled). A
  create naming a session that does not accept jobs is refused (400, code 1217).

Every /api/v1 call needs ``Authorization: Bearer <a token this stub issued>`` and a
``Service-CRN`` header, else 401.

Test controls (JSON bodies; not persisted):

- ``POST /control/hold_create`` ``{count}``: the next N creates make the job and then withhold
  the reply until ``/control/release_create`` (the caller may die meanwhile).
- ``POST /control/hold_jobs`` ``{on}``: jobs stay Queued until turned off.
- ``POST /control/fail`` ``{creates: N, status, code, message}``: the next N creates answer
  that HTTP error (no job made); ``{jobs: N, message}``: the next N jobs end Failed.
- ``POST /control/throttle`` ``{creates_per_s}``: creates over that rate answer 429.
- ``POST /control/reject_token`` ``{on}``: IAM refuses the API key and every issued bearer
  token answers 401 (an expired or revoked key).
- ``POST /control/usage`` ``{quantum_seconds}``: what the metrics of jobs ending from now on
  report.
- ``GET /control/stats`` -> ``{creates, create_calls, create_calls_per_second, calls,
  jobs: [{id, status, tags, session_id}], sessions: [{id, mode, state, accepting_jobs,
  cancelled, max_ttl, backend_name}]}``.

Jobs are written to ``DIR/jobs/{id}.json``; a restarted stub still has them.
"""

from __future__ import annotations

import argparse
import base64
import collections
import json
import os
import signal
import sys
import threading
import time
import uuid
from collections.abc import Sequence
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

__all__ = ["READY_PREFIX", "RuntimeStub", "main"]

READY_PREFIX = "ibm runtime stub listening on "
API = "/api/v1"
# The longest a stalled GET is held (a test that forgets to release it does not hang the stub).
STALL_LIMIT_S = 60.0
FINAL = frozenset({"Completed", "Failed", "Cancelled"})
# A job's stub-only fields, never in a job view.
_HIDDEN = frozenset({"params", "result", "fail", "ran", "quantum_seconds", "finished"})


class RuntimeStub:
    """The stub's state: tokens, jobs, controls and counters. HTTP only translates to it."""

    def __init__(self, state_dir: Path, api_key: str, backend: str) -> None:
        self.api_key = api_key
        self._dir = state_dir / "jobs"
        self._dir.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        self._changed = threading.Condition(self._lock)
        self._tokens: set[str] = set()
        self._jobs: dict[str, dict[str, Any]] = {}
        self._queue: collections.deque[str] = collections.deque()
        self.reject_token = False
        self.hold_jobs = False
        self._hold_creates = 0
        self._create_gate = threading.Event()
        self._create_gate.set()
        self.get_gate = threading.Event()
        self.get_gate.set()
        self._fail_creates: list[dict[str, Any]] = []
        self._fail_jobs: list[str] = []
        self.creates_per_s: float | None = None
        self._create_times: collections.deque[float] = collections.deque()
        self.creates = 0
        self.create_calls = 0
        self.per_second: collections.Counter[int] = collections.Counter()
        self.calls: collections.Counter[str] = collections.Counter()
        self._stopping = False
        self._sessions: dict[str, dict[str, Any]] = {}
        self.quantum_seconds = 1
        self._fake = _fake_backend(backend)
        self.backend_name: str = self._fake.name
        self._conf, self._props = _backend_data(self._fake)
        for path in sorted(self._dir.glob("*.json")):
            job = json.loads(path.read_text())
            self._jobs[job["id"]] = job
            if job["state"]["status"] not in FINAL:
                job["state"]["status"] = "Queued"
                self._queue.append(job["id"])
        self._worker = threading.Thread(target=self._work, name="stub-worker", daemon=True)
        self._worker.start()

    # ------------------------------------------------------------------ auth

    def issue(self, api_key: str) -> dict[str, Any] | None:
        with self._lock:
            if self.reject_token or api_key != self.api_key:
                return None
            now = int(time.time())
            token = _jwt({"iat": now, "exp": now + 3600, "jti": uuid.uuid4().hex})
            self._tokens.add(token)
        return {
            "access_token": token,
            "refresh_token": "not_supported",
            "token_type": "Bearer",
            "expires_in": 3600,
            "expiration": now + 3600,
            "scope": "ibm openid",
        }

    def authorised(self, header: str | None, crn: str | None) -> bool:
        if not header or not crn or not header.startswith("Bearer "):
            return False
        with self._lock:
            return not self.reject_token and header[len("Bearer ") :] in self._tokens

    # ------------------------------------------------------------------ backends

    def devices(self) -> dict[str, Any]:
        return {"devices": [{"name": self.backend_name, "status": {"name": "online"}}]}

    def backend(self, name: str, what: str) -> dict[str, Any] | None:
        if name != self.backend_name:
            return None
        if what == "configuration":
            return self._conf
        if what == "properties":
            return self._props
        if what == "status":
            with self._lock:
                queued = sum(1 for j in self._jobs.values() if j["state"]["status"] == "Queued")
            return {
                "state": True,
                "status": "active",
                "length_queue": queued,
                "backend_version": "1.0.0",
            }
        return None

    # ------------------------------------------------------------------ jobs

    def create(self, body: dict[str, Any]) -> tuple[int, dict[str, Any]]:
        """(HTTP status, answer). Blocks while a create hold is on (after making the job)."""
        now = time.time()
        with self._lock:
            self.create_calls += 1
            self.per_second[int(now)] += 1
            if self.creates_per_s is not None:
                while self._create_times and self._create_times[0] <= now - 1.0:
                    self._create_times.popleft()
                if len(self._create_times) >= self.creates_per_s:
                    return 429, _error(3429, "Too many requests: job creation rate exceeded")
                self._create_times.append(now)
            if self._fail_creates:
                fault = self._fail_creates.pop(0)
                return int(fault["status"]), _error(int(fault["code"]), str(fault["message"]))
            if body.get("backend") != self.backend_name:
                return 400, _error(1216, f"backend {body.get('backend')!r} does not exist")
            session_id = body.get("session_id")
            if session_id is not None:
                session = self._sessions.get(session_id)
                if session is None or not session["accepting_jobs"]:
                    return 400, _error(1217, f"session {session_id} is not accepting jobs")
            job_id = "d" + uuid.uuid4().hex[:19]
            job = {
                "id": job_id,
                "backend": self.backend_name,
                "program": {"id": body.get("program_id", "")},
                "tags": list(body.get("tags") or []),
                "created": time.strftime("%Y-%m-%dT%H:%M:%S.000Z", time.gmtime(now)),
                "state": {"status": "Queued"},
                "status": "Queued",
                "session_id": body.get("session_id"),
                "params": body.get("params"),
                # The runtime options' max_execution_time (the API calls it cost).
                "max_execution_time": body.get("cost"),
                "private": False,
            }
            if self._fail_jobs:
                job["fail"] = self._fail_jobs.pop(0)
            self._jobs[job_id] = job
            self._queue.append(job_id)
            self.creates += 1
            self._persist(job)
            held = self._hold_creates > 0
            if held:
                self._hold_creates -= 1
                self._create_gate.clear()
            self._changed.notify_all()
        if held:
            self._create_gate.wait(120)
        return 200, {"id": job_id, "backend": self.backend_name}

    def view(self, job_id: str) -> dict[str, Any] | None:
        with self._lock:
            job = self._jobs.get(job_id)
            if job is None:
                return None
            return {k: v for k, v in job.items() if k not in _HIDDEN}

    def results(self, job_id: str) -> str | None:
        with self._lock:
            job = self._jobs.get(job_id)
            return None if job is None else job.get("result")

    def metrics(self, job_id: str) -> dict[str, Any] | None:
        with self._lock:
            job = self._jobs.get(job_id)
            if job is None:
                return None
            final = job["state"]["status"] in FINAL
            seconds = job.get("quantum_seconds", 0) if final else 0
            return {
                "timestamps": {"created": job["created"], "finished": job.get("finished")},
                "bss": {"seconds": seconds},
                "usage": {
                    "quantum_seconds": seconds,
                    "seconds": seconds,
                    "qpu_charge_time_seconds": seconds,
                    "status": "final" if final else "pending",
                },
                "qiskit_version": "",
            }

    # ------------------------------------------------------------------ sessions

    def open_session(self, body: dict[str, Any]) -> tuple[int, dict[str, Any]]:
        if body.get("backend") != self.backend_name:
            return 400, _error(1216, f"backend {body.get('backend')!r} does not exist")
        mode = body.get("mode")
        if mode not in ("dedicated", "batch"):
            return 400, _error(1218, f"unknown session mode {mode!r}")
        with self._lock:
            session_id = "s" + uuid.uuid4().hex[:19]
            self._sessions[session_id] = {
                "id": session_id,
                "backend_name": self.backend_name,
                "mode": mode,
                "state": "open",
                "accepting_jobs": True,
                "cancelled": False,
                "max_ttl": body.get("max_ttl"),
            }
        return 200, {"id": session_id, "mode": mode, "backend_name": self.backend_name}

    def session_details(self, session_id: str) -> dict[str, Any] | None:
        with self._lock:
            session = self._sessions.get(session_id)
            return None if session is None else dict(session)

    def close_session(self, session_id: str, cancel: bool) -> int:
        """PATCH accepting_jobs=false (close) or DELETE .../close (cancel its queued jobs)."""
        with self._lock:
            session = self._sessions.get(session_id)
            if session is None:
                return 404
            session["accepting_jobs"] = False
            session["state"] = "closed"
            if cancel:
                session["cancelled"] = True
                for job in self._jobs.values():
                    if job.get("session_id") == session_id and job["state"]["status"] == "Queued":
                        self._set(job, "Cancelled", "Cancelled with its session")
            return 204

    def cancel(self, job_id: str) -> int:
        with self._lock:
            job = self._jobs.get(job_id)
            if job is None:
                return 404
            if job["state"]["status"] in FINAL:
                return 409
            self._set(job, "Cancelled", "Cancelled by the user")
            return 204

    def list(self, tags: list[str], limit: int, offset: int) -> dict[str, Any]:
        with self._lock:
            found = [j for j in self._jobs.values() if all(t in j["tags"] for t in tags)]
        found.sort(key=lambda j: j["created"], reverse=True)
        page = found[offset : offset + limit]
        return {
            "jobs": [{k: v for k, v in j.items() if k not in _HIDDEN} for j in page],
            "count": len(found),
            "limit": limit,
            "offset": offset,
        }

    # ------------------------------------------------------------------ controls

    def control(self, name: str, body: dict[str, Any]) -> dict[str, Any]:
        with self._lock:
            if name == "hold_create":
                self._hold_creates = int(body.get("count", 1))
            elif name == "release_create":
                self._hold_creates = 0
                self._create_gate.set()
            elif name == "stall_job_gets":
                if body.get("on", True):
                    self.get_gate.clear()
                else:
                    self.get_gate.set()
            elif name == "hold_jobs":
                self.hold_jobs = bool(body.get("on", True))
            elif name == "fail":
                for _ in range(int(body.get("creates", 0))):
                    self._fail_creates.append(body)
                for _ in range(int(body.get("jobs", 0))):
                    self._fail_jobs.append(str(body.get("message", "the job failed")))
            elif name == "throttle":
                rate = body.get("creates_per_s")
                self.creates_per_s = None if rate is None else float(rate)
            elif name == "usage":
                self.quantum_seconds = int(body.get("quantum_seconds", 1))
            elif name == "reject_token":
                self.reject_token = bool(body.get("on", True))
                if self.reject_token:
                    self._tokens.clear()
            else:
                raise KeyError(name)
            self._changed.notify_all()
        return self.stats()

    def stats(self) -> dict[str, Any]:
        with self._lock:
            return {
                "creates": self.creates,
                "create_calls": self.create_calls,
                "create_calls_per_second": {str(k): v for k, v in sorted(self.per_second.items())},
                "calls": dict(self.calls),
                "jobs": [
                    {
                        "id": j["id"],
                        "status": j["state"]["status"],
                        "tags": j["tags"],
                        "session_id": j.get("session_id"),
                        "max_execution_time": j.get("max_execution_time"),
                    }
                    for j in self._jobs.values()
                ],
                "sessions": [dict(s) for s in self._sessions.values()],
            }

    # ------------------------------------------------------------------ execution

    def stop(self) -> None:
        with self._lock:
            self._stopping = True
            self._create_gate.set()
            self._changed.notify_all()

    def _set(self, job: dict[str, Any], status: str, reason: str | None = None) -> None:
        job["state"] = {"status": status}
        job["status"] = status
        if status in FINAL:
            job["finished"] = time.strftime("%Y-%m-%dT%H:%M:%S.000Z", time.gmtime())
            # Only a job that ran is charged (a cancelled queued one is not).
            job["quantum_seconds"] = self.quantum_seconds if job.get("ran") else 0
        elif status == "Running":
            job["ran"] = True
        if reason is not None:
            job["state"]["reason"] = reason
        self._persist(job)
        self._changed.notify_all()

    def _persist(self, job: dict[str, Any]) -> None:
        path = self._dir / f"{job['id']}.json"
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(job))
        os.replace(tmp, path)

    def _work(self) -> None:
        while True:
            with self._lock:
                while not self._stopping and (self.hold_jobs or not self._queue):
                    self._changed.wait()
                if self._stopping:
                    return
                job = self._jobs[self._queue.popleft()]
                if job["state"]["status"] != "Queued":
                    continue
                self._set(job, "Running")
                params, fault = job["params"], job.get("fail")
            try:
                if fault is not None:
                    raise RuntimeError(fault)
                result = _execute(job["program"]["id"], params)
            except Exception as exc:  # the job's failure, as the service reports one
                with self._lock:
                    if job["state"]["status"] == "Running":
                        # The service also answers a failed job's results with its error.
                        job["result"] = f"{type(exc).__name__}: {exc}"[:500]
                        self._set(job, "Failed", job["result"])
                continue
            with self._lock:
                if job["state"]["status"] == "Running":
                    job["result"] = result
                    self._set(job, "Completed")


def _jwt(claims: dict[str, Any]) -> str:
    """An unsigned JWT: IAM clients decode the claims (exp, iat) to schedule refreshes."""

    def part(value: dict[str, Any]) -> str:
        return base64.urlsafe_b64encode(json.dumps(value).encode()).decode().rstrip("=")

    return f"{part({'alg': 'none', 'typ': 'JWT'})}.{part(claims)}.stub"


def _error(code: int, message: str) -> dict[str, Any]:
    # The SDK reads error.message and error.code; the newer API also lists errors.
    return {
        "error": {"code": code, "message": message},
        "errors": [{"code": code, "message": message}],
        "status_code": code,
    }


def _fake_backend(name: str) -> Any:
    from qiskit_ibm_runtime import fake_provider

    return getattr(fake_provider, name)()


def _backend_data(fake: Any) -> tuple[dict[str, Any], dict[str, Any]]:
    directory = Path(fake.dirname)
    conf = json.loads((directory / fake.conf_filename).read_text())
    props = json.loads((directory / fake.props_filename).read_text())
    conf["backend_name"] = fake.name
    props["backend_name"] = fake.name
    return conf, props


def _execute(program: str, params: Any) -> str:
    """Runs the job's PUBs on ideal Aer; the PrimitiveResult in the Runtime's JSON."""
    from qiskit_aer.primitives import EstimatorV2, SamplerV2
    from qiskit_ibm_runtime import RuntimeDecoder, RuntimeEncoder

    if program == "executor":
        return _execute_program(params)
    inputs = json.loads(json.dumps(params), cls=RuntimeDecoder)
    pubs = [tuple(p) if isinstance(p, list) else p for p in inputs["pubs"]]
    options = inputs.get("options") or {}
    seed = (options.get("simulator") or {}).get("seed_simulator")
    if program == "sampler":
        shots = inputs.get("shots") or options.get("default_shots") or 4096
        sampler = SamplerV2(seed=seed)
        result = sampler.run(pubs, shots=shots).result()
    elif program == "estimator":
        estimator = EstimatorV2(options={"run_options": {"seed": seed}})
        precision = options.get("default_precision") or inputs.get("precision") or 0.015625
        result = estimator.run(pubs, precision=precision).result()
    else:
        raise ValueError(f"program {program!r} is not served here")
    return json.dumps(result, cls=RuntimeEncoder)


def _execute_program(params: Any) -> str:
    """The executor program (what qiskit-ibm-runtime's client-side primitives send, schema
    v2.0): the QuantumProgram run by the runtime's own local runner on an ideal Aer simulator,
    its QuantumProgramResult in the schema's JSON, passthrough data (the client's post-processing
    plan) and semantic role handed back as the service does."""
    import numpy as np
    from ibm_quantum_schemas.common.tensor import (  # type: ignore[import-untyped]
        CompressedTensorModel,
    )
    from ibm_quantum_schemas.executor.version_2_0 import (  # type: ignore[import-untyped]
        ParamsModel,
    )
    from ibm_quantum_schemas.executor.version_2_0.models import (  # type: ignore[import-untyped]
        ItemMetadataModel,
        MetadataModel,
        QuantumProgramResultItemModel,
        QuantumProgramResultModel,
    )
    from qiskit_aer import AerSimulator
    from qiskit_ibm_runtime.fake_provider.executor.run_quantum_program import (
        run_quantum_program,
    )
    from qiskit_ibm_runtime.options_models.simulator import SimulatorOptions
    from qiskit_ibm_runtime.quantum_program.converters.converters_2_0 import (
        passthrough_data_to_2_0,
        quantum_program_from_2_0,
    )

    model = ParamsModel.model_validate(params)
    quantum_program, _ = quantum_program_from_2_0(model)
    for item in quantum_program.items:
        samplex = getattr(item, "samplex", None)
        if samplex is not None:
            # The wire form comes back unfinalized (the service finalizes it to run it).
            samplex.finalize()
    result = run_quantum_program(AerSimulator(), quantum_program, SimulatorOptions())
    answer = QuantumProgramResultModel(
        data=[
            QuantumProgramResultItemModel(
                results={
                    name: CompressedTensorModel.from_numpy(np.asarray(value))
                    for name, value in item.items()
                },
                metadata=ItemMetadataModel(),
            )
            for item in result
        ],
        metadata=MetadataModel(chunk_timing=[]),
        passthrough_data=passthrough_data_to_2_0(quantum_program.passthrough_data),
        semantic_role=model.quantum_program.semantic_role,
    )
    text: str = answer.model_dump_json()
    return text


class _Handler(BaseHTTPRequestHandler):
    stub: RuntimeStub
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def do_GET(self) -> None:
        self._dispatch("GET")

    def do_POST(self) -> None:
        self._dispatch("POST")

    def do_DELETE(self) -> None:
        self._dispatch("DELETE")

    def do_PATCH(self) -> None:
        self._dispatch("PATCH")

    def _dispatch(self, method: str) -> None:
        parts = urlsplit(self.path)
        path = parts.path.rstrip("/")
        query = parse_qs(parts.query)
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length) if length else b""
        stub = self.stub
        try:
            if path == "/identity/token" and method == "POST":
                form = parse_qs(raw.decode())
                stub.calls["iam"] += 1
                issued = stub.issue((form.get("apikey") or [""])[0])
                if issued is None:
                    self._send(
                        400,
                        {
                            "errorCode": "BXNIM0415E",
                            "errorMessage": "Provided API key could not be found.",
                        },
                    )
                else:
                    self._send(200, issued)
                return
            if path.startswith("/control/"):
                if method == "GET" and path == "/control/stats":
                    self._send(200, stub.stats())
                else:
                    body = json.loads(raw) if raw else {}
                    self._send(200, stub.control(path[len("/control/") :], body))
                return
            if not path.startswith(API):
                self._send(404, _error(404, "not found"))
                return
            route = path[len(API) :]
            stub.calls[f"{method} {_shape(route)}"] += 1
            if not stub.authorised(
                self.headers.get("Authorization"), self.headers.get("Service-CRN")
            ):
                self._send(401, _error(401, "Unauthorized: the token is invalid or expired"))
                return
            self._api(method, route, query, raw)
        except (BrokenPipeError, ConnectionResetError):
            pass
        except Exception as exc:  # a stub bug: say so to the caller
            self._send(500, _error(500, f"stub error: {type(exc).__name__}: {exc}"))

    def _api(self, method: str, route: str, query: dict[str, list[str]], raw: bytes) -> None:
        stub = self.stub
        segments = [unquote(s) for s in route.strip("/").split("/")]
        if method == "GET" and segments == ["backends"]:
            self._send(200, stub.devices())
        elif method == "GET" and len(segments) == 3 and segments[0] == "backends":
            answer = stub.backend(segments[1], segments[2])
            self._send(404 if answer is None else 200, answer or _error(404, "no backend"))
        elif method == "GET" and segments == ["instances", "usage"]:
            self._send(200, {"usage_consumed_seconds": 0, "usage_limit_reached": False})
        elif method == "POST" and segments == ["jobs"]:
            status, answer = stub.create(json.loads(raw))
            self._send(status, answer)
        elif method == "GET" and segments == ["jobs"]:
            tags = query.get("tags", [])
            limit = int((query.get("limit") or ["10"])[0])
            offset = int((query.get("offset") or ["0"])[0])
            self._send(200, stub.list(tags, limit, offset))
        elif method == "GET" and len(segments) == 2 and segments[0] == "jobs":
            # A provider that accepts the request and never answers (until released).
            stub.get_gate.wait(STALL_LIMIT_S)
            view = stub.view(segments[1])
            self._send(404 if view is None else 200, view or _error(404, "job not found"))
        elif method == "GET" and len(segments) == 3 and segments[2] == "results":
            text = stub.results(segments[1])
            if text is None:
                self._send(404, _error(404, "no results"))
            else:
                self._send_text(200, text)
        elif method == "GET" and len(segments) == 3 and segments[2] == "metrics":
            metrics = stub.metrics(segments[1])
            self._send(404 if metrics is None else 200, metrics or _error(404, "job not found"))
        elif method == "POST" and segments == ["sessions"]:
            status, answer = stub.open_session(json.loads(raw))
            self._send(status, answer)
        elif method == "GET" and len(segments) == 2 and segments[0] == "sessions":
            details = stub.session_details(segments[1])
            self._send(404 if details is None else 200, details or _error(404, "no session"))
        elif segments[:1] == ["sessions"] and (
            (method == "PATCH" and len(segments) == 2)
            or (method == "DELETE" and len(segments) == 3 and segments[2] == "close")
        ):
            status = stub.close_session(segments[1], cancel=method == "DELETE")
            if status == 204:
                self._send_text(204, "")
            else:
                self._send(status, _error(status, "no session"))
        elif method == "POST" and len(segments) == 3 and segments[2] == "cancel":
            status = stub.cancel(segments[1])
            if status == 204:
                self._send_text(204, "")
            else:
                self._send(status, _error(status, "the job cannot be cancelled"))
        else:
            self._send(404, _error(404, f"no route {method} {route}"))

    def _send(self, status: int, body: object) -> None:
        self._send_text(status, json.dumps(body), "application/json")

    def _send_text(self, status: int, text: str, content_type: str = "application/json") -> None:
        data = text.encode()
        self.send_response(status)
        if status != 204:
            self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        if data:
            self.wfile.write(data)


def _shape(route: str) -> str:
    """A route with ids replaced, for per-route call counts."""
    segments = route.strip("/").split("/")
    if len(segments) >= 2 and segments[0] in ("jobs", "backends", "sessions"):
        segments[1] = "{id}"
    return "/" + "/".join(segments)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m gateway.backends.ibm.stub_service")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--state-dir", type=Path, required=True)
    parser.add_argument("--token", default="stub-api-key", help="the API key IAM accepts")
    parser.add_argument("--backend", default="FakeManilaV2", help="a fake backend's class")
    args = parser.parse_args(argv)
    stub = RuntimeStub(args.state_dir, args.token, args.backend)
    handler = type("Handler", (_Handler,), {"stub": stub})
    server = ThreadingHTTPServer(("127.0.0.1", args.port), handler)
    server.daemon_threads = True

    def _stop(signum: int, frame: object) -> None:
        stub.stop()
        threading.Thread(target=server.shutdown, daemon=True).start()

    signal.signal(signal.SIGTERM, _stop)
    signal.signal(signal.SIGINT, _stop)
    print(f"{READY_PREFIX}127.0.0.1:{server.server_address[1]}", flush=True)
    server.serve_forever()
    server.server_close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
