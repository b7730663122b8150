"""Retries of transient provider errors: classification, backoff, the retry loop.

The vendor errors are stand-ins shaped like the real ones (same class names, modules and
attributes), because the classifier must work without importing any vendor SDK.
"""

from __future__ import annotations

import random
import socket
from collections.abc import Callable
from http import HTTPStatus
from typing import Any

import pytest

from gateway.runtime.retry import (
    RetryPolicy,
    call_with_retries,
    call_with_retries_async,
    http_status_of,
    is_throttled,
    is_transient,
)

# ------------------------------------------------------------------- vendor-shaped errors


class ClientError(Exception):
    """Shaped like botocore.exceptions.ClientError: the parsed error response as `response`."""

    def __init__(self, code: str, http_status: int) -> None:
        super().__init__(f"An error occurred ({code})")
        self.response: dict[str, Any] = {
            "Error": {"Code": code, "Message": "..."},
            "ResponseMetadata": {"RequestId": "r-1", "HTTPStatusCode": http_status},
        }


class RequestsApiError(Exception):
    """Shaped like qiskit-ibm-runtime's: `status_code`, -1 when there was no response."""

    def __init__(self, message: str, status_code: int = -1) -> None:
        super().__init__(message)
        self.status_code = status_code


class Response:
    """Shaped like requests.Response, including its falsiness for error statuses."""

    def __init__(self, status_code: int) -> None:
        self.status_code = status_code

    def __bool__(self) -> bool:
        return self.status_code < 400


class HTTPError(OSError):
    """Shaped like requests.HTTPError: the status only on `response`."""

    def __init__(self, status_code: int) -> None:
        super().__init__(f"{status_code} error")
        self.response = Response(status_code)


class ClientResponseError(Exception):
    """Shaped like aiohttp's: the status as `status`."""

    def __init__(self, status: int) -> None:
        super().__init__(f"{status}")
        self.status = status


def vendor_class(module: str, name: str, base: type[Exception] = OSError) -> type[Exception]:
    """A class that looks, by module and name, like a vendor's (e.g. requests' ConnectionError,
    which derives from OSError, not from the builtin ConnectionError)."""
    return type(name, (base,), {"__module__": module})


RequestsConnectionError = vendor_class("requests.exceptions", "ConnectionError")
RequestsReadTimeout = vendor_class(
    "requests.exceptions", "ReadTimeout", vendor_class("requests.exceptions", "Timeout")
)
RequestsSSLError = vendor_class("requests.exceptions", "SSLError", RequestsConnectionError)
BotocoreEndpointConnectionError = vendor_class(
    "botocore.exceptions",
    "EndpointConnectionError",
    vendor_class("botocore.exceptions", "ConnectionError", Exception),
)
BotocoreReadTimeoutError = vendor_class(
    "botocore.exceptions",
    "ReadTimeoutError",
    vendor_class("botocore.exceptions", "HTTPClientError", Exception),
)
Urllib3ProtocolError = vendor_class("urllib3.exceptions", "ProtocolError", Exception)
UnrelatedConnectionError = vendor_class("myapp.errors", "ConnectionError", Exception)


class JobStatus:
    """An object with a non-HTTP `status`, as provider job handles have."""

    def __init__(self, status: object) -> None:
        self.status = status


class JobStatusError(Exception):
    def __init__(self, status: object) -> None:
        super().__init__("job failed")
        self.status = status


def caused_by(error: BaseException, cause: BaseException) -> BaseException:
    error.__cause__ = cause
    return error


def suppressed(error: BaseException, context: BaseException) -> BaseException:
    """As `raise error from None` inside `except context`."""
    error.__context__ = context
    error.__suppress_context__ = True
    return error


# ----------------------------------------------------------------------- classification


TRANSIENT: list[tuple[str, BaseException]] = [
    ("ConnectionError", ConnectionError("refused")),
    ("ConnectionResetError", ConnectionResetError(104, "reset by peer")),
    ("BrokenPipeError", BrokenPipeError()),
    ("TimeoutError", TimeoutError()),
    ("socket.timeout", socket.timeout("timed out")),  # noqa: UP041 - the alias is the case
    ("requests ConnectionError", RequestsConnectionError("Max retries exceeded")),
    ("requests ReadTimeout", RequestsReadTimeout("read timed out")),
    ("botocore EndpointConnectionError", BotocoreEndpointConnectionError("no endpoint")),
    ("botocore ReadTimeoutError", BotocoreReadTimeoutError("read timeout")),
    ("urllib3 ProtocolError", Urllib3ProtocolError("connection aborted")),
    ("HTTP 429 status_code", RequestsApiError("429 Client Error", 429)),
    ("HTTP 500 status_code", RequestsApiError("500 Server Error", 500)),
    ("HTTP 503 status_code", RequestsApiError("maintenance", 503)),
    ("HTTP 504 status", ClientResponseError(504)),
    ("HTTP 599, the last 5xx", ClientResponseError(599)),
    ("HTTPStatus enum", ClientResponseError(HTTPStatus.BAD_GATEWAY)),
    ("requests HTTPError 502", HTTPError(502)),
    ("requests HTTPError 429", HTTPError(429)),
    ("botocore ThrottlingException (HTTP 400)", ClientError("ThrottlingException", 400)),
    ("botocore Throttling", ClientError("Throttling", 400)),
    ("botocore TooManyRequestsException", ClientError("TooManyRequestsException", 429)),
    ("botocore RequestLimitExceeded", ClientError("RequestLimitExceeded", 503)),
    ("botocore ServiceUnavailable", ClientError("ServiceUnavailable", 503)),
    ("botocore InternalServerError", ClientError("InternalServerError", 500)),
    ("botocore InternalFailure", ClientError("InternalFailure", 500)),
    ("botocore unknown code with HTTP 503", ClientError("SomethingNew", 503)),
    (
        "IBM RequestsApiError(-1) from a requests ConnectionError",
        caused_by(RequestsApiError("connection failed"), RequestsConnectionError("refused")),
    ),
    (
        "a wrapper raised from a reset connection",
        caused_by(RuntimeError("submit failed"), ConnectionResetError()),
    ),
    (
        # A status below 100 is no HTTP answer (a job state, an SDK's own code): not a verdict.
        "a wrapper with a sub-100 status raised from a reset connection",
        caused_by(JobStatusError(3), ConnectionResetError()),
    ),
]

NOT_TRANSIENT: list[tuple[str, BaseException]] = [
    ("ValueError", ValueError("bad circuit")),
    ("RuntimeError", RuntimeError("boom")),
    ("KeyError", KeyError("x")),
    ("FileNotFoundError (an OSError, not a network error)", FileNotFoundError("x")),
    ("HTTP 400 status_code", RequestsApiError("400 Client Error", 400)),
    ("HTTP 401", RequestsApiError("401 Unauthorized", 401)),
    ("HTTP 403", HTTPError(403)),
    ("HTTP 404", HTTPError(404)),
    ("HTTP 409", ClientResponseError(409)),
    ("IBM RequestsApiError(-1) with no cause", RequestsApiError("unknown")),
    ("botocore ValidationException", ClientError("ValidationException", 400)),
    ("botocore AccessDeniedException", ClientError("AccessDeniedException", 403)),
    ("botocore ResourceNotFoundException", ClientError("ResourceNotFoundException", 404)),
    ("requests SSLError (a ConnectionError subclass)", RequestsSSLError("certificate verify")),
    ("same name, unknown package", UnrelatedConnectionError("x")),
    ("status that is a string", JobStatusError("FAILED")),
    ("status that is a small int", JobStatusError(3)),
    ("status that is a bool", JobStatusError(True)),
    ("a message that mentions 503", RuntimeError("Failed to run program: 503 Server Error")),
    (
        "4xx wrapper around a network error: the wrapper's own status decides",
        caused_by(RequestsApiError("403 Forbidden", 403), ConnectionResetError()),
    ),
    (
        "`raise ... from None` hides the context",
        suppressed(RuntimeError("Failed to retrieve job"), RequestsApiError("503", 503)),
    ),
    ("KeyboardInterrupt", KeyboardInterrupt()),
]


@pytest.mark.parametrize(("case", "error"), TRANSIENT, ids=[c for c, _ in TRANSIENT])
def test_transient(case: str, error: BaseException) -> None:
    assert is_transient(error), case


@pytest.mark.parametrize(("case", "error"), NOT_TRANSIENT, ids=[c for c, _ in NOT_TRANSIENT])
def test_not_transient(case: str, error: BaseException) -> None:
    assert not is_transient(error), case


def test_the_real_vendor_classes_match_the_name_table() -> None:
    # The classifier names vendor classes without importing them; this guards those names
    # against a vendor renaming or moving them.
    botocore = pytest.importorskip("botocore.exceptions")
    requests = pytest.importorskip("requests.exceptions")
    transient = [
        botocore.EndpointConnectionError(endpoint_url="https://braket"),
        botocore.ConnectTimeoutError(endpoint_url="https://braket"),
        botocore.ReadTimeoutError(endpoint_url="https://braket"),
        botocore.ConnectionClosedError(endpoint_url="https://braket"),
        botocore.ClientError(ClientError("ThrottlingException", 400).response, "CreateQuantumTask"),
        requests.ConnectionError(),
        requests.ConnectTimeout(),
        requests.ReadTimeout(),
    ]
    permanent = [
        botocore.ClientError(ClientError("ValidationException", 400).response, "GetQuantumTask"),
        botocore.NoCredentialsError(),
        botocore.SSLError(endpoint_url="https://braket", error="certificate verify failed"),
        requests.SSLError(),
        requests.InvalidURL(),
    ]
    assert [type(e).__name__ for e in transient if not is_transient(e)] == []
    assert [type(e).__name__ for e in permanent if is_transient(e)] == []


def test_http_status_of() -> None:
    assert http_status_of(RequestsApiError("x", 503)) == 503
    assert http_status_of(RequestsApiError("x")) is None  # -1: no response
    assert http_status_of(HTTPError(404)) == 404  # found although the Response is falsy
    assert http_status_of(ClientResponseError(429)) == 429
    assert http_status_of(ClientError("Throttling", 400)) == 400
    assert http_status_of(ValueError()) is None
    assert http_status_of(JobStatusError(JobStatus("DONE"))) is None


def test_throttled_is_429_or_an_aws_throttling_code() -> None:
    # Only a refusal for the request rate counts: the call did nothing, so a create may be
    # repeated; a 5xx may come after the provider acted.
    assert is_throttled(HTTPError(429))
    assert is_throttled(RequestsApiError("429 Client Error", 429))
    assert is_throttled(ClientError("ThrottlingException", 400))
    assert not is_throttled(RequestsApiError("503 Server Error", 503))
    assert not is_throttled(ClientError("ServiceUnavailable", 503))
    assert not is_throttled(ConnectionResetError())


def test_a_cause_cycle_ends() -> None:
    first, second = RuntimeError("a"), RuntimeError("b")
    first.__cause__, second.__cause__ = second, first
    assert not is_transient(first)


# ------------------------------------------------------------------------------ backoff


def test_backoff_grows_then_stays_at_the_cap() -> None:
    policy = RetryPolicy(initial_backoff_s=0.2, max_backoff_s=5.0, multiplier=2.0, jitter=0.0)
    rng = random.Random(0)
    assert [policy.backoff(n, rng) for n in range(1, 9)] == pytest.approx(
        [0.2, 0.4, 0.8, 1.6, 3.2, 5.0, 5.0, 5.0]
    )
    assert policy.backoff(10_000, rng) == 5.0  # no overflow


def test_backoff_jitter_stays_within_bounds_and_is_seeded() -> None:
    policy = RetryPolicy(initial_backoff_s=1.0, max_backoff_s=5.0, multiplier=2.0, jitter=0.2)
    rng = random.Random(42)
    delays = {n: [policy.backoff(n, rng) for _ in range(200)] for n in (1, 2, 3, 4)}
    for n, base in ((1, 1.0), (2, 2.0), (3, 4.0)):
        assert all(0.8 * base <= d <= 1.2 * base for d in delays[n]), n
        assert len(set(delays[n])) > 100  # jitter really varies
    # Attempt 4 (8 s before the cap): jitter around the 5 s cap, never past it.
    assert all(4.0 <= d <= 5.0 for d in delays[4])
    assert max(delays[4]) == 5.0
    again = random.Random(42)
    assert [policy.backoff(1, again) for _ in range(200)] == delays[1]


def test_jitter_goes_both_ways() -> None:
    # Jitter only upwards would make every delay longer than configured and halve the spread.
    policy = RetryPolicy(initial_backoff_s=1.0, max_backoff_s=5.0, jitter=0.2)
    rng = random.Random(5)
    delays = [policy.backoff(1, rng) for _ in range(200)]
    assert min(delays) < 0.9 and max(delays) > 1.1


def test_jitter_still_spreads_delays_at_the_cap() -> None:
    # The cap bounds the base before jitter: clients that all reached the cap must not retry in
    # lockstep at exactly max_backoff_s.
    policy = RetryPolicy(initial_backoff_s=1.0, max_backoff_s=5.0, multiplier=2.0, jitter=0.2)
    rng = random.Random(11)
    delays = [policy.backoff(n, rng) for n in (4, 10, 10_000) for _ in range(100)]
    assert all(4.0 <= d <= 5.0 for d in delays)
    assert len(set(delays)) > 100


def test_default_policy_jitters_around_the_exponential() -> None:
    policy = RetryPolicy()  # 0.2 s, x2, 20 % jitter, cap 5 s
    rng = random.Random(7)
    delays = [policy.backoff(n, rng) for n in (1, 2, 3)]
    assert delays == pytest.approx([0.2, 0.4, 0.8], rel=0.2)
    assert delays != pytest.approx([0.2, 0.4, 0.8])  # jittered


@pytest.mark.parametrize(
    "kwargs",
    [
        {"max_attempts": 0},
        {"initial_backoff_s": -1.0},
        {"initial_backoff_s": 10.0, "max_backoff_s": 5.0},
        {"max_backoff_s": float("inf")},
        {"multiplier": 0.5},
        {"jitter": 1.5},
        {"jitter": -0.1},
    ],
)
def test_bad_policies_are_refused(kwargs: dict[str, Any]) -> None:
    with pytest.raises(ValueError):
        RetryPolicy(**kwargs)


def test_attempt_numbers_start_at_one() -> None:
    with pytest.raises(ValueError):
        RetryPolicy().backoff(0, random.Random(0))


# ------------------------------------------------------------------------------ retries


class Flaky:
    """Raises the given errors in turn, then returns "done"."""

    def __init__(self, *errors: BaseException) -> None:
        self.errors = list(errors)
        self.calls = 0

    def __call__(self) -> str:
        self.calls += 1
        if self.errors:
            raise self.errors.pop(0)
        return "done"


def recorder() -> tuple[list[float], Callable[[float], None]]:
    sleeps: list[float] = []
    return sleeps, sleeps.append


POLICY = RetryPolicy(max_attempts=4, initial_backoff_s=0.5, max_backoff_s=5.0, jitter=0.0)


def test_succeeds_after_two_transient_failures() -> None:
    fn = Flaky(ConnectionResetError(), ClientError("ThrottlingException", 400))
    sleeps, sleep = recorder()
    retries: list[tuple[int, str, float]] = []
    result = call_with_retries(
        fn,
        policy=POLICY,
        sleep=sleep,
        rng=random.Random(1),
        on_retry=lambda n, exc, delay: retries.append((n, type(exc).__name__, delay)),
    )
    assert result == "done"
    assert fn.calls == 3
    assert sleeps == [0.5, 1.0]
    assert retries == [(1, "ConnectionResetError", 0.5), (2, "ClientError", 1.0)]


def test_a_non_transient_error_propagates_at_once() -> None:
    error = ClientError("ValidationException", 400)
    fn = Flaky(error)
    sleeps, sleep = recorder()
    with pytest.raises(ClientError) as info:
        call_with_retries(fn, policy=POLICY, sleep=sleep)
    assert info.value is error
    assert fn.calls == 1
    assert sleeps == []


def test_gives_up_after_max_attempts_with_the_last_error() -> None:
    errors = [RequestsApiError(f"503 #{i}", 503) for i in range(10)]
    fn = Flaky(*errors)
    sleeps, sleep = recorder()
    with pytest.raises(RequestsApiError) as info:
        call_with_retries(fn, policy=POLICY, sleep=sleep, rng=random.Random(1))
    assert fn.calls == 4
    assert info.value is errors[3]
    assert sleeps == [0.5, 1.0, 2.0]  # no wait after the last attempt


def test_one_attempt_never_retries() -> None:
    fn = Flaky(ConnectionError())
    sleeps, sleep = recorder()
    with pytest.raises(ConnectionError):
        call_with_retries(fn, policy=RetryPolicy(max_attempts=1), sleep=sleep)
    assert (fn.calls, sleeps) == (1, [])


def test_a_custom_classifier_decides() -> None:
    fn = Flaky(ValueError("try again"))
    sleeps, sleep = recorder()
    result = call_with_retries(
        fn, policy=POLICY, sleep=sleep, is_transient=lambda exc: isinstance(exc, ValueError)
    )
    assert (result, fn.calls, sleeps) == ("done", 2, [0.5])


def test_base_exceptions_are_never_retried() -> None:
    fn = Flaky(KeyboardInterrupt())
    sleeps, sleep = recorder()
    with pytest.raises(KeyboardInterrupt):
        call_with_retries(fn, policy=POLICY, sleep=sleep, is_transient=lambda exc: True)
    assert (fn.calls, sleeps) == (1, [])


def test_jittered_sleeps_follow_the_rng() -> None:
    policy = RetryPolicy(max_attempts=3, initial_backoff_s=1.0, jitter=0.5)
    sleeps_a, sleep_a = recorder()
    sleeps_b, sleep_b = recorder()
    call_with_retries(
        Flaky(TimeoutError(), TimeoutError()), policy=policy, sleep=sleep_a, rng=random.Random(3)
    )
    call_with_retries(
        Flaky(TimeoutError(), TimeoutError()), policy=policy, sleep=sleep_b, rng=random.Random(3)
    )
    assert sleeps_a == sleeps_b
    assert 0.5 <= sleeps_a[0] <= 1.5 and 1.0 <= sleeps_a[1] <= 3.0


# ------------------------------------------------------------------------- the async variant


@pytest.mark.anyio
async def test_async_retries_await_their_backoff() -> None:
    fn = Flaky(ConnectionResetError(), ClientError("ThrottlingException", 400))
    sleeps: list[float] = []

    async def sleep(delay: float) -> None:
        sleeps.append(delay)

    async def call() -> str:
        return fn()

    retries: list[int] = []
    result = await call_with_retries_async(
        call, policy=POLICY, sleep=sleep, on_retry=lambda n, exc, delay: retries.append(n)
    )
    assert (result, fn.calls, sleeps, retries) == ("done", 3, [0.5, 1.0], [1, 2])


@pytest.mark.anyio
async def test_async_retries_give_up_and_refuse_like_the_sync_ones() -> None:
    sleeps: list[float] = []

    async def sleep(delay: float) -> None:
        sleeps.append(delay)

    errors = [RequestsApiError(f"503 #{i}", 503) for i in range(10)]
    flaky = Flaky(*errors)

    async def call() -> str:
        return flaky()

    with pytest.raises(RequestsApiError) as info:
        await call_with_retries_async(call, policy=POLICY, sleep=sleep)
    assert (flaky.calls, info.value, sleeps) == (4, errors[3], [0.5, 1.0, 2.0])
    refused = Flaky(ClientError("ValidationException", 400))

    async def call_refused() -> str:
        return refused()

    with pytest.raises(ClientError):
        await call_with_retries_async(call_refused, policy=POLICY, sleep=sleep)
    assert refused.calls == 1
