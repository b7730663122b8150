"""API keys: `qgw_<prefix>_<secret>`, stored as SHA-256 hashes only, compared in constant time.

The prefix identifies the key (it is safe to log); the secret never leaves the caller. A key is
sent as gRPC metadata `authorization: Bearer qgw_...`.

Keys come from the configuration (`[[auth.api_keys]]`, KeyRing) or from the store (created by
AdminService, with expiry and revocation). `KeyVerifier` checks both on every call at the cost
of one SHA-256 and a dictionary look-up: a stored key's record is cached for `cache_s` seconds
(a revoke through this gateway drops it at once; another replica reads it again within
`cache_s`), and its last use is written by `LastUsedRecorder` in batches, at most once per
key and interval, off the request path.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import logging
import re
import secrets
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Protocol

from pydantic import BaseModel, ConfigDict, Field

from gateway.domain.api_keys import ApiKeyRecord, KeyState
from gateway.domain.errors import ResourceExhausted, Unauthenticated
from gateway.domain.timestamps import rfc3339
from gateway.security.peers import peer_network
from gateway.security.principals import (
    KEY_PREFIX_PATTERN,
    Principal,
    Role,
    TenantId,
)
from gateway.security.rate_limits import TokenBucket
from gateway.security.tenant_policy import RateLimit

log = logging.getLogger("gateway.auth")

KEY_PREFIX = "qgw"
_PREFIX_FORM = re.compile(KEY_PREFIX_PATTERN)  # as ApiKeyConfig.prefix
METADATA_KEY = "authorization"
_PREFIX_BYTES = 6
_SECRET_BYTES = 24


class ApiKeyConfig(BaseModel):
    """One key in the configuration: its public prefix, the hash of the whole key, its tenant."""

    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)

    prefix: str = Field(pattern=rf"^{KEY_PREFIX_PATTERN}$")
    sha256: str = Field(pattern=r"^[0-9a-f]{64}$")
    tenant: TenantId
    name: str = ""
    role: Role = Role.USER


@dataclass(frozen=True)
class NewKey:
    key: str  # shown once to its owner, never stored
    config: ApiKeyConfig


def hash_key(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def generate_key(tenant: str, name: str = "", *, role: Role = Role.USER) -> NewKey:
    prefix = secrets.token_hex(_PREFIX_BYTES)
    key = f"{KEY_PREFIX}_{prefix}_{secrets.token_urlsafe(_SECRET_BYTES)}"
    return NewKey(
        key,
        ApiKeyConfig(prefix=prefix, sha256=hash_key(key), tenant=tenant, name=name, role=role),
    )


class KeyRing:
    """The configured keys, looked up by prefix."""

    def __init__(self, keys: Iterable[ApiKeyConfig]) -> None:
        self._by_prefix: Mapping[str, ApiKeyConfig] = {k.prefix: k for k in keys}

    def __bool__(self) -> bool:
        return bool(self._by_prefix)

    def get(self, prefix: str) -> ApiKeyConfig | None:
        return self._by_prefix.get(prefix)


def key_prefix(token: str) -> str | None:
    """The prefix of a well-formed `qgw_<prefix>_<secret>` token; None for anything else."""
    parts = token.split("_", 2)  # the secret may itself contain "_"
    if len(parts) != 3 or parts[0] != KEY_PREFIX or not parts[2]:
        return None
    # Only a prefix a key can have reaches the cache or the store.
    return parts[1] if _PREFIX_FORM.fullmatch(parts[1]) else None


def _invalid() -> Unauthenticated:
    return Unauthenticated("API_KEY_INVALID", "the API key is not valid")


# Store reads for uncached prefixes, per peer host (KeyVerifier).
LOOKUPS_PER_PEER = RateLimit(per_second=20.0, burst=100)


class KeyStore(Protocol):
    """What key verification needs of the store (gateway.store.base.Store has it)."""

    async def get_api_key(self, prefix: str) -> ApiKeyRecord | None: ...

    async def touch_api_keys(self, used: Mapping[str, datetime]) -> None: ...


class LastUsedRecorder:
    """Batches last-used times: a key is noted at most once per `interval_s`, and the noted
    times are written in one transaction every `interval_s` (and at close), never per call.

    Args:
        store: Where the times go.
        interval_s: How stale a last-used time may be.
    """

    def __init__(
        self,
        store: KeyStore,
        *,
        interval_s: float = 60.0,
        clock: Callable[[], float] = time.monotonic,
        now: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        self._store = store
        self._interval_s = interval_s
        self._clock = clock
        self._now = now
        self._noted: dict[str, float] = {}
        self._pending: dict[str, datetime] = {}
        self._task: asyncio.Task[None] | None = None

    def note(self, prefix: str) -> None:
        """The key was accepted now (cheap: a dictionary look-up on most calls)."""
        t = self._clock()
        last = self._noted.get(prefix)
        if last is not None and t - last < self._interval_s:
            return
        self._noted[prefix] = t
        self._pending[prefix] = self._now()

    async def flush(self) -> None:
        """Writes what was noted since the last flush."""
        pending, self._pending = self._pending, {}
        # A note older than interval_s decides nothing (the key is noted again at its next
        # use): kept, every key ever used (revoked ones too) stayed for the process's life.
        stale = self._clock() - self._interval_s
        self._noted = {prefix: t for prefix, t in self._noted.items() if t > stale}
        if pending:
            await self._store.touch_api_keys(pending)

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="qgateway-key-last-used")

    async def _run(self) -> None:
        while True:
            # A timer, not a poll: it writes only what calls noted meanwhile.
            await asyncio.sleep(self._interval_s)
            try:
                await self.flush()
            except Exception:  # a failed write loses last-used times only; keep going
                log.exception("recording API keys' last use failed")

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        await self.flush()


@dataclass(frozen=True)
class _Cached:
    record: ApiKeyRecord | None  # None: the store has no such key
    fetched: float


class KeyVerifier:
    """Checks a `qgw_` key: configured keys first, then stored ones (cached).

    Args:
        ring: The configured keys (they never expire and cannot be revoked by the API).
        store: Stored keys; None: configured keys only.
        recorder: Notes stored keys' last use.
        cache_s: How long a stored key's record (or its absence) is reused; a revoke made
            on another replica is seen within this.
        max_cached: Bound on cached records (unknown prefixes included).
        lookups_per_peer: Store reads for prefixes not in the cache, per peer host: made-up
            prefixes cost no secret, and each would otherwise be a read on the store's only
            thread. Beyond it a prefix the cache does not know is refused unread (retryable).
    """

    def __init__(
        self,
        ring: KeyRing,
        store: KeyStore | None = None,
        *,
        recorder: LastUsedRecorder | None = None,
        cache_s: float = 30.0,
        max_cached: int = 10_000,
        clock: Callable[[], float] = time.monotonic,
        now: Callable[[], datetime] = lambda: datetime.now(UTC),
        lookups_per_peer: RateLimit = LOOKUPS_PER_PEER,
    ) -> None:
        self._ring = ring
        self._lookups_per_peer = lookups_per_peer
        self._lookups: OrderedDict[str, TokenBucket] = OrderedDict()
        self._store = store
        self._recorder = recorder
        self._cache_s = cache_s
        self._max_cached = max_cached
        self._clock = clock
        self._now = now
        self._cache: OrderedDict[str, _Cached] = OrderedDict()
        # Unknown prefixes apart, with their own bound: a flood of made-up prefixes (no secret
        # needed) must not evict the known keys every real caller relies on.
        self._unknown: OrderedDict[str, _Cached] = OrderedDict()
        self._loading: dict[str, asyncio.Future[ApiKeyRecord | None]] = {}
        # Bumped by forget(): a read that started before a revoke does not cache what it read.
        self._epoch = 0

    def forget(self, prefix: str) -> None:
        """Drops a cached record (RevokeApiKey on this gateway: effective at once)."""
        self._epoch += 1
        self._cache.pop(prefix, None)
        self._unknown.pop(prefix, None)

    def _take_lookup(self, peer: str) -> None:
        """Takes one of the peer's store lookups (its port aside: one host, or one IPv6 /64,
        one budget).

        Raises:
            ResourceExhausted: KEY_LOOKUPS_EXHAUSTED, with RetryInfo. Not API_KEY_INVALID: a
                real key from behind a busy NAT would be told it is bad and never retried;
                and a made-up key learns no more than a real one.
        """
        host = peer_network(peer)
        bucket = self._lookups.get(host)
        if bucket is None:
            bucket = self._lookups[host] = TokenBucket(self._lookups_per_peer, self._clock)
            while len(self._lookups) > self._max_cached:
                self._lookups.popitem(last=False)
        self._lookups.move_to_end(host)
        wait = bucket.take()
        if wait == 0.0:
            return
        rate = self._lookups_per_peer
        raise ResourceExhausted(
            "KEY_LOOKUPS_EXHAUSTED",
            f"this host presented more API keys the gateway has not seen recently than "
            f"{rate.per_second:g} per second (burst {rate.burst}); retry in {wait:.2f}s",
            metadata={
                "perSecond": f"{rate.per_second:g}",
                "burst": str(rate.burst),
                "retryDelaySeconds": f"{wait:.3f}",
            },
            retry_after=wait,
        )

    async def _record(self, prefix: str, peer: str, digest: str) -> ApiKeyRecord | None:
        assert self._store is not None
        known = self._cache.get(prefix)
        cached = known or self._unknown.get(prefix)
        if cached is not None and self._clock() - cached.fetched < self._cache_s:
            return cached.record
        if known is not None and known.record is not None:
            # A stored key's hash never changes: a wrong secret is refused without a read, and
            # the holder of the right one refreshes its record uncharged, so spent lookups on a
            # shared host never lock out keys the gateway already knows.
            if not hmac.compare_digest(digest, known.record.sha256):
                return known.record
        elif prefix not in self._loading:
            self._take_lookup(peer)
        loading = self._loading.get(prefix)
        if loading is not None:  # one store read for a burst of calls with the same key
            return await asyncio.shield(loading)
        future: asyncio.Future[ApiKeyRecord | None] = asyncio.get_running_loop().create_future()
        self._loading[prefix] = future
        epoch = self._epoch
        try:
            record = await self._store.get_api_key(prefix)
        except BaseException as exc:
            future.set_exception(exc)
            future.exception()  # retrieved: waiters re-raise it, no "never retrieved" warning
            raise
        finally:
            del self._loading[prefix]
        future.set_result(record)
        if epoch != self._epoch:
            return record
        cache = self._cache if record is not None else self._unknown
        (self._unknown if record is not None else self._cache).pop(prefix, None)
        cache[prefix] = _Cached(record, self._clock())
        cache.move_to_end(prefix)
        while len(cache) > self._max_cached:
            cache.popitem(last=False)
        return record

    async def verify(self, token: str, peer: str = "") -> Principal:
        """The principal of `token` (the text after "Bearer "), sent by `peer` (gRPC's peer
        string; it bounds the store reads unknown prefixes cost).

        Raises:
            Unauthenticated: API_KEY_INVALID (malformed, unknown or wrong secret),
                API_KEY_EXPIRED or API_KEY_REVOKED (only to a caller holding the secret).
            ResourceExhausted: KEY_LOOKUPS_EXHAUSTED: the key is not cached and `peer`'s host
                has spent its store lookups.
        """
        prefix = key_prefix(token)
        if prefix is None:
            raise _invalid()
        digest = hash_key(token)
        configured = self._ring.get(prefix)
        if configured is not None:
            if not hmac.compare_digest(digest, configured.sha256):
                raise _invalid()
            return Principal(
                tenant=configured.tenant,
                id=f"apiKeys/{prefix}",
                role=configured.role,
                key_prefix=prefix,
            )
        record = await self._record(prefix, peer, digest) if self._store is not None else None
        # Compare against a dummy hash when the prefix is unknown, so timing tells nothing.
        expected = record.sha256 if record is not None else "0" * 64
        if not hmac.compare_digest(digest, expected) or record is None:
            raise _invalid()
        state = record.state(self._now())
        if state is KeyState.REVOKED:
            raise Unauthenticated(
                "API_KEY_REVOKED",
                "the API key was revoked",
                metadata={"keyPrefix": prefix},
            )
        if state is KeyState.EXPIRED:
            assert record.expires_at is not None
            raise Unauthenticated(
                "API_KEY_EXPIRED",
                "the API key has expired",
                metadata={"keyPrefix": prefix, "expireTime": rfc3339(record.expires_at)},
            )
        if self._recorder is not None:
            self._recorder.note(prefix)
        return Principal(
            tenant=record.tenant,
            id=f"apiKeys/{prefix}",
            role=Role(record.role),
            key_prefix=prefix,
            expires_at=record.expires_at,
        )
