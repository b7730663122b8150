"""The Braket stub (gateway.backends.braket.stub) as a real process for tests, and its controls."""

from __future__ import annotations

import json
import os
import select
import signal
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from gateway.backends.braket.stub import READY_PREFIX, SV1

REPO = Path(__file__).resolve().parent.parent

__all__ = ["AWS_ENV", "SV1", "BraketStubProcess"]

# Fake credentials and a region: botocore signs with them and never looks further (no instance
# metadata probe, no shared files).
AWS_ENV = {
    "AWS_ACCESS_KEY_ID": "AKIAQGATEWAYTESTONLY",
    "AWS_SECRET_ACCESS_KEY": "qgateway-test-secret-not-real",
    "AWS_DEFAULT_REGION": "us-east-1",
    "AWS_EC2_METADATA_DISABLED": "true",
    "AWS_CONFIG_FILE": "/dev/null",
    "AWS_SHARED_CREDENTIALS_FILE": "/dev/null",
}


@dataclass
class BraketStubProcess:
    process: subprocess.Popen[bytes]
    url: str
    log_path: Path

    @classmethod
    def start(
        cls, state_dir: Path, log_path: Path, *, start_timeout: float = 60.0
    ) -> BraketStubProcess:
        with log_path.open("ab") as log:
            process = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "gateway.backends.braket.stub",
                    "--port",
                    "0",
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
                raise RuntimeError(f"braket stub did not start: {data!r}")
            ready, _, _ = select.select([fd], [], [], min(remaining, 1.0))
            if ready:
                chunk = os.read(fd, 4096)
                data += chunk
        line = data.split(b"\n", 1)[0].decode()
        if not line.startswith(READY_PREFIX):
            process.kill()
            process.wait()
            raise RuntimeError(f"unexpected first line {line!r}")
        return cls(process, "http://" + line[len(READY_PREFIX) :].strip(), log_path)

    def stop(self, timeout: float = 10.0) -> int:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        try:
            return self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            return self.process.wait()

    def call(self, method: str, path: str, body: object = None, timeout: float = 10) -> Any:
        data = None if body is None else json.dumps(body).encode()
        request = urllib.request.Request(self.url + path, data=data, method=method)
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return json.loads(response.read())

    def control(self, name: str, **body: Any) -> None:
        self.call("POST", f"/_stub/{name}", body)

    def stats(self, since: int = 0) -> dict[str, Any]:
        """The stub's counters; `max_creates_in_1s` counts create calls from number `since`."""
        stats: dict[str, Any] = self.call("GET", f"/_stub/stats?since={since}")
        return stats

    def task(self, token: str) -> dict[str, Any] | None:
        task: dict[str, Any] | None = self.call("GET", f"/_stub/task?token={token}")
        return task

    def wait_for(self, predicate: Any, timeout: float = 20.0, what: str = "condition") -> Any:
        """Polls the stub's stats until `predicate(stats)` is truthy (bounded)."""
        deadline = time.monotonic() + timeout
        while True:
            stats = self.stats()
            value = predicate(stats)
            if value:
                return value
            if time.monotonic() > deadline:
                raise AssertionError(f"stub: no {what} within {timeout} s: {stats}")
            time.sleep(0.05)
