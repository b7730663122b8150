"""Which Claim objects a queue still honours.

A claim is handed out once and renewed any number of times; each renewal is a new (frozen)
Claim object. Its holder may pass any of them back (the first one to done(), the latest to
renew()): they are one claim. A claim handed out again after its lease lapsed is another claim,
and every object of the old one is then refused.
"""

from __future__ import annotations

import itertools
import weakref
from collections.abc import Iterator

from gateway.jobs.queue_port import Claim


class ClaimBook:
    """The current claim of each job a queue handed out, and the objects that stand for it."""

    def __init__(self) -> None:
        self._current: dict[str, tuple[int, Claim]] = {}
        # Claim object -> the hand-out it belongs to. Weak: objects the holder dropped go.
        self._hand_out: weakref.WeakKeyDictionary[Claim, int] = weakref.WeakKeyDictionary()
        self._numbers = itertools.count(1)

    def issue(self, claim: Claim) -> None:
        """Records a new hand-out of claim.job; any earlier claim on the job is over."""
        number = next(self._numbers)
        self._hand_out[claim] = number
        self._current[claim.job.id] = (number, claim)

    def renewed(self, old: Claim, new: Claim) -> None:
        """Records `new` as the latest object of `old`'s claim (which must be current)."""
        number = self._hand_out[old]
        self._hand_out[new] = number
        self._current[new.job.id] = (number, new)

    def holds(self, claim: Claim) -> bool:
        """Whether `claim` (any object of it) is its job's current claim here."""
        current = self._current.get(claim.job.id)
        return current is not None and self._hand_out.get(claim) == current[0]

    def current(self, job_id: str) -> Claim | None:
        """The latest object of the job's current claim."""
        current = self._current.get(job_id)
        return None if current is None else current[1]

    def drop(self, job_id: str) -> None:
        """Ends the job's current claim."""
        self._current.pop(job_id, None)

    def __contains__(self, job_id: object) -> bool:
        return job_id in self._current

    def claims(self) -> Iterator[Claim]:
        """The latest object of every current claim."""
        return (claim for _, claim in self._current.values())
