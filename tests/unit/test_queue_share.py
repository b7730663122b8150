"""The fair-share rule for a backend's queue (gateway.domain.queue_share)."""

from __future__ import annotations

from gateway.domain.queue_share import over_share, tenant_share


def test_a_tenant_alone_stops_at_half_the_queue() -> None:
    assert tenant_share(100, others=0) == 50
    assert over_share(100, 49, {"a": 49}, "a") is None
    assert over_share(100, 50, {"a": 50}, "a") == 50


def test_below_half_full_anyone_may_queue() -> None:
    # 49 of one tenant's jobs and the queue below half: no share applies yet.
    assert over_share(100, 49, {"a": 49}, "a") is None
    assert over_share(101, 50, {"a": 50}, "a") is None


def test_the_share_is_equal_with_the_waiting_tenants_and_one_more() -> None:
    waiting = {"a": 50, "b": 30}
    assert over_share(100, 80, waiting, "a") == 100 // 3  # others: b
    assert over_share(100, 80, waiting, "b") is None  # 30 < 33
    assert over_share(100, 83, {"a": 50, "b": 33}, "b") == 33
    # A newcomer counts the two waiting tenants as others.
    assert over_share(100, 83, {"a": 50, "b": 33}, "c") is None


def test_a_tenant_with_nothing_waiting_is_never_refused_by_its_share() -> None:
    many = {f"t{i}": 1 for i in range(500)}
    assert tenant_share(100, others=500) == 1
    assert over_share(100, 99, many, "newcomer") is None
    assert over_share(100, 99, many, "t0") == 1
