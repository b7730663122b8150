"""A small PromQL scanner for checking dashboards and alert rules against the metric catalogue.

It does not evaluate PromQL; it finds what an expression names: metric selectors with their
label matchers, the labels of `by`/`without`/`on`/`ignoring`/`group_*` clauses, and the functions
called. Anything it does not recognise is an error rather than a silent pass, so a typo cannot
slip through as "not a metric". promtool, when installed, parses the same expressions fully.

Also here: `expand_grafana_variables`, which turns a Grafana query into plain PromQL.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

# PromQL's functions and aggregation operators (Prometheus 2.x and 3.x).
FUNCTIONS = frozenset(
    [
        "abs",
        "absent",
        "absent_over_time",
        "acos",
        "acosh",
        "asin",
        "asinh",
        "atan",
        "atanh",
        "avg_over_time",
        "ceil",
        "changes",
        "clamp",
        "clamp_max",
        "clamp_min",
        "cos",
        "cosh",
        "count_over_time",
        "day_of_month",
        "day_of_week",
        "day_of_year",
        "days_in_month",
        "deg",
        "delta",
        "deriv",
        "exp",
        "floor",
        "histogram_avg",
        "histogram_count",
        "histogram_fraction",
        "histogram_quantile",
        "histogram_stddev",
        "histogram_stdvar",
        "histogram_sum",
        "holt_winters",
        "hour",
        "idelta",
        "increase",
        "irate",
        "label_join",
        "label_replace",
        "last_over_time",
        "ln",
        "log10",
        "log2",
        "mad_over_time",
        "max_over_time",
        "min_over_time",
        "minute",
        "month",
        "predict_linear",
        "present_over_time",
        "quantile_over_time",
        "rad",
        "rate",
        "resets",
        "round",
        "scalar",
        "sgn",
        "sin",
        "sinh",
        "sort",
        "sort_by_label",
        "sort_by_label_desc",
        "sort_desc",
        "sqrt",
        "stddev_over_time",
        "stdvar_over_time",
        "sum_over_time",
        "tan",
        "tanh",
        "time",
        "timestamp",
        "vector",
        "year",
    ]
)
AGGREGATIONS = frozenset(
    [
        "sum",
        "min",
        "max",
        "avg",
        "group",
        "stddev",
        "stdvar",
        "count",
        "count_values",
        "bottomk",
        "topk",
        "quantile",
        "limitk",
        "limit_ratio",
    ]
)
GROUPING_KEYWORDS = frozenset(["by", "without", "on", "ignoring", "group_left", "group_right"])
OTHER_KEYWORDS = frozenset(["and", "or", "unless", "bool", "offset", "atan2"])

_TOKEN = re.compile(
    r"""
    (?P<space>\s+)
  | (?P<comment>\#[^\n]*)
  | (?P<string>"(?:[^"\\]|\\.)*"|'(?:[^'\\]|\\.)*'|`[^`]*`)
  | (?P<duration>(?:\d+(?:ms|[smhdwy]))+)(?![\w.])
  | (?P<number>(?:0x[0-9a-fA-F]+|\d+(?:\.\d*)?(?:[eE][+-]?\d+)?|\.\d+(?:[eE][+-]?\d+)?)
      |(?i:inf|nan)(?![\w:]))
  | (?P<ident>[A-Za-z_:][A-Za-z0-9_:]*)
  | (?P<op>=~|!~|!=|==|<=|>=|[-+*/%^<>=,(){}\[\]@:])
    """,
    re.VERBOSE,
)


class PromQLScanError(ValueError):
    """The expression holds something the scanner does not understand."""


@dataclass(frozen=True)
class Matcher:
    label: str
    op: str
    value: str


@dataclass(frozen=True)
class Selector:
    metric: str
    matchers: tuple[Matcher, ...]


@dataclass
class Scan:
    """What one expression names."""

    selectors: list[Selector] = field(default_factory=list)
    grouping_labels: set[str] = field(default_factory=set)
    functions: set[str] = field(default_factory=set)


def tokenize(expr: str) -> list[tuple[str, str]]:
    tokens: list[tuple[str, str]] = []
    position = 0
    while position < len(expr):
        match = _TOKEN.match(expr, position)
        if match is None:
            raise PromQLScanError(f"unexpected {expr[position : position + 10]!r} in {expr!r}")
        kind = match.lastgroup
        assert kind is not None
        if kind not in ("space", "comment"):
            tokens.append((kind, match.group()))
        position = match.end()
    return tokens


def _unquote(literal: str) -> str:
    body = literal[1:-1]
    if literal[0] == "`":
        return body
    # Good enough for label values: PromQL strings use Go escapes; a backslash keeps the next
    # character (\\ and \" and \.), which is all a regex matcher here needs.
    return re.sub(r"\\(.)", r"\1", body)


def _label_list(tokens: list[tuple[str, str]], start: int) -> tuple[list[str], int]:
    """Reads `( label, label, ... )` from tokens[start]; returns the labels and the next index."""
    if start >= len(tokens) or tokens[start][1] != "(":
        raise PromQLScanError("a grouping keyword must be followed by '('")
    labels: list[str] = []
    index = start + 1
    while index < len(tokens) and tokens[index][1] != ")":
        kind, text = tokens[index]
        if kind == "ident":
            labels.append(text)
        elif text != ",":
            raise PromQLScanError(f"unexpected {text!r} in a label list")
        index += 1
    if index >= len(tokens):
        raise PromQLScanError("unclosed label list")
    return labels, index + 1


def _matchers(tokens: list[tuple[str, str]], start: int) -> tuple[list[Matcher], int]:
    """Reads `{ label op "value", ... }` from tokens[start]; returns matchers and next index."""
    matchers: list[Matcher] = []
    index = start + 1
    while True:
        if index >= len(tokens):
            raise PromQLScanError("unclosed label matchers")
        if tokens[index][1] == "}":
            return matchers, index + 1
        try:
            (label_kind, label), (_, op), (value_kind, value) = tokens[index : index + 3]
        except ValueError as missing:
            raise PromQLScanError("truncated label matcher") from missing
        if label_kind != "ident" or op not in ("=", "!=", "=~", "!~") or value_kind != "string":
            raise PromQLScanError(f"bad label matcher {label!r} {op!r} {value!r}")
        matchers.append(Matcher(label, op, _unquote(value)))
        index += 3
        if index < len(tokens) and tokens[index][1] == ",":
            index += 1


def scan(expr: str) -> Scan:
    """Finds the metric selectors, grouping labels and functions of a PromQL expression."""
    tokens = tokenize(expr)
    result = Scan()
    index = 0
    while index < len(tokens):
        kind, text = tokens[index]
        following = tokens[index + 1][1] if index + 1 < len(tokens) else ""
        if kind == "ident" and text in GROUPING_KEYWORDS:
            if following == "(":
                labels, index = _label_list(tokens, index + 1)
                result.grouping_labels.update(labels)
            else:  # group_left / group_right without a list
                if text not in ("group_left", "group_right"):
                    raise PromQLScanError(f"{text!r} without a label list")
                index += 1
            continue
        if kind == "ident" and text in OTHER_KEYWORDS:
            index += 1
            continue
        if kind == "ident" and text in AGGREGATIONS and following in ("by", "without"):
            result.functions.add(text)  # `sum by (x) (...)`
            index += 1
            continue
        if kind == "ident" and following == "(":
            if text not in FUNCTIONS and text not in AGGREGATIONS:
                raise PromQLScanError(f"unknown function {text!r}")
            result.functions.add(text)
            index += 1
            continue
        if kind == "ident":
            index += 1
            matchers: list[Matcher] = []
            if index < len(tokens) and tokens[index][1] == "{":
                matchers, index = _matchers(tokens, index)
            result.selectors.append(Selector(text, tuple(matchers)))
            continue
        if text == "{":
            raise PromQLScanError("a selector without a metric name")
        index += 1
    return result


# Grafana's interval variables, and `$name`, `${name}`, `${name:format}`, `[[name]]`.
_INTERVAL_VARIABLE = re.compile(r"\$(?:__rate_interval|__interval|__range)\b|\$\{__\w+\}")
_VARIABLE = re.compile(r"\$\{(\w+)(?::\w+)?\}|\$(\w+)|\[\[(\w+)\]\]")


def expand_grafana_variables(expr: str) -> str:
    """A Grafana query as plain PromQL: intervals become 5m, other variables match anything.

    Only meant for queries whose variables sit in ranges or inside label-matcher strings, which
    is where this dashboard uses them (a variable anywhere else is left for the scanner to
    reject).
    """
    expanded = _INTERVAL_VARIABLE.sub("5m", expr)
    return _VARIABLE.sub(".*", expanded)
