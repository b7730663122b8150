"""Backend targets, in process: a Qiskit Target -> the gateway's domain target -> the
BackendTarget message (through its wire bytes) -> the client's Qiskit Target, compared with the
original; and what the Aer adapter's target really lists.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest
from qgateway.qiskit_target import to_target
from qgateway.v1 import backend_pb2
from qiskit import QuantumCircuit
from qiskit.circuit.library import get_standard_gate_name_mapping
from qiskit.transpiler import Target
from qiskit_ibm_runtime.fake_provider import FakeManilaV2

from gateway.api import backend_codec
from gateway.backends.aer.adapter import AerAdapter
from gateway.backends.base import AdapterContext, CircuitLimits
from gateway.backends.qiskit.frontend import ACCEPTED_INSTRUCTION_NAMES
from gateway.backends.qiskit.target import from_qiskit_target
from gateway.domain.backends import BackendLimits
from gateway.domain.circuits import CircuitLanguage, CircuitSource
from gateway.domain.errors import InvalidArgument
from tests.targets import every_instruction, operation_names, qpy_bytes

CONTROL_FLOW = {"if_else", "while_loop", "for_loop", "switch_case", "break_loop", "continue_loop"}


def _wire(message: backend_pb2.BackendTarget) -> backend_pb2.BackendTarget:
    return backend_pb2.BackendTarget.FromString(message.SerializeToString())


def _props(target: Target, name: str) -> dict[Any, tuple[float | None, float | None]]:
    return {
        qargs: (None, None) if p is None else (p.error, p.duration)
        for qargs, p in target[name].items()
    }


@pytest.fixture(scope="module")
def manila() -> Any:
    return FakeManilaV2()


def test_fake_manila_round_trips_exactly(manila: Any) -> None:
    original: Target = manila.target
    calibrated = manila.properties().last_update_date
    domain = from_qiskit_target(original, calibration_time=calibrated)
    message = _wire(backend_codec.encode_target("fake_manila", domain))
    rebuilt = to_target(message)

    assert message.name == "backends/fake_manila/target"
    # Every instruction of Manila is one the gateway accepts (switch_case too, since the front
    # end reads OpenQASM 3 `switch`): all are passed on.
    assert "switch_case" in original.operation_names
    expected_names = set(original.operation_names)
    assert set(rebuilt.operation_names) == expected_names
    assert [i.name for i in message.instructions] == sorted(expected_names)
    for name in expected_names:
        assert set(rebuilt[name]) == set(original[name]), name
        # Float equality: the wire carries doubles, nothing may be rounded.
        assert _props(rebuilt, name) == _props(original, name), name
        op, back = original.operation_from_name(name), rebuilt.operation_from_name(name)
        if isinstance(op, type):
            assert back is op
        else:
            assert type(back) is type(op) and len(back.params) == len(op.params)
            assert back.num_qubits == op.num_qubits
    assert rebuilt.num_qubits == original.num_qubits == message.num_qubits == 5
    assert rebuilt.dt == original.dt and message.dt == original.dt
    for attr in ("granularity", "min_length", "pulse_alignment", "acquire_alignment"):
        assert getattr(rebuilt, attr) == getattr(original, attr), attr
    assert (original.granularity, original.min_length) == (16, 64)  # not Qiskit's defaults
    for index, (got, want) in enumerate(
        zip(rebuilt.qubit_properties, original.qubit_properties, strict=True)
    ):
        assert (got.t1, got.t2, got.frequency) == (want.t1, want.t2, want.frequency), index
        assert message.qubits[index].readout_error == original["measure"][(index,)].error
    assert sorted(rebuilt.build_coupling_map().get_edges()) == sorted(
        original.build_coupling_map().get_edges()
    )
    assert [(e.control, e.target) for e in message.coupling_map] == sorted(
        original.build_coupling_map().get_edges()
    )
    assert message.calibration_time.ToDatetime(tzinfo=UTC) == calibrated.astimezone(UTC)
    # What the transpiler makes of both targets is the same circuit.
    circuit = QuantumCircuit(3)
    circuit.h(0)
    circuit.cx(0, 2)
    circuit.measure_all()
    from qiskit import transpile

    assert transpile(circuit, target=rebuilt, seed_transpiler=5) == transpile(
        circuit, target=original, seed_transpiler=5
    )


def test_unknown_fields_stay_unset_and_unknown_gates_stay_opaque() -> None:
    message = backend_pb2.BackendTarget(name="backends/x/target", num_qubits=2)
    message.instructions.add(name="my_gate", num_qubits=2, num_params=1).qargs.add(qubits=[0, 1])
    reset = message.instructions.add(name="reset", num_qubits=1)
    reset.qargs.add(qubits=[0], duration=1e-6)
    message.qubits.add(t1=1e-4)
    message.qubits.add()
    target = to_target(message)
    assert target["my_gate"] == {(0, 1): None}
    op = target.operation_from_name("my_gate")
    assert (op.num_qubits, len(op.params)) == (2, 1)
    assert target["reset"][(0,)].error is None and target["reset"][(0,)].duration == 1e-6
    assert target.qubit_properties[0].t1 == 1e-4 and target.qubit_properties[0].t2 is None
    assert target.qubit_properties[1].t1 is None
    assert target.dt is None and target.granularity == 1


def _aer(method: str) -> AerAdapter:
    return AerAdapter(
        AdapterContext(
            name="aer",
            limits=BackendLimits(
                max_shots=1000,
                memory_budget_bytes=1 << 30,
                max_queued_jobs=10,
                max_result_bytes=1 << 26,
            ),
            default_shots=10,
            circuit_limits=CircuitLimits(),
            options={"method": method, "num_qubits": 24},
        )
    )


@pytest.mark.parametrize("method", ["statevector", "matrix_product_state", "density_matrix"])
def test_aer_target_is_what_the_simulator_offers_and_the_gateway_accepts(method: str) -> None:
    from qiskit_aer import AerSimulator

    adapter = _aer(method)
    target = adapter.target()
    assert adapter.target() is target  # computed once
    offered = set(AerSimulator(method=method).target.operation_names)
    names = {i.name for i in target.instructions}
    # Controlled rotations and phases are written as cx and rotations: Aer applies their angles
    # wrongly when they come from parameter_binds (gateway.backends.aer.adapter._misbound).
    misbound = {"cp", "cu1", "cu2", "cu3", "cu", "crx", "cry", "crz"}
    assert names == (offered & ACCEPTED_INSTRUCTION_NAMES) - misbound
    assert {"cx", "h", "measure", "reset", "if_else", "for_loop", "while_loop"} <= names
    assert "switch_case" in names
    # Aer's own extensions and what the front end refuses are left out.
    assert not names & {"save_statevector", "kraus", "unitary"}
    # break and continue run inside loops: without them a client cannot transpile such a loop.
    assert {"break_loop", "continue_loop"} <= names
    assert target.num_qubits == adapter.info().num_qubits == 24
    # Ideal: no noise data, every instruction on any qubits, all-to-all.
    assert target.qubits == () and target.coupling_map == () and target.dt is None
    assert all(i.is_global for i in target.instructions)
    standard = get_standard_gate_name_mapping()
    for instruction in target.instructions:
        if instruction.name in CONTROL_FLOW:
            assert (instruction.num_qubits, instruction.num_params) == (0, 0)
        else:
            gate = standard[instruction.name]
            assert (instruction.num_qubits, instruction.num_params) == (
                gate.num_qubits,
                len(gate.params),
            )
    rebuilt = to_target(_wire(backend_codec.encode_target("aer", target)))
    assert set(rebuilt.operation_names) == names and rebuilt.num_qubits == 24
    assert rebuilt.build_coupling_map() is None  # all-to-all


@pytest.mark.parametrize("method", ["statevector", "matrix_product_state", "density_matrix"])
def test_a_circuit_using_every_listed_instruction_compiles(method: str) -> None:
    adapter = _aer(method)
    target = to_target(_wire(backend_codec.encode_target("aer", adapter.target())))
    circuit = every_instruction(target)
    assert set(target.operation_names) <= operation_names(circuit)
    # QPY carries every standard gate as itself (OpenQASM 3 text only those of stdgates.inc).
    compiled = adapter.compile_circuit(CircuitSource(CircuitLanguage.QPY, data=qpy_bytes(circuit)))
    assert compiled.num_qubits == circuit.num_qubits


@pytest.mark.parametrize(
    "name",
    [
        "aer",
        "backends/aer",
        "aer/target",
        "backends//target",
        "backends/aer/target/",
        "backends/aer/targets",
        "backends/a/b/target",
        "Backends/aer/target",
        "backends/aer\x00/target",
        "backends/" + "a" * 129 + "/target",
        "",
    ],
)
def test_only_target_names_are_accepted(name: str) -> None:
    with pytest.raises(InvalidArgument) as caught:
        backend_codec.target_backend_id(name)
    assert caught.value.reason == "INVALID_TARGET_NAME"
    assert caught.value.field_violations[0].field == "name"


def test_target_name_parses() -> None:
    assert backend_codec.target_backend_id("backends/aer-mps/target") == "aer-mps"


def test_calibration_time_is_utc_on_the_wire() -> None:
    domain = from_qiskit_target(
        Target(num_qubits=1), calibration_time=datetime(2024, 5, 27, 18, 27, 23, tzinfo=UTC)
    )
    message = backend_codec.encode_target("x", domain)
    assert message.calibration_time.seconds == int(
        datetime(2024, 5, 27, 18, 27, 23, tzinfo=UTC).timestamp()
    )
    assert not message.HasField("dt") and len(message.instructions) == 0


def test_a_backend_id_of_the_maximum_length_is_a_target_name() -> None:
    longest = "a" * backend_codec.MAX_BACKEND_ID
    assert backend_codec.target_backend_id(f"backends/{longest}/target") == longest
    with pytest.raises(InvalidArgument):
        backend_codec.target_backend_id(f"backends/{longest}a/target")


def test_a_target_refuses_duplicate_or_unsorted_instructions() -> None:
    from gateway.domain.targets import BackendTarget, TargetInstruction

    cx, x = TargetInstruction("cx", 2, 0), TargetInstruction("x", 1, 0)
    assert BackendTarget(2, (cx, x)).instruction("x") == x
    for instructions in ((x, cx), (cx, cx, x)):
        with pytest.raises(ValueError, match="unique and in name order"):
            BackendTarget(2, instructions)
