"""Turns `[telemetry]` into running providers and exporters, and shuts them down.

The only module that imports the OpenTelemetry SDK and exporters, and only for what the
configuration turns on. With everything off, `Telemetry.from_config` imports nothing and the
gateway has no tracing interceptor, no hooks and no sampler.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from gateway.config import ConfigError
from gateway.jobs.backend import BackendRuntime
from gateway.jobs.hooks import Hooks
from gateway.runtime.pool import Pool
from gateway.store.base import Store
from gateway.telemetry import active
from gateway.telemetry.logs import TransitionLog, use_json
from gateway.telemetry.settings import TelemetryConfig, split_listen

if TYPE_CHECKING:
    from gateway.telemetry.metrics import GatewayMetrics
    from gateway.telemetry.tracing import Tracing

log = logging.getLogger(__name__)
# Seconds one OTLP export may take (with the exporter's own retries).
EXPORT_TIMEOUT_S = 5.0
# Seconds the gateway's stop waits for the providers to export what is pending.
SHUTDOWN_TIMEOUT_S = EXPORT_TIMEOUT_S


async def shut_down(providers: Sequence[Any], timeout: float) -> None:
    """Shuts the providers down together, waiting at most `timeout`; then whatever they still
    export is dropped. Their shutdown exports every pending batch, each retried up to its own
    timeout (a collector that is down took ~14 s for a full span queue), and joins the SDK's
    worker thread for up to 30 s: an orchestrator would SIGKILL a gateway stopping that long.
    Daemon threads, not the loop's executor, which the end of asyncio.run would wait for."""
    if not providers:
        return
    loop = asyncio.get_running_loop()
    done = [loop.create_future() for _ in providers]

    def shut(provider: Any, future: asyncio.Future[None]) -> None:
        try:
            provider.shutdown()
        except Exception:
            log.exception("shutting a telemetry provider down failed")
        finally:
            with contextlib.suppress(RuntimeError):  # the loop has ended: nobody waits
                loop.call_soon_threadsafe(future.set_result, None)

    for provider, future in zip(providers, done, strict=True):
        threading.Thread(
            target=shut, args=(provider, future), name="telemetry-shutdown", daemon=True
        ).start()
    finished, _ = await asyncio.wait(done, timeout=timeout)
    if len(finished) < len(done):
        log.warning(
            "telemetry: spans or metrics still unexported after %gs (is the collector"
            " reachable?) are dropped",
            timeout,
        )


def _otlp_target(endpoint: str) -> tuple[str, bool]:
    """(host:port, insecure) of an OTLP/gRPC URL."""
    parts = urlsplit(endpoint)
    return parts.netloc, parts.scheme == "http"


class Telemetry:
    """The process's telemetry. `install` makes it current (gateway.telemetry.active)."""

    def __init__(self, config: TelemetryConfig) -> None:
        self.config = config
        self.tracing: Tracing | None = None
        self.metrics: GatewayMetrics | None = None
        self._providers: list[Any] = []
        self._sampler: asyncio.Task[None] | None = None
        self._prometheus: Any = None
        self.prometheus_port = 0

    def install(self) -> None:
        """Builds the providers the configuration asks for and makes them current."""
        config = self.config
        if config.logs.json_lines:
            use_json()
        if not config.enabled:
            return
        from opentelemetry.sdk.resources import Resource

        resource = Resource.create({"service.name": config.service_name})
        if config.tracing.enabled:
            self.tracing = self._tracing(resource)
        if config.metrics.enabled:
            self.metrics = self._metrics(resource)
        active.install(self.tracing, self.metrics)

    def _tracing(self, resource: Any) -> Tracing:
        from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import BatchSpanProcessor

        from gateway.telemetry.sampling import gateway_sampler
        from gateway.telemetry.tracing import TRACER_NAME, Tracing

        cfg = self.config.tracing
        provider = TracerProvider(
            resource=resource,
            sampler=gateway_sampler(cfg.sample_ratio, cfg.follow_caller_sampling),
        )
        target, insecure = _otlp_target(cfg.otlp_endpoint)
        provider.add_span_processor(
            BatchSpanProcessor(
                # A collector that is down holds each export at most this long.
                OTLPSpanExporter(endpoint=target, insecure=insecure, timeout=EXPORT_TIMEOUT_S),
                schedule_delay_millis=cfg.export_interval_s * 1000,
            )
        )
        self._providers.append(provider)
        return Tracing(provider.get_tracer(TRACER_NAME), cfg.max_header_bytes)

    def _metrics(self, resource: Any) -> GatewayMetrics:
        from opentelemetry.sdk.metrics import AlwaysOffExemplarFilter, MeterProvider
        from opentelemetry.sdk.metrics.export import MetricReader

        from gateway.telemetry.metrics import GatewayMetrics

        cfg = self.config.metrics
        readers: list[MetricReader] = []
        if cfg.prometheus_listen is not None:
            from opentelemetry.exporter.prometheus import PrometheusMetricReader
            from prometheus_client import CollectorRegistry, start_http_server

            registry = CollectorRegistry()
            readers.append(PrometheusMetricReader(registry=registry))
            host, port = split_listen(cfg.prometheus_listen)
            try:
                server, _thread = start_http_server(port, addr=host, registry=registry)
            except (OSError, ValueError) as exc:
                raise ConfigError(
                    f"telemetry.metrics.prometheus_listen: cannot listen on "
                    f"{cfg.prometheus_listen}: {exc}"
                ) from None
            self._prometheus = server
            self.prometheus_port = server.server_address[1]
            log.info("metrics: Prometheus scrape endpoint on http://%s:%d/metrics", host,
                     self.prometheus_port)  # fmt: skip
        if cfg.otlp_endpoint is not None:
            from opentelemetry.exporter.otlp.proto.grpc.metric_exporter import OTLPMetricExporter
            from opentelemetry.sdk.metrics.export import PeriodicExportingMetricReader

            target, insecure = _otlp_target(cfg.otlp_endpoint)
            readers.append(
                PeriodicExportingMetricReader(
                    OTLPMetricExporter(
                        endpoint=target, insecure=insecure, timeout=EXPORT_TIMEOUT_S
                    ),
                    export_interval_millis=cfg.otlp_interval_s * 1000,
                )
            )
        # No exemplars: the scrape format drops them, and sampling one costs every measurement.
        provider = MeterProvider(
            resource=resource, metric_readers=readers, exemplar_filter=AlwaysOffExemplarFilter()
        )
        self._providers.append(provider)
        return GatewayMetrics(provider.get_meter("qgateway"), cfg.max_tenant_labels)

    def interceptors(self) -> list[Any]:
        """The RPC interceptor (spans and durations), when tracing or metrics are on."""
        if self.tracing is None and self.metrics is None:
            return []
        from gateway.interceptors.tracing import TelemetryInterceptor

        return [TelemetryInterceptor(self.tracing, self.metrics)]

    def store(self, store: Store) -> Store:
        """The store the job core writes through: with spans around job writes (tracing on)."""
        if self.tracing is None:
            return store
        from gateway.telemetry.store import traced_store

        return traced_store(store, self.tracing)

    def register(self, hooks: Hooks) -> None:
        """The lifecycle hooks: spans, metrics and transition log lines of every job."""
        # Metrics first: a breaker change a job's end caused becomes an event on that job's
        # execute span, which the tracing hook then ends.
        if self.metrics is not None:
            hooks.add(self.metrics)
        if self.tracing is not None:
            hooks.add(self.tracing)
        if self.config.logs.job_transitions and self.config.logs.json_lines:
            hooks.add(TransitionLog())

    def start(self, backends: Mapping[str, BackendRuntime], compile_pool: Pool[Any] | None) -> None:
        """Starts sampling the backends' live state (metrics on)."""
        if self.metrics is None:
            return
        self.metrics.watch(backends, compile_pool)
        self._sampler = asyncio.create_task(
            self.metrics.run_sampler(self.config.metrics.sample_interval_s)
        )

    async def close(self) -> None:
        """Stops sampling, exports what is pending, stops the scrape endpoint."""
        if self._sampler is not None:
            self._sampler.cancel()
            await asyncio.gather(self._sampler, return_exceptions=True)
        if self.tracing is not None:
            self.tracing.end_open()
        await shut_down(self._providers, SHUTDOWN_TIMEOUT_S)
        if self._prometheus is not None:
            self._prometheus.shutdown()
            self._prometheus.server_close()  # its listening socket, or the port stays taken
        active.install(None, None)
