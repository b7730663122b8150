"""Lifecycle hooks: telemetry, metrics and audit observe every job transition without editing
the job core.

A hook sees each committed transition once, in order for a given job, on the event loop: it must
be quick and must not block (hand slow work to its own queue). A hook that raises is logged and
never breaks the job.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Protocol

from gateway.domain.jobs import Job, JobState
from gateway.runtime.breaker import BreakerMove

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Transition:
    """A job entered `job.state`, coming from `previous` (None: the job was just created).

    `breaker`: this job's outcome moved its backend's circuit breaker."""

    job: Job
    previous: JobState | None
    at: datetime
    breaker: BreakerMove | None = None


class LifecycleHook(Protocol):
    def on_transition(self, transition: Transition) -> None: ...


class Hooks:
    """The hooks of one gateway, called in registration order."""

    def __init__(self, hooks: Sequence[LifecycleHook] = ()) -> None:
        self._hooks = list(hooks)

    def add(self, hook: LifecycleHook) -> None:
        self._hooks.append(hook)

    def notify(self, transition: Transition) -> None:
        for hook in self._hooks:
            try:
                hook.on_transition(transition)
            except Exception:
                log.exception("lifecycle hook %r failed on job %s", hook, transition.job.id)
