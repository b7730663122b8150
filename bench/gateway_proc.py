"""One gateway process for a benchmark run: 127.0.0.1, port 0, data in a temporary directory.

Like tests/gateway_process.py, but every wait is bounded in time (a gateway that never announces
its port fails the benchmark within `start_timeout` seconds instead of hanging it).
"""

from __future__ import annotations

import os
import select
import signal
import subprocess
import sys
import threading
import time
import tomllib
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
READY_PREFIX = "qgateway listening on "


def write_config(
    path: Path,
    data_dir: Path,
    *,
    workers: int,
    max_parallel_threads: int,
    optimization_level: int,
) -> Path:
    """A gateway config with one Aer state-vector backend named `aer`, listening on port 0."""
    options = (
        f'{{ method = "statevector", max_parallel_threads = {max_parallel_threads}, '
        f"optimization_level = {optimization_level} }}"
    )
    text = f"""\
data_dir = "{data_dir}"

[server]
listen = "127.0.0.1:0"
grace_period_s = 2

[backends.aer]
adapter = "aer"
max_shots = 1000000
max_queued_jobs = 10000
options = {options}
"""
    if _has_pool_section():
        # A fixed pool: every worker started (warm) before the first job, never more.
        text += f"\n[backends.aer.pool]\nmin_instances = {workers}\nmax_instances = {workers}\n"
    else:
        text = text.replace('adapter = "aer"\n', f'adapter = "aer"\nworkers = {workers}\n')
    path.write_text(text)
    tomllib.loads(text)  # a broken config fails here, not as a silent gateway exit
    return path


def _has_pool_section() -> bool:
    """Whether this gateway's config has `[backends.X.pool]` (newer) or `workers` (older)."""
    try:
        from gateway.config import BackendConfig
    except Exception:  # a tree mid-edit; the gateway will say what is wrong when it starts
        return True
    return "pool" in BackendConfig.model_fields


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
        profile_out: Path | None = None,
    ) -> GatewayProcess:
        """Starts `python -m gateway serve --config FILE` and waits for its ready line.

        Args:
            config: The TOML config file.
            log_path: Where the gateway's stderr goes.
            start_timeout: Seconds to wait for "qgateway listening on HOST:PORT".
            profile_out: If set, run the gateway under bench.profiler, writing samples there.
        """
        env = {k: v for k, v in os.environ.items() if not k.startswith("QGATEWAY_")}
        if profile_out is None:
            argv = [sys.executable, "-m", "gateway", "serve", "--config", str(config)]
        else:
            argv = [sys.executable, "-m", "bench.profiler", str(profile_out)]
            argv += ["serve", "--config", str(config)]
        with log_path.open("a") as log:
            process = subprocess.Popen(
                argv,
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
