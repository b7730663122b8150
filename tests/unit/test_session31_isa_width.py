"""An ISA circuit transpiled for an ideal all-to-all simulator's Target, in process.

GetBackendTarget tells a client the default `aer` backend has 64 qubits (Braket's braket_sv 26,
braket_dm 13, PennyLane's devices 25): transpiling with an initial_layout for that Target widens
a Bell pair to the Target's width, every other qubit idle. Such a simulator runs the circuit
without its idle qubits (gateway.backends.qiskit.idle) and sizes its memory by what it runs;
so does a noisy Aer twin, with its device's noise on the qubits kept (gateway.backends.aer
.noise); devices keep their physical qubits. A circuit cannot make the estimate fall
below what runs: a qubit only a barrier or a delay names is left out, anything else that names
it (a measurement, a reset, a control-flow block) keeps it in the simulation and the estimate.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pytest
from qiskit import QuantumCircuit, transpile
from qiskit.circuit import Parameter
from qiskit.quantum_info import SparsePauliOp
from qiskit.transpiler import Target

from gateway.backends.aer.adapter import AerAdapter
from gateway.backends.braket.adapter import BraketAdapter
from gateway.backends.ibm.adapter import IbmAdapter
from gateway.backends.pennylane.adapter import PennyLaneAdapter
from gateway.backends.qiskit import frontend as fe
from gateway.backends.qiskit.adapter import CompiledCircuit, QiskitAdapter
from gateway.domain.circuits import (
    Bindings,
    EstimatorPub,
    Observable,
    PauliTerm,
    SamplerPub,
)
from gateway.domain.errors import InvalidArgument
from gateway.domain.jobs import JobOptions, JobSpec, SamplerResult
from tests.adapters import (
    adapter_context,
    estimate_in_process,
    execute_in_process,
    prepare_in_process,
)
from tests.targets import active_qubits, bell, client_target, qpy_source

# The ideal all-to-all simulators, by the backend kind a test names.
IDEAL: dict[str, Callable[[], QiskitAdapter]] = {
    "aer-statevector": lambda: AerAdapter(adapter_context("aer", method="statevector")),
    "aer-density-matrix": lambda: AerAdapter(adapter_context("aer", method="density_matrix")),
    "aer-mps": lambda: AerAdapter(adapter_context("aer", method="matrix_product_state")),
    "braket_sv": lambda: BraketAdapter(adapter_context("braket", device="braket_sv")),
    "braket_dm": lambda: BraketAdapter(adapter_context("braket", device="braket_dm")),
    "lightning.qubit": lambda: PennyLaneAdapter(
        adapter_context("pennylane", device="lightning.qubit")
    ),
    "default.qubit": lambda: PennyLaneAdapter(adapter_context("pennylane", device="default.qubit")),
}
SV1 = "arn:aws:braket:::device/quantum-simulator/amazon/sv1"


def _target(adapter: QiskitAdapter) -> Target:
    return client_target(adapter, adapter.context.name)


def _counts(
    adapter: QiskitAdapter, circuit: QuantumCircuit, shots: int = 2000, seed: int | None = 11
) -> dict[str, int]:
    spec = JobSpec(
        backend=adapter.context.name,
        pubs=(SamplerPub(qpy_source(circuit), Bindings(), shots),),
        options=JobOptions(seed=seed),
    )
    (result,) = execute_in_process(adapter, spec, 11)
    assert isinstance(result, SamplerResult)
    (register,) = result.registers
    return dict(register.counts[0])


def _values(
    adapter: QiskitAdapter, circuit: QuantumCircuit, observables: list[SparsePauliOp]
) -> np.ndarray:
    pub = EstimatorPub(
        qpy_source(circuit),
        tuple(
            Observable(tuple(PauliTerm(p, float(c.real)) for p, c in op.to_list()))
            for op in observables
        ),
        (len(observables),),
        Bindings(),
        precision=0.0,
    )
    return np.asarray(estimate_in_process(adapter, pub), dtype=np.float64)


def _assert_bell_counts(counts: dict[str, int], shots: int = 2000) -> None:
    # Only 00 and 11, about half each (5 sigma of 2000 fair draws is ~112).
    assert set(counts) == {"00", "11"}
    assert sum(counts.values()) == shots
    assert abs(counts["00"] - shots / 2) < 150


# Where the pair goes, on a Target `width` qubits wide: [60, 63] on aer's 64.
LAYOUTS: dict[str, Callable[[int], list[int]]] = {
    "2-3": lambda width: [2, 3],
    "last-two-reversed": lambda width: [width - 1, width - 4],
    "first-two": lambda width: [0, 1],
}


@pytest.mark.parametrize("kind", sorted(IDEAL))
@pytest.mark.parametrize("layout", sorted(LAYOUTS))
def test_a_bell_pair_laid_out_on_the_whole_target_runs_as_two_qubits(
    kind: str, layout: str
) -> None:
    adapter = IDEAL[kind]()
    target = _target(adapter)
    width = target.num_qubits
    assert width is not None
    physical = LAYOUTS[layout](width)
    isa = transpile(bell(), target=target, initial_layout=physical, seed_transpiler=7)
    assert isa.num_qubits == width
    compiled = adapter.compile_circuit(qpy_source(isa))
    assert isinstance(compiled, CompiledCircuit)
    # The compiled circuit (and the job's reported layout) keeps the user's qubits...
    assert active_qubits(compiled.ref.circuit()) == set(physical)
    assert compiled.layout == tuple(range(width))
    # ... and its state is sized as the two-qubit simulation that runs.
    two_qubits = 4 if kind in ("aer-density-matrix", "braket_dm") else 2
    if kind != "aer-mps":
        assert compiled.amplitudes == two_qubits**2
    assert adapter.state_size(bell(), True)[0] == compiled.memory_bytes
    _assert_bell_counts(_counts(adapter, isa))


def test_the_64_qubit_aer_job_reports_two_qubits_and_a_two_qubit_state() -> None:
    adapter = IDEAL["aer-statevector"]()
    isa = transpile(bell(), target=_target(adapter), initial_layout=[60, 63], seed_transpiler=7)
    spec = JobSpec(backend="aer", pubs=(SamplerPub(qpy_source(isa), Bindings(), 100),))
    prepared = prepare_in_process(adapter, spec, 3)
    # A tenant's max_qubits counts the qubits used; admission the state of 4 amplitudes.
    assert prepared.qubits == 2
    assert prepared.memory_bytes == fe.statevector_bytes(2)
    assert prepared.layouts == (tuple(range(64)),)


# Bell pair on virtual qubits (0, 1), laid out on physical (63, 2) (0 -> 63): the observables
# are written on the virtual qubits and laid out with isa.layout, as Qiskit's users do. Then
# terms on physical qubits the circuit never touches: such a qubit is |0>.
_VIRTUAL = [("ZZ", 1.0), ("XX", 1.0), ("YY", 1.0), ("IZ", 1.0), ("XI", 1.0)]
_VIRTUAL_VALUES = [1.0, 1.0, -1.0, 0.0, 0.0]


def _idle_terms(width: int) -> tuple[list[tuple[str, list[int], float]], list[float]]:
    idle_a, idle_b = 5, width - 3
    terms = [
        ("Z", [idle_a], 1.0),  # <0|Z|0> = 1
        ("X", [idle_a], 1.0),  # <0|X|0> = 0
        ("Y", [idle_b], 1.0),  # 0
        ("ZZ", [idle_a, idle_b], 1.0),  # 1
        ("ZZ", [2, width - 1], 1.0),  # the pair's <ZZ> = 1
        ("ZZZ", [2, width - 1, idle_a], 0.5),  # <ZZ> * 1 * 0.5
        ("XXZ", [2, width - 1, idle_b], 1.0),  # <XX> * 1
        ("XXX", [2, width - 1, idle_b], 1.0),  # <XX> * 0
        ("Z", [2], 1.0),  # a Bell marginal: 0
    ]
    return terms, [1.0, 0.0, 0.0, 1.0, 1.0, 0.5, 1.0, 0.0, 0.0]


@pytest.mark.parametrize("kind", sorted(IDEAL))
def test_observables_laid_out_by_isa_layout_give_the_bell_pairs_values(kind: str) -> None:
    adapter = IDEAL[kind]()
    target = _target(adapter)
    width = target.num_qubits
    assert width is not None
    isa = transpile(
        bell(measured=False), target=target, initial_layout=[width - 1, 2], seed_transpiler=7
    )
    observables = [
        SparsePauliOp.from_list([(label, coefficient)]).apply_layout(isa.layout)
        for label, coefficient in _VIRTUAL
    ]
    idle_terms, idle_values = _idle_terms(width)
    observables += [SparsePauliOp.from_sparse_list([term], width) for term in idle_terms]
    expected = _VIRTUAL_VALUES + idle_values
    np.testing.assert_allclose(_values(adapter, isa, observables), expected, atol=1e-9)


@pytest.mark.parametrize("kind", ["aer-statevector", "braket_sv", "default.qubit"])
def test_a_swept_rotation_on_the_last_qubit_reads_its_cosine(kind: str) -> None:
    # Parameters survive the renumbering: rx(theta) on the Target's last qubit, <Z> = cos.
    adapter = IDEAL[kind]()
    target = _target(adapter)
    width = target.num_qubits
    assert width is not None
    theta = Parameter("theta")
    circuit = QuantumCircuit(1)
    circuit.rx(theta, 0)
    isa = transpile(circuit, target=target, initial_layout=[width - 1], seed_transpiler=7)
    observable = SparsePauliOp("Z").apply_layout(isa.layout)
    angles = np.array([[0.0], [0.5], [1.0], [np.pi]])
    pub = EstimatorPub(
        qpy_source(isa),
        (Observable(tuple(PauliTerm(p, float(c.real)) for p, c in observable.to_list())),),
        (),
        Bindings(("theta",), (4,), angles),
        precision=0.0,
    )
    np.testing.assert_allclose(estimate_in_process(adapter, pub), np.cos(angles[:, 0]), atol=1e-9)


def test_a_noisy_braket_dm_applies_its_noise_to_the_pair_wherever_it_was_laid() -> None:
    # braket_dm's noise options act on every qubit alike (after each gate, before each read):
    # the pair on qubits 9 and 12 is the pair on 0 and 1, exactly, noise included.
    adapter = BraketAdapter(
        adapter_context(
            "braket-noisy",
            device="braket_dm",
            noise={"depolarizing_2q": 0.05, "readout_flip": 0.1},
        )
    )
    assert adapter.compacts_idle_qubits()
    target = _target(adapter)
    counts = [
        _counts(
            adapter,
            transpile(bell(), target=target, initial_layout=layout, seed_transpiler=7),
        )
        for layout in ([0, 1], [9, 12])
    ]
    assert counts[0] == counts[1]
    # The noise is there: the pair disagrees in some shots.
    assert counts[0].get("01", 0) + counts[0].get("10", 0) > 100


# ------------------------------------------------------------------------ hostile circuits


def _wide(width: int = 64) -> QuantumCircuit:
    return QuantumCircuit(width, 2)


def test_a_qubit_touched_only_in_a_nested_block_is_simulated_and_sized() -> None:
    adapter = IDEAL["aer-statevector"]()
    circuit = _wide()
    circuit.h(2)
    circuit.measure(2, 0)
    with circuit.for_loop(range(1)), circuit.if_test((circuit.clbits[0], 1)):
        circuit.x(63)
    circuit.measure(63, 1)
    compiled = adapter.compile_circuit(qpy_source(circuit))
    # Qubits 2 and 63: a state of 4 amplitudes, and qubit 63 follows qubit 2 in every shot.
    assert compiled.amplitudes == 4
    _assert_bell_counts(_counts(adapter, circuit))
    # Named nowhere but in the block, qubit 63 still counts.
    unmeasured = circuit.copy()
    unmeasured.data.pop()
    assert active_qubits(unmeasured) == {2, 63}
    assert adapter.compile_circuit(qpy_source(unmeasured)).amplitudes == 4


def test_forty_qubits_named_only_inside_nested_blocks_are_refused_for_their_memory() -> None:
    adapter = IDEAL["aer-statevector"]()
    circuit = _wide()
    circuit.h(0)
    circuit.measure(0, 0)
    with circuit.for_loop(range(1)), circuit.if_test((circuit.clbits[0], 1)):
        for qubit in range(24, 64):
            circuit.x(qubit)
    with pytest.raises(InvalidArgument) as refused:
        adapter.compile_circuit(qpy_source(circuit))
    assert refused.value.reason == "MEMORY_BUDGET_EXCEEDED"
    assert refused.value.metadata["estimateBytes"] == str(fe.statevector_bytes(41))


@pytest.mark.parametrize("instruction", ["measure", "reset", "if_else"])
def test_qubits_only_measured_reset_or_named_by_a_block_count_towards_memory(
    instruction: str,
) -> None:
    # Each keeps its qubits in the circuit the simulator gets: 40 of them is a 2^40 state,
    # refused, though a Bell pair is all the gates make.
    adapter = IDEAL["aer-statevector"]()
    circuit = QuantumCircuit(64, 64)
    circuit.h(0)
    circuit.cx(0, 1)
    circuit.measure(0, 0)
    for qubit in range(24, 62):
        if instruction == "measure":
            circuit.measure(qubit, qubit)
        elif instruction == "reset":
            circuit.reset(qubit)
        else:
            # A block that names the qubit with nothing but a barrier on it.
            with circuit.if_test((circuit.clbits[0], 1)):
                circuit.barrier(qubit)
    with pytest.raises(InvalidArgument) as refused:
        adapter.compile_circuit(qpy_source(circuit))
    assert refused.value.reason == "MEMORY_BUDGET_EXCEEDED"
    assert refused.value.metadata["estimateBytes"] == str(fe.statevector_bytes(40))


def test_qubits_only_a_barrier_or_a_delay_names_are_left_out() -> None:
    adapter = IDEAL["aer-statevector"]()
    circuit = _wide()
    circuit.h(2)
    circuit.barrier()
    for qubit in range(10, 64):
        circuit.delay(16, qubit, unit="dt")
    circuit.cx(2, 3)
    circuit.barrier(3, 40, 63)
    circuit.measure([2, 3], [0, 1])
    compiled = adapter.compile_circuit(qpy_source(circuit))
    assert compiled.amplitudes == 4
    _assert_bell_counts(_counts(adapter, circuit))


# ------------------------------------------------------------------------ physical qubits


def test_a_noisy_aer_twin_simulates_only_the_physical_qubits_a_circuit_uses() -> None:
    adapter = AerAdapter(
        adapter_context("aer-noisy", method="density_matrix", noise_from="FakeManilaV2")
    )
    assert adapter.compacts_idle_qubits()
    isa = transpile(bell(), target=_target(adapter), initial_layout=[3, 4], seed_transpiler=7)
    compiled = adapter.compile_circuit(qpy_source(isa))
    # Two of Manila's five qubits in the density matrix, with their own noise (next test).
    assert compiled.amplitudes == 4**2
    assert adapter.simulated(compiled.ref.circuit()).kept == (3, 4)


def test_a_noisy_aer_twin_answers_the_noise_of_the_qubits_the_user_chose() -> None:
    from qiskit_aer import AerSimulator
    from qiskit_aer.noise import NoiseModel
    from qiskit_ibm_runtime.fake_provider import FakeManilaV2

    adapter = AerAdapter(
        adapter_context("aer-noisy", method="density_matrix", noise_from="FakeManilaV2")
    )
    simulator = AerSimulator(
        method="density_matrix", noise_model=NoiseModel.from_backend(FakeManilaV2())
    )
    values = []
    for layout in ([3, 4], [0, 1]):
        isa = transpile(
            bell(measured=False), target=_target(adapter), initial_layout=layout, seed_transpiler=3
        )
        observable = SparsePauliOp.from_list([("ZZ", 1.0), ("XX", 1.0)]).apply_layout(isa.layout)
        reference_circuit = isa.copy()
        reference_circuit.save_expectation_value(observable, range(isa.num_qubits))
        reference = float(simulator.run(reference_circuit).result().data()["expectation_value"])
        pub = EstimatorPub(
            qpy_source(isa),
            (Observable(tuple(PauliTerm(p, float(c.real)) for p, c in observable.to_list())),),
            (),
            Bindings(),
            precision=0.0,
        )
        np.testing.assert_allclose(estimate_in_process(adapter, pub), reference, atol=1e-9)
        values.append(reference)
    # The two pairs' noise differs: renumbering qubits 3 and 4 to 0 and 1 would show.
    assert abs(values[0] - values[1]) > 1e-3


def test_a_noisy_aer_twin_of_a_wide_device_runs_a_bell_pair() -> None:
    # Was refused: FakeGuadalupeV2's 16 qubits in a density matrix are 16 * 4^16 bytes = 64 GiB,
    # and every circuit transpiled for its coupled target is that wide.
    adapter = AerAdapter(
        adapter_context("aer-noisy", method="density_matrix", noise_from="FakeGuadalupeV2")
    )
    isa = transpile(bell(), target=_target(adapter), initial_layout=[0, 1], seed_transpiler=7)
    counts = _counts(adapter, isa)
    assert counts.get("00", 0) + counts.get("11", 0) > 1600


def test_devices_keep_their_physical_qubits() -> None:
    ibm = IbmAdapter(adapter_context("ibm", backend="FakeManilaV2"))
    cloud = BraketAdapter(
        adapter_context("sv1", device=SV1, region="us-east-1", s3_bucket="results")
    )
    assert not ibm.compacts_idle_qubits()
    assert not cloud.compacts_idle_qubits()
    isa = transpile(bell(), target=_target(ibm), initial_layout=[3, 4], seed_transpiler=7)
    assert ibm.simulated(isa).circuit is isa
    assert cloud.simulated(isa).circuit is isa
    for kind in IDEAL:
        assert IDEAL[kind]().compacts_idle_qubits()
