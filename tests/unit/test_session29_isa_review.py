"""Review of the ISA path (bd054ff: a circuit already on a coupled target's qubits keeps the
trivial layout) and of the Targets GetBackendTarget advertises against what each backend runs,
in process with the adapters.

Each finding was a strict xfail until fixed.
"""

from __future__ import annotations

import pytest
from qiskit import QuantumCircuit, transpile
from qiskit.transpiler import generate_preset_pass_manager

from gateway.backends.aer.adapter import AerAdapter
from gateway.backends.ibm.adapter import IbmAdapter
from gateway.domain.circuits import CircuitLanguage, CircuitSource
from tests.adapters import adapter_context
from tests.targets import client_target, qpy_bytes

SEED = 7


def _two_qubit_gates(circuit: QuantumCircuit) -> int:
    return sum(1 for instruction in circuit.data if len(instruction.qubits) == 2)


# A strict xfail until _already_mapped refused to pin a circuit with a gate on three or more
# qubits: CheckMap looks at two-qubit instructions only, so a circuit as wide as the device with
# a ccx on uncoupled qubits counted as already mapped, was pinned to the trivial layout and
# routed from there (18 cx on FakeManilaV2 at level 1 where the preset layout stage needs 9).
@pytest.mark.parametrize("in_block", [False, True])
def test_a_full_width_circuit_with_a_three_qubit_gate_is_laid_out_not_pinned(
    in_block: bool,
) -> None:
    # A 5-qubit circuit for a 5-qubit device, written with virtual qubits (as `qubit[5] q;`):
    # the ccx is no instruction of the device, so the circuit is not an ISA circuit and the
    # layout stage should place it as it places any other. Pinned, every extra swap is three
    # more noisy cx on a device (or its noisy Aer twin). Inside an if_else too: CheckMap
    # recurses into blocks but skips their 3-qubit gates the same way.
    adapter = IbmAdapter(
        adapter_context("ibm", backend="FakeManilaV2", optimization_level=1, seed_transpiler=SEED)
    )
    circuit = QuantumCircuit(5, 2)
    circuit.h(0)
    circuit.measure(0, 1)
    if in_block:
        with circuit.if_test((circuit.clbits[1], 1)):
            circuit.ccx(0, 2, 4)
    else:
        circuit.ccx(0, 2, 4)
    circuit.measure(4, 0)

    compiled = adapter.compile_circuit(CircuitSource(CircuitLanguage.QPY, data=qpy_bytes(circuit)))

    # What the same preset pass manager makes of it without a pinned layout.
    reference = generate_preset_pass_manager(
        optimization_level=1, target=adapter.qiskit_target(), seed_transpiler=SEED
    ).run(circuit)
    transpiled = compiled.ref.circuit()
    assert _count_cx(transpiled) <= _count_cx(reference)


def _count_cx(circuit: QuantumCircuit) -> int:
    """Two-qubit gates, those inside control-flow blocks included."""
    total = 0
    for instruction in circuit.data:
        blocks = getattr(instruction.operation, "blocks", ())
        total += sum(_count_cx(block) for block in blocks)
        if not blocks and len(instruction.qubits) == 2:
            total += 1
    return total


def test_an_isa_circuit_with_control_flow_keeps_its_qubits_and_an_uncoupled_one_is_routed() -> None:
    # What held: CheckMap looks inside blocks. A cx on coupled qubits 3, 4 under an if_else
    # keeps the trivial layout; a cx on uncoupled 0, 4 under one is laid out and routed, and
    # every two-qubit gate of the result (in the block too) sits on a coupled pair.
    adapter = IbmAdapter(
        adapter_context("ibm", backend="FakeManilaV2", optimization_level=2, seed_transpiler=SEED)
    )
    coupled = set(adapter.qiskit_target().build_coupling_map().get_edges())
    for pair, pinned in (((3, 4), True), ((0, 4), False)):
        circuit = QuantumCircuit(5, 2)
        circuit.h(pair[0])
        circuit.measure(pair[0], 0)
        with circuit.if_test((circuit.clbits[0], 1)):
            circuit.cx(*pair)
        circuit.measure(pair[1], 1)
        compiled = adapter.compile_circuit(
            CircuitSource(CircuitLanguage.QPY, data=qpy_bytes(circuit))
        )
        if pinned:
            assert compiled.layout == (0, 1, 2, 3, 4)
        transpiled = compiled.ref.circuit()
        assert _pairs(transpiled) <= coupled


def _pairs(circuit: QuantumCircuit) -> set[tuple[int, int]]:
    """The physical pairs two-qubit gates act on (blocks' qubits are the circuit's, by
    position, in a transpiled circuit's blocks as Qiskit builds them)."""
    pairs: set[tuple[int, int]] = set()
    for instruction in circuit.data:
        operation = instruction.operation
        outer = [circuit.find_bit(q).index for q in instruction.qubits]
        for block in getattr(operation, "blocks", ()):
            pairs |= {(outer[a], outer[b]) for a, b in _pairs(block)}
        if not getattr(operation, "blocks", ()) and len(instruction.qubits) == 2:
            a, b = (circuit.find_bit(q).index for q in instruction.qubits)
            pairs.add((a, b))
    return pairs


# A strict xfail until ACCEPTED_INSTRUCTION_NAMES listed break_loop and continue_loop: the
# Target GetBackendTarget gave for `aer` left them out, so a client's transpile of a loop with
# `break` failed ("Unable to translate ... break_loop") though the gateway compiles and runs it
# (README: `break` and `continue` run inside loops).
def test_the_aer_target_lets_a_client_transpile_a_loop_with_break_and_continue() -> None:
    adapter = AerAdapter(adapter_context("aer", method="statevector", num_qubits=4))
    circuit = QuantumCircuit(2, 2)
    circuit.h(0)
    circuit.measure(0, 0)
    with circuit.for_loop(range(3)):
        circuit.x(1)
        with circuit.if_test((circuit.clbits[0], 1)):
            circuit.break_loop()
        circuit.continue_loop()
    circuit.measure(1, 1)
    # The gateway takes it as sent.
    adapter.compile_circuit(CircuitSource(CircuitLanguage.QPY, data=qpy_bytes(circuit)))

    isa = transpile(circuit, target=client_target(adapter, "aer"), seed_transpiler=SEED)
    compiled = adapter.compile_circuit(CircuitSource(CircuitLanguage.QPY, data=qpy_bytes(isa)))
    assert "for_loop" in compiled.ref.circuit().count_ops()


# A strict xfail until IbmAdapter.state_size sized the parsed circuit by the qubits it uses
# too (it sized only the transpiled one so): an ISA circuit transpiled for FakeBrisbane's Target
# is 127 qubits wide, and a Bell pair on qubits 0 and 1 was refused MEMORY_LIMIT_EXCEEDED
# (2.4e21 EiB) before it was transpiled, while local mode simulates only its 2 qubits.
def test_an_isa_circuit_for_a_127_qubit_device_is_sized_by_the_qubits_it_uses() -> None:
    # The workflow bd054ff serves (transpile locally for the device's Target, submit the ISA
    # circuit) on the device sizes IBM has today: Qiskit lays a circuit out on every qubit of
    # the Target, so every ISA circuit is as wide as the device.
    adapter = IbmAdapter(
        adapter_context("ibm", backend="FakeBrisbane", optimization_level=2, seed_transpiler=SEED)
    )
    isa = transpile(
        _bell(), target=client_target(adapter, "ibm"), initial_layout=[0, 1], seed_transpiler=3
    )
    assert isa.num_qubits == 127

    compiled = adapter.compile_circuit(CircuitSource(CircuitLanguage.QPY, data=qpy_bytes(isa)))

    # Kept on the qubits the user chose, and sized as the 2-qubit simulation it is.
    assert compiled.layout == tuple(range(127))
    assert compiled.memory_bytes <= 1 << 20


def _bell() -> QuantumCircuit:
    circuit = QuantumCircuit(2)
    circuit.h(0)
    circuit.cx(0, 1)
    circuit.measure_all()
    return circuit
