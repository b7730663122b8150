"""Which traces the gateway records.

New traces are sampled by ratio. A caller's trace context is continued either way (its trace
id and parent span), but its sampled flag decides only when `follow_caller_sampling` is set:
anyone can send a `traceparent` ending in `-01`, before authentication, and make every one of
its calls fill the span exporter's bounded queue, so that other callers' spans are dropped.
Behind a mesh whose sidecar makes the decision, following it keeps traces whole.

Imported only when tracing is on (it imports the OpenTelemetry SDK).
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Sequence

from opentelemetry.context import Context
from opentelemetry.sdk.trace.sampling import (
    ParentBased,
    Sampler,
    SamplingResult,
    TraceIdRatioBased,
)
from opentelemetry.trace import Link, SpanKind
from opentelemetry.trace.span import TraceState
from opentelemetry.util.types import Attributes


class KeyedRatioSampler(TraceIdRatioBased):
    """A ratio of caller-named traces, decided on a keyed hash of the trace id.

    TraceIdRatioBased reads the trace id's low 64 bits, which a caller chooses: any id ending
    in zeros would always be sampled. The key is this process's own, so the same trace gets
    the same decision for every span here.
    """

    def __init__(self, rate: float, key: bytes | None = None) -> None:
        super().__init__(rate)
        self._key = key if key is not None else os.urandom(16)

    def should_sample(
        self,
        parent_context: Context | None,
        trace_id: int,
        name: str,
        kind: SpanKind | None = None,
        attributes: Attributes = None,
        links: Sequence[Link] | None = None,
        trace_state: TraceState | None = None,
    ) -> SamplingResult:
        digest = hashlib.blake2b(
            trace_id.to_bytes(16, "big"), key=self._key, digest_size=8
        ).digest()
        return super().should_sample(
            parent_context,
            int.from_bytes(digest, "big"),
            name,
            kind,
            attributes,
            links,
            trace_state,
        )

    def get_description(self) -> str:
        return f"KeyedRatioSampler{{{self.rate}}}"


def gateway_sampler(ratio: float, follow_caller_sampling: bool) -> Sampler:
    """Parent-based: spans under the gateway's own spans follow them; a caller's span is
    followed only when trusted to decide."""
    if follow_caller_sampling:
        return ParentBased(TraceIdRatioBased(ratio))
    caller = KeyedRatioSampler(ratio)
    return ParentBased(
        TraceIdRatioBased(ratio),
        remote_parent_sampled=caller,
        remote_parent_not_sampled=caller,
    )
