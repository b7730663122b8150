"""ListSessionsRequest.filter: the ListJobs filter language (gateway.api.job_filter) over a
session's fields.

    comparison := "state" ("=" | "!=") STATE       -- PENDING | ACTIVE | CLOSING | CLOSED |
                                                      FAILED, also with the prefix SESSION_STATE_
                | "backend" ("=" | "!=") STRING     -- "backends/{backend}"
                | "labels." KEY ("=" | "!=") STRING | "labels" ":" KEY
                | "create_time" (">" | ">=" | "<" | "<=") STRING   -- RFC 3339

Everything else (grouping, AND/OR, limits, errors: INVALID_ARGUMENT INVALID_FILTER) is as for
ListJobs. State values are carried as SessionState names.
"""

from __future__ import annotations

from gateway.api.job_filter import MAX_FILTER_CHARS, _Parser, _Token, invalid_filter
from gateway.domain.job_filter import FilterField, JobFilter
from gateway.domain.jobs import JobState
from gateway.domain.sessions import SessionState

_STATE_NAMES = tuple(s.value for s in SessionState)


class _SessionParser(_Parser):
    def _value(self, field: FilterField, token: _Token) -> JobState | str | int:
        if field is FilterField.SESSION:
            raise invalid_filter(
                token.pos, "sessions are filtered by state, backend, labels, create_time"
            )
        if field is FilterField.STATE:
            name = token.text.removeprefix("SESSION_STATE_")
            if token.kind != "name" or name not in _STATE_NAMES:
                raise invalid_filter(token.pos, f"a state is one of {', '.join(_STATE_NAMES)}")
            return name
        return super()._value(field, token)


def parse_session_filter(text: str) -> JobFilter:
    """The filter of ListSessionsRequest.filter; INVALID_ARGUMENT (INVALID_FILTER) otherwise."""
    if len(text) > MAX_FILTER_CHARS:
        raise invalid_filter(MAX_FILTER_CHARS, f"a filter is at most {MAX_FILTER_CHARS} characters")
    return _SessionParser(text).parse()
