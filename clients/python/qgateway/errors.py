"""Typed exceptions for every error the gateway answers with.

The gateway sends a `google.rpc.Status` in the `grpc-status-details-bin` trailing metadata, with
an ErrorInfo (reason, domain "qgateway.dev", lowerCamelCase metadata) and, depending on the error,
ResourceInfo, BadRequest, RetryInfo and QuotaFailure details. This module decodes that trailer
itself (so the client does not need grpcio-status) and raises one exception class per status
code, all subclasses of :class:`QGatewayError`. A failed job's `Job.error` is the same kind of
Status and becomes the same kind of error (:func:`from_status`).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

# grpc ships no type information; the unused-ignore code keeps this line clean once stubs exist.
import grpc  # type: ignore[import-untyped, unused-ignore]
from google.rpc import error_details_pb2, status_pb2

__all__ = [
    "ERROR_DOMAIN",
    "STATUS_DETAILS_KEY",
    "AbortedError",
    "AlreadyExistsError",
    "CancelledError",
    "DataLossError",
    "DeadlineExceededError",
    "FailedPreconditionError",
    "InternalError",
    "InvalidArgumentError",
    "JobFailedError",
    "NotFoundError",
    "OutOfRangeError",
    "PermissionDeniedError",
    "QGatewayError",
    "ResourceExhaustedError",
    "ResourceInfo",
    "ResultDigestError",
    "UnauthenticatedError",
    "UnavailableError",
    "UnimplementedError",
    "UnknownError",
    "error_class_for",
    "from_rpc_error",
    "from_status",
]

#: Trailing-metadata key that carries the serialised google.rpc.Status.
STATUS_DETAILS_KEY = "grpc-status-details-bin"
#: ErrorInfo.domain of the gateway's own errors (others come from gRPC or a proxy on the way).
ERROR_DOMAIN = "qgateway.dev"


@dataclass(frozen=True)
class ResourceInfo:
    """The resource an error is about (google.rpc.ResourceInfo), e.g. on NOT_FOUND.

    Attributes:
        type: Resource type, e.g. "qgateway.dev/Job".
        name: Full resource name, e.g. "jobs/abc".
        description: What is wrong with it.
    """

    type: str
    name: str
    description: str = ""


class QGatewayError(Exception):
    """Base class of every error answered by the gateway (or by gRPC on its way there).

    Attributes:
        code: The gRPC status code.
        reason: ErrorInfo.reason, an UPPER_SNAKE machine-readable cause ("" when the answer had
            no ErrorInfo, e.g. a transport error raised by gRPC itself).
        domain: ErrorInfo.domain (ERROR_DOMAIN, "qgateway.dev", for the gateway's own errors).
        message: The human-readable status message.
        metadata: ErrorInfo.metadata (lowerCamelCase keys, full resource names), e.g.
            {"job": "jobs/..."} on a Run deadline.
        resource_info: ResourceInfo details (NOT_FOUND names the resource), or None.
        field_violations: BadRequest details as (field, description) pairs.
        retry_delay: RetryInfo.retry_delay in seconds, or None without RetryInfo.
        quota_violations: QuotaFailure details as (subject, description) pairs.
        request_id: The request_id the client sent, for SubmitJob and Run; repeating the call
            with it returns the same job instead of starting another one.
    """

    #: Status code this class stands for; the base class answers for codes it does not know.
    default_code: ClassVar[Any] = grpc.StatusCode.UNKNOWN

    def __init__(
        self,
        message: str,
        *,
        code: Any = None,
        reason: str = "",
        domain: str = "",
        metadata: Mapping[str, str] | None = None,
        field_violations: Sequence[tuple[str, str]] = (),
        retry_delay: float | None = None,
        quota_violations: Sequence[tuple[str, str]] = (),
        request_id: str | None = None,
        resource_info: ResourceInfo | None = None,
    ) -> None:
        super().__init__(message)
        self.code: Any = self.default_code if code is None else code
        self.resource_info = resource_info
        self.reason = reason
        self.domain = domain
        self.message = message
        self.metadata: dict[str, str] = dict(metadata or {})
        self.field_violations: list[tuple[str, str]] = list(field_violations)
        self.retry_delay = retry_delay
        self.quota_violations: list[tuple[str, str]] = list(quota_violations)
        self.request_id = request_id

    @property
    def from_gateway(self) -> bool:
        """Whether the gateway itself answered (its ErrorInfo domain), not gRPC or a proxy."""
        return self.domain == ERROR_DOMAIN

    @property
    def code_name(self) -> str:
        """The status code's name, e.g. "INVALID_ARGUMENT"."""
        name = getattr(self.code, "name", None)
        return name if isinstance(name, str) else str(self.code)

    def __str__(self) -> str:
        head = f"{self.code_name} {self.reason}" if self.reason else self.code_name
        return f"{head}: {self.message}" if self.message else head

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(code={self.code_name}, reason={self.reason!r}, "
            f"message={self.message!r})"
        )


class CancelledError(QGatewayError):
    """CANCELLED: the call was cancelled, usually by the caller."""

    default_code = grpc.StatusCode.CANCELLED


class UnknownError(QGatewayError):
    """UNKNOWN: an error without a more specific code."""

    default_code = grpc.StatusCode.UNKNOWN


class InvalidArgumentError(QGatewayError):
    """INVALID_ARGUMENT: the request is wrong (see `reason` and `field_violations`)."""

    default_code = grpc.StatusCode.INVALID_ARGUMENT


class DeadlineExceededError(QGatewayError):
    """DEADLINE_EXCEEDED: the call's deadline passed.

    For Run the job keeps running: `job` names it when the gateway answered before the deadline,
    and repeating Run (or SubmitJob) with `request_id` returns the same job.
    """

    default_code = grpc.StatusCode.DEADLINE_EXCEEDED

    @property
    def job(self) -> str | None:
        """Name of the job that keeps running ("jobs/..."), when the gateway reported it."""
        return self.metadata.get("job") or None


class NotFoundError(QGatewayError):
    """NOT_FOUND: no such job or backend (another tenant's job also answers this)."""

    default_code = grpc.StatusCode.NOT_FOUND


class AlreadyExistsError(QGatewayError):
    """ALREADY_EXISTS."""

    default_code = grpc.StatusCode.ALREADY_EXISTS


class PermissionDeniedError(QGatewayError):
    """PERMISSION_DENIED: the caller may not do this (backend, shots, qubits...)."""

    default_code = grpc.StatusCode.PERMISSION_DENIED


class ResourceExhaustedError(QGatewayError):
    """RESOURCE_EXHAUSTED: a quota or a queue is full; see `retry_delay`, `quota_violations`."""

    default_code = grpc.StatusCode.RESOURCE_EXHAUSTED


class FailedPreconditionError(QGatewayError):
    """FAILED_PRECONDITION: the resource is not in a state that allows this call."""

    default_code = grpc.StatusCode.FAILED_PRECONDITION


class AbortedError(QGatewayError):
    """ABORTED."""

    default_code = grpc.StatusCode.ABORTED


class OutOfRangeError(QGatewayError):
    """OUT_OF_RANGE."""

    default_code = grpc.StatusCode.OUT_OF_RANGE


class UnimplementedError(QGatewayError):
    """UNIMPLEMENTED: the gateway does not offer this method or feature."""

    default_code = grpc.StatusCode.UNIMPLEMENTED


class InternalError(QGatewayError):
    """INTERNAL: a bug in the gateway, not in the request."""

    default_code = grpc.StatusCode.INTERNAL


class UnavailableError(QGatewayError):
    """UNAVAILABLE: the gateway or backend cannot take the request now; nothing was accepted."""

    default_code = grpc.StatusCode.UNAVAILABLE


class DataLossError(QGatewayError):
    """DATA_LOSS."""

    default_code = grpc.StatusCode.DATA_LOSS


class ResultDigestError(DataLossError):
    """A streamed result does not match the SHA-256 the gateway sent at the end of the stream.

    Raised by the client itself after reassembly (reason RESULT_DIGEST_MISMATCH): the bytes it
    put together are not the gateway's result, so none of them are returned. Fetching the
    result again may succeed.

    Attributes:
        expected: The gateway's digest.
        actual: The digest of what the client reassembled.
    """

    def __init__(self, job: str, expected: bytes, actual: bytes) -> None:
        super().__init__(
            f"the reassembled result of {job} does not match the gateway's SHA-256 "
            f"(expected {expected.hex()}, got {actual.hex()})",
            reason="RESULT_DIGEST_MISMATCH",
            domain=ERROR_DOMAIN,
            metadata={"job": job, "expectedSha256": expected.hex(), "actualSha256": actual.hex()},
        )
        self.expected = expected
        self.actual = actual


class UnauthenticatedError(QGatewayError):
    """UNAUTHENTICATED: missing or invalid credentials."""

    default_code = grpc.StatusCode.UNAUTHENTICATED


class JobFailedError(Exception):
    """A job ended FAILED or CANCELLED where a result was expected (e.g. `Client.run`).

    This is not an RPC error: the call itself succeeded, the job did not.

    Attributes:
        job: The job's resource name.
        state: The final state's name, "FAILED" or "CANCELLED".
        reason: Job.error's ErrorInfo reason, e.g. OUT_OF_MEMORY ("" when cancelled).
        message: Job.error.message.
        error: Job.error as a typed error (code, reason, message, metadata such as
            "pubIndex"), or None when cancelled.
    """

    def __init__(
        self,
        job: str,
        state: str,
        reason: str = "",
        message: str = "",
        *,
        error: QGatewayError | None = None,
    ) -> None:
        super().__init__(job, state, reason, message)
        self.job = job
        self.state = state
        self.reason = reason or (error.reason if error is not None else "")
        self.message = message or (error.message if error is not None else "")
        self.error = error

    @property
    def code(self) -> Any:
        """Job.error's status code (a grpc.StatusCode), or None when cancelled."""
        return None if self.error is None else self.error.code

    @property
    def metadata(self) -> dict[str, str]:
        """Job.error's ErrorInfo metadata, e.g. {"pubIndex": "1"}."""
        return {} if self.error is None else self.error.metadata

    def __str__(self) -> str:
        text = f"job {self.job} {self.state}"
        if self.reason:
            text += f" {self.reason}"
        return f"{text}: {self.message}" if self.message else text


_CLASSES: tuple[type[QGatewayError], ...] = (
    CancelledError,
    UnknownError,
    InvalidArgumentError,
    DeadlineExceededError,
    NotFoundError,
    AlreadyExistsError,
    PermissionDeniedError,
    ResourceExhaustedError,
    FailedPreconditionError,
    AbortedError,
    OutOfRangeError,
    UnimplementedError,
    InternalError,
    UnavailableError,
    DataLossError,
    UnauthenticatedError,
)
_BY_CODE: dict[Any, type[QGatewayError]] = {cls.default_code: cls for cls in _CLASSES}


def error_class_for(code: Any) -> type[QGatewayError]:
    """The exception class for a grpc.StatusCode (UnknownError for OK or an unknown code)."""
    return _BY_CODE.get(code, UnknownError)


def _status_from_trailers(trailers: Iterable[tuple[str, Any]] | None) -> Any:
    """The google.rpc.Status in the trailers, or None when absent or unreadable."""
    if not trailers:
        return None
    for key, value in trailers:
        if key != STATUS_DETAILS_KEY or not isinstance(value, bytes | bytearray):
            continue
        status = status_pb2.Status()
        try:
            status.ParseFromString(bytes(value))
        except Exception:
            # A garbled trailer must not hide the error itself: fall back to code and message.
            return None
        return status
    return None


def _seconds(duration: Any) -> float:
    return float(duration.seconds) + float(duration.nanos) / 1e9


_CODES: dict[int, Any] = {c.value[0]: c for c in grpc.StatusCode}


def from_rpc_error(err: grpc.RpcError) -> QGatewayError:
    """Turns a gRPC error (sync or grpc.aio) into the matching typed QGatewayError.

    Args:
        err: The error raised by a stub call. Anything with code(), details() and
            trailing_metadata() works; a bare RpcError becomes UnknownError.

    Returns:
        The typed error, carrying the ErrorInfo, ResourceInfo, BadRequest, RetryInfo and
        QuotaFailure details found in the trailing metadata.
    """
    code = _call_or_none(err, "code")
    if code is None:
        code = grpc.StatusCode.UNKNOWN
    message = _call_or_none(err, "details") or ""
    if not isinstance(message, str):
        message = str(message)
    status = _status_from_trailers(_call_or_none(err, "trailing_metadata"))
    if status is None:
        return error_class_for(code)(message, code=code)
    return _typed(code, message or status.message, status)


def from_status(status: Any) -> QGatewayError:
    """The typed error of a google.rpc.Status message, e.g. a failed job's Job.error.

    Args:
        status: A google.rpc.status_pb2.Status.

    Returns:
        The QGatewayError subclass of its code, with its ErrorInfo and other details.
    """
    return _typed(_CODES.get(status.code, grpc.StatusCode.UNKNOWN), status.message, status)


def _typed(code: Any, message: str, status: Any) -> QGatewayError:
    reason = ""
    domain = ""
    metadata: dict[str, str] = {}
    field_violations: list[tuple[str, str]] = []
    quota_violations: list[tuple[str, str]] = []
    retry_delay: float | None = None
    resource_info: ResourceInfo | None = None
    for detail in status.details:
        if detail.Is(error_details_pb2.ErrorInfo.DESCRIPTOR):
            info = error_details_pb2.ErrorInfo()
            detail.Unpack(info)
            reason, domain = info.reason, info.domain
            metadata.update(info.metadata)
        elif detail.Is(error_details_pb2.ResourceInfo.DESCRIPTOR):
            resource = error_details_pb2.ResourceInfo()
            detail.Unpack(resource)
            resource_info = ResourceInfo(
                resource.resource_type, resource.resource_name, resource.description
            )
        elif detail.Is(error_details_pb2.BadRequest.DESCRIPTOR):
            bad = error_details_pb2.BadRequest()
            detail.Unpack(bad)
            field_violations.extend((v.field, v.description) for v in bad.field_violations)
        elif detail.Is(error_details_pb2.RetryInfo.DESCRIPTOR):
            retry = error_details_pb2.RetryInfo()
            detail.Unpack(retry)
            retry_delay = _seconds(retry.retry_delay)
        elif detail.Is(error_details_pb2.QuotaFailure.DESCRIPTOR):
            quota = error_details_pb2.QuotaFailure()
            detail.Unpack(quota)
            quota_violations.extend((v.subject, v.description) for v in quota.violations)
    return error_class_for(code)(
        message,
        code=code,
        reason=reason,
        domain=domain,
        metadata=metadata,
        field_violations=field_violations,
        retry_delay=retry_delay,
        quota_violations=quota_violations,
        resource_info=resource_info,
    )


def _call_or_none(obj: object, method: str) -> Any:
    """obj.method() when obj has such a method, else None (a bare RpcError has none)."""
    func = getattr(obj, method, None)
    if not callable(func):
        return None
    try:
        return func()
    except Exception:
        return None
