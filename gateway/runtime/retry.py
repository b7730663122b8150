"""Retries of transient provider errors, before the breaker counts a failure.

Recognising a transient error must not import any vendor SDK (`import gateway` never pays for
boto3 or qiskit-ibm-runtime), so errors are judged by their shape: builtin network exceptions,
vendor network exception classes named in their MRO, and HTTP status or AWS error codes carried
as attributes. Messages are never parsed.
"""

from __future__ import annotations

import asyncio
import math
import random
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import TypeVar

from gateway.telemetry import active as telemetry

__all__ = [
    "THROTTLING_AWS_ERROR_CODES",
    "TRANSIENT_AWS_ERROR_CODES",
    "RetryPolicy",
    "call_with_retries",
    "call_with_retries_async",
    "http_status_of",
    "is_throttled",
    "is_transient",
]

T = TypeVar("T")

# AWS refusing a call for the account's request rate (the call did nothing).
THROTTLING_AWS_ERROR_CODES = frozenset(
    {"Throttling", "ThrottlingException", "TooManyRequestsException", "RequestLimitExceeded"}
)
TRANSIENT_AWS_ERROR_CODES = THROTTLING_AWS_ERROR_CODES | {
    "ServiceUnavailable",
    "InternalServerError",
    "InternalFailure",
    # A request the service gave up waiting for, sent as HTTP 400 (S3's RequestTimeout),
    # which botocore's own standard retry mode retries too.
    "RequestTimeout",
    "RequestTimeoutException",
    "PriorRequestNotComplete",
    "IDPCommunicationError",
}
# HTTP statuses that say the call did not happen or may be repeated: 408 Request Timeout
# (RFC 9110, from an edge proxy as from the service), 429 and 5xx.
_TRANSIENT_STATUSES = frozenset({408, 429})

# Network failures of HTTP clients that do not subclass the builtin ConnectionError or
# TimeoutError (requests' and botocore's derive from OSError or their own bases), named by
# (top-level package, class name) so the vendor module need not be imported.
_VENDOR_NETWORK_ERRORS = frozenset(
    {
        ("requests", "ConnectionError"),  # ConnectTimeout, ProxyError (SSLError is excluded)
        ("requests", "Timeout"),  # ReadTimeout
        ("urllib3", "TimeoutError"),
        ("urllib3", "ProtocolError"),  # connection aborted or reset mid-response
        ("urllib3", "NewConnectionError"),
        ("botocore", "ConnectionError"),  # EndpointConnectionError, ConnectTimeoutError
        ("botocore", "HTTPClientError"),  # ReadTimeoutError, ConnectionClosedError
    }
)

# How far along `__cause__` to look, e.g. qiskit-ibm-runtime's RequestsApiError(status -1)
# raised from a requests.ConnectionError.
_MAX_CAUSES = 8


@dataclass(frozen=True)
class RetryPolicy:
    """Jittered exponential backoff.

    Attributes:
        max_attempts: Calls in all, the first included (1 = never retry).
        initial_backoff_s: Delay before the first retry, before jitter.
        max_backoff_s: Upper bound of every delay, jitter included.
        multiplier: Growth of the delay per retry.
        jitter: Each delay is scaled by a uniform factor in [1 - jitter, 1 + jitter], so clients
            that failed together do not retry together.
    """

    max_attempts: int = 4
    initial_backoff_s: float = 0.2
    max_backoff_s: float = 5.0
    multiplier: float = 2.0
    jitter: float = 0.2

    def __post_init__(self) -> None:
        if self.max_attempts < 1:
            raise ValueError("max_attempts must be at least 1")
        if not 0 <= self.initial_backoff_s <= self.max_backoff_s < math.inf:
            raise ValueError("need 0 <= initial_backoff_s <= max_backoff_s < inf")
        if not 1 <= self.multiplier < math.inf:
            raise ValueError("multiplier must be at least 1")
        if not 0 <= self.jitter <= 1:
            raise ValueError("jitter must be within 0..1")

    def backoff(self, attempt: int, rng: random.Random) -> float:
        """Seconds to wait after failed attempt number `attempt` (1 = the first call)."""
        if attempt < 1:
            raise ValueError("attempt numbers start at 1")
        try:
            grown = self.initial_backoff_s * self.multiplier ** (attempt - 1)
            base = min(self.max_backoff_s, grown)
        except OverflowError:  # a huge attempt number: long past the cap
            base = self.max_backoff_s
        jittered = base * (1 + self.jitter * rng.uniform(-1.0, 1.0))
        return min(self.max_backoff_s, max(0.0, jittered))


def http_status_of(exc: BaseException) -> int | None:
    """The HTTP status an exception carries, if any, looked up without importing its SDK.

    Looks at `status_code` (qiskit-ibm-runtime's RequestsApiError, httpx-style errors),
    `status` (aiohttp, urllib), `response.status_code` (requests' HTTPError) and botocore's
    `response["ResponseMetadata"]["HTTPStatusCode"]`.
    """
    for name in ("status_code", "status"):
        status = _as_status(getattr(exc, name, None))
        if status is not None:
            return status
    # Not `if response:` - a requests Response with an error status is falsy.
    response = getattr(exc, "response", None)
    if response is None:
        return None
    if isinstance(response, Mapping):
        metadata = response.get("ResponseMetadata")
        if isinstance(metadata, Mapping):
            return _as_status(metadata.get("HTTPStatusCode"))
        return None
    return _as_status(getattr(response, "status_code", None))


def is_transient(exc: BaseException) -> bool:
    """Whether retrying the same call later may succeed.

    Transient: builtin ConnectionError (ConnectionResetError, BrokenPipeError, ...) and
    TimeoutError (socket.timeout is an alias), requests'/urllib3's/botocore's network errors,
    HTTP 429 and 5xx, and AWS throttling or service error codes. Any other HTTP status is a
    definite answer and not transient, and so is a TLS error. An exception with none of these
    is judged by its explicit cause (`raise ... from exc`), so a wrapper around a network error
    counts.
    """
    current: BaseException | None = exc
    for _ in range(_MAX_CAUSES):
        if current is None:
            return False
        verdict = _classify(current)
        if verdict is not None:
            return verdict
        current = current.__cause__
    return False


def call_with_retries(
    fn: Callable[[], T],
    *,
    policy: RetryPolicy,
    is_transient: Callable[[BaseException], bool] = is_transient,
    sleep: Callable[[float], None] = time.sleep,
    rng: random.Random | None = None,
    on_retry: Callable[[int, BaseException, float], None] | None = None,
) -> T:
    """Calls `fn`, retrying transient errors with backoff.

    Use this ONLY around calls made BEFORE a provider accepted a job: status polls, result
    fetches, and submission attempts that did not reach the provider. Never resubmit a job the
    provider may have accepted (a timeout or 5xx on a submission may come after acceptance):
    re-attach to it instead, by the idempotency token or tag it was submitted with. A
    duplicate submission runs, and is paid for, twice.

    Blocking: run it in a thread or worker process, not on the event loop.

    Args:
        fn: The call to make.
        policy: Attempts and backoff.
        is_transient: Decides whether an error is worth retrying.
        sleep: Waits between attempts (injected by tests).
        rng: Source of jitter; a fresh unseeded one when None.
        on_retry: Called before each wait with the failed attempt's number (1 = the first
            call), its error and the delay, e.g. to log or count retries.

    Returns:
        What `fn` returned.

    Raises:
        A non-transient error at once; the last transient error after `policy.max_attempts`
        calls. KeyboardInterrupt, SystemExit and other non-Exception errors are never retried.
    """
    jitter_rng = rng if rng is not None else random.Random()
    attempt = 1
    while True:
        try:
            return fn()
        except Exception as exc:
            delay = _retry_delay(policy, attempt, exc, is_transient, jitter_rng, on_retry)
            if delay is None:
                raise
            sleep(delay)
            attempt += 1


async def call_with_retries_async(
    fn: Callable[[], Awaitable[T]],
    *,
    policy: RetryPolicy,
    is_transient: Callable[[BaseException], bool] = is_transient,
    sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    rng: random.Random | None = None,
    on_retry: Callable[[int, BaseException, float], None] | None = None,
) -> T:
    """`call_with_retries` for coroutines: the waits between attempts are awaited, so the
    event loop serves everything else meanwhile. The same rules apply: only calls made before
    a provider accepted a job.

    Args:
        fn: Makes the call (a new awaitable per attempt).
        sleep: Waits between attempts (injected by tests).
        policy, is_transient, rng, on_retry: As for `call_with_retries`.

    Raises:
        As `call_with_retries`; cancelling the caller stops at once, also between attempts.
    """
    jitter_rng = rng if rng is not None else random.Random()
    attempt = 1
    while True:
        try:
            return await fn()
        except Exception as exc:
            delay = _retry_delay(policy, attempt, exc, is_transient, jitter_rng, on_retry)
            if delay is None:
                raise
            await sleep(delay)
            attempt += 1


def _retry_delay(
    policy: RetryPolicy,
    attempt: int,
    exc: Exception,
    is_transient: Callable[[BaseException], bool],
    rng: random.Random,
    on_retry: Callable[[int, BaseException, float], None] | None,
) -> float | None:
    """The wait before attempt `attempt` + 1 after `exc`, or None when it may not be retried
    (attempts spent, or not transient): the one rule for both call_with_retries."""
    if attempt >= policy.max_attempts or not is_transient(exc):
        return None
    delay = policy.backoff(attempt, rng)
    if on_retry is not None:
        on_retry(attempt, exc, delay)
    if telemetry.enabled:  # qgateway.provider.retries and a span event (gateway.telemetry)
        telemetry.provider_retry(attempt, exc, delay)
    return delay


def is_throttled(exc: BaseException) -> bool:
    """Whether the call was refused for the caller's request rate: HTTP 429 or an AWS
    throttling code (which arrives as HTTP 400)."""
    return _aws_error_code(exc) in THROTTLING_AWS_ERROR_CODES or http_status_of(exc) == 429


def _classify(exc: BaseException) -> bool | None:
    """True or False when `exc` itself says whether it is transient, None when it does not."""
    names = {(cls.__module__.partition(".")[0], cls.__name__) for cls in type(exc).__mro__}
    # requests and botocore file TLS failures (a bad certificate) under ConnectionError, but
    # retrying does not fix a certificate.
    if any(name == "SSLError" for _, name in names):
        return False
    if isinstance(exc, ConnectionError | TimeoutError) or names & _VENDOR_NETWORK_ERRORS:
        return True
    # AWS throttling arrives as HTTP 400, so the error code is checked before the status.
    if _aws_error_code(exc) in TRANSIENT_AWS_ERROR_CODES:
        return True
    status = http_status_of(exc)
    if status is None:
        return None
    return status in _TRANSIENT_STATUSES or 500 <= status <= 599


def _aws_error_code(exc: BaseException) -> str | None:
    response = getattr(exc, "response", None)
    if not isinstance(response, Mapping):
        return None
    error = response.get("Error")
    if not isinstance(error, Mapping):
        return None
    code = error.get("Code")
    return code if isinstance(code, str) else None


def _as_status(value: object) -> int | None:
    # Only a real HTTP status: qiskit-ibm-runtime uses -1 for "no response", and job objects
    # have `status` attributes that are enums or strings.
    if isinstance(value, int) and not isinstance(value, bool) and 100 <= value <= 599:
        return int(value)
    return None
