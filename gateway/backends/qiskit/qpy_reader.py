"""Reading a client's QPY payload (Qiskit's binary circuit format) in a compile worker.

QPY is parsed by Qiskit's reader (Rust from format version 13 on; older versions go through a
Python reader that trusts its input far more). What a client sends is checked in three steps:

1. Before the reader runs, linear in the header only: the magic bytes, a format version in
   [QPY_MIN_VERSION, QPY_MAX_VERSION] (so only the Rust reader ever runs), exactly one program,
   a circuit (not a pulse schedule), and the top-level circuit's declared qubits, classical bits
   and instructions against the backend's limits: the reader allocates for every declared bit
   before reading any, and a few million of them make it abort the process.
2. The reader itself: whatever it raises (an exception, or a Rust panic, a BaseException) is
   INVALID_QPY with its message cleaned of terminal escapes and backtraces; RecursionError is
   CIRCUIT_TOO_COMPLEX. What it allocates for sizes declared deeper inside the payload (the
   headers of nested control-flow blocks and gate definitions, whose parse costs memory
   quadratic in their nesting) is bounded by the compile worker's memory, CPU-time and
   wall-clock limits, like everything a compile does.
3. After it, on the circuit: only gates (standard, library, unitary, or custom gates with a
   definition made of gates), measure, reset, barrier, delay and control flow; no classical
   variables or stretches; every instruction applied to as many bits as it declares; every
   unitary gate's matrix unitary (the reader checks only its shape). The
   circuit's own layout (from a transpiled circuit) is dropped: the gateway lays circuits out
   itself, and observables refer to the circuit's qubits as sent.

This module imports qiskit at the top; `qiskit_frontend.parse_circuit` imports it on first use.
"""

from __future__ import annotations

import io
import re
import struct
import warnings
from collections.abc import Collection, Iterator
from dataclasses import dataclass

import numpy as np
import qiskit.qpy
from qiskit.circuit import (
    Barrier,
    BreakLoopOp,
    ContinueLoopOp,
    ControlFlowOp,
    ControlledGate,
    Delay,
    ForLoopOp,
    Gate,
    Measure,
    QuantumCircuit,
    Reset,
    WhileLoopOp,
)
from qiskit.circuit.exceptions import CircuitError
from qiskit.circuit.library import UnitaryGate
from qiskit.qpy import common as qpy_common

from gateway.backends.base import MAX_COMPILED_CLBITS, MAX_COMPILED_QUBITS, CircuitLimits
from gateway.backends.qiskit import frontend as fe
from gateway.backends.qiskit.qpy_walk import QPY_COMPILED_VERSION, QpyWalk, walk_compiled
from gateway.domain.errors import InvalidArgument

__all__ = [
    "QPY_MAX_VERSION",
    "QPY_MIN_VERSION",
    "QpyHeader",
    "check_compiled",
    "load_circuit",
    "read_header",
]

# The oldest format the Rust reader reads (older payloads go through Qiskit's Python reader,
# which fails on crafted input with arbitrary exceptions and allocations); Qiskit 1.3 and later
# write it (qiskit.qpy.dump(..., version=13)).
QPY_MIN_VERSION = max(13, qpy_common.QPY_RUST_READ_MIN_VERSION)
QPY_MAX_VERSION: int = qiskit.qpy.QPY_VERSION

_MAGIC = b"QISKIT"
# FILE_HEADER_V10: magic, format version, Qiskit major/minor/patch, programs, symbol encoding.
_FILE_HEADER = struct.Struct("!6sBBBBQc")
_TYPE_KEY_SIZE = 1
_CIRCUIT_KEY = b"q"
_SCHEDULE_KEY = b"s"
# From version 16 a table of 8-byte program offsets follows the type key.
_TABLE_FROM_VERSION = 16
_TABLE_ENTRY_SIZE = 8
# CIRCUIT_HEADER_V12: name size, global phase type and size, qubits, clbits, metadata size,
# registers, instructions, variables.
_CIRCUIT_HEADER = struct.Struct("!H1cHIIQIQI")

_ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")
_RUST_ERROR = re.compile(r"Error: ([^\n]+)")
_RUST_FIELD = re.compile(r"While parsing field '([^']+)'")
_PASSIVE = (Barrier, Delay)
# `break` and `continue` are no ControlFlowOp (no blocks); like measure and reset, not in a
# gate's definition.
_NON_UNITARY = (Measure, Reset, BreakLoopOp, ContinueLoopOp)


def qpy_versions() -> str:
    """The QPY format versions this gateway reads, e.g. "13-18" (Backend.properties)."""
    return f"{QPY_MIN_VERSION}-{QPY_MAX_VERSION}"


def _invalid_qpy(message: str, field: str, **metadata: object) -> InvalidArgument:
    return fe.invalid("INVALID_QPY", message, field, **metadata)


@dataclass(frozen=True)
class QpyHeader:
    """What a QPY payload declares about its one circuit, read without parsing the rest."""

    version: int
    num_qubits: int
    num_clbits: int
    num_instructions: int


def read_header(data: bytes, field: str) -> QpyHeader:
    """The file header and the top-level circuit header, checked.

    Raises:
        InvalidArgument: INVALID_QPY (not QPY, a version outside the range read, not exactly one
            circuit, truncated).
    """
    if not data.startswith(_MAGIC) or len(data) < len(_MAGIC) + 1:
        raise _invalid_qpy(
            "not a QPY payload: it must start with b'QISKIT' (qiskit.qpy.dump)", field
        )
    version = data[len(_MAGIC)]
    if not QPY_MIN_VERSION <= version <= QPY_MAX_VERSION:
        raise _invalid_qpy(
            f"QPY format version {version} is not read here; this gateway reads versions "
            f"{QPY_MIN_VERSION} to {QPY_MAX_VERSION} (qiskit.qpy.dump(..., version=...))",
            field,
            qpyVersion=version,
            minQpyVersion=QPY_MIN_VERSION,
            maxQpyVersion=QPY_MAX_VERSION,
        )
    start = _FILE_HEADER.size + _TYPE_KEY_SIZE
    if len(data) < start:
        raise _invalid_qpy("the QPY payload ends inside its file header", field)
    programs = _FILE_HEADER.unpack_from(data)[5]
    if programs != 1:
        raise _invalid_qpy(
            f"the QPY payload holds {programs} programs; a circuit field takes exactly one",
            field,
            numPrograms=programs,
        )
    kind = data[_FILE_HEADER.size : start]
    if kind != _CIRCUIT_KEY:
        what = "a pulse schedule" if kind == _SCHEDULE_KEY else "not a circuit"
        raise _invalid_qpy(f"the QPY payload holds {what}; a circuit field takes a circuit", field)
    if version >= _TABLE_FROM_VERSION:
        start += _TABLE_ENTRY_SIZE
    if len(data) < start + _CIRCUIT_HEADER.size:
        raise _invalid_qpy("the QPY payload ends inside its circuit header", field)
    header = _CIRCUIT_HEADER.unpack_from(data, start)
    # Every metadata byte, register, instruction and variable takes at least a byte of the
    # payload: a count past its length is a lie the reader would allocate for.
    for name, declared in (
        ("metadata bytes", header[5]),
        ("registers", header[6]),
        ("instructions", header[7]),
        ("variables", header[8]),
    ):
        if declared > len(data):
            raise _invalid_qpy(
                f"the QPY circuit header declares {declared} {name}, more than its "
                f"{len(data)} bytes can hold",
                field,
                payloadBytes=len(data),
            )
    return QpyHeader(
        version=version, num_qubits=header[3], num_clbits=header[4], num_instructions=header[7]
    )


def _reader_message(exc: BaseException) -> str:
    """The reader's complaint without terminal escapes, backtraces or client bytes."""
    # The Rust reader's errors arrive as the repr of a report: escapes written out.
    text = str(exc).replace("\\x1b", "\x1b").replace("\\n", "\n").strip('"')
    text = _ANSI.sub("", text)
    error = _RUST_ERROR.search(text)
    if error is not None:
        message = error[1].strip().rstrip(".")
        where = _RUST_FIELD.search(text)
        if where is not None:
            message += f" (while reading field {where[1]!r})"
    else:
        message = text.strip().splitlines()[0] if text.strip() else type(exc).__name__
        message = message.removeprefix("binary parsing error:").strip()
    return fe._clip(message)


def _reader_refusal(exc: BaseException, field: str) -> InvalidArgument:
    message = _reader_message(exc)
    if "memory allocation failed" in message:
        # Sizes declared deeper than the header check reaches (a nested block's bits), which
        # the compile worker's memory limit refused to allocate.
        return fe.invalid(
            "CIRCUIT_TOO_COMPLEX",
            "reading the QPY payload exceeded the memory limit (it declares sizes the reader "
            "allocates for)",
            field,
            limit="memory",
        )
    return _invalid_qpy(f"QPY payload rejected: {message}", field)


def _load(data: bytes, field: str) -> QuantumCircuit:
    try:
        with warnings.catch_warnings():
            # E.g. "written by a newer Qiskit": refusals below say what matters.
            warnings.simplefilter("ignore")
            programs = qiskit.qpy.load(io.BytesIO(data))
    except (MemoryError, InvalidArgument):
        raise
    except RecursionError:
        raise fe.invalid(
            "CIRCUIT_TOO_COMPLEX", "the QPY circuit nests blocks or definitions too deeply", field
        ) from None
    except Exception as exc:
        raise _reader_refusal(exc, field) from None
    except BaseException as exc:
        if not fe._is_sdk_panic(exc):
            raise
        raise _reader_refusal(exc, field) from None
    if len(programs) != 1 or not isinstance(programs[0], QuantumCircuit):
        raise _invalid_qpy("the QPY payload does not hold exactly one circuit", field)
    circuit = programs[0]
    # A transpiled circuit's layout describes where someone else placed it; this circuit's
    # qubits are what the client's observables and results refer to.
    circuit._layout = None
    return circuit


def check_operations(circuit: QuantumCircuit, field: str) -> None:
    """Only what the OpenQASM readers can produce, plus library and unitary gates.

    Top level and control-flow blocks: gates, measure, reset, barrier, delay, control flow.
    Custom gate definitions: gates, barrier and delay only (a gate is unitary). No instruction
    may name one qubit or clbit twice; a unitary gate's matrix must be unitary. Each distinct
    definition is looked at once, so nested definitions cost linear time.

    Raises:
        InvalidArgument: INVALID_QPY, UNKNOWN_GATE or UNSUPPORTED_FEATURE.
    """
    seen: set[tuple[object, ...]] = set()
    # (a body, inside a gate's definition, inside a loop)
    pending: list[tuple[QuantumCircuit, bool, bool]] = [(circuit, False, False)]
    while pending:
        body, in_definition, in_loop = pending.pop()
        if body.num_identifiers:
            raise fe.invalid(
                "UNSUPPORTED_FEATURE",
                "classical variables and stretches are not supported",
                field,
                feature="classical_variables",
            )
        for instruction in body.data:
            try:
                op = instruction.operation
            except CircuitError as exc:
                # Built only now, from what the reader kept: a fractional delay, which the
                # reader gives the unit dt (QPY does not carry units), is refused here.
                raise _invalid_qpy(
                    f"instruction {fe._clip(instruction.name)!r} cannot be built: "
                    f"{fe._clip(str(exc))}",
                    field,
                    instruction=instruction.name,
                ) from None
            name = op.name
            if op.num_qubits != len(instruction.qubits) or op.num_clbits != len(instruction.clbits):
                raise _invalid_qpy(
                    f"instruction {fe._clip(name)!r} acts on {op.num_qubits} qubits and "
                    f"{op.num_clbits} clbits but is applied to {len(instruction.qubits)} and "
                    f"{len(instruction.clbits)}",
                    field,
                    instruction=name,
                )
            if len(set(instruction.qubits)) != len(instruction.qubits) or len(
                set(instruction.clbits)
            ) != len(instruction.clbits):
                # QPY's reader appends without QuantumCircuit.append's checks; the transpiler
                # panics on such an instruction ("not a DAG").
                raise _invalid_qpy(
                    f"instruction {fe._clip(name)!r} is applied to the same qubit or clbit twice",
                    field,
                    instruction=name,
                )
            if isinstance(op, ControlFlowOp):
                if in_definition:
                    raise _not_unitary(name, field)
                looped = in_loop or isinstance(op, ForLoopOp | WhileLoopOp)
                pending.extend((block, False, looped) for block in op.blocks)
                continue
            if isinstance(op, _PASSIVE):
                continue
            if isinstance(op, _NON_UNITARY):
                if in_definition:
                    raise _not_unitary(name, field)
                if isinstance(op, BreakLoopOp | ContinueLoopOp) and not in_loop:
                    # Aer's assembler raises TypeError on it (an SDK_ERROR the breaker counts).
                    raise _invalid_qpy(f"{name!r} outside any loop", field, instruction=name)
                continue
            if not isinstance(op, Gate):
                raise fe.invalid(
                    "UNSUPPORTED_FEATURE",
                    f"instruction {fe._clip(name)!r} is not a gate, measure, reset, barrier, "
                    "delay or control flow; decompose it before serialising "
                    "(QuantumCircuit.decompose)",
                    field,
                    feature="custom_instruction",
                    instruction=name,
                )
            _check_unitary(op, field)
            if fe._is_atomic(op):
                continue
            key = fe._definition_key(op)
            if key in seen:
                continue
            seen.add(key)
            definition = getattr(op, "definition", None)
            if definition is None:
                raise fe.invalid(
                    "UNKNOWN_GATE",
                    f"gate {fe._clip(name)!r} has no definition (opaque gates are not supported)",
                    field,
                    gate=name,
                )
            pending.append((definition, True, False))


def _check_unitary(op: Gate, field: str) -> None:
    """INVALID_QPY when a UnitaryGate's matrix (or a controlled gate's base) is not unitary.

    QPY carries the matrix as written, and `UnitaryGate(m, check_input=False)` writes any
    square matrix: Aer applied one and renormalised the state (a distribution no circuit
    gives), and the transpiler synthesised something else or failed (COMPILER_FAILED). The
    rule is the front end's for every client matrix (`fe.why_not_unitary`, Qiskit's own
    tolerance; a 7-qubit matrix is 256 KiB of max_source_bytes). A matrix with inf or NaN is
    left to check_finite_parameters (NON_FINITE_ANGLE)."""
    base = op.base_gate if isinstance(op, ControlledGate) else op
    if not isinstance(base, UnitaryGate):
        return
    matrix = np.asarray(base.params[0])
    if not np.all(np.isfinite(matrix)):
        return
    not_unitary = fe.why_not_unitary(matrix)
    if not_unitary is None:
        return
    raise _invalid_qpy(
        f"the matrix of {fe._clip(op.name)!r} is not unitary ({not_unitary})",
        field,
        instruction=op.name,
    )


def _not_unitary(name: str, field: str) -> InvalidArgument:
    return _invalid_qpy(
        f"a gate definition contains {fe._clip(name)!r}; gate definitions hold gates only",
        field,
        instruction=name,
    )


def load_circuit(
    data: bytes,
    limits: CircuitLimits,
    field: str,
    *,
    max_qubits: int | None = None,
    native: Collection[str] | None = None,
) -> QuantumCircuit:
    """One circuit from a client's QPY payload, checked like a parsed OpenQASM program.

    Raises:
        InvalidArgument: CIRCUIT_TOO_LARGE, INVALID_QPY, TOO_MANY_QUBITS, UNKNOWN_GATE,
            UNSUPPORTED_FEATURE, NON_FINITE_ANGLE or CIRCUIT_TOO_COMPLEX.
    """
    size = len(data)
    if size > limits.max_source_bytes:
        raise fe.invalid(
            "CIRCUIT_TOO_LARGE",
            f"circuit source is {size} bytes; the limit is {limits.max_source_bytes}",
            field,
            sourceBytes=size,
            maxSourceBytes=limits.max_source_bytes,
        )
    header = read_header(data, field)
    fe._check_declared(header.num_qubits, header.num_clbits, limits, max_qubits, field)
    if header.num_instructions > limits.max_operations:
        raise fe.invalid(
            "CIRCUIT_TOO_LARGE",
            f"the QPY circuit declares {header.num_instructions} instructions; the limit is "
            f"{limits.max_operations}",
            field,
            maxOperations=limits.max_operations,
        )
    circuit = _load(data, field)
    check_operations(circuit, field)
    if max_qubits is not None:
        fe.check_qubit_count(circuit, max_qubits, field)
    fe.check_operation_count(circuit, limits, field, native=native)
    fe.check_finite_parameters(circuit, field)
    return circuit


# A compiled circuit (CircuitRef) comes from a compile worker, which ran client input: every
# circuit header in it (the top level, each control-flow block, each custom definition) is
# checked by `qpy_walk.walk_compiled` before Qiskit's reader allocates for what it declares (a
# 417-byte payload declaring 2^25 qubits in an if block took 12 GB and aborted the process).
_MAX_COMPILED_INSTRUCTIONS = 1 << 24
# Qiskit 2.6's QPY reader reads every delay's unit as "dt" (10 ns reads back as 10 dt, 1.5 us
# does not load at all). A compiled circuit carries its delays' units, in the order
# `_delay_units` walks them, in this metadata entry; they are put back when it is read.
_DELAY_UNITS = "qgateway.delay_units"
_TIME_UNITS = frozenset({"s", "ms", "us", "ns", "ps", "dt"})
_CONTROL_FLOW = frozenset({"if_else", "while_loop", "for_loop", "switch_case", "box"})


def dump_compiled(circuit: QuantumCircuit) -> bytes:
    """A compiled circuit as QPY, which `load_compiled` reads back.

    Raises:
        ValueError: a delay whose duration is an expression (no simulator or device here runs
            one; QPY would carry it, but not as a time).
    """
    units = _delay_units(circuit)
    metadata = dict(circuit.metadata or {})
    # A client's QPY may name the entry itself: it is never the client's to set.
    spoofed = metadata.pop(_DELAY_UNITS, None) is not None
    if any(unit != "dt" for unit in units):
        metadata[_DELAY_UNITS] = units
    if spoofed or _DELAY_UNITS in metadata:
        circuit = circuit.copy()
        circuit.metadata = metadata
    buffer = io.BytesIO()
    # The one version `load_compiled` (and its structural walk) reads.
    qiskit.qpy.dump(circuit, buffer, version=QPY_COMPILED_VERSION)
    return buffer.getvalue()


def check_compiled(data: bytes) -> QpyWalk:
    """`qpy_walk.walk_compiled` with a compiled circuit's bounds: what `load_compiled` checks
    before Qiskit's reader runs. Linear in the bytes, allocating nothing per declared count.

    Raises:
        ValueError: see `walk_compiled`.
    """
    return walk_compiled(
        data,
        max_qubits=MAX_COMPILED_QUBITS,
        max_clbits=MAX_COMPILED_CLBITS,
        max_instructions=_MAX_COMPILED_INSTRUCTIONS,
    )


def load_compiled(data: bytes) -> QuantumCircuit:
    """A compiled circuit's QPY (what `CircuitRef` holds, `dump_compiled`'s), its layout kept.

    Raises:
        ValueError: not one circuit in the QPY version `dump_compiled` writes, any circuit
            header (nested blocks and definitions included) past the bounds above, a structure
            the walk does not understand, or whatever the reader refuses (a Rust panic included).
    """
    check_compiled(data)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # e.g. "written by a newer Qiskit"
            programs = qiskit.qpy.load(io.BytesIO(data))
    except Exception as exc:
        raise ValueError(f"{type(exc).__name__}: {str(exc)[:300]}") from None
    except BaseException as exc:
        if not fe._is_sdk_panic(exc):
            raise
        raise ValueError(f"{type(exc).__name__}: {str(exc)[:300]}") from None
    if len(programs) != 1 or not isinstance(programs[0], QuantumCircuit):
        raise ValueError("a compiled circuit is one QuantumCircuit")
    circuit = programs[0]
    units = (circuit.metadata or {}).pop(_DELAY_UNITS, None)
    if units is not None:
        if not (isinstance(units, list) and all(unit in _TIME_UNITS for unit in units)):
            raise ValueError("a compiled circuit's delay units are not time units")
        remaining = iter(units)
        _put_delay_units(circuit, remaining)
        if next(remaining, None) is not None:
            raise ValueError("a compiled circuit with more delay units than delays")
    return circuit


def _delay_units(circuit: QuantumCircuit) -> list[str]:
    ops = circuit.count_ops()
    if "delay" not in ops and not _CONTROL_FLOW.intersection(ops):
        return []
    units: list[str] = []
    for instruction in circuit.data:
        if instruction.name == "delay":
            unit = instruction.operation.unit
            if unit not in _TIME_UNITS:
                raise ValueError(f"a delay whose duration is {unit!r}, not a time")
            units.append(unit)
        elif instruction.name in _CONTROL_FLOW:
            for block in instruction.operation.blocks:
                units += _delay_units(block)
    return units


def _put_delay_units(circuit: QuantumCircuit, units: Iterator[str]) -> None:
    """Rebuilds each delay (in `_delay_units`' order) with its unit, without ever building the
    delay the reader made (which raises for a fractional duration in "dt")."""
    for index, instruction in enumerate(circuit.data):
        if instruction.name == "delay":
            unit = next(units, None)
            if unit is None:
                raise ValueError("a compiled circuit with fewer delay units than delays")
            (duration,) = instruction.params
            try:
                delay = Delay(duration, unit)
            except Exception as exc:
                raise ValueError(f"a compiled circuit's delay: {exc}") from None
            circuit._data[index] = instruction.replace(operation=delay)
        elif instruction.name in _CONTROL_FLOW:
            operation = instruction.operation
            blocks = list(operation.blocks)
            for block in blocks:
                _put_delay_units(block, units)
            circuit._data[index] = instruction.replace(operation=operation.replace_blocks(blocks))
