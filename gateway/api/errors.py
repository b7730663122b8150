"""The one place that makes google.rpc.Status: RPC errors (GatewayError) and job failures
(JobError) by the same rules."""

from __future__ import annotations

import grpc
from google.protobuf import any_pb2
from google.protobuf.duration_pb2 import Duration
from google.rpc import code_pb2, error_details_pb2, status_pb2
from grpc_status import rpc_status

from gateway.domain.errors import GatewayError
from gateway.domain.jobs import JobError

# Names this API uniquely (AIP-193): the service's domain, not a bare word.
ERROR_DOMAIN = "qgateway.dev"
# The status travels in trailers, which gRPC clients limit to 8 KiB by default (past that the
# caller gets a bare RESOURCE_EXHAUSTED instead of this error). Client-supplied values quoted in
# a message or in metadata (a 4000-digit register size) are clipped to keep well below it.
MAX_MESSAGE_CHARS = 1000
MAX_DETAIL_CHARS = 200
# The longest RetryInfo delay: no delay may break the status it travels in (an infinite one
# cannot be a Duration, nor one past Duration's 10,000 years), and a year says "not soon" as
# well as any longer one. The longest the gateway computes (a quota period's end) is within it.
MAX_RETRY_DELAY_S = 366 * 86400


def _clip(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _pack(message: object) -> any_pb2.Any:
    packed = any_pb2.Any()
    packed.Pack(message)  # type: ignore[arg-type]
    return packed


def status_proto(error: GatewayError | JobError) -> status_pb2.Status:
    """google.rpc.Status of an RPC error or of a job's failure, by the same rules.

    ErrorInfo always (domain ERROR_DOMAIN, the reason, metadata); then, when the error has them,
    ResourceInfo (NOT_FOUND names the resource), BadRequest, QuotaFailure and RetryInfo (only
    for errors where repeating the same call can succeed).
    """
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
    if isinstance(error, GatewayError):
        details.extend(_gateway_details(error))
    status = status_pb2.Status(
        code=int(error.code), message=_clip(error.message, MAX_MESSAGE_CHARS), details=details
    )
    assert code_pb2.Code.Name(status.code)  # every domain code is a real gRPC code
    return status


def _gateway_details(error: GatewayError) -> list[any_pb2.Any]:
    details: list[any_pb2.Any] = []
    if error.resource_info is not None:
        info = error.resource_info
        details.append(
            _pack(
                error_details_pb2.ResourceInfo(
                    resource_type=info.type,
                    resource_name=_clip(info.name, MAX_DETAIL_CHARS),
                    description=_clip(info.description, MAX_DETAIL_CHARS),
                )
            )
        )
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
        details.append(_pack(error_details_pb2.RetryInfo(retry_delay=_delay(error.retry_after))))
    return details


def _delay(seconds: float) -> Duration:
    # NaN and negative delays (never computed on purpose) are "now".
    bounded = min(seconds, MAX_RETRY_DELAY_S) if seconds > 0 else 0.0
    delay = Duration()
    delay.FromNanoseconds(int(bounded * 1e9))
    return delay


def job_error_status(error: JobError) -> status_pb2.Status:
    """Job.error: a job's failure as google.rpc.Status, shaped like every RPC error."""
    return status_proto(error)


def to_status(error: GatewayError) -> grpc.Status:
    """The grpc.Status (code, message, grpc-status-details-bin trailer) of an RPC error."""
    return rpc_status.to_status(status_proto(error))
