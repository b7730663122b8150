"""A worker process stand-in for WorkerProcess tests: its reply already written to stdout."""

from __future__ import annotations

import asyncio


class WrittenWorker:
    """What WorkerProcess reads a reply from: its stdout, already written."""

    def __init__(self, data: bytes) -> None:
        self.pid = 4242
        self.returncode = None
        self.stdin = None
        self.killed = False
        self.stdout = asyncio.StreamReader()
        self.stdout.feed_data(data)
        self.stdout.feed_eof()

    def kill(self) -> None:
        self.killed = True
