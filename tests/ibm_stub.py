"""The IBM Runtime stub (gateway.backends.ibm.stub_service) as a real process for tests."""

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

from gateway.backends.ibm.stub_service import READY_PREFIX

REPO = Path(__file__).resolve().parent.parent
API_KEY = "stub-api-key-5f1c9e"  # a distinctive value: tests grep logs for it
CRN = "crn:v1:bluemix:public:quantum-computing:us-east:a/0123456789:stub-instance::"
DEVICE = "fake_manila"


@dataclass
class IbmStub:
    process: subprocess.Popen[bytes]
    address: str

    @classmethod
    def start(cls, state_dir: Path, log_path: Path, timeout: float = 60.0) -> IbmStub:
        with log_path.open("ab") as log:
            process = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "gateway.backends.ibm.stub_service",
                    "--port",
                    "0",
                    "--state-dir",
                    str(state_dir),
                    "--token",
                    API_KEY,
                ],
                stdout=subprocess.PIPE,
                stderr=log,
                stdin=subprocess.DEVNULL,
                cwd=REPO,
            )
        assert process.stdout is not None
        fd = process.stdout.fileno()
        deadline = time.monotonic() + timeout
        data = b""
        while b"\n" not in data:
            remaining = deadline - time.monotonic()
            if remaining <= 0 or process.poll() is not None:
                process.kill()
                process.wait()
                raise RuntimeError(f"ibm stub did not start: {data!r}")
            if select.select([fd], [], [], min(remaining, 1.0))[0]:
                data += os.read(fd, 4096)
        line = data.split(b"\n", 1)[0].decode()
        assert line.startswith(READY_PREFIX), line
        return cls(process, line[len(READY_PREFIX) :].strip())

    def stop(self, timeout: float = 10.0) -> int:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        try:
            return self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            return self.process.wait()

    def backend_block(self, name: str = "ibmq", extra: str = "", **options: object) -> str:
        opts = {
            "backend": DEVICE,
            "channel": "ibm_cloud",
            "instance": CRN,
            "token": API_KEY,
            "url": f"http://{self.address}/api/v1",
            "iam_url": f"http://{self.address}",
            "poll_interval_s": 0.1,
            "retry_backoff_s": 0.05,
            "creates_per_s": 4,
            **options,
        }
        inline = ", ".join(f"{k} = {json.dumps(v)}" for k, v in opts.items())
        return f'[backends.{name}]\nadapter = "ibm"\n{extra}options = {{ {inline} }}\n'

    def control(self, name: str, body: dict[str, Any] | None = None) -> dict[str, Any]:
        data = json.dumps(body or {}).encode()
        request = urllib.request.Request(
            f"http://{self.address}/control/{name}", data=data, method="POST"
        )
        with urllib.request.urlopen(request, timeout=10) as response:
            answer: dict[str, Any] = json.loads(response.read())
            return answer

    def stats(self) -> dict[str, Any]:
        with urllib.request.urlopen(f"http://{self.address}/control/stats", timeout=10) as r:
            answer: dict[str, Any] = json.loads(r.read())
            return answer

    def jobs_tagged(self, job_id: str) -> list[dict[str, Any]]:
        tag = f"qgateway-job:{job_id}"
        return [j for j in self.stats()["jobs"] if tag in j["tags"]]
