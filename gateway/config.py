"""User-facing configuration: a TOML file plus QGATEWAY_* environment variables.

Every model forbids unknown keys, so a typo is an error that names the key. Environment
variables override the file; nested keys use "__" (QGATEWAY_SERVER__LISTEN=0.0.0.0:50051).
"""

from __future__ import annotations

import os
import tomllib
import types
import typing
from collections.abc import Mapping
from dataclasses import replace
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    SettingsError,
)

from gateway.backends.base import AdapterContext, CircuitLimits
from gateway.backends.fault import FaultOptions
from gateway.domain.backends import BackendLimits
from gateway.domain.pricing import Price
from gateway.runtime.breaker import BreakerPolicy
from gateway.runtime.compiler import CompileLimits
from gateway.runtime.pool import PoolLimits
from gateway.security.api_keys import ApiKeyConfig
from gateway.security.jwt_auth import JwtConfig
from gateway.security.mtls import CertMatch, CertRule
from gateway.security.principals import ANONYMOUS, Principal, Role, is_tenant_id
from gateway.security.tenant_policy import (
    DAY_S,
    MAX_DISPLAY_NAME,
    MAX_PERIOD_S,
    MIN_PER_SECOND,
    PeriodQuota,
    RateLimit,
    Tenant,
    TenantPolicy,
    etag_of,
    validate_policy,
)
from gateway.setting_bounds import MAX_DAYS, MAX_MB, MAX_PRICE, MAX_SECONDS
from gateway.store.base import REQUEST_ID_DEDUP_WINDOW_S
from gateway.telemetry.settings import TelemetryConfig

ENV_PREFIX = "QGATEWAY_"
# Variables with the prefix that belong to the client CLI, not to the server's settings.
CLIENT_ENV_VARS = frozenset({"QGATEWAY_TARGET", "QGATEWAY_API_KEY"})
MIB = 1 << 20


# gRPC's message-size options are int32: the transport limits derived from these must fit.
_INT32_MAX = 2**31 - 1
# Counts and sizes that ListBackends, GetBackend or GetTenantUsage report travel in int64
# fields (int32 where the bound below says so): a value past them made those calls INTERNAL.
_INT64_MAX = 2**63 - 1
# The largest spec or result the store takes: SQLite holds a value of at most 1,000,000,000
# bytes (SQLITE_MAX_LENGTH); 900 MiB leaves room for the encoding around the client's bytes.
STORED_VALUE_MAX_BYTES = 900 * MIB
# Processes one setting may start: far beyond any machine's cores, and a typo's cost bounded
# (each warm worker holds ~1.2 GiB).
MAX_PROCESSES = 1024
# Request metadata (headers) a call may carry, both ports.
METADATA_LIMIT_BYTES = 16 * 1024


# What a warmed simulator worker holds before any job (measured: VmData ~1.2 GiB for Aer,
# ~1.35 GiB for Braket and PennyLane), with room to spare: 1 GiB left a Braket job that fit
# its budget out of memory.
WORKER_HEADROOM_MB = 2048


class ConfigError(ValueError):
    """The configuration is invalid; the message names the offending key."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)


class TlsConfig(_Strict):
    """`[server.tls]`: the gateway's certificate and, for mTLS, the CA its clients' certificates
    must chain to. Rotated files are picked up for new connections without a restart."""

    cert_file: Path
    key_file: Path
    client_ca_file: Path | None = None
    # "require": every connection presents a certificate that chains to client_ca_file.
    # "optional" is refused: grpcio's Python server cannot request a certificate without
    # requiring it (it would silently accept none), so mixed fleets use "none" plus bearer
    # credentials, or "require" on a port of their own.
    client_auth: Literal["none", "optional", "require"] = "none"
    # How often, at most, a new connection checks the files for a rotation.
    reload_check_s: float = Field(default=5.0, ge=0, le=MAX_SECONDS)

    @model_validator(mode="after")
    def _client_auth(self) -> TlsConfig:
        if self.client_auth == "optional":
            raise ValueError(
                "client_auth = 'optional' is not supported: grpcio's Python server requests "
                "client certificates only when it requires them; use 'require' or 'none'"
            )
        if (self.client_auth == "require") != (self.client_ca_file is not None):
            raise ValueError("client_auth = 'require' and client_ca_file go together")
        return self


class ServerConfig(_Strict):
    listen: str = "127.0.0.1:50051"
    # TLS (and mTLS) on `listen`; unset: plaintext.
    tls: TlsConfig | None = None
    # A plaintext port serving only grpc.health.v1 (Kubernetes probes while `listen` is TLS).
    health_listen: str | None = None
    # The gateway's own request limit: below gRPC's transport limit, so an oversize request gets
    # a detailed error instead of gRPC's bare one, and below what the store can hold (the spec
    # is stored as one value).
    max_request_bytes: int = Field(default=16 * MIB, gt=0, le=STORED_VALUE_MAX_BYTES)
    # gRPC holds a request's bytes as they arrive: a caller that sends most of a large body
    # and goes silent keeps them in memory. Requests of one tenant whose message is still
    # arriving a second after their headers (slow ones) are limited, one more is
    # RESOURCE_EXHAUSTED TOO_MANY_SLOW_REQUESTS; no message may take longer than the timeout
    # (DEADLINE_EXCEEDED REQUEST_READ_TIMEOUT). 16 MiB in 60 s needs ~2.3 Mbit/s.
    max_slow_requests_per_tenant: int = Field(default=32, gt=0, le=_INT32_MAX)
    request_read_timeout_s: float = Field(default=60.0, gt=1.0, le=MAX_SECONDS)
    # Largest response the gateway sends in one message; the default matches gRPC clients'
    # default receive limit, so any client can read every answer.
    max_response_bytes: int = Field(default=4 * MIB - 64 * 1024, gt=0, le=_INT32_MAX - MIB)
    # Threads that check large sweeps and observables next to the event loop, shared fairly
    # across tenants.
    prepare_threads: int = Field(default=4, gt=0, le=MAX_PROCESSES)
    grace_period_s: float = Field(default=30.0, ge=0, le=MAX_SECONDS)
    # Longest a Run call waits for its job, whatever the caller's deadline (none included):
    # then it answers DEADLINE_EXCEEDED RUN_DEADLINE_EXCEEDED and the job keeps running. Keeps
    # calls through proxies and load balancers, which cut idle calls, short.
    run_max_wait_s: float = Field(default=60.0, gt=0, le=MAX_SECONDS)
    # WatchJob sends the job again (heartbeat = true) after this long without a change, so a
    # silent stream through a proxy can be told from a dead one.
    watch_heartbeat_s: float = Field(default=10.0, gt=0, le=MAX_SECONDS)
    # How long a SUCCEEDED job's result is kept (Job.expire_time = end_time + this, fixed when
    # the job finishes); later GetJobResult/StreamJobResult answer NOT_FOUND RESULT_EXPIRED.
    result_retention_days: float = Field(default=30.0, gt=0, le=MAX_DAYS)
    # How long a final job (and its state history) is kept after it ended; an ended session is
    # deleted as old once none of its jobs is left. Then GetJob answers NOT_FOUND, and a
    # request_id may be used again. At least result_retention_days (an expired result answers
    # RESULT_EXPIRED, not a missing job) and the 7 days a request_id is recognised for.
    job_retention_days: float = Field(default=90.0, gt=0, le=MAX_DAYS)
    # Where schedulers claim jobs from: "memory" (this process's fair queue; it alone uses the
    # store and recovers it at start) or "store" (claims are leases in the store, so several
    # gateway processes can share it; a dead holder's jobs are claimed again when its lease
    # lapses).
    queue: Literal["memory", "store"] = "memory"
    # How long a claim lasts unless renewed (its holder renews every third of it).
    lease_s: float = Field(default=30.0, gt=0, le=MAX_SECONDS)
    # Sessions (SessionService): open (not ended) sessions a tenant may hold; the longest max
    # TTL a session may ask for (also its default); the idle TTL of a session that names none.
    max_sessions_per_tenant: int = Field(default=10, gt=0, le=_INT32_MAX)
    session_max_ttl_s: float = Field(default=8 * 3600.0, gt=0, le=MAX_SECONDS)
    session_idle_ttl_s: float = Field(default=300.0, gt=0, le=MAX_SECONDS)
    # Open server streams (WatchJob, StreamJobResult) and waiting Run calls one tenant may hold
    # on this process; one more is RESOURCE_EXHAUSTED TOO_MANY_STREAMS.
    max_streams_per_tenant: int = Field(default=1000, gt=0, le=_INT32_MAX)
    # Health.Watch calls open at once on this process (they need no credentials); one more is
    # RESOURCE_EXHAUSTED TOO_MANY_WATCHES.
    max_health_watches: int = Field(default=1000, gt=0, le=_INT32_MAX)
    # Stored-result bytes that open StreamJobResult calls hold in memory (each keeps its parsed
    # result until it ends), per tenant and for the whole process; past either a new stream is
    # RESOURCE_EXHAUSTED STREAM_MEMORY_EXHAUSTED. An empty budget takes any one result.
    max_streamed_result_mb_per_tenant: float = Field(default=512.0, gt=0, le=MAX_MB)
    max_streamed_result_mb: float = Field(default=2048.0, gt=0, le=MAX_MB)
    # StreamJobResult messages a second one tenant's streams send together (also the burst);
    # the rest wait. A message per binding and register costs the loop ~40 us however small:
    # this bounds what a result of many tiny parts costs (gateway.api.stream_pace).
    stream_messages_per_s: float = Field(default=5_000.0, ge=1, le=1e9)
    # HTTP/2 connections (both ports). grpc's defaults keep a connection for ever: idle ones
    # held a descriptor each until new clients and kubelet probes were refused, a client's
    # channel stayed pinned to one replica behind an L4 balancer however far the fleet scaled,
    # a dead peer went unnoticed for 2 h, and one connection could open streams without limit.
    # Streams one connection may have open at once (a client queues the rest; the default
    # matches max_streams_per_tenant, so one channel can hold a tenant's watches).
    max_concurrent_streams: int = Field(default=1000, gt=0, le=_INT32_MAX)
    # A connection with no call for this long is closed (GOAWAY; clients reconnect on demand).
    max_connection_idle_s: float = Field(default=300.0, gt=0, le=_INT32_MAX / 1000)
    # A connection is asked to go (GOAWAY) at this age, so clients reconnect (to whichever
    # replica the balancer picks); its calls get the grace period to finish, then are cut
    # UNAVAILABLE (the Python client resumes watches and result streams). At least
    # run_max_wait_s, so a Run in progress is answered.
    max_connection_age_s: float = Field(default=1800.0, gt=0, le=_INT32_MAX / 1000)
    max_connection_age_grace_s: float = Field(default=300.0, ge=0, le=_INT32_MAX / 1000)
    # The server pings a connection after this long without activity, and drops it when no
    # answer comes within the timeout (a peer that vanished without a FIN).
    keepalive_time_s: float = Field(default=60.0, gt=0, le=_INT32_MAX / 1000)
    keepalive_timeout_s: float = Field(default=20.0, gt=0, le=_INT32_MAX / 1000)
    # Clients' own keepalive pings are accepted this often, with or without calls (grpc's 5
    # minutes closed connections of clients pinging every minute with "too many pings").
    min_client_ping_interval_s: float = Field(default=30.0, gt=0, le=_INT32_MAX / 1000)
    # CPUs the gateway process's own threads run on (Linux); unset: wherever the kernel puts
    # them. Its Python threads take turns on one interpreter lock, and every hand-off between
    # threads on two cores wakes an idle core (costly on VMs): on one CPU a sequential Run's
    # p50 fell by a quarter on a 2-CPU VM, and the most jobs/s with 64 clients by a fifth (the
    # SQLite writer and gRPC's threads no longer run beside the event loop). Workers are not
    # bound (gateway.runtime.affinity). Name CPUs no other busy process is bound to.
    cpu_affinity: tuple[int, ...] | None = Field(default=None, min_length=1, max_length=4096)

    @model_validator(mode="after")
    def _runs_outlive_a_connection_age(self) -> ServerConfig:
        if self.max_connection_age_grace_s < self.run_max_wait_s:
            raise ValueError(
                f"max_connection_age_grace_s ({self.max_connection_age_grace_s:g}) must be at"
                f" least run_max_wait_s ({self.run_max_wait_s:g}): a Run waiting on an aged"
                " connection would be cut before its answer"
            )
        return self

    @model_validator(mode="after")
    def _jobs_outlive_their_results(self) -> ServerConfig:
        least = max(self.result_retention_days, REQUEST_ID_DEDUP_WINDOW_S / 86_400)
        if self.job_retention_days < least:
            raise ValueError(
                f"job_retention_days ({self.job_retention_days:g}) must be at least"
                f" result_retention_days and the {REQUEST_ID_DEDUP_WINDOW_S // 86_400} days a"
                f" request_id is recognised for: {least:g}"
            )
        return self

    @field_validator("listen", "health_listen")
    @classmethod
    def _host_and_port(cls, address: str | None) -> str | None:
        # gRPC takes a port past 65535 modulo 65536, and no port as 443: the gateway served
        # on a port nobody asked for.
        if address is None or address.startswith(("unix:", "unix-abstract:")):
            return address
        host, colon, port = address.rpartition(":")
        if not colon or not host or not (port.isascii() and port.isdigit()) or int(port) > 65535:
            raise ValueError(
                f"{address!r}: expected HOST:PORT, the port 0-65535 (0: any free port), or "
                "unix:PATH"
            )
        return address

    @field_validator("cpu_affinity")
    @classmethod
    def _distinct_cpus(cls, cpus: tuple[int, ...] | None) -> tuple[int, ...] | None:
        if cpus is not None:
            if any(cpu < 0 for cpu in cpus):
                raise ValueError("CPU numbers are >= 0")
            if len(set(cpus)) != len(cpus):
                raise ValueError("a CPU is named twice")
        return cpus

    def connection_options(self) -> list[tuple[str, int]]:
        """grpc server options for the settings above (both ports)."""

        def ms(seconds: float) -> int:
            return max(1, round(seconds * 1000))

        return [
            ("grpc.max_concurrent_streams", self.max_concurrent_streams),
            ("grpc.max_connection_idle_ms", ms(self.max_connection_idle_s)),
            ("grpc.max_connection_age_ms", ms(self.max_connection_age_s)),
            ("grpc.max_connection_age_grace_ms", round(self.max_connection_age_grace_s * 1000)),
            ("grpc.keepalive_time_ms", ms(self.keepalive_time_s)),
            ("grpc.keepalive_timeout_ms", ms(self.keepalive_timeout_s)),
            ("grpc.http2.min_ping_interval_without_data_ms", ms(self.min_client_ping_interval_s)),
            ("grpc.keepalive_permit_without_calls", 1),
            # grpc refuses request metadata between its soft (8 KiB) and hard (16 KiB) limits
            # at random; a large JWT beside a forwarded client certificate falls there. One
            # limit: up to 16 KiB is always accepted, above it always refused.
            ("grpc.max_metadata_size", METADATA_LIMIT_BYTES),
            ("grpc.absolute_max_metadata_size", METADATA_LIMIT_BYTES),
            ("grpc.so_reuseport", 0),
        ]

    @property
    def transport_max_receive_bytes(self) -> int:
        return self.max_request_bytes * 2 + MIB

    def stream_budget_bytes(self) -> tuple[int, int]:
        """(per tenant, whole process) bytes of the streamed-result budgets."""
        return (
            max(1, round(self.max_streamed_result_mb_per_tenant * MIB)),
            max(1, round(self.max_streamed_result_mb * MIB)),
        )


class CircuitConfig(_Strict):
    """Limits on one circuit, checked from its parsed structure before it is built or
    transpiled (each refusal names its limit)."""

    max_source_bytes: int = Field(default=1 * MIB, gt=0, le=_INT32_MAX)
    # Gate applications once every definition is unrolled (counted per definition).
    max_operations: int = Field(default=250_000, gt=0, le=_INT64_MAX)
    # Operations that exist only inside gate definitions, unrolled: transpiling pays for each.
    max_definition_operations: int = Field(default=20_000, gt=0, le=_INT64_MAX)
    # Declared classical bits (the reader allocates each one).
    max_clbits: int = Field(default=100_000, gt=0, le=_INT64_MAX)

    def limits(self) -> CircuitLimits:
        return CircuitLimits(
            max_source_bytes=self.max_source_bytes,
            max_operations=self.max_operations,
            max_definition_operations=self.max_definition_operations,
            max_clbits=self.max_clbits,
        )


class CompilerConfig(_Strict):
    """Compile workers: the processes that parse, validate and transpile client circuits."""

    # Processes, shared fairly across tenants. The default is one per core of this kind of
    # machine; a lone tenant may use them all.
    workers: int = Field(default=2, ge=1, le=MAX_PROCESSES)
    # A compile past either limit is killed and refused with CIRCUIT_TOO_COMPLEX. CPU time is
    # the circuit's own cost (the refusal is cached by content); wall time is the backstop for
    # a compile that stalls, and is longer, since a loaded machine also makes compiles slower.
    cpu_time_s: float = Field(default=10.0, gt=0, le=MAX_SECONDS)
    timeout_s: float = Field(default=30.0, gt=0, le=MAX_SECONDS)
    # Memory one compile may allocate beyond the warm worker's own size (an OS limit,
    # RLIMIT_DATA); past it the compile is refused with CIRCUIT_TOO_COMPLEX.
    memory_headroom_mb: int = Field(default=1024, ge=64, le=MAX_MB)
    # Compiled circuits and refusals kept by content digest.
    cache_mb: int = Field(default=256, gt=0, le=MAX_MB)
    # A compile that finds no free worker within this answers RESOURCE_EXHAUSTED.
    acquire_timeout_s: float = Field(default=30.0, gt=0, le=MAX_SECONDS)
    # Replacements of killed compile workers per second, after a burst of `workers`. A start
    # costs seconds of CPU (the SDK imports), so a client whose every circuit hits a limit
    # must not make the gateway spend its cores on respawning.
    max_creations_per_s: float = Field(default=0.5, gt=0)

    def limits(self) -> CompileLimits:
        return CompileLimits(
            timeout_s=self.timeout_s,
            cpu_time_s=self.cpu_time_s,
            memory_bytes=self.memory_headroom_mb * MIB,
            cache_bytes=self.cache_mb * MIB,
            acquire_timeout_s=self.acquire_timeout_s,
        )

    def pool_limits(self) -> PoolLimits:
        return PoolLimits(
            min_instances=self.workers,
            max_instances=self.workers,
            acquire_timeout_s=self.acquire_timeout_s,
            max_creations_per_s=self.max_creations_per_s,
        )


class PoolConfig(_Strict):
    """Instances of a backend: warm worker processes for simulators."""

    min_instances: int = Field(default=1, ge=0, le=MAX_PROCESSES)
    # The backend's concurrency limit.
    max_instances: int = Field(default=1, ge=1, le=MAX_PROCESSES)
    max_age_s: float = Field(default=3600.0, gt=0, le=MAX_SECONDS)
    idle_timeout_s: float = Field(default=600.0, gt=0, le=MAX_SECONDS)
    acquire_timeout_s: float = Field(default=30.0, gt=0, le=MAX_SECONDS)
    # Worker (re)starts per second once a burst of max_instances is spent: a client whose every
    # job kills its worker cannot make the gateway fork faster than this.
    max_creations_per_s: float = Field(default=1.0, gt=0)

    @model_validator(mode="after")
    def _min_within_max(self) -> PoolConfig:
        if self.min_instances > self.max_instances:
            raise ValueError(
                f"min_instances ({self.min_instances}) is above max_instances "
                f"({self.max_instances})"
            )
        return self

    def limits(self) -> PoolLimits:
        return PoolLimits(
            min_instances=self.min_instances,
            max_instances=self.max_instances,
            max_age_s=self.max_age_s,
            idle_timeout_s=self.idle_timeout_s,
            acquire_timeout_s=self.acquire_timeout_s,
            max_creations_per_s=self.max_creations_per_s,
        )


class BreakerConfig(_Strict):
    failure_threshold: int = Field(default=5, ge=1, le=_INT32_MAX)
    window_s: float = Field(default=60.0, gt=0, le=MAX_SECONDS)
    cooldown_s: float = Field(default=30.0, gt=0, le=MAX_SECONDS)

    def policy(self) -> BreakerPolicy:
        return BreakerPolicy(self.failure_threshold, self.window_s, self.cooldown_s)


class PriceConfig(_Strict):
    """What a job on the backend costs: per task, per shot, per second of execution."""

    per_task: float = Field(default=0.0, ge=0, le=MAX_PRICE)
    per_shot: float = Field(default=0.0, ge=0, le=MAX_PRICE)
    per_second: float = Field(default=0.0, ge=0, le=MAX_PRICE)
    unit: str = Field(default="USD", pattern=r"^[A-Za-z][A-Za-z0-9_-]{0,31}$")

    def price(self) -> Price:
        return Price(self.per_task, self.per_shot, self.per_second, self.unit)


class BackendConfig(_Strict):
    adapter: str
    max_shots: int = Field(default=1_000_000, gt=0, le=_INT64_MAX)
    default_shots: int = Field(default=1024, gt=0)
    memory_budget_mb: int = Field(default=4096, gt=0, le=MAX_MB)
    # OS limit (RLIMIT_DATA) on each worker process; default: the budget plus 2 GiB of headroom
    # (a warmed Braket or PennyLane worker's own data is ~1.35 GiB before any job)
    # for the interpreter and SDKs.
    worker_memory_limit_mb: int | None = Field(default=None, gt=0, le=MAX_MB)
    max_queued_jobs: int = Field(default=10_000, gt=0, le=_INT32_MAX)
    # A result is stored as one value: past what SQLite holds, a finished run would be lost.
    max_result_mb: int = Field(default=256, gt=0, le=STORED_VALUE_MAX_BYTES // MIB)
    # Costs bounded before any work starts (the error names the limit).
    max_bindings: int = Field(default=100_000, gt=0, le=_INT64_MAX)
    max_job_shots: int = Field(default=10_000_000, gt=0, le=_INT64_MAX)
    max_estimator_work: int = Field(default=100_000_000, gt=0, le=_INT64_MAX)
    max_execution_work: float = Field(default=1e13, gt=0, le=float(_INT64_MAX))
    # A running job past this is stopped (its worker killed) and FAILED with JOB_TIMEOUT.
    max_run_time_s: float = Field(default=3600.0, gt=0, le=MAX_SECONDS)
    # A job with a `while` loop on a simulator (iterations no estimate bounds: a ~150-byte
    # loop that never ends held a worker for the hour above) is stopped past this instead:
    # JOB_TIMEOUT, the job's fault. Providers bound loops themselves.
    max_loop_run_time_s: float = Field(default=60.0, gt=0, le=MAX_SECONDS)
    # A queued job past this FAILs: BACKEND_UNAVAILABLE while the breaker is open, else
    # QUEUE_TIMEOUT.
    max_queue_time_s: float = Field(default=86400.0, gt=0, le=MAX_SECONDS)
    health_interval_s: float = Field(default=30.0, gt=0, le=MAX_SECONDS)
    probe_timeout_s: float = Field(default=30.0, gt=0, le=MAX_SECONDS)
    pool: PoolConfig = PoolConfig()
    breaker: BreakerConfig = BreakerConfig()
    # Adapter-specific options, validated by the adapter's own options model.
    options: dict[str, Any] = Field(default_factory=dict)
    # Faults injected into every job and probe of this backend (tests and demos), e.g.
    # faults = { failure_rate = 0.3, latency_s = 0.5 }.
    faults: FaultOptions | None = None
    # The price table jobs are charged by (Job.cost; SubmitJob validate_only estimates), e.g.
    # price = { per_task = 0.3, per_shot = 0.00035, unit = "USD" }.
    price: PriceConfig | None = None

    @model_validator(mode="after")
    def _defaults_within_limits(self) -> BackendConfig:
        # Otherwise every job that names no shots is refused, blaming a field it never set.
        if self.default_shots > self.max_shots:
            raise ValueError(
                f"default_shots ({self.default_shots}) is above max_shots ({self.max_shots})"
            )
        return self

    def context(self, name: str, circuits: CircuitConfig) -> AdapterContext:
        memory_limit = self.worker_memory_limit_mb or self.memory_budget_mb + WORKER_HEADROOM_MB
        return AdapterContext(
            name=name,
            limits=BackendLimits(
                max_shots=self.max_shots,
                memory_budget_bytes=self.memory_budget_mb * MIB,
                max_queued_jobs=self.max_queued_jobs,
                max_result_bytes=self.max_result_mb * MIB,
                max_bindings=self.max_bindings,
                max_job_shots=self.max_job_shots,
                max_estimator_work=self.max_estimator_work,
                max_execution_work=int(self.max_execution_work),
            ),
            default_shots=self.default_shots,
            circuit_limits=circuits.limits(),
            options=dict(self.options),
            worker_memory_bytes=memory_limit * MIB,
        )


class AuthConfig(_Strict):
    """API keys (`qgateway keys create` prints an entry). No keys: every caller is tenant
    "default", as in the embedded development mode."""

    api_keys: list[ApiKeyConfig] = Field(default_factory=list)
    # Without keys, whether the anonymous caller is an admin (may read backends' FULL view:
    # health, breaker, pool). Off by default, so a keyless gateway reachable by others shows
    # them only what any tenant sees; a developer's own gateway may turn it on. With keys there
    # is no anonymous caller: admin is a key's role (`role = "admin"`).
    anonymous_admin: bool = False
    # Require credentials even without [[auth.api_keys]] (every key lives in the store).
    # Configuring keys, [auth.jwt] or [[auth.mtls]] requires them too.
    required: bool = False
    # JWT bearer tokens (`[auth.jwt]`).
    jwt: JwtConfig | None = None
    # Client certificates -> principals (`[[auth.mtls]]`: subject or san pattern, tenant, role);
    # needs server.tls.client_auth = "require".
    mtls: list[CertRule] = Field(default_factory=list)
    # Peers (by their own client certificate: subject or san pattern) whose
    # x-forwarded-client-cert header is believed; from any other peer the header is refused.
    trusted_proxies: list[CertMatch] = Field(default_factory=list)
    # How long a stored key's record is reused before it is read again: a key revoked through
    # another replica stops working here within this many seconds (at once on the replica
    # that revoked it).
    key_cache_s: float = Field(default=30.0, ge=0, le=MAX_SECONDS)
    # How stale a stored key's last-used time may be (written in batches this often).
    key_last_used_interval_s: float = Field(default=60.0, gt=0, le=MAX_SECONDS)

    @property
    def enabled(self) -> bool:
        """Whether callers must authenticate."""
        return bool(self.required or self.api_keys or self.jwt or self.mtls)

    @model_validator(mode="after")
    def _one_entry_per_key(self) -> AuthConfig:
        # A copy-pasted entry would otherwise silently give the key the last one's tenant.
        seen: set[str] = set()
        for entry in self.api_keys:
            if entry.prefix in seen:
                raise ValueError(f"api_keys lists the key prefix {entry.prefix!r} twice")
            seen.add(entry.prefix)
        return self

    @model_validator(mode="after")
    def _anonymous_admin_without_keys(self) -> AuthConfig:
        if self.anonymous_admin and self.enabled:
            raise ValueError(
                "anonymous_admin applies only without authentication (no api_keys, jwt, mtls "
                "or required; give a key role = 'admin' instead)"
            )
        return self

    def anonymous(self) -> Principal:
        """The principal of every caller when no keys are configured."""
        return replace(ANONYMOUS, role=Role.ADMIN) if self.anonymous_admin else ANONYMOUS


class AuditConfig(_Strict):
    """`[audit]`: the tamper-evident audit log (gateway.security.audit).

    The chain's key lives outside the database: whoever can write the database cannot
    recompute the chain. Keep `key_file` (and a copy of `head_file`) where the database's
    writers cannot reach when that matters; the defaults sit in the data directory.
    """

    # Off: no interceptor, no records, no writer task (costs nothing).
    enabled: bool = True
    # 32 random bytes, created (mode 0600) at first start; default: <data_dir>/audit.key.
    key_file: Path | None = None
    # The chain head (sequence and MAC), rewritten every head_interval_s and at shutdown, and
    # logged; `qgateway audit verify` checks the newest records against it. Default:
    # <data_dir>/audit-head.json.
    head_file: Path | None = None
    head_interval_s: float = Field(default=60.0, gt=0, le=MAX_SECONDS)
    # Records older than this are deleted (the chain stays verifiable from its anchor).
    retention_days: float = Field(default=365.0, gt=0, le=MAX_DAYS)
    # Reads and failures are committed in batches: at most this long after the call.
    flush_interval_s: float = Field(default=1.0, gt=0, le=MAX_SECONDS)
    # Failed authentications: the first per peer and reason in a window is written, the rest
    # counted into one record; at most max_failure_peers peers are told apart per window.
    failure_window_s: float = Field(default=60.0, gt=0, le=MAX_SECONDS)
    max_failure_peers: int = Field(default=256, gt=0, le=_INT32_MAX)

    def key_path(self, data_dir: Path) -> Path:
        return self.key_file if self.key_file is not None else data_dir / "audit.key"

    def head_path(self, data_dir: Path) -> Path:
        return self.head_file if self.head_file is not None else data_dir / "audit-head.json"


class RateLimitConfig(_Strict):
    """A token bucket: `per_second` tokens refill each second, up to `burst`."""

    per_second: float = Field(ge=MIN_PER_SECOND)
    burst: int = Field(ge=1)

    def limit(self) -> RateLimit:
        return RateLimit(self.per_second, self.burst)


class PeriodQuotaConfig(_Strict):
    """Shots and cost per period (UTC periods aligned to the Unix epoch)."""

    shots: int | None = Field(default=None, ge=0)
    cost: float | None = Field(default=None, ge=0)
    cost_unit: str = ""
    period_s: float = Field(default=DAY_S, ge=0.001, le=MAX_PERIOD_S)

    def quota(self) -> PeriodQuota:
        return PeriodQuota(self.shots, self.cost, self.cost_unit, self.period_s)


class TenantPolicyConfig(_Strict):
    """What a tenant's principals may use (the TOML form of gateway.security.tenant_policy):
    backends as ids or shell patterns, simulators and hardware separately; unset limits are
    the backends' own."""

    allowed_simulators: list[str] = Field(default_factory=lambda: ["*"])
    allowed_hardware: list[str] = Field(default_factory=list)
    max_qubits: int | None = Field(default=None, ge=1)
    max_shots_per_job: int | None = Field(default=None, ge=1)
    quota: PeriodQuotaConfig | None = None
    request_rate: RateLimitConfig | None = None
    submit_rate: RateLimitConfig | None = None
    max_queued_jobs: int | None = Field(default=None, ge=1)
    # Supersedes server.max_sessions_per_tenant for this tenant.
    max_sessions: int | None = Field(default=None, ge=1)

    @model_validator(mode="after")
    def _valid(self) -> TenantPolicyConfig:
        problems = validate_policy(self.policy())
        if problems:
            raise ValueError("; ".join(f"{path}: {what}" for path, what in problems))
        return self

    def policy(self) -> TenantPolicy:
        return TenantPolicy(
            allowed_simulators=tuple(self.allowed_simulators),
            allowed_hardware=tuple(self.allowed_hardware),
            max_qubits=self.max_qubits,
            max_shots_per_job=self.max_shots_per_job,
            quota=None if self.quota is None else self.quota.quota(),
            request_rate=None if self.request_rate is None else self.request_rate.limit(),
            submit_rate=None if self.submit_rate is None else self.submit_rate.limit(),
            max_queued_jobs=self.max_queued_jobs,
            max_sessions=self.max_sessions,
        )


class TenantConfig(_Strict):
    """A tenant declared in the file (`[tenants.<id>]`, its policy `[tenants.<id>.policy]`):
    managed by the configuration, read-only through AdminService."""

    display_name: str = Field(default="", max_length=MAX_DISPLAY_NAME)
    policy: TenantPolicyConfig = TenantPolicyConfig()

    def tenant(self, tenant_id: str) -> Tenant:
        policy = self.policy.policy()
        return Tenant(
            id=tenant_id,
            display_name=self.display_name,
            policy=policy,
            etag=etag_of(self.display_name, policy),
            managed_by_config=True,
        )


def _default_backends() -> dict[str, BackendConfig]:
    """The local fleet: every SDK's simulators and an IBM fake device, one warm worker each
    (Aer's statevector two)."""
    return {
        "aer": BackendConfig(
            adapter="aer",
            pool=PoolConfig(min_instances=2, max_instances=2),
            options={"method": "statevector"},
        ),
        "aer-mps": BackendConfig(adapter="aer", options={"method": "matrix_product_state"}),
        "aer-noisy-manila": BackendConfig(
            adapter="aer", options={"method": "density_matrix", "noise_from": "FakeManilaV2"}
        ),
        "braket-sv": BackendConfig(adapter="braket", options={"device": "braket_sv"}),
        "braket-dm": BackendConfig(adapter="braket", options={"device": "braket_dm"}),
        "pennylane-lightning": BackendConfig(
            adapter="pennylane", options={"device": "lightning.qubit"}
        ),
        "pennylane-default": BackendConfig(
            adapter="pennylane", options={"device": "default.qubit"}
        ),
        # IBM's own primitives in local mode on a fake device (credentials switch to the cloud).
        "ibm-fake-manila": BackendConfig(adapter="ibm", options={"backend": "FakeManilaV2"}),
    }


class GatewayConfig(BaseSettings):
    """The whole server configuration. The embedded default needs no file at all."""

    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX,
        env_nested_delimiter="__",
        extra="forbid",
        frozen=True,
        allow_inf_nan=False,
    )

    data_dir: Path = Path("data")
    server: ServerConfig = ServerConfig()
    circuits: CircuitConfig = CircuitConfig()
    compiler: CompilerConfig = CompilerConfig()
    auth: AuthConfig = AuthConfig()
    audit: AuditConfig = AuditConfig()
    # Traces, metrics and structured logs (gateway.telemetry); all off by default.
    telemetry: TelemetryConfig = TelemetryConfig()
    backends: dict[str, BackendConfig] = Field(default_factory=_default_backends)
    # Tenants managed by this file; others are created through AdminService (stored).
    tenants: dict[str, TenantConfig] = Field(default_factory=dict)
    # The policy of a tenant declared nowhere: by default every backend, simulators and
    # hardware, no limits beyond the backends' own (a gateway without tenants).
    default_policy: TenantPolicyConfig = TenantPolicyConfig(allowed_hardware=["*"])

    @model_validator(mode="after")
    def _certificates_need_mtls(self) -> GatewayConfig:
        tls = self.server.tls
        if (self.auth.mtls or self.auth.trusted_proxies) and (
            tls is None or tls.client_auth != "require"
        ):
            raise ValueError(
                "auth.mtls and auth.trusted_proxies need server.tls with client_auth = 'require'"
            )
        return self

    @field_validator("backends")
    @classmethod
    def _names_are_resource_ids(cls, value: dict[str, BackendConfig]) -> dict[str, BackendConfig]:
        for name in value:
            if not name or not all(c.isalnum() or c in "-_" for c in name):
                raise ValueError(f"backend name {name!r} must be letters, digits, '-' or '_'")
        return value

    @field_validator("tenants")
    @classmethod
    def _tenant_ids(cls, value: dict[str, TenantConfig]) -> dict[str, TenantConfig]:
        for name in value:
            if not is_tenant_id(name):
                raise ValueError(
                    f"tenant id {name!r} must be 1-64 of letters, digits, '_.-', not '-' alone"
                )
        return value

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        # The environment overrides the file (which arrives as init arguments).
        return (env_settings, init_settings)


def _check_env_names(environ: Mapping[str, str]) -> None:
    known = {name.upper() for name in GatewayConfig.model_fields}
    for var in environ:
        # Case-blind, as pydantic-settings reads them: qgateway_bogus is a setting too.
        upper = var.upper()
        if not upper.startswith(ENV_PREFIX) or upper in CLIENT_ENV_VARS:
            continue
        top = upper[len(ENV_PREFIX) :].split("__", 1)[0]
        if top not in known:
            raise ConfigError(f"unknown setting {var} (known: {', '.join(sorted(known))})")


def _describe(err: ValidationError) -> str:
    parts = []
    for e in err.errors():
        loc = ".".join(str(p) for p in e["loc"])
        parts.append(f"{loc}: {e['msg']}")
    return "; ".join(parts)


def load_config(path: Path | None = None) -> GatewayConfig:
    """Loads the TOML file (if any) and the QGATEWAY_* environment.

    Raises:
        ConfigError: the file is unreadable or any key is unknown or invalid.
    """
    data: dict[str, Any] = {}
    if path is not None:
        try:
            data = tomllib.loads(path.read_text(encoding="utf-8"))
        except OSError as exc:
            raise ConfigError(f"cannot read config file {path}: {exc.strerror}") from None
        except UnicodeDecodeError as exc:
            raise ConfigError(
                f"config file {path} is not UTF-8 (TOML is): byte {exc.start} ({exc.reason})"
            ) from None
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"config file {path} is not valid TOML: {exc}") from None
        # A service manager starts the gateway from a directory of its own choosing: the
        # file's relative paths mean what they meant to whoever wrote them, next to it.
        data = _anchor_paths(data, GatewayConfig, path.resolve().parent)
    _check_env_names(os.environ)
    try:
        return GatewayConfig(**data)
    except ValidationError as exc:
        raise ConfigError(f"invalid configuration: {_describe(exc)}") from None
    except SettingsError as exc:  # an environment variable's value is not valid JSON
        cause = f": {exc.__cause__}" if exc.__cause__ is not None else ""
        raise ConfigError(f"invalid configuration: {exc}{cause}") from None


def _anchor_paths(data: dict[str, Any], model: type[BaseModel], base: Path) -> dict[str, Any]:
    """`data` (one model's table from the file) with every relative path of a Path-typed
    field made relative to `base`. Found from the models' annotations, so a new path setting
    is anchored too; values of other types are left for validation to judge."""
    anchored = dict(data)
    for name, value in data.items():
        field = model.model_fields.get(name)
        if field is not None:
            anchored[name] = _anchor_value(value, field.annotation, base)
    return anchored


def _anchor_value(value: Any, annotation: Any, base: Path) -> Any:
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType):  # `Path | None`, a model or None
        for arm in typing.get_args(annotation):
            value = _anchor_value(value, arm, base)
        return value
    if annotation is Path:
        # An empty path too: the file's own directory, like ".", never the process's.
        if isinstance(value, str) and not Path(value).is_absolute():
            return str(base / value)
        return value
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return _anchor_paths(value, annotation, base) if isinstance(value, dict) else value
    if origin is dict and isinstance(value, dict):
        _, item = typing.get_args(annotation)
        return {key: _anchor_value(v, item, base) for key, v in value.items()}
    if origin is list and isinstance(value, list):
        (item,) = typing.get_args(annotation)
        return [_anchor_value(v, item, base) for v in value]
    return value
