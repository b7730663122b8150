from __future__ import annotations

import pathlib
from collections.abc import AsyncIterator

import pytest

from gateway.store.base import Store
from tests.contract.stores import STORES, StoreOpener


@pytest.fixture(params=sorted(STORES))
async def store_factory(
    request: pytest.FixtureRequest, tmp_path: pathlib.Path
) -> AsyncIterator[StoreOpener]:
    """Opens handles onto one fresh database of the parametrised implementation."""
    async with STORES[request.param](tmp_path) as opener:
        yield opener


@pytest.fixture
async def store(store_factory: StoreOpener) -> Store:
    return await store_factory()
