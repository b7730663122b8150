"""Type of a servicer context, and what the error boundary tells servicers of their request."""

from __future__ import annotations

from contextvars import ContextVar
from typing import Any, TypeAlias

Context: TypeAlias = Any
"""grpc ships no type information for a servicer context, so it is Any to mypy."""

_REQUEST_BYTES: ContextVar[int] = ContextVar("qgateway_request_bytes", default=0)


def set_request_bytes(size: int) -> None:
    """Records the call's request size on the wire (the error boundary does, per call task)."""
    _REQUEST_BYTES.set(size)


def request_bytes() -> int:
    """The call's request size on the wire; 0 when no boundary read it (a servicer called
    directly), which servicers treat as small."""
    return _REQUEST_BYTES.get()
