"""Stored API keys in process: the SQLite repository, verification with expiry and revocation,
the record cache (a revoke here is effective at once; elsewhere within the cache period), and
last-used times written in batches, never per call."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Mapping
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from gateway.domain.api_keys import ApiKeyRecord, KeyState
from gateway.domain.errors import ResourceExhausted, Unauthenticated
from gateway.security.api_keys import (
    KeyRing,
    KeyVerifier,
    LastUsedRecorder,
    generate_key,
)
from gateway.security.principals import Role
from gateway.security.tenant_policy import RateLimit
from gateway.store.sqlite import SqliteStore

pytestmark = pytest.mark.anyio
T0 = datetime(2026, 12, 1, 12, 0, tzinfo=UTC)


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[SqliteStore]:
    s = SqliteStore(tmp_path / "keys.db")
    await s.open()
    yield s
    await s.close()


class Clock:
    def __init__(self) -> None:
        self.mono = 1000.0
        self.wall = T0

    def advance(self, seconds: float) -> None:
        self.mono += seconds
        self.wall += timedelta(seconds=seconds)


def _record(tenant: str = "acme", **kw: object) -> tuple[str, ApiKeyRecord]:
    new = generate_key(tenant, role=Role(str(kw.pop("role", "user"))))
    record = ApiKeyRecord(
        prefix=new.config.prefix,
        tenant=tenant,
        sha256=new.config.sha256,
        display_name="ci",
        role=str(new.config.role),
        created_at=T0,
        **kw,  # type: ignore[arg-type]
    )
    return new.key, record


class CountingStore:
    """Counts the reads and writes verification makes of a real store."""

    def __init__(self, inner: SqliteStore) -> None:
        self.inner = inner
        self.reads = 0
        self.touches: list[dict[str, datetime]] = []

    async def get_api_key(self, prefix: str) -> ApiKeyRecord | None:
        self.reads += 1
        return await self.inner.get_api_key(prefix)

    async def touch_api_keys(self, used: Mapping[str, datetime]) -> None:
        self.touches.append(dict(used))
        await self.inner.touch_api_keys(used)


async def test_the_repository_keeps_hashes_states_and_pages(store: SqliteStore) -> None:
    keys = [_record("acme") for _ in range(3)] + [_record("globex")]
    for _, record in keys:
        await store.create_api_key(record)
    secret, first = keys[0]
    got = await store.get_api_key(first.prefix)
    assert got == first and got.state(T0) is KeyState.ACTIVE
    # Only the hash is stored: the secret is nowhere in the database file.
    raw = (store.path).read_bytes() + Path(str(store.path) + "-wal").read_bytes()
    assert secret.encode() not in raw and first.sha256.encode() in raw

    page = await store.list_api_keys("acme", limit=2)
    assert [k.tenant for k in page.keys] == ["acme", "acme"] and page.next_cursor is not None
    rest = await store.list_api_keys("acme", after=page.next_cursor, limit=2)
    assert len(rest.keys) == 1 and rest.next_cursor is None
    every = await store.list_api_keys(None)
    assert [(k.tenant, k.prefix) for k in every.keys] == sorted(
        (r.tenant, r.prefix) for _, r in keys
    )

    revoked = await store.revoke_api_key(first.prefix, T0 + timedelta(hours=1))
    assert revoked is not None and revoked.revoked_at == T0 + timedelta(hours=1)
    again = await store.revoke_api_key(first.prefix, T0 + timedelta(hours=2))
    assert again is not None and again.revoked_at == T0 + timedelta(hours=1)
    assert await store.revoke_api_key("nosuchkey", T0) is None
    active = await store.list_api_keys("acme", active_at=T0 + timedelta(hours=3))
    assert first.prefix not in {k.prefix for k in active.keys} and len(active.keys) == 2

    await store.touch_api_keys({keys[1][1].prefix: T0 + timedelta(minutes=5)})
    await store.touch_api_keys({keys[1][1].prefix: T0 + timedelta(minutes=1)})  # never back
    used = await store.get_api_key(keys[1][1].prefix)
    assert used is not None and used.last_used_at == T0 + timedelta(minutes=5)


async def test_a_key_is_not_listed_active_from_its_expiry_on(store: SqliteStore) -> None:
    # The listing agrees with ApiKeyRecord.state: expired at its expiry instant, not after it.
    expires = T0 + timedelta(hours=1)
    _, record = _record("acme", expires_at=expires)
    await store.create_api_key(record)
    just_before = expires - timedelta(microseconds=1)
    assert record.state(just_before) is KeyState.ACTIVE
    listed = await store.list_api_keys("acme", active_at=just_before)
    assert [k.prefix for k in listed.keys] == [record.prefix]
    assert record.state(expires) is KeyState.EXPIRED
    assert (await store.list_api_keys("acme", active_at=expires)).keys == []


async def test_every_tenants_keys_page_by_page_each_once_and_no_empty_last_page(
    store: SqliteStore,
) -> None:
    # Across tenants the cursor is compared as a (tenant, prefix) pair, and a page that ends
    # exactly at the last key must say so: a client follows next_cursor until it is None.
    keys = [_record(t)[1] for t in ("acme", "acme", "globex", "initech", "initech")]
    for record in keys:
        await store.create_api_key(record)
    seen: list[tuple[str, str]] = []
    after: tuple[str, str] | None = None
    for _ in range(len(keys) + 1):  # bounded: a cursor that repeats a key would never end
        page = await store.list_api_keys(None, after=after, limit=1)
        seen += [(k.tenant, k.prefix) for k in page.keys]
        if page.next_cursor is None:
            break
        after = page.next_cursor
    assert seen == sorted((r.tenant, r.prefix) for r in keys)
    # Exactly a page's worth: no cursor to a page that would be empty.
    whole = await store.list_api_keys("initech", limit=2)
    assert len(whole.keys) == 2 and whole.next_cursor is None


async def test_listing_active_keys_never_walks_revoked_ones(store: SqliteStore) -> None:
    # Revoked keys are never deleted and were filtered after the (tenant, prefix) index: with
    # 300,000 of them one ListApiKeys page held the store's only thread for 82 ms. Counted in
    # SQLite VM steps, so the test measures work, not time.
    for _ in range(3):
        await store.create_api_key(_record("evil")[1])
    await store.create_api_key(_record("evil", expires_at=T0 - timedelta(days=1))[1])
    steps = 0

    def step() -> int:
        nonlocal steps
        steps += 1
        return 0  # go on

    await store._call(lambda conn: conn.set_progress_handler(step, 1))

    async def page_cost() -> int:
        nonlocal steps
        steps = 0
        page = await store.list_api_keys("evil", active_at=T0, limit=50)
        assert len(page.keys) == 3 and page.next_cursor is None
        return steps

    before = await page_cost()
    revoked = [(f"{n:012x}", "evil", "0" * 64, "", "user", 0, 0) for n in range(5000)]
    await store._call(
        lambda conn: conn.executemany(
            "INSERT INTO api_keys (prefix, tenant, sha256, display_name, role, created_at,"
            " revoked_at) VALUES (?, ?, ?, ?, ?, ?, ?)",
            revoked,
        )
    )
    assert await page_cost() == before
    # Every key, revoked ones included, is still listed (by the other index, a page at a time).
    every = await store.list_api_keys("evil", limit=1000)
    assert len(every.keys) == 1000 and every.next_cursor is not None


async def test_a_tenant_holds_a_bounded_number_of_unrevoked_keys(store: SqliteStore) -> None:
    # They bound what listing its active keys walks; expired keys count until revoked.
    held = [_record("acme")[1], _record("acme", expires_at=T0 - timedelta(days=1))[1]]
    for record in held:
        await store.create_api_key(record, max_unrevoked=2)
    with pytest.raises(ResourceExhausted) as full:
        await store.create_api_key(_record("acme")[1], max_unrevoked=2)
    assert full.value.reason == "API_KEY_LIMIT_REACHED"
    assert full.value.metadata == {"tenant": "tenants/acme", "limit": "2"}
    assert full.value.quota_violations[0].subject == "tenants/acme"
    assert full.value.retry_after is None  # waiting frees nothing: revoking does
    await store.create_api_key(_record("globex")[1], max_unrevoked=2)  # per tenant
    await store.revoke_api_key(held[1].prefix, T0)
    await store.create_api_key(_record("acme")[1], max_unrevoked=2)


async def test_expired_and_revoked_keys_are_refused_with_their_reasons(
    store: SqliteStore,
) -> None:
    clock = Clock()
    verifier = KeyVerifier(KeyRing([]), store, clock=lambda: clock.mono, now=lambda: clock.wall)
    good_key, good = _record("acme", role="tenant-admin")
    soon_key, soon = _record("acme", expires_at=T0 + timedelta(minutes=1))
    gone_key, gone = _record("acme")
    for r in (good, soon, gone):
        await store.create_api_key(r)
    await store.revoke_api_key(gone.prefix, T0)

    principal = await verifier.verify(good_key)
    assert (principal.tenant, principal.role, principal.key_prefix) == (
        "acme",
        Role.TENANT_ADMIN,
        good.prefix,
    )
    assert principal.id == f"apiKeys/{good.prefix}" and principal.expires_at is None
    soon_principal = await verifier.verify(soon_key)
    # What CreateApiKey bounds the keys it creates by.
    assert (soon_principal.tenant, soon_principal.expires_at) == ("acme", soon.expires_at)
    clock.advance(60)
    with pytest.raises(Unauthenticated) as expired:
        await verifier.verify(soon_key)
    assert expired.value.reason == "API_KEY_EXPIRED"
    assert expired.value.metadata["expireTime"] == "2026-12-01T12:01:00Z"
    with pytest.raises(Unauthenticated) as revoked:
        await verifier.verify(gone_key)
    assert revoked.value.reason == "API_KEY_REVOKED"
    # Knowing a revoked key's prefix without its secret tells nothing about its state.
    wrong = f"qgw_{gone.prefix}_not-the-secret"
    for token in (wrong, "qgw_unknownprefix_x", "qgw__x", "nonsense", good_key + "x"):
        with pytest.raises(Unauthenticated) as invalid:
            await verifier.verify(token)
        assert invalid.value.reason == "API_KEY_INVALID"
    assert good_key not in str(invalid.value) and "not-the-secret" not in str(invalid.value)


async def test_a_revoke_here_is_at_once_elsewhere_within_the_cache_period(
    store: SqliteStore,
) -> None:
    clock = Clock()
    counting = CountingStore(store)
    here = KeyVerifier(KeyRing([]), counting, cache_s=30, clock=lambda: clock.mono)
    there = KeyVerifier(KeyRing([]), counting, cache_s=30, clock=lambda: clock.mono)
    key, record = _record("acme")
    await store.create_api_key(record)
    for _ in range(50):
        await here.verify(key)
        await there.verify(key)
    assert counting.reads == 2  # one read per verifier and cache period, not one per call

    await store.revoke_api_key(record.prefix, T0)
    here.forget(record.prefix)  # what RevokeApiKey does on the gateway that served it
    with pytest.raises(Unauthenticated, match="revoked"):
        await here.verify(key)
    assert (await there.verify(key)).tenant == "acme"  # still cached on the other replica
    clock.advance(30)
    with pytest.raises(Unauthenticated) as late:
        await there.verify(key)
    assert late.value.reason == "API_KEY_REVOKED"


async def test_a_revoke_whose_caller_went_away_still_drops_the_cached_key(
    store: SqliteStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    # RevokeApiKey dropped the key from this gateway's cache only after the store's write
    # returned: a call cut off meanwhile revoked the key in the store and left it usable here
    # for the rest of its cache period.
    from qgateway.v1 import admin_service_pb2

    from gateway.api.admin_service import AdminServicer
    from gateway.security.principals import Principal, current_principal

    clock = Clock()
    verifier = KeyVerifier(KeyRing([]), store, cache_s=30, clock=lambda: clock.mono)
    admin = AdminServicer(store, clock=lambda: T0, keys=verifier)
    key, record = _record("acme")
    await store.create_api_key(record)
    assert (await verifier.verify(key)).tenant == "acme"  # cached now
    writing, release = asyncio.Event(), asyncio.Event()
    revoke = store.revoke_api_key

    async def gated(prefix: str, at: datetime) -> ApiKeyRecord | None:
        writing.set()
        await release.wait()
        return await revoke(prefix, at)

    monkeypatch.setattr(store, "revoke_api_key", gated)
    token = current_principal.set(Principal("ops", "apiKeys/admin", Role.ADMIN))
    try:
        call = asyncio.ensure_future(
            admin.RevokeApiKey(
                admin_service_pb2.RevokeApiKeyRequest(name=f"tenants/acme/apiKeys/{record.prefix}"),
                None,  # type: ignore[arg-type]
            )
        )
        await writing.wait()
        call.cancel()
        with pytest.raises(asyncio.CancelledError):
            await call
    finally:
        current_principal.reset(token)
    release.set()
    # The revoke now runs on without its caller; within 100 turns of the loop at most it has
    # committed and the key is refused here, not served from the cache for 30 s.
    for _ in range(100):
        try:
            await verifier.verify(key)
        except Unauthenticated as refused:
            assert refused.reason == "API_KEY_REVOKED"
            break
        await asyncio.sleep(0.01)
    else:
        pytest.fail("the revoked key was still served from the cache")


async def test_configured_keys_still_load_and_win_over_the_store(store: SqliteStore) -> None:
    configured = generate_key("ops", role=Role.ADMIN)
    counting = CountingStore(store)
    verifier = KeyVerifier(KeyRing([configured.config]), counting)
    principal = await verifier.verify(configured.key)
    assert (principal.tenant, principal.role) == ("ops", Role.ADMIN)
    assert counting.reads == 0
    with pytest.raises(Unauthenticated, match="not valid"):
        await verifier.verify(f"qgw_{configured.config.prefix}_wrong")


async def test_last_use_is_written_in_batches_at_most_once_a_minute_per_key(
    store: SqliteStore,
) -> None:
    clock = Clock()
    counting = CountingStore(store)
    recorder = LastUsedRecorder(
        counting, interval_s=60, clock=lambda: clock.mono, now=lambda: clock.wall
    )
    verifier = KeyVerifier(KeyRing([]), counting, recorder=recorder, clock=lambda: clock.mono)
    (a_key, a), (b_key, b) = _record("acme"), _record("globex")
    await store.create_api_key(a)
    await store.create_api_key(b)
    for _ in range(100):
        await verifier.verify(a_key)
    await verifier.verify(b_key)
    assert counting.touches == []  # nothing is written on the request path
    await recorder.flush()
    assert counting.touches == [{a.prefix: T0, b.prefix: T0}]  # one transaction, both keys
    clock.advance(30)
    await verifier.verify(a_key)
    await recorder.flush()
    assert len(counting.touches) == 1  # within the minute: not noted again
    clock.advance(31)
    await verifier.verify(a_key)
    await recorder.close()
    assert counting.touches[-1] == {a.prefix: T0 + timedelta(seconds=61)}
    stored = await store.get_api_key(a.prefix)
    assert stored is not None and stored.last_used_at == T0 + timedelta(seconds=61)


async def test_a_read_in_flight_during_a_revoke_is_not_cached(store: SqliteStore) -> None:
    key, record = _record("acme")
    await store.create_api_key(record)
    release = asyncio.Event()
    reads = []

    class SlowStore(CountingStore):
        async def get_api_key(self, prefix: str) -> ApiKeyRecord | None:
            # Read before the revoke (reads run beside writes, not queued before them), then
            # still in flight when it lands.
            found = await self.inner.get_api_key(prefix)
            reads.append(prefix)
            await release.wait()
            return found

    verifier = KeyVerifier(KeyRing([]), SlowStore(store), cache_s=3600)
    first = asyncio.create_task(verifier.verify(key))
    while not reads:
        await asyncio.sleep(0)
    await store.revoke_api_key(record.prefix, T0)
    verifier.forget(record.prefix)
    release.set()
    assert (await first).tenant == "acme"  # a call authenticated before the revoke finishes
    with pytest.raises(Unauthenticated) as revoked:
        await verifier.verify(key)
    assert revoked.value.reason == "API_KEY_REVOKED" and len(reads) == 2


async def test_made_up_prefixes_do_not_evict_known_keys(store: SqliteStore) -> None:
    # Anyone can send well-formed keys with random prefixes (no secret needed): each one is a
    # store read, and cached with known keys it pushed them out, so a flood made every real
    # caller's key a store read on the store's one thread too.
    clock = Clock()
    counting = CountingStore(store)
    verifier = KeyVerifier(KeyRing([]), counting, max_cached=4, clock=lambda: clock.mono)
    key, record = _record("acme")
    await store.create_api_key(record)
    await verifier.verify(key)
    for n in range(20):
        with pytest.raises(Unauthenticated):
            await verifier.verify(f"qgw_made{n:04d}up_secret")
    reads = counting.reads
    assert (await verifier.verify(key)).tenant == "acme"
    assert counting.reads == reads  # still cached
    # Unknown prefixes stay cached (bounded) for the cache period too.
    with pytest.raises(Unauthenticated):
        await verifier.verify("qgw_made0019up_secret")
    assert counting.reads == reads


async def test_uncached_prefixes_cost_each_peer_a_bounded_number_of_store_reads(
    store: SqliteStore,
) -> None:
    # Made-up prefixes need no secret; each uncached one was a read on the store's only
    # thread, so one host could keep that thread busy for everyone.
    clock = Clock()
    counting = CountingStore(store)
    verifier = KeyVerifier(
        KeyRing([]),
        counting,
        clock=lambda: clock.mono,
        lookups_per_peer=RateLimit(per_second=1.0, burst=5),
    )
    key, record = _record("acme")
    await store.create_api_key(record)
    flood, neighbour = "ipv4:10.0.0.9:40001", "ipv4:10.0.0.7:51234"
    assert (await verifier.verify(key, flood)).tenant == "acme"  # cached from here on
    for n in range(4):
        with pytest.raises(Unauthenticated) as invalid:
            await verifier.verify(f"qgw_made{n:04d}up_secret", flood)
        assert invalid.value.reason == "API_KEY_INVALID"
    for n in range(4, 50):
        with pytest.raises(ResourceExhausted) as refused:
            # Another source port of the same host shares the budget.
            await verifier.verify(f"qgw_made{n:04d}up_secret", f"ipv4:10.0.0.9:{40002 + n}")
        # Retryable, and no verdict on the key: a real one from behind the same NAT is told
        # to come back, not that it is bad.
        assert refused.value.reason == "KEY_LOOKUPS_EXHAUSTED"
        assert refused.value.retry_after == pytest.approx(1.0)
    assert counting.reads == 5  # the key's read and four made-up ones, then none
    # The flooding host's real (cached) key still works; another host still gets its reads.
    assert (await verifier.verify(key, flood)).tenant == "acme"
    other_key, other = _record("globex")
    await store.create_api_key(other)
    assert (await verifier.verify(other_key, neighbour)).tenant == "globex"
    assert counting.reads == 6
    # The budget refills: a new key from the flooding host, refused while it is spent, is
    # read a second later.
    third_key, third = _record("initech")
    await store.create_api_key(third)
    with pytest.raises(ResourceExhausted):
        await verifier.verify(third_key, flood)
    clock.mono += 1.0
    assert (await verifier.verify(third_key, flood)).tenant == "initech"


async def test_a_known_key_is_refreshed_uncharged_once_its_cache_entry_is_stale(
    store: SqliteStore,
) -> None:
    # The lookup budget is for prefixes the gateway does not know: a host that spent it on
    # made-up prefixes must not lock out, 30 s later, the real keys behind the same address.
    clock = Clock()
    counting = CountingStore(store)
    verifier = KeyVerifier(
        KeyRing([]),
        counting,
        clock=lambda: clock.mono,
        cache_s=30.0,
        lookups_per_peer=RateLimit(per_second=0.001, burst=2),
    )
    key, record = _record("acme")
    await store.create_api_key(record)
    nat = "ipv4:10.0.0.9:40001"
    assert (await verifier.verify(key, nat)).tenant == "acme"
    with pytest.raises(Unauthenticated):
        await verifier.verify("qgw_made0001up_secret", nat)
    with pytest.raises(ResourceExhausted):  # spent
        await verifier.verify("qgw_made0002up_secret", nat)
    clock.mono += 31.0  # the key's entry is stale; the budget is still spent
    reads = counting.reads
    assert (await verifier.verify(key, nat)).tenant == "acme"
    assert counting.reads == reads + 1  # read again, to see a revocation elsewhere
    # Its prefix with a wrong secret is refused without a read: a stored key's hash never
    # changes, so the prefix (public) costs an attacker nothing but costs the store nothing.
    clock.mono += 31.0
    wrong = key.rsplit("_", 1)[0] + "_" + "x" * 20
    with pytest.raises(Unauthenticated) as invalid:
        await verifier.verify(wrong, nat)
    assert invalid.value.reason == "API_KEY_INVALID" and counting.reads == reads + 1
    # A revocation made elsewhere is still seen once the entry is stale.
    await store.revoke_api_key(record.prefix, datetime.now(UTC))
    with pytest.raises(Unauthenticated) as revoked:
        await verifier.verify(key, nat)
    assert revoked.value.reason == "API_KEY_REVOKED"


async def test_one_ipv6_slash_64_is_one_lookup_budget(store: SqliteStore) -> None:
    counting = CountingStore(store)
    verifier = KeyVerifier(
        KeyRing([]), counting, lookups_per_peer=RateLimit(per_second=0.001, burst=3)
    )
    for n in range(3):
        with pytest.raises(Unauthenticated):
            await verifier.verify(f"qgw_made{n:04d}up_secret", f"ipv6:[2001:db8:1:2::{n:x}]:443")
    with pytest.raises(ResourceExhausted):  # another address of the same /64
        await verifier.verify("qgw_made0009up_secret", "ipv6:%5B2001:db8:1:2:ffff::1%5D:443")
    with pytest.raises(Unauthenticated):  # the next /64 has its own
        await verifier.verify("qgw_made0010up_secret", "ipv6:[2001:db8:1:3::1]:443")
    assert counting.reads == 4


async def test_a_revoked_key_that_has_not_expired_yet_is_refused(store: SqliteStore) -> None:
    # Every revoked key of the test above never expired: a revoke of a key with an expiry
    # still ahead must count at once, not only once the key expires anyway.
    clock = Clock()
    verifier = KeyVerifier(KeyRing([]), store, clock=lambda: clock.mono, now=lambda: clock.wall)
    key, record = _record("acme", expires_at=T0 + timedelta(days=30))
    await store.create_api_key(record)
    await store.revoke_api_key(record.prefix, T0)
    with pytest.raises(Unauthenticated) as revoked:
        await verifier.verify(key)
    assert revoked.value.reason == "API_KEY_REVOKED"
    stored = await store.get_api_key(record.prefix)
    assert stored is not None and stored.state(T0) is KeyState.REVOKED
