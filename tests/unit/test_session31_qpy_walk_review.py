"""Review of the structural QPY walk (gateway/backends/qiskit/qpy_walk.py): crafted payloads
for what the first tests left open, each pinning a check a mutation review found unguarded.

Anything that could reach Qiskit's reader with a hostile header runs in a subprocess under an
address-space limit (a miss aborts the child, not the test run)."""

from __future__ import annotations

import struct
import time
from pathlib import Path
from typing import Any

import pytest
from qiskit import ClassicalRegister, QuantumCircuit, QuantumRegister, transpile
from qiskit.circuit import Parameter
from qiskit.circuit.library import PauliEvolutionGate
from qiskit.quantum_info import SparseObservable, SparsePauliOp

from gateway.backends.base import MAX_COMPILED_CLBITS, MAX_COMPILED_QUBITS
from gateway.backends.qiskit import qpy_walk
from gateway.backends.qiskit.qpy_reader import (
    _MAX_COMPILED_INSTRUCTIONS,
    dump_compiled,
    load_compiled,
)
from gateway.backends.qiskit.qpy_reader import check_compiled as walk
from tests.child import run_python

HUGE_QUBITS = 1 << 25
# CIRCUIT_HEADER_V12 "!H1cHIIQIQI": qubits at +5.
QUBITS_AT = 5
# FILE_HEADER_V10 "!6sBBBBQc": number of programs at byte 10; the program table at 20.
PROGRAMS_AT, TABLE_AT = 10, 20


class _Recorder(qpy_walk._Walker):
    """The walk, noting where each field it unpacks starts (by its description)."""

    def __init__(self, data: bytes) -> None:
        super().__init__(
            data,
            MAX_COMPILED_QUBITS,
            MAX_COMPILED_CLBITS,
            _MAX_COMPILED_INSTRUCTIONS,
            qpy_walk.MAX_QPY_DEPTH,
            qpy_walk.MAX_QPY_TOTAL_BITS,
        )
        self.at: dict[str, list[int]] = {}

    def instruction(self, pos: int, end: int, depth: int, *, applied: bool = True) -> int:
        self.at.setdefault("instruction", []).append(pos)
        return super().instruction(pos, end, depth, applied=applied)

    def _unpack(self, layout: struct.Struct, pos: int, end: int, what: str) -> Any:
        self.at.setdefault(what, []).append(pos)
        return super()._unpack(layout, pos, end, what)


def positions(data: bytes) -> dict[str, list[int]]:
    recorder = _Recorder(data)
    recorder.file()
    return recorder.at


def put(data: bytes, at: int, fmt: str, value: object) -> bytes:
    return data[:at] + struct.pack(fmt, value) + data[at + struct.calcsize(fmt) :]


_LOAD = r"""
import resource, sys
resource.setrlimit(resource.RLIMIT_AS, (3 << 30, 3 << 30))
from gateway.backends.qiskit.qpy_reader import load_compiled
try:
    load_compiled(open(sys.argv[1], "rb").read())
    print("LOADED")
except ValueError as exc:
    print("REFUSED", str(exc)[:200])
"""


def load_isolated(data: bytes, tmp_path: Path) -> str:
    """`load_compiled` in a child under a 3 GB address-space limit: its verdict, or why not."""
    path = tmp_path / "payload.qpy"
    path.write_bytes(data)
    done = run_python(_LOAD, str(path), timeout=120)
    if done.returncode:
        return f"CRASHED {done.returncode}: {done.stderr[-300:]}"
    return done.stdout.strip()


# ------------------------------------------------------------------------------------------
# Defect: a definition's bytes are read as a circuit by name, not by type.


def _one_custom_gate() -> tuple[bytes, int]:
    body = QuantumCircuit(2, name="zzgate")
    body.cx(0, 1)
    qc = QuantumCircuit(2)
    qc.append(body.to_gate(), [0, 1])
    data = dump_compiled(qc)
    (at,) = positions(data)["custom definition"]
    return data, at


@pytest.mark.parametrize("kind", [b"a", b"p", b"g", b"i", b"c"])
def test_a_definition_the_reader_reads_as_a_circuit_is_walked_whatever_its_type(
    kind: bytes, tmp_path: Path
) -> None:
    # Qiskit's reader reads any definition it is told exists as a circuit unless its name
    # marks a Pauli evolution; the walk skipped b"a" and b"p" bodies by type, and a b"p" (or
    # b"a") definition whose circuit declared 2^25 qubits aborted the process (SIGABRT).
    data, at = _one_custom_gate()
    name_size = struct.unpack_from("!H", data, at)[0]
    header = at + qpy_walk._CUSTOM_DEF.size + name_size
    hostile = put(put(data, header + QUBITS_AT, "!I", HUGE_QUBITS), at + 2, "!c", kind)
    with pytest.raises(ValueError, match="circuit header declares"):
        walk(hostile)
    assert load_isolated(hostile, tmp_path).startswith("REFUSED")


def test_pauli_evolutions_are_still_read() -> None:
    t = Parameter("t")
    qc = QuantumCircuit(3)
    qc.append(PauliEvolutionGate(SparsePauliOp(["XZI", "YYZ"], [0.5, 0.25]), time=t), [0, 1, 2])
    qc.append(PauliEvolutionGate(SparseObservable("X+Z"), time=0.5), [0, 1, 2])
    qc.append(PauliEvolutionGate([SparsePauliOp("ZZI"), SparsePauliOp("IXX")], 0.3), [0, 1, 2])
    data = dump_compiled(qc)
    assert walk(data).definitions == 3
    back = load_compiled(data)
    assert [i.operation.name for i in back.data] == ["PauliEvolution"] * 3


# ------------------------------------------------------------------------------------------
# Checks the first tests did not pin (each mutant survived them).


def test_a_second_program_is_refused_before_the_reader_reads_it(tmp_path: Path) -> None:
    # The reader follows a two-entry program table to a second circuit the walk never saw
    # (one declaring 2^25 qubits aborted it): "one program" is what keeps the two in step.
    small = dump_compiled(QuantumCircuit(1))
    hostile_circuit = put(dump_compiled(QuantumCircuit(1))[28:], QUBITS_AT, "!I", HUGE_QUBITS)
    table = struct.pack("!QQ", 36, len(small) + 8)
    two = put(small, PROGRAMS_AT, "!Q", 2)[:TABLE_AT] + table + small[28:] + hostile_circuit
    with pytest.raises(ValueError, match="2 programs"):
        walk(two)
    assert load_isolated(two, tmp_path).startswith("REFUSED")


def test_the_program_table_must_point_at_the_circuit() -> None:
    qc = QuantumCircuit(1)
    qc.metadata = {"k": "A" * 40}
    data = dump_compiled(qc)
    for offset in (0, 27, 29, len(data)):
        with pytest.raises(ValueError, match="program table"):
            walk(put(data, TABLE_AT, "!Q", offset))


def _nested_tuple(depth: int) -> bytes:
    value = b"i" + struct.pack("!Qq", 8, 1)
    for _ in range(depth):
        value = b"t" + struct.pack("!QQ", 8 + len(value), 1) + value
    return value


def _with_index_set(value: bytes) -> bytes:
    """A for loop whose index set (a tuple parameter) is replaced by `value`."""
    qc = QuantumCircuit(1)
    with qc.for_loop([1, 3, 5]):
        qc.x(0)
    data = dump_compiled(qc)
    old = b"t" + struct.pack("!QQ", 59, 3)
    at = data.index(old)
    return data[:at] + value + data[at + 9 + 59 :]


def test_tuples_of_tuples_count_towards_the_nesting_bound() -> None:
    # No circuit header in between: only the tuple's own level keeps the walk (and the
    # reader, which took 1.2 s and 270 MB to fail 100,000 levels deep) bounded.
    assert walk(_with_index_set(_nested_tuple(100))).depth == 101
    for depth in (200, 100_000):
        data = _with_index_set(_nested_tuple(depth))
        start = time.perf_counter()
        with pytest.raises(ValueError, match="nested deeper"):
            walk(data)
        assert time.perf_counter() - start < 0.1


def _grow_region(data: bytes, size_at: int, end: int) -> bytes:
    """One extra byte at `end`, inside the region whose uint64 size is at `size_at`."""
    (size,) = struct.unpack_from("!Q", data, size_at)
    return put(data, size_at, "!Q", size + 1)[:end] + b"\0" + data[end:]


def test_nested_regions_must_be_consumed_exactly() -> None:
    qc = QuantumCircuit(1, 1)
    qc.measure(0, 0)
    with qc.if_test((qc.clbits[0], 1)):
        qc.x(0)
    block = dump_compiled(qc)
    (start,) = [p for p in positions(block)["parameter"] if block[p : p + 1] == b"q"]
    (size,) = struct.unpack_from("!Q", block, start + 1)
    with pytest.raises(ValueError, match="block circuit does not fill"):
        walk(_grow_region(block, start + 1, start + 9 + size))

    data, at = _one_custom_gate()
    name_size = struct.unpack_from("!H", data, at)[0]
    (size,) = struct.unpack_from("!Q", data, at + 12)
    body_end = at + qpy_walk._CUSTOM_DEF.size + name_size + size
    with pytest.raises(ValueError, match="definition circuit does not fill"):
        walk(_grow_region(data, at + 12, body_end))

    loop = _with_index_set(_nested_tuple(1))
    at = loop.index(_nested_tuple(1))
    with pytest.raises(ValueError, match="tuple does not fill"):
        walk(_grow_region(loop, at + 1, at + len(_nested_tuple(1))))


def test_registers_and_variables_of_unknown_kinds_are_refused() -> None:
    # An attachment other than 0/1 or an unknown type could be read differently by the reader
    # (how many bytes follow), leaving the walk out of step with it.
    qc = QuantumCircuit(QuantumRegister(2, "q"), ClassicalRegister(1, "c"))
    qc.measure(0, 0)
    data = dump_compiled(qc)
    for at in positions(data)["register"]:
        with pytest.raises(ValueError, match="a register of"):
            walk(put(data, at + 9, "!B", 2))  # "!1c?IH?B": attachment at +9
        with pytest.raises(ValueError, match="a register of"):
            walk(put(data, at, "!c", b"x"))
    stretchy = QuantumCircuit(1)
    stretchy.add_stretch("s")
    data = dump_compiled(stretchy)
    (at,) = positions(data)["variable"]
    assert walk(data).circuits == 1
    with pytest.raises(ValueError, match="usage"):
        walk(put(data, at + 16, "!c", b"Z"))
    with pytest.raises(ValueError, match="a variable of type"):
        walk(put(data, at + 19, "!c", b"Z"))


def _timed_refusal(data: bytes, match: str) -> None:
    start = time.perf_counter()
    with pytest.raises(ValueError, match=match):
        walk(data)
    assert time.perf_counter() - start < 0.05


def test_huge_declared_counts_are_refused_in_constant_time() -> None:
    theta = Parameter("θ")
    qc = QuantumCircuit(1)
    qc.rz(2 * theta + 1, 0)
    data = dump_compiled(qc)
    # PARAMETER_EXPR "!QQ": symbol-map entries first.
    (at,) = positions(data)["parameter expression"]
    for symbols in (1 << 20, 1 << 63):
        _timed_refusal(put(data, at, "!Q", symbols), "expression symbols")
    (at,) = positions(data)["annotation namespaces"]
    _timed_refusal(put(data, at, "!I", (1 << 32) - 1), "annotation namespaces")
    (at,) = positions(data)["parameter vectors"]
    _timed_refusal(put(data, at, "!H", (1 << 16) - 1), "parameter vectors")
    (at,) = positions(data)["custom definitions"]
    _timed_refusal(put(data, at, "!Q", (1 << 64) - 1), "custom definitions")
    (at,) = positions(data)["instructions" if False else "layout"]
    del at

    laid = QuantumCircuit(2, 2)
    laid.h(0)
    laid.cx(0, 1)
    laid.measure([0, 1], [0, 1])
    from qiskit_ibm_runtime.fake_provider import FakeManilaV2

    compiled = dump_compiled(transpile(laid, target=FakeManilaV2().target, seed_transpiler=1))
    (at,) = positions(compiled)["layout"]
    # LAYOUT_V2 "!?iiiIi": initial, input and final sizes at +1, +5, +9, extra registers at +13.
    for field in (1, 5, 9):
        _timed_refusal(put(compiled, at + field, "!i", (1 << 31) - 1), "layout")
        with pytest.raises(ValueError, match="negative layout"):
            walk(put(compiled, at + field, "!i", -2))
    _timed_refusal(put(compiled, at + 13, "!I", (1 << 32) - 1), "layout registers")


def _gates(count: int) -> bytes:
    qc = QuantumCircuit(2)
    for index in range(count):
        body = QuantumCircuit(2, name=f"g{index}")
        body.cx(0, 1)
        qc.append(body.to_gate(), [0, 1])
    return dump_compiled(qc)


def test_every_field_the_walk_decides_on_is_checked() -> None:
    data = dump_compiled(QuantumCircuit(1))
    with pytest.raises(ValueError, match="not a circuit"):
        walk(put(data, TABLE_AT - 1, "!c", b"s"))

    qc = QuantumCircuit(QuantumRegister(2, "q"))
    data = dump_compiled(qc)
    (at,) = positions(data)["register"]
    with pytest.raises(ValueError, match="a register of"):
        walk(put(put(data, at + 2, "!I", MAX_COMPILED_CLBITS + 1), at + 9, "!B", 1))

    qc = QuantumCircuit(1)
    qc.rz(qpy_walk_vector()[0], 0)
    data = dump_compiled(qc)
    (at,) = positions(data)["parameter vector"]
    with pytest.raises(ValueError, match="parameter vector of"):
        walk(put(data, at + 2, "!Q", qpy_walk._MAX_VECTOR_SIZE + 1))

    data, at = _one_custom_gate()
    with pytest.raises(ValueError, match="custom definition of type"):
        walk(put(data, at + 2, "!c", b"x"))
    # "!H1cII?QIIQ": qubits at +3, control qubits at +20.
    with pytest.raises(ValueError, match="custom definition declares"):
        walk(put(data, at + 20, "!I", 3))


def qpy_walk_vector() -> Any:
    from qiskit.circuit import ParameterVector

    return ParameterVector("v", 2)


def test_definitions_without_a_circuit_count_towards_the_total_bits() -> None:
    # A definition the reader builds without a circuit header (no definition, a Pauli
    # evolution, an annotated operation) still declares its bits: 40 of 2^16 qubits each.
    data = _gates(40)
    hostile = data
    for at in positions(data)["custom definition"]:
        hostile = put(put(hostile, at + 3, "!I", MAX_COMPILED_QUBITS), at + 11, "!?", False)
    with pytest.raises(ValueError, match="in all"):
        walk(hostile)


def test_a_base_gate_must_fill_its_bytes() -> None:
    body = QuantumCircuit(2, name="zzgate")
    body.cx(0, 1)
    qc = QuantumCircuit(3)
    qc.append(body.to_gate().control(1, ctrl_state=0), [2, 0, 1])
    data = dump_compiled(qc)
    for at in positions(data)["custom definition"]:
        fields = struct.unpack_from("!H1cII?QIIQ", data, at)
        name_size, size, base_size = fields[0], fields[5], fields[8]
        if base_size:
            base_end = at + qpy_walk._CUSTOM_DEF.size + name_size + size + base_size
            with pytest.raises(ValueError, match="base gate does not fill"):
                walk(_grow_region(data, at + 28, base_end))
            return
    raise AssertionError("no base gate in the payload")


def test_an_instruction_the_walk_cannot_follow_is_refused() -> None:
    qc = QuantumCircuit(1, 1)
    qc.rx(0.5, 0)
    qc.measure(0, 0)
    data = dump_compiled(qc)
    rx, measure = positions(data)["instruction"]
    # CIRCUIT_INSTRUCTION_V2 "!HHHIIBHqII": name size at +0, qargs +6, cargs +10, extras +14.
    size = qpy_walk._INSTRUCTION.size
    cases = [
        (put(data, rx + 14, "!B", 0x04), "instruction extras"),
        (put(data, rx + 6, "!I", MAX_COMPILED_QUBITS + 1), "an instruction on"),
        (put(data, rx + 10, "!I", MAX_COMPILED_CLBITS + 1), "an instruction on"),
        (put(data, measure, "!H", 0xFFFF), "name, label or condition"),
    ]
    args = measure + size + struct.unpack_from("!H", data, measure)[0]
    assert data[args : args + 1] == b"q" and data[args + 5 : args + 6] == b"c"
    cases.append((put(data, args, "!c", b"x"), "argument of another kind"))
    cases.append((put(data, args + 5, "!c", b"q"), ""))  # a kind the reader checks
    name_size = struct.unpack_from("!H", data, rx)[0]
    # rx's one qubit argument (5 bytes) then its parameter's type key.
    cases.append((put(data, rx + size + name_size + 5, "!c", b"Q"), "a parameter of type"))
    for hostile, match in cases:
        if match:
            with pytest.raises(ValueError, match=match):
                walk(hostile)
        else:
            walk(hostile)
