"""Starting real gateway processes for tests (127.0.0.1, port 0)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
READY_PREFIX = "qgateway listening on "


def write_config(path: Path, data_dir: Path, backends: str = "", grace_period_s: float = 2) -> Path:
    text = (
        f'data_dir = "{data_dir}"\n\n[server]\nlisten = "127.0.0.1:0"\n'
        f"grace_period_s = {grace_period_s}\nmax_request_bytes = 4194304\n\n"
    )
    path.write_text(text + backends)
    tomllib.loads(path.read_text())  # fail early on a broken test config
    return path


@dataclass
class GatewayProcess:
    process: subprocess.Popen[str]
    address: str
    data_dir: Path
    log_path: Path

    @classmethod
    def start(
        cls, config: Path, data_dir: Path, log_path: Path, timeout: float = 60
    ) -> GatewayProcess:
        env = {k: v for k, v in os.environ.items() if not k.startswith("QGATEWAY_")}
        log = log_path.open("a")
        process = subprocess.Popen(
            [sys.executable, "-m", "gateway", "serve", "--config", str(config)],
            stdout=subprocess.PIPE,
            stderr=log,
            text=True,
            env=env,
            cwd=REPO,
        )
        assert process.stdout is not None
        # Blocks until the gateway announces its port (or exits): no polling.
        line = process.stdout.readline()
        if not line.startswith(READY_PREFIX):
            process.kill()
            process.wait()
            raise RuntimeError(f"gateway did not start: {line!r}\n{log_path.read_text()[-4000:]}")
        return cls(process, line[len(READY_PREFIX) :].strip(), data_dir, log_path)

    def terminate(self, timeout: float = 30) -> int:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        try:
            return self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            return self.process.wait()

    def kill(self) -> None:
        self.process.kill()
        self.process.wait()


def children_of(pid: int) -> list[Any]:
    import psutil

    try:
        return list(psutil.Process(pid).children(recursive=True))
    except psutil.NoSuchProcess:
        return []
