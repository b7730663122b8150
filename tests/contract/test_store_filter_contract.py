"""Store contract, ListJobs filters: what every store executes agrees with a plain Python
evaluation, on a few hundred random jobs and hundreds of random filters; client strings are
values, never query text. Runs on each implementation of tests/contract/stores.py."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import random
from collections.abc import Callable, Coroutine, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, TypeVar

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.api.job_filter import parse_filter
from gateway.domain.job_filter import Comparison, FilterField, FilterOp, JobFilter
from gateway.domain.jobs import Job, JobState
from gateway.store.base import JobCursor, NewJob, Store
from tests.contract.stores import STORES

T0 = datetime(2026, 11, 2, 9, 30, 0, tzinfo=UTC)
EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
T = TypeVar("T")
BACKENDS = ["aer", "aer-mps", "b"]
LABEL_KEYS = ["a", "b", "team"]
# Microseconds after T0 that jobs are created at and filters compare with.
BOUNDARIES_US = [0, 1, 2, 999, 1000, 1_000_000]
LABEL_VALUES = ["", "x", "qml"]
STATES = [
    JobState.QUEUED,
    JobState.RUNNING,
    JobState.CANCELLING,
    JobState.SUCCEEDED,
    JobState.FAILED,
    JobState.CANCELLED,
]


def _us(dt: datetime) -> int:
    return (dt - EPOCH) // timedelta(microseconds=1)


@dataclass
class World:
    loop: asyncio.AbstractEventLoop
    store: Store
    jobs: list[Job]  # tenant "acme" only

    def run(self, coro: Coroutine[Any, Any, T]) -> T:
        return self.loop.run_until_complete(coro)


async def _populate(store: Store, rng: random.Random) -> list[Job]:
    jobs: list[Job] = []
    # Few distinct clock readings, in time order (a tenant's create times rise in commit
    # order): equal readings commit a microsecond apart, so the jobs crowd every time the
    # filters compare with, and both its sides. (Ties on create time, from stores written
    # before that rule, are paged in tests/unit/test_sqlite_pages.py.)
    readings = sorted(rng.choice(BOUNDARIES_US) for _ in range(300))
    for i, reading in enumerate(readings):
        tenant = "acme" if i % 5 else "other"
        labels = {k: rng.choice(LABEL_VALUES) for k in LABEL_KEYS if rng.random() < 0.5}
        job_id = hashlib.sha256(str(i).encode()).hexdigest()[:32]
        outcome = await store.create_job(
            NewJob(
                id=job_id,
                tenant=tenant,
                request_id="",
                request_hash=bytes(32),
                backend=rng.choice(BACKENDS),
                spec=b"spec",
                num_pubs=1,
                seed=1,
                created_at=T0 + timedelta(microseconds=reading),
                labels=labels,
            )
        )
        created = outcome.job.created_at
        state = rng.choice(STATES)
        if state in (JobState.RUNNING, JobState.CANCELLING):
            await store.mark_running(job_id, created)
        if state is JobState.CANCELLING:
            await store.mark_cancelling(job_id, created)
        if state.is_final:
            await store.finish_job(job_id, state, ended_at=created)
        job = await store.get_job(job_id)
        assert job is not None and job.state is state and dict(job.labels) == labels
        if tenant == "acme":
            jobs.append(job)
    return jobs


@pytest.fixture(scope="module", params=sorted(STORES))
def world(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[World]:
    loop = asyncio.new_event_loop()
    stack = contextlib.AsyncExitStack()
    opener = loop.run_until_complete(
        stack.enter_async_context(STORES[request.param](tmp_path_factory.mktemp("filter")))
    )
    store = loop.run_until_complete(opener())
    jobs = loop.run_until_complete(_populate(store, random.Random(7)))
    yield World(loop, store, jobs)
    loop.run_until_complete(stack.aclose())
    loop.close()


# ------------------------------------------------------------------ filters with their meaning

Predicate = Callable[[Job], bool]


@dataclass(frozen=True)
class Term:
    text: str
    field: str  # what OR may group on
    holds: Predicate


def _rfc3339(ns: int, offset_min: int) -> str:
    """`ns` since the epoch written at a UTC offset of `offset_min` minutes, 9 digits."""
    seconds, frac = divmod(ns, 1_000_000_000)
    local = EPOCH + timedelta(seconds=seconds, minutes=offset_min)
    sign = "+" if offset_min >= 0 else "-"
    hh, mm = divmod(abs(offset_min), 60)
    return f"{local:%Y-%m-%dT%H:%M:%S}.{frac:09d}{sign}{hh:02d}:{mm:02d}"


@st.composite
def terms(draw: st.DrawFn) -> Term:
    kind = draw(st.sampled_from(["state", "backend", "session", "label", "has", "time"]))
    if kind == "state":
        state = draw(st.sampled_from(list(JobState)))
        ne = draw(st.booleans())
        prefix = draw(st.sampled_from(["", "JOB_STATE_"]))
        text = f"state {'!=' if ne else '='} {prefix}{state.value}"
        return Term(text, "state", lambda j: (j.state != state) if ne else (j.state == state))
    if kind == "backend":
        backend = draw(st.sampled_from([*BACKENDS, "nope"]))
        ne = draw(st.booleans())
        text = f'backend {"!=" if ne else "="} "backends/{backend}"'
        return Term(
            text, "backend", lambda j: (j.backend != backend) if ne else j.backend == backend
        )
    if kind == "session":
        return Term('session = "sessions/s1"', "session", lambda j: False)
    if kind in ("label", "has"):
        key = draw(st.sampled_from([*LABEL_KEYS, "zz"]))
        if kind == "has":
            return Term(f"labels:{key}", f"labels.{key}", lambda j: key in j.labels)
        value = draw(st.sampled_from([*LABEL_VALUES, "y"]))
        ne = draw(st.booleans())
        text = f'labels.{key} {"!=" if ne else "="} "{value}"'
        if ne:
            return Term(text, f"labels.{key}", lambda j: j.labels.get(key) != value)
        return Term(text, f"labels.{key}", lambda j: j.labels.get(key) == value)
    base_us = _us(T0) + draw(st.sampled_from(BOUNDARIES_US))
    ns = base_us * 1000 + draw(st.sampled_from([-1000, -1, 0, 1, 500, 999, 1000]))
    op = draw(st.sampled_from([">", ">=", "<", "<="]))
    text = f'create_time {op} "{_rfc3339(ns, draw(st.sampled_from([0, 90, -330])))}"'
    compare: dict[str, Callable[[int, int], bool]] = {
        ">": lambda a, b: a > b,
        ">=": lambda a, b: a >= b,
        "<": lambda a, b: a < b,
        "<=": lambda a, b: a <= b,
    }
    return Term(text, "create_time", lambda j: compare[op](_us(j.created_at) * 1000, ns))


@st.composite
def filters(draw: st.DrawFn) -> tuple[str, Predicate]:
    clauses: list[tuple[str, Predicate]] = []
    for _ in range(draw(st.integers(0, 4))):
        first = draw(terms())
        group = [first]
        if draw(st.booleans()):
            # An OR group: more terms on the same field.
            for _ in range(draw(st.integers(0, 3))):
                other = draw(terms())
                if other.field == first.field:
                    group.append(other)
            text = "(" + " OR ".join(t.text for t in group) + ")"
        else:
            text = first.text

        def holds(j: Job, group: list[Term] = group) -> bool:
            return any(t.holds(j) for t in group)

        clauses.append((text, holds))
    text = " AND ".join(c for c, _ in clauses)
    return text, lambda j: all(h(j) for _, h in clauses)


def _expected(world: World, predicate: Predicate) -> list[str]:
    matching = [j for j in world.jobs if predicate(j)]
    matching.sort(key=lambda j: (j.created_at, j.id), reverse=True)
    return [j.id for j in matching]


def _listed(world: World, flt: JobFilter, limit: int) -> list[str]:
    ids: list[str] = []
    cursor: JobCursor | None = None
    while True:
        page = world.run(world.store.list_jobs("acme", filter=flt, after=cursor, limit=limit))
        ids.extend(j.id for j in page.jobs)
        if page.next_cursor is None:
            return ids
        cursor = page.next_cursor


@settings(max_examples=400, deadline=None)
@given(filters())
def test_the_store_agrees_with_python_on_random_filters(
    world: World, case: tuple[str, Predicate]
) -> None:
    text, predicate = case
    expected = _expected(world, predicate)
    assert _listed(world, parse_filter(text), 1000) == expected


@settings(max_examples=60, deadline=None)
@given(filters(), st.integers(1, 40))
def test_paging_a_filtered_list_gives_each_job_once_in_order(
    world: World, case: tuple[str, Predicate], limit: int
) -> None:
    text, predicate = case
    assert _listed(world, parse_filter(text), limit) == _expected(world, predicate)


def test_the_population_covers_every_state_label_and_boundary(world: World) -> None:
    assert {j.state for j in world.jobs} == set(STATES)
    assert {k for j in world.jobs for k in j.labels} == set(LABEL_KEYS)
    created = [_us(j.created_at) - _us(T0) for j in world.jobs]
    assert set(BOUNDARIES_US) <= set(created)
    assert created == sorted(set(created))  # each a microsecond at least after the last


# ------------------------------------------------------------------ hostile values in SQL


HOSTILE = [
    "a' OR 1=1 --",
    "'; DROP TABLE jobs; --",
    '" OR ""="',
    "%",
    "_",
    "\\",
    "x') OR ('1'='1",
    "\x00",
    "é\u202e",
    "$.a",
    '$."team"',
]


@pytest.mark.parametrize("value", HOSTILE)
def test_client_strings_are_values_never_sql(world: World, value: str) -> None:
    # Bypass the parser's grammar checks: the store alone must keep every value a value.
    for flt in [
        JobFilter(((Comparison(FilterField.LABEL, FilterOp.EQ, value, "team"),),)),
        JobFilter(((Comparison(FilterField.LABEL, FilterOp.EQ, "qml", value),),)),
        JobFilter(((Comparison(FilterField.LABEL, FilterOp.HAS, "", value),),)),
        JobFilter(((Comparison(FilterField.BACKEND, FilterOp.EQ, value),),)),
        JobFilter(((Comparison(FilterField.SESSION, FilterOp.EQ, value),),)),
    ]:
        assert world.run(world.store.list_jobs("acme", filter=flt, limit=1000)).jobs == []
    # != of a value no job has matches every job of the tenant (and only of the tenant).
    ne = JobFilter(((Comparison(FilterField.LABEL, FilterOp.NE, value, "team"),),))
    assert len(world.run(world.store.list_jobs("acme", filter=ne, limit=1000)).jobs) == len(
        world.jobs
    )
    # Nothing was dropped or changed: every job of both tenants is still there.
    listed = [world.run(world.store.list_jobs(t, limit=1000)).jobs for t in ("acme", "other")]
    assert [len(jobs) for jobs in listed] == [240, 60]


def test_the_longest_filters_run(world: World) -> None:
    # The most comparisons 2048 characters hold, in one OR group and as an AND chain.
    many_or = "(" + " OR ".join(["labels:a"] * 170) + ")"
    many_and = " AND ".join(["labels:a"] * 157)
    for text in (many_or, many_and):
        assert len(text) <= 2048
        ids = _listed(world, parse_filter(text), 1000)
        assert ids == _expected(world, lambda j: "a" in j.labels)
