"""The store implementations the contract suites run on.

Each entry opens handles onto one fresh, empty database: every call of the opener is another
handle (another connection, as another gateway process would have) on the same data. Adding an
implementation is one entry in STORES.
"""

from __future__ import annotations

import contextlib
import pathlib
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AbstractAsyncContextManager

from gateway.store.base import Store
from gateway.store.sqlite import SqliteStore

StoreOpener = Callable[[], Awaitable[Store]]


@contextlib.asynccontextmanager
async def sqlite_stores(tmp: pathlib.Path) -> AsyncIterator[StoreOpener]:
    opened: list[SqliteStore] = []

    async def open_store() -> Store:
        store = SqliteStore(tmp / "data" / "gateway.db")
        await store.open()
        opened.append(store)
        return store

    try:
        yield open_store
    finally:
        for store in opened:
            await store.close()


STORES: dict[str, Callable[[pathlib.Path], AbstractAsyncContextManager[StoreOpener]]] = {
    "sqlite": sqlite_stores,
}
