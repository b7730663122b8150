from __future__ import annotations

import pytest
from qgateway.results import job_result_from_stream
from qgateway.v1 import job_pb2

from gateway.api import codec, paging
from gateway.api.result_stream import (
    digest_response,
    result_chunks,
    result_digest,
)
from gateway.api.result_views import split_result
from gateway.domain.errors import InvalidArgument
from tests.unit.test_result_stream import as_sent


def test_page_size_rules() -> None:
    assert paging.page_size(0) == paging.DEFAULT_PAGE_SIZE
    assert paging.page_size(7) == 7
    assert paging.page_size(10**6) == paging.MAX_PAGE_SIZE
    with pytest.raises(InvalidArgument) as exc:
        paging.page_size(-1)
    assert exc.value.reason == "INVALID_PAGE_SIZE"


def _result() -> job_pb2.JobResult:
    result = job_pb2.JobResult()
    s = result.pub_results.add().sampler
    s.shape.extend([3])
    s.shots = 4
    reg = s.registers.add(name="c", num_bits=9)
    reg.samples = bytes(range(24))
    for i in range(3):
        # One outcome per binding, i, as a 2-byte big-endian row, seen in all 4 shots.
        reg.counts.add(outcomes=i.to_bytes(2, "big"), counts=[4])
    e = result.pub_results.add().estimator
    e.shape.extend([5])
    e.expectation_values.extend([0.1, 0.2, 0.3, 0.4, 0.5])
    e.standard_errors.extend([0.01] * 5)
    e.precision = 0.01
    return result


@pytest.mark.parametrize("chunk", [1, 7, 16, 1 << 20])
def test_chunks_reassemble_to_the_same_result(chunk: int) -> None:
    result = _result()
    data = result.SerializeToString(deterministic=True)
    digest = result_digest(data)
    chunks = [as_sent(c) for c in result_chunks(split_result(data), chunk)]
    for c in chunks:
        assert len(c.samples.data) <= chunk
    rebuilt = job_result_from_stream([*chunks, digest_response(digest)])
    assert rebuilt.sampler(0)["c"].samples == bytes(range(24))
    assert [rebuilt.sampler(0).counts(i) for i in range(3)] == [
        {"000000000": 4},
        {"000000001": 4},
        {"000000010": 4},
    ]
    assert rebuilt.estimator(1).expectation_values == [0.1, 0.2, 0.3, 0.4, 0.5]


def test_a_job_page_is_cut_by_bytes_and_goes_on_after_the_last_job_sent() -> None:
    from datetime import UTC, datetime, timedelta

    from gateway.api.paging import PAGE_FRAMING_BYTES, within_response
    from gateway.domain.jobs import Job, JobState
    from gateway.store.base import JobCursor

    start = datetime(2026, 12, 1, tzinfo=UTC)
    labels = {f"k{i:02d}" + "x" * 60: "v" * 63 for i in range(64)}  # ~8.5 KB a job

    def job(n: int) -> Job:
        return Job(
            id=f"j{n}",
            tenant="acme",
            request_id="",
            backend="aer",
            placement="aer",
            state=JobState.SUCCEEDED,
            created_at=start - timedelta(seconds=n),
            num_pubs=1,
            seed=1,
            labels=labels,
        )

    def jobs_within(
        jobs: list[Job], next_cursor: JobCursor | None, budget: int
    ) -> tuple[list[job_pb2.Job], JobCursor | None]:
        return within_response(
            jobs,
            next_cursor,
            budget + PAGE_FRAMING_BYTES,
            codec.encode_job,
            lambda j: JobCursor(j.created_at, j.id),
        )

    jobs = [job(n) for n in range(10)]
    store_cursor = JobCursor(jobs[-1].created_at, jobs[-1].id)
    sent, cursor = jobs_within(jobs, store_cursor, 30_000)
    assert [m.name for m in sent] == ["jobs/j0", "jobs/j1", "jobs/j2"]
    assert sum(m.ByteSize() for m in sent) <= 30_000
    assert cursor == JobCursor(jobs[2].created_at, "j2")  # the next page starts at j3
    # All fit: the store's own cursor (None at the end).
    assert jobs_within(jobs, None, 1 << 20) == ([codec.encode_job(j) for j in jobs], None)
    # One job larger than the budget still goes alone (a page is never empty).
    sent, cursor = jobs_within(jobs[:2], None, 100)
    assert [m.name for m in sent] == ["jobs/j0"] and cursor == JobCursor(jobs[0].created_at, "j0")


def test_a_job_message_carries_its_times_and_usage_to_the_nanosecond() -> None:
    # encode_job sets Timestamps and Durations field by field (no FromDatetime): a unit slip
    # there showed every create/start/end time and execution duration wrong below a second.
    from datetime import UTC, datetime, timedelta

    from gateway.domain.jobs import ExecutionInfo, Job, JobState
    from gateway.domain.pricing import Usage

    created = datetime(2026, 12, 1, 8, 30, 15, 250_000, tzinfo=UTC)
    job = Job(
        id="j1",
        tenant="acme",
        request_id="",
        backend="aer",
        placement="aer",
        state=JobState.SUCCEEDED,
        created_at=created,
        started_at=created + timedelta(microseconds=500_001),
        num_pubs=1,
        seed=1,
        execution=ExecutionInfo(
            backend="aer", seed=1, usage=Usage(shots=10, execution_seconds=1.5)
        ),
    )
    msg = codec.encode_job(job)
    assert msg.create_time.ToDatetime(tzinfo=UTC) == created
    assert (msg.create_time.seconds, msg.create_time.nanos) == (
        int(created.timestamp()),
        250_000_000,
    )
    assert msg.start_time.ToDatetime(tzinfo=UTC) == created + timedelta(microseconds=500_001)
    assert msg.usage.shots == 10
    assert msg.usage.execution_duration.ToNanoseconds() == 1_500_000_000


def test_a_page_fills_the_response_to_the_byte_less_its_framing() -> None:
    from gateway.api.paging import PAGE_FRAMING_BYTES, within_response

    items = [job_pb2.Job(name=f"jobs/{n}" + "x" * 90) for n in range(3)]
    size = items[0].ByteSize() + 6  # a repeated field's tag and length prefix
    for max_response, names in [
        (PAGE_FRAMING_BYTES + 2 * size, [items[0].name, items[1].name]),
        (PAGE_FRAMING_BYTES + 2 * size - 1, [items[0].name]),
    ]:
        sent, cursor = within_response(items, "end", max_response, lambda m: m, lambda m: m.name)
        assert [m.name for m in sent] == names
        assert cursor == names[-1]  # cut: the next page starts after the last one sent
