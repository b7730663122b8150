"""Findings of a hostile review of b93051b, ffc24af, b6950cd (settle_angles on the client's and
the transpiled circuit; readiness following the store): a `for` loop whose variable its body
does not use lost the variable (Aer failed it), a probe failing otherwise ended readiness for
good, a full store turned ready again while no job fit, and a stop asked during the start's
probe was announced ready."""

from __future__ import annotations

import asyncio
import pathlib
import pickle
import sqlite3
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from grpc_health.v1 import health_pb2

from gateway import server
from gateway.backends.aer.adapter import AerAdapter
from gateway.config import load_config
from gateway.domain.circuits import Bindings, CircuitLanguage, CircuitSource, SamplerPub
from gateway.domain.errors import StoreUnavailable
from gateway.domain.jobs import JobOptions, JobSpec, SamplerResult
from gateway.runtime.readiness import Readiness
from gateway.store.sqlite import SqliteStore
from tests.adapters import prepare_in_process
from tests.gateway_process import write_config
from tests.unit.test_aer_adapter import context as aer_context
from tests.unit.test_readiness import Recorder, Watched
from tests.unit.test_sqlite_store import new_job

pytestmark = pytest.mark.timeout(60)

H3 = 'OPENQASM 3.0;\ninclude "stdgates.inc";\n'


# -- settle_angles ---------------------------------------------------------------------------


@pytest.mark.parametrize("level", [0, 1])
def test_a_for_loop_whose_variable_the_body_does_not_use_still_runs_on_aer(level: int) -> None:
    adapter = AerAdapter(aer_context(optimization_level=level))
    text = H3 + "qubit[1] q; bit[1] c; for int i in [0:2] { x q[0]; } c[0] = measure q[0];"
    pub = SamplerPub(
        circuit=CircuitSource(CircuitLanguage.QASM3, text),
        bindings=Bindings((), (), np.array([], dtype=float)),
        shots=64,
    )
    job = JobSpec(backend=adapter.context.name, pubs=(pub,), options=JobOptions())
    prepared = prepare_in_process(adapter, job, 5)
    result = adapter.execute(pickle.loads(pickle.dumps(prepared.payload))).result.pubs[0]
    assert isinstance(result, SamplerResult)
    assert result.registers[0].counts == ({"1": 64},)  # x three times


# -- readiness -------------------------------------------------------------------------------


class _ProbeFailsOnceOtherwise(Recorder):
    """A store whose second probe fails with an error other than StoreUnavailable (an SQLite
    error outside _UNAVAILABLE_ERRORS, which _as_answer passes through, e.g. SQLITE_PROTOCOL
    in WAL between processes; or DataLoss, or RuntimeError), every other probe committing."""

    def __init__(self) -> None:
        super().__init__()
        self.callback: Callable[[], None] | None = None

    def on_write_unavailable(self, callback: Callable[[], None]) -> None:
        self.callback = callback

    async def probe_write(self) -> None:
        await self.note_probe()
        if self.probes == 2:
            raise sqlite3.OperationalError("locking protocol")


@pytest.mark.anyio
async def test_a_probe_failing_otherwise_does_not_end_readiness_for_good() -> None:
    store = _ProbeFailsOnceOtherwise()
    readiness = Readiness(store, store.publish, probe_interval_s=0.01, hold_s=0.0)
    readiness.watch_store()
    try:
        await readiness.check_store()  # probe 1 commits (the start's)
        await readiness.started()
        assert store.published == [True] and store.probes == 1
        assert store.callback is not None
        store.callback()  # a job's write failed STORE_UNAVAILABLE
        await store.until(lambda: store.published == [True, False])
        # Probe 2 fails otherwise; probe 3 and later commit: ready again, or the task ended.
        back = asyncio.ensure_future(store.until(lambda: store.published[-1:] == [True]))
        task = readiness._task
        assert task is not None
        await asyncio.wait({back, task}, timeout=10.0, return_when=asyncio.FIRST_COMPLETED)
        back.cancel()
        await asyncio.gather(back, return_exceptions=True)
        assert not task.done(), f"the readiness task ended: {task.exception()!r}"
        assert readiness.ready and store.published == [True, False, True]
    finally:
        await readiness.close()


@pytest.fixture
async def sqlite_store(tmp_path: pathlib.Path) -> AsyncIterator[SqliteStore]:
    store = SqliteStore(tmp_path / "data" / "gateway.db")
    await store.open()
    yield store
    await store.close()


@pytest.mark.anyio
async def test_a_full_store_does_not_turn_ready_while_no_job_fits(
    sqlite_store: SqliteStore,
) -> None:
    now = [100.0]
    watched = Watched(sqlite_store)
    readiness = Readiness(
        watched, watched.publish, probe_interval_s=0.01, hold_s=5.0, clock=lambda: now[0]
    )
    readiness.watch_store()
    try:
        await readiness.started()
        assert watched.published == [True]
        # Full, as the readiness tests make it: no page may be added.
        pages = await sqlite_store._call(lambda c: c.execute("PRAGMA page_count").fetchone()[0])
        await sqlite_store._call(lambda c: c.execute(f"PRAGMA max_page_count = {pages}").fetchone())
        with pytest.raises(StoreUnavailable):
            await sqlite_store.create_job(new_job(job_id="big", payload=b"x" * (1 << 20)))
        await watched.until(lambda: watched.published == [True, False])
        now[0] += 6.0  # the hold passes with no submission (the mesh sends none meanwhile)
        probed = watched.probes
        # Probes go on while not ready (three more), or they stopped because it turned ready.
        await watched.until(lambda: watched.probes >= probed + 3 or watched.published[-1])
        # Still full: the next submission fails exactly like the first.
        with pytest.raises(StoreUnavailable):
            await sqlite_store.create_job(new_job(job_id="big2", payload=b"x" * (1 << 20)))
        assert True not in watched.published[1:], watched.published
    finally:
        await readiness.close()


BACKEND = """
[backends.aer]
adapter = "aer"
pool = { min_instances = 1, max_instances = 1 }
"""


@pytest.mark.timeout(120)
def test_a_stop_asked_during_the_start_probe_never_publishes_serving(tmp_path: Path) -> None:
    config = load_config(write_config(tmp_path / "g.toml", tmp_path / "data", BACKEND))
    published: list[tuple[str, int]] = []

    async def main() -> int:
        gateway = server.Gateway(config)
        set_status = gateway.health.set

        async def record(service: str, status: Any) -> None:
            published.append((service, int(status)))
            await set_status(service, status)

        gateway.health.set = record  # type: ignore[method-assign]
        stopping = asyncio.Event()
        store = gateway._store
        probe = store.probe_write

        async def probe_while_signalled() -> None:
            stopping.set()  # SIGTERM arrives while the start's probe commits
            await probe()

        store.probe_write = probe_while_signalled  # type: ignore[method-assign]
        try:
            await gateway.start(stopping=stopping)
            response = await gateway.health.Check(
                health_pb2.HealthCheckRequest(service=server.READINESS_SERVICE), None
            )
            return int(response.status)
        finally:
            await gateway.stop()

    readiness = asyncio.run(main())
    assert (server.READINESS_SERVICE, server.SERVING) not in published, published
    assert readiness == server.NOT_SERVING
