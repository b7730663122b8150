"""Braket tasks whose create was uncertain (made at AWS, the answer lost) must never be left
running with no gateway job following them: the job core plus the real Braket cloud runner,
down to a scripted AWS API (the FakeBraket of test_braket_cloud) whose tag search lags behind
its creates (SearchQuantumTasks is eventually consistent) or is out of reach for a while."""

from __future__ import annotations

import asyncio
from typing import Any

import numpy as np
import pytest

from gateway.backends.base import PreparedJob
from gateway.backends.braket.cloud import BraketCloudRunner
from gateway.backends.runner import DelegatingRunner, RunHandle
from gateway.domain.circuits import Bindings, CircuitLanguage, CircuitSource, SamplerPub
from gateway.domain.jobs import Job, JobSpec
from gateway.store.sqlite import SqliteStore
from tests.adapters import prepare_in_process
from tests.core_harness import build_core, spec
from tests.unit.test_braket_cloud import SWEEP, FakeBraket, _client_error, _cloud_adapter, _runner

pytestmark = pytest.mark.anyio


class LaggingBraket(FakeBraket):
    """FakeBraket whose tag search does not show the tasks in `hidden` yet (eventual
    consistency), and fails (a 500, out of reach) its first `search_down` calls."""

    def __init__(self, *, search_down: int = 0, hide_lost: bool = False, **kw: Any) -> None:
        super().__init__(**kw)
        self.search_down = search_down
        self.hide_lost = hide_lost
        self.hidden: set[str] = set()
        self.by_token: dict[str, str] = {}

    def create_quantum_task(self, **kwargs: Any) -> str:
        # Braket answers a repeated client token with the task it already has.
        if kwargs["clientToken"] in self.by_token:
            return self.by_token[kwargs["clientToken"]]
        try:
            arn = super().create_quantum_task(**kwargs)
            self.by_token[kwargs["clientToken"]] = arn
            return arn
        except Exception:
            if len(self.tasks) > len(self.by_token):  # made, its answer lost
                self.by_token[kwargs["clientToken"]] = list(self.tasks)[-1]
            if self.hide_lost and len(self.creates) - 1 == self.lose_answer:
                self.hidden.add(list(self.tasks)[-1])  # made, not yet searchable
            raise

    def search_quantum_tasks(self, **kwargs: Any) -> dict[str, Any]:
        if self.search_down > 0:
            self.search_down -= 1
            raise _client_error("InternalServiceException", 500)
        page = super().search_quantum_tasks(**kwargs)
        page["quantumTasks"] = [
            t for t in page["quantumTasks"] if t["quantumTaskArn"] not in self.hidden
        ]
        return page

    def running(self) -> set[str]:
        """Tasks Braket would run and bill: made and never cancelled."""
        return set(self.tasks) - set(self.cancelled)


class BraketUnderCore(DelegatingRunner):
    """The real Braket runner under the job core, whose test adapter prepares text: every
    job is sent as `prepared` (a Braket sweep of `bindings` tasks)."""

    def __init__(self, inner: BraketCloudRunner, prepared: PreparedJob) -> None:
        super().__init__(inner)
        self.prepared = prepared
        self.remote: dict[str, str] = {}

    async def submit(self, prepared: PreparedJob, job: Job) -> RunHandle:
        return await self.inner.submit(self.prepared, job)


def _prepare(tasks: int) -> PreparedJob:
    bindings = Bindings(("theta",), (tasks,), np.linspace(0, 1, tasks).reshape(tasks, 1))
    pubs = (SamplerPub(CircuitSource(CircuitLanguage.QASM3, SWEEP), bindings, 8),)
    return prepare_in_process(_cloud_adapter(), JobSpec(backend="sv1", pubs=pubs), seed=1)


# Prepared once, when the module is collected: the first compile warms Qiskit's OpenQASM 3
# parser (~1.5 s), which would otherwise land in whichever test runs first.
_SWEEPS = {tasks: _prepare(tasks) for tasks in (1, 2, 3)}


def _sweep(tasks: int) -> PreparedJob:
    return _SWEEPS[tasks]


async def _failed_job(
    store: SqliteStore, fake: LaggingBraket, tasks: int
) -> tuple[Job, BraketCloudRunner]:
    """The job, once FAILED, and the Braket runner that ran it (to run its upkeep)."""
    braket = _runner(fake)
    runner = BraketUnderCore(braket, _sweep(tasks))
    core = await build_core(store, "memory", {"qpu": runner})  # type: ignore[dict-item]
    try:
        job = await core.submit("alice", spec("qpu"))
        return await core.until("alice", job.id, "FAILED"), braket
    finally:
        await core.manager.close()


async def test_a_lost_task_the_search_shows_late_is_not_left_running(store: SqliteStore) -> None:
    # One task; its create made it at AWS and the answer was lost. The tag search does not show
    # it yet, neither to submit's look-up nor to the job core's, so the job fails. The task
    # then shows up in the search (it exists at AWS all along): it runs and bills, no gateway
    # job follows it, and the tenant is charged nothing for it.
    fake = LaggingBraket(lose_answer=0, hide_lost=True)
    failed, braket = await _failed_job(store, fake, tasks=1)
    assert failed.error is not None and len(fake.tasks) == 1
    assert fake.running() == set(fake.tasks)  # not in the search: not known yet
    fake.hidden.clear()  # the search catches up
    await braket.maintain()  # the backend's next upkeep (before each health probe)
    assert fake.running() == set()


async def test_task_k_lost_after_tasks_before_it_were_made_is_not_left_running(
    store: SqliteStore,
) -> None:
    # Three tasks; the second's create made it and lost the answer. Submit's tag search sees
    # the first only: it cancels that one and fails the job BACKEND_FAULT, never looked up
    # again. The second task runs at AWS for nobody.
    fake = LaggingBraket(lose_answer=1, hide_lost=True)
    failed, braket = await _failed_job(store, fake, tasks=3)
    assert failed.error is not None and len(fake.tasks) == 2
    assert fake.running() == {list(fake.tasks)[1]}  # the one it knew of is cancelled
    fake.hidden.clear()
    await braket.maintain()
    assert fake.running() == set()


async def test_part_of_a_job_found_by_the_core_look_up_is_cancelled_when_it_fails(
    store: SqliteStore,
) -> None:
    # Two tasks; the first's create made it and lost its answer, and submit's own tag search
    # was out of reach too, so submit (no task in hand) leaves it to the job core. The core's
    # look-up (search back) finds task 0 of 2: reattach answers None ("submit the rest"), but
    # the core does not submit again after an uncertain submit: it fails the job. No lag
    # needed: task 0 is in the search, and nothing cancels it.
    fake = LaggingBraket(lose_answer=0, search_down=1)
    failed, _ = await _failed_job(store, fake, tasks=2)
    assert failed.error is not None and len(fake.tasks) == 1
    assert fake.running() == set()  # cancelled as the job failed, no upkeep needed


class DiesAfterCreating(BraketUnderCore):
    """The gateway dies (SIGKILL, simulated: the core is closed) after Braket made the job's
    tasks and before their ARNs were stored: the create's answer never reaches the core."""

    def __init__(self, inner: BraketCloudRunner, prepared: PreparedJob) -> None:
        super().__init__(inner, prepared)
        self.created = asyncio.Event()

    async def submit(self, prepared: PreparedJob, job: Job) -> RunHandle:
        await super().submit(prepared, job)
        self.created.set()
        await asyncio.Event().wait()
        raise AssertionError("unreachable")


@pytest.mark.parametrize("cancelled", [False, True])
async def test_a_restart_between_create_and_storing_the_arns_leaves_no_stray(
    store: SqliteStore, cancelled: bool
) -> None:
    # Two tasks made, then the gateway dies; at the restart the tag search does not show them
    # yet. Not cancelled: submitted again under the same client tokens, Braket answers with
    # the tasks it has (no third task), which the job follows. Cancelled while its submit was
    # unanswered: CANCELLED unsent, and its tasks are cancelled once the search shows them.
    fake = LaggingBraket()
    first = DiesAfterCreating(_runner(fake), _sweep(2))
    core = await build_core(store, "memory", {"qpu": first})  # type: ignore[dict-item]
    job = await core.submit("alice", spec("qpu"))
    await asyncio.wait_for(first.created.wait(), 5)
    if cancelled:
        await core.manager.cancel("alice", job.id)
        await core.until("alice", job.id, "CANCELLING")
    await core.manager.close()
    made = list(fake.tasks)
    assert len(made) == 2
    fake.hidden.update(made)
    braket = _runner(fake)  # a new process: nothing in memory, Braket kept its tasks
    runner = BraketUnderCore(braket, _sweep(2))
    core2 = await build_core(store, "memory", {"qpu": runner}, clock=core.clock)  # type: ignore[dict-item]
    try:
        if not cancelled:
            running = await core2.until("alice", job.id, "RUNNING")
            assert running.remote_id == " ".join(made) and list(fake.tasks) == made
            assert fake.cancelled == []
            return
        await core2.until("alice", job.id, "CANCELLED")
        fake.hidden.clear()
        await braket.maintain()
        assert fake.running() == set() and list(fake.tasks) == made
    finally:
        await core2.manager.close()


def test_the_stub_fake_keeps_the_state_it_is_given() -> None:
    # The fake's own bookkeeping, which the tests above read: a lagging or failing search.
    fake = LaggingBraket(search_down=1)
    with pytest.raises(Exception, match="InternalServiceException"):
        fake.search_quantum_tasks(filters=[{"name": "deviceArn"}])
    fake.tasks["a"] = {"quantumTaskArn": "a", "tags": {}}
    fake.hidden.add("a")
    assert fake.search_quantum_tasks(filters=[{"name": "deviceArn"}])["quantumTasks"] == []
    assert fake.running() == {"a"}


async def test_a_runner_whose_upkeep_fails_keeps_its_health_probes(store: SqliteStore) -> None:
    # The stray watch runs in the runner's upkeep, called by the health monitor before each
    # probe: an upkeep that raised ended the monitor's loop, and with it the backend's probes
    # (its health then frozen at its last answer for good).
    from gateway.runtime.health import HealthMonitor
    from tests.core_harness import ScriptedRunner

    probed = asyncio.Event()

    class FailingUpkeep(ScriptedRunner):
        async def maintain(self) -> None:
            raise RuntimeError("upkeep failed")

        async def probe(self, prepared: PreparedJob, timeout: float) -> None:
            probed.set()

    runner = FailingUpkeep()
    core = await build_core(store, "memory", {"main": runner})

    async def prepare_probe(seed: int) -> PreparedJob:
        return PreparedJob(payload=(), memory_bytes=0, layouts=())

    async def on_change(_: str) -> None:
        return None

    monitor = HealthMonitor(
        "main",
        runner,
        prepare_probe,
        core.backends["main"].health,
        interval_s=0.01,
        timeout_s=1.0,
        on_change=on_change,
    )
    loop = asyncio.create_task(monitor.run())
    try:
        await asyncio.wait_for(probed.wait(), 10)
        assert not loop.done()
    finally:
        loop.cancel()
        await asyncio.gather(loop, return_exceptions=True)
        await core.manager.close()
