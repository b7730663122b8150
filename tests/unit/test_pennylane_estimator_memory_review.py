"""Review of admission's memory and time estimates for PennyLane's estimator and sampler sweeps.

Measured (scratch, as tests/unit/test_braket_pennylane_memory_review.py: a child process runs
the adapter's own `execute` on the prepared payload after `warm_up`; its VmHWM above its warm
size, and its CPU time; pennylane 0.45, 2-core machine). The circuit: rx(theta) on every qubit,
then a cx chain; the observable: one of the first T non-identity Pauli strings.

Estimator (bindings x terms, qubits: peak / admission's memory_bytes, CPU / priced seconds):
- lightning.qubit 10,000 x 200, 6: +158 MiB / 30.6 MiB (5.2x), 57 s / 130 s.
- lightning.qubit 20,000 x 15, 2: +51 MiB / 4.7 MiB (10.7x), 6.9 s / 21 s.
- lightning.qubit 10,000 x 25, 4: +41.1 MiB / 3.9 MiB (10.6x), 11-35 s / 17.7 s.
  Each binding's expval comes back from lightning's per-binding tapes as its own numpy scalar
  (~80-120 bytes held until stacked), where `beside_state` counted 16 bytes a value.
- default.qubit 800 x 2000, 12: +158 MiB / 24.7 MiB (6.4x), 156 s / 178 s: a broadcast chunk
  of 512 states (32 MiB) is simulated and read with ~4 more copies, uncounted (admission counted
  4 copies of one binding's 64 KiB state).
- default.qubit 10,000 x 200, 6: +75 MiB / 30.6 MiB, 2.05 s / 142 s (69x over); 20,000 x 15, 2:
  0.032 s / 22 s (690x over); 40 x 255, 4 (test_review_latest_prices' probe, measured there at
  0.709 s when default.qubit still used qml.expval): 0.013 s / 0.72 s. default.qubit now reads
  the terms from its states (pauli_values), but its `per_term` is still qml.expval's ~70 us.
Samplers (COUNTS; all bounded by the probability table and the broadcast chunk): lightning
20,000 bindings x 500 shots, 2 qubits +44 MiB, 2.9 s / 3.3 s; 5000 x 100, 12 qubits +32 MiB,
2.8 s / 3.4 s; default.qubit 20,000 x 500, 2 qubits +14 MiB, 1.7 s / 1.3 s; 5000 x 100,
12 qubits +62 MiB, 6.4 s / 3.4 s; 400 x 100, 16 qubits +52 MiB, 10.9 s / 5.2 s.

Fixed: lightning.qubit's device calls hold at most EXPVAL_VALUES expectation values (bindings
x words), and sweep_memory counts them (lightning 10,000 x 200 then peaked at +74 MiB against
60.6 MiB counted, 77 s of CPU against 66 s before, both under load); default.qubit's
sweep_memory counts the rest of a broadcast chunk's states.
default.qubit's estimator is priced as it runs (adapter.py, _BROADCAST_*): per chunk of
broadcast states and per amplitude of the terms' reads, not qml.expval's per_term. Re-measured:
10,000 x 200, 6 qubits 1.75 s / 3.2 s; 20,000 x 15, 2 qubits 0.028 s / 0.023 s; 800 x 2000,
12 qubits 156 s / 159 s; 2-12 qubits, 10-2000 terms, 10-20,000 bindings all 0.8-2.4x.
"""

from __future__ import annotations

import itertools
from typing import Any

import numpy as np
import pytest

from gateway.backends.pennylane.adapter import PennyLaneAdapter
from gateway.backends.qiskit.adapter import CompiledCircuit
from gateway.domain import costs
from gateway.domain.circuits import (
    Bindings,
    CircuitLanguage,
    CircuitSource,
    EstimatorPub,
    Observable,
    PauliTerm,
)
from gateway.domain.jobs import JobSpec
from tests.adapters import adapter_context, prepare_in_process

MIB = 1 << 20


def _chain(n: int) -> CircuitSource:
    """The measured circuit: rx(theta) on every qubit, then a cx chain (no measurement)."""
    lines = ["OPENQASM 3.0;", 'include "stdgates.inc";', "input float theta;", f"qubit[{n}] q;"]
    lines += [f"rx(theta) q[{q}];" for q in range(n)]
    lines += [f"cx q[{q}], q[{q + 1}];" for q in range(n - 1)]
    return CircuitSource(CircuitLanguage.QASM3, "\n".join(lines) + "\n")


def _terms(n: int, count: int) -> Observable:
    """The first `count` non-identity Pauli strings on n qubits."""
    words = itertools.islice(itertools.product("IXYZ", repeat=n), 1, count + 1)
    return Observable(tuple(PauliTerm("".join(word), 1.0) for word in words))


def _pub(n: int, bindings: int, terms: int) -> EstimatorPub:
    values = np.linspace(0.0, 1.0, bindings).reshape(bindings, 1)
    sweep = Bindings(("theta",), (bindings,), values)
    return EstimatorPub(_chain(n), (_terms(n, terms),), (), sweep)


def _adapter(device: str) -> PennyLaneAdapter:
    return PennyLaneAdapter(adapter_context("pl", device=device, num_qubits=16))


@pytest.mark.parametrize(
    ("qubits", "bindings", "terms", "peak_mib"),
    [
        # Fewer values than EXPVAL_VALUES: the same run before and after the fix (+41.1 MiB,
        # 3.9 MiB counted before it).
        (4, 10_000, 25, 41.1),
        # Measured after the fix; before it one device call held all 2,000,000 values (+158.3
        # MiB, 30.6 MiB counted).
        (6, 10_000, 200, 74.1),
    ],
)
def test_lightning_estimator_counts_its_expectation_values(
    qubits: int, bindings: int, terms: int, peak_mib: float
) -> None:
    adapter = _adapter("lightning.qubit")
    job = JobSpec(backend="pl", pubs=(_pub(qubits, bindings, terms),))
    prepared = prepare_in_process(adapter, job, 1)
    # The memory budget admits on this figure: a worker peaking at more than twice it may be
    # killed by its memory limit under a budget admission thought it fit.
    assert 2 * prepared.memory_bytes >= peak_mib * MIB


def test_default_qubit_estimator_counts_its_broadcast_states() -> None:
    adapter = _adapter("default.qubit")
    job = JobSpec(backend="pl", pubs=(_pub(12, 800, 2000),))
    prepared = prepare_in_process(adapter, job, 1)
    # Measured +158.4 MiB, where 24.7 MiB were counted (~40 KB on the wire).
    assert 2 * prepared.memory_bytes >= 158.4 * MIB


@pytest.mark.parametrize(
    ("qubits", "bindings", "terms", "cpu_s"),
    # (12 qubits, 800 x 2000: 155.6 s, priced 178 s: there the state reads dominate.)
    [(6, 10_000, 200, 2.05), (2, 20_000, 15, 0.032)],
)
def test_default_qubit_estimator_price_follows_its_cpu(
    qubits: int, bindings: int, terms: int, cpu_s: float
) -> None:
    adapter = _adapter("default.qubit")
    entry = adapter.compile_circuit(_chain(qubits))
    assert isinstance(entry, CompiledCircuit)
    job = JobSpec(backend="pl", pubs=())
    work = adapter.estimation_work(entry, bindings, terms, 1, 0, job)
    seconds = work / costs.WORK_PER_SECOND
    # Far over the run, a cheap job is refused (EXECUTION_TOO_EXPENSIVE: 20,000 bindings of
    # 200 terms on 6 qubits, ~4 s, are priced 284 s) and fair share charges for time unused.
    assert cpu_s / 3 <= seconds <= 3 * cpu_s


def test_lightning_device_calls_hold_a_bounded_number_of_values(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # What sweep_memory counts for lightning.qubit is only a bound if the simulation keeps to
    # it: each device call returns at most EXPVAL_VALUES expectation values (bindings x words).
    from qiskit import QuantumCircuit
    from qiskit.circuit import Parameter

    from gateway.backends.pennylane import simulation as simulation_module
    from gateway.backends.pennylane.simulation import PennyLaneSimulation

    theta = Parameter("theta")
    circuit = QuantumCircuit(2)
    circuit.rx(theta, 0)
    circuit.ry(theta, 1)
    circuit.cx(0, 1)
    terms = [("Z", (0,)), ("X", (1,)), ("ZZ", (0, 1)), ("XY", (0, 1))]
    values = np.random.default_rng(7).uniform(-3, 3, (25, 1))
    sim = PennyLaneSimulation("lightning.qubit", 2)
    whole = sim.expectations("whole", circuit, terms, ("theta",), values)
    bound = 24  # 6 bindings of 4 words a call
    monkeypatch.setattr(simulation_module, "EXPVAL_VALUES", bound)
    calls: list[int] = []
    execute = PennyLaneSimulation._execute

    def counted(self: PennyLaneSimulation, width: int, tapes: list[Any]) -> Any:
        calls.append(sum(max(1, t.batch_size or 1) * len(t.measurements) for t in tapes))
        return execute(self, width, tapes)

    monkeypatch.setattr(PennyLaneSimulation, "_execute", counted)
    got = sim.expectations("bounded", circuit, terms, ("theta",), values)
    np.testing.assert_allclose(got, whole, atol=1e-12)
    assert len(calls) > 1 and max(calls) <= bound, calls
