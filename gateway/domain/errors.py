"""Errors that carry their status code and a machine-readable reason.

Each class declares the gRPC status code it maps to (as a plain enum, so the domain stays free
of grpc); gateway.api.errors is the one place that turns them into aborts with google.rpc.Status
details.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import ClassVar, Final

from gateway.domain.failures import FailureKind


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


@dataclass(frozen=True)
class ResourceInfo:
    """The resource an error is about (google.rpc.ResourceInfo), e.g. on NOT_FOUND.

    `type` is the resource type ("qgateway.dev/Job"), `name` its full resource name
    ("jobs/abc").
    """

    type: str
    name: str
    description: str = ""


# Resource types, as annotated with google.api.resource in the protos.
JOB_RESOURCE = "qgateway.dev/Job"
BACKEND_RESOURCE = "qgateway.dev/Backend"
SESSION_RESOURCE = "qgateway.dev/Session"
JOB_RESULT_RESOURCE = "qgateway.dev/JobResult"


class GatewayError(Exception):
    """Base of every error the gateway answers with.

    Args:
        reason: UPPER_SNAKE machine-readable reason (ErrorInfo.reason).
        message: Human-readable message; never contains secrets.
        metadata: ErrorInfo metadata.
        field_violations: BadRequest details.
        quota_violations: QuotaFailure details.
        retry_after: Seconds for RetryInfo.retry_delay, only when repeating the same call
            can succeed (a full queue, an open breaker), never for a limit.
        resource_info: ResourceInfo details (NOT_FOUND names the missing resource).
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
        resource_info: ResourceInfo | None = None,
    ) -> None:
        super().__init__(message)
        self.reason = reason
        self.message = message
        self.metadata: dict[str, str] = dict(metadata or {})
        self.field_violations = tuple(field_violations)
        self.quota_violations = tuple(quota_violations)
        self.retry_after = retry_after
        self.resource_info = resource_info

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.reason!r}, {self.message!r})"


class InvalidArgument(GatewayError):
    """The client sent something that can never succeed as sent."""

    code = Code.INVALID_ARGUMENT


class NotFound(GatewayError):
    """The named resource does not exist for this caller."""

    code = Code.NOT_FOUND


class AlreadyExists(GatewayError):
    """The resource the caller asked to create exists already."""

    code = Code.ALREADY_EXISTS


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


class StoreUnavailable(Unavailable):
    """The store cannot write now (a full disk, an I/O error, a read-only file, a lock held
    elsewhere): nothing was written, and the same write may succeed later."""


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


class DataLoss(GatewayError):
    """Stored data holds what the gateway never writes: the database was edited or damaged."""

    code = Code.DATA_LOSS


class Unimplemented(GatewayError):
    """Part of the API that is declared but not built yet (sessions, until the providers
    issue)."""

    code = Code.UNIMPLEMENTED


class ExecutionError(Exception):
    """A backend failed to run an accepted job; the job ends FAILED with this reason.

    Its status code is the reason's (REASONS). `metadata` is lowerCamelCase ErrorInfo metadata:
    "pubIndex" when the failure belongs to one PUB, "providerJobId" on provider backends.
    """

    def __init__(
        self,
        reason: str,
        message: str,
        *,
        kind: FailureKind = FailureKind.BACKEND_FAULT,
        metadata: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.reason = reason
        self.message = message
        # What the job core does about it (breaker, instance reuse); the reason is for clients.
        self.kind = kind
        self.metadata: dict[str, str] = dict(metadata or {})

    @property
    def code(self) -> Code:
        return reason_code(self.reason)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.reason!r}, {self.message!r})"


# ------------------------------------------------------------------------------------ reasons
#
# Every ErrorInfo.reason the gateway answers with (RPC errors and job failures alike) and the one
# status code it goes with. The README's error table lists the same reasons with their remedies
# (tests/unit/test_error_model.py checks both against every reason raised in gateway/). A reason
# is never a status code's name: it says what happened, the code says what the caller can do.
REASONS: Final[Mapping[str, Code]] = {
    # The request can never succeed as sent.
    "MALFORMED_REQUEST": Code.INVALID_ARGUMENT,
    "REQUEST_TOO_LARGE": Code.INVALID_ARGUMENT,
    "INVALID_REQUEST_ID": Code.INVALID_ARGUMENT,
    "REQUEST_ID_REUSED": Code.INVALID_ARGUMENT,
    "INVALID_BACKEND_NAME": Code.INVALID_ARGUMENT,
    "INVALID_JOB_NAME": Code.INVALID_ARGUMENT,
    "INVALID_SESSION_NAME": Code.INVALID_ARGUMENT,
    "INVALID_SESSION": Code.INVALID_ARGUMENT,
    "INVALID_RESULT_NAME": Code.INVALID_ARGUMENT,
    "INVALID_TARGET_NAME": Code.INVALID_ARGUMENT,
    "INVALID_BACKEND_VIEW": Code.INVALID_ARGUMENT,
    "INVALID_FILTER": Code.INVALID_ARGUMENT,
    "INVALID_LABELS": Code.INVALID_ARGUMENT,
    "INVALID_CHUNK_SIZE": Code.INVALID_ARGUMENT,
    "INVALID_RESUME_POSITION": Code.INVALID_ARGUMENT,
    "INVALID_PAGE_SIZE": Code.INVALID_ARGUMENT,
    "INVALID_PAGE_TOKEN": Code.INVALID_ARGUMENT,
    "NO_PUBS": Code.INVALID_ARGUMENT,
    "TOO_MANY_PUBS": Code.INVALID_ARGUMENT,
    "TOO_MANY_TERMS": Code.INVALID_ARGUMENT,
    "TOO_MANY_PARAMETERS": Code.INVALID_ARGUMENT,
    "MISSING_PUB": Code.INVALID_ARGUMENT,
    "MISSING_CIRCUIT": Code.INVALID_ARGUMENT,
    "INVALID_QASM": Code.INVALID_ARGUMENT,
    "INCLUDE_NOT_ALLOWED": Code.INVALID_ARGUMENT,
    "UNKNOWN_GATE": Code.INVALID_ARGUMENT,
    "NON_FINITE_ANGLE": Code.INVALID_ARGUMENT,
    "UNSUPPORTED_FEATURE": Code.INVALID_ARGUMENT,
    "TRANSPILE_FAILED": Code.INVALID_ARGUMENT,
    "NO_MEASUREMENTS": Code.INVALID_ARGUMENT,
    "TOO_MANY_QUBITS": Code.INVALID_ARGUMENT,
    "CIRCUIT_TOO_LARGE": Code.INVALID_ARGUMENT,
    "CIRCUIT_TOO_COMPLEX": Code.INVALID_ARGUMENT,
    "INVALID_SHAPE": Code.INVALID_ARGUMENT,
    "UNBOUND_PARAMETERS": Code.INVALID_ARGUMENT,
    "UNKNOWN_PARAMETERS": Code.INVALID_ARGUMENT,
    "INVALID_PARAMETER_VALUES": Code.INVALID_ARGUMENT,
    "INVALID_OBSERVABLE": Code.INVALID_ARGUMENT,
    "INVALID_SHOTS": Code.INVALID_ARGUMENT,
    "INVALID_SEED": Code.INVALID_ARGUMENT,
    "INVALID_PRECISION": Code.INVALID_ARGUMENT,
    "INVALID_SAMPLER_OUTPUT": Code.INVALID_ARGUMENT,
    "INVALID_PROVIDER_OPTIONS": Code.INVALID_ARGUMENT,
    "INVALID_MAX_EXECUTION_TIME": Code.INVALID_ARGUMENT,
    "INVALID_QPY": Code.INVALID_ARGUMENT,
    "TOO_MANY_BINDINGS": Code.INVALID_ARGUMENT,
    "TOO_MANY_SHOTS": Code.INVALID_ARGUMENT,
    "ESTIMATOR_TOO_LARGE": Code.INVALID_ARGUMENT,
    "EXECUTION_TOO_EXPENSIVE": Code.INVALID_ARGUMENT,
    "MEMORY_BUDGET_EXCEEDED": Code.INVALID_ARGUMENT,
    "RESULT_LIMIT_EXCEEDED": Code.INVALID_ARGUMENT,
    # Who is calling.
    "API_KEY_MISSING": Code.UNAUTHENTICATED,
    "AUTHORIZATION_INVALID": Code.UNAUTHENTICATED,
    "API_KEY_INVALID": Code.UNAUTHENTICATED,
    "API_KEY_EXPIRED": Code.UNAUTHENTICATED,
    "API_KEY_REVOKED": Code.UNAUTHENTICATED,
    "JWT_INVALID": Code.UNAUTHENTICATED,
    "JWT_EXPIRED": Code.UNAUTHENTICATED,
    "CERTIFICATE_NOT_MAPPED": Code.UNAUTHENTICATED,
    "FORWARDED_IDENTITY_UNTRUSTED": Code.UNAUTHENTICATED,
    "FORWARDED_IDENTITY_INVALID": Code.UNAUTHENTICATED,
    # What the caller may do.
    "ADMIN_VIEW_DENIED": Code.PERMISSION_DENIED,
    "ADMIN_ROLE_REQUIRED": Code.PERMISSION_DENIED,
    "TENANT_ADMIN_ROLE_REQUIRED": Code.PERMISSION_DENIED,
    "ROLE_NOT_GRANTABLE": Code.PERMISSION_DENIED,
    "EXPIRY_NOT_GRANTABLE": Code.PERMISSION_DENIED,
    # Resources.
    "JOB_NOT_FOUND": Code.NOT_FOUND,
    "BACKEND_NOT_FOUND": Code.NOT_FOUND,
    "RESULT_NOT_FOUND": Code.NOT_FOUND,
    "RESULT_EXPIRED": Code.NOT_FOUND,
    "JOB_ALREADY_FINISHED": Code.FAILED_PRECONDITION,
    "RESULT_NOT_READY": Code.FAILED_PRECONDITION,
    "RESULT_TOO_LARGE": Code.FAILED_PRECONDITION,
    # Sessions (gateway.domain.sessions).
    "SESSION_NOT_FOUND": Code.NOT_FOUND,
    # Administration (AdminService).
    "TENANT_NOT_FOUND": Code.NOT_FOUND,
    "API_KEY_NOT_FOUND": Code.NOT_FOUND,
    "INVALID_API_KEY": Code.INVALID_ARGUMENT,
    "INVALID_API_KEY_NAME": Code.INVALID_ARGUMENT,
    "SESSION_CLOSED": Code.FAILED_PRECONDITION,
    "SESSIONS_UNAVAILABLE": Code.FAILED_PRECONDITION,
    "SESSION_BACKEND_MISMATCH": Code.FAILED_PRECONDITION,
    "SESSION_LIMIT_REACHED": Code.RESOURCE_EXHAUSTED,
    # Tenants, policies and quotas (gateway.security.policies, gateway.domain.quota).
    "QUBIT_LIMIT_EXCEEDED": Code.PERMISSION_DENIED,
    "SHOT_LIMIT_EXCEEDED": Code.PERMISSION_DENIED,
    "RATE_LIMITED": Code.RESOURCE_EXHAUSTED,
    "SHOT_QUOTA_EXCEEDED": Code.RESOURCE_EXHAUSTED,
    "COST_QUOTA_EXCEEDED": Code.RESOURCE_EXHAUSTED,
    "TENANT_QUEUE_FULL": Code.RESOURCE_EXHAUSTED,
    "TOO_MANY_STREAMS": Code.RESOURCE_EXHAUSTED,
    "TOO_MANY_SLOW_REQUESTS": Code.RESOURCE_EXHAUSTED,
    "TOO_MANY_WATCHES": Code.RESOURCE_EXHAUSTED,
    "STREAM_MEMORY_EXHAUSTED": Code.RESOURCE_EXHAUSTED,
    "KEY_LOOKUPS_EXHAUSTED": Code.RESOURCE_EXHAUSTED,
    "API_KEY_LIMIT_REACHED": Code.RESOURCE_EXHAUSTED,
    "INVALID_TENANT_NAME": Code.INVALID_ARGUMENT,
    "INVALID_TENANT_ID": Code.INVALID_ARGUMENT,
    "INVALID_TENANT": Code.INVALID_ARGUMENT,
    "INVALID_POLICY": Code.INVALID_ARGUMENT,
    "INVALID_UPDATE_MASK": Code.INVALID_ARGUMENT,
    "TENANT_ALREADY_EXISTS": Code.ALREADY_EXISTS,
    "TENANT_MANAGED_BY_CONFIG": Code.FAILED_PRECONDITION,
    "ETAG_MISMATCH": Code.ABORTED,
    # Admission: nothing was accepted; repeating the call later can succeed.
    "QUEUE_FULL": Code.RESOURCE_EXHAUSTED,
    "COMPILERS_BUSY": Code.RESOURCE_EXHAUSTED,
    "BACKEND_UNAVAILABLE": Code.UNAVAILABLE,
    "DRAINING": Code.UNAVAILABLE,
    "STORE_UNAVAILABLE": Code.UNAVAILABLE,
    "STORE_CORRUPT": Code.DATA_LOSS,
    # Waiting calls.
    "RUN_DEADLINE_EXCEEDED": Code.DEADLINE_EXCEEDED,
    "REQUEST_READ_TIMEOUT": Code.DEADLINE_EXCEEDED,
    "GATEWAY_DRAINING": Code.ABORTED,
    # Declared in v1, not built yet.
    # Job failures (Job.error) that are not client errors found late.
    "OUT_OF_MEMORY": Code.RESOURCE_EXHAUSTED,
    "JOB_TIMEOUT": Code.DEADLINE_EXCEEDED,
    "QUEUE_TIMEOUT": Code.DEADLINE_EXCEEDED,
    "WORKER_CRASHED": Code.INTERNAL,
    "EXECUTION_FAILED": Code.INTERNAL,
    "PROVIDER_ERROR": Code.UNAVAILABLE,
    "PROVIDER_REJECTED": Code.FAILED_PRECONDITION,
    # Stored data the gateway never wrote (an edited database).
    "AUDIT_RECORD_CORRUPT": Code.DATA_LOSS,
    # Bugs in the gateway.
    "INTERNAL_ERROR": Code.INTERNAL,
    "COMPILER_CRASHED": Code.INTERNAL,
    "COMPILER_FAILED": Code.INTERNAL,
}


def reason_code(reason: str) -> Code:
    """The status code of a reason; INTERNAL for a reason no one registered (a gateway bug)."""
    return REASONS.get(reason, Code.INTERNAL)
