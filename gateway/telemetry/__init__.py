"""Telemetry (issue 12): OpenTelemetry traces and metrics, structured JSON logs.

Everything here is off by default and costs nothing when off: the OpenTelemetry SDK and its
exporters are imported only by `gateway.telemetry.setup` when `[telemetry]` turns them on.
"""
