"""A backup taken while a real gateway serves, restored into another data directory: the next
gateway serves the same jobs and results, and the restored audit log verifies."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from qgateway import Client, sampler_pub
from qgateway.results import Job

from tests.gateway_process import GatewayProcess, write_config
from tests.rpc import ghz

BACKENDS = """
[backends.aer]
adapter = "aer"
pool = { min_instances = 1, max_instances = 1 }
"""


def _run(client: Client, seed: int) -> Job:
    return client.run_pubs([sampler_pub(ghz(3), shots=64)], seed=seed, timeout=60)


def _qgateway(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "gateway", *args],
        capture_output=True,
        text=True,
        timeout=60,
        stdin=subprocess.DEVNULL,
    )


@pytest.mark.timeout(120)
def test_a_backup_of_a_serving_gateway_restores_its_jobs_results_and_audit_log(
    tmp_path: Path,
) -> None:
    first = write_config(tmp_path / "first.toml", tmp_path / "first", BACKENDS)
    backup = tmp_path / "backup"
    gw = GatewayProcess.start(first, tmp_path / "first.log")
    try:
        with Client(gw.address) as client:
            before = [_run(client, seed) for seed in (1, 2, 3)]
            backed_up = _qgateway("store", "backup", "--config", str(first), str(backup))
            after = _run(client, 4)  # served on while it copied
    finally:
        assert gw.terminate() == 0
    assert backed_up.returncode == 0, backed_up.stderr
    assert "schema version" in backed_up.stdout and "audit.key" in backed_up.stdout

    second = write_config(tmp_path / "second.toml", tmp_path / "second", BACKENDS)
    restored = _qgateway("store", "restore", "--config", str(second), str(backup))
    assert restored.returncode == 0, restored.stderr
    verified = _qgateway("audit", "verify", "--config", str(second))
    assert verified.returncode == 0, verified.stderr

    gw = GatewayProcess.start(second, tmp_path / "second.log")
    try:
        with Client(gw.address) as client:
            listed = {job.name for job in client.list_jobs()}
            assert {job.name for job in before} <= listed
            assert after.name not in listed  # run after the snapshot
            for job in before:
                assert job.result is not None
                assert client.get_result(job.name).counts() == job.result.counts()
            client.run(ghz(2), shots=8, seed=5)  # and the restored store takes new jobs
    finally:
        assert gw.terminate() == 0
    # The log the restored gateway went on writing still verifies, from the restored head on.
    verified = _qgateway("audit", "verify", "--config", str(second))
    assert verified.returncode == 0, verified.stderr
