"""Server TLS credentials whose certificate files can be rotated without a restart.

grpc's dynamic server credentials ask a fetcher for a new certificate configuration whenever
a connection is set up; ours looks at the files' modification times (at most every
`reload_check_s` seconds) and reads them again when they changed. A half-written rotation
(a certificate that does not match its key, or a file that does not parse), or a certificate
outside its validity, is not taken: the previous certificate keeps serving, and the next check
tries again.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import grpc
from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization

log = logging.getLogger("gateway.tls")

_Stamp = tuple[tuple[int, int], ...]


@dataclass(frozen=True)
class _Files:
    cert: bytes
    key: bytes
    ca: bytes | None
    not_after: datetime


def _check_pair(cert_pem: bytes, key_pem: bytes, now: datetime) -> datetime:
    """The end of the validity of the first certificate in `cert_pem`; raises ValueError
    unless it belongs to `key_pem` and is valid at `now` (an expired one fails every client's
    handshake: never worth serving)."""
    cert = x509.load_pem_x509_certificates(cert_pem)[0]
    try:
        key = serialization.load_pem_private_key(key_pem, password=None)
    except TypeError:
        raise ValueError(
            "the private key is encrypted: give it unencrypted (the gateway has no passphrase)"
        ) from None
    except UnsupportedAlgorithm as exc:
        raise ValueError(f"the private key's algorithm is not supported: {exc}") from None
    public = serialization.PublicFormat.SubjectPublicKeyInfo
    der = serialization.Encoding.DER
    if cert.public_key().public_bytes(der, public) != key.public_key().public_bytes(der, public):
        raise ValueError("the certificate does not belong to the private key")
    if now > cert.not_valid_after_utc:
        raise ValueError(f"the certificate expired at {cert.not_valid_after_utc.isoformat()}")
    if now < cert.not_valid_before_utc:
        raise ValueError(
            f"the certificate is not valid before {cert.not_valid_before_utc.isoformat()}"
        )
    return cert.not_valid_after_utc


class ReloadingServerCredentials:
    """Server credentials from PEM files, re-read when they change.

    Args:
        cert_file: The server's certificate chain (PEM).
        key_file: Its private key (PEM, unencrypted).
        client_ca_file: CA certificates clients' certificates must chain to (mTLS).
        require_client_auth: Require and verify a client certificate on every connection.
        reload_check_s: Least time between two looks at the files.
        clock: Monotonic seconds (when to look again).
        wall_clock: The time certificates must be valid at.

    Raises:
        ValueError: The files cannot be read or do not match (at start, a configuration error).
    """

    def __init__(
        self,
        cert_file: Path,
        key_file: Path,
        client_ca_file: Path | None = None,
        *,
        require_client_auth: bool = False,
        reload_check_s: float = 5.0,
        clock: Callable[[], float] = time.monotonic,
        wall_clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        self._paths = (cert_file, key_file) + ((client_ca_file,) if client_ca_file else ())
        self._require = require_client_auth
        self._reload_check_s = reload_check_s
        self._clock = clock
        self._wall_clock = wall_clock
        self._lock = threading.Lock()  # grpc may call the fetcher from its own threads
        self._checked = clock()
        self.reloads = 0
        try:
            self._stamp = self._stat()
            files = self._read()
            self._initial = self._configuration(files)
        except (OSError, ValueError) as exc:
            raise ValueError(f"server.tls: {exc}") from None
        self._not_after = files.not_after
        self._expiry_told = False

    def _stat(self) -> _Stamp:
        stats = [os.stat(p) for p in self._paths]
        return tuple((s.st_mtime_ns, s.st_size) for s in stats)

    def _read(self) -> _Files:
        cert, key = self._paths[0].read_bytes(), self._paths[1].read_bytes()
        not_after = _check_pair(cert, key, self._wall_clock())
        ca = self._paths[2].read_bytes() if len(self._paths) > 2 else None
        if ca is not None:
            x509.load_pem_x509_certificates(ca)
        return _Files(cert, key, ca, not_after)

    @staticmethod
    def _configuration(files: _Files) -> grpc.ServerCertificateConfiguration:
        return grpc.ssl_server_certificate_configuration([(files.key, files.cert)], files.ca)

    def fetch(self) -> grpc.ServerCertificateConfiguration | None:
        """grpc's fetcher: a new configuration when the files changed, else None."""
        with self._lock:
            now = self._clock()
            if now - self._checked < self._reload_check_s:
                return None
            self._checked = now
            self._tell_expiry()
            try:
                stamp = self._stat()
                if stamp == self._stamp:
                    return None
                files = self._read()
            except (OSError, ValueError) as exc:
                log.warning("TLS files changed but cannot be used yet (keeping the old): %s", exc)
                return None
            self._stamp = stamp
            self._not_after, self._expiry_told = files.not_after, False
            self.reloads += 1
            log.info("TLS certificate reloaded from %s", self._paths[0])
            return self._configuration(files)

    def _tell_expiry(self) -> None:
        # Served on once expired (clients then refuse every handshake), and refused at the next
        # start: said once, loudly, so the rotation that did not happen is noticed.
        if not self._expiry_told and self._wall_clock() > self._not_after:
            self._expiry_told = True
            log.error(
                "TLS: the served certificate %s expired at %s; clients refuse it, and a restart "
                "refuses to start with it: rotate it",
                self._paths[0],
                self._not_after.isoformat(),
            )

    def credentials(self) -> grpc.ServerCredentials:
        return grpc.dynamic_ssl_server_credentials(
            self._initial, self.fetch, require_client_authentication=self._require
        )
