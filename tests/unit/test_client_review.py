"""Review of the Python client and CLI: documented promises that did not hold (a draining
gateway's UNAVAILABLE answers spent the attempts; a watch that had shown the final state raised
when its stream then broke)."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace
from typing import Any

import grpc  # type: ignore[import-untyped, unused-ignore]
import pytest
from qgateway import AsyncClient, Client, RetryPolicy
from qgateway import client as client_module
from qgateway.results import JobState
from qgateway.v1 import job_pb2, job_service_pb2

from gateway import cli
from tests.unit.test_client_errors import (
    CutStream,
    FakeRpcError,
    FakeUnary,
    error_info,
    refusal,
)

FAST = RetryPolicy(initial_backoff=0.01, max_backoff=0.02, max_attempts=4, jitter=0.0)


@pytest.fixture
def sleeps(monkeypatch: pytest.MonkeyPatch) -> list[float]:
    recorded: list[float] = []
    monkeypatch.setattr(client_module, "_sleep", recorded.append)
    return recorded


def _client(**methods: Any) -> Client:
    client = Client("127.0.0.1:1", retry=FAST)
    client._jobs_stub = SimpleNamespace(**methods)
    return client


# --- 1. A draining gateway's UNAVAILABLE DRAINING answers use up the attempts ------------------


def _draining() -> FakeRpcError:
    # What admission answers every SubmitJob/Run while the gateway drains (gateway/jobs/
    # admission.py): UNAVAILABLE, reason DRAINING, RetryInfo 1 s, for the whole grace period
    # (server.grace_period_s, 30 s by default).
    return refusal(
        grpc.StatusCode.UNAVAILABLE,
        "the gateway is shutting down and accepts no new jobs",
        error_info("DRAINING"),
        1,
    )


def test_a_draining_gateways_unavailable_answers_spend_no_attempt(sleeps: list[float]) -> None:
    drained = [_draining() for _ in range(3 * FAST.max_attempts)]
    queued = job_service_pb2.SubmitJobResponse(
        job=job_pb2.Job(name="jobs/j1", state=job_pb2.JOB_STATE_QUEUED), created=True
    )
    submit = FakeUnary([*drained, queued])
    with _client(SubmitJob=submit) as client:
        job = client.submit("OPENQASM 3.0;", shots=4, timeout=3600)
    assert job.name == "jobs/j1"
    assert len(submit.requests) == len(drained) + 1
    assert len({r.request_id for r in submit.requests}) == 1
    assert sleeps == [1.0] * len(drained)  # paced by the RetryInfo (jitter 0)


# --- 2. A watch that already delivered the final state is resumed when its stream breaks -------


def _event(state: int) -> job_service_pb2.WatchJobResponse:
    return job_service_pb2.WatchJobResponse(job=job_pb2.Job(name="jobs/w", state=state))


def _gone() -> FakeRpcError:
    return FakeRpcError(grpc.StatusCode.UNAVAILABLE, "failed to connect to all addresses")


class _Refused:
    """A WatchJob call to a gateway that is gone: fails before any message."""

    def __iter__(self) -> Any:
        raise _gone()

    def cancel(self) -> None:
        pass


def _final_then_cut_watcher() -> tuple[Client, list[Any]]:
    # The final state arrives, then the connection drops before the stream's OK status (a
    # gateway killed or restarted right after the job ended, a proxy reset).
    first = CutStream(
        [_event(job_pb2.JOB_STATE_RUNNING), _event(job_pb2.JOB_STATE_SUCCEEDED)], _gone()
    )
    streams: list[Any] = [first] + [_Refused() for _ in range(20)]
    client = _client(WatchJob=lambda *a, **k: streams.pop(0))
    return client, streams


def test_a_watch_that_saw_the_final_state_ends_when_its_stream_breaks(
    sleeps: list[float],
) -> None:
    client, _ = _final_then_cut_watcher()
    with client:
        seen = [job.state for job in client.watch("w", timeout=60)]
    assert seen == [JobState.RUNNING, JobState.SUCCEEDED]


def test_jobs_watch_exits_0_when_it_printed_succeeded_before_the_stream_broke(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], sleeps: list[float]
) -> None:
    client, _ = _final_then_cut_watcher()
    monkeypatch.setattr(cli, "_client", lambda args: client)
    code = cli.main(["jobs", "watch", "jobs/w"])
    out = capsys.readouterr()
    assert "SUCCEEDED" in out.out
    assert code == 0, out.err


def test_the_async_watch_that_saw_the_final_state_ends_when_its_stream_breaks(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    async def no_sleep(seconds: float) -> None:
        pass

    monkeypatch.setattr(client_module, "_async_sleep", no_sleep)
    first = CutStream(
        [_event(job_pb2.JOB_STATE_RUNNING), _event(job_pb2.JOB_STATE_SUCCEEDED)], _gone()
    )
    streams: list[Any] = [first] + [CutStream([], _gone()) for _ in range(20)]

    async def scenario() -> list[JobState]:
        async with AsyncClient("127.0.0.1:1", retry=FAST) as client:
            _ = client.channel
            client._jobs_stub = SimpleNamespace(WatchJob=lambda *a, **k: streams.pop(0))
            return [job.state async for job in client.watch("w", timeout=60)]

    assert asyncio.run(scenario()) == [JobState.RUNNING, JobState.SUCCEEDED]
    assert len(streams) == 20  # never called again
