"""What admission charges for runs whose cost is not the batched state vector's, in process:
an IBM fake's noisy trajectories, its twirling randomizations and mitigation, and an MPS's
shot-by-shot sampling (each was admitted at a fraction of what it ran; the cost review's e2e
tests show the refusals over gRPC)."""

from __future__ import annotations

import dataclasses
from typing import Any

import pytest

from gateway.backends.aer.adapter import AerAdapter
from gateway.backends.braket.adapter import BraketAdapter
from gateway.backends.ibm import adapter as ibm
from gateway.backends.qiskit.adapter import CompiledCircuit, QiskitAdapter
from gateway.domain import costs
from gateway.domain.circuits import CircuitLanguage, CircuitSource
from gateway.domain.jobs import JobOptions, JobSpec
from tests.unit.test_aer_adapter import context as aer_context
from tests.unit.test_ibm_adapter import context as ibm_context

GHZ3 = 'OPENQASM 3.0;\ninclude "stdgates.inc";\nqubit[3] q;\nbit[3] c;\nh q[0];\n'
GHZ3 += "cx q[0], q[1];\ncx q[1], q[2];\nc = measure q;\n"


def job(**provider_options: Any) -> JobSpec:
    return JobSpec(backend="x", pubs=(), options=JobOptions(provider_options=provider_options))


@pytest.fixture(scope="module")
def manila() -> ibm.IbmAdapter:
    return ibm.IbmAdapter(ibm_context())


@pytest.fixture(scope="module")
def ghz3(manila: ibm.IbmAdapter) -> CompiledCircuit:
    return manila.compile_circuit(CircuitSource(CircuitLanguage.QASM3, GHZ3))


def test_noisy_shots_are_trajectories_up_to_2_to_the_n_then_one_density_matrix(
    manila: ibm.IbmAdapter, ghz3: CompiledCircuit
) -> None:
    assert ghz3.amplitudes == 8  # three active qubits
    ops = ghz3.operations
    trajectories = manila.sampling_work(ghz3, 1, 8, job())
    assert trajectories == costs.simulation_work(ops, 8, 1, 8, True)
    # Past 2^n shots Aer evolves the 4^n-entry density matrix once (measured: cheaper).
    density = manila.sampling_work(ghz3, 1, 9, job())
    assert density == costs.simulation_work(ops, 64, 1, 9, False, costs.DENSITY_MATRIX_RUNS)
    assert density < trajectories
    assert manila.sampling_work(ghz3, 3, 8, job()) == 3 * trajectories  # per binding


def test_twirling_randomizations_are_circuits_of_their_own(
    manila: ibm.IbmAdapter, ghz3: CompiledCircuit
) -> None:
    plain = manila.sampling_work(ghz3, 1, 1000, job())
    twirled = {"enable_gates": True, "num_randomizations": 100}
    hundred = manila.sampling_work(ghz3, 1, 1000, job(twirling=twirled))
    # 100 circuits of 10 shots each (trajectories: 10 <= 2^3 is false, so density matrices).
    one = costs.simulation_work(ghz3.operations, 64, 1, 10, False, costs.DENSITY_MATRIX_RUNS)
    assert hundred == 100 * (one + ibm._RANDOMIZATION_WORK) > plain
    by_size = {"enable_measure": True, "shots_per_randomization": 10}
    assert manila.sampling_work(ghz3, 1, 1000, job(twirling=by_size)) == hundred
    auto = {"enable_gates": True}
    per_auto = manila.sampling_work(ghz3, 1, 1000, job(twirling=auto))
    assert per_auto > plain and per_auto != hundred  # the runtime's 32
    off = {"enable_gates": False, "num_randomizations": 100}
    assert manila.sampling_work(ghz3, 1, 1000, job(twirling=off)) == plain


def test_estimator_mitigation_multiplies_the_sampled_work(
    manila: ibm.IbmAdapter, ghz3: CompiledCircuit
) -> None:
    def work(level: int | None, bases: int = 1) -> int:
        options = {} if level is None else {"resilience_level": level}
        return manila.estimation_work(ghz3, 1, 4, bases, 4096, job(**options))

    reads = costs.simulation_work(
        ghz3.operations, 8, 1, 1, False, state_passes=4 * costs.TERM_STATE_PASSES
    )
    # The runtime's estimator simulates the whole device (5 qubits, ~3 operations each), not
    # the 3 qubits the circuit uses, and samples each measurement basis apart.
    device = 1 << 5
    ops = ghz3.operations + ibm._ESTIMATOR_OPERATIONS_PER_QUBIT * 5
    on_device = dataclasses.replace(ghz3, operations=ops)
    level0 = work(0) - reads
    assert level0 == ibm._noisy_work(on_device, device, 1, 4096, 1)
    assert work(0, bases=3) - reads == 3 * level0
    # Mitigation twirls (32 circuits) and multiplies: 2x at level 1 (the default), 20x at 2.
    twirled = ibm._noisy_work(on_device, device, 1, 4096, ibm._AUTO_RANDOMIZATIONS)
    assert work(1) - reads == 2 * twirled == work(None) - reads
    assert work(2) - reads == 20 * twirled


def test_the_bases_of_an_estimators_terms_are_bounded_from_above() -> None:
    from gateway.backends.qiskit.adapter import _measurement_bases

    assert _measurement_bases(["ZZI", "IZZ", "ZII", "III"]) == 1  # diagonal: one basis
    # One letter each (with I): one basis per letter; mixed letters: one each at most.
    assert _measurement_bases(["XXI", "IXX", ("X", (3,)), "YY", "ZZ"]) == 3
    assert _measurement_bases(["XZ", "ZX", ("XY", (0, 4))]) == 3
    assert _measurement_bases([]) == 0


def test_an_mps_is_sampled_shot_by_shot() -> None:
    mps = AerAdapter(aer_context(method="matrix_product_state"))
    statevector = AerAdapter(aer_context())
    source = CircuitSource(CircuitLanguage.QASM3, GHZ3)
    entry = mps.compile_circuit(source)
    base = statevector.sampling_work(entry, 2, 1000, job())  # the plain price
    per_shot = 500 * entry.amplitudes + 100_000 * entry.num_qubits
    assert mps.sampling_work(entry, 2, 1000, job()) == base + 2 * 1000 * per_shot


def test_braket_measurements_with_a_certain_outcome_do_not_split_the_paths() -> None:
    braket = BraketAdapter(aer_context(device="braket_sv"))
    text = 'OPENQASM 3.0;\ninclude "stdgates.inc";\nqubit[3] q;\nbit[5] c;\n'
    # q[0] is measured, reset and measured again (certain), q[1] only flipped (certain), q[2]
    # measured twice in a row: two of the five measurements may split a path.
    text += "h q[0]; c[0] = measure q[0]; reset q[0]; c[1] = measure q[0]; x q[1];"
    text += "c[2] = measure q[1]; h q[2]; c[3] = measure q[2]; c[4] = measure q[2];"
    entry = braket.compile_circuit(CircuitSource(CircuitLanguage.QASM3, text))
    assert (entry.path_measurements, entry.splitting_measurements) == (5, 2)


def test_braket_branching_grows_with_paths_measurements_and_operations() -> None:
    braket = BraketAdapter(aer_context(device="braket_sv"))
    lines = ['OPENQASM 3.0;\ninclude "stdgates.inc";\nqubit[1] q;\nbit[4] c;']
    lines += [f"h q[0];\nc[{i}] = measure q[0];" for i in range(4)]
    entry = braket.compile_circuit(CircuitSource(CircuitLanguage.QASM3, "\n".join(lines)))
    # The last measurement has nothing after it, but once the circuit branches Braket applies
    # every measurement path by path: four, each after an h (each may split).
    assert entry.shot_by_shot and entry.mid_circuit_measurements == 3
    assert (entry.path_measurements, entry.splitting_measurements) == (4, 4)
    ops = entry.operations
    # One run per binding, then paths 1, 2, 4, 8 at the measurements and 16 at the end (at
    # most the shots), each evolving the circuit again; and each shot's samples and strings.
    run = costs.simulation_work(ops, 2, 2, 100, False, braket.run_costs())
    per_step = ops * (600_000 + 2 * 2_500)
    per_shot = 150_000 + 4 * 20_000
    assert braket.sampling_work(entry, 2, 100, job()) == run + 2 * (31 * per_step + 100 * per_shot)
    # Fewer shots than paths: 1, 2, 4, 5, 5.
    few = costs.simulation_work(ops, 2, 1, 5, False, braket.run_costs())
    assert braket.sampling_work(entry, 1, 5, job()) == few + 17 * per_step + 5 * per_shot
    # A circuit measured once at its end does not branch.
    ghz = braket.compile_circuit(CircuitSource(CircuitLanguage.QASM3, GHZ3))
    assert not ghz.shot_by_shot and ghz.mid_circuit_measurements == 0
    assert braket.sampling_work(ghz, 2, 100, job()) == QiskitAdapter.sampling_work(
        braket, ghz, 2, 100, job()
    )
