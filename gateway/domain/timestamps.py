"""The one text form of a time the gateway writes (error metadata, audit exports)."""

from __future__ import annotations

from datetime import UTC, datetime


def rfc3339(at: datetime) -> str:
    """RFC 3339 in UTC with "Z", as protobuf's JSON mapping writes a Timestamp."""
    return at.astimezone(UTC).isoformat().replace("+00:00", "Z")
