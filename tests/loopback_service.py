"""The loopback job service as a real process for tests, and plain HTTP calls to it."""

from __future__ import annotations

import json
import os
import select
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from gateway.backends.loopback.service import READY_PREFIX

REPO = Path(__file__).resolve().parent.parent

__all__ = ["LoopbackService", "free_port"]


def free_port() -> int:
    """A port nothing listens on (bound, then closed): calls to it are refused."""
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


@dataclass
class LoopbackService:
    process: subprocess.Popen[bytes]
    url: str
    log_path: Path

    @classmethod
    def start(
        cls, state_dir: Path, log_path: Path, *, start_timeout: float = 60.0, port: int = 0
    ) -> LoopbackService:
        """Starts `python -m gateway.backends.loopback.service` and waits for its ready line."""
        with log_path.open("ab") as log:
            process = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "gateway.backends.loopback.service",
                    "--port",
                    str(port),
                    "--state-dir",
                    str(state_dir),
                ],
                stdout=subprocess.PIPE,
                stderr=log,
                stdin=subprocess.DEVNULL,
                cwd=REPO,
            )
        assert process.stdout is not None
        fd = process.stdout.fileno()
        deadline = time.monotonic() + start_timeout
        data = b""
        while b"\n" not in data:
            remaining = deadline - time.monotonic()
            if remaining <= 0 or process.poll() is not None:
                process.kill()
                process.wait()
                tail = log_path.read_text(errors="replace")[-2000:]
                raise RuntimeError(f"loopback service did not start: {data!r}\n{tail}")
            ready, _, _ = select.select([fd], [], [], min(remaining, 1.0))
            if ready:
                chunk = os.read(fd, 4096)
                if not chunk:
                    continue
                data += chunk
        line = data.split(b"\n", 1)[0].decode()
        if not line.startswith(READY_PREFIX):
            process.kill()
            process.wait()
            raise RuntimeError(f"unexpected first line {line!r}")
        return cls(process, "http://" + line[len(READY_PREFIX) :].strip(), log_path)

    @property
    def port(self) -> int:
        return int(self.url.rsplit(":", 1)[1])

    def stop(self, timeout: float = 10.0) -> int:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        try:
            return self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            return self.process.wait()

    # ----------------------------------------------------------------------- HTTP

    def call(self, method: str, path: str, body: object = None, timeout: float = 30) -> Any:
        """The decoded JSON answer; None for 404."""
        data = None if body is None else json.dumps(body).encode()
        request = urllib.request.Request(self.url + path, data=data, method=method)
        try:
            with urllib.request.urlopen(request, timeout=timeout) as response:
                return json.loads(response.read())
        except urllib.error.HTTPError as exc:
            if exc.code == 404:
                return None
            raise

    def stats(self) -> dict[str, Any]:
        stats: dict[str, Any] = self.call("GET", "/v1/stats")
        return stats

    def job(self, remote_id: str) -> dict[str, Any]:
        job: dict[str, Any] = self.call("GET", f"/v1/jobs/{remote_id}")
        return job

    def job_by_token(self, token: str) -> dict[str, Any] | None:
        job: dict[str, Any] | None = self.call("GET", f"/v1/jobs?client_token={token}")
        return job

    def wait_status(self, remote_id: str, leaving: str, timeout: float = 20) -> str:
        """The job's status once it is no longer `leaving` (a long poll at the service)."""
        deadline = time.monotonic() + timeout
        while True:
            remaining = deadline - time.monotonic()
            job = self.call(
                "GET", f"/v1/jobs/{remote_id}?wait={max(remaining, 0):.3f}&while_status={leaving}"
            )
            if job["status"] != leaving or remaining <= 0:
                return str(job["status"])

    def hold(self, stage: str = "queued") -> None:
        self.call("POST", "/control/hold", {"stage": stage})

    def release(self) -> None:
        self.call("POST", "/control/release", {})

    def faults(self, unavailable: int = 0, lose_create_response: int = 0) -> None:
        self.call(
            "POST",
            "/control/faults",
            {"unavailable": unavailable, "lose_create_response": lose_create_response},
        )


# X on qubits 0, 2 and 3; a = (q0, q1) reads "01", b = (q2, q3, q4) reads "011" (character 0 is
# the highest bit); a reversed order would read "10" and "110".
TWO_REGISTERS = """OPENQASM 3.0;
include "stdgates.inc";
qubit[5] q;
bit[2] a;
bit[3] b;
x q[0];
x q[2];
x q[3];
a[0] = measure q[0];
a[1] = measure q[1];
b[0] = measure q[2];
b[1] = measure q[3];
b[2] = measure q[4];
"""
