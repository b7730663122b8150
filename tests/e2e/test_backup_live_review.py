"""Backup and restore run as an operator would on a live system (review): real gateways,
the `qgateway store` tool as a subprocess. Both findings were fixed: a restore replaced the
database under a gateway serving it without its lock file (the failed fold taken for damage),
and restored audit records no key in place had written (the gateway then refused to start)."""

from __future__ import annotations

import secrets
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest
from qgateway import Client

from tests.gateway_process import GatewayProcess, write_config
from tests.rpc import ghz

BACKENDS = """
[backends.aer]
adapter = "aer"
pool = { min_instances = 1, max_instances = 1 }
"""


def _qgateway(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "gateway", *args],
        capture_output=True,
        text=True,
        timeout=60,
        stdin=subprocess.DEVNULL,
    )


def _job_ids(db: Path) -> set[str]:
    conn = sqlite3.connect(f"{db.resolve().as_uri()}?mode=ro", uri=True)
    try:
        return {str(row[0]) for row in conn.execute("SELECT id FROM jobs")}
    finally:
        conn.close()


@pytest.mark.timeout(120)
def test_restore_refuses_a_database_a_serving_gateway_still_has_open(tmp_path: Path) -> None:
    config = write_config(tmp_path / "gw.toml", tmp_path / "data", BACKENDS)
    backup = tmp_path / "backup"
    gw = GatewayProcess.start(config, tmp_path / "gw.log")
    try:
        with Client(gw.address) as client:
            client.submit(ghz(2), shots=8, seed=1)
            taken = _qgateway("store", "backup", "--config", str(config), str(backup))
            assert taken.returncode == 0, taken.stderr
            (tmp_path / "data" / "qgateway.lock").unlink()
            restored = _qgateway("store", "restore", "--config", str(config), str(backup))
            after = client.submit(ghz(2), shots=8, seed=2)  # acknowledged: on disk, it says
    finally:
        assert gw.terminate() == 0
    kept = after.name.removeprefix("jobs/") in _job_ids(tmp_path / "data" / "qgateway.db")
    assert restored.returncode != 0 and kept, (restored.returncode, restored.stdout, kept)


@pytest.mark.timeout(120)
def test_restore_refuses_audit_records_without_the_key_that_wrote_them(tmp_path: Path) -> None:
    first = write_config(tmp_path / "first.toml", tmp_path / "first", BACKENDS)
    gw = GatewayProcess.start(first, tmp_path / "first.log")
    try:
        with Client(gw.address) as client:
            client.submit(ghz(2), shots=8, seed=1)
    finally:
        assert gw.terminate() == 0
    backup = tmp_path / "backup"
    assert _qgateway("store", "backup", "--config", str(first), str(backup)).returncode == 0
    # Another gateway's key in the backup (backup sets mixed up, or a key copied by hand).
    # Another gateway's key (audit keys are 32 random bytes).
    (backup / "audit.key").write_bytes(secrets.token_bytes(32))

    target = write_config(tmp_path / "target.toml", tmp_path / "target", BACKENDS)
    restored = _qgateway("store", "restore", "--config", str(target), str(backup))
    verified = _qgateway("audit", "verify", "--config", str(target))
    assert verified.returncode != 0  # what the restore left cannot be verified, nor served
    assert restored.returncode != 0 or "key" in restored.stderr, restored
