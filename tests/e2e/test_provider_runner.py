"""A provider job across a gateway SIGKILL: re-attached by its stored id, never submitted twice.

The loopback backend is one config block; its job service is a process of its own, so it
outlives the gateway like a cloud provider. The service holds jobs (QUEUED at the service)
while the gateway reports them RUNNING: submitted, their remote id stored.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from pathlib import Path

import pytest
from qgateway import Client, JobState, RetryPolicy

from tests.gateway_process import GatewayProcess, write_config
from tests.loopback_service import TWO_REGISTERS, LoopbackService


@pytest.fixture(scope="module")
def service(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LoopbackService]:
    root = tmp_path_factory.mktemp("loopback")
    process = LoopbackService.start(root / "state", root / "service.log")
    yield process
    assert process.stop() == 0


def watch_until(client: Client, name: str, state: JobState) -> JobState:
    """The job's state once it is `state` or final (WatchJob: no polling)."""
    for job in client.watch(name, timeout=60):
        if job.state is state or job.done:
            return job.state
    raise AssertionError(f"{name} ended its watch without reaching {state}")


@pytest.mark.timeout(180)
def test_provider_job_survives_a_gateway_sigkill_without_a_second_submission(
    tmp_path: Path, service: LoopbackService
) -> None:
    data = tmp_path / "data"
    backends = (
        "[backends.remote]\n"
        'adapter = "loopback"\n'
        f'options = {{ url = "{service.url}", retry_backoff_s = 0.05, long_poll_s = 5 }}\n'
    )
    config = write_config(tmp_path / "g.toml", data, backends)
    before = service.stats()
    service.hold()
    try:
        gw = GatewayProcess.start(config, tmp_path / "gateway.log")
        with Client(gw.address, retry=RetryPolicy(max_attempts=1)) as client:
            job = client.submit(
                TWO_REGISTERS, backend="remote", shots=32, seed=5, request_id="remote-1"
            )
            assert watch_until(client, job.name, JobState.RUNNING) is JobState.RUNNING
        remote = service.job_by_token(job.id)
        assert remote is not None and remote["status"] == "QUEUED"  # held at the service
        gw.kill()

        gw = GatewayProcess.start(config, tmp_path / "gateway.log")
        with Client(gw.address, retry=RetryPolicy(max_attempts=1)) as client:
            # CancelJob on a job running at a provider cancels it there.
            doomed = client.submit(TWO_REGISTERS, backend="remote", shots=8, request_id="remote-2")
            assert watch_until(client, doomed.name, JobState.RUNNING) is JobState.RUNNING
            client.cancel(doomed.name)
            assert client.wait(doomed.name, timeout=60).state is JobState.CANCELLED
            cancelled = service.job_by_token(doomed.id)
            assert cancelled is not None and cancelled["status"] == "CANCELLED"

            service.release()
            done = client.wait(job.name, timeout=60)
            assert done.state is JobState.SUCCEEDED, done.error_message
            assert done.result is not None
            assert done.result.counts(register="a") == {"01": 32}
            assert done.result.counts(register="b") == {"011": 32}
        assert gw.terminate() == 0
    finally:
        service.release()

    after = service.stats()
    # Two jobs, two create calls: the restart re-attached to the first, it did not submit it.
    assert after["creates"] - before["creates"] == 2
    assert after["create_calls"] - before["create_calls"] == 2
    finished = service.job_by_token(job.id)
    assert finished is not None and finished["id"] == remote["id"]
    assert finished["status"] == "DONE"
    db = sqlite3.connect(f"file:{data / 'qgateway.db'}?mode=ro", uri=True)
    stored = dict(db.execute("SELECT id, remote_id FROM jobs").fetchall())
    assert stored[job.id] == remote["id"]
