"""A noisy Aer twin simulates only the physical qubits a circuit uses, with their own noise.

A circuit transpiled for a device is as wide as the device. The twin simulates it without the
qubits only barriers and delays name, under Aer's noise model of the device restricted to the
qubits kept (gateway.backends.aer.noise). Held here against Aer's own simulator of the whole
device on the whole circuit: the same expectation values (to rounding) and the same shots for
the same seed, wherever the circuit was laid; and a twin of a device too wide for a density
matrix (16 and 127 qubits) runs what fits.
"""

from __future__ import annotations

import math
from collections.abc import Iterator

import numpy as np
import pytest
from qiskit import QuantumCircuit, transpile
from qiskit.circuit import Delay, Parameter
from qiskit.quantum_info import SparsePauliOp
from qiskit.transpiler import Target
from qiskit_aer import AerSimulator
from qiskit_ibm_runtime.fake_provider import FakeManilaV2, FakeSherbrooke

from gateway.backends.aer.adapter import AerAdapter
from gateway.backends.aer.noise import restricted_target
from gateway.backends.qiskit.adapter import QiskitPayload, SamplerTask
from gateway.domain.circuits import Bindings, EstimatorPub, SamplerPub
from gateway.domain.errors import InvalidArgument
from gateway.domain.jobs import EstimatorResult, JobOptions, JobSpec, SamplerResult
from tests.adapters import adapter_context, execute_in_process, prepare_in_process
from tests.targets import bell, qpy_source
from tests.unit.test_session29_ibm_estimator_review import _observable

SHOTS = 4000
SEED = 23


def _twin(device: str) -> AerAdapter:
    return AerAdapter(adapter_context("aer-noisy", method="density_matrix", noise_from=device))


@pytest.fixture(scope="module")
def manila() -> AerAdapter:
    return _twin("FakeManilaV2")


@pytest.fixture(scope="module")
def whole_manila() -> AerSimulator:
    """Aer's simulator of the whole device: what the twin must agree with."""
    return AerSimulator.from_backend(FakeManilaV2(), method="density_matrix")


def _with_delay(isa: QuantumCircuit, physical: int, duration: int) -> QuantumCircuit:
    """`isa` with a delay (in dt) on physical qubit `physical` before its measurements."""
    out = isa.copy_empty_like()
    placed = False
    for instruction in isa.data:
        if instruction.operation.name == "measure" and not placed:
            out.append(Delay(duration, "dt"), [isa.qubits[physical]])
            placed = True
        out.append(instruction)
    if not placed:
        out.append(Delay(duration, "dt"), [isa.qubits[physical]])
    return out


def _programs(target: Target) -> Iterator[tuple[str, QuantumCircuit, int]]:
    """Unmeasured circuits transpiled for `target`, laid on different physical qubits, with
    long delays on a kept qubit (relaxation) and on an idle one (left out); and the number of
    physical qubits each uses."""
    for layout in ([3, 4], [1, 0], [2, 3]):
        ghz = QuantumCircuit(2)
        ghz.ry(1.1, 0)
        ghz.cx(0, 1)
        ghz.sx(1)
        isa = transpile(ghz, target=target, initial_layout=layout, seed_transpiler=5)
        idle = next(q for q in range(5) if q not in layout)
        delayed = _with_delay(_with_delay(isa, layout[0], 40_000), idle, 40_000)
        yield f"pair-{layout}", delayed, 2
    three = QuantumCircuit(3)
    three.h(0)
    three.cx(0, 2)  # not coupled on Manila's line at [4, 3, 1]: routed through a swap
    three.rx(0.7, 1)
    three.cx(1, 2)
    # Routed through physical qubit 2: four qubits in use.
    routed = transpile(three, target=target, initial_layout=[4, 3, 1], seed_transpiler=5)
    yield "routed-three", routed, 4


def _compiled(adapter: AerAdapter, isa: QuantumCircuit) -> QuantumCircuit:
    """The circuit the twin compiles `isa` to: scheduled for the device, so every qubit's idle
    time is a delay its relaxation acts on (on the qubits left out too, where it does nothing)."""
    return adapter.compile_circuit(qpy_source(isa)).ref.circuit()


def _observables(isa: QuantumCircuit) -> list[SparsePauliOp]:
    width = isa.layout.final_index_layout() if isa.layout is not None else None
    assert width is not None
    n = len(width)
    labels = ["Z" * n, "X" * n, "Z" + "I" * (n - 1), "I" * (n - 1) + "Y", "XZ" + "I" * (n - 2)]
    return [SparsePauliOp(label).apply_layout(isa.layout) for label in labels]


def test_the_restricted_target_renumbers_qubits_and_keeps_their_properties() -> None:
    whole = FakeManilaV2().target
    kept = (4, 3, 1)
    part = restricted_target(whole, kept)
    assert part.num_qubits == 3
    assert part.dt == whole.dt
    for new, old in enumerate(kept):
        assert part.qubit_properties[new].t1 == whole.qubit_properties[old].t1
        assert part["measure"][(new,)].error == whole["measure"][(old,)].error
        assert part["sx"][(new,)].error == whole["sx"][(old,)].error
    # Manila is a line 0-1-2-3-4: of the kept qubits only 4-3 are coupled.
    assert set(part["cx"]) == {(0, 1), (1, 0)}
    assert part["cx"][(0, 1)].error == whole["cx"][(4, 3)].error
    # Control flow stays available on every qubit.
    everywhere = {n for n in whole.operation_names if whole.qargs_for_operation_name(n) is None}
    assert "if_else" in everywhere
    assert everywhere <= set(part.operation_names)
    assert all(part.qargs_for_operation_name(n) is None for n in everywhere)


@pytest.mark.parametrize("index", range(4))
def test_expectation_values_are_those_of_the_whole_device(
    manila: AerAdapter, whole_manila: AerSimulator, index: int
) -> None:
    name, isa, width = list(_programs(manila.qiskit_target()))[index]
    observables = _observables(isa)
    compiled = manila.compile_circuit(qpy_source(isa))
    assert compiled.amplitudes == 4**width, name
    pub = EstimatorPub(
        qpy_source(isa),
        tuple(_observable(o) for o in observables),
        (len(observables),),
        Bindings(),
        precision=0.0,
    )
    spec = JobSpec(backend="aer-noisy", pubs=(pub,), options=JobOptions())
    (result,) = execute_in_process(manila, spec, 5)
    assert isinstance(result, EstimatorResult)
    reference = _compiled(manila, isa)
    for i, observable in enumerate(observables):
        reference.save_expectation_value(observable, range(isa.num_qubits), label=f"o{i}")
    data = whole_manila.run(reference, enable_truncation=False).result().data()
    expected = [float(data[f"o{i}"].real) for i in range(len(observables))]
    np.testing.assert_allclose(result.expectation_values, expected, atol=1e-10, err_msg=name)


def test_the_noise_is_each_physical_qubits_own(
    manila: AerAdapter, whole_manila: AerSimulator
) -> None:
    # An excited qubit left to relax for 40,000 dt reads <Z> by its own T1: renumbering the
    # kept qubit to 0 would give every qubit qubit 0's value.
    values = []
    for physical in range(5):
        circuit = QuantumCircuit(1)
        circuit.x(0)
        isa = transpile(
            circuit, target=manila.qiskit_target(), initial_layout=[physical], seed_transpiler=5
        )
        isa = _with_delay(isa, physical, 40_000)
        observable = SparsePauliOp("Z").apply_layout(isa.layout)
        pub = EstimatorPub(
            qpy_source(isa),
            (_observable(observable),),
            (),
            Bindings(),
            precision=0.0,
        )
        (result,) = execute_in_process(
            manila, JobSpec(backend="aer-noisy", pubs=(pub,), options=JobOptions()), 5
        )
        assert isinstance(result, EstimatorResult)
        reference = _compiled(manila, isa)
        reference.save_expectation_value(observable, range(isa.num_qubits))
        expected = whole_manila.run(reference, enable_truncation=False).result().data()
        value = float(np.asarray(result.expectation_values).reshape(-1)[0])
        assert math.isclose(value, float(expected["expectation_value"].real), abs_tol=1e-10)
        values.append(value)
    # Exact values (no sampling): Manila's five T1s spread them by ~0.04.
    assert max(values) - min(values) > 0.02, values


def _sampled(
    adapter: AerAdapter, circuit: QuantumCircuit, shots: int, seed: int
) -> tuple[dict[str, int], int]:
    """The twin's counts for `circuit` in a job of `seed`, and the seed Aer was given for them."""
    spec = JobSpec(
        backend=adapter.context.name,
        pubs=(SamplerPub(qpy_source(circuit), Bindings(), shots),),
        options=JobOptions(seed=seed),
    )
    prepared = prepare_in_process(adapter, spec, seed)
    assert isinstance(prepared.payload, QiskitPayload)
    (task,) = prepared.payload.tasks
    assert isinstance(task, SamplerTask)
    (result,) = adapter.execute(prepared.payload).result.pubs
    assert isinstance(result, SamplerResult)
    (register,) = result.registers
    return dict(register.counts[0]), task.seed


def _measured_programs(target: Target) -> Iterator[tuple[str, QuantumCircuit]]:
    for layout in ([3, 4], [1, 0]):
        yield (
            f"bell-{layout}",
            transpile(bell(), target=target, initial_layout=layout, seed_transpiler=5),
        )
    dynamic = QuantumCircuit(2, 2)
    dynamic.h(0)
    dynamic.measure(0, 0)
    with dynamic.if_test((dynamic.clbits[0], 1)):
        dynamic.x(1)
    dynamic.reset(0)
    dynamic.measure([0, 1], [0, 1])
    yield "dynamic", transpile(dynamic, target=target, initial_layout=[2, 1], seed_transpiler=5)


@pytest.mark.parametrize("index", range(3))
def test_shots_are_those_of_the_whole_device_for_the_same_seed(
    manila: AerAdapter, whole_manila: AerSimulator, index: int
) -> None:
    # Aer's own simulator of the whole device, run the usual way (its own truncation on where
    # it applies): readout errors act on the shots, so these are noisy counts, not a Bell
    # pair's two outcomes.
    name, isa = list(_measured_programs(manila.qiskit_target()))[index]
    got, seed = _sampled(manila, isa, SHOTS, SEED)
    expected = (
        whole_manila.run(_compiled(manila, isa), shots=SHOTS, seed_simulator=seed)
        .result()
        .get_counts()
    )
    assert got == dict(expected), name
    assert len(got) > 2, name


def test_a_parametrised_circuit_binds_on_the_kept_qubits(
    manila: AerAdapter, whole_manila: AerSimulator
) -> None:
    theta = Parameter("theta")
    circuit = QuantumCircuit(2)
    circuit.ry(theta, 0)
    circuit.cx(0, 1)
    isa = transpile(
        circuit, target=manila.qiskit_target(), initial_layout=[4, 3], seed_transpiler=5
    )
    observable = SparsePauliOp("ZZ").apply_layout(isa.layout)
    values = np.array([[0.0], [0.9], [math.pi]])
    pub = EstimatorPub(
        qpy_source(isa),
        (_observable(observable),),
        (),
        Bindings(("theta",), (3,), values),
        precision=0.0,
    )
    (result,) = execute_in_process(
        manila, JobSpec(backend="aer-noisy", pubs=(pub,), options=JobOptions()), 5
    )
    assert isinstance(result, EstimatorResult)
    for row, got in zip(values, np.asarray(result.expectation_values).reshape(-1), strict=True):
        compiled = _compiled(manila, isa)
        reference = compiled.assign_parameters({compiled.parameters[0]: row[0]})
        reference.save_expectation_value(observable, range(isa.num_qubits))
        data = whole_manila.run(reference, enable_truncation=False).result().data()
        assert math.isclose(float(got), float(data["expectation_value"].real), abs_tol=1e-10)


@pytest.mark.parametrize(
    ("device", "pair"), [("FakeGuadalupeV2", [12, 15]), ("FakeSherbrooke", [100, 110])]
)
def test_a_twin_of_a_device_too_wide_for_a_density_matrix_runs_a_bell_pair(
    device: str, pair: list[int]
) -> None:
    adapter = _twin(device)
    isa = transpile(bell(), target=adapter.qiskit_target(), initial_layout=pair, seed_transpiler=5)
    assert isa.num_qubits > 13  # 4^14 * 16 bytes: beyond any density matrix here
    compiled = adapter.compile_circuit(qpy_source(isa))
    assert compiled.amplitudes == 4**2
    counts, _ = _sampled(adapter, isa, SHOTS, SEED)
    assert counts.get("00", 0) + counts.get("11", 0) > 0.8 * SHOTS
    assert len(counts) > 2  # the device's noise, not an ideal pair


def test_a_circuit_using_the_whole_wide_device_is_still_refused_for_its_size() -> None:
    adapter = _twin("FakeGuadalupeV2")
    ghz = QuantumCircuit(16)
    ghz.h(0)
    for q in range(15):
        ghz.cx(q, q + 1)
    ghz.measure_all()
    isa = transpile(ghz, target=adapter.qiskit_target(), seed_transpiler=5)
    with pytest.raises(InvalidArgument) as refused:
        adapter.compile_circuit(qpy_source(isa))
    assert refused.value.reason == "MEMORY_BUDGET_EXCEEDED", refused.value


def test_the_restricted_target_keeps_an_ecr_pair_in_the_devices_direction() -> None:
    # Sherbrooke's target is 127 qubits of ECR couplings: the restricted target of a coupled
    # pair keeps that pair's ECR in the direction the device has it.
    whole = FakeSherbrooke().target
    a, b = next(iter(whole["ecr"]))
    part = restricted_target(whole, (b, a))
    assert set(part["ecr"]) == {(1, 0)}
    assert part["ecr"][(1, 0)].error == whole["ecr"][(a, b)].error
