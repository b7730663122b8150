"""A structural pre-check of a compiled circuit's QPY, before Qiskit's reader sees it.

Why: a compiled circuit (`qpy_reader.dump_compiled`'s bytes) comes back from a compile worker,
which ran client input and may have been taken over; the IBM and Braket runners read it in the
gateway process. Qiskit's (Rust) reader allocates for every bit a circuit header declares before
reading any, and a circuit header sits not only at the top of the payload but in every
control-flow block (a circuit-valued instruction parameter) and every custom gate's definition:
one of them declaring 2^25 qubits made the reader ask for ~12 GB and abort the process.

What: `walk_compiled` follows the payload's structure (the format is specified in the docstring
of `qiskit.qpy`; `qiskit/qpy/formats.py` has the structs) far enough to reach every circuit
header, and refuses (ValueError) a header declaring more qubits, clbits or instructions than
the bounds given, a count that cannot fit in the bytes left, nesting deeper than `max_depth`,
or anything it does not understand. Only the version `dump_compiled` writes
(`QPY_COMPILED_VERSION`) is walked: the writer and this walker are in the same process image,
so no other version is ever legitimate.

How it stays safe on hostile bytes:
- every length is checked against the bytes left in its enclosing region before it is used,
  and a nested region (a definition, a parameter) must be consumed exactly;
- nothing is allocated in proportion to a declared count: loops run over declared counts only
  after the count was checked against the bytes left, and every iteration consumes bytes, so
  the whole walk is linear in the payload;
- recursion (circuit -> instruction parameter -> tuple -> circuit ...) carries a depth, refused
  past `max_depth`, far below Python's recursion limit (one frame per level).

What it does not look into (skipped by their length prefix, left to the reader and the
checks after it): names, labels, metadata JSON, global phase, numbers, parameter expressions'
replay, numpy arrays, classical expressions, Pauli evolution operators, annotations' payloads.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from typing import Any

__all__ = ["QPY_COMPILED_VERSION", "QpyWalk", "walk_compiled"]

# What `dump_compiled` writes (qiskit 2.6's QPY_VERSION); any other version is refused.
QPY_COMPILED_VERSION = 18
# Levels of nesting: a circuit in a circuit (a block, a definition), a tuple in a parameter, a
# base gate. Above what Qiskit's own reader survives (it raises RecursionError past ~48 nested
# blocks, ~96 nested definitions; the front end allows definitions 64 deep), and low enough
# that the walk's recursion (at most 3 Python frames per level) stays far from Python's limit.
MAX_QPY_DEPTH = 128
# Qubits and clbits declared by all circuit headers together. The reader allocates for each
# (~360 bytes a qubit: 2^25 took 12 GB), and a nested header costs ~60 bytes of payload, so a
# bound per header alone would let 10,000 blocks of 2^16 qubits each through. The top level
# may declare up to 2^16 + 2^20; this leaves as much again for everything nested (a transpiled
# circuit's blocks and definitions declare the few bits they use).
MAX_QPY_TOTAL_BITS = 1 << 21

# FILE_HEADER_V10: magic, version, Qiskit major/minor/patch, number of programs, symbol encoding.
_FILE_HEADER = struct.Struct("!6sBBBBQc")
_MAGIC = b"QISKIT"
# From version 16: the program's type key, then a table of one 8-byte offset per program.
_OFFSET = struct.Struct("!Q")
# CIRCUIT_HEADER_V12: name size, global phase type and size, qubits, clbits, metadata size,
# registers, instructions, standalone variables.
_CIRCUIT_HEADER = struct.Struct("!H1cHIIQIQI")
# REGISTER (version 18): type (b"q"/b"c"/b"a"), standalone, size, name size, in circuit,
# attachment; then the name and `size` uint32 bit indices, or only the first one when attached
# (a contiguous range).
_REGISTER = struct.Struct("!1c?IH?B")
_REGISTER_INDEX_SIZE = 4
_REGISTER_KINDS = frozenset((b"q", b"c", b"a"))
# EXPR_VAR_DECLARATION: uuid, usage, name size; then a type (1 byte, +4 for uint), the name.
_VAR_DECLARATION = struct.Struct("!16scH")
_UINT_WIDTH_SIZE = 4
_VAR_TYPES = frozenset(b"bufd")
_VAR_USAGES = frozenset(b"ICLAO")
# ANNOTATION_HEADER_STATIC (namespaces) and per namespace ANNOTATION_STATE_HEADER.
_COUNT32 = struct.Struct("!I")
_ANNOTATION_STATE = struct.Struct("!IQ")
# PARAMETER_VECTOR_TABLE (version 18): count, then per vector name size, vector size, uuid and
# the name. The reader builds every element of a vector: its size is bounded.
_COUNT16 = struct.Struct("!H")
_VECTOR = struct.Struct("!HQ16s")
# CUSTOM_CIRCUIT_DEF_HEADER (count), then per definition CUSTOM_CIRCUIT_INST_DEF_V2: name size,
# type, qubits, clbits, has definition, size, control qubits, control state, base gate size;
# then the name, `size` bytes of definition, `base gate size` bytes of one instruction.
_COUNT64 = struct.Struct("!Q")
_CUSTOM_DEF = struct.Struct("!H1cII?QIIQ")
# Custom types. Qiskit's reader does not go by the type to read a definition's bytes: any
# definition it is told exists is read as a circuit, unless its name marks a Pauli evolution
# (the Python reader's `_read_custom_operations` does the same). A b"p" or b"a" definition
# under another name, with a circuit declaring 2^25 qubits, aborted the reader past a walk that
# skipped it by type: the walk follows the reader's rule instead, and only skips a Pauli
# evolution's operator when both the type and the name say so.
_CUSTOM_TYPES = frozenset(b"gicpa")
_PAULI_EVOLUTION_TYPE = ord("p")
_PAULI_EVOLUTION_NAME = b"###PauliEvolutionGate_"
# CIRCUIT_INSTRUCTION_V2: name size, label size, parameters, qargs, cargs, extras (condition
# kind in the low 2 bits, 0x80 = has annotations), condition register size, condition value,
# control qubits, control state.
_INSTRUCTION = struct.Struct("!HHHIIBHqII")
_CONDITION_MASK = 0b11
_CONDITION_NONE, _CONDITION_REGISTER, _CONDITION_EXPR = 0, 1, 2
_HAS_ANNOTATIONS = 0x80
_KNOWN_EXTRAS = _CONDITION_MASK | _HAS_ANNOTATIONS
# CIRCUIT_INSTRUCTION_ARG: b"q"/b"c" and an index.
_ARG = struct.Struct("!1cI")
# INSTRUCTION_PARAM (generic typed data): type key, size; then `size` bytes.
_TYPED = struct.Struct("!1cQ")
_INSTRUCTION_ANNOTATION = struct.Struct("!IQ")
# LAYOUT_V2: exists, initial layout size, input mapping size, final layout size, extra
# registers, input qubit count; then the extra registers, per initial-layout entry an int32
# index and, unless the index is -1 (an anonymous qubit, from version 18), an int32 register
# name size (-1: none) and the name; one uint32 per input-mapping and final-layout entry.
_LAYOUT = struct.Struct("!?iiiIi")
_INT32 = struct.Struct("!i")
_ANONYMOUS = -1
_LAYOUT_INDEX_SIZE = 4
# Value type keys inside a parameter that matter here: a circuit, a tuple (a sequence of
# typed data, e.g. a switch's cases), a parameter expression.
_CIRCUIT_KEY = b"q"
_TUPLE_KEY = b"t"
_EXPRESSION_KEY = b"e"
# PARAMETER_EXPR: symbol-map entries, expression size; an entry takes at least
# PARAM_EXPR_MAP_ELEM_V3 (10 bytes) plus a vector element reference (10 bytes, version 18).
_PARAMETER_EXPR = struct.Struct("!QQ")
_MIN_SYMBOL_ENTRY = 20
# The largest parameter vector declared in a vector table.
_MAX_VECTOR_SIZE = 1 << 20
_PARAM_KEYS = frozenset(b"ifcdRnpvesztxmrq")


@dataclass(frozen=True)
class QpyWalk:
    """What the walk saw: circuit headers (top level included), of which control-flow blocks
    (circuit-valued parameters), instructions in all of them, custom definitions, the deepest
    nesting, qubits and clbits declared by all headers, and where each circuit header starts
    (in payload order)."""

    circuits: int
    blocks: int
    instructions: int
    definitions: int
    depth: int
    bits: int
    headers: tuple[int, ...]


class _Walker:
    """One pass over `data`; positions are absolute, each region has an explicit end."""

    def __init__(
        self,
        data: bytes,
        max_qubits: int,
        max_clbits: int,
        max_instructions: int,
        max_depth: int,
        max_total_bits: int,
    ) -> None:
        self.data = data
        self.max_total_bits = max_total_bits
        self.total_bits = 0
        self.max_qubits = max_qubits
        self.max_clbits = max_clbits
        self.max_instructions = max_instructions
        self.max_depth = max_depth
        self.headers: list[int] = []
        self.blocks = 0
        self.instructions = 0
        self.definitions = 0
        self.depth = 0

    # -- bounded reads --------------------------------------------------------------------

    def _need(self, pos: int, size: int, end: int, what: str) -> int:
        """The position after `size` bytes at `pos`, if they lie inside the region."""
        if size < 0 or end - pos < size:
            raise ValueError(f"QPY: {what} ({size} bytes) runs past its region at byte {pos}")
        return pos + size

    def _unpack(
        self, layout: struct.Struct, pos: int, end: int, what: str
    ) -> tuple[int, tuple[Any, ...]]:
        after = self._need(pos, layout.size, end, what)
        return after, layout.unpack_from(self.data, pos)

    def _count(self, count: int, item_size: int, pos: int, end: int, what: str) -> None:
        """A declared count of items of at least `item_size` bytes must fit in what is left."""
        if count * item_size > end - pos:
            raise ValueError(
                f"QPY: {count} {what} declared at byte {pos} cannot fit in {end - pos} bytes"
            )

    def _add_bits(self, bits: int) -> None:
        self.total_bits += bits
        if self.total_bits > self.max_total_bits:
            raise ValueError(
                f"QPY: the circuit headers and definitions declare more than "
                f"{self.max_total_bits} qubits and clbits in all"
            )

    def _enter(self, depth: int) -> int:
        depth += 1
        if depth > self.max_depth:
            raise ValueError(f"QPY: nested deeper than {self.max_depth}")
        self.depth = max(self.depth, depth)
        return depth

    # -- the file -------------------------------------------------------------------------

    def file(self) -> None:
        end = len(self.data)
        pos, header = self._unpack(_FILE_HEADER, 0, end, "file header")
        magic, version, _major, _minor, _patch, programs, _encoding = header
        if magic != _MAGIC:
            raise ValueError("QPY: not a QPY payload")
        if version != QPY_COMPILED_VERSION:
            raise ValueError(
                f"QPY: format version {version}; a compiled circuit is version "
                f"{QPY_COMPILED_VERSION}"
            )
        if programs != 1:
            raise ValueError(f"QPY: {programs} programs; a compiled circuit is one")
        after = self._need(pos, 1, end, "program type")
        if self.data[pos : pos + 1] != _CIRCUIT_KEY:
            raise ValueError("QPY: the program is not a circuit")
        pos, (offset,) = self._unpack(_OFFSET, after, end, "program table")
        if offset != pos:
            raise ValueError(f"QPY: the program table points at byte {offset}, not {pos}")
        pos = self.circuit(pos, end, 0)
        if pos != end:
            raise ValueError(f"QPY: {end - pos} bytes after the circuit")

    # -- a circuit ------------------------------------------------------------------------

    def circuit(self, pos: int, end: int, depth: int) -> int:
        depth = self._enter(depth)
        self.headers.append(pos)
        pos, header = self._unpack(_CIRCUIT_HEADER, pos, end, "circuit header")
        (
            name_size,
            _phase_type,
            phase_size,
            qubits,
            clbits,
            metadata_size,
            registers,
            count,
            nvars,
        ) = header
        if qubits > self.max_qubits or clbits > self.max_clbits or count > self.max_instructions:
            raise ValueError(
                f"QPY: a circuit header declares {qubits} qubits, {clbits} clbits, {count} "
                f"instructions (at most {self.max_qubits}, {self.max_clbits}, "
                f"{self.max_instructions})"
            )
        self._add_bits(qubits + clbits)
        pos = self._need(pos, name_size, end, "circuit name")
        pos = self._need(pos, phase_size, end, "global phase")
        pos = self._need(pos, metadata_size, end, "metadata")
        self._count(registers, _REGISTER.size, pos, end, "registers")
        for _ in range(registers):
            pos = self.register(pos, end)
        self._count(nvars, _VAR_DECLARATION.size + 1, pos, end, "variables")
        for _ in range(nvars):
            pos = self.variable(pos, end)
        pos, (namespaces,) = self._unpack(_COUNT32, pos, end, "annotation namespaces")
        self._count(namespaces, _ANNOTATION_STATE.size, pos, end, "annotation namespaces")
        for _ in range(namespaces):
            pos, (ns_size, state_size) = self._unpack(_ANNOTATION_STATE, pos, end, "namespace")
            pos = self._need(pos, ns_size + state_size, end, "annotation state")
        pos, (vectors,) = self._unpack(_COUNT16, pos, end, "parameter vectors")
        self._count(vectors, _VECTOR.size, pos, end, "parameter vectors")
        for _ in range(vectors):
            pos, (name_size, length, _uuid) = self._unpack(_VECTOR, pos, end, "parameter vector")
            if length > _MAX_VECTOR_SIZE:
                raise ValueError(f"QPY: a parameter vector of {length} elements")
            pos = self._need(pos, name_size, end, "parameter vector name")
        pos, (definitions,) = self._unpack(_COUNT64, pos, end, "custom definitions")
        self._count(definitions, _CUSTOM_DEF.size, pos, end, "custom definitions")
        for _ in range(definitions):
            pos = self.definition(pos, end, depth)
        self._count(count, _INSTRUCTION.size, pos, end, "instructions")
        for _ in range(count):
            pos = self.instruction(pos, end, depth)
        self.instructions += count
        # Version 18 has no calibrations block (13-17 wrote an empty one).
        return self.layout(pos, end)

    def register(self, pos: int, end: int) -> int:
        pos, (kind, _standalone, size, name_size, _in_circuit, attached) = self._unpack(
            _REGISTER, pos, end, "register"
        )
        if kind not in _REGISTER_KINDS or attached not in (0, 1):
            raise ValueError(f"QPY: a register of kind {kind!r}, attachment {attached}")
        if size > max(self.max_qubits, self.max_clbits):
            raise ValueError(f"QPY: a register of {size} bits")
        pos = self._need(pos, name_size, end, "register name")
        indices = 1 if attached else size
        self._count(indices, _REGISTER_INDEX_SIZE, pos, end, "register bits")
        return pos + indices * _REGISTER_INDEX_SIZE

    def variable(self, pos: int, end: int) -> int:
        pos, (_uuid, usage, name_size) = self._unpack(_VAR_DECLARATION, pos, end, "variable")
        if usage[0] not in _VAR_USAGES:
            raise ValueError(f"QPY: a variable of usage {usage!r}")
        pos = self._need(pos, 1, end, "variable type")
        kind = self.data[pos - 1]
        if kind not in _VAR_TYPES:
            raise ValueError(f"QPY: a variable of type {bytes([kind])!r}")
        if kind == ord("u"):
            pos = self._need(pos, _UINT_WIDTH_SIZE, end, "uint width")
        return self._need(pos, name_size, end, "variable name")

    def definition(self, pos: int, end: int, depth: int) -> int:
        self.definitions += 1
        pos, header = self._unpack(_CUSTOM_DEF, pos, end, "custom definition")
        (name_size, kind, qubits, clbits, has_definition, size, ctrl_qubits, _state, base_size) = (
            header
        )
        if kind[0] not in _CUSTOM_TYPES:
            raise ValueError(f"QPY: a custom definition of type {kind!r}")
        if qubits > self.max_qubits or clbits > self.max_clbits or ctrl_qubits > qubits:
            raise ValueError(
                f"QPY: a custom definition declares {qubits} qubits ({ctrl_qubits} controls), "
                f"{clbits} clbits"
            )
        # Counted in the total as well (a Pauli evolution or annotated operation has no circuit
        # header of its own; a definition's bits count twice, which legitimate circuits afford).
        self._add_bits(qubits + clbits)
        name_at = pos
        pos = self._need(pos, name_size, end, "custom definition name")
        body_end = self._need(pos, size, end, "custom definition body")
        evolution = kind[0] == _PAULI_EVOLUTION_TYPE and self.data.startswith(
            _PAULI_EVOLUTION_NAME, name_at, pos
        )
        if has_definition and not evolution and self.circuit(pos, body_end, depth) != body_end:
            raise ValueError(f"QPY: a definition circuit does not fill its {size} bytes")
        pos = body_end
        base_end = self._need(pos, base_size, end, "base gate")
        # The base gate of a controlled gate or annotated operation: one instruction, written
        # without the bits it is applied to (its header still counts them).
        if base_size and (
            self.instruction(pos, base_end, self._enter(depth), applied=False) != base_end
        ):
            raise ValueError("QPY: a base gate does not fill its bytes")
        return base_end

    # -- an instruction -------------------------------------------------------------------

    def instruction(self, pos: int, end: int, depth: int, *, applied: bool = True) -> int:
        # Bounds checks written out (not through _unpack/_need): this runs once per instruction.
        if end - pos < _INSTRUCTION.size:
            raise ValueError(f"QPY: an instruction header runs past its region at byte {pos}")
        (name_size, label_size, params, qargs, cargs, extras, cond_size, _value, ctrl, _state) = (
            _INSTRUCTION.unpack_from(self.data, pos)
        )
        pos += _INSTRUCTION.size
        if extras & ~_KNOWN_EXTRAS:
            raise ValueError(f"QPY: instruction extras {extras:#x}")
        if qargs > self.max_qubits or cargs > self.max_clbits or ctrl > self.max_qubits:
            raise ValueError(f"QPY: an instruction on {qargs} qubits, {cargs} clbits")
        pos += name_size + label_size
        condition = extras & _CONDITION_MASK
        if condition == _CONDITION_EXPR:
            pos = self.skip_typed(pos, end)  # raises past `end`, `pos` included
        elif condition in (_CONDITION_NONE, _CONDITION_REGISTER):
            pos += cond_size
        else:
            raise ValueError(f"QPY: condition kind {condition}")
        if pos > end:
            raise ValueError("QPY: an instruction's name, label or condition runs past its region")
        args = qargs + cargs if applied else 0
        self._count(args, _ARG.size, pos, end, "instruction arguments")
        if args:
            # The hot path of the walk: every argument's kind byte in one slice (a copy of at
            # most the bytes just checked to be there), rather than one unpack per argument.
            after = pos + args * _ARG.size
            if self.data[pos : after : _ARG.size].translate(None, b"qc"):
                raise ValueError(f"QPY: an instruction argument of another kind at byte {pos}")
            pos = after
        self._count(params, _TYPED.size, pos, end, "parameters")
        for _ in range(params):
            pos = self.parameter(pos, end, depth)
        if extras & _HAS_ANNOTATIONS:
            pos, (annotations,) = self._unpack(_COUNT32, pos, end, "annotations")
            self._count(annotations, _INSTRUCTION_ANNOTATION.size, pos, end, "annotations")
            for _ in range(annotations):
                pos, (_index, size) = self._unpack(_INSTRUCTION_ANNOTATION, pos, end, "annotation")
                pos = self._need(pos, size, end, "annotation payload")
        return pos

    def skip_typed(self, pos: int, end: int) -> int:
        pos, (_kind, size) = self._unpack(_TYPED, pos, end, "typed value")
        return self._need(pos, size, end, "typed value")

    def parameter(self, pos: int, end: int, depth: int) -> int:
        pos, (kind, size) = self._unpack(_TYPED, pos, end, "parameter")
        value_end = self._need(pos, size, end, "parameter value")
        key = kind[0]
        if key not in _PARAM_KEYS:
            raise ValueError(f"QPY: a parameter of type {kind!r}")
        if kind == _CIRCUIT_KEY:
            # A control-flow block (if/else, loop, switch case, box body).
            self.blocks += 1
            if self.circuit(pos, value_end, depth) != value_end:
                raise ValueError("QPY: a block circuit does not fill its bytes")
        elif kind == _TUPLE_KEY:
            inner = self._enter(depth)
            at, (elements,) = self._unpack(_COUNT64, pos, value_end, "tuple")
            self._count(elements, _TYPED.size, at, value_end, "tuple elements")
            for _ in range(elements):
                at = self.parameter(at, value_end, inner)
            if at != value_end:
                raise ValueError("QPY: a tuple does not fill its bytes")
        elif kind == _EXPRESSION_KEY:
            at, (symbols, expr_size) = self._unpack(
                _PARAMETER_EXPR, pos, value_end, "parameter expression"
            )
            at = self._need(at, expr_size, value_end, "parameter expression body")
            self._count(symbols, _MIN_SYMBOL_ENTRY, at, value_end, "expression symbols")
        return value_end

    # -- the layout -----------------------------------------------------------------------

    def layout(self, pos: int, end: int) -> int:
        pos, (exists, initial, inputs, final, extra, _count) = self._unpack(
            _LAYOUT, pos, end, "layout"
        )
        if not exists:
            return pos
        if min(initial, inputs, final) < -1:
            raise ValueError("QPY: a negative layout size")
        self._count(extra, _REGISTER.size, pos, end, "layout registers")
        for _ in range(extra):
            pos = self.register(pos, end)
        initial = max(initial, 0)
        self._count(initial, _INT32.size, pos, end, "initial layout bits")
        for _ in range(initial):
            pos, (index,) = self._unpack(_INT32, pos, end, "layout bit")
            if index == _ANONYMOUS:
                continue
            pos, (name_size,) = self._unpack(_INT32, pos, end, "layout bit register")
            if name_size > 0:
                pos = self._need(pos, name_size, end, "layout register name")
        indices: int = max(inputs, 0) + max(final, 0)
        self._count(indices, _LAYOUT_INDEX_SIZE, pos, end, "layout indices")
        return pos + indices * _LAYOUT_INDEX_SIZE


def walk_compiled(
    data: bytes,
    *,
    max_qubits: int,
    max_clbits: int,
    max_instructions: int,
    max_depth: int = MAX_QPY_DEPTH,
    max_total_bits: int = MAX_QPY_TOTAL_BITS,
) -> QpyWalk:
    """Every circuit header in a compiled circuit's QPY, checked (see the module docstring).

    Raises:
        ValueError: a bound exceeded (per header, or `max_total_bits` over all), a count
            past the bytes left, nesting past `max_depth`, another format version, or bytes it
            cannot parse.
    """
    walker = _Walker(data, max_qubits, max_clbits, max_instructions, max_depth, max_total_bits)
    try:
        walker.file()
    except RecursionError:
        # Only if called with a deep stack already (MAX_QPY_DEPTH keeps the walk shallow).
        raise ValueError("QPY: nested too deeply for this interpreter's stack") from None
    return QpyWalk(
        circuits=len(walker.headers),
        blocks=walker.blocks,
        instructions=walker.instructions,
        definitions=walker.definitions,
        depth=walker.depth,
        bits=walker.total_bits,
        headers=tuple(walker.headers),
    )
