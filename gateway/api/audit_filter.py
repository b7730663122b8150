"""ListAuditRecordsRequest.filter: the ListJobs filter language over an audit record's fields.

    comparison := ("tenant" | "principal" | "method" | "service") ("=" | "!=") STRING
                | "time" (">" | ">=" | "<" | "<=") STRING          -- RFC 3339

Clauses are joined by AND; "(" a OR b ")" joins comparisons on one field. Anything else is
INVALID_ARGUMENT, reason INVALID_FILTER, with the character position (as for ListJobs).
"""

from __future__ import annotations

from gateway.api.job_filter import (
    MAX_DEPTH,
    MAX_FILTER_CHARS,
    _timestamp_ns,
    _Token,
    _tokens,
    invalid_filter,
)
from gateway.domain.audit import (
    FILTER_TEXT_FIELDS,
    FILTER_TIME_FIELD,
    AuditComparison,
    AuditFilter,
)

_FIELDS = ", ".join((*FILTER_TEXT_FIELDS, FILTER_TIME_FIELD))
_TEXT_OPS = ("=", "!=")
_TIME_OPS = (">", ">=", "<", "<=")
MAX_TEXT_CHARS = 512


class _Parser:
    def __init__(self, text: str) -> None:
        self._tokens = _tokens(text)
        self._i = 0

    def _next(self) -> _Token:
        token = self._tokens[self._i]
        if token.kind != "end":
            self._i += 1
        return token

    def parse(self) -> AuditFilter:
        if self._tokens[self._i].kind == "end":
            return AuditFilter()
        clauses = [self._clause()]
        while (token := self._next()).kind != "end":
            if token.kind != "name" or token.text != "AND":
                raise invalid_filter(token.pos, "expected AND between comparisons")
            clauses.append(self._clause())
        return AuditFilter(tuple(clauses))

    def _clause(self) -> tuple[AuditComparison, ...]:
        if self._tokens[self._i].kind == "(":
            return tuple(self._group(1))
        return (self._comparison(),)

    def _group(self, depth: int) -> list[AuditComparison]:
        opening = self._next()
        if depth > MAX_DEPTH:
            raise invalid_filter(
                opening.pos, f"parentheses nest deeper than {MAX_DEPTH}", limit=MAX_DEPTH
            )
        out: list[AuditComparison] = []
        while True:
            start = self._tokens[self._i].pos
            if self._tokens[self._i].kind == "(":
                out.extend(self._group(depth + 1))
            else:
                out.append(self._comparison())
            if out[-1].field != out[0].field:
                raise invalid_filter(start, "OR joins comparisons on one field only")
            token = self._next()
            if token.kind == ")":
                return out
            if token.kind != "name" or token.text != "OR":
                raise invalid_filter(token.pos, "expected OR or ')'")

    def _comparison(self) -> AuditComparison:
        token = self._next()
        if token.kind != "name" or token.text not in (*FILTER_TEXT_FIELDS, FILTER_TIME_FIELD):
            raise invalid_filter(token.pos, f"expected a field: {_FIELDS}")
        field = token.text
        ops = _TIME_OPS if field == FILTER_TIME_FIELD else _TEXT_OPS
        op = self._next()
        if op.kind != "op" or op.text not in ops:
            raise invalid_filter(op.pos, f"{field} takes the operators {' '.join(ops)}")
        value = self._next()
        if value.kind != "string":
            raise invalid_filter(value.pos, "expected a quoted string")
        if field == FILTER_TIME_FIELD:
            ns = _timestamp_ns(value.text, value.pos)
            # Records keep microseconds: round so the comparison stays exact.
            us = ns // 1000 if op.text in (">", "<=") else -(-ns // 1000)
            return AuditComparison(field, op.text, us)
        if len(value.text) > MAX_TEXT_CHARS:
            raise invalid_filter(value.pos, f"a value is at most {MAX_TEXT_CHARS} characters")
        return AuditComparison(field, op.text, value.text)


def parse_audit_filter(text: str) -> AuditFilter:
    """The filter of ListAuditRecordsRequest.filter; INVALID_ARGUMENT (INVALID_FILTER) else."""
    if len(text) > MAX_FILTER_CHARS:
        raise invalid_filter(MAX_FILTER_CHARS, f"a filter is at most {MAX_FILTER_CHARS} characters")
    return _Parser(text).parse()
