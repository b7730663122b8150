"""The fault adapter, in process (prepare, then execute as a worker would).

Faults that end or starve a process (SIGKILL, an OS memory limit) run in a child process.
Expected results are hard-coded from the circuit.
"""

from __future__ import annotations

import json
import pickle
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError

from gateway.backends import fault
from gateway.backends.aer.adapter import AerPayload
from gateway.backends.base import AdapterContext, CircuitLimits, ExecutionOutcome
from gateway.backends.fault import (
    FaultAdapter,
    FaultPayload,
    in_flap_sick_period,
    injected_crash,
    injected_failure,
)
from gateway.domain.backends import BackendLimits
from gateway.domain.circuits import Bindings, CircuitLanguage, CircuitSource, SamplerPub
from gateway.domain.errors import ExecutionError
from gateway.domain.jobs import JobSpec, SamplerResult
from tests.adapters import prepare_in_process

REPO = Path(__file__).resolve().parents[2]
SHOTS = 8
# X on qubit 0 of three: c[0] = 1, and bitstring character 0 is the highest bit.
X_ON_QUBIT_0 = (
    'OPENQASM 2.0;\ninclude "qelib1.inc";\nqreg q[3];\ncreg c[3];\nx q[0];\nmeasure q -> c;\n'
)
SEEDS = range(64)


def fault_adapter(**options: Any) -> FaultAdapter:
    return FaultAdapter(
        AdapterContext(
            name="fault-test",
            limits=BackendLimits(
                max_shots=10_000,
                memory_budget_bytes=1 << 30,
                max_queued_jobs=10,
                max_result_bytes=1 << 20,
            ),
            default_shots=SHOTS,
            circuit_limits=CircuitLimits(),
            options=options,
        )
    )


def x_job() -> JobSpec:
    source = CircuitSource(CircuitLanguage.QASM2, X_ON_QUBIT_0)
    return JobSpec(backend="fault-test", pubs=(SamplerPub(source, Bindings(), shots=SHOTS),))


def counts(outcome: ExecutionOutcome) -> dict[str, int]:
    result = outcome.result.pubs[0]
    assert isinstance(result, SamplerResult)
    return dict(result.registers[0].counts[0])


@pytest.fixture(scope="module")
def payload() -> FaultPayload:
    """One prepared job; `execute` of any statevector fault adapter can run it."""
    prepared = prepare_in_process(fault_adapter(), x_job(), 1234)
    assert isinstance(prepared.payload, FaultPayload)
    return prepared.payload


def with_seed(payload: FaultPayload, seed: int) -> FaultPayload:
    return FaultPayload(payload.inner, seed)


def outcome_of(adapter: FaultAdapter, payload: FaultPayload) -> str:
    """Returns "ok", or the injected failure's reason."""
    try:
        adapter.execute(payload)
    except ExecutionError as exc:
        assert exc.message.startswith("fault backend: injected failure ("), exc.message
        return exc.reason
    return "ok"


# ------------------------------------------------------------------------------ options


@pytest.mark.parametrize(
    "options",
    [
        {"failure_rate": 1.5},
        {"failure_rate": -0.1},
        {"crash_rate": 2},
        {"latency_s": -1},
        {"latency_s": float("inf")},
        {"allocate_mb": -1},
        {"flap_period_s": -5},
        {"fail_while_exists": ""},
        {"failure_rte": 0.5},  # a typo is an error, not a silently healthy backend
    ],
)
def test_bad_options_are_refused(options: dict[str, Any]) -> None:
    with pytest.raises(ValidationError):
        fault_adapter(**options)


def test_info_describes_the_faults(tmp_path: Path) -> None:
    sick = str(tmp_path / "sick")
    info = fault_adapter(failure_rate=0.25, latency_s=0.5, fail_while_exists=sick).info()
    assert info.name == "fault-test"
    assert info.provider == "fault"
    assert info.properties == {
        "method": "statevector",
        "qpy_versions": "13-18",
        "failure_rate": "0.25",
        "crash_rate": "0",
        "latency_s": "0.5",
        "hang": "false",
        "allocate_mb": "0",
        "flap_period_s": "0",
        "fail_while_exists": sick,
    }
    assert "x" in info.basis_gates


def test_prepare_wraps_the_aer_payload_with_the_seed() -> None:
    prepared = prepare_in_process(fault_adapter(), x_job(), 99)
    payload = pickle.loads(pickle.dumps(prepared.payload))  # as on the way to a worker
    assert isinstance(payload, FaultPayload)
    assert isinstance(payload.inner, AerPayload)
    assert payload.seed == 99
    assert prepared.layouts == ((0, 1, 2),)


def test_execute_refuses_a_foreign_payload(payload: FaultPayload) -> None:
    with pytest.raises(TypeError):
        fault_adapter().execute(payload.inner)


# ----------------------------------------------------------------------------- results


def test_a_healthy_job_returns_the_real_result(payload: FaultPayload) -> None:
    outcome = fault_adapter().execute(payload)
    result = outcome.result.pubs[0]
    assert isinstance(result, SamplerResult)
    assert counts(outcome) == {"001": SHOTS}
    register = result.registers[0]
    assert register.samples is not None
    assert register.samples.tolist() == [[0b001]] * SHOTS
    assert outcome.sdk_versions.keys() == {"qiskit", "qiskit-aer"}


def test_latency_delays_the_job(payload: FaultPayload) -> None:
    started = time.monotonic()
    outcome = fault_adapter(latency_s=0.05).execute(payload)
    assert time.monotonic() - started >= 0.05
    assert counts(outcome) == {"001": SHOTS}


def test_allocation_within_limits_still_returns_the_result(payload: FaultPayload) -> None:
    assert counts(fault_adapter(allocate_mb=4).execute(payload)) == {"001": SHOTS}


# ---------------------------------------------------------------------------- failures


def test_failure_rate_one_always_fails(payload: FaultPayload) -> None:
    adapter = fault_adapter(failure_rate=1.0)
    for seed in range(5):
        with pytest.raises(ExecutionError) as info:
            adapter.execute(with_seed(payload, seed))
        assert info.value.reason == "EXECUTION_FAILED"
        assert info.value.message == (
            f"fault backend: injected failure (failure_rate=1, seed {seed})"
        )


def test_failure_rate_half_is_decided_by_the_seed(payload: FaultPayload) -> None:
    adapter = fault_adapter(failure_rate=0.5)
    first = {seed: outcome_of(adapter, with_seed(payload, seed)) for seed in SEEDS}
    again = {seed: outcome_of(adapter, with_seed(payload, seed)) for seed in SEEDS}
    assert first == again
    failed = {seed for seed, outcome in first.items() if outcome != "ok"}
    assert set(first.values()) == {"ok", "EXECUTION_FAILED"}
    assert 16 <= len(failed) <= 48
    # The helper tests use to pick seeds agrees with the adapter.
    assert failed == {seed for seed in SEEDS if injected_failure(seed, 0.5)}
    # Pinned: the draw depends only on the seed, in any process and Python hash seed.
    assert [injected_failure(seed, 0.5) for seed in range(6)] == [
        True,
        True,
        False,
        True,
        True,
        True,
    ]


def test_rates_zero_and_one_are_absolute() -> None:
    assert not any(injected_failure(seed, 0.0) or injected_crash(seed, 0.0) for seed in SEEDS)
    assert all(injected_failure(seed, 1.0) and injected_crash(seed, 1.0) for seed in SEEDS)


def test_crash_and_failure_draws_are_independent() -> None:
    crashes = [injected_crash(seed, 0.5) for seed in SEEDS]
    failures = [injected_failure(seed, 0.5) for seed in SEEDS]
    assert True in crashes and False in crashes
    assert crashes != failures


def test_a_seed_that_does_not_crash_runs_normally(payload: FaultPayload) -> None:
    seed = next(s for s in SEEDS if not injected_crash(s, 0.5))
    # A crashing seed here would SIGKILL the test process itself.
    assert not injected_crash(seed, 0.5)
    outcome = fault_adapter(crash_rate=0.5).execute(with_seed(payload, seed))
    assert counts(outcome) == {"001": SHOTS}


def test_fail_while_exists_switches_sick_and_healthy(payload: FaultPayload, tmp_path: Path) -> None:
    switch = tmp_path / "sick"
    adapter = fault_adapter(fail_while_exists=str(switch))
    assert outcome_of(adapter, payload) == "ok"
    switch.touch()
    with pytest.raises(ExecutionError) as info:
        adapter.execute(payload)
    assert info.value.reason == "EXECUTION_FAILED"
    assert info.value.message == f"fault backend: injected failure ({switch} exists)"
    switch.unlink()
    assert counts(adapter.execute(payload)) == {"001": SHOTS}


def test_flap_periods() -> None:
    assert [in_flap_sick_period(t, 10.0) for t in (0.0, 9.99, 10.0, 19.99, 20.0, 35.0)] == [
        False,
        False,
        True,
        True,
        False,
        True,
    ]
    assert not in_flap_sick_period(15.0, 0.0)  # 0 = no flapping


def test_flapping_follows_the_wall_clock(
    payload: FaultPayload, monkeypatch: pytest.MonkeyPatch
) -> None:
    adapter = fault_adapter(flap_period_s=30.0)
    monkeypatch.setattr(fault, "_wall_clock", lambda: 3_000_000_005.0)  # period 100000000: even
    assert outcome_of(adapter, payload) == "ok"
    monkeypatch.setattr(fault, "_wall_clock", lambda: 3_000_000_035.0)  # next period: sick
    with pytest.raises(ExecutionError, match=r"flapping, sick period of 30 s"):
        adapter.execute(payload)


def test_hang_blocks_before_any_failure(payload: FaultPayload) -> None:
    adapter = fault_adapter(hang=True, failure_rate=1.0)
    finished = threading.Event()

    def run() -> None:
        try:
            adapter.execute(payload)
        finally:
            finished.set()

    # A daemon thread: nothing ends the hang in this process, and it must not block exit.
    threading.Thread(target=run, daemon=True).start()
    # With failure_rate 1 a job that did not hang would fail at once.
    assert not finished.wait(0.3)


# ------------------------------------------------------------------ faults that end processes

# One child process lives through what a worker may: a job over its memory limit (MemoryError),
# the next job (still served), then a crash (SIGKILL). It reads the pickled payload on stdin, as
# a worker does, so it pays for imports but not for the transpiler, and it builds its adapters
# without importing this module (pytest would cost another second).
CHILD = """
import json, pickle, resource, sys
from gateway.backends.base import AdapterContext, CircuitLimits
from gateway.backends.fault import FaultAdapter
from gateway.domain.backends import BackendLimits

def adapter(**options):
    limits = BackendLimits(
        max_shots=10_000, memory_budget_bytes=1 << 30, max_queued_jobs=10, max_result_bytes=1 << 20
    )
    context = AdapterContext(
        name="fault-child",
        limits=limits,
        default_shots=8,
        circuit_limits=CircuitLimits(),
        options=options,
    )
    return FaultAdapter(context)

def data_bytes():
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmData:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError("no VmData")

def report(**fields):
    print(json.dumps(fields), flush=True)

payload = pickle.load(sys.stdin.buffer)
small = adapter(allocate_mb=16)
big = adapter(allocate_mb=1024)
crash = adapter(crash_rate=1.0, failure_rate=1.0)
small.warm_up()
# 256 MiB above what the process uses now: the 16 MiB job fits, the 1 GiB one cannot.
_, hard = resource.getrlimit(resource.RLIMIT_DATA)
resource.setrlimit(resource.RLIMIT_DATA, (data_bytes() + 256 * 2**20, hard))
try:
    big.execute(payload)
    report(big="no error")
except MemoryError:
    report(big="MemoryError")
result = small.execute(payload).result.pubs[0]
report(small=dict(result.registers[0].counts[0]))
report(crash="executing")
try:
    crash.execute(payload)
finally:
    report(crash="survived")
"""


@dataclass(frozen=True)
class ChildRun:
    returncode: int
    reports: list[dict[str, Any]]
    stderr: str


@pytest.fixture(scope="module", autouse=True)
def child() -> Iterator[subprocess.Popen[bytes]]:
    """Started before the first test, so its imports overlap this process's transpiler set-up."""
    process = subprocess.Popen(
        [sys.executable, "-c", CHILD],
        cwd=REPO,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    yield process
    if process.poll() is None:  # a test run that never needed it
        process.kill()
        process.communicate()


@pytest.fixture(scope="module")
def child_run(child: subprocess.Popen[bytes], payload: FaultPayload) -> ChildRun:
    stdout, stderr = child.communicate(pickle.dumps(payload), timeout=60)
    reports = [json.loads(line) for line in stdout.decode().splitlines()]
    return ChildRun(child.returncode, reports, stderr.decode()[-3000:])


@pytest.mark.skipif(sys.platform != "linux", reason="RLIMIT_DATA covers mmap only on Linux")
def test_allocation_over_rlimit_data_fails_only_its_job(child_run: ChildRun) -> None:
    assert child_run.reports[:2] == [{"big": "MemoryError"}, {"small": {"001": SHOTS}}], (
        child_run.stderr
    )


def test_crash_kills_the_process_with_sigkill(child_run: ChildRun) -> None:
    assert child_run.returncode == -signal.SIGKILL, (child_run.returncode, child_run.stderr)
    # Neither an exception nor the finally block ran, and the crash came before the failure.
    assert child_run.reports[2:] == [{"crash": "executing"}], child_run.stderr
