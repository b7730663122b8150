"""The structural walk of a compiled circuit's QPY (gateway/backends/qiskit/qpy_walk.py).

`load_compiled` runs it before Qiskit's reader, in the compile worker on every compile and in
the gateway process for the cloud runners: it must accept everything `dump_compiled` writes
(property tests over many kinds of circuit), and refuse every circuit header past the bounds,
wherever it is nested, with nothing but ValueError on hostile bytes (in a subprocess with an
address-space limit, so a miss cannot take the test run down)."""

from __future__ import annotations

import io
import struct
import time
from pathlib import Path

import numpy as np
import pytest
import qiskit.qpy
from hypothesis import given, settings
from hypothesis import strategies as st
from qiskit import ClassicalRegister, QuantumCircuit, QuantumRegister
from qiskit.circuit import Clbit, Gate, Parameter, ParameterVector, Qubit
from qiskit.circuit.classical import expr
from qiskit.circuit.library import PauliEvolutionGate, UnitaryGate
from qiskit.quantum_info import SparsePauliOp, random_unitary

from gateway.backends.base import MAX_COMPILED_CLBITS, MAX_COMPILED_QUBITS
from gateway.backends.qiskit.qpy_reader import (
    _MAX_COMPILED_INSTRUCTIONS,
    dump_compiled,
    load_compiled,
)
from gateway.backends.qiskit.qpy_reader import check_compiled as walk
from gateway.backends.qiskit.qpy_walk import QPY_COMPILED_VERSION
from tests.child import run_python

PROPERTY = settings(max_examples=300, derandomize=True, deadline=None)
# CIRCUIT_HEADER_V12 "!H1cHIIQIQI": qubits at +5, clbits at +9, instructions at +25.
QUBITS_AT, CLBITS_AT, INSTRUCTIONS_AT = 5, 9, 25


def blocks_of(circuit: QuantumCircuit) -> tuple[int, int]:
    """(control-flow blocks, instructions in the circuit and its blocks), recursively."""
    blocks, instructions = 0, len(circuit.data)
    for instruction in circuit.data:
        for block in getattr(instruction.operation, "blocks", ()):
            inner_blocks, inner_instructions = blocks_of(block)
            blocks += 1 + inner_blocks
            instructions += inner_instructions
    return blocks, instructions


# ------------------------------------------------------------------------------------------
# Honest circuits, built from drawn pieces.

THETA = Parameter("θ")
PHI = Parameter("phi")
VECTOR = ParameterVector("v", 4)


def _custom_gate(depth: int) -> Gate:
    """A custom gate whose definition holds another custom gate, `depth` levels deep."""
    body = QuantumCircuit(2, name=f"inner{depth}")
    body.h(0)
    body.cx(0, 1)
    body.rz(THETA, 1)
    if depth > 0:
        body.append(_custom_gate(depth - 1), [1, 0])
    return body.to_gate(label=f"custom{depth}")


def _piece(draw: st.DrawFn, qc: QuantumCircuit, depth: int) -> None:
    nq = qc.num_qubits
    q = draw(st.integers(0, nq - 1))
    other = (q + 1) % nq
    kind = draw(
        st.sampled_from(
            [
                "h", "cx", "rz", "param", "expr", "vector", "custom", "controlled", "unitary",
                "annotated", "evolution", "delay", "barrier", "measure", "reset", "if", "ifelse",
                "while", "for_range", "for_list", "switch", "box", "expr_if",
            ]
        )
    )  # fmt: skip
    if kind == "h":
        qc.h(q)
    elif kind == "cx":
        qc.cx(q, other)
    elif kind == "rz":
        qc.rz(draw(st.floats(-10, 10)), q)
    elif kind == "param":
        qc.rx(THETA, q)
    elif kind == "expr":
        qc.ry(2 * THETA + PHI / 3 - 1.5, q)
    elif kind == "vector":
        qc.rz(VECTOR[draw(st.integers(0, 3))] * THETA, q)
    elif kind == "custom":
        qc.append(_custom_gate(draw(st.integers(0, 3))), [q, other])
    elif kind == "controlled":
        gate = _custom_gate(draw(st.integers(0, 1))).control(1, ctrl_state=draw(st.integers(0, 1)))
        if nq >= 3:
            qc.append(gate, [q, other, (q + 2) % nq])
        else:
            qc.append(qiskit.circuit.library.XGate().control(1, ctrl_state=0), [q, other])
    elif kind == "unitary":
        seed = draw(st.integers(0, 1000))
        qc.append(UnitaryGate(random_unitary(2, seed=seed)), [q])
    elif kind == "annotated":
        base = draw(st.sampled_from(["control", "inverse", "power"]))
        gate = _custom_gate(0)
        if base == "control" and nq >= 3:
            qc.append(gate.control(1, annotated=True), [q, other, (q + 2) % nq])
        elif base == "inverse":
            qc.append(gate.inverse(annotated=True), [q, other])
        else:
            qc.append(gate.power(2, annotated=True), [q, other])
    elif kind == "evolution":
        time_ = draw(st.sampled_from([0.5, THETA]))
        qc.append(
            PauliEvolutionGate(SparsePauliOp(["XZ", "YY"], [0.5, 0.25]), time=time_), [q, other]
        )
    elif kind == "delay":
        qc.delay(draw(st.sampled_from([10, 20])), q, unit=draw(st.sampled_from(["dt", "ns", "us"])))
    elif kind == "barrier":
        qc.barrier(label=draw(st.sampled_from([None, "b", "séparateur"])))
    elif kind == "measure" and qc.num_clbits:
        qc.measure(q, draw(st.integers(0, qc.num_clbits - 1)))
    elif kind == "reset":
        qc.reset(q)
    elif depth > 0 and qc.num_clbits and kind in ("if", "ifelse", "expr_if", "while", "switch"):
        clbit = qc.clbits[draw(st.integers(0, qc.num_clbits - 1))]
        if kind == "if":
            with qc.if_test((clbit, 1)):
                _body(draw, qc, depth - 1)
        elif kind == "ifelse":
            with qc.if_test((qc.cregs[0], 1) if qc.cregs else (clbit, 0)) as else_:
                _body(draw, qc, depth - 1)
            with else_:
                _body(draw, qc, depth - 1)
        elif kind == "expr_if":
            condition = (
                expr.logic_or(expr.logic_not(clbit), expr.equal(qc.cregs[0], 1))
                if qc.cregs
                else expr.lift(clbit)
            )
            with qc.if_test(condition):
                _body(draw, qc, depth - 1)
        elif kind == "while":
            with qc.while_loop((clbit, 0)):
                _body(draw, qc, depth - 1)
        else:
            target = qc.cregs[0] if qc.cregs else clbit
            with qc.switch(target) as case:
                with case(0):
                    _body(draw, qc, depth - 1)
                with case(1, 2) if qc.cregs and qc.cregs[0].size >= 2 else case(1):
                    _body(draw, qc, depth - 1)
                with case(case.DEFAULT):
                    _body(draw, qc, depth - 1)
    elif depth > 0 and kind == "for_range":
        with qc.for_loop(range(draw(st.integers(0, 4)))):
            _body(draw, qc, depth - 1)
    elif depth > 0 and kind == "for_list":
        with qc.for_loop([1, 3, 5]) as index:
            _body(draw, qc, depth - 1)
            qc.rx(index, q)
    elif depth > 0 and kind == "box":
        with qc.box():
            _body(draw, qc, depth - 1)
    else:
        qc.x(q)


def _body(draw: st.DrawFn, qc: QuantumCircuit, depth: int) -> None:
    for _ in range(draw(st.integers(1, 4))):
        _piece(draw, qc, depth)


@st.composite
def circuits(draw: st.DrawFn, max_depth: int = 4) -> QuantumCircuit:
    layout = draw(st.sampled_from(["plain", "registers", "loose", "anonymous"]))
    if layout == "plain":
        qc = QuantumCircuit(draw(st.integers(2, 5)), draw(st.integers(0, 3)))
    elif layout == "registers":
        qc = QuantumCircuit(
            QuantumRegister(2, "a"), QuantumRegister(2, "b"), ClassicalRegister(2, "c"),
            ClassicalRegister(1, "d"),
        )  # fmt: skip
    elif layout == "loose":
        qc = QuantumCircuit([Qubit(), Qubit(), Qubit()], QuantumRegister(1, "r"), [Clbit()])
        qc.add_register(ClassicalRegister(2, "m"))
    else:
        qc = QuantumCircuit([Qubit() for _ in range(draw(st.integers(2, 4)))], [Clbit(), Clbit()])
    qc.global_phase = draw(st.sampled_from([0.0, 0.7, THETA / 2]))
    if draw(st.booleans()):
        qc.metadata = {"name": "x", "nested": {"list": [1, 2.5, None]}}
    _body(draw, qc, draw(st.integers(0, max_depth)))
    return qc


@PROPERTY
@given(circuits())
def test_every_honest_compiled_circuit_is_walked_and_read(circuit: QuantumCircuit) -> None:
    data = dump_compiled(circuit)
    seen = walk(data)
    blocks, instructions = blocks_of(circuit)
    assert seen.blocks == blocks
    assert seen.circuits >= 1 + blocks
    assert seen.instructions >= instructions
    assert seen.headers[0] == 28 and list(seen.headers) == sorted(seen.headers)
    back = load_compiled(data)
    assert blocks_of(back) == (blocks, instructions)
    assert back.num_qubits == circuit.num_qubits and back.num_clbits == circuit.num_clbits


@PROPERTY
@given(circuits(), st.data())
def test_a_huge_count_in_any_circuit_header_is_refused(
    circuit: QuantumCircuit, data: st.DataObject
) -> None:
    payload = dump_compiled(circuit)
    headers = walk(payload).headers
    at = data.draw(st.sampled_from(headers))
    field, value = data.draw(
        st.sampled_from(
            [
                (QUBITS_AT, MAX_COMPILED_QUBITS + 1),
                (QUBITS_AT, 1 << 25),
                (CLBITS_AT, MAX_COMPILED_CLBITS + 1),
            ]
        )
    )
    hostile = payload[: at + field] + struct.pack("!I", value) + payload[at + field + 4 :]
    with pytest.raises(ValueError, match="circuit header declares"):
        walk(hostile)
    with pytest.raises(ValueError):
        load_compiled(hostile)
    big = payload[: at + INSTRUCTIONS_AT] + struct.pack("!Q", _MAX_COMPILED_INSTRUCTIONS + 1)
    with pytest.raises(ValueError):
        load_compiled(big + payload[at + INSTRUCTIONS_AT + 8 :])


_MANILA: list[object] = []


def _manila() -> object:
    if not _MANILA:
        from qiskit_ibm_runtime.fake_provider import FakeManilaV2

        _MANILA.append(FakeManilaV2().target)
    return _MANILA[0]


@PROPERTY
@given(circuits(max_depth=0), st.integers(0, 3))
def test_every_circuit_transpiled_for_a_device_is_walked_with_its_layout(
    circuit: QuantumCircuit, level: int
) -> None:
    from qiskit import transpile
    from qiskit.transpiler.exceptions import TranspilerError

    try:
        compiled = transpile(circuit, target=_manila(), optimization_level=level, seed_transpiler=5)
    except TranspilerError:
        # A delay in seconds on an unscheduled circuit: Qiskit's limit, not the walk's.
        return
    assert compiled.layout is not None
    data = dump_compiled(compiled)
    seen = walk(data)
    assert seen.blocks == 0
    back = load_compiled(data)
    assert back.layout is not None
    assert back.layout.initial_index_layout() == compiled.layout.initial_index_layout()
    assert back.layout.final_index_layout() == compiled.layout.final_index_layout()


def test_a_transpiled_circuit_with_a_layout_is_walked() -> None:
    from qiskit import transpile
    from qiskit_ibm_runtime.fake_provider import FakeManilaV2

    qc = QuantumCircuit(QuantumRegister(3, "q"), ClassicalRegister(3, "c"))
    qc.h(0)
    qc.cx(0, 1)
    qc.cx(0, 2)
    qc.measure(0, 0)
    with qc.if_test((qc.clbits[0], 1)):
        qc.x(1)
    qc.measure([1, 2], [1, 2])
    compiled = transpile(qc, target=FakeManilaV2().target, seed_transpiler=3)
    data = dump_compiled(compiled)
    assert compiled.layout is not None
    seen = walk(data)
    assert seen.blocks == 1
    back = load_compiled(data)
    assert back.layout is not None
    assert back.layout.initial_index_layout() == compiled.layout.initial_index_layout()


def test_only_the_version_dump_compiled_writes_is_read() -> None:
    qc = QuantumCircuit(2)
    qc.h(0)
    qc.cx(0, 1)
    data = dump_compiled(qc)
    assert data[6] == QPY_COMPILED_VERSION == 18
    for version in (13, 15, 17):
        buffer = io.BytesIO()
        qiskit.qpy.dump(qc, buffer, version=version)
        with pytest.raises(ValueError, match="version"):
            load_compiled(buffer.getvalue())


def _nest(depth: int) -> QuantumCircuit:
    qc = QuantumCircuit(1, 1)
    inner = qc
    scopes = []
    for _ in range(depth):
        scope = inner.box()
        scope.__enter__()
        scopes.append(scope)
    inner.x(0)
    for scope in reversed(scopes):
        scope.__exit__(None, None, None)
    return qc


def test_nesting_is_bounded_without_recursion_errors() -> None:
    ok = walk(dump_compiled(_nest(20)))
    assert ok.blocks == 20 and ok.depth == 21
    data = dump_compiled(_nest(200))
    with pytest.raises(ValueError, match="nested deeper"):
        walk(data)
    with pytest.raises(ValueError, match="nested deeper"):
        load_compiled(data)


def test_definitions_as_deep_as_the_front_end_allows_are_walked() -> None:
    from gateway.backends.qiskit.frontend import MAX_DEFINITION_DEPTH

    def chain(depth: int) -> Gate:
        body = QuantumCircuit(1, name=f"g{depth}")
        body.x(0)
        if depth:
            body.append(chain(depth - 1), [0])
        return body.to_gate()

    qc = QuantumCircuit(1)
    qc.append(chain(MAX_DEFINITION_DEPTH), [0])
    data = dump_compiled(qc)
    seen = walk(data)
    assert seen.definitions == MAX_DEFINITION_DEPTH + 1
    assert seen.depth == MAX_DEFINITION_DEPTH + 2
    load_compiled(data)


def test_the_walk_is_linear_and_cheap() -> None:
    ghz = QuantumCircuit(5, 5)
    ghz.h(0)
    for i in range(4):
        ghz.cx(i, i + 1)
    ghz.measure(range(5), range(5))
    small = dump_compiled(ghz)
    big_circuit = QuantumCircuit(8, 8)
    for i in range(16000):
        big_circuit.rz(i * 0.001, i % 8)
        big_circuit.cx(i % 8, (i + 1) % 8)
    big = dump_compiled(big_circuit)
    assert len(big) > 1 << 20
    for payload, limit in ((small, 0.002), (big, 2.0)):
        best = min(_timed(payload) for _ in range(5))
        assert best < limit, (len(payload), best)


def _timed(payload: bytes) -> float:
    start = time.perf_counter()
    walk(payload)
    return time.perf_counter() - start


# ------------------------------------------------------------------------------------------
# Hostile bytes, in a subprocess under an address-space limit.

_FUZZ = r"""
import random, resource, struct, sys, time
import numpy as np
from qiskit import QuantumCircuit, ClassicalRegister
from qiskit.circuit import Parameter
from gateway.backends.qiskit.qpy_reader import dump_compiled, load_compiled

resource.setrlimit(resource.RLIMIT_AS, (3 << 30, 3 << 30))
qc = QuantumCircuit(2, 2)
qc.h(0)
qc.rz(Parameter("t") * 2, 1)
qc.measure(0, 0)
with qc.if_test((qc.clbits[0], 1)) as else_:
    qc.x(1)
with else_:
    qc.append(QuantumCircuit(1, name="g").to_gate(), [0])
with qc.for_loop(range(2)):
    qc.cx(0, 1)
small = dump_compiled(qc)
# A richer one: custom, controlled and annotated gates, a switch, a box, a vector, a layout.
from qiskit import transpile
from qiskit.circuit import ParameterVector
from qiskit.circuit.library import UnitaryGate
from qiskit_ibm_runtime.fake_provider import FakeManilaV2
body = QuantumCircuit(2, name="g")
body.cx(0, 1)
rich = QuantumCircuit(3, 2)
rich.append(body.to_gate(), [0, 1])
rich.append(body.to_gate().control(1, ctrl_state=0), [2, 0, 1])
rich.append(body.to_gate().inverse(annotated=True), [1, 2])
rich.append(UnitaryGate(np.eye(2)), [0])
rich.rz(ParameterVector("v", 3)[2] * 2, 0)
rich.measure(0, 0)
with rich.switch(rich.cregs[0]) as case:
    with case(0):
        rich.x(1)
    with case(case.DEFAULT):
        with rich.box():
            rich.h(2)
laid = transpile(qc, target=FakeManilaV2().target, seed_transpiler=1)
payloads = [small, dump_compiled(rich), dump_compiled(laid)]
accepted = refused = 0
slowest = 0.0

def attempt(data):
    global accepted, refused, slowest
    start = time.perf_counter()
    try:
        load_compiled(data)
        accepted += 1
    except ValueError:
        refused += 1
    slowest = max(slowest, time.perf_counter() - start)

for payload in payloads:
    for cut in range(len(payload)):
        attempt(payload[:cut])
rng = random.Random(31)
for _ in range(int(sys.argv[1])):
    data = bytearray(rng.choice(payloads))
    for _ in range(rng.randint(1, 3)):
        at = rng.randrange(len(data))
        data[at] = rng.choice([0, 0xFF, 0x7F, 0x80, rng.randrange(256)])
    attempt(bytes(data))
print("DONE", sum(map(len, payloads)), accepted, refused, f"{slowest:.3f}")
"""


def test_truncations_and_byte_flips_are_refused_cleanly(tmp_path: Path) -> None:
    done = run_python(_FUZZ, "3000", cwd=tmp_path, timeout=300)
    assert done.returncode == 0 and "DONE" in done.stdout, (
        done.returncode,
        done.stdout[-500:],
        done.stderr[-1500:],
    )
    _, size, accepted, refused, slowest = done.stdout.split()
    assert int(accepted) + int(refused) == int(size) + 3000
    assert float(slowest) < 1.0


def test_walk_refuses_what_it_cannot_parse() -> None:
    data = dump_compiled(QuantumCircuit(1))
    for bad in (b"", b"QISKIT", data[:-1], data + b"\0", b"NOTQPY" + data[6:]):
        with pytest.raises(ValueError):
            walk(bad)
    np.testing.assert_equal(walk(data).circuits, 1)


def _many_blocks(count: int) -> bytes:
    qc = QuantumCircuit(2, 1)
    qc.measure(0, 0)
    for _ in range(count):
        with qc.if_test((qc.clbits[0], 1)):
            qc.x(1)
    return dump_compiled(qc)


def _set(data: bytes, at: int, value: int) -> bytes:
    return data[:at] + struct.pack("!I", value) + data[at + 4 :]


def test_the_bits_of_all_headers_together_are_bounded() -> None:
    data = _many_blocks(40)
    seen = walk(data)
    assert seen.blocks == 40 and seen.bits == 3 + 40 * 2
    # Each header within its own bound, together past MAX_QPY_TOTAL_BITS (2^21).
    hostile = data
    for at in seen.headers[1:]:
        hostile = _set(hostile, at + QUBITS_AT, MAX_COMPILED_QUBITS)
    with pytest.raises(ValueError, match="in all"):
        load_compiled(hostile)
    few = data
    for at in seen.headers[1:4]:
        few = _set(few, at + QUBITS_AT, MAX_COMPILED_QUBITS)
    assert walk(few).bits == 3 + 3 * (MAX_COMPILED_QUBITS + 1) + 37 * 2  # then the reader's


def test_every_header_of_a_rich_payload_is_checked() -> None:
    qc = QuantumCircuit(QuantumRegister(3, "q"), ClassicalRegister(2, "c"))
    qc.measure(0, 0)
    with qc.if_test((qc.cregs[0], 1)) as else_:
        qc.append(_custom_gate(2), [0, 1])
    with else_, qc.while_loop((qc.clbits[1], 0)):
        qc.append(_custom_gate(0).control(1, ctrl_state=0), [2, 0, 1])
    with qc.switch(qc.cregs[0]) as case:
        with case(0), qc.box():
            qc.rz(VECTOR[1] * THETA, 2)
        with case(case.DEFAULT):
            qc.append(_custom_gate(1).inverse(annotated=True), [1, 2])
    data = dump_compiled(qc)
    seen = walk(data)
    assert seen.blocks == 6 and len(seen.headers) > 10
    for at in seen.headers:
        for field, value in (
            (QUBITS_AT, 1 << 25),
            (CLBITS_AT, MAX_COMPILED_CLBITS + 1),
            (INSTRUCTIONS_AT + 4, _MAX_COMPILED_INSTRUCTIONS),  # the low half of a uint64
        ):
            with pytest.raises(ValueError):
                load_compiled(_set(data, at + field, value))


def test_a_custom_definition_declaring_huge_counts_is_refused() -> None:
    body = QuantumCircuit(2, name="zzgate")
    body.cx(0, 1)
    qc = QuantumCircuit(2)
    qc.append(body.to_gate(), [0, 1])
    data = dump_compiled(qc)
    assert walk(data).definitions == 1
    # CUSTOM_CIRCUIT_INST_DEF_V2 "!H1cII?QIIQ" (36 bytes) precedes the definition's name; the
    # definitions come before the instructions that use them.
    at = data.index(b"zzgate") - 36
    assert struct.unpack_from("!II", data, at + 3) == (2, 0)
    for field, value in ((3, 1 << 25), (7, 1 << 25)):
        hostile = data[: at + field] + struct.pack("!I", value) + data[at + field + 4 :]
        with pytest.raises(ValueError, match="custom definition declares"):
            load_compiled(hostile)
