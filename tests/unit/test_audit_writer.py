"""The audit writer (batches, failed-authentication aggregation under a bound) and the
ListAuditRecords filter, in-process."""

from __future__ import annotations

import asyncio
import stat
from collections.abc import Sequence
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from gateway.api.audit_filter import parse_audit_filter
from gateway.domain.audit import AuditComparison, AuditRecord, ChainPoint
from gateway.domain.errors import InvalidArgument
from gateway.security import audit_writer
from gateway.security.audit_writer import OVERFLOW_PEER, OVERFLOW_REASON, AuditWriter
from gateway.security.peers import is_loopback_host, peer_host, peer_network

T0 = datetime(2026, 12, 1, tzinfo=UTC)


class Sink:
    def __init__(self) -> None:
        self.batches: list[list[AuditRecord]] = []

    async def append_audit(self, records: Sequence[AuditRecord]) -> ChainPoint:
        self.batches.append(list(records))
        return ChainPoint(sum(len(b) for b in self.batches), b"")

    @property
    def records(self) -> list[AuditRecord]:
        return [r for b in self.batches for r in b]


def _failure(peer: str, reason: str = "API_KEY_INVALID") -> AuditRecord:
    return AuditRecord(
        time=T0,
        end_time=T0,
        service="qgateway.v1.JobService",
        method="GetJob",
        peer=peer,
        code=16,
        reason=reason,
    )


def test_a_flood_from_one_peer_is_two_records_that_count_every_call() -> None:
    async def main() -> Sink:
        sink = Sink()
        writer = AuditWriter(sink, flush_interval_s=3600, failure_window_s=3600)
        for port in range(1000):  # every call from a new port of one host
            writer.auth_failed(_failure(f"ipv4:10.0.0.1:{40000 + port}"))
        await writer.close()
        return sink

    records = asyncio.run(main()).records
    assert len(records) == 2
    assert [r.count for r in records] == [1, 999]
    assert {r.peer for r in records} == {"ipv4:10.0.0.1"}


def test_the_aggregated_record_spans_its_window_from_the_second_failure_to_the_last() -> None:
    async def main() -> Sink:
        sink = Sink()
        writer = AuditWriter(sink, flush_interval_s=3600, failure_window_s=3600)
        for i, method in enumerate(("GetJob", "SubmitJob", "ListJobs", "CancelJob")):
            at = T0 + timedelta(seconds=i)
            failure = replace(_failure("ipv4:10.0.0.1:4000"), method=method)
            writer.auth_failed(replace(failure, time=at, end_time=at))
        await writer.close()
        return sink

    first, aggregated = asyncio.run(main()).records
    assert (first.method, first.count) == ("GetJob", 1)
    assert (aggregated.method, aggregated.count) == ("SubmitJob", 3)
    assert aggregated.time == T0 + timedelta(seconds=1)
    assert aggregated.end_time == T0 + timedelta(seconds=3)


def test_many_peers_are_bounded_by_the_overflow_record() -> None:
    async def main() -> Sink:
        sink = Sink()
        writer = AuditWriter(
            sink, flush_interval_s=3600, failure_window_s=3600, max_failure_peers=8
        )
        for host in range(500):
            for _ in range(3):
                writer.auth_failed(_failure(f"ipv4:10.0.{host // 256}.{host % 256}:5000"))
        await writer.close()
        return sink

    records = asyncio.run(main()).records
    # 8 peers told apart (first + aggregate each), everything else under "*" (first + rest).
    assert len(records) <= 2 * 8 + 2
    assert sum(r.count for r in records) == 1500
    overflow = [r for r in records if r.peer == OVERFLOW_PEER]
    assert overflow and all(r.reason == OVERFLOW_REASON for r in overflow)


def test_one_ipv6_slash_64_is_one_failing_peer() -> None:
    # Failures are grouped as the key-lookup budget counts clients: one subscriber rotating
    # through its /64 took every slot, and a brute force from elsewhere went unnamed.
    async def main() -> Sink:
        sink = Sink()
        writer = AuditWriter(
            sink, flush_interval_s=3600, failure_window_s=3600, max_failure_peers=8
        )
        for host in range(500):
            writer.auth_failed(_failure(f"ipv6:[2001:db8:0:1::{host:x}]:5000"))
        for _ in range(3):
            writer.auth_failed(_failure("ipv4:203.0.113.9:5000", "JWT_INVALID"))
        await writer.close()
        return sink

    records = asyncio.run(main()).records
    flood = [r for r in records if r.peer == "ipv6:2001:db8:0:1::/64"]
    assert sum(r.count for r in flood) == 500
    brute = [r for r in records if r.peer == "ipv4:203.0.113.9"]
    assert [r.reason for r in brute] == ["JWT_INVALID"] * 2
    assert sum(r.count for r in brute) == 3
    assert not [r for r in records if r.peer == OVERFLOW_PEER]


class FailingSink(Sink):
    """A store that cannot write (a full disk) for its first `failures` batches."""

    def __init__(self, failures: int) -> None:
        super().__init__()
        self.failures = failures

    async def append_audit(self, records: Sequence[AuditRecord]) -> ChainPoint:
        if self.failures:
            self.failures -= 1
            raise OSError("database or disk is full")
        return await super().append_audit(records)


def test_records_the_store_could_not_write_are_written_when_it_can_again(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # A failed batch was logged and dropped: a full disk still serves reads, and their
    # records were lost for good while the chain still verified.
    monkeypatch.setattr(audit_writer, "RETRY_S", 0.01)

    async def main() -> Sink:
        sink = FailingSink(failures=3)
        writer = AuditWriter(sink, flush_interval_s=0.01, max_batch=10)
        for i in range(25):
            writer.add(replace(_failure(f"ipv4:10.0.0.{i}:1"), code=0, reason=""))
            await asyncio.sleep(0.002)
        async with asyncio.timeout(10):
            while sink.failures or writer.written < 25:
                await asyncio.sleep(0.01)
        await writer.close()
        return sink

    records = asyncio.run(main()).records
    assert sorted(r.peer for r in records) == sorted(f"ipv4:10.0.0.{i}:1" for i in range(25))


def test_records_past_the_bound_while_the_store_fails_are_counted_not_kept(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(audit_writer, "RETRY_S", 0.01)

    async def main() -> Sink:
        sink = FailingSink(failures=1)
        writer = AuditWriter(sink, flush_interval_s=3600, max_batch=10, max_held=15)
        for i in range(10):  # a full batch: written at once, and refused
            writer.add(_failure(f"ipv4:10.0.0.{i}:1"))
        while sink.failures:
            await asyncio.sleep(0)
        await asyncio.sleep(0)  # the refusal's callback
        for i in range(10, 40):  # held meanwhile, past the bound
            writer.add(_failure(f"ipv4:10.0.0.{i}:1"))
        async with asyncio.timeout(10):
            while sink.failures or not sink.batches:
                await asyncio.sleep(0.01)
        await writer.close()
        return sink

    records = asyncio.run(main()).records
    lost = [r for r in records if r.reason == audit_writer.LOST_REASON]
    kept = [r for r in records if r.reason != audit_writer.LOST_REASON]
    assert len(kept) == 15 and [r.count for r in lost] == [25]
    assert [r.peer for r in kept] == [f"ipv4:10.0.0.{i}:1" for i in range(25, 40)]


def test_the_count_of_dropped_records_is_written_once_when_its_batch_fails_again() -> None:
    async def main() -> Sink:
        sink = FailingSink(failures=2)
        writer = AuditWriter(sink, flush_interval_s=3600, max_batch=10, max_held=15)
        for i in range(10):  # a full batch: handed over at once, and refused
            writer.add(_failure(f"ipv4:10.0.0.{i}:1"))
        await writer.flush()
        for i in range(10, 20):  # held: the oldest 5 go past max_held, counted
            writer.add(_failure(f"ipv4:10.0.0.{i}:1"))
        await writer.flush()  # 10 records and the count: refused again
        await writer.close()  # written
        return sink

    records = asyncio.run(main()).records
    lost = [r for r in records if r.reason == audit_writer.LOST_REASON]
    assert [r.count for r in lost] == [5]
    kept = sorted(r.peer for r in records if r.reason != audit_writer.LOST_REASON)
    assert kept == sorted(f"ipv4:10.0.0.{i}:1" for i in range(5, 20))


def test_the_overflow_record_names_no_caller_tenant_or_method() -> None:
    # Past the bound, refusals of every tenant are counted into one record: it must not carry
    # the first overflowing call's identity (another tenant's admin would see them as its own).
    async def main() -> Sink:
        sink = Sink()
        writer = AuditWriter(
            sink, flush_interval_s=3600, failure_window_s=3600, max_failure_peers=2
        )
        for host in range(2):
            writer.auth_failed(_failure(f"ipv4:10.9.9.{host}:5000"))
        acme = replace(
            _failure("ipv4:10.0.0.1:5000", "RATE_LIMITED"),
            tenant="acme",
            principal="apiKeys/acme1",
            key_prefix="acme1",
            method="SubmitJob",
        )
        globex = replace(acme, tenant="globex", principal="apiKeys/globex1", key_prefix="g1")
        for record in (acme, acme, *[globex] * 5):
            writer.auth_failed(record)
        await writer.close()
        return sink

    overflow = [r for r in asyncio.run(main()).records if r.peer == OVERFLOW_PEER]
    assert sum(r.count for r in overflow) == 7
    for record in overflow:
        assert (record.tenant, record.principal, record.key_prefix) == ("", "", "")
        assert (record.method, record.reason) == ("", OVERFLOW_REASON)


def test_one_principal_in_two_tenants_is_counted_per_tenant() -> None:
    # A JWT subject is one principal in every tenant its tokens name: its refusals in one
    # tenant were counted into a record of the other (whose admin then saw them).
    async def main() -> Sink:
        sink = Sink()
        writer = AuditWriter(sink, flush_interval_s=3600, failure_window_s=3600)
        ta = replace(
            _failure("ipv4:10.0.0.1:5000", "RATE_LIMITED"),
            tenant="ta",
            principal="jwt/https://idp.test/#bob",
        )
        tb = replace(ta, tenant="tb")
        for record in (ta, ta, ta, tb, tb, tb, tb, tb):
            writer.auth_failed(record)
        await writer.close()
        return sink

    counts: dict[str, int] = {}
    for record in asyncio.run(main()).records:
        counts[record.tenant] = counts.get(record.tenant, 0) + record.count
    assert counts == {"ta": 3, "tb": 5}


def test_records_are_written_in_batches() -> None:
    async def main() -> Sink:
        sink = Sink()
        writer = AuditWriter(sink, flush_interval_s=3600, max_batch=10)
        record = _failure("ipv4:127.0.0.1:1")
        for _ in range(25):
            writer.add(record)
        await asyncio.sleep(0)  # the full batches' writes start
        assert [len(b) for b in sink.batches] == [10, 10]
        await writer.close()
        writer.add(record)  # after close: dropped, never a late write
        return sink

    sink = asyncio.run(main())
    assert [len(b) for b in sink.batches] == [10, 10, 5]


def test_peer_hosts() -> None:
    assert peer_host("ipv4:127.0.0.1:5555") == "ipv4:127.0.0.1"
    assert peer_host("ipv6:[::1]:5555") == "ipv6:[::1]"
    assert peer_host("ipv6:%5B::1%5D:42150") == "ipv6:%5B::1%5D"  # what grpcio 1.85 reports
    assert peer_host("unix:/tmp/s") == "unix:/tmp/s"


def test_the_audit_filter() -> None:
    parsed = parse_audit_filter(
        'tenant = "acme" AND (method = "SubmitJob" OR method = "Run")'
        ' AND time >= "2026-12-01T00:00:00.0000005Z"'
    )
    assert parsed.clauses[0] == (AuditComparison("tenant", "=", "acme"),)
    assert {c.value for c in parsed.clauses[1]} == {"SubmitJob", "Run"}
    # Nanoseconds rounded up for >=: the comparison in microseconds stays exact.
    start_us = (T0 - datetime(1970, 1, 1, tzinfo=UTC)) // timedelta(microseconds=1)
    assert parsed.clauses[2] == (AuditComparison("time", ">=", start_us + 1),)
    same = parse_audit_filter(
        '(method = "Run" OR method = "SubmitJob") AND time >= "2026-12-01T00:00:00.0000005Z"'
        ' AND tenant = "acme"'
    )
    assert same.canonical() == parsed.canonical()
    for bad in ('tenant > "a"', "tenant = acme", 'shots = "1"', '(tenant = "a" OR method = "b")'):
        with pytest.raises(InvalidArgument) as err:
            parse_audit_filter(bad)
        assert err.value.reason == "INVALID_FILTER"


@pytest.mark.parametrize(("op", "up"), [(">", False), ("<=", False), (">=", True), ("<", True)])
def test_a_time_bound_between_microseconds_rounds_to_keep_the_comparison(op: str, up: bool) -> None:
    # A record at start_us + 1 is after 00:00:00.0000005 and one at start_us is before it:
    # ">" and "<=" round down, ">=" and "<" round up.
    parsed = parse_audit_filter(f'time {op} "2026-12-01T00:00:00.0000005Z"')
    start_us = (T0 - datetime(1970, 1, 1, tzinfo=UTC)) // timedelta(microseconds=1)
    assert parsed.clauses == ((AuditComparison("time", op, start_us + int(up)),),)


def test_audit_config_refuses_typos_and_off_builds_nothing(tmp_path: Path) -> None:
    from gateway.config import ConfigError, load_config
    from gateway.server import _audit_log
    from gateway.store.sqlite import SqliteStore

    typo = tmp_path / "typo.toml"
    typo.write_text("[audit]\nkey_fle = 'x'\n")
    with pytest.raises(ConfigError, match="key_fle"):
        load_config(typo)
    off = tmp_path / "off.toml"
    off.write_text(f"data_dir = '{tmp_path / 'data'}'\n[audit]\nenabled = false\n")
    assert _audit_log(load_config(off), SqliteStore(tmp_path / "data" / "q.db")) is None
    assert not (tmp_path / "data" / "audit.key").exists()
    on = tmp_path / "on.toml"
    on.write_text(f"data_dir = '{tmp_path / 'data'}'\n")
    assert _audit_log(load_config(on), SqliteStore(tmp_path / "data" / "q.db")) is not None
    key = tmp_path / "data" / "audit.key"
    assert stat.S_IMODE(key.stat().st_mode) == 0o600
    assert len(key.read_bytes()) == 32


def test_peer_networks() -> None:
    assert peer_network("ipv4:127.0.0.1:5555") == "ipv4:127.0.0.1"
    assert peer_network("ipv6:[2001:db8:1:2::7]:5555") == "ipv6:2001:db8:1:2::/64"
    assert peer_network("ipv6:%5B2001:db8:1:2:ffff::1%5D:42150") == "ipv6:2001:db8:1:2::/64"
    assert peer_network("ipv6:[fe80::1%25eth0]:5555") == "ipv6:fe80::/64"
    assert peer_network("unix:/tmp/s") == "unix:/tmp/s"


@pytest.mark.parametrize(
    ("host", "loopback"),
    [
        ("localhost", True),
        ("127.0.0.1", True),
        ("127.9.9.9", True),
        ("::1", True),
        ("10.0.0.1", False),
        ("example.com", False),
        ("localhost.example.com", False),
    ],
)
def test_loopback_hosts(host: str, loopback: bool) -> None:
    assert is_loopback_host(host) is loopback
