"""Assembles and runs the gateway: store, backends, job manager, gRPC services, drain."""

from __future__ import annotations

import asyncio
import gc
import logging
import os
import socket
import sqlite3
import sys
import uuid
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection
from pydantic import ValidationError
from qgateway.v1 import (
    admin_service_pb2_grpc,
    backend_service_pb2,
    backend_service_pb2_grpc,
    job_service_pb2,
    job_service_pb2_grpc,
    session_service_pb2,
    session_service_pb2_grpc,
)

from gateway import stop_signals
from gateway.api import codec
from gateway.api.admin_service import SERVICE_NAME as ADMIN_SERVICE_NAME
from gateway.api.admin_service import AdminServicer
from gateway.api.admin_tenants import tenant_from_stored
from gateway.api.backend_service import BackendServicer
from gateway.api.health_service import HealthService
from gateway.api.job_service import JobServicer
from gateway.api.paging import PageTokenKeyInvalid, PageTokens, load_or_create_key
from gateway.api.session_service import SessionServicer
from gateway.api.stream_budget import StreamBudget
from gateway.api.stream_pace import StreamPace
from gateway.backends.base import AdapterContext, BackendAdapter, PreparedJob, TargetUnavailable
from gateway.backends.fault import FaultInjectingRunner, with_fault_properties
from gateway.backends.registry import adapter_names, load_adapter
from gateway.backends.runner import Runner
from gateway.config import ConfigError, GatewayConfig, load_config
from gateway.interceptors.audit import AuditInterceptor
from gateway.interceptors.auth import AuthInterceptor
from gateway.interceptors.boundary import ErrorBoundaryInterceptor
from gateway.interceptors.decode import DecodeInterceptor
from gateway.interceptors.public_calls import PublicCallInterceptor, PublicCalls
from gateway.interceptors.rate_limit import RateLimitInterceptor
from gateway.interceptors.request_reads import RequestReads
from gateway.interceptors.stream_limit import StreamLimiter, StreamLimitInterceptor
from gateway.jobs.backend import BackendRuntime, BackendSettings
from gateway.jobs.claim_queue import ClaimQueue
from gateway.jobs.manager import JobManager
from gateway.jobs.memory_queue import MemoryQueue
from gateway.jobs.peer_events import PeerEventBus
from gateway.jobs.queue_port import JobQueue
from gateway.jobs.sessions import SessionCore, SessionLimits, SessionQueue
from gateway.runtime import affinity, shielded
from gateway.runtime.breaker import CircuitBreaker
from gateway.runtime.compiler import Compiler
from gateway.runtime.health import PROBE_TENANT, HealthMonitor
from gateway.runtime.pool import Pool
from gateway.runtime.readiness import Readiness
from gateway.runtime.simulator_runner import WorkerPoolRunner
from gateway.runtime.worker import CompileRole, SimulatorRole, WorkerProcess
from gateway.runtime.worker_pool import WorkerFactory
from gateway.security.api_keys import KeyRing, KeyVerifier, LastUsedRecorder
from gateway.security.audit_log import AuditKeyMismatch, AuditLog
from gateway.security.authenticator import Authenticator
from gateway.security.jwt_auth import JwtVerifier
from gateway.security.mtls import CertMapper
from gateway.security.policies import PolicyBook
from gateway.security.tenant_policy import Tenant
from gateway.security.tls import ReloadingServerCredentials
from gateway.store.base import Store
from gateway.store.data_dir_lock import DataDirInUse, DataDirLock, lock_data_dir
from gateway.store.peer_signals import PEERS_DIR, PeerSignals
from gateway.store.sqlite import SchemaTooNew, SqliteStore, StoreInUse, StoreLocked
from gateway.telemetry.logs import GRPC_SERVER_LOGGER, QuietPeerGone
from gateway.telemetry.setup import Telemetry

log = logging.getLogger("gateway")

READINESS_SERVICE = "qgateway.v1.JobService"
DB_FILE = "qgateway.db"
# How long a stop waits for writes still carried on for callers that left (a session's end
# closing its provider session), before the store closes.
STOP_CARRIED_ON_S = 5.0
# How soon a tenant changed through another replica applies here (shared store only).
POLICY_REFRESH_S = 10.0
# The state of a peer signal that names a tenant a replica created or changed, not a job.
TENANT_CHANGED = "TENANT_CHANGED"
# A thread running Python (a request's digest and decoding, offloaded by size) keeps the GIL
# for up to a switch interval each time the event loop asks for it back, and the loop asks
# dozens of times per call: at CPython's 5 ms, another tenant's GetJob took p50 99 ms instead
# of 2.5 ms while four clients sent validate_only requests of 500,000 Pauli terms; at 0.5 ms,
# 17 ms (6 ms once such specs were derived one at a time; bench/noisy_neighbour.py).
GIL_SWITCH_INTERVAL_S = 0.0005
SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


def backend_health_name(backend: str) -> str:
    return f"qgateway.backend.{backend}"


def compile_role(config: GatewayConfig, backends: dict[str, BackendRuntime]) -> CompileRole:
    return CompileRole(
        backends={
            name: (config.backends[name].adapter, runtime.adapter.compile_context())
            for name, runtime in backends.items()
        },
        memory_bytes=config.compiler.limits().memory_bytes,
    )


def build_compiler(config: GatewayConfig, workers: WorkerFactory) -> Compiler:
    pool: Pool[WorkerProcess] = Pool(workers, config.compiler.pool_limits())
    return Compiler(pool, config.compiler.limits())


def _runner(
    config: GatewayConfig, name: str, adapter: BackendAdapter, context: AdapterContext
) -> Runner:
    """The backend's runner: its adapter's own (a provider), else the supervised worker pool;
    wrapped in fault injection when its config block asks for faults."""
    backend = config.backends[name]
    runner = adapter.create_runner()
    if runner is None:
        runner = WorkerPoolRunner(
            Pool(WorkerFactory(SimulatorRole(backend.adapter, context)), backend.pool.limits())
        )
    if backend.faults is not None:
        try:
            runner = FaultInjectingRunner(runner, backend.faults, name)
        except ValueError as exc:
            raise ConfigError(f"backends.{name}.faults: {exc}") from None
    if config.telemetry.enabled:  # spans around runner and provider calls (issue 12)
        from gateway.telemetry.runner import ObservedRunner

        runner = ObservedRunner(runner, name)
    return runner


def _queue(config: GatewayConfig, store: Store, name: str, owner: str) -> JobQueue:
    backend = config.backends[name]
    lease_s = config.server.lease_s
    if config.server.queue == "store":
        return ClaimQueue(store, name, owner, backend.max_queue_time_s, lease_s, _now)
    # A session's jobs are let into the queue one at a time, in order (gateway.jobs.sessions).
    return SessionQueue(MemoryQueue(name, backend.max_queue_time_s, lease_s, _now))


def _now() -> datetime:
    return datetime.now(UTC)


def build_authenticator(
    config: GatewayConfig, store: Store
) -> tuple[Authenticator, LastUsedRecorder]:
    """Who may call: configured and stored API keys, JWTs, client certificates; or, with none
    configured, everyone as the anonymous principal."""
    auth = config.auth
    recorder = LastUsedRecorder(store, interval_s=auth.key_last_used_interval_s)
    keys = KeyVerifier(KeyRing(auth.api_keys), store, recorder=recorder, cache_s=auth.key_cache_s)
    try:
        jwt = None if auth.jwt is None else JwtVerifier(auth.jwt)
    except (OSError, ValueError) as exc:
        raise ConfigError(f"auth.jwt: cannot load the key set: {exc}") from None
    authenticator = Authenticator(
        keys,
        jwt=jwt,
        certs=CertMapper(auth.mtls),
        trusted_proxies=auth.trusted_proxies,
        anonymous=None if auth.enabled else auth.anonymous(),
    )
    return authenticator, recorder


def _server_credentials(config: GatewayConfig) -> ReloadingServerCredentials | None:
    tls = config.server.tls
    if tls is None:
        return None
    try:
        return ReloadingServerCredentials(
            tls.cert_file,
            tls.key_file,
            tls.client_ca_file,
            require_client_auth=tls.client_auth == "require",
            reload_check_s=tls.reload_check_s,
        )
    except ValueError as exc:
        raise ConfigError(str(exc)) from None


def _audit_log(config: GatewayConfig, store: SqliteStore) -> AuditLog | None:
    """The audit log (issue 11), or None when `[audit] enabled = false` (then it costs nothing:
    no interceptor, no writer)."""
    audit = config.audit
    if not audit.enabled:
        return None
    try:
        return AuditLog(
            store,
            audit.key_path(config.data_dir),
            audit.head_path(config.data_dir),
            head_interval_s=audit.head_interval_s,
            retention_s=audit.retention_days * 86400,
            flush_interval_s=audit.flush_interval_s,
            failure_window_s=audit.failure_window_s,
            max_failure_peers=audit.max_failure_peers,
        )
    except (OSError, RuntimeError) as exc:
        raise ConfigError(f"audit.key_file: {exc}") from None


def build_policies(config: GatewayConfig) -> PolicyBook:
    """Tenants' policies: those the file declares, the default for the rest (stored tenants
    are added by `load_tenants` once the store is open)."""
    return PolicyBook(
        (t.tenant(tid) for tid, t in config.tenants.items()), config.default_policy.policy()
    )


async def load_tenants(store: Store, policies: PolicyBook) -> None:
    """Every stored tenant's policy into the book (at start, and each refresh)."""
    read = policies.begin_read()
    tenants: list[Tenant] = []
    after: str | None = None
    while True:
        page = await store.list_tenants(after=after, limit=1000)
        tenants.extend(tenant_from_stored(t) for t in page)
        if len(page) < 1000:
            break
        after = page[-1].id
    policies.load(tenants, read)


async def refresh_tenants(store: Store, policies: PolicyBook, interval_s: float) -> None:
    """Re-reads stored tenants every `interval_s`: with a shared store, another replica's
    UpdateTenant reaches this one within that time even when its signal (Gateway._heard,
    which applies it at once) was lost."""
    while True:
        await asyncio.sleep(interval_s)
        try:
            await load_tenants(store, policies)
        except Exception:
            log.exception("reloading tenants' policies failed; keeping the last ones")


def build_backends(config: GatewayConfig, store: Store) -> dict[str, BackendRuntime]:
    # Claims in a shared store name their holder: this process.
    owner = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
    runtimes = {}
    for name, backend in config.backends.items():
        try:
            adapter_cls = load_adapter(backend.adapter)
        except KeyError:
            raise ConfigError(
                f"backends.{name}.adapter: unknown adapter {backend.adapter!r} "
                f"(installed: {', '.join(adapter_names())})"
            ) from None
        context = backend.context(name, config.circuits)
        try:
            adapter = adapter_cls(context)
        except ValidationError as exc:
            details = "; ".join(
                # A check of the whole options table has no field: "options", not "options.".
                ".".join([f"backends.{name}.options", *map(str, e["loc"])]) + f": {e['msg']}"
                for e in exc.errors()
            )
            raise ConfigError(f"invalid configuration: {details}") from None
        pending = ""
        try:
            info = adapter.info()
        except TargetUnavailable as exc:
            # One provider's outage (or a refused key) must not stop the other backends: this
            # one serves once its health probe has fetched the description.
            log.error("backend %s: %s; it is NOT_SERVING until fetched", name, exc)
            info, pending = adapter.info_without_target(), str(exc)
        except ValueError as exc:
            # Options the adapter refuses only once it builds its target (an IBM device with
            # no token, a fake class qiskit-ibm-runtime lacks): a configuration error, exit 2,
            # where it escaped as a bare ValueError, exit 1.
            raise ConfigError(f"backends.{name}.options: {exc}") from None
        if backend.faults is not None:
            info = with_fault_properties(info, backend.faults)
        runtimes[name] = BackendRuntime(
            name=name,
            adapter=adapter,
            info=info,
            target_pending=pending,
            runner=_runner(config, name, adapter, context),
            breaker=CircuitBreaker(backend.breaker.policy()),
            settings=BackendSettings(
                max_run_time_s=backend.max_run_time_s,
                max_loop_run_time_s=backend.max_loop_run_time_s,
                max_queue_time_s=backend.max_queue_time_s,
                health_interval_s=backend.health_interval_s,
                probe_timeout_s=backend.probe_timeout_s,
                lease_s=config.server.lease_s,
                price=None if backend.price is None else backend.price.price(),
            ),
            queue=_queue(config, store, name, owner),
        )
    return runtimes


class Gateway:
    """A running gateway; `start` returns once it serves, `stop` drains and closes it."""

    def __init__(self, config: GatewayConfig) -> None:
        self.config = config
        self.port = 0
        # Before anything else: runners and workers see whether tracing is on (issue 12).
        self.telemetry = Telemetry(config.telemetry)
        self.telemetry.install()
        self._store = SqliteStore(config.data_dir / DB_FILE)
        self.backends = build_backends(config, self._store)
        self.policies = build_policies(config)
        # Its role changes when a backend's target is fetched after the start (_fetch_target).
        self._compile_workers = WorkerFactory(compile_role(config, self.backends))
        self.compiler = build_compiler(config, self._compile_workers)
        # Processes sharing the store hear each other's changes (gateway.jobs.peer_events).
        self._peers: PeerSignals | None = None
        bus: PeerEventBus | None = None
        if config.server.queue == "store":
            self._peers = PeerSignals(config.data_dir / PEERS_DIR)
            bus = PeerEventBus(self._store, self._peers.send)
            for runtime in self.backends.values():
                if isinstance(runtime.queue, ClaimQueue):
                    bus.wake_on_changes(runtime.name, runtime.queue.notify_changed)
            peers = self._peers
            # A tenant this process created or changed: the others re-read the tenants at
            # once (they did every POLICY_REFRESH_S only, accepting what the change refused).
            self.policies.on_put = lambda tenant: peers.send(tenant, "-", TENANT_CHANGED)
        self._bus = bus
        self._tenant_reload: asyncio.Task[None] | None = None
        self._reload_again = False
        self.manager = JobManager(
            self.telemetry.store(self._store),  # spans around job writes (tracing on)
            self.backends,
            self.compiler,
            codec.STORED_FORMAT,
            prepare_threads=config.server.prepare_threads,
            watch_heartbeat_s=config.server.watch_heartbeat_s,
            result_retention_s=config.server.result_retention_days * 86400,
            job_retention_s=config.server.job_retention_days * 86400,
            recover_at_start=config.server.queue == "memory",
            bus=bus,
            policies=self.policies,
        )
        self.sessions = SessionCore(
            self._store,
            self.manager,
            SessionLimits(
                max_sessions_per_tenant=config.server.max_sessions_per_tenant,
                max_ttl_s=config.server.session_max_ttl_s,
                idle_ttl_s=config.server.session_idle_ttl_s,
            ),
        )
        self.manager.hooks.add(self.sessions)
        self.telemetry.register(self.manager.hooks)
        self.health = HealthService()
        self.readiness = Readiness(self._store, self._publish_readiness)
        self._monitors: list[asyncio.Task[None]] = []
        server_cfg = config.server
        # Inside authentication and decoding (it reads the principal and the request); the
        # rate limit, outside it (before the request is read), tells it of its refusals.
        self.audit = _audit_log(config, self._store)
        audit = None if self.audit is None else AuditInterceptor(self.audit.writer)
        self.authenticator, self._key_uses = build_authenticator(config, self._store)
        self._tls = _server_credentials(config)
        self.health_port = 0
        self._health_server: grpc.aio.Server | None = None
        # Limits of the calls anyone may make; the health-only port has its own, so strangers
        # on the API port cannot take its watches (nor the other way round).
        self._public_calls = PublicCalls(
            server_cfg.request_read_timeout_s, server_cfg.max_health_watches
        )
        self._server = grpc.aio.server(
            # Outermost first: the boundary maps every error, including authentication's.
            interceptors=[
                ErrorBoundaryInterceptor(
                    server_cfg.max_request_bytes,
                    on_rejected=None if audit is None else audit.rejected,
                ),
                # A span and a duration for every RPC, refused ones included (issue 12).
                *self.telemetry.interceptors(),
                AuthInterceptor(
                    self.authenticator,
                    uses_certificates=bool(config.auth.mtls or config.auth.trusted_proxies),
                    on_failure=None if audit is None else audit.auth_failed,
                ),
                # Before the request is read: a tenant's rate bounds what parsing costs.
                RateLimitInterceptor(
                    self.policies, on_refused=None if audit is None else audit.refused_unread
                ),
                # Requests are bytes up to here: only an authenticated caller's are parsed.
                DecodeInterceptor(
                    RequestReads(
                        server_cfg.max_slow_requests_per_tenant,
                        server_cfg.request_read_timeout_s,
                    ),
                    on_rejected=None if audit is None else audit.rejected,
                ),
                *([] if audit is None else [audit]),
                StreamLimitInterceptor(StreamLimiter(server_cfg.max_streams_per_tenant)),
                # Health and reflection, which the interceptors above leave alone.
                PublicCallInterceptor(self._public_calls),
            ],
            options=[
                ("grpc.max_receive_message_length", server_cfg.transport_max_receive_bytes),
                ("grpc.max_send_message_length", server_cfg.max_response_bytes + (1 << 20)),
                *server_cfg.connection_options(),
            ],
        )

    async def start(
        self, stopping: asyncio.Event | None = None, data_dir_lock: DataDirLock | None = None
    ) -> None:
        """Opens the store, recovers, starts the ports and the workers, then turns ready and
        dispatches jobs, unless `stopping` was set meanwhile (a SIGTERM while starting): then
        it never turns ready, and the caller drains.

        Raises:
            StoreInUse: The store needs a migration older gateways cannot run beside, and
                `data_dir_lock` shows other gateways on the data directory.
        """
        # Asked only when a migration needs it, and then held exclusively until the store is
        # open: no gateway of an older version starts meanwhile (one started later refuses
        # the newer schema), and replicas starting together never meet it otherwise.
        asked = False

        def alone() -> bool:
            nonlocal asked
            asked = True
            return data_dir_lock is None or data_dir_lock.try_alone()

        try:
            await self._store.open(alone=alone)
        finally:
            if data_dir_lock is not None and asked:
                data_dir_lock.share()
        self.readiness.watch_store()
        if self._peers is not None and self._bus is not None:
            self._peers.start(self._heard)
        await load_tenants(self._store, self.policies)
        if self.config.server.queue == "store":  # replicas share the store and its tenants
            refresh = refresh_tenants(self._store, self.policies, POLICY_REFRESH_S)
            self._monitors.append(asyncio.create_task(refresh))
        if self.audit is not None:
            await self.audit.start()
        # Recovery runs before the port opens, so new submissions cannot be queued twice.
        # Open sessions first: recovery re-queues their jobs in order, pinning dedicated ones.
        await self.sessions.load_sessions()
        await self.manager.start(schedule=False)
        await self.sessions.load()
        self.sessions.start()
        # Page tokens are sealed with a key kept in the data directory: they survive restarts.
        page_tokens = PageTokens(await asyncio.to_thread(load_or_create_key, self.config.data_dir))
        job_service_pb2_grpc.add_JobServiceServicer_to_server(  # type: ignore[no-untyped-call]
            JobServicer(
                self.manager,
                self.config.server.max_response_bytes,
                run_max_wait_s=self.config.server.run_max_wait_s,
                page_tokens=page_tokens,
                sessions=self.sessions,
                stream_budget=StreamBudget(*self.config.server.stream_budget_bytes()),
                stream_pace=StreamPace(self.config.server.stream_messages_per_s),
            ),
            self._server,
        )
        backend_service_pb2_grpc.add_BackendServiceServicer_to_server(  # type: ignore[no-untyped-call]
            BackendServicer(self.manager, page_tokens=page_tokens), self._server
        )
        session_service_pb2_grpc.add_SessionServiceServicer_to_server(  # type: ignore[no-untyped-call]
            SessionServicer(
                self.sessions,
                page_tokens=page_tokens,
                max_response_bytes=self.config.server.max_response_bytes,
            ),
            self._server,
        )
        admin_service_pb2_grpc.add_AdminServiceServicer_to_server(  # type: ignore[no-untyped-call]
            AdminServicer(
                self._store,
                page_tokens=page_tokens,
                keys=self.authenticator.keys,
                policies=self.policies,
                max_response_bytes=self.config.server.max_response_bytes,
            ),
            self._server,
        )
        health_pb2_grpc.add_HealthServicer_to_server(self.health, self._server)
        reflection.enable_server_reflection(
            (
                ADMIN_SERVICE_NAME,
                job_service_pb2.DESCRIPTOR.services_by_name["JobService"].full_name,
                backend_service_pb2.DESCRIPTOR.services_by_name["BackendService"].full_name,
                session_service_pb2.DESCRIPTOR.services_by_name["SessionService"].full_name,
                health_pb2.DESCRIPTOR.services_by_name["Health"].full_name,
                reflection.SERVICE_NAME,
            ),
            self._server,
        )
        try:
            if self._tls is None:
                self.port = self._server.add_insecure_port(self.config.server.listen)
            else:
                self.port = self._server.add_secure_port(
                    self.config.server.listen, self._tls.credentials()
                )
        except RuntimeError as exc:
            raise ConfigError(
                f"server.listen: cannot listen on {self.config.server.listen}: {exc}"
            ) from None
        await self._start_health_port()
        self._key_uses.start()
        for name in self.backends:
            await self.health.set(backend_health_name(name), NOT_SERVING)
        await self.health.set(READINESS_SERVICE, NOT_SERVING)
        await self.health.set("", SERVING)
        await self._server.start()
        # Compile workers and simulator workers start together; readiness waits for both and
        # for every backend's first probe.
        compilers = asyncio.ensure_future(self.compiler.pool.start())
        await asyncio.gather(
            compilers, *(self._start_backend(rt, compilers) for rt in self.backends.values())
        )
        await self.readiness.check_store()
        if stopping is not None and stopping.is_set():
            return
        # Jobs recovered or accepted meanwhile are dispatched once the workers are up.
        self.manager.start_scheduling()
        self.telemetry.start(self.backends, self.compiler.pool)
        await self.readiness.started()

    def _heard(self, subject: str, backend: str, state: str) -> None:
        """A peer's signal: a tenant it changed, or a job."""
        if state != TENANT_CHANGED:
            assert self._bus is not None
            self._bus.heard(subject, backend, state)
            return
        if self._tenant_reload is not None and not self._tenant_reload.done():
            self._reload_again = True  # the read under way may predate the change
            return
        self._tenant_reload = asyncio.ensure_future(self._reload_tenants())

    async def _reload_tenants(self) -> None:
        while True:
            self._reload_again = False
            try:
                await load_tenants(self._store, self.policies)
            except Exception:
                log.exception("reloading tenants' policies after a peer's change failed")
            if not self._reload_again:
                return

    async def _publish_readiness(self, ready: bool) -> None:
        await self.health.set(READINESS_SERVICE, SERVING if ready else NOT_SERVING)

    async def _start_health_port(self) -> None:
        """The plaintext, health-only port (Kubernetes probes while `listen` is TLS): the same
        health service, nothing else, so it reveals no more than a probe needs."""
        listen = self.config.server.health_listen
        if listen is None:
            return
        server_cfg = self.config.server
        calls = PublicCalls(server_cfg.request_read_timeout_s, server_cfg.max_health_watches)
        server = grpc.aio.server(
            interceptors=[PublicCallInterceptor(calls)],
            options=server_cfg.connection_options(),
        )
        health_pb2_grpc.add_HealthServicer_to_server(self.health, server)
        try:
            self.health_port = server.add_insecure_port(listen)
        except RuntimeError as exc:
            raise ConfigError(f"server.health_listen: cannot listen on {listen}: {exc}") from None
        await server.start()
        self._health_server = server

    @property
    def health_address(self) -> str:
        listen = self.config.server.health_listen or ""
        return f"{listen.rsplit(':', 1)[0]}:{self.health_port}"

    async def _start_backend(
        self, runtime: BackendRuntime, compilers: asyncio.Future[None]
    ) -> None:
        await runtime.runner.start()
        runtime.ready = True

        async def prepare_probe(seed: int) -> PreparedJob:
            spec = runtime.adapter.probe_spec()
            return await self.manager.prepare(runtime, PROBE_TENANT, spec, seed)

        monitor = HealthMonitor(
            runtime.name,
            runtime.runner,
            prepare_probe,
            runtime.health,
            interval_s=runtime.settings.health_interval_s,
            timeout_s=runtime.settings.probe_timeout_s,
            on_change=self._publish_health,
            fetch_target=lambda: self._fetch_target(runtime),
        )
        await asyncio.shield(compilers)  # the probe circuit is compiled like any other
        await monitor.probe()
        self._monitors.append(asyncio.create_task(monitor.run()))

    async def _fetch_target(self, runtime: BackendRuntime) -> None:
        """The description a provider could not give at start (nothing to do once fetched):
        the backend's info is then complete and its jobs are admitted.

        Raises:
            TargetUnavailable: still not fetched.
        """
        if not runtime.target_pending:
            return
        try:
            info = await asyncio.to_thread(runtime.adapter.info)
        except TargetUnavailable as exc:
            runtime.target_pending = str(exc)
            raise
        faults = self.config.backends[runtime.name].faults
        runtime.info = info if faults is None else with_fault_properties(info, faults)
        # Compile workers started from now on get the target too (those running fetch it once
        # themselves at their first compile for the backend).
        self._compile_workers.role = compile_role(self.config, self.backends)
        runtime.target_pending = ""
        log.info("backend %s: the device's description was fetched", runtime.name)

    async def _publish_health(self, backend: str) -> None:
        runtime = self.backends[backend]
        status = SERVING if runtime.health.serving else NOT_SERVING
        await self.health.set(backend_health_name(backend), status)

    @property
    def address(self) -> str:
        host = self.config.server.listen.rsplit(":", 1)[0]
        return f"{host}:{self.port}"

    async def stop(self, cut_short: asyncio.Event | None = None) -> None:
        """Graceful drain: readiness goes NOT_SERVING (liveness stays SERVING), new jobs are
        refused UNAVAILABLE, running jobs finish within the grace period (or until
        `cut_short` is set: an operator's second signal), queued jobs stay in the store for
        the next start."""
        grace = self.config.server.grace_period_s
        await self.readiness.draining()
        self.manager.begin_drain(grace)
        finished = await self.manager.wait_running(grace, cut_short)
        if not finished:
            log.warning("grace period over: jobs still running are re-queued at the next start")
            # Their waiters are answered (the server's stop gives them a second to be sent).
            self.manager.end_grace()
        await self._server.stop(1.0)
        if self._health_server is not None:
            await self._health_server.stop(None)
        await self._key_uses.close()
        reload = [] if self._tenant_reload is None else [self._tenant_reload]
        for task in (*self._monitors, *reload):
            task.cancel()
        await asyncio.gather(*self._monitors, *reload, return_exceptions=True)
        await self.readiness.close()
        # Before the sessions close: a CancelSession whose caller left cancels its jobs in a
        # task of the sessions' core, which its close would cut.
        await shielded.carried_on(STOP_CARRIED_ON_S)
        await self.sessions.close()
        await self.manager.close()
        # And what the steps it cancelled carry on (a provider session being opened).
        await shielded.carried_on(STOP_CARRIED_ON_S)
        if self._peers is not None:
            self._peers.close()
        if self._bus is not None:
            await self._bus.close()
        await self.compiler.close()
        await asyncio.gather(
            self.compiler.pool.close(), *(rt.runner.close() for rt in self.backends.values())
        )
        # Each closes even if the one before failed (the audit head on a read-only disk).
        try:
            if self.audit is not None:  # the last calls' records, then the final head
                await self.audit.close()
        finally:
            try:
                await self._store.close()
            finally:
                await self.telemetry.close()  # the last spans and metrics


async def serve(config: GatewayConfig, on_ready: Callable[[str], None] | None = None) -> None:
    """Runs until SIGTERM or SIGINT, then drains."""
    stop = asyncio.Event()
    hurry = asyncio.Event()

    def on_signal() -> None:
        if stop.is_set():  # a second SIGTERM or Ctrl-C: the grace period ends now
            log.warning("asked again: ending the grace period")
            hurry.set()
        stop.set()

    # First: a signal while the backends are built below is taken when the loop next runs.
    loop = asyncio.get_running_loop()
    for sig in stop_signals.STOP_SIGNALS:
        loop.add_signal_handler(sig, on_signal)
    if stop_signals.asked.is_set():  # one came during the imports (`qgateway serve`)
        stop.set()
    try:
        # Before anything touches the data directory (the audit key is made in Gateway()).
        lock = lock_data_dir(config.data_dir, exclusive=config.server.queue == "memory")
    except DataDirInUse as exc:
        raise ConfigError(str(exc)) from None
    except OSError as exc:  # a file where the directory should be, a read-only file system
        raise ConfigError(f"data_dir {config.data_dir}: {exc.strerror or exc}") from None
    try:
        gateway = Gateway(config)
        try:
            await gateway.start(stopping=stop, data_dir_lock=lock)
        except (StoreInUse, StoreLocked, SchemaTooNew, DataDirInUse, AuditKeyMismatch) as exc:
            raise ConfigError(str(exc)) from None
        except PageTokenKeyInvalid as exc:
            raise ConfigError(str(exc)) from None
        except sqlite3.DatabaseError as exc:
            # Not a database (damage, a bad hand copy), or not a file: the operator's to fix,
            # said in one line like every other start error.
            raise ConfigError(f"{config.data_dir / DB_FILE}: {exc}") from None
        if stop.is_set():
            # Asked to stop while starting: never announced ready to a supervisor that has
            # already asked it to go.
            log.info("asked to stop while starting: not turning ready")
        else:
            _settle_heap()
            _log_security(gateway)
            log.info(
                "qgateway serving on %s (data in %s)", gateway.address, config.data_dir.resolve()
            )
            if on_ready is not None:
                on_ready(gateway.address)
        await stop.wait()
        log.info("draining")
        await gateway.stop(cut_short=hurry)
        log.info("stopped")
    finally:
        lock.release()


def _settle_heap() -> None:
    """Moves everything alive once the gateway has started (modules, descriptors, servicers)
    out of the garbage collector's sight. A full collection scans every tracked object while
    holding the interpreter lock, and a request that leaves many objects alive (a large result
    being decoded in a thread) sets several off: each held the event loop ~70 ms, mostly
    scanning this start-up heap, which never becomes garbage."""
    gc.collect()
    gc.freeze()


def _log_security(gateway: Gateway) -> None:
    config = gateway.config
    if not config.auth.enabled:
        # Loud on purpose: the embedded default is for one developer's machine.
        log.warning(
            "AUTHENTICATION IS OFF: every caller is the anonymous principal of tenant 'default'%s,"
            " with no API key, token or certificate checked. Anyone who can reach %s can run "
            "jobs and read every job's results. Configure [[auth.api_keys]], [auth.jwt] or "
            "[[auth.mtls]] (or auth.required) before exposing this port.",
            " WITH THE ADMIN ROLE" if config.auth.anonymous_admin else "",
            gateway.address,
        )
    if config.server.tls is None:
        log.info("TLS is off: %s is plaintext (configure [server.tls])", gateway.address)
    else:
        log.info(
            "TLS on %s (client certificates: %s)", gateway.address, config.server.tls.client_auth
        )
    if gateway.health_port:
        log.info("plaintext health-only port on %s", gateway.health_address)


def _print_ready(address: str) -> None:
    # Machine-readable line for supervisors and tests that start the gateway on port 0.
    print(f"qgateway listening on {address}", flush=True)


def serve_forever(config_path: Path | None) -> int:
    """Entry point of `qgateway serve`; returns the process exit code."""
    logging.basicConfig(
        level=logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s %(message)s",
        stream=sys.stderr,
    )
    # The SDKs log every transpiler pass at INFO; keep the gateway's own log readable.
    for noisy in ("qiskit", "qiskit_aer", "stevedore"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    logging.getLogger(GRPC_SERVER_LOGGER).addFilter(QuietPeerGone())
    # Every file the gateway makes (the database with every tenant's circuits and results, its
    # WAL, the audit head, the data directory itself) is its own: they were readable by every
    # local user (0644 in a 0755 directory).
    os.umask(0o077)
    sys.setswitchinterval(GIL_SWITCH_INTERVAL_S)
    try:
        config = load_config(config_path)
        if config.server.cpu_affinity is not None:
            try:
                affinity.bind_gateway(config.server.cpu_affinity)
            except affinity.AffinityError as exc:
                raise ConfigError(str(exc)) from None
        asyncio.run(serve(config, _print_ready))
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0
