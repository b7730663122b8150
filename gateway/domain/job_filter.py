"""A parsed ListJobs filter: an AND of clauses, each an OR of comparisons on one field.

gateway.api.job_filter parses the AIP-160 text into this; the store executes it (in SQL, with
bound parameters). Values are already normalised: states as JobState, backends and sessions as
bare ids, times as integer nanoseconds since the Unix epoch (RFC 3339 allows nanoseconds, the
store keeps microseconds: comparing in nanoseconds keeps `>=` and `>` exact).
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

from gateway.domain.jobs import JobState


class FilterField(enum.Enum):
    STATE = "state"
    BACKEND = "backend"
    SESSION = "session"
    LABEL = "labels"
    CREATE_TIME = "create_time"


class FilterOp(enum.Enum):
    EQ = "="
    NE = "!="
    GT = ">"
    GE = ">="
    LT = "<"
    LE = "<="
    HAS = ":"


@dataclass(frozen=True)
class Comparison:
    """`field op value`; for labels, `key` names the label (`labels.key = "v"`, `labels:key`).

    value: a JobState for STATE, a bare id for BACKEND and SESSION, the label value for LABEL
    ("" for HAS), nanoseconds since the epoch for CREATE_TIME.
    """

    field: FilterField
    op: FilterOp
    value: JobState | str | int
    key: str = ""

    def sort_key(self) -> tuple[str, str, str, str]:
        value = self.value.value if isinstance(self.value, JobState) else str(self.value)
        return (self.field.value, self.key, self.op.value, value)

    def text(self) -> str:
        """The comparison in canonical filter syntax."""
        if self.field is FilterField.LABEL:
            if self.op is FilterOp.HAS:
                return f"labels:{self.key}"
            return f'labels.{self.key} {self.op.value} "{self.value}"'
        if isinstance(self.value, JobState):
            return f"state {self.op.value} {self.value.value}"
        if self.field is FilterField.STATE:  # a session state (ListSessions), by name
            return f"state {self.op.value} {self.value}"
        if self.field is FilterField.BACKEND:
            return f'backend {self.op.value} "backends/{self.value}"'
        if self.field is FilterField.SESSION:
            return f'session {self.op.value} "sessions/{self.value}"'
        return f"create_time {self.op.value} {self.value}ns"


@dataclass(frozen=True)
class JobFilter:
    """AND over `clauses`; each clause is an OR over its comparisons (all on one field).

    The empty filter matches every job.
    """

    clauses: tuple[tuple[Comparison, ...], ...] = ()

    def canonical(self) -> str:
        """A normal form: equal for filters that differ only in spelling (JOB_STATE_ prefixes,
        spacing, redundant parentheses, order of clauses or of comparisons in a clause). Page
        tokens are bound to it."""
        clauses = sorted(
            {tuple(sorted(set(c), key=Comparison.sort_key)) for c in self.clauses},
            key=lambda clause: [c.sort_key() for c in clause],
        )
        return " AND ".join(
            "(" + " OR ".join(c.text() for c in clause) + ")"
            if len(clause) > 1
            else clause[0].text()
            for clause in clauses
        )
