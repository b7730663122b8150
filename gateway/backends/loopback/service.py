"""The loopback job service: a remote quantum job service in a process of its own.

A stand-in for a cloud QPU or simulator service, so that the REMOTE runner model is exercised
against something that behaves like a provider and outlives the gateway (a gateway SIGKILL does
not touch it). Stdlib HTTP and JSON on 127.0.0.1; jobs run on Qiskit Aer in background threads.

    python -m gateway.backends.loopback.service --port 0 --state-dir DIR

prints ``loopback service listening on 127.0.0.1:PORT`` once it accepts connections.

API (JSON bodies):

- ``POST /v1/jobs`` ``{client_token, pubs: [{program, shots, seed, parameters,
  parameter_values}], memory, metadata}`` -> 201 ``{id, status}``. Idempotent on
  ``client_token``: the same token answers 200 with the job it already has, never a second job.
  ``program`` is OpenQASM 3; ``parameter_values`` holds one row per binding, columns in
  ``parameters`` order; ``memory`` asks for per-shot bitstrings instead of counts;
  ``metadata`` is stored and returned as given (the client's own bookkeeping, like a provider's
  job tags).
- ``GET /v1/jobs/{id}`` -> the job: ``{id, client_token, status, metadata, result?, error?}``,
  status QUEUED, RUNNING, DONE, FAILED or CANCELLED. ``?wait=SECONDS`` long-polls: answers
  when the job is final or the time is up (event-driven, no polling inside the service);
  with ``&while_status=S``, when the job's status is no longer S.
- ``GET /v1/jobs?client_token=T`` -> the job created with that token, or 404.
- ``POST /v1/jobs/{id}/cancel`` -> the job (idempotent; a final job stays as it is).
- ``GET /v1/stats`` -> ``{creates, create_calls, cancel_calls, jobs, by_status}``.

A result is ``{pubs: [{registers: [{name, num_bits, memory | counts}]}], versions}``: per PUB,
per classical register of the program in declaration order, per binding, the shots' bitstrings
(``memory``) or ``{bitstring: n}`` (``counts``); character 0 of a bitstring is the register's
highest-index bit (Qiskit's order).

Test controls (so tests synchronise on states, never on sleeps):

- ``POST /control/hold`` ``{stage}``: "queued" (default) keeps jobs not yet started QUEUED;
  "running" lets them start and keeps them RUNNING (a worker thread each) until released or
  cancelled.
- ``POST /control/release``: lifts the hold.
- ``POST /control/faults`` ``{unavailable, lose_create_response}``: the next N ``/v1`` calls
  answer 503 without acting; the next N creates create the job and then answer 503 (the reply
  is lost, as when a connection drops after the provider accepted a job).

Jobs are written to ``DIR/jobs/{id}.json`` on every change, so a restarted service still has
them (a job that was RUNNING runs again). Holds and faults are not persisted.
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import json
import os
import signal
import sys
import threading
import time
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

__all__ = ["READY_PREFIX", "JobService", "main", "run_request", "serve"]

READY_PREFIX = "loopback service listening on "

QUEUED = "QUEUED"
RUNNING = "RUNNING"
DONE = "DONE"
FAILED = "FAILED"
CANCELLED = "CANCELLED"
FINAL = frozenset({DONE, FAILED, CANCELLED})

# Longest long-poll a client may ask for; it asks again after that.
MAX_WAIT_S = 60.0
MAX_BODY_BYTES = 64 << 20


class RequestError(Exception):
    """A request the service refuses (4xx)."""

    def __init__(self, status: HTTPStatus, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


@dataclass
class JobRecord:
    id: str
    client_token: str
    seq: int
    request: dict[str, Any]
    status: str = QUEUED
    result: dict[str, Any] | None = None
    error: dict[str, Any] | None = None
    created_at: float = field(default_factory=time.time)
    ended_at: float | None = None

    def view(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "id": self.id,
            "client_token": self.client_token,
            "status": self.status,
            "metadata": self.request.get("metadata"),
            "created_at": self.created_at,
        }
        if self.ended_at is not None:
            out["ended_at"] = self.ended_at
        if self.result is not None:
            out["result"] = self.result
        if self.error is not None:
            out["error"] = self.error
        return out

    def to_json(self) -> dict[str, Any]:
        return {**self.view(), "seq": self.seq, "request": self.request}

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> JobRecord:
        return cls(
            id=data["id"],
            client_token=data["client_token"],
            seq=int(data["seq"]),
            request=dict(data["request"]),
            status=data["status"],
            result=data.get("result"),
            error=data.get("error"),
            created_at=float(data["created_at"]),
            ended_at=data.get("ended_at"),
        )


def _check_request(body: object) -> dict[str, Any]:
    """The create request, checked for shape only: a bad program is the job's failure."""
    if not isinstance(body, dict):
        raise RequestError(HTTPStatus.BAD_REQUEST, "the body must be a JSON object")
    token = body.get("client_token")
    if not isinstance(token, str) or not 1 <= len(token) <= 200:
        raise RequestError(HTTPStatus.BAD_REQUEST, "client_token must be a string of 1..200")
    pubs = body.get("pubs")
    if not isinstance(pubs, list) or not pubs:
        raise RequestError(HTTPStatus.BAD_REQUEST, "pubs must be a non-empty list")
    for index, pub in enumerate(pubs):
        if not isinstance(pub, dict):
            raise RequestError(HTTPStatus.BAD_REQUEST, f"pubs[{index}] must be an object")
        if not isinstance(pub.get("program"), str):
            raise RequestError(HTTPStatus.BAD_REQUEST, f"pubs[{index}].program must be a string")
        shots = pub.get("shots")
        if not isinstance(shots, int) or isinstance(shots, bool) or shots < 1:
            raise RequestError(HTTPStatus.BAD_REQUEST, f"pubs[{index}].shots must be >= 1")
        seed = pub.get("seed")
        if seed is not None and (not isinstance(seed, int) or isinstance(seed, bool)):
            raise RequestError(HTTPStatus.BAD_REQUEST, f"pubs[{index}].seed must be an integer")
        parameters = pub.get("parameters", [])
        rows = pub.get("parameter_values", [[]])
        if not isinstance(parameters, list) or not all(isinstance(p, str) for p in parameters):
            raise RequestError(HTTPStatus.BAD_REQUEST, f"pubs[{index}].parameters: strings")
        if (
            not isinstance(rows, list)
            or not rows
            or not all(isinstance(r, list) and len(r) == len(parameters) for r in rows)
        ):
            raise RequestError(
                HTTPStatus.BAD_REQUEST,
                f"pubs[{index}].parameter_values: one row of len(parameters) per binding",
            )
    return body


class JobService:
    """The service's state and workers; the HTTP layer only translates calls to it."""

    def __init__(self, state_dir: Path, workers: int = 2) -> None:
        self._dir = state_dir / "jobs"
        self._dir.mkdir(parents=True, exist_ok=True)
        self._stats_path = state_dir / "stats.json"
        self._lock = threading.Lock()
        # Every change of any job, hold or fault notifies this (waiters check their own job).
        self._changed = threading.Condition(self._lock)
        self._jobs: dict[str, JobRecord] = {}
        self._by_token: dict[str, str] = {}
        self._queue: collections.deque[str] = collections.deque()
        self._hold: str | None = None
        self._unavailable = 0
        self._lose_create_response = 0
        self._stats = {"creates": 0, "create_calls": 0, "cancel_calls": 0}
        self._seq = 0
        self._stopping = False
        self._load()
        self._threads = [
            threading.Thread(target=self._work, name=f"loopback-worker-{i}", daemon=True)
            for i in range(max(1, workers))
        ]

    # ------------------------------------------------------------------------- lifecycle

    def start(self) -> None:
        for thread in self._threads:
            thread.start()

    def stop(self) -> None:
        with self._changed:
            self._stopping = True
            self._changed.notify_all()

    def _load(self) -> None:
        with contextlib.suppress(FileNotFoundError):
            self._stats.update(json.loads(self._stats_path.read_text()))
        records = []
        for path in self._dir.glob("*.json"):
            records.append(JobRecord.from_json(json.loads(path.read_text())))
        for record in sorted(records, key=lambda r: r.seq):
            if record.status == RUNNING:
                # The service died while running it: a provider runs it again.
                record.status = QUEUED
            self._jobs[record.id] = record
            self._by_token[record.client_token] = record.id
            self._seq = max(self._seq, record.seq)
            if record.status == QUEUED:
                self._queue.append(record.id)

    def _persist(self, record: JobRecord | None = None) -> None:
        """Writes a job (and the counters); called under the lock."""
        if record is not None:
            _write_json(self._dir / f"{record.id}.json", record.to_json())
        _write_json(self._stats_path, self._stats)

    # ------------------------------------------------------------------------------- API

    def take_fault(self) -> bool:
        """True if this /v1 call must answer 503 without acting."""
        with self._lock:
            if self._unavailable > 0:
                self._unavailable -= 1
                return True
            return False

    def create(self, body: object) -> tuple[dict[str, Any], bool]:
        """(job view, created); the second create with a token returns the first job.

        Raises:
            RequestError: a malformed request (nothing is created).
            ConnectionAbortedError: a `lose_create_response` fault: the job WAS created.
        """
        request = _check_request(body)
        token = request["client_token"]
        with self._changed:
            self._stats["create_calls"] += 1
            existing = self._by_token.get(token)
            if existing is not None:
                record = self._jobs[existing]
                created = False
                self._persist()
            else:
                self._seq += 1
                record = JobRecord(
                    id=f"lbj-{uuid.uuid4().hex[:16]}",
                    client_token=token,
                    seq=self._seq,
                    request=request,
                )
                self._jobs[record.id] = record
                self._by_token[token] = record.id
                self._queue.append(record.id)
                self._stats["creates"] += 1
                created = True
                self._persist(record)
                self._changed.notify_all()
            if self._lose_create_response > 0:
                self._lose_create_response -= 1
                raise ConnectionAbortedError("create response lost (injected fault)")
            return record.view(), created

    def get(
        self, job_id: str, wait_s: float = 0.0, while_status: str | None = None
    ) -> dict[str, Any] | None:
        """The job, after waiting up to `wait_s` for it to be final (or, with `while_status`,
        to leave that status); None if unknown."""
        deadline = time.monotonic() + min(max(wait_s, 0.0), MAX_WAIT_S)
        with self._changed:
            while True:
                record = self._jobs.get(job_id)
                if record is None:
                    return None
                remaining = deadline - time.monotonic()
                if while_status is None:
                    settled = record.status in FINAL
                else:
                    settled = record.status != while_status
                if settled or remaining <= 0 or self._stopping:
                    return record.view()
                self._changed.wait(remaining)

    def find(self, client_token: str) -> dict[str, Any] | None:
        with self._lock:
            job_id = self._by_token.get(client_token)
            return None if job_id is None else self._jobs[job_id].view()

    def cancel(self, job_id: str) -> dict[str, Any] | None:
        with self._changed:
            record = self._jobs.get(job_id)
            if record is None:
                return None
            self._stats["cancel_calls"] += 1
            if record.status in (QUEUED, RUNNING):
                # A running job's result is dropped when its simulation returns.
                record.status = CANCELLED
                record.ended_at = time.time()
                self._changed.notify_all()
            self._persist(record)
            return record.view()

    def stats(self) -> dict[str, Any]:
        with self._lock:
            by_status: dict[str, int] = collections.Counter(r.status for r in self._jobs.values())
            return {**self._stats, "jobs": len(self._jobs), "by_status": dict(by_status)}

    def hold(self, stage: str) -> None:
        if stage not in ("queued", "running"):
            raise RequestError(HTTPStatus.BAD_REQUEST, "stage must be 'queued' or 'running'")
        with self._changed:
            self._hold = stage
            self._changed.notify_all()

    def release(self) -> None:
        with self._changed:
            self._hold = None
            self._changed.notify_all()

    def set_faults(self, body: object) -> None:
        if not isinstance(body, dict):
            raise RequestError(HTTPStatus.BAD_REQUEST, "the body must be a JSON object")
        values = {k: body.get(k, 0) for k in ("unavailable", "lose_create_response")}
        if not all(type(v) is int and v >= 0 for v in values.values()):
            raise RequestError(HTTPStatus.BAD_REQUEST, "fault counts are integers >= 0")
        with self._changed:
            self._unavailable = values["unavailable"]
            self._lose_create_response = values["lose_create_response"]

    # ----------------------------------------------------------------------------- workers

    def _next_job(self) -> tuple[JobRecord, dict[str, Any]] | None:
        """Waits for a job to run (and, under a "running" hold, for its release)."""
        with self._changed:
            while True:
                if self._stopping:
                    return None
                if self._queue and self._hold != "queued":
                    record = self._jobs[self._queue.popleft()]
                    if record.status != QUEUED:  # cancelled while queued
                        continue
                    break
                self._changed.wait()
            record.status = RUNNING
            self._persist(record)
            self._changed.notify_all()
            while self._hold == "running" and record.status == RUNNING and not self._stopping:
                self._changed.wait()
            if record.status != RUNNING or self._stopping:
                return None
            return record, record.request

    def _work(self) -> None:
        # Imports and a first run before any job: the first job is not the one that pays.
        simulator = _simulator()
        with contextlib.suppress(Exception):
            run_request(simulator, _WARM_UP)
        while True:
            with self._lock:
                if self._stopping:
                    return
            taken = self._next_job()
            if taken is None:
                continue
            record, request = taken
            try:
                result: dict[str, Any] | None = run_request(simulator, request)
                error = None
            except Exception as exc:  # the job's failure, reported to its client
                result = None
                error = {"type": type(exc).__name__, "message": str(exc)[:2000]}
            with self._changed:
                if record.status == RUNNING:
                    record.status = DONE if error is None else FAILED
                    record.result = result
                    record.error = error
                    record.ended_at = time.time()
                    self._persist(record)
                    self._changed.notify_all()


def _write_json(path: Path, data: object) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(data, separators=(",", ":")))
    os.replace(tmp, path)


# ---------------------------------------------------------------------------------- running


_WARM_UP = {
    "pubs": [
        {
            "program": 'OPENQASM 3.0;\ninclude "stdgates.inc";\nbit[1] c;\nqubit[1] q;\n'
            "x q[0];\nc[0] = measure q[0];\n",
            "shots": 1,
            "seed": 0,
        }
    ]
}


def _simulator() -> Any:
    from qiskit_aer import AerSimulator

    return AerSimulator(method="statevector", max_parallel_threads=1)


def _bitstrings(values: Sequence[int], clbits: Sequence[int]) -> list[str]:
    """Each value's bits at `clbits` (register bit k at clbits[k]), highest register bit first."""
    order = list(reversed(clbits))
    return ["".join("1" if (v >> b) & 1 else "0" for b in order) for v in values]


def _memory(experiment: Any, shots: int) -> list[str]:
    return getattr(experiment.data, "memory", None) or ["0x0"] * shots


def run_request(simulator: Any, request: Mapping[str, Any]) -> dict[str, Any]:
    """Runs a create request's PUBs; the result JSON described in the module docstring.

    Raises:
        Exception: the job fails (a program the service cannot read, a simulator error).
    """
    import qiskit
    import qiskit_aer
    from qiskit import qasm3

    memory = bool(request.get("memory", False))
    pubs_out = []
    for index, pub in enumerate(request["pubs"]):
        try:
            circuit = qasm3.loads(pub["program"])
        except Exception as exc:
            detail = f"{type(exc).__name__}: {exc}".rstrip(": ")
            raise ValueError(f"pubs[{index}]: cannot read the program: {detail}") from None
        names: list[str] = pub.get("parameters", [])
        rows: list[list[float]] = pub.get("parameter_values", [[]])
        column = {name: i for i, name in enumerate(names)}
        unbound = [p.name for p in circuit.parameters if p.name not in column]
        if unbound:
            raise ValueError(f"pubs[{index}]: no values for parameters {unbound}")
        options: dict[str, Any] = {"shots": pub["shots"], "memory": memory}
        if pub.get("seed") is not None:
            options["seed_simulator"] = pub["seed"]
        if circuit.parameters:
            binds = [{p: [row[column[p.name]] for row in rows] for p in circuit.parameters}]
            result = simulator.run(circuit, parameter_binds=binds, **options).result()
        else:
            circuits = [circuit] * len(rows) if len(rows) > 1 else circuit
            result = simulator.run(circuits, **options).result()
        failures = [str(e.status) for e in result.results if not e.success]
        if not result.success or failures:
            raise RuntimeError(f"pubs[{index}]: " + ("; ".join(failures) or str(result.status)))
        if len(result.results) != len(rows):
            raise RuntimeError(f"pubs[{index}]: {len(result.results)} experiments for {len(rows)}")
        registers = []
        for creg in circuit.cregs:
            clbits = [circuit.find_bit(bit).index for bit in creg]
            entry: dict[str, Any] = {"name": creg.name, "num_bits": len(clbits)}
            if memory:
                # A circuit that never measures reports no outcomes: every bit reads 0.
                entry["memory"] = [
                    _bitstrings([int(h, 16) for h in _memory(e, pub["shots"])], clbits)
                    for e in result.results
                ]
            else:
                per_binding = []
                for e in result.results:
                    raw = getattr(e.data, "counts", None) or {"0x0": pub["shots"]}
                    counts: dict[str, int] = collections.Counter()
                    for key, bits in zip(
                        _bitstrings([int(h, 16) for h in raw], clbits), raw.values(), strict=True
                    ):
                        counts[key] += int(bits)
                    per_binding.append(dict(counts))
                entry["counts"] = per_binding
            registers.append(entry)
        pubs_out.append({"registers": registers})
    return {
        "pubs": pubs_out,
        "versions": {"qiskit": qiskit.__version__, "qiskit-aer": qiskit_aer.__version__},
    }


# ------------------------------------------------------------------------------------- HTTP


class _Handler(BaseHTTPRequestHandler):
    server_version = "loopback/1"
    service: JobService  # set on the subclass built by `serve`

    def log_message(self, format: str, *args: Any) -> None:
        # Tests read the gateway's logs, not the service's access log.
        pass

    def do_GET(self) -> None:
        self._dispatch("GET")

    def do_POST(self) -> None:
        self._dispatch("POST")

    def _dispatch(self, method: str) -> None:
        parts = urlsplit(self.path)
        query = parse_qs(parts.query)
        segments = [s for s in parts.path.split("/") if s]
        try:
            body = self._body() if method == "POST" else None
            if segments[:1] == ["v1"] and self.service.take_fault():
                self._send(HTTPStatus.SERVICE_UNAVAILABLE, {"error": "unavailable (injected)"})
                return
            status, payload = self._route(method, segments, query, body)
        except RequestError as exc:
            status, payload = exc.status, {"error": exc.message}
        except ConnectionAbortedError as exc:
            status, payload = HTTPStatus.SERVICE_UNAVAILABLE, {"error": str(exc)}
        self._send(status, payload)

    def _route(
        self, method: str, segments: list[str], query: dict[str, list[str]], body: object
    ) -> tuple[HTTPStatus, object]:
        service = self.service
        match method, segments:
            case "POST", ["v1", "jobs"]:
                view, created = service.create(body)
                return (HTTPStatus.CREATED if created else HTTPStatus.OK), view
            case "GET", ["v1", "jobs"]:
                tokens = query.get("client_token")
                if not tokens:
                    raise RequestError(HTTPStatus.BAD_REQUEST, "client_token is required")
                found = service.find(tokens[0])
                return _found(found)
            case "GET", ["v1", "jobs", job_id]:
                try:
                    wait_s = float(query.get("wait", ["0"])[0])
                except ValueError:
                    raise RequestError(HTTPStatus.BAD_REQUEST, "wait is seconds") from None
                while_status = query.get("while_status", [None])[0]
                return _found(service.get(job_id, wait_s, while_status))
            case "POST", ["v1", "jobs", job_id, "cancel"]:
                return _found(service.cancel(job_id))
            case "GET", ["v1", "stats"]:
                return HTTPStatus.OK, service.stats()
            case "POST", ["control", "hold"]:
                stage = body.get("stage", "queued") if isinstance(body, dict) else "queued"
                service.hold(str(stage))
                return HTTPStatus.OK, {"hold": stage}
            case "POST", ["control", "release"]:
                service.release()
                return HTTPStatus.OK, {"hold": None}
            case "POST", ["control", "faults"]:
                service.set_faults(body)
                return HTTPStatus.OK, {}
        raise RequestError(HTTPStatus.NOT_FOUND, f"no route {method} {self.path}")

    def _body(self) -> object:
        length = int(self.headers.get("Content-Length") or 0)
        if length > MAX_BODY_BYTES:
            raise RequestError(HTTPStatus.REQUEST_ENTITY_TOO_LARGE, "body too large")
        raw = self.rfile.read(length) if length else b"{}"
        try:
            return json.loads(raw)
        except ValueError:
            raise RequestError(HTTPStatus.BAD_REQUEST, "the body is not JSON") from None

    def _send(self, status: HTTPStatus, payload: object) -> None:
        data = json.dumps(payload, separators=(",", ":")).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        # The caller may be gone (a SIGKILLed gateway, an abandoned long poll): nothing to do.
        with contextlib.suppress(BrokenPipeError, ConnectionResetError):
            self.end_headers()
            self.wfile.write(data)


def _found(view: dict[str, Any] | None) -> tuple[HTTPStatus, object]:
    if view is None:
        return HTTPStatus.NOT_FOUND, {"error": "no such job"}
    return HTTPStatus.OK, view


def serve(
    state_dir: Path, port: int = 0, workers: int = 2
) -> tuple[ThreadingHTTPServer, JobService]:
    """A started service and its HTTP server (not yet serving: call `serve_forever`)."""
    service = JobService(state_dir, workers)
    handler = type("Handler", (_Handler,), {"service": service})
    server = ThreadingHTTPServer(("127.0.0.1", port), handler)
    server.daemon_threads = True
    service.start()
    return server, service


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m gateway.backends.loopback.service")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--state-dir", type=Path, required=True)
    parser.add_argument("--workers", type=int, default=2)
    args = parser.parse_args(argv)
    server, service = serve(args.state_dir, args.port, args.workers)

    def _stop(signum: int, frame: object) -> None:
        service.stop()
        threading.Thread(target=server.shutdown, daemon=True).start()

    signal.signal(signal.SIGTERM, _stop)
    signal.signal(signal.SIGINT, _stop)
    port = server.server_address[1]
    print(f"{READY_PREFIX}127.0.0.1:{port}", flush=True)
    server.serve_forever()
    server.server_close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
