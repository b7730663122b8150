"""Errors that carry their status code and a machine-readable reason.

Each class declares the gRPC status code it maps to (as a plain enum, so the domain stays free
of grpc); gateway.api.errors is the one place that turns them into aborts with google.rpc.Status
details.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import ClassVar


class Code(enum.IntEnum):
    """gRPC status codes (same numbers as grpc.StatusCode)."""

    OK = 0
    CANCELLED = 1
    UNKNOWN = 2
    INVALID_ARGUMENT = 3
    DEADLINE_EXCEEDED = 4
    NOT_FOUND = 5
    ALREADY_EXISTS = 6
    PERMISSION_DENIED = 7
    RESOURCE_EXHAUSTED = 8
    FAILED_PRECONDITION = 9
    ABORTED = 10
    OUT_OF_RANGE = 11
    UNIMPLEMENTED = 12
    INTERNAL = 13
    UNAVAILABLE = 14
    DATA_LOSS = 15
    UNAUTHENTICATED = 16


@dataclass(frozen=True)
class FieldViolation:
    """One bad field of a request (google.rpc.BadRequest.FieldViolation)."""

    field: str
    description: str


@dataclass(frozen=True)
class QuotaViolation:
    """One exceeded limit (google.rpc.QuotaFailure.Violation)."""

    subject: str
    description: str


class GatewayError(Exception):
    """Base of every error the gateway answers with.

    Args:
        reason: UPPER_SNAKE machine-readable reason (ErrorInfo.reason).
        message: Human-readable message; never contains secrets.
        metadata: ErrorInfo metadata.
        field_violations: BadRequest details.
        quota_violations: QuotaFailure details.
        retry_after: Seconds for RetryInfo.retry_delay, when retrying later can succeed.
    """

    code: ClassVar[Code] = Code.INTERNAL

    def __init__(
        self,
        reason: str,
        message: str,
        *,
        metadata: Mapping[str, str] | None = None,
        field_violations: Sequence[FieldViolation] = (),
        quota_violations: Sequence[QuotaViolation] = (),
        retry_after: float | None = None,
    ) -> None:
        super().__init__(message)
        self.reason = reason
        self.message = message
        self.metadata: dict[str, str] = dict(metadata or {})
        self.field_violations = tuple(field_violations)
        self.quota_violations = tuple(quota_violations)
        self.retry_after = retry_after

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.reason!r}, {self.message!r})"


class InvalidArgument(GatewayError):
    """The client sent something that can never succeed as sent."""

    code = Code.INVALID_ARGUMENT


class NotFound(GatewayError):
    """The named resource does not exist for this caller."""

    code = Code.NOT_FOUND


class FailedPrecondition(GatewayError):
    """The resource is not in a state that allows the operation."""

    code = Code.FAILED_PRECONDITION


class ResourceExhausted(GatewayError):
    """A limit or quota is exhausted."""

    code = Code.RESOURCE_EXHAUSTED


class Aborted(GatewayError):
    """The operation was interrupted (e.g. by a drain); it may be repeated."""

    code = Code.ABORTED


class Unavailable(GatewayError):
    """Refused at admission; nothing was accepted, so retrying is safe."""

    code = Code.UNAVAILABLE


class DeadlineExceeded(GatewayError):
    """The caller's deadline passed before the answer was ready."""

    code = Code.DEADLINE_EXCEEDED


class PermissionDenied(GatewayError):
    """The caller may not do this."""

    code = Code.PERMISSION_DENIED


class Unauthenticated(GatewayError):
    """The caller could not be identified."""

    code = Code.UNAUTHENTICATED


class Internal(GatewayError):
    """A bug or broken invariant in the gateway itself."""

    code = Code.INTERNAL


class ExecutionError(Exception):
    """A backend failed to run an accepted job; the job ends FAILED with this reason."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason
        self.message = message
