"""Prepare threads shared fairly across tenants (session 30).

A job's prepare (binding sweeps, observables: pure Python on a thread) runs in one of
`prepare_threads` slots. First come first served, one tenant's burst of large sweeps queued
every other tenant's prepare behind the whole burst.
"""

from __future__ import annotations

import asyncio
import functools
import threading
from collections.abc import Callable, Sequence

import pytest

from gateway.backends.base import PreparedJob
from gateway.domain.jobs import JobSpec
from gateway.runtime.fair_share import FairShare
from gateway.store.sqlite import SqliteStore
from tests.core_harness import ScriptedRunner, build_core, spec

pytestmark = pytest.mark.anyio


def _waiting(share: FairShare, n: int) -> bool:
    return share.waiting == n


async def _until(check: Callable[[], bool]) -> None:
    async with asyncio.timeout(5):
        while not check():
            await asyncio.sleep(0.001)  # polling a condition, bounded by the timeout


async def test_a_tenants_burst_of_prepares_does_not_queue_another_tenant_behind_it(
    store: SqliteStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    # build_core's JobManager has prepare_threads=1: one non-cheap prepare at a time.
    core = await build_core(store, "memory", {"sim": ScriptedRunner()})
    adapter = core.backends["sim"].adapter
    real_prepare = adapter.prepare
    started: list[str] = []
    first_in = threading.Event()
    release = threading.Event()

    def prepare(job_spec: JobSpec, seed: int, circuits: Sequence[object]) -> PreparedJob:
        started.append(job_spec.pubs[0].circuit.text)
        if not first_in.is_set():
            first_in.set()
            release.wait(5.0)  # bounded: released by the test once the others wait
        return real_prepare(job_spec, seed, circuits)

    monkeypatch.setattr(adapter, "prepare", prepare)
    monkeypatch.setattr(adapter, "prepare_is_cheap", lambda job_spec: False)
    prepares = core.manager._admission._prepares
    calls: list[asyncio.Future[object]] = []
    try:
        calls.append(asyncio.ensure_future(core.manager.validate("hog", spec("sim", "hog-1"))))
        assert await asyncio.to_thread(first_in.wait, 5.0)
        # The hog's burst waits for the slot first, the bystander after it.
        for n, (tenant, text) in enumerate(
            [("hog", "hog-2"), ("hog", "hog-3"), ("bystander", "bystander")], start=1
        ):
            calls.append(asyncio.ensure_future(core.manager.validate(tenant, spec("sim", text))))
            await _until(functools.partial(_waiting, prepares, n))
        release.set()
        await asyncio.gather(*calls)
        assert started == ["hog-1", "bystander", "hog-2", "hog-3"]
    finally:
        release.set()
        await asyncio.gather(*calls, return_exceptions=True)
        await core.manager.close()
