"""A real gateway process for tests and benchmarks: 127.0.0.1, port 0, bounded waits.

`GatewayProcess.start` runs `python -m gateway serve --config FILE` and returns once the gateway
prints "qgateway listening on HOST:PORT"; a gateway that never announces itself fails within
`start_timeout` seconds instead of hanging its caller.
"""

from __future__ import annotations

import os
import select
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

READY_PREFIX = "qgateway listening on "
REPO = Path(__file__).resolve().parent.parent


@dataclass
class GatewayProcess:
    process: subprocess.Popen[str]
    address: str
    log_path: Path

    @property
    def pid(self) -> int:
        return self.process.pid

    @classmethod
    def start(
        cls,
        config: Path,
        log_path: Path,
        *,
        start_timeout: float = 120.0,
        command: Sequence[str] = (sys.executable, "-m", "gateway"),
        env: Mapping[str, str] | None = None,
    ) -> GatewayProcess:
        """Starts the gateway and waits for its ready line.

        Args:
            config: The TOML configuration file.
            log_path: Where the gateway's stderr goes (appended).
            start_timeout: Seconds to wait for the ready line.
            command: What runs `serve --config FILE` (e.g. a profiler wrapping the gateway).
            env: Variables to set for the gateway and its workers (e.g. PYTHONPATH holding a
                test-only adapter package).
        """
        env = {
            **{k: v for k, v in os.environ.items() if not k.startswith("QGATEWAY_")},
            **(env or {}),
        }
        with log_path.open("a") as log:
            process = subprocess.Popen(
                [*command, "serve", "--config", str(config)],
                stdout=subprocess.PIPE,
                stderr=log,
                stdin=subprocess.DEVNULL,
                text=True,
                env=env,
                cwd=REPO,
            )
        try:
            line = _read_line(process, start_timeout)
        except BaseException:
            _stop(process, 5.0)
            raise
        if not line.startswith(READY_PREFIX):
            _stop(process, 5.0)
            tail = log_path.read_text(errors="replace")[-4000:]
            raise RuntimeError(f"gateway did not start (first line {line!r}); log tail:\n{tail}")
        gateway = cls(process, line[len(READY_PREFIX) :].strip(), log_path)
        # Keep the pipe drained, so a gateway that prints more can never block on stdout.
        threading.Thread(target=_drain, args=(process,), daemon=True).start()
        return gateway

    def terminate(self, timeout: float = 30.0) -> int:
        """SIGTERM (the gateway drains and exits), then SIGKILL after `timeout` seconds."""
        return _stop(self.process, timeout)

    def kill(self) -> None:
        self.process.kill()
        self.process.wait()


def _read_line(process: subprocess.Popen[str], timeout: float) -> str:
    assert process.stdout is not None
    fd = process.stdout.fileno()
    deadline = time.monotonic() + timeout
    chunks: list[bytes] = []
    while True:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise TimeoutError(f"the gateway did not announce its port within {timeout:.0f}s")
        ready, _, _ = select.select([fd], [], [], min(remaining, 1.0))
        if not ready:
            if process.poll() is not None:
                return b"".join(chunks).decode(errors="replace")
            continue
        # os.read, not the buffered file: select() says nothing about Python's buffer.
        data = os.read(fd, 4096)
        if not data:
            return b"".join(chunks).decode(errors="replace")
        chunks.append(data)
        joined = b"".join(chunks)
        if b"\n" in joined:
            return joined.split(b"\n", 1)[0].decode(errors="replace") + "\n"


def _drain(process: subprocess.Popen[str]) -> None:
    assert process.stdout is not None
    fd = process.stdout.fileno()
    try:
        while os.read(fd, 65536):
            pass
    except OSError:
        pass


def _stop(process: subprocess.Popen[str], timeout: float) -> int:
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
    try:
        return process.wait(timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        return process.wait()
