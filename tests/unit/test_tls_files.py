"""Server TLS files: what a start refuses and what a rotation does not take (the old pair keeps
serving). Real certificates, real files; the clocks are injected."""

from __future__ import annotations

import datetime
import os
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization

from gateway.security.tls import ReloadingServerCredentials
from tests.certs import Issued, issue, make_ca


def _credentials(cert: Path, key: Path, clock: list[float]) -> ReloadingServerCredentials:
    # The real time: the certificates are issued around it (a time taken at import was minutes
    # before them when the whole suite ran).
    return ReloadingServerCredentials(cert, key, reload_check_s=1.0, clock=lambda: clock[0])


def _replace(issued: Issued, cert: Path, key: Path) -> None:
    # A new modification time for each file: the reload looks at (mtime, size).
    issued.write(cert.parent, cert.stem)
    for path in (cert, key):
        st = path.stat()
        os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000_000))


@pytest.mark.parametrize(
    ("valid_from", "needle"),
    [
        (-datetime.timedelta(days=3), "expired at"),
        (datetime.timedelta(hours=1), "is not valid before"),
    ],
)
def test_a_certificate_outside_its_validity_is_refused_at_start_and_at_rotation(
    tmp_path: Path, valid_from: datetime.timedelta, needle: str
) -> None:
    # Both started (or were taken on rotation) silently; every client's handshake then failed.
    ca = make_ca()
    bad = issue(ca, "gw", server=True, dns=("localhost",), valid_from=valid_from)
    cert, key = bad.write(tmp_path, "server")
    clock = [0.0]
    with pytest.raises(ValueError, match=f"server.tls: the certificate {needle}"):
        _credentials(cert, key, clock)
    good = issue(ca, "gw", server=True, dns=("localhost",))
    _replace(good, cert, key)
    credentials = _credentials(cert, key, clock)
    _replace(bad, cert, key)
    clock[0] = 2.0
    assert credentials.fetch() is None and credentials.reloads == 0  # the good pair serves on
    _replace(good, cert, key)
    clock[0] = 4.0
    assert credentials.fetch() is not None and credentials.reloads == 1


def test_an_encrypted_key_is_a_one_line_reason_not_a_type_error(tmp_path: Path) -> None:
    # load_pem_private_key raised TypeError: a traceback at start, an ERROR with a traceback
    # from grpc's fetcher at every rotation check.
    issued = issue(make_ca(), "gw", server=True, dns=("localhost",))
    cert, key = issued.write(tmp_path, "server")
    key.write_bytes(
        issued.key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.BestAvailableEncryption(b"secret"),
        )
    )
    with pytest.raises(ValueError, match="the private key is encrypted"):
        _credentials(cert, key, [0.0])


def test_a_certificate_that_expires_while_served_is_said_once(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # Served on silently once expired (clients refuse it), then refused by the next start.
    cert, key = issue(make_ca(), "gw", server=True, dns=("localhost",)).write(tmp_path, "s")
    now = datetime.datetime.now(datetime.UTC)
    clock, wall = [0.0], [now]
    credentials = ReloadingServerCredentials(
        cert, key, reload_check_s=1.0, clock=lambda: clock[0], wall_clock=lambda: wall[0]
    )
    wall[0] = now + datetime.timedelta(days=2)
    for tick in (2.0, 4.0):
        clock[0] = tick
        assert credentials.fetch() is None
    assert [r.levelname for r in caplog.records if "expired at" in r.message] == ["ERROR"]
