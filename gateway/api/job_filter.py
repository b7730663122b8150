"""ListJobsRequest.filter: the documented AIP-160 subset, parsed into a domain JobFilter.

Grammar (whitespace between tokens is free; AND and OR are upper case, as in AIP-160):

    filter     := "" | clause ("AND" clause)*
    clause     := comparison | group
    group      := "(" alternative ("OR" alternative)* ")"     -- all on one field
    alternative:= comparison | group
    comparison := "state" ("=" | "!=") STATE
                | "backend" ("=" | "!=") STRING               -- "backends/{backend}"
                | "session" "=" STRING                        -- "sessions/{session}"
                | "labels." KEY ("=" | "!=") STRING           -- a label value
                | "labels" ":" KEY                            -- has the label
                | "create_time" (">" | ">=" | "<" | "<=") STRING   -- RFC 3339, ASCII digits
    STATE      := QUEUED | SUBMITTING | RUNNING | SUCCEEDED | FAILED | CANCELLED | CANCELLING,
                  each also with the prefix JOB_STATE_
    STRING     := "..." or '...', with \\\\, \\" and \\' as the only escapes

`labels.k != "v"` matches jobs whose label k is absent or has another value. Anything else,
a filter longer than MAX_FILTER_CHARS or parentheses nested deeper than MAX_DEPTH, is
INVALID_ARGUMENT, reason INVALID_FILTER, with the 0-based character position in ErrorInfo
metadata "position" and a field violation on "filter". Parsing is linear in the input.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from gateway.domain.errors import FieldViolation, InvalidArgument
from gateway.domain.job_filter import Comparison, FilterField, FilterOp, JobFilter
from gateway.domain.jobs import JobState
from gateway.domain.labels import LABEL_KEY, LABEL_VALUE

MAX_FILTER_CHARS = 2048
MAX_DEPTH = 8

# A resource id inside a name: what the gateway itself issues or configures.
_RESOURCE_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")
# ASCII digits only: `\d` would take any script's digits ("٢٠٢٦" read as 2026).
_RFC3339 = re.compile(
    r"(\d{4})-(\d{2})-(\d{2})[Tt](\d{2}):(\d{2}):(\d{2})(?:\.(\d{1,9}))?(?:([Zz])|([+-])(\d{2}):(\d{2}))",
    re.ASCII,
)
_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_.-]*")
_OPERATORS = ("!=", ">=", "<=", "=", ">", "<", ":")
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)

_FIELD_OPS: dict[FilterField, frozenset[FilterOp]] = {
    FilterField.STATE: frozenset({FilterOp.EQ, FilterOp.NE}),
    FilterField.BACKEND: frozenset({FilterOp.EQ, FilterOp.NE}),
    FilterField.SESSION: frozenset({FilterOp.EQ}),
    FilterField.LABEL: frozenset({FilterOp.EQ, FilterOp.NE}),
    FilterField.CREATE_TIME: frozenset({FilterOp.GT, FilterOp.GE, FilterOp.LT, FilterOp.LE}),
}
_STATE_NAMES = (
    "QUEUED",
    "SUBMITTING",
    "RUNNING",
    "SUCCEEDED",
    "FAILED",
    "CANCELLED",
    "CANCELLING",
)


def invalid_filter(position: int, problem: str, *, limit: int | None = None) -> InvalidArgument:
    """INVALID_FILTER; `limit`, the bound the problem quotes, is in the metadata too."""
    metadata = {"position": str(position)}
    if limit is not None:
        metadata["limit"] = str(limit)
    return InvalidArgument(
        "INVALID_FILTER",
        f"filter: at character {position}: {problem}",
        metadata=metadata,
        field_violations=[FieldViolation("filter", f"at character {position}: {problem}")],
    )


@dataclass(frozen=True)
class _Token:
    kind: str  # "name", "string", "op", "(", ")", "end"
    text: str
    pos: int


def _string(text: str, start: int) -> tuple[str, int]:
    """The literal starting at `start` (a quote) and the position after it."""
    quote = text[start]
    out: list[str] = []
    i = start + 1
    while i < len(text):
        ch = text[i]
        if ch == quote:
            return "".join(out), i + 1
        if ch == "\\":
            if i + 1 < len(text) and text[i + 1] in "\\\"'":
                out.append(text[i + 1])
                i += 2
                continue
            raise invalid_filter(i, "only \\\\, \\\" and \\' are escapes in a string")
        out.append(ch)
        i += 1
    raise invalid_filter(start, "unterminated string")


def _tokens(text: str) -> list[_Token]:
    tokens: list[_Token] = []
    i = 0
    while i < len(text):
        ch = text[i]
        if ch in " \t\r\n":
            i += 1
        elif ch in "()":
            tokens.append(_Token(ch, ch, i))
            i += 1
        elif ch in "\"'":
            value, end = _string(text, i)
            tokens.append(_Token("string", value, i))
            i = end
        elif (m := _NAME.match(text, i)) is not None:
            tokens.append(_Token("name", m.group(), i))
            i = m.end()
        else:
            op = next((o for o in _OPERATORS if text.startswith(o, i)), None)
            if op is None:
                raise invalid_filter(i, f"unexpected character {ch!r}")
            tokens.append(_Token("op", op, i))
            i += len(op)
    tokens.append(_Token("end", "", len(text)))
    return tokens


def _timestamp_ns(value: str, pos: int) -> int:
    m = _RFC3339.fullmatch(value)
    if m is None:
        raise invalid_filter(pos, 'create_time needs an RFC 3339 time, e.g. "2026-01-01T00:00:00Z"')
    year, month, day, hour, minute, second = (int(m.group(k)) for k in range(1, 7))
    fraction = m.group(7) or ""
    try:
        offset_s = 0
        if m.group(9) is not None:
            hours, minutes = int(m.group(10)), int(m.group(11))
            if hours > 23 or minutes > 59:
                raise ValueError("offset out of range")
            offset_s = (hours * 60 + minutes) * 60 * (-1 if m.group(9) == "-" else 1)
        local = datetime(year, month, day, hour, minute, second, tzinfo=UTC)
    except ValueError:
        raise invalid_filter(pos, f"{value!r} is not a valid time") from None
    # Integer arithmetic: an offset may move a time just past the datetime range.
    seconds = (local - _EPOCH) // timedelta(seconds=1) - offset_s
    return seconds * 1_000_000_000 + int(fraction.ljust(9, "0") or 0)


class _Parser:
    def __init__(self, text: str) -> None:
        self._tokens = _tokens(text)
        self._i = 0

    def _peek(self) -> _Token:
        return self._tokens[self._i]

    def _next(self) -> _Token:
        token = self._tokens[self._i]
        if token.kind != "end":
            self._i += 1
        return token

    def parse(self) -> JobFilter:
        if self._peek().kind == "end":
            return JobFilter()
        clauses = [self._clause()]
        while (token := self._next()).kind != "end":
            if token.kind == "name" and token.text == "AND":
                clauses.append(self._clause())
            elif token.kind == "name" and token.text == "OR":
                raise invalid_filter(
                    token.pos, "OR joins comparisons on one field inside parentheses only"
                )
            else:
                raise invalid_filter(token.pos, "expected AND between comparisons")
        return JobFilter(tuple(clauses))

    def _clause(self) -> tuple[Comparison, ...]:
        if self._peek().kind == "(":
            return tuple(self._group(1))
        return (self._comparison(),)

    def _group(self, depth: int) -> list[Comparison]:
        opening = self._next()
        if depth > MAX_DEPTH:
            raise invalid_filter(
                opening.pos, f"parentheses nest deeper than {MAX_DEPTH}", limit=MAX_DEPTH
            )
        out: list[Comparison] = []
        positions: list[int] = []
        while True:
            start = self._peek().pos
            if self._peek().kind == "(":
                inner = self._group(depth + 1)
                out.extend(inner)
                positions.extend([start] * len(inner))
            else:
                out.append(self._comparison())
                positions.append(start)
            token = self._next()
            if token.kind == ")":
                break
            if token.kind == "name" and token.text == "OR":
                continue
            if token.kind == "name" and token.text == "AND":
                raise invalid_filter(token.pos, "AND is not supported inside parentheses")
            raise invalid_filter(token.pos, "expected OR or ')'")
        field = (out[0].field, out[0].key)
        for comparison, pos in zip(out, positions, strict=True):
            if (comparison.field, comparison.key) != field:
                raise invalid_filter(pos, "OR joins comparisons on one field only")
        return out

    def _comparison(self) -> Comparison:
        token = self._next()
        if token.kind != "name":
            raise invalid_filter(
                token.pos, "expected a field: state, backend, session, labels, create_time"
            )
        name = token.text
        if name == "labels":
            colon = self._next()
            if colon.kind != "op" or colon.text != ":":
                raise invalid_filter(colon.pos, "expected labels.<key> or labels:<key>")
            key = self._next()
            if key.kind != "name" or not LABEL_KEY.fullmatch(key.text):
                raise invalid_filter(key.pos, "a label key matches [a-z][a-z0-9_-]{0,62}")
            return Comparison(FilterField.LABEL, FilterOp.HAS, "", key.text)
        label_key = ""
        if name.startswith("labels."):
            label_key = name.removeprefix("labels.")
            if not LABEL_KEY.fullmatch(label_key):
                raise invalid_filter(token.pos + 7, "a label key matches [a-z][a-z0-9_-]{0,62}")
            field = FilterField.LABEL
        else:
            try:
                field = FilterField(name)
            except ValueError:
                raise invalid_filter(
                    token.pos,
                    f"unknown field {name[:64]!r}: state, backend, session, labels, create_time",
                ) from None
        op_token = self._next()
        ops = _FIELD_OPS[field]
        op = FilterOp(op_token.text) if op_token.kind == "op" else None
        if op is None or op not in ops:
            allowed = " ".join(sorted(o.value for o in ops))
            raise invalid_filter(op_token.pos, f"{name[:64]} takes the operators {allowed}")
        value = self._next()
        return Comparison(field, op, self._value(field, value), label_key)

    def _value(self, field: FilterField, token: _Token) -> JobState | str | int:
        if field is FilterField.STATE:
            name = token.text.removeprefix("JOB_STATE_")
            if token.kind != "name" or name not in _STATE_NAMES:
                raise invalid_filter(token.pos, f"a state is one of {', '.join(_STATE_NAMES)}")
            try:
                return JobState(name)
            except ValueError:  # a documented state this gateway does not have yet
                raise invalid_filter(token.pos, f"unknown state {name}") from None
        if token.kind != "string":
            raise invalid_filter(token.pos, "expected a quoted string")
        value = token.text
        if field is FilterField.BACKEND:
            return _resource_id(value, "backends/", token.pos)
        if field is FilterField.SESSION:
            return _resource_id(value, "sessions/", token.pos)
        if field is FilterField.LABEL:
            if not LABEL_VALUE.fullmatch(value):
                raise invalid_filter(token.pos, "a label value matches [a-z0-9_-]{0,63}")
            return value
        return _timestamp_ns(value, token.pos)


def _resource_id(value: str, prefix: str, pos: int) -> str:
    ident = value.removeprefix(prefix)
    if not value.startswith(prefix) or not _RESOURCE_ID.fullmatch(ident):
        raise invalid_filter(pos, f'expected a resource name "{prefix}{{id}}"')
    return ident


def parse_filter(text: str) -> JobFilter:
    """The JobFilter of ListJobsRequest.filter; INVALID_ARGUMENT (INVALID_FILTER) otherwise."""
    if len(text) > MAX_FILTER_CHARS:
        raise invalid_filter(
            MAX_FILTER_CHARS,
            f"a filter is at most {MAX_FILTER_CHARS} characters",
            limit=MAX_FILTER_CHARS,
        )
    return _Parser(text).parse()
