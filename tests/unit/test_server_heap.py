"""`serve` takes the start-up heap out of the garbage collector's sight once the gateway has
started: a full collection scans every tracked object holding the interpreter lock, and the
collections a large result's decoding set off (in a thread) held the event loop ~70 ms each."""

from __future__ import annotations

import asyncio
import gc
import signal
from pathlib import Path
from typing import Any

import pytest

from gateway import server


class _Gateway:
    """Stands in for Gateway: serve's calls, nothing behind them."""

    address = "127.0.0.1:1"

    def __init__(self, config: Any) -> None:
        self.config = config

    async def start(self, stopping: Any = None, data_dir_lock: Any = None) -> None:
        pass

    async def stop(self, cut_short: Any = None) -> None:
        pass


def test_serve_freezes_the_start_up_heap(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setattr(server, "Gateway", _Gateway)
    monkeypatch.setattr(server, "_log_security", lambda gateway: None)
    frozen: list[int] = []

    def ready(address: str) -> None:
        frozen.append(gc.get_freeze_count())
        signal.raise_signal(signal.SIGTERM)  # serve's own handler: it drains and returns

    gc.unfreeze()
    try:
        server_config = type("ServerConfig", (), {"queue": "memory"})()
        config: Any = type("Config", (), {"data_dir": tmp_path, "server": server_config})()
        asyncio.run(server.serve(config, ready))
    finally:
        gc.unfreeze()
    assert len(frozen) == 1 and frozen[0] > 0
