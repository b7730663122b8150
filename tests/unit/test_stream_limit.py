"""The per-tenant limit of open server streams (gateway.interceptors.stream_limit)."""

from __future__ import annotations

import pytest

from gateway.domain.errors import Code, ResourceExhausted
from gateway.interceptors.stream_limit import StreamLimiter


def test_a_tenant_opens_up_to_the_limit_and_a_closed_stream_frees_its_place() -> None:
    limiter = StreamLimiter(2)
    limiter.open("a")
    limiter.open("a")
    with pytest.raises(ResourceExhausted) as refused:
        limiter.open("a")
    err = refused.value
    assert err.code is Code.RESOURCE_EXHAUSTED and err.reason == "TOO_MANY_STREAMS"
    assert err.metadata["openStreams"] == "2" and err.metadata["maxStreams"] == "2"
    assert err.quota_violations and err.retry_after == 1.0
    assert limiter.held("a") == 2  # the refused stream was not counted
    limiter.open("b")  # another tenant's streams are its own
    limiter.close("a")
    limiter.open("a")
    for _ in range(2):
        limiter.close("a")
    limiter.close("b")
    assert limiter.held("a") == limiter.held("b") == 0


def test_a_limit_below_one_is_refused() -> None:
    with pytest.raises(ValueError):
        StreamLimiter(0)
