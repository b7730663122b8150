"""QPY circuits in process against the front end and the Aer adapter, hostile payloads first.

QPY is a binary format read by code in Rust and Python: every malformed, truncated, oversized or
exotic payload must be a client error with its specific reason, never INTERNAL, never a hang.
What only a compile worker's limits can stop (sizes declared inside nested blocks, whose parse
aborts the process) is fuzzed through a real compile worker at the end of this module.
"""

from __future__ import annotations

import asyncio
import random
import signal
import struct

import numpy as np
import pytest
from qiskit import QuantumCircuit
from qiskit.circuit import Barrier, CircuitInstruction, Gate, IfElseOp, Measure, Parameter
from qiskit.circuit.classical import expr
from qiskit.circuit.library import CXGate, Initialize, MCXGate, UnitaryGate

from gateway.backends.aer.adapter import AerAdapter
from gateway.backends.base import CircuitLimits
from gateway.backends.qiskit.qpy_reader import QPY_MAX_VERSION, QPY_MIN_VERSION, load_circuit
from gateway.domain.circuits import Bindings, CircuitLanguage, CircuitSource
from gateway.domain.errors import Code, InvalidArgument
from gateway.runtime.worker import CompileRole, WorkerCrashed, WorkerProcess
from tests.qpy_payloads import (
    dump,
    nested_block_declaring,
    nested_ifs,
    patch_header,
    top_header_offset,
    x_on,
)
from tests.unit.test_aer_adapter import context, q3, run, sampler, spec

FIELD = "spec.pubs[0].sampler.circuit.qpy"


@pytest.fixture(scope="module")
def aer() -> AerAdapter:
    adapter = AerAdapter(context())
    adapter.warm_up()
    return adapter


def qpy_source(data: bytes) -> CircuitSource:
    return CircuitSource(CircuitLanguage.QPY, data=data)


def counts(aer: AerAdapter, data: bytes, shots: int = 16) -> dict[str, int]:
    _, results = run(aer, spec(sampler(qpy_source(data), shots=shots)))
    return dict(results[0].registers[0].counts[0])


def refusal(aer: AerAdapter, data: bytes, reason: str) -> InvalidArgument:
    with pytest.raises(InvalidArgument) as info:
        run(aer, spec(sampler(qpy_source(data))))
    error = info.value
    assert error.reason == reason, (error.reason, error.message)
    assert error.code is Code.INVALID_ARGUMENT
    assert [v.field for v in error.field_violations] == [FIELD]
    # Clean text: no terminal escapes or Rust backtraces reach the client.
    assert "\x1b" not in error.message and "Backtrace" not in error.message
    assert len(error.message) <= 300
    return error


# ------------------------------------------------------------------------------- what runs


@pytest.mark.parametrize("version", range(QPY_MIN_VERSION, QPY_MAX_VERSION + 1))
def test_every_version_read_runs_with_qiskits_bit_order(aer: AerAdapter, version: int) -> None:
    # X on qubits 0 and 2 of 3: character 0 is the highest bit.
    assert counts(aer, dump(x_on([0, 2], 3), version)) == {"101": 16}


def test_the_versions_read_are_stated() -> None:
    assert (QPY_MIN_VERSION, QPY_MAX_VERSION) == (13, 18)
    info = AerAdapter(context()).info()
    assert info.properties["qpy_versions"] == "13-18"


def test_custom_library_and_unitary_gates_run_as_defined(aer: AerAdapter) -> None:
    body = QuantumCircuit(2)
    body.x(0)
    mine = body.to_gate()
    mine.name = "mine"
    circuit = QuantumCircuit(4, 4)
    circuit.append(mine, [1, 3])  # X on qubit 1
    circuit.append(UnitaryGate([[0, 1], [1, 0]]), [0])  # X on qubit 0
    circuit.append(MCXGate(2), [0, 1, 2])  # both controls set: X on qubit 2
    circuit.measure(range(4), range(4))
    assert counts(aer, dump(circuit)) == {"0111": 16}


def test_parameters_bind_by_name(aer: AerAdapter) -> None:
    theta = Parameter("theta")
    circuit = QuantumCircuit(1, 1)
    circuit.rx(theta, 0)
    circuit.measure(0, 0)
    bindings = Bindings(parameters=("theta",), shape=(2,), values=np.array([[0.0], [np.pi]]))
    _, results = run(aer, spec(sampler(qpy_source(dump(circuit)), shots=8, bindings=bindings)))
    assert [dict(c) for c in results[0].registers[0].counts] == [{"0": 8}, {"1": 8}]


def test_the_cache_key_covers_the_bytes(aer: AerAdapter) -> None:
    data = dump(x_on([0], 1))
    key = aer.circuit_key(qpy_source(data))
    assert key == aer.circuit_key(qpy_source(bytes(data)))
    assert key.startswith("qpy:")
    assert key != aer.circuit_key(qpy_source(data[:-1] + bytes([data[-1] ^ 1])))
    # The same bytes as text are another circuit.
    assert key != aer.circuit_key(CircuitSource(CircuitLanguage.QASM3, data.decode("latin-1")))


# ------------------------------------------------------------------------- hostile payloads


@pytest.mark.parametrize(
    "data",
    [
        b"",
        b"QISKIT",
        b"\x00garbage" * 10,
        b'OPENQASM 3.0;\ninclude "stdgates.inc";\nqubit[1] q;\n',
        bytes(range(256)),
    ],
    ids=["empty", "magic-only", "garbage", "qasm-text", "all-bytes"],
)
def test_what_is_not_qpy_is_invalid_qpy(aer: AerAdapter, data: bytes) -> None:
    refusal(aer, data, "INVALID_QPY")


@pytest.mark.parametrize("version", [0, 1, 5, 10, 12, QPY_MAX_VERSION + 1, 255])
def test_a_version_outside_the_range_read_is_refused_before_reading(
    aer: AerAdapter, version: int
) -> None:
    data = dump(x_on([0], 1))
    error = refusal(aer, data[:6] + bytes([version]) + data[7:], "INVALID_QPY")
    assert error.metadata == {
        "qpyVersion": str(version),
        "minQpyVersion": str(QPY_MIN_VERSION),
        "maxQpyVersion": str(QPY_MAX_VERSION),
    }


@pytest.mark.parametrize("programs", [0, 2, 2**31, 2**63])
def test_exactly_one_program_per_payload(aer: AerAdapter, programs: int) -> None:
    data = dump(x_on([0], 1))
    patched = data[:10] + struct.pack("!Q", programs) + data[18:]
    assert refusal(aer, patched, "INVALID_QPY").metadata == {"numPrograms": str(programs)}


def test_two_real_circuits_are_refused(aer: AerAdapter) -> None:
    error = refusal(aer, dump([x_on([0], 1), x_on([], 1)]), "INVALID_QPY")
    assert error.metadata == {"numPrograms": "2"}


def test_a_schedule_payload_is_not_a_circuit(aer: AerAdapter) -> None:
    data = dump(x_on([0], 1))
    assert "pulse schedule" in refusal(aer, data[:19] + b"s" + data[20:], "INVALID_QPY").message


@pytest.mark.parametrize("version", [QPY_MIN_VERSION, QPY_MAX_VERSION])
def test_every_truncation_is_invalid_qpy(aer: AerAdapter, version: int) -> None:
    circuit = QuantumCircuit(2, 2)
    circuit.h(0)
    with circuit.if_test((circuit.clbits[0], 1)):
        circuit.x(1)
    circuit.measure([0, 1], [0, 1])
    data = dump(circuit, version)
    for cut in range(len(data)):
        with pytest.raises(InvalidArgument) as info:
            aer.compile_circuit(qpy_source(data[:cut]))
        assert info.value.reason == "INVALID_QPY", (cut, info.value.message)


@pytest.mark.parametrize("version", [QPY_MIN_VERSION, QPY_MAX_VERSION])
@pytest.mark.parametrize(
    ("field", "value", "reason"),
    [
        # The reader allocates per declared bit before reading one: a few million abort it.
        ("num_qubits", 2**26, "TOO_MANY_QUBITS"),
        ("num_qubits", 2**32 - 1, "TOO_MANY_QUBITS"),
        ("num_clbits", 2**26, "CIRCUIT_TOO_LARGE"),
        # Counts past what the payload's bytes could hold.
        ("num_instructions", 2**31, "INVALID_QPY"),
        ("num_instructions", 2**63, "INVALID_QPY"),
        ("num_registers", 2**31, "INVALID_QPY"),
        ("metadata_size", 2**62, "INVALID_QPY"),
        ("name_size", 2**16 - 1, "INVALID_QPY"),
        ("num_vars", 2**31, "INVALID_QPY"),
    ],
)
def test_huge_declared_sizes_are_refused(
    aer: AerAdapter, version: int, field: str, value: int, reason: str
) -> None:
    data = dump(x_on([0, 1], 2), version)
    start = top_header_offset(version)
    refusal(aer, data[:start] + patch_header(data[start:], field, value), reason)


def test_declared_instructions_above_the_limit_are_refused_before_reading() -> None:
    circuit = QuantumCircuit(1, 1)
    for _ in range(3):
        circuit.x(0)
    circuit.measure(0, 0)
    data = dump(circuit)  # two bits, four instructions
    with pytest.raises(InvalidArgument) as info:
        load_circuit(data, CircuitLimits(max_operations=3), "circuit")
    assert info.value.reason == "CIRCUIT_TOO_LARGE"
    assert "declares 4 instructions" in info.value.message


def test_a_payload_above_the_source_limit_is_refused_before_reading() -> None:
    data = dump(x_on([0], 1))
    with pytest.raises(InvalidArgument) as info:
        load_circuit(data, CircuitLimits(max_source_bytes=len(data) - 1), "circuit")
    assert info.value.reason == "CIRCUIT_TOO_LARGE"
    assert info.value.metadata["maxSourceBytes"] == str(len(data) - 1)


def test_deeply_nested_control_flow_is_too_complex(aer: AerAdapter) -> None:
    # The reader's own recursion limit (a tenth of Python's) ends it; deeper payloads cost the
    # reader memory quadratic in their depth first, which the compile worker's limit bounds.
    refusal(aer, dump(nested_ifs(60)), "CIRCUIT_TOO_COMPLEX")


def test_nested_control_flow_within_the_limit_runs(aer: AerAdapter) -> None:
    # c[0] is 0 throughout, so no branch runs.
    assert counts(aer, dump(nested_ifs(10))) == {"0": 16}


def _doubling_definitions(levels: int) -> QuantumCircuit:
    """g_k applies g_(k-1) twice: 2^levels operations once unrolled."""
    gate = Gate("g0", 1, [])
    gate.definition = QuantumCircuit(1)
    gate.definition.x(0)
    for level in range(1, levels + 1):
        doubled = QuantumCircuit(1)
        doubled.append(gate, [0])
        doubled.append(gate, [0])
        gate = Gate(f"g{level}", 1, [])
        gate.definition = doubled
    circuit = QuantumCircuit(1, 1)
    circuit.append(gate, [0])
    circuit.measure(0, 0)
    return circuit


def test_definitions_count_unrolled() -> None:
    # Qiskit writes a definition per instance, so the payload grows with the unrolled size
    # (about 100 KB at 8 levels)...
    data = dump(_doubling_definitions(8))
    assert len(data) < 200_000
    limits = CircuitLimits(max_operations=200)
    with pytest.raises(InvalidArgument) as info:
        load_circuit(data, limits, "circuit")
    assert info.value.reason == "CIRCUIT_TOO_LARGE"
    assert info.value.metadata == {"maxOperations": "200"}
    # ...and past a dozen levels the byte limit refuses it before it is read.
    with pytest.raises(InvalidArgument) as info:
        load_circuit(dump(_doubling_definitions(12)), CircuitLimits(), "circuit")
    assert info.value.reason == "CIRCUIT_TOO_LARGE"
    assert "maxSourceBytes" in info.value.metadata


def _with(op: object, qubits: int = 1) -> QuantumCircuit:
    circuit = QuantumCircuit(qubits, 1)
    circuit.append(op, range(qubits))  # type: ignore[arg-type]
    circuit.measure(0, 0)
    return circuit


def test_an_opaque_gate_is_unknown(aer: AerAdapter) -> None:
    assert refusal(aer, dump(_with(Gate("mystery", 1, []))), "UNKNOWN_GATE").metadata == {
        "gate": "mystery"
    }


def test_a_custom_instruction_is_unsupported(aer: AerAdapter) -> None:
    sub = QuantumCircuit(1, 1)
    sub.x(0)
    sub.measure(0, 0)
    circuit = QuantumCircuit(1, 1)
    circuit.append(sub.to_instruction(), [0], [0])
    error = refusal(aer, dump(circuit), "UNSUPPORTED_FEATURE")
    assert error.metadata["feature"] == "custom_instruction"


def test_initialize_is_unsupported(aer: AerAdapter) -> None:
    error = refusal(aer, dump(_with(Initialize([0, 1]))), "UNSUPPORTED_FEATURE")
    assert error.metadata == {"feature": "custom_instruction", "instruction": "initialize"}


def test_a_gate_definition_holds_gates_only(aer: AerAdapter) -> None:
    gate = Gate("measures", 1, [])
    body = QuantumCircuit(1, 1)
    body.measure(0, 0)
    gate.definition = body
    refusal(aer, dump(_with(gate)), "INVALID_QPY")


def test_an_instruction_on_the_same_bit_twice_is_invalid_qpy(aer: AerAdapter) -> None:
    # The QPY reader appends without Qiskit's checks: a CX on one qubit twice reached the
    # transpiler, whose Rust panic ("not a DAG") was cached as INTERNAL for that payload.
    for block in ("top", "if", "definition"):
        circuit = QuantumCircuit(2, 2)
        q0, c = circuit.qubits[0], circuit.clbits
        if block == "top":
            circuit._append(CircuitInstruction(CXGate(), (q0, q0), ()))
        elif block == "if":
            body = QuantumCircuit([q0, circuit.qubits[1], c[0]])
            body._append(CircuitInstruction(CXGate(), (q0, q0), ()))
            circuit.append(IfElseOp((c[0], True), body), circuit.qubits, [c[0]])
        else:
            gate = Gate("twice", 2, [])
            definition = QuantumCircuit(2)
            definition._append(CircuitInstruction(CXGate(), (definition.qubits[1],) * 2, ()))
            gate.definition = definition
            circuit.append(gate, [0, 1])
        circuit.measure([0, 1], [0, 1])
        error = refusal(aer, dump(circuit), "INVALID_QPY")
        assert "twice" in error.message or "same" in error.message, error.message
    measured = QuantumCircuit(2, 2)
    measured._append(CircuitInstruction(Measure(), (measured.qubits[0],), (measured.clbits[0],)))
    measured._append(CircuitInstruction(Barrier(2), (measured.qubits[1], measured.qubits[1]), ()))
    refusal(aer, dump(measured), "INVALID_QPY")


def test_classical_variables_are_unsupported(aer: AerAdapter) -> None:
    circuit = QuantumCircuit(1, 1)
    circuit.add_var("v", expr.lift(True))
    circuit.x(0)
    circuit.measure(0, 0)
    error = refusal(aer, dump(circuit), "UNSUPPORTED_FEATURE")
    assert error.metadata == {"feature": "classical_variables"}


@pytest.mark.parametrize("angle", [float("inf"), float("-inf"), float("nan")])
def test_non_finite_angles(aer: AerAdapter, angle: float) -> None:
    circuit = QuantumCircuit(1, 1)
    circuit.rx(angle, 0)
    circuit.measure(0, 0)
    refusal(aer, dump(circuit), "NON_FINITE_ANGLE")


@pytest.mark.parametrize("name", ["h", "iswap", "unitary", "kraus", "save_statevector"])
def test_a_custom_gate_named_like_a_reserved_one_runs_its_own_definition(
    aer: AerAdapter, name: str
) -> None:
    # The transpiler matches by name: unrenamed, it would run the standard gate (or Aer's
    # instruction) instead of this definition, silently, or the simulator would fail on it.
    body = QuantumCircuit(2)
    body.x(0)
    gate = body.to_gate()
    gate.name = name
    circuit = QuantumCircuit(2, 2)
    circuit.append(gate, [0, 1])
    circuit.measure([0, 1], [0, 1])
    assert counts(aer, dump(circuit)) == {"01": 16}


@pytest.mark.parametrize("name", ["iswap", "dcx", "unitary", "save_statevector", "pauli", "rzz"])
def test_openqasm_gate_definitions_named_like_reserved_ones_run_their_definition(
    aer: AerAdapter, name: str
) -> None:
    # Before: `iswap` and `dcx` ran the library gate instead of this definition (X on q[0]),
    # `unitary` failed inside the compiler (INTERNAL), `pauli` failed in Aer (a breaker fault).
    # A user gate using the shadowing one is rewritten too, and control-flow bodies are walked.
    source = q3(
        f"gate {name} a, b {{ x a; }}\ngate outer a, b {{ {name} a, b; }}\n"
        "qubit[2] q;\nbit[2] c;\nbit[1] m;\nm[0] = measure q[1];\n"
        f"if (m == 0) {{ outer q[0], q[1]; }}\nc = measure q;\n"
    )
    _, (result,) = run(aer, spec(sampler(source)))
    assert [r.name for r in result.registers] == ["c", "m"]
    assert dict(result.registers[0].counts[0]) == {"01": 16}


# ------------------------------------------------------------ a real compile worker, fuzzed


def _fuzz_seed_circuit() -> QuantumCircuit:
    theta = Parameter("theta")
    circuit = QuantumCircuit(3, 3)
    circuit.h(0)
    circuit.cx(0, 1)
    circuit.rz(theta, 2)
    with circuit.if_test((circuit.clbits[0], 1)):
        circuit.x(1)
    circuit.measure(range(3), range(3))
    return circuit


# Ways a compile worker may end on a payload that declares huge sizes deep inside: killed at
# its memory limit (an allocation failure in Rust aborts) or its CPU-time limit.
_LIMIT_SIGNALS = {signal.SIGABRT, signal.SIGKILL, signal.SIGXCPU, signal.SIGBUS}


@pytest.mark.timeout(300)
def test_mutated_payloads_never_fail_inside_the_gateway() -> None:
    """Hundreds of byte mutations of a circuit with a nested block, compiled by a real compile
    worker: each is compiled, refused as a client error, or ends the worker at a limit; none is
    an unexpected failure (INTERNAL)."""
    ctx = context()
    rng = random.Random(20261107)
    payloads = []
    for version in (QPY_MIN_VERSION, QPY_MAX_VERSION):
        data = dump(_fuzz_seed_circuit(), version)
        for _ in range(150):
            mutated = bytearray(data)
            for _ in range(rng.choice([1, 1, 2, 4])):
                mutated[rng.randrange(len(mutated))] = rng.choice(
                    [0x00, 0xFF, 0x7F, 0x80, rng.randrange(256)]
                )
            payloads.append(bytes(mutated))
    # A nested block's own header declaring 2**26 classical bits: only the worker's memory
    # limit stops the reader's allocation (refused, or the process aborts).
    nested = nested_block_declaring(2**26)
    payloads.append(nested)

    async def fuzz() -> dict[str, int]:
        role = CompileRole(backends={"aer": ("aer", ctx)}, memory_bytes=512 << 20)
        outcomes: dict[str, int] = {}
        worker = await WorkerProcess.start(role)
        try:
            for data in payloads:
                try:
                    await asyncio.wait_for(
                        worker.compile("aer", qpy_source(data), cpu_seconds=5.0), timeout=30
                    )
                    outcome = "compiled"
                except InvalidArgument as refused:
                    outcome = refused.reason
                except MemoryError:
                    outcome = "memory limit"
                    worker.kill()
                except WorkerCrashed:
                    await worker.wait()
                    assert worker.exit_signal in _LIMIT_SIGNALS, worker.exit_signal
                    outcome = "worker killed at a limit"
                if data is nested:
                    assert outcome in ("CIRCUIT_TOO_COMPLEX", "worker killed at a limit"), outcome
                if not worker.alive:
                    worker = await WorkerProcess.start(role)
                outcomes[outcome] = outcomes.get(outcome, 0) + 1
        finally:
            worker.kill()
            await worker.wait()
        return outcomes

    outcomes = asyncio.run(fuzz())
    # Mostly refusals, some mutations harmless (names, angles); ExecutionError (INTERNAL) would
    # have raised out of fuzz().
    assert outcomes.get("INVALID_QPY", 0) > len(payloads) // 3, outcomes
    assert outcomes.get("compiled", 0) > 0, outcomes


def test_a_nested_block_declaring_few_bits_runs(aer: AerAdapter) -> None:
    # The patching helper itself is sound: the same payload declaring its real size runs.
    assert counts(aer, nested_block_declaring(1)) == {"0": 16}


def test_a_switch_with_a_default_case_runs(aer: AerAdapter) -> None:
    # Qiskit 2.6 pickles a switch's DEFAULT case but cannot unpickle it: while compiled circuits
    # went to workers as pickles, such a job failed there as EXECUTION_FAILED, a backend fault
    # that counted against the breaker every tenant shares. They go as QPY now.
    circuit = QuantumCircuit(1, 2)
    circuit.x(0)
    circuit.measure(0, 0)
    with circuit.switch(circuit.clbits[0]) as case:
        with case(0):
            circuit.x(0)
        with case(case.DEFAULT):
            circuit.x(0)
    circuit.measure(0, 1)
    assert counts(aer, dump(circuit)) == {"01": 16}


def test_a_qpy_delay_that_cannot_be_in_dt_is_refused_as_the_payloads(aer: AerAdapter) -> None:
    # QPY does not carry a delay's unit: the reader gives every delay the unit dt, and 1.5 us
    # raised CircuitError when first built (INTERNAL COMPILER_FAILED, the gateway's fault).
    circuit = QuantumCircuit(1, 1)
    circuit.delay(1.5, 0, unit="us")
    circuit.measure(0, 0)
    error = refusal(aer, dump(circuit), "INVALID_QPY")
    assert error.metadata["instruction"] == "delay"
    # A whole number reads as that many dt.
    whole = QuantumCircuit(1, 1)
    whole.delay(10.0, 0, unit="ns")
    whole.measure(0, 0)
    assert counts(aer, dump(whole)) == {"0": 16}
