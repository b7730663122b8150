"""The jobs a cloud runner watches for provider work that nobody follows.

A create whose answer was lost may have made provider work (a Braket task, an IBM runtime
job) that the provider's search by the job's tag shows only later. The runner notes such a
job. Its tag is searched for strays (what no handle of this runner follows, cancelled) only
once the job core abandoned the job (it ended here without a handle, so no replica follows it
again) or, for a runner that says so, while this runner's own wait follows it (this replica
holds the job's claim): never while another replica may hold the job, whose provider work the
search would find and cancel. A note lasts WATCH_S from when it was last made; at most
MAX_JOBS are kept (the oldest given up); kept in memory only, and read from the runners'
worker threads too.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass, field

from gateway.domain.jobs import Job

log = logging.getLogger(__name__)

# One search per watched job at each upkeep (Braket: up to its search pages) for this long.
WATCH_S = 3600.0
MAX_JOBS = 100


@dataclass
class Watched:
    """A noted job. `settled`: provider ids never to cancel (followed by a handle of this
    runner, or cancelled already)."""

    job: Job
    until: float
    settled: set[str] = field(default_factory=set)
    abandoned: bool = False
    followed_here: bool = False


class StrayWatch:
    """The noted jobs of one runner; `what` names their provider work in the log."""

    def __init__(self, what: str) -> None:
        self._what = what
        self._jobs: OrderedDict[str, Watched] = OrderedDict()
        self._lock = threading.Lock()

    def note(self, job: Job) -> None:
        """Notes a job whose provider work may show up later (a note made again lasts WATCH_S
        from now, its settled ids kept)."""
        with self._lock:
            self._note(job)

    def abandon(self, job: Job) -> bool:
        """The job ends here without a handle: searched from now on, for WATCH_S. False (and
        nothing noted) when the runner was never unsure of it: a create refused outright made
        nothing."""
        with self._lock:
            if job.id not in self._jobs:
                return False
            self._note(job).abandoned = True
            return True

    def settle(self, job_id: str, remote_id: str) -> bool:
        """A handle of this runner follows `remote_id` (never cancelled); whether the job is
        noted."""
        with self._lock:
            watched = self._jobs.get(job_id)
            if watched is not None:
                watched.settled.add(remote_id)
            return watched is not None

    def follow_here(self, job_id: str, remote_id: str) -> None:
        """A wait of this runner follows the job's `remote_id`: a noted job is searched while
        it does."""
        with self._lock:
            watched = self._jobs.get(job_id)
            if watched is not None:
                watched.settled.add(remote_id)
                watched.followed_here = True

    def stop_following(self, job_id: str, ended: bool) -> None:
        """The wait ended; `ended`: not followed here again (a wait that lost touch is
        followed again). A note not abandoned is then dropped: another replica may hold the
        job next."""
        with self._lock:
            watched = self._jobs.get(job_id)
            if watched is None:
                return
            watched.followed_here = False
            if ended and not watched.abandoned:
                del self._jobs[job_id]

    def get(self, job_id: str) -> Watched | None:
        with self._lock:
            return self._jobs.get(job_id)

    def due(self) -> list[Watched]:
        """The jobs to search now (abandoned, or followed here); expired notes are dropped."""
        now = time.monotonic()
        with self._lock:
            for job_id in [j for j, w in self._jobs.items() if now >= w.until]:
                del self._jobs[job_id]
            return [w for w in self._jobs.values() if w.abandoned or w.followed_here]

    def _note(self, job: Job) -> Watched:
        watched = self._jobs.pop(job.id, None) or Watched(job, 0.0)
        watched.until = time.monotonic() + WATCH_S
        self._jobs[job.id] = watched
        while len(self._jobs) > MAX_JOBS:
            lost, _ = self._jobs.popitem(last=False)
            log.warning("job %s: no longer watched for stray %s", lost, self._what)
        return watched
