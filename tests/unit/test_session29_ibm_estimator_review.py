"""Review of the IBM adapter's estimator and sampler on fake devices after this session's change
that keeps an ISA circuit's physical qubits, in process (as test_session29_targets_review.py).

A circuit written on physical qubits must run on them, and its observables must be read there
once (no second application of the layout); the gateway's estimates must agree with the
runtime's own local-mode estimator on the same ISA circuit within the reported errors.
"""

from __future__ import annotations

import pickle

import numpy as np
import pytest
from qiskit import QuantumCircuit, qasm3, transpile
from qiskit.circuit import Parameter
from qiskit.quantum_info import SparsePauliOp

from gateway.backends.aer.adapter import AerAdapter
from gateway.backends.ibm.adapter import IbmAdapter
from gateway.backends.qiskit.adapter import QiskitAdapter
from gateway.domain.circuits import (
    Bindings,
    CircuitLanguage,
    CircuitSource,
    EstimatorPub,
    Observable,
    PauliTerm,
)
from gateway.domain.jobs import EstimatorResult, JobOptions, JobSpec
from tests.adapters import adapter_context, prepare_in_process
from tests.targets import active_qubits, client_target, qpy_bytes


def _observable(operator: SparsePauliOp) -> Observable:
    return Observable(tuple(PauliTerm(p, float(c.real)) for p, c in operator.to_list()))


def _adapter(kind: str, level: int) -> QiskitAdapter:
    if kind == "ibm":
        return IbmAdapter(adapter_context("ibm", backend="FakeManilaV2", optimization_level=level))
    return AerAdapter(
        adapter_context(
            "aer-noisy",
            method="density_matrix",
            noise_from="FakeManilaV2",
            optimization_level=level,
        )
    )


# Fixed here: OpenQASM 3's `$n` are physical qubits, and the importer makes a circuit only as
# wide as the highest one named. A Bell pair a user placed on Manila's $0 and $1 (a transpile
# for GetBackendTarget's Target, dumped with qasm3.dumps) is 2 qubits wide, not the device's 5,
# so it was not "already mapped": from optimization_level 2 VF2Layout moved it to qubits 3 and
# 4 (layout (3, 4)), the QPY of the very same ISA circuit stayed on 0 and 1.
@pytest.mark.parametrize("kind", ["ibm", "aer-noisy"])
def test_an_openqasm3_isa_program_keeps_the_physical_qubits_it_names(kind: str) -> None:
    adapter = _adapter(kind, 2)
    bell = QuantumCircuit(2, 2)
    bell.h(0)
    bell.cx(0, 1)
    bell.measure([0, 1], [0, 1])
    isa = transpile(bell, target=client_target(adapter, kind), initial_layout=[0, 1])
    text = qasm3.dumps(isa)
    assert "$0" in text and "$1" in text and "$4" not in text

    compiled = adapter.compile_circuit(CircuitSource(CircuitLanguage.QASM3, text=text))

    # One entry per qubit of the program as submitted, each its own physical qubit.
    assert compiled.num_qubits == 2
    assert compiled.layout == (0, 1)
    assert active_qubits(compiled.ref.circuit()) == {0, 1}


def test_an_isa_circuit_estimate_matches_the_runtimes_own_estimator_on_it() -> None:
    # Held: an ISA circuit laid out on Manila's (3, 4) and swept over a (2, 1) array of
    # bindings, against a (1, 3) array of observables laid out with apply_layout (device-wide:
    # mapped once, not through the layout again). The runtime's local-mode Estimator on the
    # same ISA circuit and the same fake device is the reference: both are sampled estimates
    # at precision 0.01 (~10^4 shots per binding), so each difference is within 5 of its
    # combined standard error (a false failure under 1e-5 per value). Readout errors are not
    # mitigated by either, so the noisy density matrix is not the reference here.
    from qiskit_aer import AerSimulator
    from qiskit_ibm_runtime.executor_estimator import Estimator
    from qiskit_ibm_runtime.fake_provider import FakeManilaV2

    adapter = _adapter("ibm", 2)
    theta, phi = Parameter("t"), Parameter("p")
    circuit = QuantumCircuit(2)
    circuit.ry(theta, 0)
    circuit.cx(0, 1)
    circuit.rx(phi, 1)
    isa = transpile(
        circuit, target=client_target(adapter, "ibm"), initial_layout=[3, 4], seed_transpiler=1
    )
    laid_out = [SparsePauliOp(label).apply_layout(isa.layout) for label in ("ZZ", "IZ", "ZI")]
    values = np.array([[0.3, 1.2], [2.0, 0.1]])
    precision = 0.01
    pub = EstimatorPub(
        CircuitSource(CircuitLanguage.QPY, data=qpy_bytes(isa)),
        tuple(_observable(o) for o in laid_out),
        (1, 3),
        Bindings(("t", "p"), (2, 1), values.reshape(-1)),
        precision=precision,
    )
    spec = JobSpec(backend="ibm", pubs=(pub,), options=JobOptions())
    prepared = prepare_in_process(adapter, spec, 9)
    assert prepared.layouts == ((0, 1, 2, 3, 4),)
    (result,) = adapter.execute(pickle.loads(pickle.dumps(prepared.payload))).result.pubs
    assert isinstance(result, EstimatorResult)
    assert result.shape == (2, 3)

    observables = np.empty((1, 3), dtype=object)
    for i, o in enumerate(laid_out):
        observables[0, i] = o
    bindings = {(theta, phi): values.reshape(2, 1, 2)}
    estimator = Estimator(
        mode=AerSimulator.from_backend(FakeManilaV2()),
        options={"simulator": {"seed_simulator": 11}},
    )
    reference = estimator.run([(isa, observables, bindings, precision)]).result()[0].data
    evs = np.asarray(result.expectation_values)
    stds = np.asarray(result.standard_errors)
    # The runtime's own errors: about the precision, none 0.
    assert np.all((stds > 0) & (stds < 2 * precision))
    tolerance = 5 * np.hypot(stds, np.asarray(reference.stds))
    assert np.all(np.abs(evs - np.asarray(reference.evs)) < tolerance)
