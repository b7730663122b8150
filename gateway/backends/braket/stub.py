"""A stand-in for Amazon Braket's task API and S3, as a process of its own (tests and demos).

    python -m gateway.backends.braket.stub --port 0 --state-dir DIR

prints "braket stub listening on 127.0.0.1:PORT" and serves, on that one port, the REST calls
boto3 makes for Braket (CreateQuantumTask, GetQuantumTask, CancelQuantumTask,
SearchQuantumTasks, GetDevice) and the S3 GetObject that reads a task's results. Requests are
told apart by the service their SigV4 Authorization header was signed for (`.../braket/...` or
`.../s3/...`); signatures are not checked, only that the request is signed.

Tasks run in the stub with Braket's own local simulator (braket_sv), one at a time, in
creation order, and their results are written as `results.json` under
DIR/s3/<outputS3Bucket>/<outputS3Directory>/, which GetObject serves: a runner reads real
results, in the format Braket writes. CreateQuantumTask honours clientToken: a repeated token
answers the task it already made.

Test controls (plain JSON over POST, unsigned, under /_stub/):
- hold {"create": true}: a create request makes its task, then withholds its answer until
  release (the caller may die meanwhile: the task exists, its ARN never reached the caller);
  hold {"before_create": true}: a create request waits before anything is decided (the
  credentials and failures set meanwhile apply to it);
  hold {"run": true}: tasks stay QUEUED until release.
- release {}: answers held creates and lets tasks run.
- fail {"code", "status", "message", "count"}: the next `count` creates answer that error;
  fail {"task_failure": "reason", "count"}: the next `count` tasks end FAILED.
- throttle {"count"}: the next `count` creates answer 429 ThrottlingException.
- lose_answer {"count"}: the next `count` creates make their task, then answer 500.
- credentials {"valid": false, "code": "ExpiredTokenException"}: every signed call answers 403.
- usage {"execution_ms": N}: the execution duration a task's results report from now on
  (additionalMetadata.simulatorMetadata.executionDuration, as a managed simulator writes it;
  null: the simulation's own time, at least 1 ms).
A create's `associations` (a reservation ARN) are kept with its task and shown by
GetQuantumTask, as Braket does.
GET /_stub/stats counts create calls, tasks, and the most create calls in any one second.
Tasks are kept in memory: the stub outlives gateways, not itself.
"""

from __future__ import annotations

import argparse
import bisect
import json
import logging
import os
import re
import signal
import sys
import threading
import time
import uuid
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

__all__ = ["DEVICES", "READY_PREFIX", "BraketStub", "main"]

READY_PREFIX = "braket stub listening on "
ACCOUNT = "123456789012"
SV1 = "arn:aws:braket:::device/quantum-simulator/amazon/sv1"
DEVICES: Mapping[str, Mapping[str, str]] = {
    SV1: {"deviceName": "SV1", "providerName": "Amazon Braket", "deviceType": "SIMULATOR"},
}
_CREDENTIAL = re.compile(r"Credential=[^/]+/\d{8}/([^/]+)/([^/]+)/aws4_request")
_MAX_HOLD_S = 300.0
_FINAL = frozenset({"COMPLETED", "FAILED", "CANCELLED"})

log = logging.getLogger("braket-stub")


class StubError(Exception):
    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message


class BraketStub:
    """The stub's state: tasks, controls and counters (thread-safe)."""

    def __init__(self, state_dir: Path, region: str = "us-east-1") -> None:
        self.state_dir = state_dir
        self.region = region
        self._lock = threading.Condition()
        self.tasks: dict[str, dict[str, Any]] = {}
        self.order: list[str] = []
        self.tokens: dict[str, str] = {}
        self.hold_create = False
        self.hold_before_create = False
        self.hold_run = False
        self.held_creates = 0
        self.create_failures: list[tuple[int, str, str]] = []
        self.task_failures: list[str] = []
        self.lost_answers = 0
        self.throttle = 0
        self.credentials_error: str | None = None
        self.execution_ms: int | None = None
        self.create_calls: list[float] = []  # arrival times (monotonic)
        self.calls: dict[str, int] = {}
        self._simulator: Any = None

    # ------------------------------------------------------------------ controls

    def control(self, name: str, body: Mapping[str, Any]) -> Any:
        with self._lock:
            if name == "hold":
                self.hold_create = bool(body.get("create", self.hold_create))
                self.hold_before_create = bool(body.get("before_create", self.hold_before_create))
                self.hold_run = bool(body.get("run", self.hold_run))
            elif name == "release":
                self.hold_create = self.hold_run = self.hold_before_create = False
            elif name == "fail":
                count = int(body.get("count", 1))
                if "task_failure" in body:
                    self.task_failures += [str(body["task_failure"])] * count
                else:
                    error = (
                        int(body.get("status", 400)),
                        str(body.get("code", "ValidationException")),
                        str(body.get("message", "invalid request")),
                    )
                    self.create_failures += [error] * count
            elif name == "lose_answer":
                self.lost_answers = int(body.get("count", 1))
            elif name == "throttle":
                self.throttle = int(body.get("count", 0))
            elif name == "usage":
                ms = body.get("execution_ms")
                self.execution_ms = None if ms is None else int(ms)
            elif name == "credentials":
                valid = bool(body.get("valid", True))
                self.credentials_error = (
                    None if valid else str(body.get("code", "ExpiredTokenException"))
                )
            else:
                raise StubError(404, "NotFound", f"no control {name!r}")
            self._lock.notify_all()
        return {"ok": True}

    def stats(self, since: int = 0) -> dict[str, Any]:
        """Counters; `max_creates_in_1s` over the create calls from number `since` on."""
        with self._lock:
            times = sorted(self.create_calls[since:])
            most = 0
            for i, t in enumerate(times):  # the most arrivals in any window [t, t + 1s)
                most = max(most, bisect.bisect_left(times, t + 1.0) - i)
            return {
                "create_calls": len(self.create_calls),
                "creates": len(self.tasks),
                "max_creates_in_1s": most,
                "held_creates": self.held_creates,
                "calls": dict(self.calls),
                "statuses": {arn: t["status"] for arn, t in self.tasks.items()},
            }

    def find(self, token: str) -> dict[str, Any] | None:
        with self._lock:
            arn = self.tokens.get(token)
            return None if arn is None else self._view(self.tasks[arn])

    # ------------------------------------------------------------------ Braket API

    def check(self, service: str, operation: str) -> None:
        """Refusals that apply to every signed call: credentials, throttling."""
        with self._lock:
            self.calls[operation] = self.calls.get(operation, 0) + 1
            if self.credentials_error is not None:
                raise StubError(
                    403,
                    self.credentials_error,
                    "The security token included in the request is expired",
                )
            if operation == "CreateQuantumTask" and self.throttle > 0:
                self.throttle -= 1
                raise StubError(429, "ThrottlingException", "Rate exceeded")

    def create(self, body: Mapping[str, Any]) -> dict[str, Any]:
        with self._lock:
            self.create_calls.append(time.monotonic())
            if self.hold_before_create:
                # Held before anything is decided: controls set meanwhile apply to it.
                self.held_creates += 1
                self._wait_while(lambda: self.hold_before_create)
                self.held_creates -= 1
        self.check("braket", "CreateQuantumTask")
        with self._lock:
            if self.create_failures:
                status, code, message = self.create_failures.pop(0)
                raise StubError(status, code, message)
            task = self._create_locked(body)
            arn = task["quantumTaskArn"]
            if self.lost_answers > 0:
                # The task exists; the caller hears a 500 and may retry with the same token.
                self.lost_answers -= 1
                raise StubError(500, "InternalServiceException", "lost the answer")
            if self.hold_create:
                # The task exists; its creator does not learn the ARN until release.
                self.held_creates += 1
                self._wait_while(lambda: self.hold_create)
                self.held_creates -= 1
            return {"quantumTaskArn": arn}

    def _wait_while(self, held: Callable[[], bool]) -> None:
        deadline = time.monotonic() + _MAX_HOLD_S
        while held() and time.monotonic() < deadline:
            self._lock.wait(0.5)

    def _create_locked(self, body: Mapping[str, Any]) -> dict[str, Any]:
        token = body.get("clientToken")
        if not isinstance(token, str) or not 1 <= len(token) <= 64:
            raise StubError(400, "ValidationException", "clientToken must be 1-64 characters")
        existing = self.tokens.get(token)
        if existing is not None:
            return self.tasks[existing]
        device = body.get("deviceArn")
        if device not in DEVICES:
            raise StubError(400, "ValidationException", f"unknown device {device!r}")
        shots = body.get("shots")
        if not isinstance(shots, int) or not 1 <= shots <= 100_000:
            raise StubError(400, "ValidationException", "shots must be within 1..100000")
        try:
            action = json.loads(body["action"])
            source = action["source"]
            if action["braketSchemaHeader"]["name"] != "braket.ir.openqasm.program":
                raise ValueError("not an OpenQASM program")
        except (KeyError, TypeError, ValueError) as exc:
            raise StubError(400, "ValidationException", f"invalid action: {exc}") from None
        bucket, prefix = body.get("outputS3Bucket"), body.get("outputS3KeyPrefix")
        if not isinstance(bucket, str) or not bucket or not isinstance(prefix, str):
            raise StubError(400, "ValidationException", "outputS3Bucket/KeyPrefix required")
        task_id = str(uuid.uuid4())
        arn = f"arn:aws:braket:{self.region}:{ACCOUNT}:quantum-task/{task_id}"
        task = {
            "quantumTaskArn": arn,
            "status": "QUEUED",
            "deviceArn": device,
            "shots": shots,
            "outputS3Bucket": bucket,
            "outputS3Directory": f"{prefix.rstrip('/')}/{task_id}".lstrip("/"),
            "createdAt": _now(),
            "tags": dict(body.get("tags") or {}),
            "clientToken": token,
            "associations": list(body.get("associations") or []),
            "_source": source,
            "_inputs": action.get("inputs") or {},
        }
        self.tasks[arn] = task
        self.order.append(arn)
        self.tokens[token] = arn
        self._lock.notify_all()
        return task

    def get(self, arn: str, queue_info: bool) -> dict[str, Any]:
        with self._lock:
            task = self._task(arn)
            view = self._view(task)
            if queue_info:
                queued = [a for a in self.order if self.tasks[a]["status"] == "QUEUED"]
                info: dict[str, Any] = {"queue": "QUANTUM_TASKS_QUEUE", "queuePriority": "Normal"}
                if task["status"] == "QUEUED":
                    info["position"] = str(queued.index(arn) + 1)
                else:
                    info["position"] = "None"
                    info["message"] = f"Task is in {task['status']} status."
                view["queueInfo"] = info
            return view

    def cancel(self, arn: str) -> dict[str, Any]:
        with self._lock:
            task = self._task(arn)
            if task["status"] in _FINAL:
                raise StubError(409, "ConflictException", f"task is {task['status']}")
            task["status"] = "CANCELLED"
            task["endedAt"] = _now()
            self._lock.notify_all()
            return {"quantumTaskArn": arn, "cancellationStatus": "CANCELLING"}

    def search(self, body: Mapping[str, Any]) -> dict[str, Any]:
        filters = body.get("filters") or []
        with self._lock:
            found = []
            for arn in reversed(self.order):  # newest first
                task = self.tasks[arn]
                if all(_matches(task, f) for f in filters):
                    found.append(task)
            start = int(body.get("nextToken") or 0)
            size = int(body.get("maxResults") or 100)
            page = found[start : start + size]
            answer: dict[str, Any] = {
                "quantumTasks": [
                    {
                        k: task[k]
                        for k in (
                            "quantumTaskArn",
                            "status",
                            "deviceArn",
                            "shots",
                            "outputS3Bucket",
                            "outputS3Directory",
                            "createdAt",
                            "tags",
                        )
                        if k in task
                    }
                    for task in page
                ]
            }
            if start + size < len(found):
                answer["nextToken"] = str(start + size)
            return answer

    def device(self, arn: str) -> dict[str, Any]:
        if arn not in DEVICES:
            raise StubError(404, "ResourceNotFoundException", f"no device {arn}")
        with self._lock:
            queued = sum(1 for t in self.tasks.values() if t["status"] == "QUEUED")
        return {
            "deviceArn": arn,
            **DEVICES[arn],
            "deviceStatus": "ONLINE",
            "deviceCapabilities": json.dumps({"service": {"shotsRange": [1, 100000]}}),
            "deviceQueueInfo": [
                {
                    "queue": "QUANTUM_TASKS_QUEUE",
                    "queueSize": str(queued),
                    "queuePriority": "Normal",
                },
                {"queue": "QUANTUM_TASKS_QUEUE", "queueSize": "0", "queuePriority": "Priority"},
                {"queue": "JOBS_QUEUE", "queueSize": "0"},
            ],
        }

    def put_s3_object(self, bucket: str, key: str, data: bytes) -> None:
        root = (self.state_dir / "s3").resolve()
        path = (root / bucket / key).resolve()
        if root not in path.parents:
            raise StubError(400, "InvalidArgument", "bad key")
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_bytes(data)
        os.replace(tmp, path)

    def s3_object(self, bucket: str, key: str) -> bytes:
        path = (self.state_dir / "s3" / bucket / key).resolve()
        root = (self.state_dir / "s3").resolve()
        if root not in path.parents or not path.is_file():
            raise StubError(404, "NoSuchKey", "The specified key does not exist.")
        return path.read_bytes()

    def _task(self, arn: str) -> dict[str, Any]:
        task = self.tasks.get(arn)
        if task is None:
            raise StubError(404, "ResourceNotFoundException", f"no quantum task {arn}")
        return task

    @staticmethod
    def _view(task: Mapping[str, Any]) -> dict[str, Any]:
        return {k: v for k, v in task.items() if not k.startswith("_") and k != "clientToken"}

    # ------------------------------------------------------------------ running tasks

    def run_forever(self) -> None:
        """Runs QUEUED tasks one at a time, oldest first (a thread)."""
        from braket.default_simulator import StateVectorSimulator  # type: ignore[import-untyped]

        self._simulator = StateVectorSimulator()  # imported before the first task needs it
        while True:
            with self._lock:
                task = None
                while task is None:
                    if not self.hold_run:
                        task = next(
                            (
                                self.tasks[a]
                                for a in self.order
                                if self.tasks[a]["status"] == "QUEUED"
                            ),
                            None,
                        )
                    if task is None:
                        self._lock.wait(1.0)
                task["status"] = "RUNNING"
                failure = self.task_failures.pop(0) if self.task_failures else None
            try:
                if failure is not None:
                    raise RuntimeError(failure)
                results = self._simulate(task)
                directory = (
                    self.state_dir / "s3" / task["outputS3Bucket"] / task["outputS3Directory"]
                )
                directory.mkdir(parents=True, exist_ok=True)
                tmp = directory / "results.json.tmp"
                tmp.write_text(results)
                os.replace(tmp, directory / "results.json")
                status, reason = "COMPLETED", None
            except Exception as exc:
                status, reason = "FAILED", str(exc)[:500]
            with self._lock:
                if task["status"] == "RUNNING":  # not cancelled meanwhile
                    task["status"] = status
                    task["endedAt"] = _now()
                    if reason is not None:
                        task["failureReason"] = reason
                self._lock.notify_all()

    def _simulate(self, task: Mapping[str, Any]) -> str:
        from braket.ir.openqasm import Program  # type: ignore[import-untyped]
        from braket.task_result import SimulatorMetadata  # type: ignore[import-untyped]

        program = Program(source=task["_source"], inputs=task["_inputs"] or None)
        started = time.perf_counter()
        result = self._simulator.run(program, shots=task["shots"])
        ms = self.execution_ms
        if ms is None:
            ms = max(1, round((time.perf_counter() - started) * 1000))
        result.taskMetadata.id = task["quantumTaskArn"]
        result.taskMetadata.deviceId = task["deviceArn"]
        result.additionalMetadata.simulatorMetadata = SimulatorMetadata(executionDuration=ms)
        text: str = result.json()
        return text


def _matches(task: Mapping[str, Any], f: Mapping[str, Any]) -> bool:
    name, operator, values = f.get("name"), f.get("operator"), list(f.get("values") or [])
    if name == "createdAt":
        created = task["createdAt"]
        if operator == "GTE":
            return bool(created >= values[0])
        if operator == "LTE":
            return bool(created <= values[0])
        if operator == "BETWEEN":
            return bool(values[0] <= created <= values[1])
        return False
    value = task.get(name or "")
    if operator == "EQUAL":
        return value in values
    return False


def _now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"


# ---------------------------------------------------------------------------------- HTTP


class _Handler(BaseHTTPRequestHandler):
    server_version = "BraketStub/1"
    protocol_version = "HTTP/1.1"
    stub: BraketStub

    def log_message(self, format: str, *args: Any) -> None:
        log.debug("%s " + format, self.address_string(), *args)

    def do_GET(self) -> None:
        self._handle("GET")

    def do_POST(self) -> None:
        self._handle("POST")

    def do_PUT(self) -> None:
        self._handle("PUT")

    def _handle(self, method: str) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length) if length else b""
        parts = urlsplit(self.path)
        segments = [unquote(s) for s in parts.path.split("/")[1:]]
        query = parse_qs(parts.query)
        match = _CREDENTIAL.search(self.headers.get("Authorization") or "")
        service = match.group(2) if match else None
        try:
            if segments and segments[0] == "_stub":
                body = json.loads(raw) if raw else {}
                self._json(200, self._control(method, segments[1:], query, body))
            elif service == "s3":
                if len(segments) < 2 or method not in ("GET", "PUT"):
                    raise StubError(405, "MethodNotAllowed", "only GetObject and PutObject")
                key = "/".join(segments[1:])
                if method == "PUT":
                    self.stub.check("s3", "PutObject")
                    self.stub.put_s3_object(segments[0], key, raw)
                    self._send(200, b"", "application/xml", {"ETag": '"0"'})
                else:
                    self.stub.check("s3", "GetObject")
                    data = self.stub.s3_object(segments[0], key)
                    self._send(200, data, "application/octet-stream")
            elif service == "braket":
                self._json(*self._braket(method, segments, query, raw))
            else:
                raise StubError(403, "MissingAuthenticationTokenException", "unsigned request")
        except StubError as exc:
            if service == "s3":
                body_xml = (
                    f"<?xml version='1.0' encoding='UTF-8'?><Error><Code>{exc.code}</Code>"
                    f"<Message>{exc.message}</Message></Error>"
                ).encode()
                self._send(exc.status, body_xml, "application/xml")
            else:
                self._json(exc.status, {"message": exc.message}, error=exc.code)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the caller died while its answer was withheld

    def _braket(
        self, method: str, segments: list[str], query: Mapping[str, list[str]], raw: bytes
    ) -> tuple[int, Any]:
        stub = self.stub
        body = json.loads(raw) if raw else {}
        if method == "POST" and segments == ["quantum-task"]:
            return 201, stub.create(body)  # checks credentials itself, after any hold
        if method == "GET" and len(segments) == 2 and segments[0] == "quantum-task":
            stub.check("braket", "GetQuantumTask")
            wanted = query.get("additionalAttributeNames", [])
            return 200, stub.get(segments[1], "QueueInfo" in wanted)
        if method == "PUT" and len(segments) == 3 and segments[0] == "quantum-task":
            stub.check("braket", "CancelQuantumTask")
            return 200, stub.cancel(segments[1])
        if method == "POST" and segments == ["quantum-tasks"]:
            stub.check("braket", "SearchQuantumTasks")
            return 200, stub.search(body)
        if method == "GET" and len(segments) == 2 and segments[0] == "device":
            stub.check("braket", "GetDevice")
            return 200, stub.device(segments[1])
        raise StubError(404, "UnknownOperationException", f"{method} /{'/'.join(segments)}")

    def _control(
        self, method: str, segments: list[str], query: Mapping[str, list[str]], body: Any
    ) -> Any:
        if method == "GET" and segments == ["stats"]:
            return self.stub.stats(int(query.get("since", ["0"])[0]))
        if method == "GET" and segments == ["task"]:
            return self.stub.find(query.get("token", [""])[0])
        if method == "POST" and len(segments) == 1:
            return self.stub.control(segments[0], body)
        raise StubError(404, "NotFound", "unknown control")

    def _json(self, status: int, body: Any, error: str | None = None) -> None:
        data = json.dumps(body).encode()
        headers = {"x-amzn-ErrorType": error} if error else {}
        self._send(status, data, "application/json", headers)

    def _send(
        self, status: int, data: bytes, content_type: str, headers: Mapping[str, str] = {}
    ) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(data)))
        self.send_header("x-amzn-RequestId", str(uuid.uuid4()))
        for key, value in headers.items():
            self.send_header(key, value)
        self.end_headers()
        self.wfile.write(data)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--state-dir", type=Path, required=True)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    args.state_dir.mkdir(parents=True, exist_ok=True)
    stub = BraketStub(args.state_dir)
    handler = type("Handler", (_Handler,), {"stub": stub})
    server = ThreadingHTTPServer((args.host, args.port), handler)
    server.daemon_threads = True
    threading.Thread(target=stub.run_forever, name="tasks", daemon=True).start()
    host, port = server.server_address[:2]
    print(f"{READY_PREFIX}{host!s}:{port}", flush=True)
    signal.signal(signal.SIGTERM, lambda *_: threading.Thread(target=server.shutdown).start())
    try:
        server.serve_forever(poll_interval=0.2)
    finally:
        server.server_close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
