"""A hostile tenant's review at the transport level: compression, HTTP/2 frames, flow control,
metadata and the services that need no credentials (health, reflection).

One gateway (aer, one worker; API keys on, so a caller without a key is a stranger). Some
probes speak raw HTTP/2 (`_H2`: a socket, hand-made frames, literal HPACK), as a hostile client
would, instead of grpcio, which would not send what they send. Its three findings, each
failing before its fix: a stranger's stalled health-check bodies held without a read timeout,
Health.Watch without a bound (gateway.interceptors.public_calls), and tracebacks logged for
metadata values that are not UTF-8 (gateway.telemetry.logs.QuietPeerGone).
"""

from __future__ import annotations

import contextlib
import functools
import socket
import struct
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Sequence

import grpc
import psutil
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from qgateway.v1 import job_service_pb2, job_service_pb2_grpc

from gateway.security.api_keys import generate_key
from tests.gateway_process import GatewayProcess, keys_toml, write_config
from tests.rpc import ghz, sampler_spec

ALICE = generate_key("alice")
READ_TIMEOUT_S = 3  # server.request_read_timeout_s of this gateway
CONFIG = '[backends.aer]\nadapter = "aer"\npool = { min_instances = 1, max_instances = 1 }\n'
HEALTH_CHECK = "/grpc.health.v1.Health/Check"
HEALTH_WATCH = "/grpc.health.v1.Health/Watch"


@pytest.fixture(scope="module")
def gw(tmp_path_factory: pytest.TempPathFactory) -> Iterator[GatewayProcess]:
    root = tmp_path_factory.mktemp("wire")
    config = write_config(
        root / "g.toml",
        root / "data",
        CONFIG + keys_toml(ALICE),
        server=f"request_read_timeout_s = {READ_TIMEOUT_S}\n",
    )
    process = GatewayProcess.start(config, root / "gateway.log")
    yield process
    assert process.terminate() == 0, process.log_path.read_text()[-3000:]


def _md() -> list[tuple[str, str]]:
    return [("authorization", f"Bearer {ALICE.key}")]


def _rss_mib(gw: GatewayProcess) -> int:
    return int(psutil.Process(gw.pid).memory_info().rss >> 20)


def _serving(gw: GatewayProcess) -> bool:
    with grpc.insecure_channel(gw.address) as channel:
        answer = health_pb2_grpc.HealthStub(channel).Check(
            health_pb2.HealthCheckRequest(service=""), timeout=10
        )
    return bool(answer.status == health_pb2.HealthCheckResponse.SERVING)


# --------------------------------------------------------------------- a raw HTTP/2 client


def _hpack_int(n: int, prefix_bits: int) -> bytes:
    top = (1 << prefix_bits) - 1
    if n < top:
        return bytes([n])
    out, n = [top], n - top
    while n >= 128:
        out.append((n & 0x7F) | 0x80)
        n >>= 7
    return bytes([*out, n])


def _literal(name: str, value: bytes) -> bytes:
    """A header as an HPACK literal without indexing, new name, no Huffman coding."""
    key = name.encode()
    return b"\x00" + _hpack_int(len(key), 7) + key + _hpack_int(len(value), 7) + value


def _frame(kind: int, flags: int, stream: int, payload: bytes) -> bytes:
    return (
        struct.pack(">I", len(payload))[1:]
        + bytes([kind, flags])
        + struct.pack(">I", stream)
        + payload
    )


DATA, HEADERS, RST_STREAM, SETTINGS, PING, GOAWAY, WINDOW_UPDATE = 0, 1, 3, 4, 6, 7, 8
END_STREAM, END_HEADERS, ACK = 0x1, 0x4, 0x1


class _H2:
    """One HTTP/2 connection: it answers SETTINGS and PINGs, follows flow control, and records
    what the server sent per stream (ended: trailers or RST_STREAM; data bytes)."""

    def __init__(self, address: str) -> None:
        host, port = address.rsplit(":", 1)
        self.sock = socket.create_connection((host, int(port)), timeout=30)
        self.cond = threading.Condition()
        self.conn_window = 65535
        self.initial_window = 65535
        self.windows: dict[int, int] = {}
        self.ended: set[int] = set()
        self.data: dict[int, int] = {}
        self.goaway: bytes | None = None
        self.closed = False
        self.sock.sendall(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + _frame(SETTINGS, 0, 0, b""))
        threading.Thread(target=self._reader, daemon=True).start()

    def _recv(self, n: int) -> bytes:
        buf = b""
        while len(buf) < n:
            chunk = self.sock.recv(n - len(buf))
            if not chunk:
                raise EOFError
            buf += chunk
        return buf

    def _reader(self) -> None:
        try:
            while True:
                head = self._recv(9)
                kind, flags = head[3], head[4]
                stream = struct.unpack(">I", head[5:9])[0] & 0x7FFFFFFF
                payload = self._recv(int.from_bytes(head[:3], "big"))
                with self.cond:
                    self._on_frame(kind, flags, stream, payload)
                    self.cond.notify_all()
        except (EOFError, OSError):
            with self.cond:
                self.closed = True
                self.cond.notify_all()

    def _on_frame(self, kind: int, flags: int, stream: int, payload: bytes) -> None:
        if kind == SETTINGS and not flags & ACK:
            for i in range(0, len(payload), 6):
                key, value = struct.unpack(">HI", payload[i : i + 6])
                if key == 4:  # SETTINGS_INITIAL_WINDOW_SIZE
                    for s in self.windows:
                        self.windows[s] += value - self.initial_window
                    self.initial_window = value
            self.sock.sendall(_frame(SETTINGS, ACK, 0, b""))
        elif kind == PING and not flags & ACK:
            self.sock.sendall(_frame(PING, ACK, 0, payload))
        elif kind == WINDOW_UPDATE:
            grant = struct.unpack(">I", payload)[0] & 0x7FFFFFFF
            if stream == 0:
                self.conn_window += grant
            elif stream in self.windows:
                self.windows[stream] += grant
        elif kind == GOAWAY:
            self.goaway = payload
        elif kind == RST_STREAM:
            self.windows.pop(stream, None)
            self.ended.add(stream)
        elif kind == HEADERS and flags & END_STREAM:
            self.ended.add(stream)
        elif kind == DATA and stream:
            self.data[stream] = self.data.get(stream, 0) + len(payload)

    def headers(self, stream: int, path: str, extra: Sequence[tuple[str, bytes]] = ()) -> None:
        fields = [
            (":method", b"POST"),
            (":scheme", b"http"),
            (":path", path.encode()),
            (":authority", b"localhost"),
            ("content-type", b"application/grpc"),
            ("te", b"trailers"),
            *extra,
        ]
        block = b"".join(_literal(k, v) for k, v in fields)
        with self.cond:
            self.windows[stream] = self.initial_window
            self.sock.sendall(_frame(HEADERS, END_HEADERS, stream, block))

    def message(self, stream: int, body: bytes) -> None:
        """A whole small gRPC message, ending the client's side of the stream."""
        with self.cond:
            self.sock.sendall(
                _frame(DATA, END_STREAM, stream, b"\x00" + struct.pack(">I", len(body)) + body)
            )

    def partial_message(self, stream: int, declared: int, wait_s: float) -> int:
        """A message header declaring `declared` bytes, then as many of them (all but the last
        one at most) as the server's flow control lets in within `wait_s`; returns how many
        body bytes the server accepted."""
        total, sent = 5 + declared - 1, 0
        prefix = b"\x00" + struct.pack(">I", declared)
        end = time.monotonic() + wait_s
        while sent < total:
            with self.cond:
                while True:
                    window = min(self.conn_window, self.windows.get(stream, 0))
                    if window > 0 or self.closed or stream not in self.windows:
                        break
                    left = end - time.monotonic()
                    if left <= 0:
                        return max(0, sent - 5)
                    self.cond.wait(left)
                if self.closed or stream not in self.windows:
                    return max(0, sent - 5)
                n = min(window, 16384, total - sent)
                chunk = prefix[sent : sent + n] if sent < 5 else b""
                self.sock.sendall(_frame(DATA, 0, stream, chunk + b"\x00" * (n - len(chunk))))
                self.conn_window -= n
                self.windows[stream] -= n
                sent += n
        return max(0, sent - 5)

    def settled(self, streams: Sequence[int], *, ended: bool = False) -> bool:
        """Whether each of `streams` was answered (or, with `ended`, ended), or the connection
        closed; called holding the condition."""
        if self.closed:
            return True
        if ended:
            return all(s in self.ended for s in streams)
        return all(s in self.data or s in self.ended for s in streams)

    def wait(self, predicate: Callable[[], bool], timeout: float) -> bool:
        with self.cond:
            return bool(self.cond.wait_for(predicate, timeout))

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.sock.close()


# ---------------------------------------------------------------------------- findings


@pytest.mark.timeout(60)
def test_a_strangers_stalled_health_check_body_is_not_held(gw: GatewayProcess) -> None:
    streams, declared = 8, 8_000_000  # under this gateway's 9 MiB transport limit
    rss_before = _rss_mib(gw)
    conn = _H2(gw.address)
    try:
        accepted = 0
        for i in range(streams):
            conn.headers(1 + 2 * i, HEALTH_CHECK)
            accepted += conn.partial_message(1 + 2 * i, declared, wait_s=5)
        rss_held = _rss_mib(gw) - rss_before
        # Each stalled read should end (REQUEST_READ_TIMEOUT or a reset) well after the
        # read timeout; today none does.
        ended = conn.wait(
            lambda: all(1 + 2 * i in conn.ended for i in range(streams)) or conn.closed,
            READ_TIMEOUT_S + 10,
        )
        assert ended, (
            f"{streams} stalled Health.Check streams without credentials still open after "
            f"{READ_TIMEOUT_S + 10} s, holding {accepted >> 20} MiB of body "
            f"(gateway RSS +{rss_held} MiB)"
        )
    finally:
        conn.close()
    assert _serving(gw)


@pytest.mark.timeout(60)
def test_health_watch_streams_of_strangers_are_bounded(gw: GatewayProcess) -> None:
    connections, per_connection = 3, 1000
    body = health_pb2.HealthCheckRequest(service="").SerializeToString()
    rss_before = _rss_mib(gw)
    conns = [_H2(gw.address) for _ in range(connections)]
    try:
        # In batches, each answered before the next: grpc refuses (RST_STREAM) streams
        # arriving faster than the server accepts them, which is load shedding, not a bound.
        batch = 100
        for conn in conns:
            for start in range(0, per_connection, batch):
                ids = [1 + 2 * i for i in range(start, start + batch)]
                for stream in ids:
                    conn.headers(stream, HEALTH_WATCH)
                    conn.message(stream, body)
                conn.wait(functools.partial(conn.settled, ids), 10)
        watching = sum(1 for c in conns for s, n in c.data.items() if n > 0 and s not in c.ended)
        rss_held = _rss_mib(gw) - rss_before
        assert watching < connections * per_connection, (
            f"{watching} Health.Watch streams of a caller without credentials all accepted "
            f"(gateway RSS +{rss_held} MiB)"
        )
    finally:
        for conn in conns:
            conn.close()
    assert _serving(gw)


def test_invalid_utf8_metadata_writes_no_tracebacks(gw: GatewayProcess) -> None:
    """grpc's server logged an ERROR with a traceback for every metadata value that is not
    UTF-8, each time the call's metadata was read: one Health.Check from a stranger with 300
    one-byte values wrote ~90 KB to the gateway's log (~40x what it sent), so anyone could
    fill its disk (the store's too). Fixed: such records are DEBUG lines (QuietPeerGone)."""
    size_before = gw.log_path.stat().st_size
    conn = _H2(gw.address)
    calls = 10
    try:
        body = health_pb2.HealthCheckRequest(service="").SerializeToString()
        extra = [(f"x{i}", b"\xff") for i in range(300)]  # ~10 KiB: under the 16 KiB limit
        for i in range(calls):  # one at a time: a burst may be shed (RST_STREAM) by grpc
            conn.headers(1 + 2 * i, HEALTH_CHECK, extra)
            conn.message(1 + 2 * i, body)
            assert conn.wait(functools.partial(conn.settled, [1 + 2 * i], ended=True), 10)
        answered = sum(1 for i in range(calls) if conn.data.get(1 + 2 * i, 0) > 0)
        assert answered == calls  # the values are decoded anyway: the calls are served
    finally:
        conn.close()
    assert _serving(gw)
    # No wait: the gateway logs synchronously (no queue handler) while it reads a call's
    # metadata, before it answers, and every call was answered.
    grown = gw.log_path.stat().st_size - size_before
    assert grown < 20_000, f"{calls} calls wrote {grown} bytes to the gateway's log"


# ---------------------------------------------------------------- guarded, already right


@pytest.mark.timeout(60)
def test_a_compressed_request_past_the_transport_limit_is_refused(gw: GatewayProcess) -> None:
    """A gzip 'bomb' (50 MiB of one label, ~50 KiB on the wire) is refused by gRPC as it
    decompresses (RESOURCE_EXHAUSTED), one between the gateway's limit and the transport's is
    REQUEST_TOO_LARGE, and the gateway stays up with its memory bounded."""
    rss_before = _rss_mib(gw)
    options = [("grpc.max_send_message_length", -1)]
    with grpc.insecure_channel(gw.address, options=options) as channel:
        jobs = job_service_pb2_grpc.JobServiceStub(channel)  # type: ignore[no-untyped-call]
        for size, code in (
            (6 << 20, grpc.StatusCode.INVALID_ARGUMENT),
            (50 << 20, grpc.StatusCode.RESOURCE_EXHAUSTED),
        ):
            spec = sampler_spec(ghz(2))
            spec.labels["x"] = "a" * size
            request = job_service_pb2.SubmitJobRequest(spec=spec, request_id=str(uuid.uuid4()))
            with pytest.raises(grpc.RpcError) as caught:
                jobs.SubmitJob(
                    request, metadata=_md(), timeout=20, compression=grpc.Compression.Gzip
                )
            assert caught.value.code() == code, caught.value
        answer = jobs.ListJobs(
            job_service_pb2.ListJobsRequest(),
            metadata=_md(),
            timeout=10,
            compression=grpc.Compression.Deflate,
        )
        assert answer is not None
    assert _rss_mib(gw) - rss_before < 200
    assert _serving(gw)


@pytest.mark.timeout(30)
@pytest.mark.parametrize("with_call", [False, True], ids=["idle", "during-a-watch"])
def test_a_ping_flood_gets_goaway_too_many_pings(gw: GatewayProcess, with_call: bool) -> None:
    """Pings every millisecond are cut by grpc's ping policy (min_client_ping_interval_s,
    a few strikes), not answered for ever."""
    conn = _H2(gw.address)
    try:
        if with_call:
            conn.headers(1, HEALTH_WATCH)
            conn.message(1, health_pb2.HealthCheckRequest(service="").SerializeToString())
        pings = 0
        while pings < 2000 and conn.goaway is None and not conn.closed:
            try:
                conn.sock.sendall(_frame(PING, 0, 0, b"12345678"))
            except OSError:
                break
            pings += 1
            time.sleep(0.001)
        assert conn.wait(lambda: conn.goaway is not None, 5), f"{pings} pings answered"
        assert conn.goaway is not None and b"too_many_pings" in conn.goaway
        assert pings < 100
    finally:
        conn.close()
