"""Hostile review of the latest cost prices (92a235c, 2d9653f): each price checked against
what the job measured in process on this machine (a 2-core x86 box, one worker, CPU seconds
x 5e10 units). Each was an xfail until its price was fixed; none times anything itself,
the measured figures are constants stated with their probe.

Probes (priced units / measured CPU s x 5e10 / ratio):
- braket_sv RESET_ENTANGLED (the conformance circuit), 25,000 shots: 1.25e13 (refused) /
  0.158 s = 7.9e9 / 1570x over. At 4,000 shots (the conformance job): 1.99e12 / 0.016 s /
  2440x (braket_dm: 0.171 s, 233x).
- braket_sv 4 qubits, 10 mid-circuit measurements each followed by a reset, 10,000 shots:
  1.86e13 (refused) / 1.97 s = 9.9e10 / 189x over (1,000 shots: 1.86e12 / 0.75 s / 49x).
- braket_sv 14 qubits, 10 mid-circuit measurements, 30 shots: 1.42e11 / 43.1 s (24 s wall) =
  2.2e12 / 15x under; braket_dm 9 qubits, 20 mid-circuit measurements, 10 shots: 9.33e10 /
  18.9 s = 9.5e11 / 10x under (8 qubits, 20: 5.4x; 9 qubits, 10 with 20 shots: 7.8x).
- FakeLagosV2 estimator, default resilience (1), precision 0.05, 48 one-term observables in
  distinct bases: 2.56e10 / 8.71 s = 4.4e11 / 17x under (one observable: 2.56e10 / 0.44 s,
  fine; at the default precision 1, 3 and 6 groups ran 2.1, 5.2 and 9.1 s, priced 4.8 s each).
- FakeGuadalupeV2 estimator of a 3-qubit GHZ, <ZZZ>, resilience 0, precision 0.05: 5.24e5 /
  7.06 s (3.6 s wall) = 3.5e11 / ~1e6x under (precision 0.1: 2.24e5 / 1.78 s; resilience 1
  at 0.1: 1.41e9 / 4.5 s; the sampler's 100 shots of it: 0.031 s). A 10-qubit brickwork, <Z^10>,
  default precision, resilience 0: 7.85e10 / 134 s (81 s wall) / 85x under.
"""

from __future__ import annotations

import dataclasses
import random

import pytest

from gateway.backends.braket.adapter import BraketAdapter
from gateway.backends.ibm.adapter import IbmAdapter
from gateway.domain.backends import BackendLimits
from gateway.domain.circuits import (
    Bindings,
    CircuitLanguage,
    CircuitSource,
    EstimatorPub,
    Observable,
    PauliTerm,
)
from gateway.domain.errors import InvalidArgument
from gateway.domain.jobs import JobOptions, JobSpec
from tests.adapters import prepare_in_process
from tests.unit.test_aer_adapter import context as aer_context
from tests.unit.test_ibm_adapter import context as ibm_context

WORK_PER_CPU_SECOND = 5e10
DEFAULT_BUDGET = BackendLimits(
    max_shots=1, memory_budget_bytes=1, max_queued_jobs=1, max_result_bytes=1
).max_execution_work
HEADER = 'OPENQASM 3.0;\ninclude "stdgates.inc";\n'
# tests/conformance/test_circuit_semantics.py's RESET_ENTANGLED.
RESET_ENTANGLED = (
    HEADER
    + "qubit[2] q; bit[3] c;\n"
    + "h q[0]; cx q[0], q[1]; reset q[0]; c[0] = measure q[0]; c[1] = measure q[1];\n"
    + "x q[1]; reset q[1]; c[2] = measure q[1];\n"
)


def brick_body(n: int, layers: int) -> list[str]:
    lines: list[str] = []
    for layer in range(layers):
        lines += [f"rx({0.3 + 0.1 * q + 0.07 * layer:.3f}) q[{q}];" for q in range(n)]
        lines += [f"rz({0.2 + 0.05 * q:.3f}) q[{q}];" for q in range(n)]
        lines += [f"cx q[{q}], q[{q + 1}];" for q in range(layer % 2, n - 1, 2)]
    return lines


def mid_circuit(n: int, measurements: int, reset: bool = False) -> str:
    """A 4-layer brickwork on n qubits with `measurements` mid-circuit measurements spread
    through it (each optionally followed by a reset), then every qubit measured."""
    lines = [HEADER + f"qubit[{n}] q;", f"bit[{n + measurements}] c;"]
    body = brick_body(n, 4)
    every = max(1, len(body) // (measurements + 1))
    done = 0
    for index, line in enumerate(body):
        lines.append(line)
        if (index + 1) % every == 0 and done < measurements:
            lines.append(f"c[{n + done}] = measure q[{done % n}];")
            if reset:
                lines.append(f"reset q[{done % n}];")
            done += 1
    lines += [f"c[{n + k}] = measure q[{k % n}];" for k in range(done, measurements)]
    lines.append(f"c[0:{n - 1}] = measure q;")
    return "\n".join(lines) + "\n"


def braket_price(device: str, text: str, shots: int) -> int:
    adapter = BraketAdapter(aer_context(device=device))
    entry = adapter.compile_circuit(CircuitSource(CircuitLanguage.QASM3, text))
    spec = JobSpec(backend="x", pubs=(), options=JobOptions())
    return adapter.sampling_work(entry, 1, shots, spec)


@pytest.mark.parametrize(
    ("device", "text", "shots", "measured_cpu_s"),
    [
        ("braket_sv", RESET_ENTANGLED, 25_000, 0.158),
        ("braket_sv", RESET_ENTANGLED, 4_000, 0.016),
        ("braket_dm", RESET_ENTANGLED, 4_000, 0.171),
        ("braket_sv", mid_circuit(4, 10, reset=True), 10_000, 1.97),
    ],
)
def test_braket_branching_is_not_refused_at_many_times_its_cost(
    device: str, text: str, shots: int, measured_cpu_s: float
) -> None:
    price = braket_price(device, text, shots)
    assert price <= DEFAULT_BUDGET
    assert price <= 20 * measured_cpu_s * WORK_PER_CPU_SECOND


@pytest.mark.parametrize(
    ("device", "qubits", "measurements", "shots", "measured_cpu_s"),
    [("braket_sv", 14, 10, 30, 43.1), ("braket_dm", 9, 20, 10, 18.9)],
)
def test_braket_branching_price_grows_with_the_state(
    device: str, qubits: int, measurements: int, shots: int, measured_cpu_s: float
) -> None:
    price = braket_price(device, mid_circuit(qubits, measurements), shots)
    assert 10 * price >= measured_cpu_s * WORK_PER_CPU_SECOND


def ibm_estimator_price(
    backend: str, text: str, paulis: list[str], precision: float, **provider_options: object
) -> float:
    """The execution work admission charges, read from its refusal under a budget of 1."""
    adapter = IbmAdapter(ibm_context(backend=backend))
    adapter.context = dataclasses.replace(
        adapter.context, limits=dataclasses.replace(adapter.context.limits, max_execution_work=1)
    )
    pub = EstimatorPub(
        circuit=CircuitSource(CircuitLanguage.QASM3, text),
        observables=tuple(Observable((PauliTerm(pauli, 1.0),)) for pauli in paulis),
        observables_shape=(len(paulis),),
        bindings=Bindings(),
        precision=precision,
    )
    spec = JobSpec(backend="x", pubs=(pub,), options=JobOptions(provider_options=provider_options))
    with pytest.raises(InvalidArgument) as refusal:
        prepare_in_process(adapter, spec, 1)
    assert refusal.value.reason == "EXECUTION_TOO_EXPENSIVE"
    return float(refusal.value.metadata["value"])


def test_ibm_estimator_prices_each_measurement_basis() -> None:
    rng = random.Random(5)
    paulis = ["".join(rng.choice("XYZ") for _ in range(7)) for _ in range(48)]
    text = HEADER + "qubit[7] q;\n" + "\n".join(brick_body(7, 6)) + "\n"
    price = ibm_estimator_price("FakeLagosV2", text, paulis, 0.05)
    assert 10 * price >= 8.71 * WORK_PER_CPU_SECOND


def test_ibm_estimator_prices_the_qubits_it_runs_on() -> None:
    text = HEADER + "qubit[3] q;\nh q[0];\ncx q[0], q[1];\ncx q[1], q[2];\n"
    price = ibm_estimator_price("FakeGuadalupeV2", text, ["ZZZ"], 0.05, resilience_level=0)
    assert 10 * price >= 7.06 * WORK_PER_CPU_SECOND
