"""deploy/observability: the Grafana dashboard and the Prometheus alert rules (issue 12, item 4).

Every query must name metrics, labels and label values the gateway really exports (the
catalogue gateway/telemetry/metric_names.py, whose Prometheus spelling its own test checks
against the exporter), the dashboard must be importable Grafana JSON, and the rules must pass
promtool (`check rules`, and `test rules` with alert-rules.test.yml). promtool is installed by
`make test` (scripts/ensure_promtool.sh); only the promtool checks skip where it is missing.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest

from gateway.telemetry import metric_names
from gateway.telemetry.metric_names import MetricName
from tests.promql_scan import PromQLScanError, Scan, expand_grafana_variables, scan
from tests.yaml_subset import YamlSubsetError, load

ROOT = Path(__file__).resolve().parents[2]
ASSETS = ROOT / "deploy" / "observability"
DASHBOARD = ASSETS / "grafana-dashboard.json"
RULES = ASSETS / "alert-rules.yml"
RULE_TESTS = ASSETS / "alert-rules.test.yml"
README = ASSETS / "README.md"
LOCAL_PROMTOOL = ROOT / ".tools" / "promtool" / "promtool"

# Labels every scraped series may carry besides the metric's own: the target's, and the
# Prometheus exporter's instrumentation scope.
SCRAPE_LABELS = frozenset(
    {"job", "instance", "otel_scope_name", "otel_scope_version", "otel_scope_schema_url"}
)
GRPC_CODES = frozenset(code.name for code in grpc.StatusCode)
JOB_STATES = frozenset({"SUCCEEDED", "FAILED", "CANCELLED"})

# Series name -> the metric it belongs to (with the exporter's suffixes).
SERIES: dict[str, MetricName] = {
    series: metric for metric in metric_names.ALL for series in metric.prometheus_series
}


def _allowed_values(metric: MetricName, label: str) -> frozenset[str] | None:
    """The values a label can take, where the catalogue fixes them; None: any."""
    if label == "rpc_response_status_code":
        return GRPC_CODES
    if label == "phase":
        return frozenset(metric_names.JOB_PHASES)
    if label == "state":
        if metric in (metric_names.BREAKER_STATE, metric_names.BREAKER_TRANSITIONS):
            return frozenset(metric_names.BREAKER_STATES)
        if metric is metric_names.POOL_INSTANCES:
            return frozenset(metric_names.POOL_STATES)
        if metric is metric_names.JOBS_FINISHED:
            return JOB_STATES
    if label == "rpc_system_name":
        return frozenset({"grpc"})
    return None


def _alternatives(value: str) -> list[str] | None:
    """A regex that is a plain `A|B|C` list -> its words; None for any other regex."""
    words = value.split("|")
    return words if all(re.fullmatch(r"[A-Za-z0-9_]+", word) for word in words) else None


def check_expression(expr: str) -> Scan:
    """Raises AssertionError naming what in `expr` the gateway does not export."""
    try:
        found = scan(expr)
    except PromQLScanError as error:
        raise AssertionError(f"cannot scan {expr!r}: {error}") from error
    assert found.selectors, f"no metric in {expr!r}"
    labels_in_play = set(SCRAPE_LABELS)
    for selector in found.selectors:
        metric = SERIES.get(selector.metric)
        assert metric is not None, (
            f"{selector.metric!r} in {expr!r} is not exported by the gateway "
            f"(known series: {sorted(SERIES)})"
        )
        labels = set(metric.prometheus_labels) | SCRAPE_LABELS
        if selector.metric.endswith("_bucket"):
            labels.add("le")
        labels_in_play |= labels
        for matcher in selector.matchers:
            assert matcher.label in labels, (
                f"{selector.metric} has no label {matcher.label!r} (in {expr!r}); it has "
                f"{sorted(labels)}"
            )
            allowed = _allowed_values(metric, matcher.label)
            if allowed is None:
                continue
            values = [matcher.value] if matcher.op in ("=", "!=") else _alternatives(matcher.value)
            for value in values or []:
                assert value in allowed, (
                    f"{selector.metric}{{{matcher.label}}} never takes {value!r} (in {expr!r}); "
                    f"values: {sorted(allowed)}"
                )
    unknown = found.grouping_labels - labels_in_play
    assert not unknown, f"grouping by labels {sorted(unknown)} that no metric of {expr!r} has"
    return found


# ---------------------------------------------------------------------------- the dashboard


def _dashboard() -> dict[str, Any]:
    loaded: dict[str, Any] = json.loads(DASHBOARD.read_text(encoding="utf-8"))
    return loaded


def _panels(dashboard: dict[str, Any]) -> Iterator[dict[str, Any]]:
    for panel in dashboard["panels"]:
        yield panel
        yield from panel.get("panels", [])  # a collapsed row keeps its panels inside


def _dashboard_queries() -> list[tuple[str, str, str, str]]:
    """(panel title, refId, expanded expression, legend) for every query of the dashboard."""
    queries = []
    for panel in _panels(_dashboard()):
        for target in panel.get("targets", []):
            expr = expand_grafana_variables(target["expr"])
            queries.append((panel["title"], target["refId"], expr, target.get("legendFormat", "")))
    return queries


def test_dashboard_is_grafana_dashboard_json() -> None:
    dashboard = _dashboard()
    for key in ("title", "uid", "schemaVersion", "panels", "templating", "time"):
        assert key in dashboard, key
    assert isinstance(dashboard["schemaVersion"], int)
    assert re.fullmatch(r"[A-Za-z0-9_-]{1,40}", dashboard["uid"])

    ids = [panel["id"] for panel in _panels(dashboard)]
    assert len(ids) == len(set(ids)), f"panel ids repeat: {ids}"
    assert all(isinstance(panel_id, int) for panel_id in ids)

    data_panels = [panel for panel in _panels(dashboard) if panel["type"] != "row"]
    assert len(data_panels) >= 10
    for panel in data_panels:
        title = panel["title"]
        assert panel["datasource"] == {"type": "prometheus", "uid": "${datasource}"}, title
        grid = panel["gridPos"]
        assert grid["w"] > 0 and grid["h"] > 0 and grid["x"] + grid["w"] <= 24, title
        targets = panel["targets"]
        assert targets, f"panel {title!r} has no query"
        ref_ids = [target["refId"] for target in targets]
        assert len(ref_ids) == len(set(ref_ids)), f"refIds repeat in {title!r}"
        for target in targets:
            assert target["expr"].strip(), title
            assert target["datasource"] == panel["datasource"], title


def test_dashboard_variables_choose_datasource_backend_and_tenant() -> None:
    variables = {variable["name"]: variable for variable in _dashboard()["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource"
    assert variables["datasource"]["query"] == "prometheus"

    for name, label in (("backend", "backend"), ("tenant", "tenant")):
        variable = variables[name]
        assert variable["type"] == "query", name
        assert variable["datasource"] == {"type": "prometheus", "uid": "${datasource}"}, name
        assert variable["includeAll"] and variable["multi"], name
        query = variable["query"]["query"]
        assert variable["definition"] == query
        match = re.fullmatch(r"label_values\((\w+),\s*(\w+)\)", query)
        assert match is not None, query
        assert match.group(2) == label
        metric = SERIES.get(match.group(1))
        assert metric is not None and label in metric.prometheus_labels, query

    # The variables are used: a panel filtered by each of them.
    exprs = " ".join(
        target["expr"] for panel in _panels(_dashboard()) for target in panel.get("targets", [])
    )
    assert 'backend=~"$backend"' in exprs and 'tenant=~"$tenant"' in exprs


def test_dashboard_queries_name_exported_metrics_and_labels() -> None:
    queries = _dashboard_queries()
    assert len(queries) >= 20
    for title, ref_id, expr, legend in queries:
        try:
            found = check_expression(expr)
        except AssertionError as error:
            raise AssertionError(f"panel {title!r} query {ref_id}: {error}") from error
        # A legend may only use labels the query's result keeps (else it prints blank).
        for label in re.findall(r"\{\{\s*(\w+)\s*\}\}", legend):
            assert label in found.grouping_labels, (
                f"panel {title!r}: legend uses {label!r}, the query keeps "
                f"{sorted(found.grouping_labels)}"
            )


def test_dashboard_covers_what_operators_watch() -> None:
    """Traffic, errors, latency by phase, queues, breakers, pools, restarts, spend, shots."""
    series = {
        selector.metric
        for _, _, expr, _ in _dashboard_queries()
        for selector in scan(expr).selectors
    }
    wanted = {
        "rpc_server_call_duration_seconds_count",  # traffic and errors
        "rpc_server_call_duration_seconds_bucket",  # RPC latency
        "qgateway_job_phase_duration_seconds_bucket",  # latency by phase
        "qgateway_job_queue_wait_seconds_bucket",
        "qgateway_queue_depth",
        "qgateway_jobs_running",
        "qgateway_breaker_state",
        "qgateway_pool_instances",
        "qgateway_job_cost_total",  # spend per tenant
        "qgateway_job_shots_total",
        "qgateway_worker_restarts_total",
        "qgateway_jobs_refused_total",
    }
    assert wanted <= series, sorted(wanted - series)
    # Latency percentiles are per phase, over the phase histogram.
    phase_panels = [
        expr
        for _, _, expr, _ in _dashboard_queries()
        if "histogram_quantile" in expr and "qgateway_job_phase_duration_seconds_bucket" in expr
    ]
    assert any("by (le, phase)" in expr for expr in phase_panels), phase_panels


# ---------------------------------------------------------------------------- the alert rules


def _rules() -> list[dict[str, Any]]:
    document = load(RULES.read_text(encoding="utf-8"))
    return [rule for group in document["groups"] for rule in group["rules"]]


def test_rules_are_well_formed_alerts_with_severity_and_runbook() -> None:
    rules = _rules()
    names = [rule["alert"] for rule in rules]
    assert len(names) == len(set(names)), names
    anchors = {
        re.sub(r"[^a-z0-9_-]", "", heading.strip().lower().replace(" ", "-"))
        for heading in re.findall(r"^#+ (.+)$", README.read_text(encoding="utf-8"), re.M)
    }
    for rule in rules:
        name = rule["alert"]
        assert set(rule) <= {"alert", "expr", "for", "labels", "annotations", "keep_firing_for"}
        assert re.fullmatch(r"QGateway[A-Za-z]+", name), name
        if "for" in rule:
            assert re.fullmatch(r"\d+[smh]", rule["for"]), (name, rule["for"])
        assert rule["labels"]["severity"] in ("warning", "critical"), name
        annotations = rule["annotations"]
        assert {"summary", "description", "runbook"} <= set(annotations), name
        path, _, anchor = annotations["runbook"].partition("#")
        assert path == "deploy/observability/README.md", name
        assert anchor == name.lower() and anchor in anchors, f"{name}: no README section"
        found = check_expression(rule["expr"])
        # {{ $labels.x }} in an annotation must be a label the alert's series keep.
        for text in annotations.values():
            for label in re.findall(r"\$labels\.(\w+)", text):
                assert label in found.grouping_labels, f"{name}: $labels.{label} is never set"


def test_rules_cover_breaker_queue_errors_and_stuck_jobs() -> None:
    by_name = {rule["alert"]: rule for rule in _rules()}
    # The four: an open breaker (for some minutes), a saturated queue, the error rate,
    # a stuck job.
    open_breaker = by_name["QGatewayBreakerOpen"]
    assert 'qgateway_breaker_state{state="OPEN"}' in open_breaker["expr"]
    assert open_breaker["for"].endswith("m")
    assert "qgateway_queue_depth" in by_name["QGatewayQueueNearLimit"]["expr"]
    assert "qgateway_job_queue_wait_seconds_bucket" in by_name["QGatewayQueueWaitHigh"]["expr"]
    error_rate = by_name["QGatewayHighErrorRate"]["expr"]
    assert "rpc_server_call_duration_seconds_count" in error_rate and "/" in error_rate
    stuck = by_name["QGatewayJobStuck"]["expr"]
    assert "qgateway_jobs_running" in stuck and "qgateway_jobs_finished_total" in stuck
    assert by_name["QGatewayJobStuck"]["labels"]["severity"] == "critical"


# ---------------------------------------------------------------------------- the checker itself


@pytest.mark.parametrize(
    ("expr", "complaint"),
    [
        ("sum(rate(qgateway_jobs_submited_total[5m]))", "not exported"),  # misspelt
        ("qgateway_queue_depth_total", "not exported"),  # a gauge has no _total
        ("rate(qgateway_job_cost[5m])", "not exported"),  # a counter without _total
        ("qgateway_job_phase_duration_seconds", "not exported"),  # histogram without a suffix
        ('qgateway_queue_depth{tenant="a"}', "has no label"),
        ('qgateway_job_cost_total{le="1"}', "has no label"),
        ('qgateway_breaker_state{state="open"}', "never takes"),
        ('qgateway_job_phase_duration_seconds_count{phase=~"queue|compile"}', "never takes"),
        ('rpc_server_call_duration_seconds_count{rpc_response_status_code="ERROR"}', "never"),
        ("sum by (tenant) (qgateway_queue_depth)", "grouping by labels"),
        ("histogram_quantil(0.9, qgateway_job_queue_wait_seconds_bucket)", "unknown function"),
        ('{__name__="qgateway_queue_depth"}', "without a metric name"),
        ("1 + 1", "no metric"),
    ],
)
def test_checker_rejects_what_the_gateway_does_not_export(expr: str, complaint: str) -> None:
    with pytest.raises(AssertionError, match=complaint):
        check_expression(expr)


def test_checker_accepts_exported_names_and_expands_grafana_variables() -> None:
    expr = expand_grafana_variables(
        'sum by (le, phase) (rate(qgateway_job_phase_duration_seconds_bucket{backend=~"$backend",'
        ' phase!="total"}[$__rate_interval])) offset 1h'
    )
    assert expr.endswith("[5m])) offset 1h") and 'backend=~".*"' in expr
    found = check_expression(expr)
    assert [selector.metric for selector in found.selectors] == [
        "qgateway_job_phase_duration_seconds_bucket"
    ]
    assert found.grouping_labels == {"le", "phase"}
    assert found.functions == {"sum", "rate"}


def test_yaml_reader_refuses_what_it_cannot_read() -> None:
    assert load("a:\n  - b: 'x''y'\n    c: >-\n      one\n      two\n  - []\n") == {
        "a": [{"b": "x'y", "c": "one two"}, []]
    }
    for text in ("a: &anchor 1\n", "a: [1, 2]\n", "a: 1\na: 2\n", "a: |+\n  x\n", "a:\n\tb: 1\n"):
        with pytest.raises(YamlSubsetError):
            load(text)


# ---------------------------------------------------------------------------- promtool


@pytest.fixture(scope="module")
def promtool() -> str:
    on_path = shutil.which("promtool")
    if on_path is not None:
        return on_path
    if LOCAL_PROMTOOL.is_file() and os.access(LOCAL_PROMTOOL, os.X_OK):
        return str(LOCAL_PROMTOOL)
    pytest.skip(
        "NOT RUN: promtool is not installed, so the rules were not checked by promtool "
        "(`make test` installs it via scripts/ensure_promtool.sh from Debian's prometheus "
        "package where apt-get and root are available)"
    )


def _run(command: list[str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(command, capture_output=True, text=True, timeout=60, check=False)


def test_promtool_check_rules(promtool: str) -> None:
    result = _run([promtool, "check", "rules", str(RULES)])
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"SUCCESS: {len(_rules())} rules found" in result.stdout + result.stderr


def test_promtool_test_rules_fire_and_stay_quiet(promtool: str) -> None:
    result = _run([promtool, "test", "rules", str(RULE_TESTS)])
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout + result.stderr


def test_every_alert_has_a_test_case_in_which_it_fires() -> None:
    # Read from the test file itself: checked whether promtool is installed or not.
    cases = load(RULE_TESTS.read_text(encoding="utf-8"))["tests"]
    firing = {
        check["alertname"]
        for case in cases
        for check in case["alert_rule_test"]
        if check.get("exp_alerts")
    }
    assert firing == {rule["alert"] for rule in _rules()}


def test_promtool_parses_every_dashboard_query(promtool: str, tmp_path: Path) -> None:
    # promtool has no bare "parse this expression"; recording rules get the same parser.
    rules = [
        {"record": f"qgateway_dashboard:query_{index}", "expr": expr}
        for index, (_, _, expr, _) in enumerate(_dashboard_queries())
    ]
    path = tmp_path / "dashboard-queries.yml"
    path.write_text(json.dumps({"groups": [{"name": "dashboard", "rules": rules}]}))
    result = _run([promtool, "check", "rules", str(path)])
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"SUCCESS: {len(rules)} rules found" in result.stdout + result.stderr
