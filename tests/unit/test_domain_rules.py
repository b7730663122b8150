"""SDK-free domain rules at their documented bounds: labels, quota messages, times, filters and
targets."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

import pytest

from gateway.domain.circuits import (
    Bindings,
    CircuitLanguage,
    CircuitSource,
    EstimatorPub,
    SamplerPub,
    circuit_field,
)
from gateway.domain.errors import InvalidArgument
from gateway.domain.job_filter import Comparison, FilterField, FilterOp, JobFilter
from gateway.domain.jobs import JobState
from gateway.domain.labels import MAX_LABELS, validate_labels
from gateway.domain.quota import quota_exceeded
from gateway.domain.targets import BackendTarget, QubitProperties, TargetInstruction
from gateway.domain.timestamps import rfc3339


def test_labels_at_their_documented_limits_are_accepted() -> None:
    # README: at most 64; keys [a-z][a-z0-9_-]{0,62}, values [a-z0-9_-]{0,63}.
    assert MAX_LABELS == 64
    many = {f"k{i}": "" for i in range(64)}
    assert validate_labels(many) == many
    longest = {"k" + "x" * 62: "v" * 63}
    assert validate_labels(longest) == longest


@pytest.mark.parametrize(
    "labels",
    [
        {f"k{i}": "v" for i in range(65)},
        {"k" + "x" * 63: "v"},
        {"k": "v" * 64},
        {"Team": "v"},
        {"team!": "v"},
        {"team": "qml!"},
        {"team": "QML"},
    ],
)
def test_labels_past_their_limits_are_refused(labels: dict[str, str]) -> None:
    with pytest.raises(InvalidArgument) as refused:
        validate_labels(labels)
    assert refused.value.reason == "INVALID_LABELS"


def test_a_quota_overdrawn_by_a_run_reports_nothing_left_not_a_negative() -> None:
    now = datetime(2026, 12, 5, 12, tzinfo=UTC)
    err = quota_exceeded(
        "acme",
        "shots",
        asked=10,
        held=150,
        limit=100,
        unit="",
        period_end=now + timedelta(hours=1),
        now=now,
    )
    assert "has 0 shots left of its quota of 100" in err.message
    assert err.reason == "SHOT_QUOTA_EXCEEDED"


def test_times_are_written_in_utc_with_z() -> None:
    at = datetime(2026, 12, 5, 14, 30, tzinfo=timezone(timedelta(hours=2)))
    assert rfc3339(at) == "2026-12-05T12:30:00Z"


def test_a_filter_s_canonical_form_ignores_the_order_of_its_clauses() -> None:
    state = (Comparison(FilterField.STATE, FilterOp.EQ, JobState.RUNNING),)
    label = (Comparison(FilterField.LABEL, FilterOp.EQ, "qml", key="team"),)
    created = (Comparison(FilterField.CREATE_TIME, FilterOp.GE, 5),)
    backend = (Comparison(FilterField.BACKEND, FilterOp.EQ, "aer"),)
    session = (Comparison(FilterField.SESSION, FilterOp.NE, "s1"),)
    # Clauses in field order, whatever order they came in (and whatever the hash seed):
    # replicas bind page tokens to this text.
    expected = (
        'backend = "backends/aer" AND create_time >= 5ns AND labels.team = "qml" AND '
        'session != "sessions/s1" AND state = RUNNING'
    )
    assert JobFilter((state, label, created, session, backend)).canonical() == expected
    assert JobFilter((session, created, backend, label, state)).canonical() == expected


def test_a_target_has_properties_for_every_qubit_or_none() -> None:
    measure = (TargetInstruction("measure", 1, 0),)
    BackendTarget(2, measure)
    BackendTarget(2, measure, qubits=(QubitProperties(), QubitProperties()))
    for count in (1, 3):
        with pytest.raises(ValueError, match="qubit properties"):
            BackendTarget(2, measure, qubits=(QubitProperties(),) * count)


def test_a_pub_s_circuit_field_names_its_kind_and_language() -> None:
    qasm = CircuitSource(CircuitLanguage.QASM3, "OPENQASM 3.0;")
    qpy = CircuitSource(CircuitLanguage.QPY, data=b"QISKIT")
    assert circuit_field(0, SamplerPub(qasm, Bindings())) == "spec.pubs[0].sampler.circuit.qasm3"
    estimator = EstimatorPub(qpy, (), (), Bindings())
    assert circuit_field(2, estimator) == "spec.pubs[2].estimator.circuit.qpy"


def test_the_number_of_bindings_is_the_product_of_the_shape() -> None:
    assert Bindings().size == 1
    assert Bindings(shape=(3, 4)).size == 12
    assert Bindings(shape=(5, 0)).size == 0
