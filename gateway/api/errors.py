"""The one place that turns GatewayError into a google.rpc.Status with details."""

from __future__ import annotations

import grpc
from google.protobuf import any_pb2
from google.protobuf.duration_pb2 import Duration
from google.rpc import code_pb2, error_details_pb2, status_pb2
from grpc_status import rpc_status

from gateway.domain.errors import GatewayError

ERROR_DOMAIN = "qgateway"
# The status travels in trailers, which gRPC clients limit to 8 KiB by default (past that the
# caller gets a bare RESOURCE_EXHAUSTED instead of this error). Client-supplied values quoted in
# a message or in metadata (a 4000-digit register size) are clipped to keep well below it.
MAX_MESSAGE_CHARS = 1000
MAX_DETAIL_CHARS = 200


def _clip(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _pack(message: object) -> any_pb2.Any:
    packed = any_pb2.Any()
    packed.Pack(message)  # type: ignore[arg-type]
    return packed


def to_status(error: GatewayError) -> grpc.Status:
    """google.rpc.Status: ErrorInfo always, plus BadRequest/QuotaFailure/RetryInfo if known."""
    details = [
        _pack(
            error_details_pb2.ErrorInfo(
                reason=error.reason,
                domain=ERROR_DOMAIN,
                metadata={
                    key: _clip(value, MAX_DETAIL_CHARS) for key, value in error.metadata.items()
                },
            )
        )
    ]
    if error.field_violations:
        details.append(
            _pack(
                error_details_pb2.BadRequest(
                    field_violations=[
                        error_details_pb2.BadRequest.FieldViolation(
                            field=v.field, description=_clip(v.description, MAX_DETAIL_CHARS)
                        )
                        for v in error.field_violations
                    ]
                )
            )
        )
    if error.quota_violations:
        details.append(
            _pack(
                error_details_pb2.QuotaFailure(
                    violations=[
                        error_details_pb2.QuotaFailure.Violation(
                            subject=v.subject, description=v.description
                        )
                        for v in error.quota_violations
                    ]
                )
            )
        )
    if error.retry_after is not None:
        delay = Duration()
        delay.FromNanoseconds(int(error.retry_after * 1e9))
        details.append(_pack(error_details_pb2.RetryInfo(retry_delay=delay)))
    status = status_pb2.Status(
        code=int(error.code), message=_clip(error.message, MAX_MESSAGE_CHARS), details=details
    )
    assert code_pb2.Code.Name(status.code)  # every domain code is a real gRPC code
    return rpc_status.to_status(status)
