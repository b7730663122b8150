"""Adapter look-up through the "qgateway.backends" entry-point group."""

from __future__ import annotations

from importlib.metadata import EntryPoint, EntryPoints

import pytest

from gateway.backends import registry


def test_an_entry_point_that_is_no_adapter_class_is_refused(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # A class, but not a BackendAdapter: refused at load, not at the first job.
    point = EntryPoint("notadapter", "collections:OrderedDict", registry.ENTRY_POINT_GROUP)

    def entry_points(*, group: str, name: str | None = None) -> EntryPoints:
        found = EntryPoints([point]).select(group=group)
        return found if name is None else found.select(name=name)

    monkeypatch.setattr(registry, "entry_points", entry_points)
    with pytest.raises(TypeError, match="'notadapter' is not a BackendAdapter subclass"):
        registry.load_adapter("notadapter")
    with pytest.raises(KeyError):
        registry.load_adapter("missing")
