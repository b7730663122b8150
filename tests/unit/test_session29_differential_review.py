"""Differential review: what the simulator adapters return against what a user gets by calling
the SDK directly (qiskit's reference primitives, qiskit_aer.primitives.SamplerV2), in process.

Held (and kept here as tests): random circuits with conditionals sampled by Aer (seeded, from
its own state) and Braket (shot by shot) follow the distribution Aer's own SamplerV2 draws;
random circuits without measurements give Statevector's expectation values on every exact
simulator at precision 0, and their sampled outcomes its probabilities; registers of 12, 9 and
1 bits measured out of order come back as the very bytes Aer's BitArray holds; observables of
shape (3, 1) broadcast against bindings of shape (1, 4) as StatevectorEstimator broadcasts them.

Found: an estimator PUB of one observable (shape (), what `client.estimate(circuit, "ZZ")`
sends) with a precision above 0 - the default precision included - failed on Aer, Braket and
PennyLane: the sampled value of a 0-d PUB is a Python float, and `.astype` on it raised
AttributeError in the worker, so the job FAILED with INTERNAL EXECUTION_FAILED. Every existing
test of a single observable asked for precision 0.
"""

from __future__ import annotations

import io
import math
import pickle
from collections import Counter
from collections.abc import Mapping

import numpy as np
import pytest
from qiskit import ClassicalRegister, QuantumCircuit, QuantumRegister, qpy, transpile
from qiskit.circuit import Parameter
from qiskit.circuit.random import random_circuit
from qiskit.primitives import BitArray, StatevectorEstimator
from qiskit.quantum_info import SparsePauliOp, Statevector

from gateway.backends.aer.adapter import AerAdapter
from gateway.backends.braket.adapter import BraketAdapter
from gateway.backends.pennylane.adapter import PennyLaneAdapter
from gateway.backends.qiskit.adapter import QiskitAdapter
from gateway.domain.circuits import (
    DEFAULT_PRECISION,
    Bindings,
    CircuitLanguage,
    CircuitSource,
    EstimatorPub,
    Observable,
    PauliTerm,
    SamplerPub,
)
from gateway.domain.jobs import EstimatorResult, JobOptions, JobSpec, PubResult, SamplerResult
from tests.adapters import adapter_context, prepare_in_process

pytestmark = pytest.mark.timeout(60)

EXACT = ["aer", "braket_sv", "default.qubit", "lightning.qubit"]
# Per-outcome bound, as in tests/conformance/stats.py: 5.5 standard deviations.
Z = 5.5


@pytest.fixture(scope="module")
def adapters() -> dict[str, QiskitAdapter]:
    built: dict[str, QiskitAdapter] = {
        "aer": AerAdapter(adapter_context("aer")),
        "braket_sv": BraketAdapter(adapter_context("braket-sv", device="braket_sv")),
        "default.qubit": PennyLaneAdapter(adapter_context("pl-d", device="default.qubit")),
        "lightning.qubit": PennyLaneAdapter(adapter_context("pl-l", device="lightning.qubit")),
    }
    return built


def qpy_source(circuit: QuantumCircuit) -> CircuitSource:
    buffer = io.BytesIO()
    qpy.dump(circuit, buffer)
    return CircuitSource(CircuitLanguage.QPY, data=buffer.getvalue())


def run_one(adapter: QiskitAdapter, pub: SamplerPub | EstimatorPub, seed: int | None) -> PubResult:
    spec = JobSpec(backend="review", pubs=(pub,), options=JobOptions(seed=seed))
    prepared = prepare_in_process(adapter, spec, 0 if seed is None else seed)
    # Through pickle, as the payload reaches a worker process.
    outcome = adapter.execute(pickle.loads(pickle.dumps(prepared.payload)))
    return outcome.result.pubs[0]


def assert_same_distribution(got: Mapping[str, int], reference: Mapping[str, int]) -> None:
    """Two samples of one distribution: per outcome, the difference of the frequencies stays
    within Z standard deviations of a two-sample binomial difference (pooled frequency)."""
    n, m = sum(got.values()), sum(reference.values())
    for outcome in set(got) | set(reference):
        a, b = got.get(outcome, 0), reference.get(outcome, 0)
        pooled = (a + b) / (n + m)
        sigma = math.sqrt(pooled * (1 - pooled) * (1 / n + 1 / m))
        assert abs(a / n - b / m) <= Z * sigma + 1e-12, (outcome, dict(got), dict(reference))


def bell() -> QuantumCircuit:
    circuit = QuantumCircuit(2)
    circuit.h(0)
    circuit.cx(0, 1)
    return circuit


# ------------------------------------------------------------------------------- finding


@pytest.mark.parametrize("precision", [0.01, None])
@pytest.mark.parametrize("backend", EXACT)
def test_a_single_observable_with_a_precision_is_one_sampled_value(
    adapters: dict[str, QiskitAdapter], backend: str, precision: float | None
) -> None:
    # client.estimate(bell, "ZZ") sends observables_shape (): Qiskit's shape for one
    # observable. With a precision (or none, which is the default 1/64) the worker raised
    # AttributeError ('float' object has no attribute 'astype'): the job FAILED INTERNAL.
    pub = EstimatorPub(
        circuit=qpy_source(bell()),
        observables=(Observable((PauliTerm("ZZ", 1.0),)),),
        observables_shape=(),
        bindings=Bindings(),
        precision=precision,
    )
    result = run_one(adapters[backend], pub, seed=5)
    assert isinstance(result, EstimatorResult)
    # StatevectorEstimator, the user's direct call, gives shape () here too.
    direct = StatevectorEstimator(seed=5).run([(bell(), "ZZ")], precision=0.01).result()[0]
    assert result.shape == direct.data.evs.shape == ()
    used = DEFAULT_PRECISION if precision is None else precision
    assert result.precision == used
    assert float(result.standard_errors) == used
    # <ZZ> on a Bell state is 1: the draw is within Z of it.
    assert abs(float(result.expectation_values) - 1.0) <= Z * used


# ------------------------------------------------------------------ held: differential checks


@pytest.mark.parametrize("seed", [3, 5, 13])
def test_random_conditional_circuits_follow_aer_s_own_sampler(
    adapters: dict[str, QiskitAdapter], seed: int
) -> None:
    # random_circuit with conditional=True: mid-circuit measurements and if_else blocks. Aer
    # runs them seeded; Braket shot by shot (it takes no seed). Both against the distribution
    # qiskit_aer.primitives.SamplerV2 draws from the same circuit, 4000 shots each.
    from qiskit_aer import AerSimulator
    from qiskit_aer.primitives import SamplerV2

    circuit = random_circuit(4, 4, max_operands=2, measure=True, conditional=True, seed=seed)
    shots = 4000
    isa = transpile(circuit, AerSimulator(), seed_transpiler=1)
    reference = SamplerV2(seed=1).run([isa], shots=shots).result()[0].data.c.get_counts()
    for backend, job_seed in [("aer", 7), ("braket_sv", None)]:
        result = run_one(
            adapters[backend], SamplerPub(qpy_source(circuit), Bindings(), shots), job_seed
        )
        assert isinstance(result, SamplerResult)
        assert [(r.name, r.num_bits) for r in result.registers] == [("c", 4)]
        assert_same_distribution(result.registers[0].counts[0], reference)


@pytest.mark.parametrize("seed", [0, 1, 2, 4])
def test_random_circuits_match_statevector_on_every_exact_simulator(
    adapters: dict[str, QiskitAdapter], seed: int
) -> None:
    # Five qubits, gates of up to three qubits drawn from Qiskit's whole standard library:
    # exact expectation values at precision 0, and sampled outcomes against the probabilities.
    circuit = random_circuit(5, 5, max_operands=3, measure=False, seed=seed)
    rng = np.random.default_rng(seed)
    labels = ["".join(rng.choice(list("IXYZ"), 5)) for _ in range(6)]
    state = Statevector(circuit)
    ideal = [state.expectation_value(SparsePauliOp(label)).real for label in labels]
    probabilities = state.probabilities_dict()
    measured = circuit.copy()
    measured.measure_all()
    shots = 4000
    for backend, adapter in adapters.items():
        estimate = run_one(
            adapter,
            EstimatorPub(
                qpy_source(circuit),
                tuple(Observable((PauliTerm(label, 1.0),)) for label in labels),
                (6,),
                Bindings(),
                0.0,
            ),
            seed=3,
        )
        assert isinstance(estimate, EstimatorResult)
        assert estimate.expectation_values == pytest.approx(ideal, abs=1e-9), backend
        assert not estimate.standard_errors.any()
        sampled = run_one(adapter, SamplerPub(qpy_source(measured), Bindings(), shots), seed=3)
        assert isinstance(sampled, SamplerResult)
        counts = sampled.registers[0].counts[0]
        for outcome in set(counts) | set(probabilities):
            p = probabilities.get(outcome, 0.0)
            sigma = math.sqrt(shots * p * (1 - p))
            assert abs(counts.get(outcome, 0) - shots * p) <= Z * sigma + 1e-6, (backend, outcome)


def test_wide_registers_measured_out_of_order_are_aer_s_bytes(
    adapters: dict[str, QiskitAdapter],
) -> None:
    # Registers of 12, 9 and 1 bits (two bytes, two bytes, one byte per row), declared in
    # another order than written, a qubit read into all three. Deterministic: the packed rows
    # equal qiskit_aer SamplerV2's BitArray bytes, and the hard-coded bitstrings.
    from qiskit_aer import AerSimulator
    from qiskit_aer.primitives import SamplerV2

    q = QuantumRegister(10, "q")
    wide, nine, one = (
        ClassicalRegister(12, "w"),
        ClassicalRegister(9, "r9"),
        ClassicalRegister(1, "r1"),
    )
    circuit = QuantumCircuit(q, wide, nine, one)
    pattern = [1, 0, 1, 1, 0, 0, 1, 0, 1, 1]
    circuit.x([i for i, bit in enumerate(pattern) if bit])
    for i in range(9):
        circuit.measure(q[(i * 7) % 10], nine[8 - i])
    circuit.measure(q[3], one[0])
    for i in range(10):
        circuit.measure(q[i], wide[11 - i])
    direct = SamplerV2(seed=1).run([transpile(circuit, AerSimulator())], shots=8).result()[0]
    expected = {"w": "101100101100", "r9": "100010111", "r1": "1"}
    for backend, adapter in adapters.items():
        result = run_one(adapter, SamplerPub(qpy_source(circuit), Bindings(), 8), seed=2)
        assert isinstance(result, SamplerResult)
        assert [r.name for r in result.registers] == ["w", "r9", "r1"]
        for register in result.registers:
            assert register.samples is not None
            reference = getattr(direct.data, register.name)
            assert register.num_bits == reference.num_bits
            assert np.array_equal(register.samples, reference.array), (backend, register.name)
            got = BitArray(register.samples, register.num_bits).get_bitstrings()
            assert Counter(got) == {expected[register.name]: 8}, (backend, register.name)


def test_observables_3x1_broadcast_against_bindings_1x4_as_qiskit_does(
    adapters: dict[str, QiskitAdapter],
) -> None:
    # Observables of shape (3, 1) with weights, bindings of two parameters of shape (1, 4):
    # the PUB has shape (3, 4), each entry StatevectorEstimator's (exact at precision 0).
    t, u = Parameter("t"), Parameter("u")
    circuit = QuantumCircuit(3)
    circuit.h(0)
    circuit.cx(0, 1)
    circuit.ry(t, 2)
    circuit.rz(u, 1)
    circuit.rx(0.3, 0)
    circuit.cx(2, 0)
    terms = [("ZZI", 1.0), ("XIX", 0.5), ("IYZ", -2.0)]
    values = np.random.default_rng(3).uniform(-3, 3, (1, 4, 2))
    direct = StatevectorEstimator().run(
        [(circuit, [[{label: weight}] for label, weight in terms], values)]
    )
    evs = direct.result()[0].data.evs
    pub = EstimatorPub(
        qpy_source(circuit),
        tuple(Observable((PauliTerm(label, weight),)) for label, weight in terms),
        (3, 1),
        Bindings(("t", "u"), (1, 4), values),
        0.0,
    )
    for backend, adapter in adapters.items():
        result = run_one(adapter, pub, seed=1)
        assert isinstance(result, EstimatorResult)
        assert result.shape == evs.shape == (3, 4)
        assert np.allclose(result.expectation_values, evs, atol=1e-9), backend
