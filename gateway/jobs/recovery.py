"""Recovery at start, for a gateway that is the only user of its store (the in-memory queue).

A simulator job interrupted by the crash ran in a worker that died with the gateway: it is
queued again (it may execute again; one record and one committed result per job still hold). A
provider job that was SUBMITTING or RUNNING is re-attached by its stored remote id (or by the
gateway job id as the provider's idempotency token), never submitted twice. A job whose backend
is gone fails with BACKEND_NOT_FOUND.

With the claim queue, replicas share the store and nothing is recovered at start: a dead
holder's claims lapse and are claimed again, through the same runner step.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from datetime import timedelta

from gateway.domain.jobs import Job, JobError, JobState
from gateway.jobs.backend import BackendRuntime
from gateway.jobs.queue_port import Claim
from gateway.jobs.transitions import Transitions

log = logging.getLogger(__name__)

# Re-attached jobs are held under this claim owner; the memory queue does not know them.
RECOVERY_OWNER = "recovery"

Adopt = Callable[[BackendRuntime, Claim], None]


async def recover(
    backends: Mapping[str, BackendRuntime], transitions: Transitions, adopt: Adopt
) -> list[Job]:
    """Re-queues and re-attaches the store's non-final jobs; returns them. The changes the
    store's recovery commits are published as every other transition is (watchers, then
    hooks: the jobs it cancelled are finished jobs to metrics and the transition log)."""
    recovered = await transitions.store.recover(transitions.clock())
    jobs = list(recovered.jobs)
    for requeued in recovered.requeued:
        # Before anything else of the job (its BACKEND_NOT_FOUND end below): in order.
        transitions.committed(requeued, JobState.RUNNING)
    for job in jobs:
        runtime = backends.get(job.placement)
        if runtime is None:
            await transitions.finish(
                job,
                JobState.FAILED,
                error=JobError.of(
                    "BACKEND_NOT_FOUND",
                    f"backend backends/{job.placement} is no longer configured",
                    {"backend": f"backends/{job.placement}"},
                ),
            )
            continue
        if job.state is JobState.QUEUED:
            await runtime.queue.put(job, None)
            continue
        # SUBMITTING, RUNNING or CANCELLING with a remote id: the runner step re-attaches
        # (and, for CANCELLING, cancels at the provider).
        log.info("job %s: re-attaching (%s, remote id %s)", job.id, job.state.value, job.remote_id)
        lease = transitions.clock() + timedelta(days=3650)
        runtime.queue.adopt(job)
        adopt(runtime, Claim(job, None, RECOVERY_OWNER, lease))
    for cancelled in recovered.cancelled:
        # After the others are queued or adopted: a session hearing one of its jobs end asks
        # its queues whether the session has work left (a CLOSING one without is closed).
        transitions.committed(cancelled, JobState.CANCELLING)
    return jobs
