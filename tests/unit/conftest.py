"""Fixtures of the in-process tests."""

from __future__ import annotations

import pathlib
from collections.abc import AsyncIterator

import pytest

from gateway.store.sqlite import SqliteStore


@pytest.fixture
async def store(tmp_path: pathlib.Path) -> AsyncIterator[SqliteStore]:
    """A real SQLite store in the test's directory, for the job core's in-process tests (a
    module with a store of its own overrides it)."""
    store = SqliteStore(tmp_path / "core.db")
    await store.open()
    yield store
    await store.close()
