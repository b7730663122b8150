"""`[telemetry]`: traces, metrics and structured logs. Everything is off by default.

Example::

    [telemetry.tracing]
    enabled = true
    otlp_endpoint = "http://collector:4317"
    sample_ratio = 0.1

    [telemetry.metrics]
    prometheus_listen = "0.0.0.0:9464"
    otlp_endpoint = "http://collector:4317"

    [telemetry.logs]
    json = true
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from gateway.setting_bounds import MAX_SECONDS


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)


class TracingConfig(_Strict):
    """Spans per RPC and per job phase, exported over OTLP/gRPC."""

    enabled: bool = False
    # OTLP/gRPC collector, "http://host:4317" (plaintext) or "https://host:4317".
    otlp_endpoint: str = "http://127.0.0.1:4317"
    # Share of traces recorded. A caller's trace context is continued, but its sampled flag
    # is followed only when follow_caller_sampling is on (a mesh sidecar that decides):
    # otherwise any caller could have all its calls recorded (gateway.telemetry.sampling).
    sample_ratio: float = Field(default=1.0, ge=0.0, le=1.0)
    follow_caller_sampling: bool = False
    # Spans are exported in batches this often (and at shutdown).
    export_interval_s: float = Field(default=2.0, gt=0, le=MAX_SECONDS)
    # A W3C traceparent/tracestate/baggage header longer than this is ignored, not an error.
    max_header_bytes: int = Field(default=4096, ge=64, le=65536)


class MetricsConfig(_Strict):
    """OpenTelemetry meters, scraped by Prometheus and/or pushed over OTLP/gRPC."""

    # "host:port" of a Prometheus scrape endpoint (GET /metrics); unset: none.
    prometheus_listen: str | None = None
    # OTLP/gRPC collector to push metrics to; unset: none.
    otlp_endpoint: str | None = None
    otlp_interval_s: float = Field(default=15.0, gt=0, le=MAX_SECONDS)
    # Live state (queue depth, pools, breakers, health) is read this often on the event loop.
    sample_interval_s: float = Field(default=5.0, gt=0, le=MAX_SECONDS)
    # The tenant label holds at most this many tenants; the others are reported as "other".
    max_tenant_labels: int = Field(default=50, ge=0)

    @property
    def enabled(self) -> bool:
        return self.prometheus_listen is not None or self.otlp_endpoint is not None

    @field_validator("prometheus_listen")
    @classmethod
    def _listen(cls, listen: str | None) -> str | None:
        if listen is not None:
            split_listen(listen)
        return listen


def split_listen(listen: str) -> tuple[str, int]:
    """(host, port) of "host:port" ("" host: every interface; an IPv6 host in brackets,
    "[::]:9464", as gRPC's own listen addresses are written).

    Raises:
        ValueError: Not host:port with a port in 0-65535.
    """
    host, _, port = listen.rpartition(":")
    if not (port.isascii() and port.isdigit()) or int(port) > 65535:
        raise ValueError(f"{listen!r}: give host:port, the port 0-65535")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    return host or "0.0.0.0", int(port)


class LogsConfig(_Strict):
    # One JSON object per line on stderr, with trace and span ids and the job's fields.
    json_lines: bool = Field(default=False, alias="json")
    # One line per job state change (INFO, logger "gateway.jobs.transitions").
    job_transitions: bool = True

    model_config = ConfigDict(
        extra="forbid", frozen=True, allow_inf_nan=False, populate_by_name=True
    )


class TelemetryConfig(_Strict):
    # Name reported as the service.name resource attribute.
    service_name: str = "qgateway"
    tracing: TracingConfig = TracingConfig()
    metrics: MetricsConfig = MetricsConfig()
    logs: LogsConfig = LogsConfig()

    @model_validator(mode="after")
    def _endpoints(self) -> TelemetryConfig:
        for what, endpoint in (
            ("tracing.otlp_endpoint", self.tracing.otlp_endpoint),
            ("metrics.otlp_endpoint", self.metrics.otlp_endpoint),
        ):
            if endpoint is not None and not endpoint.startswith(("http://", "https://")):
                raise ValueError(f"telemetry.{what}: give a URL, http://host:port or https://...")
        return self

    @property
    def enabled(self) -> bool:
        return self.tracing.enabled or self.metrics.enabled
