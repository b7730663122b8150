"""The Braket cloud runner's pure parts: its create limiter, its error kinds, its options."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from gateway.backends.braket.adapter import BraketOptions
from gateway.backends.braket.cloud import CreateRateLimiter, classify
from gateway.domain.failures import FailureKind

SV1 = "arn:aws:braket:::device/quantum-simulator/amazon/sv1"


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_a_slot_comes_back_one_period_after_its_call_ended() -> None:
    clock = Clock()
    limiter = CreateRateLimiter(3, 1.0, clock=clock)
    assert [limiter.try_acquire() for _ in range(3)] == [0.0, 0.0, 0.0]
    # All three in flight: the fourth waits (for at least a period: none has ended yet).
    assert limiter.try_acquire() == pytest.approx(1.0)
    clock.now = 100.5
    limiter.release()  # the first call ended at 100.5: its slot is back at 101.5
    clock.now = 101.4
    assert limiter.try_acquire() == pytest.approx(0.1)
    clock.now = 101.5
    assert limiter.try_acquire() == 0.0
    assert limiter.try_acquire() > 0


def test_no_more_than_rate_calls_start_within_a_period_of_any_end() -> None:
    clock = Clock()
    limiter = CreateRateLimiter(20, 1.0, clock=clock)
    starts: list[float] = []
    ends: list[float] = []
    # Calls that each take 10 ms, started as soon as the limiter allows, for 5 s.
    while clock.now < 105.0:
        wait = limiter.try_acquire()
        if wait > 0:
            clock.now += wait
            continue
        starts.append(clock.now)
        clock.now += 0.01
        ends.append(clock.now)
        limiter.release()
    for i in range(len(starts) - 20):
        assert starts[i + 20] >= ends[i] + 1.0 - 1e-9
    assert len(starts) >= 80  # ~20 per second: the limiter does not starve callers


def _client_error(code: str, status: int) -> Exception:
    from botocore.exceptions import ClientError

    return ClientError(
        {"Error": {"Code": code, "Message": "m"}, "ResponseMetadata": {"HTTPStatusCode": status}},
        "CreateQuantumTask",
    )


@pytest.mark.parametrize(
    ("code", "status", "kind", "reason"),
    [
        ("ThrottlingException", 429, FailureKind.TRANSIENT, "PROVIDER_ERROR"),
        ("InternalServiceException", 500, FailureKind.TRANSIENT, "PROVIDER_ERROR"),
        ("ValidationException", 400, FailureKind.CLIENT_ERROR, "PROVIDER_REJECTED"),
        ("ExpiredTokenException", 403, FailureKind.BACKEND_FAULT, "PROVIDER_ERROR"),
        ("AccessDeniedException", 403, FailureKind.BACKEND_FAULT, "PROVIDER_ERROR"),
        ("DeviceOfflineException", 424, FailureKind.BACKEND_FAULT, "PROVIDER_ERROR"),
    ],
)
def test_provider_errors_map_to_failure_kinds(
    code: str, status: int, kind: FailureKind, reason: str
) -> None:
    error = classify(_client_error(code, status), "sv1", "arn:task")
    assert (error.kind, error.reason) == (kind, reason)
    assert error.metadata == {"providerJobId": "arn:task", "providerErrorCode": code}


def test_refused_credentials_while_following_a_task_are_transient() -> None:
    from botocore.exceptions import NoCredentialsError

    assert classify(NoCredentialsError(), "sv1").kind is FailureKind.BACKEND_FAULT
    following = classify(_client_error("ExpiredTokenException", 403), "sv1", following=True)
    assert following.kind is FailureKind.TRANSIENT


def test_a_device_arn_needs_a_region_and_a_bucket_and_local_devices_refuse_them() -> None:
    options = BraketOptions(device=SV1, region="us-east-1", s3_bucket="b")
    assert options.is_cloud and options.local_device == "braket_sv"
    assert not BraketOptions().is_cloud
    with pytest.raises(ValidationError, match="region and s3_bucket"):
        BraketOptions(device=SV1, region="us-east-1")
    with pytest.raises(ValidationError, match="device ARN only"):
        BraketOptions(device="braket_sv", s3_bucket="b")
    with pytest.raises(ValidationError, match="device must be"):
        BraketOptions(device="sv1")
    with pytest.raises(ValidationError, match="noise"):
        BraketOptions(device=SV1, region="r", s3_bucket="b", noise={"readout_flip": 0.1})
