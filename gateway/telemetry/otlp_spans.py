"""A cheaper OTLP encoding of finished spans (tracing on): protobuf wire bytes written directly.

The SDK's encoder builds a protobuf message object per span, attribute, value and event, in
Python, on the batch processor's thread: about 15-25 microseconds a span, the largest single
cost of a sampled job after the spans themselves, and it holds the GIL the event loop needs.
This writes the same ExportTraceServiceRequest as wire bytes (resource and scope encoded once,
repeated attribute pairs cached), then lets the C protobuf runtime parse it into the message
the exporter's stub sends. `encode` matches the SDK's `encode_spans` message for message
(tests/unit/test_telemetry_otlp.py compares them).
"""

from __future__ import annotations

import struct
from collections.abc import Mapping, Sequence
from typing import Any

from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans
from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.sdk.trace import ReadableSpan

_FIXED64 = struct.Struct("<Q").pack
_FIXED32 = struct.Struct("<I").pack
_DOUBLE = struct.Struct("<d").pack
_UINT64 = 0xFFFFFFFFFFFFFFFF
# Span.flags (field 16, fixed32): "has is_remote" and "is remote", as the SDK sets them.
_FLAGS_TAG = b"\x85\x01"
_HAS_IS_REMOTE = 0x100
_IS_REMOTE = 0x200
# Attribute pairs worth remembering (names, backends, states); unique values (job ids) pass
# through once and the cache is emptied when it grows past this.
_CACHE_LIMIT = 4096


def _varint(value: int) -> bytes:
    if value < 0x80:
        return bytes((value,))
    out = bytearray()
    while value >= 0x80:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def _field(tag: bytes, payload: bytes) -> bytes:
    """A length-delimited field: tag, length, payload."""
    return tag + _varint(len(payload)) + payload


def _value(value: Any) -> bytes:
    """An AnyValue message's content (a oneof: written even when it holds a default)."""
    if value is None:
        return b""
    if isinstance(value, bool):
        return b"\x10\x01" if value else b"\x10\x00"
    if isinstance(value, str):
        return _field(b"\x0a", value.encode())
    if isinstance(value, int):
        return b"\x18" + _varint(value & _UINT64)
    if isinstance(value, float):
        return b"\x21" + _DOUBLE(value)
    if isinstance(value, bytes):
        return _field(b"\x3a", value)
    if isinstance(value, Sequence):
        return _field(b"\x2a", b"".join(_field(b"\x0a", _value(v)) for v in value))
    if isinstance(value, Mapping):
        return _field(
            b"\x32", b"".join(_field(b"\x0a", _pair(str(k), v)) for k, v in value.items())
        )
    raise TypeError(f"attribute value of type {type(value).__name__}")


def _pair(key: str, value: Any) -> bytes:
    """A KeyValue message's content."""
    return _field(b"\x0a", key.encode()) + _field(b"\x12", _value(value))


class SpanEncoder:
    """Encodes batches of finished spans; keeps encoded resources, scopes and attribute pairs."""

    def __init__(self) -> None:
        self._pairs: dict[tuple[str, type, Any], bytes] = {}
        self._resources: dict[int, tuple[Any, bytes]] = {}
        self._scopes: dict[int, tuple[Any, bytes]] = {}

    def _kv(self, tag: bytes, attributes: Mapping[str, Any] | None) -> bytes:
        """Repeated KeyValue fields under `tag`."""
        if not attributes:
            return b""
        pairs = self._pairs
        out: list[bytes] = []
        for key, value in attributes.items():
            # Cached without the tag (one byte, which differs by message). The value's type is
            # part of the key: True == 1 == 1.0 would share an entry otherwise.
            cache_key = (key, type(value), value) if isinstance(value, (str, int, float)) else None
            encoded = pairs.get(cache_key) if cache_key is not None else None
            if encoded is None:
                pair = _pair(key, value)
                encoded = _varint(len(pair)) + pair
                if cache_key is not None:
                    if len(pairs) >= _CACHE_LIMIT:
                        pairs.clear()
                    pairs[cache_key] = encoded
            out += (tag, encoded)
        return b"".join(out)

    def _resource(self, resource: Any) -> bytes:
        cached = self._resources.get(id(resource))
        if cached is None or cached[0] is not resource:
            cached = (resource, _field(b"\x0a", self._kv(b"\x0a", resource.attributes)))
            self._resources[id(resource)] = cached
        return cached[1]

    def _scope(self, scope: Any) -> bytes:
        cached = self._scopes.get(id(scope))
        if cached is None or cached[0] is not scope:
            content = b""
            if scope is not None:
                if scope.name:
                    content += _field(b"\x0a", scope.name.encode())
                if scope.version:
                    content += _field(b"\x12", scope.version.encode())
                content += self._kv(b"\x1a", scope.attributes)
            cached = (scope, _field(b"\x0a", content))
            self._scopes[id(scope)] = cached
        return cached[1]

    def _span(self, span: ReadableSpan) -> bytes:
        ctx = span.get_span_context()
        assert ctx is not None  # a finished SDK span always has one
        parts = [
            b"\x0a\x10", ctx.trace_id.to_bytes(16, "big"),
            b"\x12\x08", ctx.span_id.to_bytes(8, "big"),
        ]  # fmt: skip
        if ctx.trace_state:
            state = ",".join(f"{k}={v}" for k, v in ctx.trace_state.items())
            parts.append(_field(b"\x1a", state.encode()))
        parent = span.parent
        if parent is not None:
            parts += (b"\x22\x08", parent.span_id.to_bytes(8, "big"))
        parts.append(_field(b"\x2a", span.name.encode()))
        parts += (b"\x30", _varint(span.kind.value + 1))  # API kinds count from 0, OTLP's from 1
        if span.start_time:
            parts += (b"\x39", _FIXED64(span.start_time))
        if span.end_time:
            parts += (b"\x41", _FIXED64(span.end_time))
        parts.append(self._kv(b"\x4a", span.attributes))
        if span.dropped_attributes:
            parts += (b"\x50", _varint(span.dropped_attributes))
        for event in span.events:
            content = b"\x09" + _FIXED64(event.timestamp) + _field(b"\x12", event.name.encode())
            content += self._kv(b"\x1a", event.attributes)
            if event.dropped_attributes:
                content += b"\x20" + _varint(event.dropped_attributes)
            parts.append(_field(b"\x5a", content))
        if span.dropped_events:
            parts += (b"\x60", _varint(span.dropped_events))
        for link in span.links:
            linked = link.context
            content = b"\x0a\x10" + linked.trace_id.to_bytes(16, "big")
            content += b"\x12\x08" + linked.span_id.to_bytes(8, "big")
            content += self._kv(b"\x22", link.attributes)
            if link.dropped_attributes:
                content += b"\x28" + _varint(link.dropped_attributes)
            flags = _HAS_IS_REMOTE | (_IS_REMOTE if linked.is_remote else 0)
            parts.append(_field(b"\x6a", content + b"\x35" + _FIXED32(flags)))
        if span.dropped_links:
            parts += (b"\x70", _varint(span.dropped_links))
        status = b""
        if span.status.description:
            status += _field(b"\x12", span.status.description.encode())
        if span.status.status_code.value:
            status += b"\x18" + _varint(span.status.status_code.value)
        parts.append(_field(b"\x7a", status))
        flags = _HAS_IS_REMOTE | (_IS_REMOTE if parent is not None and parent.is_remote else 0)
        parts += (_FLAGS_TAG, _FIXED32(flags))
        return b"".join(parts)

    def encode(self, spans: Sequence[ReadableSpan]) -> bytes:
        """The ExportTraceServiceRequest of `spans`, as wire bytes."""
        # Resource -> scope -> spans, in first-seen order (as the SDK groups them).
        groups: dict[int, tuple[Any, dict[int, tuple[Any, list[bytes]]]]] = {}
        for span in spans:
            resource, scope = span.resource, span.instrumentation_scope
            scopes = groups.setdefault(id(resource), (resource, {}))[1]
            scopes.setdefault(id(scope), (scope, []))[1].append(_field(b"\x12", self._span(span)))
        out = []
        for resource, scopes in groups.values():
            content = [self._resource(resource)]
            for scope, encoded in scopes.values():
                scope_spans = self._scope(scope) + b"".join(encoded)
                if scope is not None and scope.schema_url:
                    scope_spans += _field(b"\x1a", scope.schema_url.encode())
                content.append(_field(b"\x12", scope_spans))
            if resource.schema_url:
                content.append(_field(b"\x1a", resource.schema_url.encode()))
            out.append(_field(b"\x0a", b"".join(content)))
        return b"".join(out)


class WireSpanExporter(OTLPSpanExporter):
    """The OTLP/gRPC span exporter, encoding with SpanEncoder (everything else unchanged)."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._encoder = SpanEncoder()

    def _translate_data(self, data: Sequence[ReadableSpan]) -> ExportTraceServiceRequest:
        try:
            encoded = self._encoder.encode(data)
        except TypeError:  # an attribute value of a type the SDK would not have let in
            return encode_spans(data)
        # Parsing the bytes back is C work (upb); the stub serialises the message again.
        return ExportTraceServiceRequest.FromString(encoded)
