"""Signals between gateway processes sharing one SQLite store (`server.queue = "store"`).

SQLite tells no connection of another's commits, so each process heard only its own changes:
a Run or WatchJob on one replica never saw a job end that another replica ran, and an idle
replica never claimed the jobs another queued or left behind when it died. Processes that
share a SQLite file share a host (the data directory's lock, SQLite's own locking), so they
signal each other with Unix datagrams: each binds a socket file in `data_dir/peers` (0700:
only the gateway's user may send to them; abstract sockets could be flooded by any local user
and do not cross network namespaces, as containers sharing the volume would need), and a
committed change is sent, as "<job id> <backend> <state>", to every socket there. Sockets are
reached through the directory's descriptor (/proc/self/fd/N/name), so a long data directory
path never passes the 108-byte limit of a socket address. A signal carries no data to trust:
a receiver reads the job from the store.

A Unix datagram socket queues only a few datagrams (net.unix.max_dgram_qlen, 10 by default),
so the signals of one turn of the event loop go out together, one datagram of lines per peer,
and what a peer's full queue refuses is sent again shortly, in order. Delivery stays best
effort: past a backlog bound the oldest signals of a peer that does not read are dropped (its
jobs are then found at its next lease or deadline timer, as before), and the socket of a
process that died refuses datagrams, and is removed.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import os
import socket
import uuid
from collections.abc import Callable
from pathlib import Path

log = logging.getLogger(__name__)

# The sockets, under the data directory.
PEERS_DIR = "peers"
# Lines ("<job id> <backend> <state>") of one datagram, at most this many bytes.
_DATAGRAM = 32 * 1024
# Datagrams kept for a peer whose queue is full; older ones are dropped past it.
_BACKLOG = 256
# How soon a refused datagram is sent again.
_RETRY_S = 0.01

# Datagrams handled per wake-up of the loop; more wait for the next turn (the reader stays
# ready), so a burst never holds the loop.
_BATCH = 256

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
        self.name = f"{os.getpid()}-{uuid.uuid4().hex[:12]}.sock"
        self._socket: socket.socket | None = None
        self._dir_fd: int | None = None
        self._peers: list[str] = []
        self._listed_at: int | None = None  # the directory's mtime when last listed
        # Signals of this loop turn, not sent yet; datagrams a peer's full queue refused.
        self._outbox: list[str] = []
        self._backlog: dict[str, collections.deque[bytes]] = {}
        self._flush_at: asyncio.Handle | None = None

    def _address(self, name: str) -> str:
        return f"/proc/self/fd/{self._dir_fd}/{name}"

    def start(self, on_signal: OnSignal) -> None:
        """Binds this process's socket; `on_signal` is called on the event loop for every
        signal a peer sends."""
        self._on_signal = on_signal
        self._directory.mkdir(mode=0o700, exist_ok=True)
        self._directory.chmod(0o700)
        self._dir_fd = os.open(self._directory, os.O_RDONLY | os.O_DIRECTORY)
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        sock.setblocking(False)
        sock.bind(self._address(self.name))
        self._socket = sock
        asyncio.get_running_loop().add_reader(sock.fileno(), self._readable)

    def close(self) -> None:
        if self._flush_at is not None:
            self._flush_at.cancel()
            self._flush_at = None
        self._flush()  # the last signals, once
        sock, self._socket = self._socket, None
        if sock is not None:
            with contextlib.suppress(RuntimeError):  # the loop may be closing already
                asyncio.get_running_loop().remove_reader(sock.fileno())
            sock.close()
        if self._dir_fd is not None:
            with contextlib.suppress(OSError):
                os.unlink(self.name, dir_fd=self._dir_fd)
            os.close(self._dir_fd)
            self._dir_fd = None

    def send(self, job_id: str, backend: str, state: str) -> None:
        """Tells every peer of a committed change, with the others of this loop turn (never
        raises: a lost signal only delays)."""
        if self._socket is None:
            return
        self._outbox.append(f"{job_id} {backend} {state}")
        if self._flush_at is None:
            self._flush_at = asyncio.get_running_loop().call_soon(self._flushed)

    def _flushed(self) -> None:
        self._flush_at = None
        self._flush()
        if any(self._backlog.values()) and self._socket is not None:
            self._flush_at = asyncio.get_running_loop().call_later(_RETRY_S, self._flushed)

    def _flush(self) -> None:
        sock = self._socket
        if sock is None:
            return
        datagrams = _datagrams(self._outbox)
        self._outbox = []
        peers = self._registered()
        for peer in list(self._backlog):
            if peer not in peers:
                del self._backlog[peer]
        for peer in peers:
            backlog = self._backlog.setdefault(peer, collections.deque(maxlen=_BACKLOG))
            backlog.extend(datagrams)
            while backlog:
                try:
                    sock.sendto(backlog[0], self._address(peer))
                except BlockingIOError:
                    break  # its queue is full: again shortly
                except ConnectionRefusedError:
                    # Nobody reads the socket: its process is gone (SIGKILL leaves the file).
                    with contextlib.suppress(OSError):
                        os.unlink(peer, dir_fd=self._dir_fd)
                    backlog.clear()
                except OSError:  # the file gone, or anything else: nothing more to send
                    backlog.clear()
                else:
                    backlog.popleft()

    def _registered(self) -> list[str]:
        """The peers' socket names, listed again only when the directory changed."""
        if self._dir_fd is None:
            return []
        try:
            changed = os.fstat(self._dir_fd).st_mtime_ns
        except OSError:
            return []
        if changed != self._listed_at:
            self._listed_at = changed
            try:
                names = os.listdir(self._dir_fd)
            except OSError:
                names = []
            self._peers = [n for n in names if n.endswith(".sock") and n != self.name]
        return self._peers

    def _readable(self) -> None:
        sock = self._socket
        if sock is None:
            return
        for _ in range(_BATCH):
            try:
                data = sock.recv(_DATAGRAM)
            except (BlockingIOError, InterruptedError):
                return
            except OSError:
                log.exception("peer signals: receive failed")
                return
            for line in data.decode("utf-8", errors="replace").split("\n"):
                # A backend id may hold spaces (any printable text): it is what lies between
                # the job id and the state.
                job_id, _, rest = line.partition(" ")
                backend, _, state = rest.rpartition(" ")
                if backend and self._on_signal is not None:
                    self._on_signal(job_id, backend, state)


def _datagrams(lines: list[str]) -> list[bytes]:
    """The lines, newline-separated, in datagrams of at most _DATAGRAM bytes (a line longer
    than that goes alone: the receiver reads a prefix of it, and at worst one wake is lost)."""
    datagrams: list[bytes] = []
    current: list[bytes] = []
    size = 0
    for line in lines:
        data = line.replace("\n", " ").encode()
        if current and size + 1 + len(data) > _DATAGRAM:
            datagrams.append(b"\n".join(current))
            current, size = [], 0
        current.append(data)
        size += len(data) + (1 if size else 0)
    if current:
        datagrams.append(b"\n".join(current))
    return datagrams
