"""Work that goes on after its caller went away (review: abandoned work, session 29).

The cheapest attack on a shared service is a request that starts costly work and leaves at
once (a 1 ms deadline, a cancelled call), repeated with distinct inputs so no cache helps. What
a caller leaves behind must stay bounded by the same limits that bound what it waits for.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Sequence

import pytest

from gateway.backends.base import PreparedJob
from gateway.domain.jobs import JobSpec
from gateway.store.sqlite import SqliteStore
from tests.core_harness import ScriptedRunner, build_core, spec

pytestmark = pytest.mark.anyio

# How long the first prepare holds its thread waiting for a second one to start beside it:
# with the limit holding, the second never does and the first ends after this bound (it is the
# limit's test window, not a synchronisation: the defect shows at once, well inside it).
_OVERLAP_WINDOW_S = 0.5


# A strict xfail until Admission.prepare held its slot with run_blocking: anyio frees its
# limiter's slot when a caller is cancelled natively (gRPC's deadline, a reset) while the
# prepare thread goes on, so abandoned prepares ran beside new ones without bound.
async def test_a_prepare_whose_caller_left_keeps_its_prepare_threads_slot(
    store: SqliteStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    # build_core's JobManager has prepare_threads=1: one non-cheap prepare at a time.
    core = await build_core(store, "memory", {"sim": ScriptedRunner()})
    adapter = core.backends["sim"].adapter
    real_prepare = adapter.prepare
    lock = threading.Lock()
    running = 0
    most = 0
    first_in = threading.Event()
    second_in = threading.Event()

    def prepare(job_spec: JobSpec, seed: int, circuits: Sequence[object]) -> PreparedJob:
        # A large sweep or observable's prepare (seconds of pure Python on a thread), slowed
        # to the test's window: the first holds its thread until a second one joins it.
        nonlocal running, most
        with lock:
            running += 1
            most = max(most, running)
        try:
            if not first_in.is_set():
                first_in.set()
                second_in.wait(_OVERLAP_WINDOW_S)
            else:
                second_in.set()
            return real_prepare(job_spec, seed, circuits)
        finally:
            with lock:
                running -= 1

    monkeypatch.setattr(adapter, "prepare", prepare)
    monkeypatch.setattr(adapter, "prepare_is_cheap", lambda job_spec: False)
    try:
        # The hog's validate_only reaches its prepare thread, then its caller leaves (gRPC
        # cancels the handler's task natively, as here).
        hog = asyncio.ensure_future(core.manager.validate("hog", spec("sim", "a")))
        assert await asyncio.to_thread(first_in.wait, 5.0)
        hog.cancel()
        await asyncio.gather(hog, return_exceptions=True)
        # Another tenant's prepare waits for the thread the hog left behind: the limit bounds
        # the threads preparing, not the callers still waiting for them.
        await core.manager.validate("bystander", spec("sim", "b"))
        assert most == 1, f"{most} prepares ran at once, past prepare_threads=1"
    finally:
        second_in.set()
        await core.manager.close()
