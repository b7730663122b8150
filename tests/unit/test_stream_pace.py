"""StreamPace: each tenant's result streams send at most `per_second` messages a second."""

from __future__ import annotations

from pathlib import Path

import pytest

from gateway.api import stream_pace
from gateway.api.stream_pace import StreamPace
from gateway.config import ConfigError, load_config


class FakeTime:
    """A clock that moves only when a waiter sleeps (what it slept is recorded)."""

    def __init__(self) -> None:
        self.now = 100.0
        self.slept: list[float] = []

    def clock(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        self.slept.append(seconds)
        self.now += seconds


def pace(per_second: float, time: FakeTime) -> StreamPace:
    return StreamPace(per_second, clock=time.clock, sleep=time.sleep)


@pytest.mark.anyio
async def test_a_burst_goes_at_once_and_the_rest_at_the_rate() -> None:
    time = FakeTime()
    streams = pace(10, time)
    for _ in range(10):
        await streams.next_message("a")
    assert time.slept == [] and time.now == 100.0
    for _ in range(20):
        await streams.next_message("a")
    # 20 messages past the burst take 2 s at 10 a second, one wait per message.
    assert len(time.slept) == 20
    assert time.now == pytest.approx(102.0)


@pytest.mark.anyio
async def test_tenants_have_their_own_pace() -> None:
    time = FakeTime()
    streams = pace(5, time)
    for _ in range(5):
        await streams.next_message("a")
    await streams.next_message("a")  # a's sixth waits
    assert len(time.slept) == 1
    for _ in range(5):
        await streams.next_message("b")  # b's burst is its own
    assert len(time.slept) == 1


@pytest.mark.anyio
async def test_a_quiet_tenant_refills_to_the_burst_only() -> None:
    time = FakeTime()
    streams = pace(5, time)
    await streams.next_message("a")
    time.now += 3600.0  # an hour idle refills 5 messages, not 18,000
    for _ in range(5):
        await streams.next_message("a")
    assert time.slept == []
    await streams.next_message("a")
    assert time.slept == [pytest.approx(0.2)]


@pytest.mark.anyio
async def test_idle_buckets_are_dropped_when_many_tenants_streamed(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(stream_pace, "MAX_IDLE_TENANTS", 3)
    time = FakeTime()
    streams = pace(2, time)
    for tenant in ("a", "b", "c", "c"):
        await streams.next_message(tenant)
    time.now += 0.5  # a and b are full again; c has one of its two back
    await streams.next_message("d")
    assert set(streams._tenants) == {"c", "d"}
    # c's state is kept: one message goes, the next waits.
    await streams.next_message("c")
    assert time.slept == []
    await streams.next_message("c")
    assert time.slept == [pytest.approx(0.5)]


def test_the_pace_is_at_least_one_message_a_second(tmp_path: Path) -> None:
    path = tmp_path / "g.toml"
    path.write_text("[server]\nstream_messages_per_s = 0.5\n")
    with pytest.raises(ConfigError, match="stream_messages_per_s"):
        load_config(path)
