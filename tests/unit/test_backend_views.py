"""Backend views in process: what BASIC and FULL hold, who is an admin, and health errors that
never carry exception text (paths, addresses) to the API."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import pytest
from qgateway.v1 import backend_pb2

from gateway.api import backend_codec
from gateway.backends.runner import ProbeSkipped
from gateway.config import ConfigError, GatewayConfig, load_config
from gateway.domain.backends import (
    BackendInfo,
    BackendKind,
    BackendLimits,
    BackendStatus,
    Primitive,
)
from gateway.domain.errors import ExecutionError, InvalidArgument, Unavailable
from gateway.jobs.backend import HealthState
from gateway.runtime.health import HealthMonitor
from gateway.security.api_keys import KeyRing, KeyVerifier, generate_key
from gateway.security.policies import PolicyBook, may_read_operations
from gateway.security.principals import ANONYMOUS, Role

INFO = BackendInfo(
    name="aer",
    provider="aer",
    kind=BackendKind.SIMULATOR,
    num_qubits=30,
    basis_gates=("x", "cx"),
    primitives=frozenset({Primitive.SAMPLER}),
    features=frozenset(),
    limits=BackendLimits(
        max_shots=10, memory_budget_bytes=20, max_queued_jobs=30, max_result_bytes=40
    ),
)
STATUS = BackendStatus(
    ready=True,
    serving=True,
    last_probe=datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC),
    last_error="PROBE_TIMEOUT: no answer within 30 s",
    breaker_state="HALF_OPEN",
    queue_depth=7,
    running=2,
    pool_in_use=2,
    pool_idle=1,
    pool_waiting=3,
    pool_min=1,
    pool_max=4,
    pool_peak=4,
)
LIMITS = backend_codec.encode_limits(INFO.limits, 60.0)
OPERATIONAL = ("health", "pool")


def test_basic_view_has_no_operational_detail() -> None:
    basic = backend_codec.encode_backend(INFO, STATUS, LIMITS, backend_codec.View.BASIC)
    wire = backend_pb2.Backend.FromString(basic.SerializeToString())
    for name in OPERATIONAL:
        assert not wire.HasField(name), name
    assert wire.breaker_state == backend_pb2.BREAKER_STATE_UNSPECIFIED
    assert (wire.name, wire.queue_length, wire.running_jobs, wire.num_qubits) == (
        "backends/aer",
        7,
        2,
        30,
    )
    assert wire.limits.max_shots == 10 and wire.limits.max_execution_seconds == 60.0
    assert wire.status == backend_pb2.BACKEND_STATUS_ONLINE


def test_full_view_adds_health_breaker_and_pool() -> None:
    full = backend_codec.encode_backend(INFO, STATUS, LIMITS, backend_codec.View.FULL)
    assert full.health.serving and full.health.last_error.startswith("PROBE_TIMEOUT")
    assert full.health.last_probe_time.seconds == int(STATUS.last_probe.timestamp())  # type: ignore[union-attr]
    assert full.breaker_state == backend_pb2.BREAKER_STATE_HALF_OPEN
    assert (full.pool.in_use, full.pool.idle, full.pool.waiting) == (2, 1, 3)
    assert (full.pool.min_instances, full.pool.max_instances, full.pool.peak_instances) == (1, 4, 4)


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (backend_pb2.BACKEND_VIEW_UNSPECIFIED, backend_codec.View.BASIC),
        (backend_pb2.BACKEND_VIEW_BASIC, backend_codec.View.BASIC),
        (backend_pb2.BACKEND_VIEW_FULL, backend_codec.View.FULL),
    ],
)
def test_views(value: int, expected: backend_codec.View) -> None:
    assert backend_codec.view(value) is expected


@pytest.mark.parametrize("value", [3, -1, 1 << 30])
def test_undefined_view_numbers_are_invalid(value: int) -> None:
    with pytest.raises(InvalidArgument) as caught:
        backend_codec.view(value)
    assert caught.value.reason == "INVALID_BACKEND_VIEW"


# ------------------------------------------------------------------------------ who is admin


def test_admin_flag_travels_from_key_entry_to_principal() -> None:
    admin, tenant = generate_key("ops", role=Role.ADMIN), generate_key("acme")
    verifier = KeyVerifier(KeyRing([admin.config, tenant.config]))
    got_admin = asyncio.run(verifier.verify(admin.key))
    got_tenant = asyncio.run(verifier.verify(tenant.key))
    assert got_admin.admin and may_read_operations(got_admin)
    assert not got_tenant.admin and not may_read_operations(got_tenant)


def test_anonymous_caller_is_not_admin_unless_configured(tmp_path: Any) -> None:
    assert not ANONYMOUS.admin
    assert not GatewayConfig().auth.anonymous().admin
    config = tmp_path / "gateway.toml"
    config.write_text("[auth]\nanonymous_admin = true\n")
    anonymous = load_config(config).auth.anonymous()
    assert anonymous.admin and anonymous.tenant == "default"


def test_anonymous_admin_with_keys_is_a_config_error(tmp_path: Any) -> None:
    entry = generate_key("acme").config
    config = tmp_path / "gateway.toml"
    config.write_text(
        "[auth]\nanonymous_admin = true\n[[auth.api_keys]]\n"
        f'prefix = "{entry.prefix}"\nsha256 = "{entry.sha256}"\ntenant = "acme"\n'
    )
    with pytest.raises(ConfigError, match="anonymous_admin"):
        load_config(config)


def test_admin_key_entry_in_toml(tmp_path: Any) -> None:
    entry = generate_key("ops").config
    config = tmp_path / "gateway.toml"
    config.write_text(
        "[[auth.api_keys]]\n"
        f'prefix = "{entry.prefix}"\nsha256 = "{entry.sha256}"\ntenant = "ops"\nrole = "admin"\n'
    )
    assert load_config(config).auth.api_keys[0].role is Role.ADMIN


def test_every_backend_is_visible_to_a_tenant_no_policy_names() -> None:
    kinds = {"b": BackendKind.HARDWARE, "a": BackendKind.SIMULATOR}
    assert PolicyBook().visible_backends(ANONYMOUS, kinds) == ["a", "b"]


# ------------------------------------------------------------------- sanitised health errors

SECRET_TEXT = (
    "worker 4242 died: [Errno 2] No such file or directory: '/var/lib/qgateway/secret/x.sock' "
    "while connecting to 10.1.2.3:50051 (tenant acme's job)"
)
FORBIDDEN = ("/var/lib", "secret", "10.1.2.3", "50051", "4242", "Errno", "acme", "sock")


@dataclass
class _Prepared:
    payload: object = None


class _ProbeRunner:
    """A runner whose probe ends as the test says (the probe's outcomes per Runner.probe)."""

    def __init__(self, error: BaseException | None) -> None:
        self.error = error
        self.probes = 0
        self.maintained = asyncio.Event()

    async def probe(self, prepared: object, timeout: float) -> None:
        self.probes += 1
        if self.error is not None:
            raise self.error

    async def maintain(self) -> None:
        self.maintained.set()


def _monitor(
    runner: _ProbeRunner, health: HealthState, prepare: object = None, interval_s: float = 30
) -> HealthMonitor:
    async def prepared(_: int) -> _Prepared:
        return _Prepared()

    async def on_change(_: str) -> None:
        return None

    return HealthMonitor(
        "aer",
        runner,  # type: ignore[arg-type]
        prepare or prepared,  # type: ignore[arg-type]
        health,
        interval_s=interval_s,
        timeout_s=0.05,
        on_change=on_change,
    )


async def _run_probe(
    error: BaseException | None, health: HealthState, prepare: object = None
) -> str:
    monitor = _monitor(_ProbeRunner(error), health, prepare)
    await monitor.probe()
    assert health.last_probe is not None
    return health.last_error


@pytest.mark.parametrize(
    ("error", "expected"),
    [
        (ExecutionError("WORKER_CRASHED", SECRET_TEXT), "PROBE_FAILED: worker crashed"),
        (ExecutionError("OUT_OF_MEMORY", SECRET_TEXT), "PROBE_FAILED: out of memory"),
        (ExecutionError("PROVIDER_ERROR", SECRET_TEXT), "PROBE_FAILED: provider error"),
        # A reason no one described yet is shown only if it looks like a reason.
        (ExecutionError("SOME_NEW_REASON", SECRET_TEXT), "PROBE_FAILED: SOME_NEW_REASON"),
        (ExecutionError(SECRET_TEXT, SECRET_TEXT), "PROBE_FAILED"),
        # Upper case but not a reason code (spaces): the text could name a host.
        (ExecutionError("WORKER ON HOST DB1", SECRET_TEXT), "PROBE_FAILED"),
        (ValueError(SECRET_TEXT), "PROBE_FAILED: unexpected error"),
    ],
)
def test_probe_failures_show_a_reason_never_the_exception_text(
    error: BaseException, expected: str
) -> None:
    health = HealthState()
    last_error = asyncio.run(_run_probe(error, health))
    assert last_error == expected and not health.serving
    for text in FORBIDDEN:
        assert text not in last_error


def test_no_instance_shows_no_exception_text() -> None:
    last_error = asyncio.run(_run_probe(OSError(SECRET_TEXT), HealthState()))
    assert last_error == "NO_INSTANCE: no backend instance could be started"


def test_refused_probe_circuit_shows_only_its_reason() -> None:
    async def refuse(_: int) -> _Prepared:
        raise InvalidArgument("UNKNOWN_GATE", SECRET_TEXT)

    health = HealthState()
    assert asyncio.run(_run_probe(None, health, refuse)) == "PROBE_REFUSED: UNKNOWN_GATE"


def test_probe_timeout_names_the_configured_limit() -> None:
    last_error = asyncio.run(_run_probe(TimeoutError(), HealthState()))
    assert last_error == "PROBE_TIMEOUT: no answer within 0.05 s"


class _TimedProbeRunner(_ProbeRunner):
    def __init__(self) -> None:
        super().__init__(None)
        self.timeouts: list[float] = []

    async def probe(self, prepared: object, timeout: float) -> None:
        self.timeouts.append(timeout)


def test_the_probe_gets_the_probe_timeout_not_the_interval() -> None:
    runner = _TimedProbeRunner()
    asyncio.run(_monitor(runner, HealthState(), interval_s=30).probe())
    assert runner.timeouts == [0.05]


def test_success_clears_the_error() -> None:
    health = HealthState(last_error="PROBE_FAILED: worker crashed")
    assert asyncio.run(_run_probe(None, health)) == ""
    assert health.serving


def test_a_skipped_probe_changes_nothing() -> None:
    # Every worker busy: no verdict. A broken backend must not read SERVING for it (nor a
    # healthy one NOT_SERVING), and nothing is published.
    broken = HealthState(serving=False, last_error="PROBE_FAILED: worker crashed")
    assert asyncio.run(_run_probe_keeping(ProbeSkipped("every worker is busy"), broken)) == 0
    assert not broken.serving and broken.last_error == "PROBE_FAILED: worker crashed"
    assert broken.last_probe is None


async def _run_probe_keeping(error: BaseException | None, health: HealthState) -> int:
    changes: list[str] = []

    async def prepared(_: int) -> _Prepared:
        return _Prepared()

    async def on_change(name: str) -> None:
        changes.append(name)

    monitor = HealthMonitor(
        "aer",
        _ProbeRunner(error),  # type: ignore[arg-type]
        prepared,  # type: ignore[arg-type]
        health,
        interval_s=30,
        timeout_s=0.05,
        on_change=on_change,
    )
    await monitor.probe()
    return len(changes)


def test_an_unavailable_target_is_not_serving_and_the_probe_is_not_run() -> None:
    runner = _ProbeRunner(None)  # the probe itself would succeed
    health = HealthState(serving=True)

    async def prepared(_: int) -> _Prepared:
        return _Prepared()

    async def on_change(_: str) -> None:
        return None

    async def no_target() -> None:
        raise RuntimeError("provider has no description yet")

    monitor = HealthMonitor(
        "aer",
        runner,  # type: ignore[arg-type]
        prepared,  # type: ignore[arg-type]
        health,
        interval_s=30,
        timeout_s=0.05,
        on_change=on_change,
        fetch_target=no_target,
    )
    asyncio.run(monitor.probe())
    assert (health.serving, health.last_error, runner.probes) == (False, "TARGET_UNAVAILABLE", 0)


def test_the_probe_loop_waits_an_interval_after_the_start_up_probe() -> None:
    # The server awaits one probe before the backend serves; the loop probing again at once
    # cost every backend a second probe (a provider call, for a cloud backend) at each start.
    async def scenario() -> int:
        runner = _ProbeRunner(None)
        monitor = _monitor(runner, HealthState(), interval_s=3600)
        loop = asyncio.create_task(monitor.run())
        await runner.maintained.wait()  # the loop is on its way to its first sleep
        await asyncio.sleep(0)
        loop.cancel()
        await asyncio.gather(loop, return_exceptions=True)
        return runner.probes

    assert asyncio.run(scenario()) == 0


def test_a_pool_that_cannot_start_an_instance_shows_no_instance() -> None:
    # The pool's own refusal (a GatewayError, not an ExecutionError of the probe job).
    last_error = asyncio.run(_run_probe(Unavailable("NO_CAPACITY", SECRET_TEXT), HealthState()))
    assert last_error == "NO_INSTANCE: no backend instance could be started"


def test_serving_is_published_after_the_first_probe_and_then_only_when_it_changes() -> None:
    async def scenario() -> list[int]:
        changes: list[str] = []

        async def prepared(_: int) -> _Prepared:
            return _Prepared()

        async def on_change(name: str) -> None:
            changes.append(name)

        runner = _ProbeRunner(ExecutionError("WORKER_CRASHED", "crashed"))
        monitor = HealthMonitor(
            "aer",
            runner,  # type: ignore[arg-type]
            prepared,  # type: ignore[arg-type]
            HealthState(),
            interval_s=30,
            timeout_s=0.05,
            on_change=on_change,
        )
        seen = []
        for error in (runner.error, runner.error, None, None, runner.error):
            runner.error = error
            await monitor.probe()
            seen.append(len(changes))
        assert set(changes) == {"aer"}
        return seen

    # The first verdict is published though NOT_SERVING was the default; a repeated one is not.
    assert asyncio.run(scenario()) == [1, 1, 2, 2, 3]


def test_each_limit_is_written_to_its_own_field() -> None:
    limits = backend_codec.encode_limits(
        BackendLimits(
            max_shots=1,
            memory_budget_bytes=2,
            max_queued_jobs=3,
            max_result_bytes=4,
            max_job_shots=5,
        ),
        6.5,
    )
    assert (
        limits.max_shots,
        limits.memory_budget_bytes,
        limits.max_queued_jobs,
        limits.max_result_bytes,
        limits.max_job_shots,
        limits.max_execution_seconds,
    ) == (1, 2, 3, 4, 5, 6.5)
