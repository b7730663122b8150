"""Signals between gateway processes sharing one SQLite store (`server.queue = "store"`).

SQLite tells no connection of another's commits, so each process heard only its own changes:
a Run or WatchJob on one replica never saw a job end that another replica ran, and an idle
replica never claimed the jobs another queued or left behind when it died. Processes that
share a SQLite file share a host (the data directory's lock, SQLite's own locking), so they
signal each other with Unix datagrams: each binds a socket in the abstract namespace (no path
length limit, gone with the process) and registers its name as an empty file in
`data_dir/peers`; a committed change is sent, as "<job id> <backend> <state>", to every
registered peer. A signal carries no data to trust: a receiver reads the job from the store.

Delivery is best effort, and that is enough: a peer's full buffer drops a signal (the job is
then found at the receiver's next lease or deadline timer, as before), and a peer that died
is dropped from the register when its socket refuses a datagram.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import uuid
from collections.abc import Callable
from pathlib import Path

log = logging.getLogger(__name__)

# The register, under the data directory.
PEERS_DIR = "peers"
_PREFIX = b"\0qgateway-peer-"
# A job id (32), a backend id (a configuration key) and a state name, with room to spare: a
# longer datagram is cut short on receipt and its state read wrong, which only costs a wake.
_MAX_SIGNAL = 4096

# (job id, backend, state name)
OnSignal = Callable[[str, str, str], None]


class PeerSignals:
    """This process's end of the signals.

    Args:
        directory: The register (`data_dir/peers`), shared by the processes.
    """

    def __init__(self, directory: Path) -> None:
        self._directory = directory
        self._on_signal: OnSignal | None = None
        self.name = f"{os.getpid()}-{uuid.uuid4().hex[:16]}"
        self._socket: socket.socket | None = None
        self._peers: list[str] = []
        self._listed_at: int | None = None  # the register's mtime when last listed

    def start(self, on_signal: OnSignal) -> None:
        """Binds and registers; `on_signal` is called on the event loop for every signal a
        peer sends."""
        self._on_signal = on_signal
        self._directory.mkdir(mode=0o700, exist_ok=True)
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        sock.setblocking(False)
        sock.bind(_PREFIX + self.name.encode())
        self._socket = sock
        (self._directory / self.name).touch(mode=0o600)
        asyncio.get_running_loop().add_reader(sock.fileno(), self._readable)

    def close(self) -> None:
        sock, self._socket = self._socket, None
        if sock is None:
            return
        with contextlib.suppress(RuntimeError):  # the loop may be closing already
            asyncio.get_running_loop().remove_reader(sock.fileno())
        sock.close()
        (self._directory / self.name).unlink(missing_ok=True)

    def send(self, job_id: str, backend: str, state: str) -> None:
        """Tells every peer of a committed change (never raises: a lost signal only delays)."""
        sock = self._socket
        if sock is None:
            return
        signal = f"{job_id} {backend} {state}".encode()
        for peer in self._registered():
            try:
                sock.sendto(signal, _PREFIX + peer.encode())
            except (ConnectionRefusedError, FileNotFoundError):
                # Nobody binds the name: the process is gone (SIGKILL leaves its file).
                (self._directory / peer).unlink(missing_ok=True)
            except OSError:  # a full buffer (BlockingIOError) or anything else: dropped
                pass

    def _registered(self) -> list[str]:
        """The peers' names, listed again only when the register changed."""
        try:
            changed = self._directory.stat().st_mtime_ns
        except OSError:
            return []
        if changed != self._listed_at:
            self._listed_at = changed
            try:
                names = os.listdir(self._directory)
            except OSError:
                names = []
            self._peers = [name for name in names if name != self.name]
        return self._peers

    def _readable(self) -> None:
        sock = self._socket
        while sock is not None:
            try:
                data = sock.recv(_MAX_SIGNAL)
            except (BlockingIOError, InterruptedError):
                return
            except OSError:
                log.exception("peer signals: receive failed")
                return
            # A backend id may hold spaces (any printable text): it is what lies between the
            # job id and the state.
            job_id, _, rest = data.decode("utf-8", errors="replace").partition(" ")
            backend, _, state = rest.rpartition(" ")
            if backend and self._on_signal is not None:
                self._on_signal(job_id, backend, state)
