"""A backend's price table, a job's shots and usage, and what it costs (gateway/domain/pricing)."""

from __future__ import annotations

import numpy as np
import pytest

from gateway.domain.circuits import (
    Bindings,
    CircuitLanguage,
    CircuitSource,
)
from gateway.domain.pricing import Cost, Price, Usage, charge, estimate

SOURCE = CircuitSource(CircuitLanguage.QASM3, "OPENQASM 3.0;")
PRICE = Price(per_task=0.3, per_shot=0.00035, per_second=0.5, unit="USD")


def sweep(bindings: int) -> Bindings:
    return Bindings(parameters=("t",), values=np.zeros((bindings, 1)), shape=(bindings,))


def test_an_estimate_counts_the_task_and_its_shots_and_says_what_it_leaves_out() -> None:
    got = estimate(PRICE, 1000, 1)
    assert got.shots == 1000
    assert got.cost == Cost(pytest.approx(0.3 + 0.35), "USD")
    assert got.per_second_excluded
    assert not estimate(Price(per_shot=0.01), 10, 1).per_second_excluded
    assert estimate(None, 10, 1).cost is None


def test_each_provider_task_pays_the_task_price() -> None:
    # Braket runs (and bills) each binding of a PUB as a task: a 1000-binding sweep of one
    # shot each is 1000 task fees, not one.
    assert estimate(PRICE, 1000, 1000).cost == Cost(pytest.approx(300 + 0.35), "USD")
    swept = Usage(shots=1000, execution_seconds=0.0, tasks=1000)
    assert charge(PRICE, swept) == Cost(pytest.approx(300 + 0.35), "USD")


def test_a_finished_job_is_charged_its_usage_or_the_provider_s_own_bill() -> None:
    usage = Usage(shots=1000, execution_seconds=2.0)
    assert charge(PRICE, usage) == Cost(pytest.approx(0.3 + 0.35 + 1.0), "USD")
    billed = Usage(shots=1000, execution_seconds=2.0, provider_cost=1.25, provider_unit="USD")
    assert charge(PRICE, billed) == Cost(1.25, "USD")
    # A bill in another unit than the table's does not replace the table.
    credits = Usage(shots=1000, execution_seconds=2.0, provider_cost=7.0, provider_unit="credits")
    assert charge(PRICE, credits) == Cost(pytest.approx(1.65), "USD")
    assert charge(None, credits) == Cost(7.0, "credits")
    assert charge(None, usage) is None
