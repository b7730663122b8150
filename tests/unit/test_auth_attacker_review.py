"""Attacker review of authentication (in process): the JWKS fetch.

Each finding ("Found:") is fixed and its test failed before the fix; the rest are probes
that held.
Only 127.0.0.1 traffic: servers here are local, and a "remote" name is resolved to 127.0.0.1 by
a patched getaddrinfo.
"""

from __future__ import annotations

import asyncio
import json
import socket
import threading
import time
import urllib.request
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import rsa
from jwt.algorithms import RSAAlgorithm

from gateway.domain.errors import Unauthenticated
from gateway.security import jwt_auth
from gateway.security.jwt_auth import JwksSource, JwtConfig, JwtVerifier

pytestmark = pytest.mark.anyio
ISSUER, AUDIENCE = "https://idp.example", "qgateway"
GOOD = rsa.generate_private_key(public_exponent=65537, key_size=2048)
EVIL = rsa.generate_private_key(public_exponent=65537, key_size=2048)


def _jwks(key: rsa.RSAPrivateKey, kid: str) -> bytes:
    jwk = RSAAlgorithm.to_jwk(key.public_key(), as_dict=True)
    jwk.update(kid=kid, alg="RS256")
    return json.dumps({"keys": [jwk]}).encode()


def _token(key: rsa.RSAPrivateKey, kid: str, **claims: Any) -> str:
    now = int(time.time())
    payload = {"iss": ISSUER, "aud": AUDIENCE, "sub": "mallory", "tenant": "acme", "exp": now + 300}
    payload.update(claims)
    return jwt.encode(payload, key, algorithm="RS256", headers={"kid": kid})


def _send(handler: BaseHTTPRequestHandler, body: bytes) -> None:
    """Answers 200 with `body` as a key server does."""
    handler.send_response(200)
    handler.send_header("Content-Length", str(len(body)))
    handler.end_headers()
    handler.wfile.write(body)


@pytest.fixture
def http_server() -> Iterator[Callable[[Callable[[BaseHTTPRequestHandler], None]], int]]:
    servers: list[ThreadingHTTPServer] = []

    def start(handle: Callable[[BaseHTTPRequestHandler], None]) -> int:
        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                handle(self)

            def log_message(self, *args: Any) -> None:
                pass

        server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        server.daemon_threads = True
        servers.append(server)
        threading.Thread(target=server.serve_forever, daemon=True).start()
        return server.server_address[1]

    yield start
    for server in servers:
        server.shutdown()
        server.server_close()


# --------------------------------------------------------------------------------------------
# Found: the https-or-loopback rule on jwks_url is checked on the configured URL only;
# urllib follows redirects, so a loopback (or https) key server answering 302 to a plaintext
# URL on another host makes the gateway fetch its signing keys from there.


async def test_a_jwks_redirect_to_a_plaintext_remote_host_is_not_followed(
    http_server: Callable[[Callable[[BaseHTTPRequestHandler], None]], int],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    served_evil = threading.Event()

    def evil(handler: BaseHTTPRequestHandler) -> None:
        served_evil.set()
        body = _jwks(EVIL, "k1")
        _send(handler, body)

    evil_port = http_server(evil)

    def redirect(handler: BaseHTTPRequestHandler) -> None:
        handler.send_response(302)
        handler.send_header("Location", f"http://keys.attacker.example:{evil_port}/jwks.json")
        handler.send_header("Content-Length", "0")
        handler.end_headers()

    local_port = http_server(redirect)
    # "keys.attacker.example" stands for a host across the network: resolve it to 127.0.0.1
    # so no packet leaves this machine.
    real_getaddrinfo = socket.getaddrinfo

    def getaddrinfo(host: Any, *args: Any, **kwargs: Any) -> Any:
        if host == "keys.attacker.example":
            host = "127.0.0.1"
        return real_getaddrinfo(host, *args, **kwargs)

    monkeypatch.setattr(socket, "getaddrinfo", getaddrinfo)
    config = JwtConfig(
        issuer=ISSUER, audience=AUDIENCE, jwks_url=f"http://127.0.0.1:{local_port}/jwks.json"
    )
    verifier = JwtVerifier(config, JwksSource(config))
    forged = _token(EVIL, "k1", role="tenant-admin", tenant="victim")
    try:
        principal = await verifier.verify(forged)
    except Unauthenticated:
        principal = None
    assert principal is None, f"a token signed by the redirect target's key: {principal}"
    assert not served_evil.is_set(), "the gateway fetched keys from the redirect target"


# --------------------------------------------------------------------------------------------
# Found: the JWKS fetch has no overall deadline. urlopen's timeout (10 s) bounds each socket
# operation, not the response: a key server (or anything in front of it) that sends a byte
# every few seconds holds the fetch, and the JwksSource lock, for as long as it likes. While
# the set is empty (the IdP was unreachable at start) every JWT call waits on that lock; with
# keys, every unknown-kid call does. Here the timeout is scaled down to 0.5 s (as if 10 s) and
# the server drips for 3 s: the fetch should give up after ~0.5 s but lasts the full 3 s.

_PER_OP_TIMEOUT = 0.5
_DRIP_FOR = 3.0


async def test_a_slow_drip_key_server_cannot_stall_jwt_calls_past_the_timeout(
    http_server: Callable[[Callable[[BaseHTTPRequestHandler], None]], int],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    def drip(handler: BaseHTTPRequestHandler) -> None:
        body = _jwks(GOOD, "k1")
        handler.send_response(200)
        handler.send_header("Content-Length", str(len(body) + 64))
        handler.end_headers()
        end = time.monotonic() + _DRIP_FOR
        try:
            while time.monotonic() < end:
                handler.wfile.write(b" ")
                handler.wfile.flush()
                time.sleep(_PER_OP_TIMEOUT / 3)
        except OSError:
            return

    port = http_server(drip)
    monkeypatch.setattr(jwt_auth, "_JWKS_FETCH_S", _PER_OP_TIMEOUT)  # scaled down from 10 s
    config = JwtConfig(issuer=ISSUER, audience=AUDIENCE, jwks_url=f"http://127.0.0.1:{port}/k")
    verifier = JwtVerifier(config, JwksSource(config))
    started = time.monotonic()
    # Ten callers at once, as every JWT caller during the fetch.
    results = await asyncio.gather(
        *(verifier.verify(_token(GOOD, "k1")) for _ in range(10)), return_exceptions=True
    )
    took = time.monotonic() - started
    assert all(isinstance(r, Unauthenticated) for r in results), results
    assert took < 4 * _PER_OP_TIMEOUT, f"JWT calls waited {took:.1f}s on one JWKS fetch"


# --------------------------------------------------------------------------------------------
# Held: many distinct unknown kids (and kid-less tokens) cause one fetch per min_refetch.


async def test_a_flood_of_unknown_kids_fetches_the_key_set_once(
    http_server: Callable[[Callable[[BaseHTTPRequestHandler], None]], int],
) -> None:
    fetches = 0
    lock = threading.Lock()

    def serve(handler: BaseHTTPRequestHandler) -> None:
        nonlocal fetches
        with lock:
            fetches += 1
        body = _jwks(GOOD, "k1")
        _send(handler, body)

    port = http_server(serve)
    config = JwtConfig(issuer=ISSUER, audience=AUDIENCE, jwks_url=f"http://127.0.0.1:{port}/k")
    verifier = JwtVerifier(config, JwksSource(config))
    assert (await verifier.verify(_token(GOOD, "k1"))).tenant == "acme"
    tokens = [_token(EVIL, f"made-up-{i}") for i in range(200)]
    results = await asyncio.gather(*(verifier.verify(t) for t in tokens), return_exceptions=True)
    assert all(isinstance(r, Unauthenticated) for r in results)
    assert fetches == 1


# --------------------------------------------------------------------------------------------
# Found: a JWKS file rewritten with the wrong JSON shape ({"keys": null}, a list, a key that
# is not an object) is not "kept the keys we have" as _refresh_file promises: _parse_jwks raises
# TypeError/AttributeError, which _refresh_file does not catch (only OSError, ValueError), so
# every JWT call ends INTERNAL (a traceback per call, no JWT_INVALID reason, no audit record of
# a refusal) until the file is fixed.


@pytest.mark.parametrize("document", ['{"keys": null}', "[]", '{"keys": [1]}'])
async def test_a_jwks_file_rewritten_with_a_bad_shape_keeps_the_old_keys(
    tmp_path: Any, document: str
) -> None:
    path = tmp_path / "jwks.json"
    path.write_bytes(_jwks(GOOD, "k1"))
    now = [0.0]
    config = JwtConfig(issuer=ISSUER, audience=AUDIENCE, jwks_file=path)
    verifier = JwtVerifier(config, JwksSource(config, clock=lambda: now[0]))
    assert (await verifier.verify(_token(GOOD, "k1"))).tenant == "acme"
    path.write_text(document)
    now[0] += 5.0
    try:
        principal = await verifier.verify(_token(GOOD, "k1"))
    except Unauthenticated:
        return  # a clear refusal would do too
    assert principal.tenant == "acme"


# --------------------------------------------------------------------------------------------
# Found: http:// jwks_url is allowed only to this host because "what is sent to it in
# plaintext crosses no network" (peers.is_loopback_host), but urllib's default opener sends it
# through $http_proxy when one is set (no_proxy unset, as on many hosts and containers): the
# proxy, across the network, gets and answers the plaintext request and chooses the keys.


async def test_a_loopback_jwks_url_is_not_sent_through_an_http_proxy(
    http_server: Callable[[Callable[[BaseHTTPRequestHandler], None]], int],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    def real_idp(handler: BaseHTTPRequestHandler) -> None:
        body = _jwks(GOOD, "k1")
        _send(handler, body)

    def proxy(handler: BaseHTTPRequestHandler) -> None:
        # Stands for a proxy across the network: it answers with its own key.
        body = _jwks(EVIL, "k1")
        _send(handler, body)

    idp_port, proxy_port = http_server(real_idp), http_server(proxy)
    for name in ("no_proxy", "NO_PROXY"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("http_proxy", f"http://127.0.0.1:{proxy_port}")
    # As in a gateway process started with the variable set: urlopen builds its opener (and
    # reads the proxy variables) once, at its first use in the process.
    monkeypatch.setattr(urllib.request, "_opener", None)
    config = JwtConfig(
        issuer=ISSUER, audience=AUDIENCE, jwks_url=f"http://127.0.0.1:{idp_port}/jwks.json"
    )
    verifier = JwtVerifier(config, JwksSource(config))
    try:
        principal = await verifier.verify(_token(EVIL, "k1", tenant="victim", role="tenant-admin"))
    except Unauthenticated:
        principal = None
    assert principal is None, f"a token signed by the proxy's key: {principal}"
    # Built at import, before this test set the variable: it must ignore proxies whenever set.
    handlers = jwt_auth._PLAIN_OPENER.handlers
    assert not any(isinstance(h, urllib.request.ProxyHandler) and h.proxies for h in handlers)


def test_an_https_key_set_is_fetched_through_the_openers_own_connections(
    tmp_path: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The https path (its own connection class arms the deadline on the TLS socket) against a
    # local TLS key server whose certificate the default trust store is told to trust.
    import ssl

    from tests.certs import issue, make_ca

    ca = make_ca()
    leaf = issue(ca, "localhost", dns=("localhost",), ips=("127.0.0.1",), server=True)
    ca_file = tmp_path / "ca.pem"
    ca_file.write_bytes(ca.cert_pem)
    cert, key = leaf.write(tmp_path, "server")
    body = _jwks(GOOD, "k1")

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            _send(self, body)

        def log_message(self, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(cert, key)
    server.socket = context.wrap_socket(server.socket, server_side=True)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    monkeypatch.setenv("SSL_CERT_FILE", str(ca_file))
    try:
        fetched = jwt_auth._fetch_url(f"https://127.0.0.1:{server.server_address[1]}/jwks")
    finally:
        server.shutdown()
        server.server_close()
    assert fetched == body
    assert jwt_auth._fetch.timers and all(t.finished.is_set() for t in jwt_auth._fetch.timers)
