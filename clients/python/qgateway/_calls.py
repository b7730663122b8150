"""What the call mixins of Client and AsyncClient share (sessions, tenants)."""

from __future__ import annotations

import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any


def deadline(timeout: float | None) -> float | None:
    """A monotonic time by which the call (all its attempts) must end; None without a timeout."""
    return None if timeout is None else time.monotonic() + timeout


def timestamp(msg: Any, present: bool) -> datetime | None:
    """A google.protobuf.Timestamp field as an aware UTC datetime; None when unset."""
    return msg.ToDatetime(tzinfo=UTC) if present else None


def channel_stub(owner: Any, key: str, factory: Callable[[Any], Any]) -> Any:
    """`factory(owner.channel)`, made once per channel: a client that opened a new channel
    gets a new stub."""
    cache = owner.__dict__
    stub = cache.get(key)
    if stub is None or cache.get(f"{key}_channel") is not owner.channel:
        stub = factory(owner.channel)
        cache[key] = stub
        cache[f"{key}_channel"] = owner.channel
    return stub


class JobStubs:
    """The job and backend stubs of `Client` and `AsyncClient` (mixed in), reached through
    their `channel`, which refuses a closed client; tests replace the `*_stub` attributes."""

    channel: Any
    _jobs_stub: Any
    _backends_stub: Any

    @property
    def _jobs(self) -> Any:
        _ = self.channel
        return self._jobs_stub

    @property
    def _backends(self) -> Any:
        _ = self.channel
        return self._backends_stub
