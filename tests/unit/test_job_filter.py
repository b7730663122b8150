"""ListJobs filter parsing: the documented subset, exact refusals with positions, hostile input."""

from __future__ import annotations

import time

import pytest

from gateway.api.job_filter import MAX_DEPTH, MAX_FILTER_CHARS, parse_filter
from gateway.domain.errors import InvalidArgument
from gateway.domain.job_filter import Comparison, FilterField, FilterOp, JobFilter
from gateway.domain.jobs import JobState

NS = 1_000_000_000
T2026 = 1767225600  # 2026-01-01T00:00:00Z


def _refused(text: str) -> InvalidArgument:
    with pytest.raises(InvalidArgument) as exc:
        parse_filter(text)
    err = exc.value
    assert err.reason == "INVALID_FILTER"
    assert [v.field for v in err.field_violations] == ["filter"]
    assert err.metadata["position"] in err.message
    return err


def test_the_documented_example() -> None:
    parsed = parse_filter(
        'state = RUNNING AND labels.team = "qml" AND create_time >= "2026-12-01T00:00:00Z"'
    )
    assert parsed == JobFilter(
        (
            (Comparison(FilterField.STATE, FilterOp.EQ, JobState.RUNNING),),
            (Comparison(FilterField.LABEL, FilterOp.EQ, "qml", "team"),),
            (Comparison(FilterField.CREATE_TIME, FilterOp.GE, 1796083200 * NS),),
        )
    )


def test_every_documented_form() -> None:
    parsed = parse_filter(
        "state != JOB_STATE_FAILED AND backend = \"backends/aer\" AND backend != 'backends/b' "
        'AND session = "sessions/s1" AND labels.a-b_c != "" AND labels:k AND '
        '(create_time > "2026-01-01T00:00:00Z" OR create_time <= "2026-01-01T01:00:00.5+01:00") '
        'AND create_time < "2026-01-01T00:00:00.000000001z"'
    )
    assert parsed.clauses == (
        (Comparison(FilterField.STATE, FilterOp.NE, JobState.FAILED),),
        (Comparison(FilterField.BACKEND, FilterOp.EQ, "aer"),),
        (Comparison(FilterField.BACKEND, FilterOp.NE, "b"),),
        (Comparison(FilterField.SESSION, FilterOp.EQ, "s1"),),
        (Comparison(FilterField.LABEL, FilterOp.NE, "", "a-b_c"),),
        (Comparison(FilterField.LABEL, FilterOp.HAS, "", "k"),),
        (
            Comparison(FilterField.CREATE_TIME, FilterOp.GT, T2026 * NS),
            Comparison(FilterField.CREATE_TIME, FilterOp.LE, T2026 * NS + NS // 2),
        ),
        (Comparison(FilterField.CREATE_TIME, FilterOp.LT, T2026 * NS + 1),),
    )


@pytest.mark.parametrize(
    "state", ["QUEUED", "SUBMITTING", "RUNNING", "SUCCEEDED", "FAILED", "CANCELLED", "CANCELLING"]
)
def test_every_documented_state(state: str) -> None:
    assert parse_filter(f"state = {state}") == parse_filter(f"state = JOB_STATE_{state}")


def test_empty_and_blank_filters_match_everything() -> None:
    assert parse_filter("") == JobFilter()
    assert parse_filter(" \t\r\n ") == JobFilter()


@pytest.mark.parametrize(
    ("left", "right"),
    [
        ("state=RUNNING", "state = JOB_STATE_RUNNING"),
        ("state = RUNNING AND backend = 'backends/a'", 'backend="backends/a" AND state=RUNNING'),
        ("(state = QUEUED OR state = RUNNING)", "((state = RUNNING) OR state = QUEUED)"),
        ("labels:a AND labels:a", "labels:a"),
        ('create_time >= "2026-01-01T01:00:00+01:00"', 'create_time >= "2026-01-01T00:00:00Z"'),
    ],
)
def test_spellings_of_one_query_have_one_canonical_form(left: str, right: str) -> None:
    assert parse_filter(left).canonical() == parse_filter(right).canonical()


def test_different_queries_have_different_canonical_forms() -> None:
    texts = [
        "",
        "state = RUNNING",
        "state != RUNNING",
        "(state = RUNNING OR state = QUEUED)",
        "state = RUNNING AND state = QUEUED",
        "labels:a",
        'labels.a = ""',
        'labels.a != ""',
        'backend = "backends/a"',
        'session = "sessions/a"',
        'create_time > "2026-01-01T00:00:00Z"',
        'create_time >= "2026-01-01T00:00:00Z"',
    ]
    assert len({parse_filter(t).canonical() for t in texts}) == len(texts)


@pytest.mark.parametrize(
    ("text", "position"),
    [
        ("state = RUNNING OR state = QUEUED", 16),  # OR outside parentheses
        ('(state = RUNNING OR backend = "backends/a")', 20),  # OR across fields
        ('(labels.a = "x" OR labels.b = "x")', 19),  # OR across label keys
        ('(state = RUNNING AND backend = "backends/a")', 17),  # AND inside parentheses
        ('state = RUNNING backend = "backends/a"', 16),  # implicit AND
        ("state = RUNNING and state = QUEUED", 16),  # lower-case keyword
        ("NOT state = RUNNING", 0),
        ("-state = RUNNING", 0),
        ("state = running", 8),
        ("state = UNSPECIFIED", 8),
        ("state = JOB_STATE_UNSPECIFIED", 8),
        ('state = "RUNNING"', 8),
        ("state < RUNNING", 6),
        ("state", 5),
        ("state =", 7),
        ("state = RUNNING AND", 19),
        ("AND state = RUNNING", 0),
        ("(", 1),
        ("()", 1),
        ("(state = RUNNING", 16),
        ("state = RUNNING)", 15),
        ('backend = "aer"', 10),  # names in full form
        ('backend = "backends/"', 10),
        ('backend = "backends/a/b"', 10),
        ("backend = backends", 10),
        ('backend > "backends/a"', 8),
        ('session != "sessions/s"', 8),
        ('session = "s"', 10),
        ('labels = "x"', 7),
        ("labels.A = 'x'", 7),
        ("labels.9 = 'x'", 7),
        ("labels.x = 'X'", 11),
        ("labels.x = 'a b'", 11),
        ("labels.x > 'a'", 9),
        ("labels:", 7),
        ("labels:'x'", 7),
        ("labels.x:y", 8),
        ("tenant = 'other'", 0),
        ("name = 'jobs/x'", 0),
        ('create_time = "2026-01-01T00:00:00Z"', 12),
        ('create_time != "2026-01-01T00:00:00Z"', 12),
        ('create_time > "2026-01-01"', 14),
        ('create_time > "2026-01-01 00:00:00Z"', 14),
        ('create_time > "2026-01-01T00:00:00"', 14),  # no offset
        ('create_time > "2026-02-30T00:00:00Z"', 14),
        ('create_time > "2026-01-01T24:00:00Z"', 14),
        ('create_time > "2026-01-01T00:00:60Z"', 14),  # leap seconds are not timestamps
        ('create_time > "2026-01-01T00:00:00+24:00"', 14),
        ('create_time > "2026-01-01T00:00:00.1234567890Z"', 14),
        ('create_time > "0000-01-01T00:00:00Z"', 14),
        ("create_time > 2026", 14),
        ("labels.x = 'unterminated", 11),
        ('labels.x = "bad \\n escape"', 16),
    ],
)
def test_each_malformed_filter_is_refused_at_its_position(text: str, position: int) -> None:
    err = _refused(text)
    assert err.metadata == {"position": str(position)}


@pytest.mark.parametrize(
    ("text", "position"),
    [
        # SQL injection through every place a client string goes.
        ('labels.x = "a\' OR 1=1 --"', 11),
        ('labels.x\' OR 1=1 -- = "a"', 8),
        ("backend = \"backends/a' OR '1'='1\"", 10),
        ('session = "sessions/x; DROP TABLE jobs; --"', 10),
        ('create_time > "2026-01-01T00:00:00Z\' OR 1=1"', 14),
        ("state = RUNNING; DROP TABLE jobs", 15),
        ('labels.x = "\\" OR 1=1 --"', 11),
        ('labels.x = "a" -- comment', 15),
        ("state = RUNNING /* */", 16),
        # Unicode: look-alikes, invisible and control characters, escapes that are not ours.
        ("\uff53tate = RUNNING", 0),  # fullwidth s
        ("state\u200b = RUNNING", 5),
        ("state = RUNNİNG", 12),  # RUNN is a name, İ is no character of ours
        ('labels.x = "é"', 11),
        ('labels.x = "\U0001f600"', 11),
        ("labels.é = 'x'", 7),
        ("state = RUNNING\x00", 15),
        ('labels.x = "\\u0041"', 12),
        ("\u202estate = RUNNING", 0),
    ],
)
def test_hostile_filters_are_refused_exactly(text: str, position: int) -> None:
    assert _refused(text).metadata == {"position": str(position)}


def test_parentheses_nest_at_most_max_depth() -> None:
    ok = "(" * MAX_DEPTH + "state = RUNNING" + ")" * MAX_DEPTH
    assert parse_filter(ok) == parse_filter("state = RUNNING")
    deeper = "(" * (MAX_DEPTH + 1) + "state = RUNNING" + ")" * (MAX_DEPTH + 1)
    assert _refused(deeper).metadata == {"position": str(MAX_DEPTH), "limit": str(MAX_DEPTH)}


def test_a_filter_of_only_parentheses_fails_fast_without_recursing() -> None:
    started = time.process_time()
    err = _refused("(" * MAX_FILTER_CHARS)
    assert err.metadata == {"position": str(MAX_DEPTH), "limit": str(MAX_DEPTH)}
    assert time.process_time() - started < 1.0  # a bound that fails on runaway work only


def test_length_is_bounded_before_any_parsing() -> None:
    longest = " AND ".join(["labels:a"] * ((MAX_FILTER_CHARS + 5) // 13)).ljust(MAX_FILTER_CHARS)
    assert len(longest) == MAX_FILTER_CHARS
    parse_filter(longest)
    limits = {"position": str(MAX_FILTER_CHARS), "limit": str(MAX_FILTER_CHARS)}
    assert _refused(longest + " ").metadata == limits
    # Megabytes of anything are refused on their length alone.
    started = time.process_time()
    assert _refused("(" * 10_000_000).metadata == limits
    assert time.process_time() - started < 1.0


def test_the_longest_filters_parse_in_linear_time() -> None:
    worst = ("(" + " OR ".join(["labels:a"] * 200) + ")")[: MAX_FILTER_CHARS - 1]
    worst = worst[: worst.rfind(" OR ")] + ")"
    started = time.process_time()
    parsed = parse_filter(worst)
    assert len(parsed.clauses[0]) > 150
    assert time.process_time() - started < 1.0


def test_nanosecond_times_are_kept_exactly() -> None:
    (clause,) = parse_filter('create_time >= "1970-01-01T00:00:00.000000001Z"').clauses
    assert clause[0].value == 1
    (clause,) = parse_filter('create_time < "9999-12-31T23:59:59.999999999-00:30"').clauses
    assert clause[0].value == (253402300799 + 1800) * NS + 999_999_999
    (clause,) = parse_filter('create_time < "1969-12-31T23:59:59Z"').clauses
    assert clause[0].value == -NS


def test_what_the_python_client_builds_parses_as_meant() -> None:
    from qgateway.client import _list_filter

    text = _list_filter(
        'labels.team = "qml" AND create_time >= "2026-01-01T00:00:00Z"',
        ["RUNNING", "QUEUED"],
        "aer",
    )
    assert parse_filter(text) == parse_filter(
        'labels.team = "qml" AND create_time >= "2026-01-01T00:00:00Z" AND '
        '(state = QUEUED OR state = RUNNING) AND backend = "backends/aer"'
    )
    assert _list_filter("  ", (), "") == ""
    # A quote in a backend name stays inside the string (and is then refused as a name).
    hostile = _list_filter("", (), 'x" OR state = RUNNING')
    assert _refused(hostile).metadata == {"position": "10"}
