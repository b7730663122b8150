"""Finds adapter classes through the "qgateway.backends" entry-point group.

Built-in adapters register through the same group a third-party package would use.
"""

from __future__ import annotations

from functools import cache
from importlib.metadata import entry_points

from gateway.backends.base import BackendAdapter

ENTRY_POINT_GROUP = "qgateway.backends"


@cache
def adapter_names() -> tuple[str, ...]:
    return tuple(sorted(ep.name for ep in entry_points(group=ENTRY_POINT_GROUP)))


def load_adapter(name: str) -> type[BackendAdapter]:
    """Returns the adapter class registered as `name`; KeyError if there is none."""
    matches = entry_points(group=ENTRY_POINT_GROUP, name=name)
    for ep in matches:
        cls = ep.load()
        if not (isinstance(cls, type) and issubclass(cls, BackendAdapter)):
            raise TypeError(f"entry point {name!r} is not a BackendAdapter subclass")
        return cls
    raise KeyError(name)
