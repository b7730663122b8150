"""The memory budget of open result streams (gateway.api.stream_budget)."""

from __future__ import annotations

import pytest

from gateway.api.stream_budget import StreamBudget
from gateway.domain.errors import Code, ResourceExhausted


def test_a_tenant_holds_up_to_its_budget_and_a_closed_stream_gives_it_back() -> None:
    budget = StreamBudget(per_tenant_bytes=100, total_bytes=1000)
    with budget.hold("a", 60):
        with pytest.raises(ResourceExhausted) as refused, budget.hold("a", 41):
            pytest.fail("a hold past the tenant's budget was granted")
        err = refused.value
        assert err.code is Code.RESOURCE_EXHAUSTED and err.reason == "STREAM_MEMORY_EXHAUSTED"
        assert err.metadata["scope"] == "tenant" and err.metadata["heldBytes"] == "60"
        assert err.metadata["resultBytes"] == "41" and err.metadata["limitBytes"] == "100"
        assert err.quota_violations and err.retry_after is not None
        assert budget.held("a") == 60  # the refused hold took nothing
        with budget.hold("a", 40):  # exactly at the budget
            assert budget.held("a") == 100
        with budget.hold("b", 100):  # another tenant's budget is its own
            assert budget.held() == 160
    assert budget.held("a") == budget.held() == 0


def test_the_process_budget_bounds_every_tenant_together() -> None:
    budget = StreamBudget(per_tenant_bytes=100, total_bytes=150)
    with budget.hold("a", 100):
        with pytest.raises(ResourceExhausted) as refused, budget.hold("b", 51):
            pytest.fail("a hold past the process's budget was granted")
        assert refused.value.metadata["scope"] == "process"
        assert refused.value.metadata["limit"] == "server.max_streamed_result_mb"
        with budget.hold("b", 50):
            assert budget.held() == 150


def test_one_result_larger_than_the_budget_is_still_readable_alone() -> None:
    budget = StreamBudget(per_tenant_bytes=10, total_bytes=20)
    held = budget.hold("a", 500)
    with held, pytest.raises(ResourceExhausted), budget.hold("b", 1):  # not beside anything
        pytest.fail("a second hold past the budget was granted")
    with budget.hold("b", 500):
        pass


def test_a_hold_is_given_back_when_the_stream_fails() -> None:
    budget = StreamBudget(per_tenant_bytes=100, total_bytes=100)
    with pytest.raises(RuntimeError), budget.hold("a", 70):
        raise RuntimeError("the caller went away")
    assert budget.held("a") == budget.held() == 0


def test_budgets_below_one_byte_are_refused() -> None:
    with pytest.raises(ValueError):
        StreamBudget(0, 10)
    with pytest.raises(ValueError):
        StreamBudget(10, 0)
