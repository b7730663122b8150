"""Adversarial review of access control (issue 11): in-process checks of AdminService inputs
that a caller controls."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path

import pytest
from google.protobuf.timestamp_pb2 import Timestamp
from qgateway.v1 import admin_pb2, admin_service_pb2

from gateway.api.admin_service import AdminServicer
from gateway.domain.errors import Code, InvalidArgument
from gateway.security.principals import Principal, Role, current_principal
from gateway.store.sqlite import SqliteStore

pytestmark = pytest.mark.anyio
T0 = datetime(2026, 12, 1, 12, 0, tzinfo=UTC)


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture
async def admin(tmp_path: Path) -> AsyncIterator[AdminServicer]:
    store = SqliteStore(tmp_path / "q.db")
    await store.open()
    token = current_principal.set(Principal("acme", "apiKeys/ta", Role.TENANT_ADMIN))
    yield AdminServicer(store, clock=lambda: T0)
    current_principal.reset(token)
    await store.close()


async def test_a_key_expiry_outside_timestamps_range_is_invalid_argument(
    admin: AdminServicer,
) -> None:
    # Timestamp.ToDatetime raised ValueError for seconds past year 9999: INTERNAL, for input.
    request = admin_service_pb2.CreateApiKeyRequest(
        parent="tenants/acme",
        api_key=admin_pb2.ApiKey(expire_time=Timestamp(seconds=1 << 40)),
    )
    with pytest.raises(InvalidArgument) as caught:
        await admin.CreateApiKey(request, None)
    assert caught.value.code == Code.INVALID_ARGUMENT
    assert caught.value.reason == "INVALID_API_KEY"
