"""Circuit front end shared by every Qiskit-based adapter.

Turns client source text into a `QuantumCircuit` under size, include and time limits, and
validates everything about a PUB that can be checked without running it: operation count,
dynamic features, parameter bindings, observables, shots, precision, result size and memory.

Every client-caused problem raises `gateway.domain.errors.InvalidArgument` with a specific reason
and a `FieldViolation` naming the offending request field. Any exception from the SDK calls that
read client text (the OpenQASM 2 reader, the OpenQASM 3 parser and importer) is the client's
program being refused; anything else propagates, because it is a bug.

What is bounded, and where, before the expensive work:
- OpenQASM 2: a linear-time scan that tokenises exactly like Qiskit's OpenQASM 2 lexer finds every
  `include` and every register declaration before the reader runs; the reader itself never gets
  an include path, and Qiskit's legacy gates (what `QuantumCircuit.from_qasm_str` accepts) come
  from `custom_instructions`, not from a file.
- OpenQASM 3: a program of more than MAX_QASM3_STATEMENTS statements (its semicolons, opening
  braces and an eighth of its commas) is refused before parsing, which would cost more than a
  compile worker's CPU limit; includes, declared sizes, physical qubits, aliases, switch case
  values and the importer's work are read from the parsed AST, before the importer allocates
  anything.
- Both: unrolled operations and operations inside gate definitions are counted per definition
  (memoised), never by unrolling, and definition nesting is limited.

This module imports qiskit at the top; adapters import it lazily.
"""

from __future__ import annotations

import cmath
import contextlib
import copy
import dataclasses
import functools
import itertools
import math
import re
import sys
from collections import Counter, deque
from collections.abc import Callable, Collection, Iterable, Iterator, Mapping, Sequence, Sized
from dataclasses import dataclass
from typing import Any, NamedTuple, TypeVar

import numpy as np
import qiskit.qasm2
import qiskit_qasm3_import
import qiskit_qasm3_import.types as q3types
from antlr4 import CommonTokenStream, InputStream  # type: ignore[import-untyped]
from antlr4.error.ErrorListener import ErrorListener  # type: ignore[import-untyped]
from antlr4.error.Errors import (  # type: ignore[import-untyped]
    ParseCancellationException,
    RecognitionException,
)
from antlr4.error.ErrorStrategy import BailErrorStrategy  # type: ignore[import-untyped]
from openqasm3 import ast as q3ast

# The generated lexer/parser are what `openqasm3.parse` itself uses; we drive them directly to
# drop ANTLR's console error listener (it prints client text to stderr) and to make the parse
# abortable once the wall-clock limit has passed.
from openqasm3._antlr.qasm3Lexer import qasm3Lexer  # type: ignore[import-not-found]
from openqasm3._antlr.qasm3Parser import qasm3Parser  # type: ignore[import-not-found]
from openqasm3.parser import QASMNodeVisitor
from qiskit.circuit import (
    CASE_DEFAULT,
    Barrier,
    BreakLoopOp,
    CircuitInstruction,
    ClassicalRegister,
    Clbit,
    ContinueLoopOp,
    ControlFlowOp,
    ControlledGate,
    Delay,
    ForLoopOp,
    Gate,
    IfElseOp,
    Measure,
    Operation,
    ParameterExpression,
    QuantumCircuit,
    Reset,
    SwitchCaseOp,
    WhileLoopOp,
)
from qiskit.circuit.classical import expr
from qiskit.circuit.classical import types as expr_types
from qiskit.circuit.exceptions import CircuitError
from qiskit.circuit.library import (
    DiagonalGate,
    HamiltonianGate,
    Isometry,
    PauliEvolutionGate,
    StatePreparation,
    UCGate,
    UnitaryGate,
    get_standard_gate_name_mapping,
)
from qiskit.quantum_info import SparseObservable
from qiskit.quantum_info.operators.predicates import ATOL_DEFAULT, RTOL_DEFAULT
from qiskit.synthesis import MatrixExponential, QDrift
from qiskit_qasm3_import import ConversionError
from qiskit_qasm3_import.converter import ConvertVisitor
from qiskit_qasm3_import.data import Scope, Symbol
from qiskit_qasm3_import.exceptions import raise_from_node
from qiskit_qasm3_import.expression import ValueResolver
from qiskit_qasm3_import.state import LocalScope, State

from gateway.backends.base import CircuitLimits
from gateway.backends.qiskit.braket_gates import BRAKET_BUILTIN_GATES
from gateway.domain.circuits import (
    Bindings,
    CircuitFeature,
    CircuitLanguage,
    CircuitSource,
    FloatArray,
    Observable,
)
from gateway.domain.costs import check_result_size, estimator_result_bytes, sampler_result_bytes
from gateway.domain.errors import FieldViolation, InvalidArgument

__all__ = [
    "ACCEPTED_INSTRUCTION_NAMES",
    "ALLOWED_INCLUDES",
    "MAX_DEFINITION_DEPTH",
    "MPS_OVERHEAD_BYTES",
    "QASM3_MAX_CONVERSION_WORK",
    "SLICE_REGISTERS",
    "STANDARD_GATE_NAMES",
    "VERBATIM_BOX_LABEL",
    "OperationCount",
    "broadcast_pub_shape",
    "check_control_flow_supported",
    "check_features",
    "check_finite_parameters",
    "check_memory",
    "check_operation_count",
    "check_qubit_count",
    "check_result_size",
    "count_operations",
    "density_matrix_bytes",
    "detect_features",
    "estimator_result_bytes",
    "has_bits_outside_registers",
    "has_measurements",
    "invalid",
    "mps_bond_dimensions",
    "mps_bytes",
    "open_verbatim_boxes",
    "parse_circuit",
    "rename_shadowing_gates",
    "resolve_bindings",
    "result_registers",
    "sampler_result_bytes",
    "settle_angles",
    "settle_unreachable_conditions",
    "slice_registers",
    "statevector_bytes",
    "tally_operations",
    "unique_name",
    "validate_observables",
    "why_not_unitary",
    "writes_clbits",
]

ALLOWED_INCLUDES: Mapping[CircuitLanguage, frozenset[str]] = {
    CircuitLanguage.QASM3: frozenset({"stdgates.inc"}),
    CircuitLanguage.QASM2: frozenset({"qelib1.inc"}),
}

# The qasm3 importer deep-copies a gate's whole definition tree at every application (60-250 us
# per copied operation, measured on 2 cores), so its work is bounded before conversion starts:
# by this, and by twice max_definition_operations (defining nested gates copies each level
# again, so the copies run to a few times the operations they define).
QASM3_MAX_CONVERSION_WORK = 100_000
_CONVERSION_WORK_PER_DEFINITION_OPERATION = 2
# Deeper nesting of gate definitions than this makes the SDK recurse past Python's limit.
MAX_DEFINITION_DEPTH = 64
# `pow` makes the qasm3 importer build the gate's full unitary matrix: 4^k entries.
_MAX_POW_QUBITS = 4
# Controlling a user gate re-synthesises every operation of its definition.
_CTRL_WORK_FACTOR = 16
# A gate given by its matrix or vector, which a target without it natively has synthesised
# into basis gates, counts this many operations per entry (an upper bound of what Qiskit makes:
# ~1.2·4^k gates for a dense k-qubit unitary, ~2·2^k for a state preparation or a diagonal).
# Synthesis is compile work (a 7-qubit unitary: 19076 gates, 4.5-6 s of CPU on Braket's and
# PennyLane's targets), so it counts against max_definition_operations too.
SYNTHESIS_OPERATIONS_PER_ENTRY = 2
_MATRIX_GATES = (UnitaryGate, HamiltonianGate, Isometry, UCGate, StatePreparation, DiagonalGate)
# A Pauli evolution is one operation in QPY whatever its synthesis makes of it: the payload
# names the synthesis and its settings (reps, order; any class of qiskit.synthesis.evolution,
# MatrixExponential too, which no writer emits), so 876 bytes (2 terms, LieTrotter reps=2000)
# took 2 s of a compile worker's CPU and reps=10**5 its whole memory. Each Pauli rotation of
# weight w is at most 2(w-1) CX, one rotation and 2w basis changes.
_EVOLUTION_OPERATIONS_PER_WEIGHT = 4
# A SparseObservable term's p projectors cost up to this many times p² (`_sparse_term_size`).
_EVOLUTION_OPERATIONS_PER_PROJECTOR_SQUARED = 64
_PAULI_BIT_TERMS = frozenset(int(SparseObservable.BitTerm[letter]) for letter in "XYZ")
# Suzuki-Trotter of a higher order has more stages (5^(order/2-1)) than any limit allows.
_MAX_EVOLUTION_ORDER = 64
# Aer's MPS bookkeeping beyond the tensors themselves.
MPS_OVERHEAD_BYTES = 1 << 20
_MAX_MESSAGE_CHARS = 300
# OpenQASM 3 is parsed by ANTLR's Python runtime at ~0.33 ms a simple statement (measured:
# 50,000 one-gate lines, 800 KB, took 16-17 s), so a longer program could not be parsed within
# a compile worker's default CPU limit (10 s) anyway: refused before parsing, for the cost of
# counting its semicolons, instead of after burning that limit (each changed comment a new
# cache key). OpenQASM 2 and QPY read far faster and are not bound by this. Blocks without a
# semicolon (`if (c) {}`, `case 1 {}`, ~0.25 ms each) count as statements too, and list items
# (`case 0, 1, ...`, ~0.04 ms each) as an eighth of one: 150,000 empty `if`s fit the source
# limit, and 20,000 took 5 s to parse.
MAX_QASM3_STATEMENTS = 20_000
# Nesting (brackets, and runs of prefix operators) the OpenQASM 3 parser reaches before Python's
# recursion gives out (~120-250 levels: `rz(((...1))) q;`, `rz(---...1) q;`), refused before
# parsing: ANTLR's prediction re-reads the rest of a nested run at every level, so 40 KB of
# `-` or 10 KB of nested `exp(` took 8-9 s of a compile worker's CPU to be refused as too deep
# (no semicolon, brace or comma: the statement count saw one statement).
MAX_QASM3_NESTING = 256
# Levels of nesting weighed by depth (`_Nesting.work`) that cost the parser a statement.
_NESTING_WORK_PER_STATEMENT = 16
_QASM3_COMMENTS = re.compile(r"//[^\n]*|/\*.*?(?:\*/|\Z)", re.S)
_PREFIX_OPERATORS = re.compile(r"[-+!~]+")
_SPACE = re.compile(r"\s+")
_OPENING = np.frombuffer(b"([{", dtype=np.uint8)
_CLOSING = np.frombuffer(b")]}", dtype=np.uint8)
# Case values of all `switch` statements together: Qiskit builds a block per case and checks
# every value; a register of 12 bits has 4096 values.
MAX_SWITCH_CASE_VALUES = 4096
# Aliases cost the importer a tuple copy per bit (`a ++ b` copies both sides): cheap, but a long
# chain of concatenations is quadratic, so their total is bounded relative to max_clbits.
_ALIAS_WORK_PER_CLBIT = 10
_MAX_LOOP_BOUND = 1 << 62
_BOM = "\ufeff"
# Circuit metadata: the names of the registers the OpenQASM 3 importer made for slices.
SLICE_REGISTERS = "qgateway.slice_registers"


# The OpenQASM 3 reader prefixes `esc_` to a register name that does not start with a lowercase
# ASCII letter, for a restriction on register names that Qiskit has since lifted (the
# function's own docstring says so): `bit[2] C;` came back as the result register `esc_C`, and
# a program declaring both `_c` and `esc__c` was refused as a duplicate. Qiskit takes any name.
def _register_name_as_declared(name: str) -> str:
    return name


qiskit_qasm3_import.converter._escape_qasm2 = _register_name_as_declared


_STANDARD_GATES = get_standard_gate_name_mapping()
STANDARD_GATE_NAMES: frozenset[str] = frozenset(_STANDARD_GATES)
# Instructions a circuit read from a client may hold (what a backend's target may list): the
# standard gates (QPY carries each as itself; OpenQASM those of its standard library) with
# measure, reset and delay, and the control flow the OpenQASM 3 reader builds (switch by
# `_Qasm3Converter`), with break and continue inside loops (a target without them fails a
# client's transpile of a loop that has one). Not global_phase (a circuit attribute, not an
# operation).
ACCEPTED_INSTRUCTION_NAMES: frozenset[str] = (STANDARD_GATE_NAMES - {"global_phase"}) | {
    "if_else",
    "while_loop",
    "for_loop",
    "switch_case",
    "break_loop",
    "continue_loop",
}
# `break` and `continue` are no ControlFlowOp (no blocks) and have no definition: one
# operation each, inside a loop (refused as opaque gates before).
_ATOMIC_TYPES = (Measure, Reset, Barrier, Delay, UnitaryGate, BreakLoopOp, ContinueLoopOp)
# Two-qubit gates of operator-Schmidt rank 2 that are not ControlledGate subclasses.
_RANK2_NAMES = frozenset({"rzz", "rxx", "ryy", "rzx", "ecr"})
_PASSIVE_NAMES = frozenset({"barrier", "delay"})


def lower_camel(name: str) -> str:
    """'max_source_bytes' -> 'maxSourceBytes' (ErrorInfo metadata keys are lowerCamelCase)."""
    head, *rest = name.split("_")
    return head + "".join(part[:1].upper() + part[1:] for part in rest)


def invalid(reason: str, message: str, field: str, **metadata: object) -> InvalidArgument:
    """Builds an InvalidArgument carrying one FieldViolation for `field`; keyword arguments
    become metadata with lowerCamelCase keys (max_qubits= -> "maxQubits")."""
    return InvalidArgument(
        reason,
        message,
        metadata={lower_camel(key): str(value) for key, value in metadata.items()},
        field_violations=(FieldViolation(field=field, description=message),),
    )


def _clip(message: str) -> str:
    message = " ".join(message.split())
    if len(message) > _MAX_MESSAGE_CHARS:
        return message[: _MAX_MESSAGE_CHARS - 3] + "..."
    return message


def _no_statements(field: str) -> InvalidArgument:
    return invalid(
        "INVALID_QASM", "the circuit source has no statements (only comments or blanks)", field
    )


def _include_not_allowed(
    language: CircuitLanguage, line: int, col: int, field: str
) -> InvalidArgument:
    allowed = ALLOWED_INCLUDES[language]
    # Never echo the path: the message must not help probe the server's files.
    return invalid(
        "INCLUDE_NOT_ALLOWED",
        f"line {line}, column {col}: only include {_quoted(allowed)} is allowed",
        field,
        allowed=",".join(sorted(allowed)),
    )


def _nonliteral_size(line: int, col: int, field: str) -> InvalidArgument:
    return invalid(
        "INVALID_QASM", f"line {line}, column {col}: register sizes must be integer literals", field
    )


# --------------------------------------------------------------------------------------------
# OpenQASM 2: a lexical scan that agrees with Qiskit's lexer, before the reader sees the text.
# --------------------------------------------------------------------------------------------

# Token by token what qiskit's OpenQASM 2 lexer (crates/qasm2/src/lex.rs) does: whitespace is
# space, tab, CR and LF; `//` skips to the next LF only (a lone CR does not end a comment);
# there are no block comments; strings use either quote, end at the same quote and may not hold
# CR or LF; identifiers start with a letter. Every alternative is a single greedy run, so the
# scan is linear: an unterminated quote fails at the next line break and cannot fail again on
# that line, because no quote of its kind follows it there.
_QASM2_TOKEN = re.compile(
    r"(?P<skip>[ \t\r\n]+|//[^\n]*)"
    r"|(?P<string>\"[^\"\r\n]*\"|'[^'\r\n]*')"
    r"|(?P<word>[A-Za-z][A-Za-z0-9_]*)"
    r"|(?P<number>[0-9]+(?:\.[0-9]*)?(?:[eE][+-]?[0-9]+)?|\.[0-9]+(?:[eE][+-]?[0-9]+)?)"
    r"|(?P<symbol>.)",
    re.DOTALL,
)
# The lexer's keywords: none of them can name a register.
_QASM2_KEYWORDS = frozenset(
    {
        "OPENQASM",
        "barrier",
        "cos",
        "creg",
        "exp",
        "gate",
        "if",
        "include",
        "ln",
        "measure",
        "opaque",
        "qreg",
        "reset",
        "sin",
        "sqrt",
        "tan",
        "pi",
    }
)


_HUGE = 10**18


def _too_long(number: str) -> bool:
    # 18 digits always fit a 64-bit integer.
    return any(len(part) > 18 for part in number.split("."))


@dataclass
class _Qasm2Scan:
    qubits: int = 0
    clbits: int = 0
    tokens: int = 0


def _position(text: str, pos: int) -> tuple[int, int]:
    """1-based line and 0-based column of `pos`, counting LF-terminated lines as the lexers do."""
    line_start = text.rfind("\n", 0, pos) + 1
    return text.count("\n", 0, pos) + 1, pos - line_start


class _Positions:
    """`_position` for offsets read in increasing order, each newline counted once: computing
    each from the text's start made 58,000 gphase statements (1 MiB, which PennyLane writes for
    as many qml.SX) take 17 s, quadratic in the program's length."""

    def __init__(self, text: str) -> None:
        self._text = text
        self._offset = 0  # the last offset read
        self._line = 1  # its line
        self._line_start = 0  # where that line starts

    def __call__(self, pos: int) -> tuple[int, int]:
        if pos < self._offset:
            raise ValueError("offsets must be read in increasing order")
        newline = self._text.rfind("\n", self._offset, pos)
        if newline >= 0:
            self._line += self._text.count("\n", self._offset, pos)
            self._line_start = newline + 1
        self._offset = pos
        return self._line, pos - self._line_start


def _qasm2_tokens(text: str) -> Iterator[tuple[str, str, int]]:
    for match in _QASM2_TOKEN.finditer(text):
        kind = match.lastgroup
        if kind != "skip" and kind is not None:
            yield kind, match[0], match.start()


def _scan_qasm2(text: str, field: str) -> _Qasm2Scan:
    """Finds includes and declared register sizes the way Qiskit's reader would.

    Fails closed: an `include` not followed by "qelib1.inc" is INCLUDE_NOT_ALLOWED and a
    `qreg`/`creg` not followed by `name [ integer ]` is INVALID_QASM, so nothing the reader could
    act on escapes the scan. (After the reader's first lexical error it reads nothing more, so
    where this scan and the reader disagree past such an error, the scan only sees more.)
    """
    scan = _Qasm2Scan()
    tokens = _qasm2_tokens(text)
    allowed = ALLOWED_INCLUDES[CircuitLanguage.QASM2]
    previous = ""
    for kind, value, start in tokens:
        scan.tokens += 1
        if kind == "number" and previous in ("[", "OPENQASM") and _too_long(value):
            # The reader panics (a Rust unwrap) on an index or version number past 64 bits.
            line, col = _position(text, start)
            raise invalid("INVALID_QASM", f"line {line}, column {col}: number out of range", field)
        previous = value
        if kind != "word":
            continue
        if value == "include":
            following = next(tokens, None)
            if following is None or following[0] != "string" or following[1][1:-1] not in allowed:
                raise _include_not_allowed(CircuitLanguage.QASM2, *_position(text, start), field)
            scan.tokens += 1
        elif value in ("qreg", "creg"):
            name, bracket, number, close = (next(tokens, ("end", "", -1)) for _ in range(4))
            scan.tokens += 4
            if name[0] == "word" and name[1] in _QASM2_KEYWORDS:
                # `qasm2.dumps` writes a register named `pi` or `sin` as it is.
                line, col = _position(text, start)
                raise invalid(
                    "INVALID_QASM",
                    f"line {line}, column {col}: {name[1]!r} is a reserved word of OpenQASM 2, "
                    "not a register name; rename the register",
                    field,
                )
            if not (
                name[0] == "word"
                and bracket[1] == "["
                and number[0] == "number"
                and number[1].isdigit()
                and close[1] == "]"
            ):
                raise _nonliteral_size(*_position(text, start), field)
            # Past 18 digits any size is over every limit (and int() refuses 4300+ digits).
            size = int(number[1]) if not _too_long(number[1]) else _HUGE
            if value == "qreg":
                scan.qubits += size
            else:
                scan.clbits += size
    return scan


# --------------------------------------------------------------------------------------------
# Parsing. Time and memory are bounded by the compile worker this runs in (its CPU-time,
# wall-clock and memory limits end the process), not here.
# --------------------------------------------------------------------------------------------


class _SyntaxError(Exception):
    def __init__(self, line: int, column: int, message: str) -> None:
        super().__init__(message)
        self.line = line
        self.column = column
        self.message = message


class _RaisingListener(ErrorListener):  # type: ignore[misc]
    def syntaxError(  # ANTLR names this method
        self,
        recognizer: object,
        offendingSymbol: object,
        line: int,
        column: int,
        msg: str,
        e: object,
    ) -> None:
        raise _SyntaxError(line, column, msg)


def _too_deep(field: str) -> InvalidArgument:
    return invalid("CIRCUIT_TOO_COMPLEX", "the program is nested too deeply", field)


@contextlib.contextmanager
def _reader_refusals(language: str, field: str) -> Iterator[None]:
    """Whatever an SDK reader raises on the client's program, its own way (an exception, or a
    Rust panic, which is a BaseException), becomes INVALID_QASM. Recursion and memory exhaustion
    propagate: the caller refuses those as too complex."""
    try:
        yield
    except (RecursionError, MemoryError, InvalidArgument):
        raise
    except Exception as exc:
        raise _importer_rejected(exc, language, field) from None
    except BaseException as exc:
        if not _is_sdk_panic(exc):
            raise
        raise _importer_rejected(exc, language, field) from None


# PennyLane's qml.to_openqasm writes a global phase into OpenQASM 2, which has none:
# `gphase(-0.785) q[1];` for qml.SX (its decomposition's phase), `gphase(0.3) ;` for
# qml.GlobalPhase on every wire. Found token by token with the scan's tokens (_QASM2_TOKEN, which
# lexes as Qiskit's reader does), not by a regular expression over the raw text: a `;` inside a
# comment or a string ends no statement, so blanking `gphase(0) q[0] // ; creg c[100000000];`
# cannot end inside the comment and hand the reader the rest of it as code the scan never saw
# (undeclared sizes, includes), and `// note; gphase(1) is dropped` cannot blank the next
# statement. A comment between `gate` and `gphase` still defines one.
_NOT_NEWLINE = re.compile(r"[^\n]")


# `if ( creg == integer )` before a gphase statement, token by token (None: any word, "#": an
# integer as the reader reads one, ASCII digits): the condition the statement is dropped with.
_CONDITION_PATTERN: tuple[tuple[str, str | None], ...] = (
    ("word", "if"),
    ("symbol", "("),
    ("word", None),
    ("symbol", "="),
    ("symbol", "="),
    ("number", "#"),
    ("symbol", ")"),
)


def _condition_token_matches(position: int, kind: str, value: str) -> bool:
    expected_kind, expected = _CONDITION_PATTERN[position]
    if kind != expected_kind:
        return False
    if expected == "#":
        return value.isascii() and value.isdigit()
    return expected is None or value == expected


def _global_phase_statements(text: str) -> list[tuple[int, int]] | None:
    """The [start, end) spans of `gphase ( ... ) ... ;` statements in `text` (a statement starts
    at the first token or after `;`, `{`, `}`; a `{` or `}` before the `;` makes it none), each
    with the `if ( creg == integer )` before it if any, or None when the program defines its own
    gphase (`gate gphase`, `opaque gphase`)."""
    spans: list[tuple[int, int]] = []
    at_statement_start = True
    begin = -1  # where the gphase statement being read starts
    opened = False  # its `(` was seen
    # PennyLane writes qml.cond(m, qml.GlobalPhase) as `if(mcms[0]==1) gphase(0.3) ;` (a bit
    # index, which OpenQASM 2 refuses); with a whole register, `if(c==1) gphase(0.3) ;`, the
    # statement is a global phase on one branch only, which no result shows either: the whole
    # statement, its condition included, is dropped (and the condition checked as the reader
    # would, `_global_phase`). Blanking only the gphase part would leave the `if` to condition
    # the next statement.
    condition_begin = -1  # where an `if` that may condition a gphase statement starts
    condition_read = 0  # how many of its tokens matched _CONDITION_PATTERN
    previous = ""
    for kind, value, start in _qasm2_tokens(text):
        if kind == "word" and value == "gphase" and previous in ("gate", "opaque"):
            return None
        previous = value if kind == "word" else ""
        if condition_begin >= 0:
            if condition_read == len(_CONDITION_PATTERN):
                if kind == "word" and value == "gphase":
                    begin, opened, condition_begin = condition_begin, False, -1
                    continue
                condition_begin = -1  # an ordinary conditioned statement
            elif _condition_token_matches(condition_read, kind, value):
                condition_read += 1
                continue
            else:
                condition_begin = -1  # not such a condition: the reader reads (and judges) it
        if begin >= 0:
            if not opened and value == "(" and kind == "symbol":
                opened = True
                continue
            if opened and kind == "symbol" and value == ";":
                spans.append((begin, start + 1))
                begin = -1
                at_statement_start = True
                continue
            if opened and not (kind == "symbol" and value in ("{", "}")):
                continue
            begin = -1  # not a gphase statement: this token is read as any other
        if at_statement_start and kind == "word" and value == "gphase":
            begin, opened, at_statement_start = start, False, False
            continue
        if at_statement_start and kind == "word" and value == "if":
            condition_begin, condition_read, at_statement_start = start, 1, False
            continue
        at_statement_start = kind == "symbol" and value in (";", "{", "}")
    return spans


def _blanked(text: str, spans: Sequence[tuple[int, int]]) -> str:
    """`text` with the `spans` (in order, not overlapping: `_GlobalPhase.blanked`) blanked
    out, newlines kept, so the reader's line and column numbers still point into the client's
    text. OpenQASM 2 has no modifiers (`ctrl @`) that could reveal a global phase: dropping it
    changes no result. Whole tokens become blanks, so the rest lexes as the scan saw it."""
    pieces: list[str] = []
    done = 0
    for begin, end in spans:
        pieces.append(text[done:begin])
        pieces.append(_NOT_NEWLINE.sub(" ", text[begin:end]))
        done = end
    pieces.append(text[done:])
    return "".join(pieces)


class _GateBody(NamedTuple):
    """The gate definition whose body a gphase statement is in: its ordinal in the program,
    its parameters (which the angle may use) and its qubits (which the operands must be)."""

    number: int
    parameters: tuple[str, ...]
    qubits: tuple[str, ...]


@dataclass(frozen=True)
class _GlobalPhase:
    """A gphase statement: its angle, for the probe that reads it (`_read_angles`), and what of
    it the reader is not shown (`blanked`)."""

    angle: str  # its tokens, comments left out
    line: int
    column: int
    body: _GateBody | None  # None at the top level
    constant: bool  # names no gate parameter (only numbers, pi and functions)
    span: tuple[int, int]  # the statement's [start, end), its condition included
    operands: int  # where its operands start (just after the angle's `)`)

    @property
    def bound(self) -> bool:
        """In a gate's body with an angle that names the gate's parameters: its value is known
        only for a call, so the reader reads it there (`_BodyPhase`)."""
        return self.body is not None and not self.constant

    @property
    def blanked(self) -> tuple[int, int]:
        """What of the statement the reader does not see: all of it, or of a bound phase, its
        operands only (`gphase(angle)` and the `;` stay in place, each token where it was)."""
        return (self.operands, self.span[1] - 1) if self.bound else self.span


class _BodyPhase(Gate):  # type: ignore[misc]  # qiskit.circuit is untyped
    """A gphase in a gate's body whose angle names the gate's parameters, as the reader reads
    it: an operation on no qubit whose definition is empty (the identity, not a global phase,
    which a statevector would show), so transpiling unrolls it to nothing and no result
    changes. What it is for is its angle, which the reader binds for each call (nested calls
    included) as it binds `rz(a * 1e400) r;` there.

    Why the reader reads the angle instead of the gateway binding the blanked angles to the
    calls' values itself: that would be a second reader of calls and expressions (broadcasts,
    nested calls, sin, exp, `^`) beside Qiskit's, and a second check of bound angles beside
    `check_finite_parameters`, which refuses this one as it refuses the rz. On no qubit, the
    statement keeps `gphase(angle)` and its `;` where they were and loses its operands only:
    the reader's positions stay the client's, and the phase adds no qubit to a gate's work."""

    def __init__(self, angle: float) -> None:
        super().__init__("gphase", 0, [angle])

    def _define(self) -> None:
        self.definition = QuantumCircuit(0)


def _body_phase_instruction(text: str) -> tuple[str, qiskit.qasm2.CustomInstruction]:
    """A name six characters long (as `gphase` is) that no identifier of `text` has, and the
    reader's built-in `_BodyPhase` under it. Under the name `gphase` itself the reader would
    refuse a program that also names a register `gphase` ("'gphase' is already defined")."""
    taken = set(_QASM2_IDENTIFIER.findall(text))
    # 36^4 candidates: more than a program within the source limit can name.
    for letters in itertools.product(_NAME_LETTERS, repeat=4):
        name = "gp" + "".join(letters)
        if name not in taken:
            return name, qiskit.qasm2.CustomInstruction(name, 1, 0, _BodyPhase, builtin=True)
    raise AssertionError("a program naming every candidate is beyond the source limit")


_QASM2_IDENTIFIER = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_NAME_LETTERS = "abcdefghijklmnopqrstuvwxyz0123456789"


def _renamed(text: str, starts: Sequence[int], name: str) -> str:
    """`text` with the `gphase` keyword at each offset in `starts` (ascending) spelt `name`, a
    name of the same length: every other token stays where it was."""
    pieces: list[str] = []
    done = 0
    for start in starts:
        pieces.append(text[done:start])
        pieces.append(name)
        done = start + len(name)
    pieces.append(text[done:])
    return "".join(pieces)


def _check_global_phases(
    text: str, spans: Collection[tuple[int, int]], field: str
) -> list[_GlobalPhase]:
    """Checks what the `gphase` statements say, whose operands the reader never sees, as the
    reader checks a gate call: each operand a register declared before it (an index in range)
    or, in a gate's body, one of its qubits, no qubit named twice, whole registers of one size;
    the angle one valid expression, finite at the top level and wherever it names no gate
    parameter (one that names them has a value per call: the reader reads it, `_BodyPhase`).
    `gphase(nan) q[7];` on a one-qubit register is refused as `rz(nan) q[7];` is.
    A condition before it (`if(c==1)`) names a classical register declared before it, outside
    any gate's body. Returns the statements, in order, each with what of it to blank."""
    begins = dict(spans)
    qregs: dict[str, int] = {}
    cregs: set[str] = set()
    recent: deque[str] = deque(maxlen=5)  # the last tokens read, for `qreg name [ size ]`
    header: list[str] | None = None  # the tokens of a gate's header being read
    body: _GateBody | None = None
    gates = 0
    statement: list[tuple[str, str, int]] = []
    end = -1
    phases: list[_GlobalPhase] = []
    position = _Positions(text)
    for kind, value, start in _qasm2_tokens(text):
        if start < end:
            statement.append((kind, value, start))
            if start == end - 1:  # its `;`
                at = position(statement[0][2])
                phases.append(_global_phase(at, statement, qregs, cregs, body, field))
            continue
        if start in begins:
            end, statement = begins[start], [(kind, value, start)]
            continue
        recent.append(value)
        if len(recent) == 5 and recent[2] == "[" and recent[4] == "]":
            if recent[0] == "qreg":
                qregs[recent[1]] = _HUGE if _too_long(recent[3]) else int(recent[3])
            elif recent[0] == "creg":
                cregs.add(recent[1])
        if header is not None:
            if value == "{":
                body, header = _gate_header(header, gates), None
                gates += 1
            else:
                header.append(value)
        elif value == "gate":
            header = []
        elif value == "}":
            body = None
    if phases:
        _read_angles(phases, field)
    return phases


def _gate_header(tokens: Sequence[str], number: int) -> _GateBody:
    """The parameters and qubits of `name ( a , b ) q , r` or `name q , r`."""
    if "(" in tokens and ")" in tokens:
        opened, closed = tokens.index("("), tokens.index(")")
        parameters, qubits = tokens[opened + 1 : closed], tokens[closed + 1 :]
    else:
        parameters, qubits = [], tokens[1:]
    return _GateBody(
        number, tuple(p for p in parameters if p != ","), tuple(q for q in qubits if q != ",")
    )


def _global_phase(
    at: tuple[int, int],
    tokens: Sequence[tuple[str, str, int]],
    qregs: Mapping[str, int],
    cregs: Collection[str],
    body: _GateBody | None,
    field: str,
) -> _GlobalPhase:
    """`gphase ( angle ) operands ;`, perhaps after `if ( creg == integer )`, its operands and
    condition checked (`_check_global_phases`)."""
    line, column = at  # where the statement starts
    statement_start = tokens[0][2]  # (its condition's, if any: `tokens` loses it below)

    def refused(says: str) -> InvalidArgument:
        return invalid(
            "INVALID_QASM",
            f"line {line}, column {column}: {says} (a gphase statement: its global phase is "
            "dropped, what it names is checked)",
            field,
        )

    if tokens[0][1] == "if":  # `if ( name == integer )`, as _CONDITION_PATTERN matched it
        name, value = tokens[2][1], tokens[5][1]
        if body is not None:
            raise refused("a gate's body holds gate applications only, not an `if`")
        if name not in cregs:
            raise refused(f"{name!r} is not a classical register declared before it")
        if len(value) > 1 and value[0] == "0":
            raise refused("integers cannot have leading zeroes")
        tokens = tokens[len(_CONDITION_PATTERN) :]
    depth, close = 0, 0
    for index, (kind, value, _) in enumerate(tokens[1:], start=1):
        if kind == "symbol" and value in "()":
            depth += 1 if value == "(" else -1
            if depth == 0:
                close = index
                break
    if close <= 2:
        raise refused("the angle is not one expression in parentheses")
    operands: list[list[str]] = [[]]
    for _, value, _ in tokens[close + 1 : -1]:
        if value == ",":
            operands.append([])
        else:
            operands[-1].append(value)
    if operands == [[]]:
        operands = []  # `gphase(0.3) ;`: PennyLane's phase on every wire
    # What the operands name, as the reader's broadcast would pair them: a register is all of
    # its qubits (None), each pairing of distinct qubits, whole registers of one size.
    named: dict[str, set[int] | None] = {}
    sizes: set[int] = set()
    for operand in operands:
        name = operand[0] if operand else ","
        written = "".join(operand)
        if body is not None:
            if len(operand) != 1 or name not in body.qubits:
                raise refused(f"{written!r} is not a qubit of the gate being defined")
            if name in named:
                raise refused(f"{written!r} is named twice (a gate's qubits must be distinct)")
            named[name] = None
            continue
        if name not in qregs or len(operand) not in (1, 4):
            raise refused(f"{written!r} is not a quantum register declared before it")
        if len(operand) == 4:
            _, bracket, digits, closing = operand
            # ASCII digits only: str.isdigit() also takes `\u0661`, which the reader's lexer
            # refuses (and int() reads as 1).
            if bracket != "[" or closing != "]" or not (digits.isascii() and digits.isdigit()):
                raise refused(f"{written!r} is not a qubit")
            if _too_long(digits) or int(digits) >= qregs[name]:
                raise refused(
                    f"qubit {digits} of register {name!r} (size {qregs[name]}) does not exist"
                )
            indices = named.setdefault(name, set())
            if indices is None or int(digits) in indices:
                raise refused(f"{written!r} is named twice (a gate's qubits must be distinct)")
            indices.add(int(digits))
        else:
            if name in named:
                raise refused(f"{written!r} is named twice (a gate's qubits must be distinct)")
            named[name] = None
            sizes.add(qregs[name])
    if len(sizes) > 1:
        raise refused(
            f"registers of sizes {sorted(sizes)} cannot be broadcast together (the reader "
            "pairs their qubits one by one)"
        )
    angle = " ".join(value for _, value, _ in tokens[2:close])
    constant = all(
        kind != "word" or value in _QASM2_CONSTANT_WORDS for kind, value, _ in tokens[2:close]
    )
    span = (statement_start, tokens[-1][2] + 1)
    return _GlobalPhase(angle, line, column, body, constant, span, tokens[close][2] + 1)


# The words an angle may hold that are not a gate's parameters.
_QASM2_CONSTANT_WORDS = frozenset({"pi", "sin", "cos", "tan", "exp", "ln", "sqrt"})


def _read_angles(phases: Sequence[_GlobalPhase], field: str) -> None:
    """Reads the angles of blanked gphase statements with Qiskit's reader, one probe line each
    (`U(angle, 0, 0)`; those of one gate's body inside one gate with its parameters), so an
    angle is a valid expression exactly when the reader would take it in a gate call. The
    probe is no longer than the statements and gate headers it copies, each copied once."""
    lines = ["OPENQASM 2.0;", "qreg gphaseprobe[1];"]
    at_line: dict[int, _GlobalPhase] = {}  # probe line (1-based) -> the statement it reads
    open_body: _GateBody | None = None
    for phase in phases:
        if open_body is not None and phase.body != open_body:
            lines.append("}")
            open_body = None
        if phase.body is None:
            lines.append(f"U({phase.angle}, 0, 0) gphaseprobe[0];")
        else:
            qubit = phase.body.qubits[0] if phase.body.qubits else "q"
            if open_body is None:
                parameters = phase.body.parameters
                declared = f"({', '.join(parameters)})" if parameters else ""
                lines.append(f"gate gphaseprobe{phase.body.number}{declared} {qubit} {{")
                open_body = phase.body
            lines.append(f"U({phase.angle}, 0, 0) {qubit};")
        at_line[len(lines)] = phase
    if open_body is not None:
        lines.append("}")
    # A gate body's angle that names none of its parameters is one number wherever the gate is
    # called: read once more at the top level, where its value is checked finite as the top
    # level's are (`gphase(1e400) r;` in a body, as `rz(1e400) r;` there is).
    constants = [phase for phase in phases if phase.body is not None and phase.constant]
    for phase in constants:
        lines.append(f"U({phase.angle}, 0, 0) gphaseprobe[0];")
        at_line[len(lines)] = phase
    try:
        probe: QuantumCircuit = qiskit.qasm2.loads(
            "\n".join(lines),
            include_path=(),
            custom_classical=qiskit.qasm2.LEGACY_CUSTOM_CLASSICAL,
            strict=False,
        )
    except qiskit.qasm2.QASM2ParseError as exc:
        message = _sdk_message(exc)
        where = _QASM2_POS.search(message)
        line = int(where[1]) if where is not None else 0
        # A gate's header line: the statement on the line after it.
        phase = at_line.get(line) or at_line.get(line + 1) or phases[0]
        at = f"line {phase.line}, column {phase.column}"
        undefined = _QASM2_UNDEFINED.search(message)
        if undefined is not None and undefined[3].lower() in _NON_FINITE_NAMES:
            raise _non_finite(
                f"{at}: the angle of a gphase statement is not a number", field
            ) from None
        detail = _LIST_ANGLE_HINT if _QASM2_LIST_ANGLE.search(message) else message
        detail = _QASM2_POS.sub("", detail)
        raise invalid(
            "INVALID_QASM",
            _clip(f"{at}: the angle of a gphase statement is not a valid expression: {detail}"),
            field,
        ) from None
    top_level = [phase for phase in phases if phase.body is None]
    for phase, instruction in zip([*top_level, *constants], probe.data, strict=True):
        if not _finite(instruction.operation.params[0]):
            raise _non_finite(
                f"line {phase.line}, column {phase.column}: the angle of a gphase statement "
                "is not finite",
                field,
            )


def _loads_qasm2(text: str, field: str) -> QuantumCircuit:
    # The statements are found once, for the check and the blanking: each pass reads the
    # whole program.
    spans = _global_phase_statements(text) if "gphase" in text else None
    custom = qiskit.qasm2.LEGACY_CUSTOM_INSTRUCTIONS
    if spans:
        with _reader_refusals("OpenQASM 2", field):
            phases = _check_global_phases(text, spans, field)
        text = _blanked(text, [phase.blanked for phase in phases])
        bound = [phase.span[0] for phase in phases if phase.bound]
        if bound:
            # A bound phase is in a gate's body, where no condition precedes it: its span
            # starts at the keyword.
            name, instruction = _body_phase_instruction(text)
            text = _renamed(text, bound, name)
            custom = (*custom, instruction)
    with _reader_refusals("OpenQASM 2", field):
        try:
            # No include path: only the reader's built-in qelib1.inc exists. The legacy custom
            # instructions and classical functions are what `QuantumCircuit.from_qasm_str`
            # adds on top of that (sx, swap, cswap, rzz, ..., asin), supplied here instead of
            # from a file.
            circuit: QuantumCircuit = qiskit.qasm2.loads(
                text,
                include_path=(),
                custom_instructions=custom,
                custom_classical=qiskit.qasm2.LEGACY_CUSTOM_CLASSICAL,
                strict=False,
            )
        except qiskit.qasm2.QASM2ParseError as exc:
            raise _map_qasm2_error(text, _sdk_message(exc), field) from None
    return circuit


def _is_sdk_panic(exc: BaseException) -> bool:
    # A Rust panic inside Qiskit surfaces as pyo3's PanicException, a BaseException (so that
    # `except Exception` does not swallow it); on client text it is the program being refused.
    return type(exc).__name__ == "PanicException"


_QASM2_POS = re.compile(r"<input>:(\d+),(\d+):\s*")
_QASM2_UNDEFINED = re.compile(
    r"<input>:(\d+),(\d+): '([^']+)' is not (?:a parameter or custom instruction )?defined in "
    r"this scope"
)
# Not OpenQASM constants, but what a client means by them is plain.
_NON_FINITE_NAMES = frozenset({"inf", "infinity", "nan"})


# A legacy gate (sx, swap, ...) used without `include "qelib1.inc";`, which declares it.
_QASM2_NOT_INCLUDED = re.compile(
    r"<input>:(\d+),(\d+): cannot use non-builtin custom instruction '([^']+)' before definition"
)


# What PennyLane's qml.to_openqasm writes that OpenQASM 2 has no syntax for, as the reader's
# error reads: a condition on one bit, `if(mcms[0]==1) x q[1];` (every qml.cond), and a list
# for an angle, `rx([0.1 0.2]) q[0];` (a broadcast parameter: one value per circuit).
_QASM2_BIT_CONDITION = re.compile(r"<input>:(\d+),(\d+): needed '==', but instead saw \[")
_QASM2_LIST_ANGLE = re.compile(r"<input>:(\d+),(\d+): needed an expression, but instead saw \[")
_BIT_CONDITION_HINT = (
    "an OpenQASM 2 `if` compares a whole classical register with an integer (`if(c==1)`), "
    "not one bit (`c[0]`, as qml.to_openqasm writes qml.cond); with a register of one bit "
    "(one mid-circuit measurement) `if(c==1)` means the same, otherwise send OpenQASM 3 "
    "(`if (c[0]) ...`) or QPY"
)
_LIST_ANGLE_HINT = (
    "an angle is one expression, not a list (qml.to_openqasm writes a broadcast parameter "
    "as `[0.1 0.2]`): export one circuit per value"
)


def _map_qasm2_error(text: str, message: str, field: str) -> InvalidArgument:
    for pattern, hint in (
        (_QASM2_BIT_CONDITION, _BIT_CONDITION_HINT),
        (_QASM2_LIST_ANGLE, _LIST_ANGLE_HINT),
    ):
        found = pattern.search(message)
        if found is not None:
            return invalid("INVALID_QASM", f"line {found[1]}, column {found[2]}: {hint}", field)
    not_included = _QASM2_NOT_INCLUDED.search(message)
    if not_included is not None:
        line, col, name = not_included[1], not_included[2], not_included[3]
        return invalid(
            "UNKNOWN_GATE",
            f'line {line}, column {col}: gate {name!r} is not defined (include "qelib1.inc")',
            field,
            gate=name,
        )
    undefined = _QASM2_UNDEFINED.search(message)
    if undefined is not None:
        line, col, name = int(undefined[1]), int(undefined[2]), undefined[3]
        if name.lower() in _NON_FINITE_NAMES:
            return _non_finite(f"line {line}, column {col}: {name!r} is not a number", field)
        if _looks_like_gate_call(text, line, col, name):
            return invalid(
                "UNKNOWN_GATE",
                f"line {line}, column {col}: gate {name!r} is not defined",
                field,
                gate=name,
            )
    readable = _QASM2_POS.sub(lambda m: f"line {m[1]}, column {m[2]}: ", message)
    return invalid("INVALID_QASM", _clip(f"OpenQASM 2 parse error: {readable}"), field)


def _looks_like_gate_call(text: str, line: int, col: int, name: str) -> bool:
    """True when the undefined identifier is applied like a gate: `name(...)` or `name q`."""
    lines = text.split("\n")
    if not 1 <= line <= len(lines):
        return False
    row = lines[line - 1]
    if row[col : col + len(name)] != name:
        return False
    rest = row[col + len(name) :].lstrip()
    return bool(rest) and (rest[0] == "(" or rest[0].isalpha() or rest[0] == "_")


def _sdk_message(exc: BaseException) -> str:
    # QiskitError.__str__ is the repr of its message; the message itself reads better.
    message = getattr(exc, "message", None)
    return message if isinstance(message, str) else str(exc)


def _importer_rejected(exc: BaseException, language: str, field: str) -> InvalidArgument:
    # Raised by the SDK's importer on input it cannot represent (an index past a register's
    # end, a wrong number of gate arguments, ...): the client's program is at fault.
    if "infinite value" in str(exc):
        # Qiskit refusing to bind an angle that overflowed inside a gate definition.
        return _non_finite(f"{language} program rejected: an angle is not finite", field)
    if isinstance(exc, IndexError):
        detail = "an index is out of range"
    elif isinstance(exc, OverflowError):
        detail = "a number is too large"
    elif _is_sdk_panic(exc):
        detail = "a value is out of the range the reader handles"
    else:
        detail = _sdk_message(exc) or type(exc).__name__
    return invalid("INVALID_QASM", _clip(f"{language} program rejected: {detail}"), field)


def _non_finite(message: str, field: str) -> InvalidArgument:
    return invalid("NON_FINITE_ANGLE", f"{message}; gate angles must be finite numbers", field)


_AST_POSITION = re.compile(r"^L(\d+):C(\d+): ")


def _parse_qasm3_ast(text: str, field: str) -> q3ast.Program:
    lexer = qasm3Lexer(InputStream(text))
    lexer.removeErrorListeners()
    lexer.addErrorListener(_RaisingListener())
    parser = qasm3Parser(CommonTokenStream(lexer))
    parser.removeErrorListeners()
    parser._errHandler = BailErrorStrategy()
    try:
        tree = parser.program()
    except _SyntaxError as exc:
        message = f"OpenQASM 3 syntax error at line {exc.line}, column {exc.column}: {exc.message}"
        raise invalid("INVALID_QASM", _clip(message), field) from None
    except (ParseCancellationException, RecognitionException) as exc:
        raise _qasm3_syntax_error(exc, field) from None
    if tree.stop is None:
        # Nothing but comments: the reference AST builder cannot even give it a span.
        raise _no_statements(field)
    try:
        program: q3ast.Program = QASMNodeVisitor().visitProgram(tree)  # type: ignore[no-untyped-call]
    except (RecursionError, MemoryError):
        raise
    except Exception as exc:  # QASM3ParsingError and whatever else the AST builder refuses
        message = _sdk_message(exc) or type(exc).__name__
        # "L8:C0: pragmas must be global": said as every other refusal says where.
        message = _AST_POSITION.sub(r"line \1, column \2: ", message, count=1)
        raise invalid(
            "INVALID_QASM", _clip(f"OpenQASM 3 program rejected: {message}"), field
        ) from None
    return program


def _qasm3_syntax_error(exc: Exception, field: str) -> InvalidArgument:
    cause: Any = exc.args[0] if exc.args else exc
    token = getattr(cause, "offendingToken", None)
    if token is not None and getattr(token, "line", None) is not None:
        near = "end of input" if token.type == -1 else repr(str(token.text)[:40])
        message = f"OpenQASM 3 syntax error at line {token.line}, column {token.column} near {near}"
    else:
        message = "OpenQASM 3 syntax error"
    return invalid("INVALID_QASM", message, field)


_QASM3_POSITION = re.compile(r"^(\d+),(\d+): ")
_QASM3_UNDEFINED_GATE = re.compile(r"^(\d+),(\d+): gate '([^']+)' is not defined")
_QASM3_UNDEFINED_SYMBOL = re.compile(r"^(\d+),(\d+): Undefined symbol '([^']+)'")
_QASM3_UNSUPPORTED_NODE = re.compile(r"node of type (\w+) is not supported")
# How the importer says "valid OpenQASM 3 that Qiskit cannot represent", as opposed to "wrong".
_QASM3_UNSUPPORTED = re.compile(
    r"not (?:currently )?supported|unsupported|unhandled|only .* (?:is|are) supported"
    r"|is supported for|can only handle|cannot be resolved into a Qiskit value|in Qiskit"
    r"|Mixing modes|no registered handler|is required to handle"
    r"|aliases must be of registers",  # `let a = q[3];`: Qiskit aliases registers only
    re.IGNORECASE,
)


def _convert_qasm3(program: q3ast.Program, pragmas: _BraketPragmas, field: str) -> QuantumCircuit:
    renamed = _rename_standard_named_gates(program)
    # A unitary pragma's gate is named as the client wrote it in refusals.
    renamed.update(dict.fromkeys(pragmas.unitaries, "unitary"))
    renamed.update(_order_gate_parameters(program))
    _inline_switch_targets(program)
    builtins = _braket_builtins(program)
    renamed.update({name: builtin for name, builtin in builtins.items() if name != builtin})
    with _reader_refusals("OpenQASM 3", field):
        try:
            converter = _Qasm3Converter(builtins, pragmas)
            circuit: QuantumCircuit = converter.convert(program).circuit
        except ConversionError as exc:
            message = _sdk_message(exc)
            for fresh, original in renamed.items():
                message = message.replace(f"'{fresh}'", f"'{original}'")
            raise _map_conversion_error(message, field) from None
    return circuit


# What OpenQASM 3's standard library defines (the specification's list): after
# `include "stdgates.inc"` a program may not define these again.
# fmt: off
_STDGATES_INC_NAMES = frozenset({
    "p", "x", "y", "z", "h", "s", "sdg", "t", "tdg", "sx", "rx", "ry", "rz", "cx", "cy", "cz",
    "cp", "crx", "cry", "crz", "ch", "swap", "ccx", "cswap", "cu", "CX", "phase", "cphase", "id",
    "u1", "u2", "u3",
})
# fmt: on


@dataclass
class _GateNames:
    """How an OpenQASM 3 program uses names: as gates (defined, called) and otherwise."""

    includes_stdgates: bool
    # The name identifiers of the gate definitions and of the gate calls (renamed in place).
    definitions: list[q3ast.Identifier]
    calls: list[q3ast.Identifier]
    # Names used as anything but a gate; every name used (fresh names avoid them).
    other_uses: set[str]
    taken: set[str]
    # Names declared as classical values (inputs, constants, variables, loop variables), and
    # as registers, aliases or subroutines.
    values: set[str]
    others: set[str]


def _gate_names(program: q3ast.Program) -> _GateNames:
    names = _GateNames(
        includes_stdgates=any(
            isinstance(s, q3ast.Include) and s.filename == "stdgates.inc"
            for s in program.statements
        ),
        definitions=[],
        calls=[],
        other_uses=set(),
        taken=set(),
        values=set(),
        others=set(),
    )
    identifiers: list[q3ast.Identifier] = []
    for node in _walk(program):
        if isinstance(node, q3ast.QuantumGateDefinition):
            names.definitions.append(node.name)
        elif isinstance(node, q3ast.QuantumGate):
            names.calls.append(node.name)
        elif isinstance(node, q3ast.Identifier):
            identifiers.append(node)
        elif isinstance(node, q3ast.IODeclaration | q3ast.ConstantDeclaration | q3ast.ForInLoop):
            names.values.add(node.identifier.name)
        elif isinstance(node, q3ast.ClassicalDeclaration):
            bits = isinstance(node.type, q3ast.BitType)
            (names.others if bits else names.values).add(node.identifier.name)
        elif isinstance(node, q3ast.QubitDeclaration):
            names.others.add(node.qubit.name)
        elif isinstance(node, q3ast.AliasStatement):
            names.others.add(node.target.name)
        elif isinstance(node, q3ast.SubroutineDefinition):
            names.others.add(node.name.name)
    as_gate = {id(i) for i in [*names.definitions, *names.calls]}
    names.other_uses = {i.name for i in identifiers if id(i) not in as_gate}
    names.taken = {i.name for i in identifiers}
    return names


def _fresh_name(base: str, taken: set[str], avoid: Collection[str] = ()) -> str:
    """`base`, with `_` appended until no name in `taken` or `avoid` is it; taken from now."""
    name = base
    while name in taken or name in avoid:
        name += "_"
    taken.add(name)
    return name


def _rename_standard_named_gates(program: q3ast.Program) -> dict[str, str]:
    """Gives every gate the program defines under a standard gate's name a name of its own, in
    its definitions and calls (in place). Returns {new name: the program's}.

    The reader builds `pow(k) @ ctrl @ h` by controlling `h`, which Qiskit does by the gate's
    name (the standard CH, whatever the program's `h` does), and then folds the power into a
    matrix: nothing named `h` is left for `rename_shadowing_gates` to put right afterwards.
    A name is left alone where the reader must still see it to refuse the program as it did:
    one `stdgates.inc` defines when the program includes it, and one the program also uses as
    anything but a gate (a variable, a parameter, a loop variable, a register).
    """
    names = _gate_names(program)
    defined = {d.name for d in names.definitions}
    renames: dict[str, str] = {}  # the program's name -> the new one
    for name in sorted(defined & STANDARD_GATE_NAMES):
        if name in names.other_uses or (names.includes_stdgates and name in _STDGATES_INC_NAMES):
            continue
        renames[name] = _fresh_name(f"{name}_def", names.taken, avoid=STANDARD_GATE_NAMES)
    for identifier in [*names.definitions, *names.calls]:
        if identifier.name in renames:
            identifier.name = renames[identifier.name]
    return {new: old for old, new in renames.items()}


def _braket_builtins(program: q3ast.Program) -> dict[str, str]:
    """The gates of Braket's built-in set (`braket_gates`) the program calls without defining
    them or including them from `stdgates.inc`, as {the name defined: the built-in}: Braket's
    writer includes nothing and calls `h`, `cnot`, `si`, `phaseshift`, ... as its simulators
    and devices know them.

    Braket keeps gates apart from classical values; Qiskit's reader has one namespace. Where
    the program also names a classical value so (`input float t;`, which Braket's writer emits
    for `FreeParameter("t")` beside a `t` gate; a loop variable `i` beside the identity `i`),
    the calls are renamed (in place) to a name of their own. A name the program uses for a
    register, an alias or a subroutine is left out, for the reader to refuse the program as it
    did. Called after `_rename_standard_named_gates`, so a gate the program defines under a
    standard name is already its own.
    """
    names = _gate_names(program)
    provided = _STDGATES_INC_NAMES if names.includes_stdgates else frozenset()
    defined = {d.name for d in names.definitions}
    builtins: dict[str, str] = {}
    for builtin in sorted({c.name for c in names.calls} & BRAKET_BUILTIN_GATES.keys()):
        if builtin in defined or builtin in provided:
            continue
        if builtin not in names.other_uses:
            builtins[builtin] = builtin
        elif builtin in names.values and builtin not in names.others:
            fresh = _fresh_name(f"{builtin}_braket", names.taken)
            builtins[fresh] = builtin
            for call in names.calls:
                if call.name == builtin:
                    call.name = fresh
    return builtins


_GATE_PARAMETER_PREFIX = "_qgw_gate_parameter_"


def _order_gate_parameters(program: q3ast.Program) -> dict[str, str]:
    """Renames every gate definition's parameters, and their uses in its body, so that their
    names sort in the order they are declared (in place). Returns {new name: the program's}.

    The reader binds a call's arguments to its gate's parameters in the order of their names,
    not of their declaration: `gate g(b, a) r { rx(a) r; rz(b) r; }` called as `g(0, pi)` ran
    rx(0) rz(pi), and `qasm3.dumps` of an unbound TwoLocal (`_θ_10_` before `_θ_2_`) gave
    another circuit's distribution, silently.
    """
    taken = {node.name for node in _walk(program) if isinstance(node, q3ast.Identifier)}
    prefix = _GATE_PARAMETER_PREFIX
    while any(name.startswith(prefix) for name in taken):
        prefix += "_"
    renamed: dict[str, str] = {}
    for number, statement in enumerate(program.statements):
        if not isinstance(statement, q3ast.QuantumGateDefinition) or not statement.arguments:
            continue
        width = len(str(len(statement.arguments)))
        # Unique to the gate too: the {new: old} map then names each gate's own parameter.
        names = {
            argument.name: f"{prefix}{number}_{index:0{width}d}"
            for index, argument in enumerate(statement.arguments)
        }
        calls = [node.name for node in _walk(statement) if isinstance(node, q3ast.QuantumGate)]
        if any(call.name in names for call in calls):
            # A parameter the body calls as a gate: left as written, for the reader to refuse
            # as it does ("'h' is a 'angle', not a gate").
            continue
        gate_names = {id(call) for call in calls}
        gate_names.add(id(statement.name))
        for node in _walk(statement):
            if isinstance(node, q3ast.Identifier) and id(node) not in gate_names:
                new = names.get(node.name)
                if new is not None:
                    renamed[new] = node.name
                    node.name = new
    return renamed


# --------------------------------------------------------------------------------------------
# Amazon Braket's pragmas (OpenQASM 3). Braket's writer emits two that change what runs:
# `#pragma braket unitary([[...]]) q[0], q[1]` (Circuit.unitary) and `#pragma braket verbatim`
# before a `box { ... }` (Circuit.add_verbatim_box). Any other pragma (Braket's result types and
# noise channels among them) is refused, naming its line. OpenQASM 3 allows pragmas only at
# the top level of a program (the AST builder refuses them elsewhere), so only the program's
# own statement list is read here.
# --------------------------------------------------------------------------------------------

# The label of the BoxOp a verbatim box becomes, followed by its line: which backends can run a
# verbatim box (their transpiler must not rewrite its body) is theirs to say
# (`open_verbatim_boxes`).
VERBATIM_BOX_LABEL = "qgateway.braket_verbatim"
# Braket's pragma lexer: blanks are spaces and tabs, digits 0-9. Not Python's `\s` and `\d`,
# which take Unicode's (a no-break space, `q[\u0661]`, a full-width `\uff11`), which no reader
# of Braket's takes.
_PRAGMA_UNITARY = re.compile(r"braket[ \t]+unitary[ \t]*\(([^()]*)\)([^()]*)")
_PRAGMA_BLANKS = re.compile(r"[ \t]+")
_PRAGMA_VERBATIM = re.compile(r"[ \t]*braket[ \t]+verbatim[ \t]*")
# A matrix entry as Braket's pragma grammar reads it (`complexNumber`): `-0.5`, `1e-3`, `0.7im`,
# `1 + 0im`, `-0.2 - 0.3im`. No `nan`, `inf` or expressions, as in Braket's own reader.
_REAL = r"(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)(?:[eE][+-]?[0-9]+)?"
# Read after every run of blanks became one space (`_pragma_matrix`): each ` ?` can match in
# one way only, so a long entry costs linear time even where it does not match.
_MATRIX_ENTRY = re.compile(
    rf"(?P<neg>-)? ?(?P<value>{_REAL})(?P<im> ?im)?"
    rf"(?: ?(?P<sign>[+-]) ?(?P<imneg>-)? ?(?P<imag>{_REAL}) ?im)?"
)
_PHYSICAL_TARGET = re.compile(r"[ \t]*\$([0-9]+)[ \t]*")
_INDEXED_TARGET = re.compile(r"[ \t]*([A-Za-z_][A-Za-z_0-9]*)[ \t]*\[[ \t]*([0-9]+)[ \t]*\][ \t]*")


@dataclass
class _BraketPragmas:
    # The name each `#pragma braket unitary` statement's gate is defined under -> its matrix,
    # in Qiskit's order (the gate's first qubit least significant).
    unitaries: dict[str, np.ndarray] = dataclasses.field(default_factory=dict)
    # id() of each box a `#pragma braket verbatim` marks -> the pragma's line.
    verbatim: dict[int, int] = dataclasses.field(default_factory=dict)


def _pragma_error(
    reason: str, pragma: q3ast.Pragma, says: str, field: str, **metadata: object
) -> InvalidArgument:
    line, col = _where(pragma)
    shown = _clip(f"#pragma {pragma.command.strip()}")[:80]
    return invalid(reason, f"line {line}, column {col}: {says} ({shown!r})", field, **metadata)


_Node = TypeVar("_Node", bound=q3ast.QASMNode)


def _placed(node: _Node, span: q3ast.Span | None) -> _Node:
    """`node`, at `span` (a node's span is not a constructor argument)."""
    node.span = span
    return node


def _read_braket_pragmas(
    program: q3ast.Program, limits: CircuitLimits, field: str
) -> _BraketPragmas:
    """Reads Braket's pragmas out of the program (in place): each unitary pragma becomes a call
    of a gate of its own, defined by the converter; each verbatim pragma is dropped and the box
    after it remembered. Runs before the declarations and the cost are read, so a unitary's
    targets are checked and counted like any gate call's."""
    pragmas = _BraketPragmas()
    if not any(isinstance(statement, q3ast.Pragma) for statement in program.statements):
        return pragmas  # almost every program: no walk of its tree (~0.3 ms for a GHZ-5)
    taken = {node.name for node in _walk(program) if isinstance(node, q3ast.Identifier)}
    statements: list[q3ast.Statement | q3ast.Pragma] = []
    pending_verbatim: q3ast.Pragma | None = None
    for statement in program.statements:
        if pending_verbatim is not None:
            if not isinstance(statement, q3ast.Box):
                raise _verbatim_without_box(pending_verbatim, field)
            if statement.duration is not None:
                raise _pragma_error(
                    "UNSUPPORTED_FEATURE",
                    pending_verbatim,
                    "a verbatim box with a duration is not supported",
                    field,
                )
            pragmas.verbatim[id(statement)] = _where(pending_verbatim)[0]
            pending_verbatim = None
        if not isinstance(statement, q3ast.Pragma):
            statements.append(statement)
            continue
        if _PRAGMA_VERBATIM.fullmatch(statement.command):
            pending_verbatim = statement
        elif (unitary := _PRAGMA_UNITARY.fullmatch(statement.command.strip(" \t"))) is not None:
            # Numbered, not one base name made fresh each time: the n-th pragma's name would
            # be `braket_unitary` and n underscores, a quadratic cost in time and names' length
            # (20,000 pragmas of a 1 MiB program took minutes). Each name the program takes
            # adds one underscore to one pragma's name at most.
            name = _fresh_name(f"braket_unitary_{len(pragmas.unitaries)}", taken)
            call, matrix = _unitary_call(statement, unitary, name, limits, field)
            pragmas.unitaries[name] = matrix
            statements.append(call)
        else:
            # Braket's result types, noise channels and anything else: the gateway returns
            # shots and expectation values of its own and adds no noise a program asks for.
            raise _pragma_error(
                "UNSUPPORTED_FEATURE",
                statement,
                "node of type Pragma is not supported; of the pragmas, only Braket's "
                "`#pragma braket unitary(...)` and `#pragma braket verbatim` (before a box) "
                "are read",
                field,
                feature="Pragma",
            )
    if pending_verbatim is not None:
        raise _verbatim_without_box(pending_verbatim, field)
    program.statements = statements
    return pragmas


def _verbatim_without_box(pragma: q3ast.Pragma, field: str) -> InvalidArgument:
    return _pragma_error(
        "INVALID_QASM",
        pragma,
        "`#pragma braket verbatim` must be followed by a box statement",
        field,
    )


def _unitary_call(
    pragma: q3ast.Pragma, match: re.Match[str], name: str, limits: CircuitLimits, field: str
) -> tuple[q3ast.QuantumGate, np.ndarray]:
    """The gate call a `#pragma braket unitary(matrix) targets` (`match`, of _PRAGMA_UNITARY)
    stands for, and its matrix in Qiskit's order. Braket's matrix has its first target as the
    most significant bit; Qiskit's UnitaryGate has its first qubit as the least, so the matrix
    is read with its qubits reversed (checked against LocalSimulator in
    tests/unit/test_session31_braket_pragmas.py)."""
    targets: list[q3ast.Identifier | q3ast.IndexedIdentifier] = []
    for operand in match[2].split(","):
        physical = _PHYSICAL_TARGET.fullmatch(operand)
        indexed = _INDEXED_TARGET.fullmatch(operand)
        number = physical[1] if physical else indexed[2] if indexed else None
        if number is None or _too_long(number):
            raise _pragma_error(
                "INVALID_QASM",
                pragma,
                f"a unitary's targets are qubits written `q[0]` or `$0`, not {operand.strip()!r}",
                field,
            )
        # The operands carry the pragma's position, so the reader's refusals of them (an
        # undeclared register, an index out of range, a qubit named twice) name its line.
        span = pragma.span
        if physical:
            target: q3ast.Identifier | q3ast.IndexedIdentifier = q3ast.Identifier(f"${int(number)}")
        else:
            assert indexed is not None
            index = _placed(q3ast.IntegerLiteral(int(number)), span)
            target = q3ast.IndexedIdentifier(_placed(q3ast.Identifier(indexed[1]), span), [[index]])
        targets.append(_placed(target, span))
    matrix = _pragma_matrix(pragma, match[1], len(targets), limits, field)
    call = q3ast.QuantumGate(
        modifiers=[],
        name=_placed(q3ast.Identifier(name), pragma.span),
        arguments=[],
        qubits=targets,
    )
    return _placed(call, pragma.span), matrix


def _pragma_matrix(
    pragma: q3ast.Pragma, text: str, targets: int, limits: CircuitLimits, field: str
) -> np.ndarray:
    """The matrix of a unitary pragma, checked: 2^k x 2^k for k targets, no larger than a QPY
    UnitaryGate can be, finite, unitary by Qiskit's own rule (`why_not_unitary`). Like any
    matrix gate it then counts as what synthesising it makes (check_operation_count)."""
    # A QPY UnitaryGate carries its matrix at 16 bytes an entry within max_source_bytes (7
    # qubits at the default 1 MiB); text entries can be shorter (`0`), the bound is the same.
    if targets > 30 or 16 << (2 * targets) >= limits.max_source_bytes:
        raise _pragma_error(
            "CIRCUIT_TOO_LARGE",
            pragma,
            f"a unitary on {targets} qubits is a matrix of {1 << (2 * min(targets, 30))}+ "
            f"entries, 16 bytes each; matrices are limited to less than "
            f"{limits.max_source_bytes} bytes (as a QPY UnitaryGate is, by the source limit)",
            field,
        )
    # Blanks around brackets mean nothing (`[ [0, 1] , [1, 0] ]`); inside an entry they may
    # (`1 + 0im`). Runs of blanks become one space first: no pattern below backtracks over them.
    text = _PRAGMA_BLANKS.sub(" ", text).strip(" ")
    for bracket in "[]":
        text = text.replace(f" {bracket}", bracket).replace(f"{bracket} ", bracket)
    if not (text.startswith("[[") and text.endswith("]]")):
        raise _pragma_error(
            "INVALID_QASM", pragma, "a unitary's matrix is written [[a, b], [c, d]]", field
        )
    rows: list[list[complex]] = []
    for row in re.split(r"\] ?, ?\[", text[2:-2]):
        entries: list[complex] = []
        for entry in row.split(","):
            number = _MATRIX_ENTRY.fullmatch(entry.strip(" "))
            if number is None:
                raise _pragma_error(
                    "INVALID_QASM",
                    pragma,
                    f"{_clip(entry.strip())[:40]!r} is not a matrix entry (a real or complex "
                    "literal such as -0.5, 0.7im or 1 + 0im)",
                    field,
                )
            entries.append(_matrix_entry(number))
        rows.append(entries)
    size = 1 << targets
    if len(rows) != size or any(len(row) != size for row in rows):
        shape = f"{len(rows)} rows of {sorted({len(row) for row in rows})} entries"
        raise _pragma_error(
            "INVALID_QASM",
            pragma,
            f"a unitary on {targets} target{'s' * (targets != 1)} is a {size} x {size} matrix; "
            f"this one has {shape}",
            field,
        )
    matrix = np.array(rows, dtype=np.complex128)
    if not np.all(np.isfinite(matrix)):
        raise _non_finite(
            f"line {_where(pragma)[0]}: an entry of the unitary's matrix is not finite", field
        )
    not_unitary = why_not_unitary(matrix)
    if not_unitary is not None:
        raise _pragma_error(
            "INVALID_QASM", pragma, f"the matrix is not unitary ({not_unitary})", field
        )
    # Braket's first target is the most significant bit: reverse the qubits' order.
    tensor = matrix.reshape([2] * (2 * targets))
    axes = [*reversed(range(targets)), *reversed(range(targets, 2 * targets))]
    return np.ascontiguousarray(tensor.transpose(axes).reshape(size, size))


def _matrix_entry(number: re.Match[str]) -> complex:
    value = float(number["value"]) * (-1 if number["neg"] else 1)
    if number["imag"] is None:
        return complex(0, value) if number["im"] else complex(value, 0)
    # `a + bim`, `a - bim`, `a - -bim`: the real part is written first.
    imag = float(number["imag"]) * (-1 if number["imneg"] else 1)
    imag *= -1 if number["sign"] == "-" else 1
    return complex(value, imag)


def why_not_unitary(matrix: np.ndarray) -> str | None:
    """None when the (finite) square `matrix` is unitary within Qiskit's own UnitaryGate check's
    tolerance (`is_unitary_matrix`: rtol 1e-5, atol 1e-8, so whatever Qiskit builds with its
    check passes), else how far U^dagger U is from the identity, for a refusal to say. The one
    rule for client matrices (QPY's UnitaryGate, Braket's unitary pragma). Costs (2^k)^3 for a
    k-qubit matrix, which max_source_bytes keeps to a few milliseconds."""
    product = matrix.conj().T @ matrix
    identity = np.eye(len(matrix))
    if np.allclose(product, identity, rtol=RTOL_DEFAULT, atol=ATOL_DEFAULT):
        return None
    deviation = float(np.max(np.abs(product - identity)))
    return (
        f"U^dagger U differs from the identity by up to {deviation:.3g}; Qiskit's tolerance is "
        f"rtol {RTOL_DEFAULT}, atol {ATOL_DEFAULT}"
    )


def open_verbatim_boxes(circuit: QuantumCircuit, exact: bool, field: str) -> QuantumCircuit:
    """`circuit` with each top-level box a `#pragma braket verbatim` marked replaced by its
    body, when the backend runs it `exact`ly (an ideal simulator with an all-to-all target,
    where whatever the transpiler makes of the body gives the body's own results); else
    UNSUPPORTED_FEATURE naming the pragma's line. Verbatim means "run as written, do not
    compile": a backend whose transpiler rewrites circuits for a device's gates and coupling
    or a noise model would change what the body does there."""
    marked = [
        instruction for instruction in circuit.data if _is_verbatim_box(instruction.operation)
    ]
    if not marked:
        return circuit
    if not exact:
        # The label is the client's own in a QPY BoxOp (up to max_source_bytes of it): clipped,
        # as any client text echoed in a refusal is.
        label = _clip((marked[0].operation.label or "").removeprefix(VERBATIM_BOX_LABEL))[:80]
        raise invalid(
            "UNSUPPORTED_FEATURE",
            f"{label.strip()}: a `#pragma braket verbatim` box "
            "must run as written, which this backend cannot promise (it compiles circuits for "
            "a device's gates and connectivity or a noise model); run it on an ideal simulator, "
            "or drop the pragma to let the body be compiled",
            field,
            feature="verbatim_box",
        )
    opened = circuit.copy_empty_like()
    for instruction in circuit.data:
        op = instruction.operation
        if _is_verbatim_box(op):
            # Block qubit i is the instruction's qubit i (and clbits alike).
            opened.compose(
                op.blocks[0], instruction.qubits, instruction.clbits, inplace=True, copy=False
            )
        else:
            opened.append(instruction)
    return opened


def _is_verbatim_box(operation: Operation) -> bool:
    return operation.name == "box" and (operation.label or "").startswith(VERBATIM_BOX_LABEL)


def _inline_switch_targets(program: q3ast.Program) -> None:
    """Switches on the bits `qasm3.dumps` copies into an integer first, in place.

    The writer emits `int switch_dummy; ... switch_dummy = c; switch (switch_dummy) {...}`; the
    importer takes no `int` variables, but Qiskit switches on bits and registers: the copy
    becomes the switch's target, and the declaration goes once nothing else uses the variable
    (if something does, the importer refuses the declaration as before).
    """
    declared = {
        s.identifier.name: s
        for s in program.statements
        if isinstance(s, q3ast.ClassicalDeclaration)
        and isinstance(s.type, q3ast.IntType | q3ast.UintType)
        and s.init_expression is None
    }
    if not declared:
        return
    blocks: list[list[Any]] = [program.statements]
    for node in _walk(program):
        if isinstance(node, q3ast.CompoundStatement):
            blocks.append(node.statements)
        for name in ("block", "body", "if_block", "else_block"):
            value = getattr(node, name, None)
            if isinstance(value, list):
                blocks.append(value)
    inlined: set[str] = set()
    for statements in blocks:
        index = 0
        while index + 1 < len(statements):
            copy_, switch = statements[index], statements[index + 1]
            if (
                isinstance(copy_, q3ast.ClassicalAssignment)
                and copy_.op.name == "="
                and isinstance(copy_.lvalue, q3ast.Identifier)
                and copy_.lvalue.name in declared
                and isinstance(switch, q3ast.SwitchStatement)
                and isinstance(switch.target, q3ast.Identifier)
                and switch.target.name == copy_.lvalue.name
            ):
                switch.target = copy_.rvalue
                inlined.add(copy_.lvalue.name)
                del statements[index]
            index += 1
    if not inlined:
        return
    uses = Counter(node.name for node in _walk(program) if isinstance(node, q3ast.Identifier))
    unused = {name for name in inlined if uses[name] == 1}  # the declaration's own identifier
    program.statements[:] = [
        s
        for s in program.statements
        if not (isinstance(s, q3ast.ClassicalDeclaration) and s.identifier.name in unused)
    ]


# OpenQASM 3's built-in functions that `qasm3.dumps` writes for a ParameterExpression's: the
# function on a number, and the ParameterExpression method (or operation) on a parameter.
_QASM3_FUNCTIONS: Mapping[str, tuple[Callable[[float], float], Callable[[Any], Any]]] = {
    "sin": (math.sin, lambda p: p.sin()),
    "cos": (math.cos, lambda p: p.cos()),
    "tan": (math.tan, lambda p: p.tan()),
    "arcsin": (math.asin, lambda p: p.arcsin()),
    "arccos": (math.acos, lambda p: p.arccos()),
    "arctan": (math.atan, lambda p: p.arctan()),
    "asin": (math.asin, lambda p: p.arcsin()),
    "acos": (math.acos, lambda p: p.arccos()),
    "atan": (math.atan, lambda p: p.arctan()),
    "exp": (math.exp, lambda p: p.exp()),
    "log": (math.log, lambda p: p.log()),
    "abs": (abs, abs),
    "sign": (lambda x: float(np.sign(x)), lambda p: p.sign()),
    "sqrt": (math.sqrt, lambda p: p**0.5),
}
_NUMERIC_TYPES = (q3types.Int, q3types.Uint, q3types.Float, q3types.Angle)


class _Qasm3Values(ValueResolver):
    """The importer's expressions, with the functions and `**` that `qasm3.dumps` writes for
    gate angles (`rz(exp(t)) q;`, `rz(t**2) q;`), as floats or ParameterExpressions."""

    def visit_FunctionCall(self, node: q3ast.FunctionCall) -> tuple[Any, Any]:
        functions = _QASM3_FUNCTIONS.get(node.name.name)
        if functions is None or len(node.arguments) != 1:
            raise_from_node(node, f"the function '{node.name.name}' is not supported")
        value, kind = self.visit(node.arguments[0])
        if not isinstance(kind, _NUMERIC_TYPES):
            raise_from_node(node, f"'{node.name.name}' needs a number")
        number, parameter = functions
        if isinstance(value, ParameterExpression):
            return parameter(value), q3types.Float(kind.const)
        try:
            result = number(value)
        except (ValueError, OverflowError):
            # math's own message ("math domain error") names neither the function nor the
            # value the client wrote.
            raise_from_node(
                node, f"'{node.name.name}' of {_user_number(value)} is not a finite real number"
            )
        return result, q3types.Float(kind.const)

    def visit_BinaryExpression(self, node: q3ast.BinaryExpression) -> tuple[Any, Any]:
        if node.op.name != "**":
            try:
                resolved: tuple[Any, Any] = super().visit_BinaryExpression(node)
            except ZeroDivisionError:
                # Python's own "float division by zero" named no line: the README promises one.
                raise_from_node(node, "division by zero")
            return resolved
        (lhs, lhs_kind), (rhs, rhs_kind) = self.visit(node.lhs), self.visit(node.rhs)
        if not isinstance(lhs_kind, _NUMERIC_TYPES) or not isinstance(rhs_kind, _NUMERIC_TYPES):
            raise_from_node(node, "'**' needs numbers")
        # As floats: an integer power such as 9**9**9 would take unbounded time and memory.
        if not isinstance(lhs, ParameterExpression):
            lhs = float(lhs)
        if not isinstance(rhs, ParameterExpression):
            rhs = float(rhs)
        try:
            power = lhs**rhs
        except (OverflowError, ZeroDivisionError):
            # 2**2000 overflows a float, 0**-1 divides by zero: refused at the expression.
            raise_from_node(node, "'**' gives no finite real number")
        return power, q3types.Float(lhs_kind.const and rhs_kind.const)


# The operators `qasm3.dumps` writes for a condition built of `qiskit.circuit.classical.expr`
# (`if (c[0] && c[1])`, `if (c < 2)`, `while ((c ^ d) == 3)`), and the expr function for each.
_CONDITION_BINARY: Mapping[str, Callable[[Any, Any], expr.Expr]] = {
    "&&": expr.logic_and,
    "||": expr.logic_or,
    "==": expr.equal,
    "!=": expr.not_equal,
    "<": expr.less,
    "<=": expr.less_equal,
    ">": expr.greater,
    ">=": expr.greater_equal,
    "&": expr.bit_and,
    "|": expr.bit_or,
    "^": expr.bit_xor,
}
_CONDITION_UNARY: Mapping[str, Callable[[Any], expr.Expr]] = {
    "!": expr.logic_not,
    "~": expr.bit_not,
}
# Aer evaluates expressions on 64-bit words: a wider constant or register is refused rather
# than compared wrongly.
_MAX_CONDITION_BITS = 64


class _Qasm3Condition:
    """A condition the importer cannot read into its `(bit, bool)` / `(register, int)` form, as
    a `qiskit.circuit.classical.expr` expression (which IfElseOp and WhileLoopOp take): bits,
    registers, const bools and non-negative ints joined by `_CONDITION_BINARY` and
    `_CONDITION_UNARY`. Its operators are counted as operations by `_Qasm3Cost`."""

    def __init__(self, context: State) -> None:
        self._context = context
        self._values = _Qasm3Values(context, strict=True)

    def resolve(self, node: q3ast.Expression) -> expr.Expr:
        return expr.lift(self._as_bool(node, self._operand(node)))

    def _as_bool(self, node: q3ast.QASMNode, value: Any) -> Any:
        """OpenQASM reads an integer as a bool by "not zero". Said as `!= 0`, never as Qiskit's
        cast to bool (what `expr.logic_and(c, ...)` builds): Aer (0.18) evaluates that cast of
        a register inverted, `if (c && true)` taken exactly when c == 0."""
        if isinstance(value, bool | Clbit):
            return value
        if isinstance(value, int):
            return value != 0
        if isinstance(value, expr.Expr) and value.type.kind is expr_types.Bool:
            return value
        return self._build(node, expr.not_equal, value, 0)

    def _operand(self, node: q3ast.Expression) -> Any:
        if isinstance(node, q3ast.BinaryExpression):
            binary = _CONDITION_BINARY.get(node.op.name)
            if binary is None:
                raise_from_node(
                    node, f"the operator '{node.op.name}' is not supported in conditions"
                )
            lhs, rhs = self._operand(node.lhs), self._operand(node.rhs)
            if node.op.name in ("&&", "||"):
                lhs, rhs = self._as_bool(node.lhs, lhs), self._as_bool(node.rhs, rhs)
            return self._build(node, binary, lhs, rhs)
        if isinstance(node, q3ast.UnaryExpression) and node.op.name in _CONDITION_UNARY:
            operand = self._operand(node.expression)
            if node.op.name == "!":
                operand = self._as_bool(node.expression, operand)
            return self._build(node, _CONDITION_UNARY[node.op.name], operand)
        if isinstance(node, q3ast.Cast) and isinstance(node.type, q3ast.BoolType):
            # `bool(c)`: dumps of an explicit `expr.cast(c, Bool())`.
            return self._as_bool(node.argument, self._operand(node.argument))
        value, kind = self._values.visit(node)
        if isinstance(kind, q3types.Bit):
            return value
        if isinstance(kind, q3types.BitArray):
            if len(value) > _MAX_CONDITION_BITS:
                raise_from_node(
                    node,
                    f"registers wider than {_MAX_CONDITION_BITS} bits are not supported in "
                    "condition expressions",
                )
            if isinstance(value, ClassicalRegister):
                return value
            # A slice: Qiskit compares registers, as the importer's own conditions do.
            return _register_of(value, self._context)
        if isinstance(kind, q3types.Bool) and kind.const:
            return bool(value)
        if isinstance(kind, q3types.Int | q3types.Uint) and kind.const and isinstance(value, int):
            if not 0 <= value < 1 << _MAX_CONDITION_BITS:
                raise_from_node(
                    node,
                    f"integers outside 0 .. 2^{_MAX_CONDITION_BITS} - 1 are not supported in "
                    "condition expressions",
                )
            return value
        raise_from_node(node, f"'{kind.pretty()}' values are not supported in conditions")

    def _build(
        self, node: q3ast.QASMNode, build: Callable[..., expr.Expr], *operands: Any
    ) -> expr.Expr:
        try:
            return build(*operands)
        except (TypeError, ValueError, CircuitError):
            # Qiskit's typing of the operands (`bit c; if (c == 2)`), as the importer's own
            # conditions refused them: the program's error (INVALID_QASM). Its message names
            # its own classes ("'Binary.Op.LESS': 'Uint(2)' and 'Bool()'"): the operator and
            # the operands' types are said in OpenQASM's terms.
            operator = getattr(getattr(node, "op", None), "name", "the operator")
            kinds = " and ".join(_type_in_words(operand) for operand in operands)
            raise_from_node(node, f"the operator '{operator}' does not apply to {kinds}")


def _type_in_words(operand: object) -> str:
    """An operand's type as OpenQASM says it: `bit`, `bit[2]`, `int`, ..."""
    if isinstance(operand, bool):
        return "a bool"
    if isinstance(operand, int):
        return "an int"
    try:
        kind = expr.lift(operand).type  # a Clbit or register, as Qiskit would type it
    except (TypeError, ValueError, CircuitError):
        kind = None
    if isinstance(kind, expr_types.Bool):
        return "a bit"
    if isinstance(kind, expr_types.Uint):
        return f"a bit[{kind.width}]"
    if isinstance(operand, float):
        return "a float"
    return "a value of another type"


def _user_number(value: object) -> str:
    """A number as a client would write it: `-1`, `0.5`, `1j` (a parameter by its expression;
    never an object's repr)."""
    if isinstance(value, complex):
        # Rounded, so that sqrt(-1) reads 1j rather than (6.123233995736766e-17+1j).
        value = complex(round(value.real, 12) + 0.0, round(value.imag, 12) + 0.0)
        return f"{value.imag:g}j" if not value.real else f"({value.real:g}{value.imag:+g}j)"
    if isinstance(value, float | int | np.floating | np.integer):
        return f"{float(value):g}"
    return str(value)


def _register_of(bits: list[Clbit], context: State) -> ClassicalRegister:
    """A register over a slice's bits, added to the circuit and the importer's symbols (Qiskit
    conditions and switches read registers, not bit lists)."""
    name = context.unique_name()  # type: ignore[no-untyped-call]
    register = ClassicalRegister(name=name, bits=bits)
    context.circuit.add_register(register)
    symbol = Symbol(name, register, q3types.BitArray(len(register)), Scope.NONE)
    context.symbol_table.insert(symbol)  # type: ignore[no-untyped-call]
    return register


class _Qasm3Converter(ConvertVisitor):
    """The OpenQASM 3 importer, with `switch` on a bit or bit register (a SwitchCaseOp), the
    expressions of `_Qasm3Values` and conditions of `_Qasm3Condition`; `builtins` are gates of
    Braket's built-in set the program calls (`_braket_builtins`), defined before it runs, as
    are the gates of its unitary pragmas; the boxes its verbatim pragmas mark become labelled
    BoxOps (`open_verbatim_boxes`)."""

    def __init__(
        self, builtins: Mapping[str, str] | None = None, pragmas: _BraketPragmas | None = None
    ) -> None:
        super().__init__()
        self._builtins = dict(builtins or {})
        self._pragmas = pragmas or _BraketPragmas()

    def visit_Program(self, node: q3ast.Program, context: State) -> State:
        for name, builtin in self._builtins.items():
            builder, angles, qubits = BRAKET_BUILTIN_GATES[builtin]
            context = self._define_gate(name, builder, angles, qubits, node, context)
        for name, matrix in self._pragmas.unitaries.items():
            qubits = len(matrix).bit_length() - 1
            # Checked unitary already (`_pragma_matrix`), by the rule Qiskit's check applies.
            gate = functools.partial(UnitaryGate, matrix, check_input=False)
            context = self._define_gate(name, gate, 0, qubits, node, context)
        visited: State = super().visit_Program(node, context)
        return visited

    def visit_Box(self, node: q3ast.Box, context: State) -> State:
        line = self._pragmas.verbatim.get(id(node))
        if line is None:
            visited: State = super().visit_Box(node, context)
            return visited
        label = f"{VERBATIM_BOX_LABEL} line {line}"
        with context.circuit.box(label=label), LocalScope(context) as inner:
            for statement in node.body:
                self.visit(statement, inner)
        return context

    def _resolve_generic(
        self, node: q3ast.Expression, context: State, strict: bool
    ) -> tuple[Any, Any]:
        return _Qasm3Values(context, strict).resolve(node)

    def _resolve_condition(self, node: q3ast.Expression, context: State) -> Any:
        # The importer's own forms stay (bit, bool) / (register, int) conditions, which every
        # backend and `settle_unreachable_conditions` read; anything else it refuses (`&&`,
        # `<`, `c != 1`, `(c & 1) == 1`) becomes an expression.
        try:
            return super()._resolve_condition(node, context)
        except ConversionError:
            return _Qasm3Condition(context).resolve(node)

    def visit_QuantumGate(self, node: q3ast.QuantumGate, context: State) -> State:
        self._check_arity(node, context)
        try:
            visited: State = super().visit_QuantumGate(node, context)
        except IndexError:
            # The importer's own words had no line ("an index is out of range").
            raise_from_node(node, "a qubit index is past the end of its register")
        except CircuitError as exc:
            message = _sdk_message(exc)
            if "duplicate" in message:
                # Qiskit's "duplicate bit arguments" named no line: `cx q[0], q[0];`.
                raise_from_node(node, "a gate's qubit operands must be distinct qubits")
            if "after binding" not in message:
                raise
            # A call that makes an angle of the gate's definition complex (`gate g(a) q
            # { rz(sqrt(a)) q; }`, `g(-1) q;`): Qiskit's message names the bound value by its
            # address ('Py(0x7f...)'). The call and the angle are named as the client wrote them.
            raise_from_node(node, self._complex_angle(node, context))
        return visited

    @staticmethod
    def _check_arity(node: q3ast.QuantumGate, context: State) -> None:
        """A call with the wrong number of angles or qubits, refused at its line. The importer
        checks neither before building the gate: the client read Python's own complaint with
        no line ("_gpi() missing 1 required positional argument: 'phi'", "label expects a
        string or None" for `cnot(0.5)`, "The amount of qubit(1)/clbit(0) arguments does not
        match the gate expectation (2)")."""
        symbol = context.symbol_table.get(node.name.name, node)
        if symbol is None or not isinstance(symbol.type, q3types.Gate):
            return  # the importer's own refusals name the line
        name = node.name.name
        angles, quantum = (
            # The importer's built-in `U` declares its angles as a list of their types.
            len(count) if isinstance(count, list | tuple) else count
            for count in (symbol.type.n_classical, symbol.type.n_quantum)
        )
        if not (isinstance(angles, int) and isinstance(quantum, int)):
            return
        if len(node.arguments) != angles:
            raise_from_node(
                node,
                f"gate '{name}' takes {angles} angle{'s' * (angles != 1)}; "
                f"the call gives {len(node.arguments)}",
            )
        controls = 0
        for modifier in node.modifiers:
            if modifier.modifier not in (
                q3ast.GateModifierName.ctrl,
                q3ast.GateModifierName.negctrl,
            ):
                continue
            count = 1 if modifier.argument is None else _literal_int(modifier.argument)
            if count is None:
                return  # not a literal: the importer resolves (or refuses) it
            controls += count
        qubits = quantum + controls
        if len(node.qubits) != qubits:
            raise_from_node(
                node,
                f"gate '{name}' acts on {qubits} qubit{'s' * (qubits != 1)}"
                f"{' (controls included)' if controls else ''}; the call gives {len(node.qubits)}",
            )

    def _complex_angle(self, node: q3ast.QuantumGate, context: State) -> str:
        name = node.name.name
        arguments = [self._resolve_angle(argument, context) for argument in node.arguments]
        call = f"gate '{name}' called with ({', '.join(_user_number(a) for a in arguments)})"
        symbol = context.symbol_table.get(name, node)
        definition = getattr(symbol.data, "_definition", None)
        order = getattr(symbol.data, "_order", ())
        if isinstance(definition, QuantumCircuit):
            values = dict(zip(order, arguments, strict=False))
            for instruction in definition.data:
                for angle in instruction.operation.params:
                    if not isinstance(angle, ParameterExpression):
                        continue
                    known = {p: values[p] for p in angle.parameters if p in values}
                    try:
                        bound = angle.bind(known, allow_unknown_parameters=True)
                    except (ValueError, TypeError, ZeroDivisionError, CircuitError):
                        continue
                    if bound.parameters or bound.is_real():
                        continue
                    value = complex(bound.numeric())
                    return (
                        # Not the angle's expression: its parameters carry the names
                        # `_order_gate_parameters` gave them, not the client's.
                        f"{call}: the angle of its '{instruction.operation.name}' is the complex "
                        f"number {_user_number(value)}; gate angles must be real"
                    )
        return f"{call}: an angle of its definition is a complex number; gate angles must be real"

    def visit_ClassicalDeclaration(self, node: q3ast.ClassicalDeclaration, context: State) -> State:
        if not isinstance(node.type, q3ast.BitType):
            # A Qiskit Var (`qc.add_var`, written `bool flag;`): Aer cannot run a circuit that
            # has one (qiskit-aer 0.18 fails to assemble a bool Var, and aborts the process on
            # a uint one), and QPY is refused them too.
            type_name = type(node.type).__name__.removesuffix("Type").lower()
            raise_from_node(
                node,
                f"classical variables (declarations of type '{type_name}') are not supported; "
                "use bit registers",
            )
        visited: State = super().visit_ClassicalDeclaration(node, context)
        return visited

    def visit_SwitchStatement(self, node: q3ast.SwitchStatement, context: State) -> State:
        target, kind = self._resolve_generic(node.target, context, strict=True)
        if not isinstance(kind, q3types.Bit | q3types.BitArray):
            raise_from_node(
                node.target, "switch targets other than bits and bit registers are not supported"
            )
        if isinstance(target, list):  # a slice: Qiskit switches on registers, as in an `if`
            target = _register_of(target, context)
        width = 1 if isinstance(target, Clbit) else len(target)
        seen: set[int] = set()
        cases: list[tuple[list[object], list[q3ast.Statement]]] = []
        for values, block in node.cases:
            labels: list[object] = []
            for value in values:
                label = self._resolve_constant_int(value, context)
                if label < 0 or label.bit_length() > width:
                    raise_from_node(
                        value,
                        f"a case value is outside 0 .. 2^{width} - 1, the values of the "
                        f"{width}-bit switch target",
                    )
                if label in seen:
                    raise_from_node(value, "a case value is repeated")
                seen.add(label)
                labels.append(bool(label) if isinstance(target, Clbit) else label)
            cases.append((labels, block.statements))
        if node.default is not None:
            cases.append(([CASE_DEFAULT], node.default.statements))
        if not cases:
            raise_from_node(node, "a switch statement needs at least one case")
        with context.circuit.switch(target) as case:
            for labels, statements in cases:
                with case(*labels), LocalScope(context) as inner:
                    for statement in statements:
                        self.visit(statement, inner)
        return context


def _operators(node: q3ast.Expression) -> int:
    """The binary and unary operators in an expression (`c[0] && !c[1]`: 2)."""
    kinds = q3ast.BinaryExpression | q3ast.UnaryExpression
    return sum(1 for inner in _walk(node) if isinstance(inner, kinds))


def _walk(root: q3ast.QASMNode) -> Iterator[q3ast.QASMNode]:
    pending = [root]
    while pending:
        node = pending.pop()
        yield node
        pending.extend(_children(node))


def _map_conversion_error(message: str, field: str) -> InvalidArgument:
    undefined = _QASM3_UNDEFINED_GATE.match(message)
    if undefined is not None:
        return invalid(
            "UNKNOWN_GATE",
            f"line {undefined[1]}, column {undefined[2]}: gate {undefined[3]!r} is not defined",
            field,
            gate=undefined[3],
        )
    symbol = _QASM3_UNDEFINED_SYMBOL.match(message)
    if symbol is not None and symbol[3].lower() in _NON_FINITE_NAMES:
        return _non_finite(
            f"line {symbol[1]}, column {symbol[2]}: {symbol[3]!r} is not a number", field
        )
    position = _QASM3_POSITION.match(message)
    readable = message
    if position is not None:
        readable = f"line {position[1]}, column {position[2]}: {message[position.end() :]}"
    if _QASM3_UNSUPPORTED.search(message):
        node = _QASM3_UNSUPPORTED_NODE.search(message)
        if node is not None:
            feature = node[1]
        elif "classical variables" in message:
            feature = "classical_variables"  # as QPY's refusal of them names it
        else:
            feature = "openqasm3_construct"
        return invalid(
            "UNSUPPORTED_FEATURE",
            _clip(f"OpenQASM 3 construct not supported: {readable}"),
            field,
            feature=feature,
        )
    return invalid("INVALID_QASM", _clip(f"OpenQASM 3 program rejected: {readable}"), field)


def parse_circuit(
    source: CircuitSource,
    limits: CircuitLimits,
    field: str,
    *,
    max_qubits: int | None = None,
    native: Collection[str] | None = None,
) -> QuantumCircuit:
    """Parses client source into a circuit, enforcing size, include and time limits.

    Classical bits declared outside a register (OpenQASM 3 `bit c;`) come back as one-bit
    registers named after their variable (`result_registers` lists them), so every classical
    bit of the returned circuit belongs to a register.

    Args:
        source: The client's circuit text.
        limits: Source size, declared bits, operation count and parse time limits.
        field: Request field to name in errors, e.g. "spec.pubs[0].sampler.circuit.qasm3".
        max_qubits: Refuse (TOO_MANY_QUBITS) before importing when the program declares more.
        native: The operation names of the target it will be transpiled to: a matrix gate
            outside them counts as what synthesising it makes (check_operation_count).

    Raises:
        InvalidArgument: CIRCUIT_TOO_LARGE, INCLUDE_NOT_ALLOWED, INVALID_QASM, UNKNOWN_GATE,
            UNSUPPORTED_FEATURE, NON_FINITE_ANGLE, CIRCUIT_TOO_COMPLEX or TOO_MANY_QUBITS
            (INVALID_QPY for QPY payloads).
    """
    if source.language is CircuitLanguage.QPY:
        # Imported on first use: QPY is an extra, and the reader imports this module.
        from gateway.backends.qiskit import qpy_reader

        loaded = qpy_reader.load_circuit(
            source.data, limits, field, max_qubits=max_qubits, native=native
        )
        if SLICE_REGISTERS in (loaded.metadata or {}):
            # The entry says which registers results leave out: never the client's to set.
            loaded.metadata = {k: v for k, v in loaded.metadata.items() if k != SLICE_REGISTERS}
        return loaded
    text = source.text
    size = len(text.encode("utf-8", "surrogatepass"))
    if size > limits.max_source_bytes:
        raise invalid(
            "CIRCUIT_TOO_LARGE",
            f"circuit source is {size} bytes; the limit is {limits.max_source_bytes}",
            field,
            source_bytes=size,
            max_source_bytes=limits.max_source_bytes,
        )
    # Editors on some systems write a byte-order mark; neither lexer accepts one.
    text = text.removeprefix(_BOM)
    if not text.strip():
        raise invalid("INVALID_QASM", "the circuit source is empty", field)

    if source.language is CircuitLanguage.QASM2:
        scan = _scan_qasm2(text, field)
        if scan.tokens == 0:
            raise _no_statements(field)
        _check_declared(scan.qubits, scan.clbits, limits, max_qubits, field)

        try:
            circuit = _loads_qasm2(text, field)
        except RecursionError:
            raise _too_deep(field) from None
    else:
        # Nesting past what the parser reaches is too deep (CIRCUIT_TOO_COMPLEX), whatever
        # else the program holds; below that, its parsing work counts as statements.
        nesting = _qasm3_nesting(text)
        if nesting.too_deep:
            raise _too_deep(field)
        # Comments' too: an upper bound. Nested expressions count by the parser's work on
        # them: 200 statements each 120 `exp(` deep took 6.8 s, the time of 20,000 plain ones.
        statements = text.count(";") + text.count("{") + text.count(",") // 8 + nesting.work
        if statements > MAX_QASM3_STATEMENTS:
            raise invalid(
                "CIRCUIT_TOO_LARGE",
                f"the OpenQASM 3 program has {statements} statements; the limit is "
                f"{MAX_QASM3_STATEMENTS} (its parser is slow: send longer circuits as QPY or "
                "OpenQASM 2)",
                field,
                statements=statements,
                max_statements=MAX_QASM3_STATEMENTS,
            )
        try:
            program = _parse_qasm3_ast(text, field)
            pragmas = _read_braket_pragmas(program, limits, field)
            declarations = _qasm3_declarations(program, limits, field)
            _check_declared(declarations.qubits, declarations.clbits, limits, max_qubits, field)
            _Qasm3Cost(limits, field, dict(declarations.widths)).program(program)
            circuit = _convert_qasm3(program, pragmas, field)
        except RecursionError:
            raise _too_deep(field) from None
        # Registers the importer made for slices in conditions and switch targets (`if
        # (c[0:1] == 2)`, named `None_0`, ...): the program declared none of them, and results
        # hold the declared registers only (`result_registers`), which alias the same bits.
        slices = [r.name for r in circuit.cregs if r.name not in declarations.widths]
        if slices:
            circuit.metadata = {**(circuit.metadata or {}), SLICE_REGISTERS: slices}
        _register_loose_bits(circuit, declarations.loose_bits)

    if max_qubits is not None:
        check_qubit_count(circuit, max_qubits, field)
    check_operation_count(circuit, limits, field, native=native)
    check_finite_parameters(circuit, field)
    return circuit


class _Nesting(NamedTuple):
    """How an OpenQASM 3 program nests, its comments left out (`_qasm3_nesting`)."""

    # Brackets or a run of prefix operators deeper than MAX_QASM3_NESTING (what the parser
    # would refuse as too deep anyway, after seconds).
    too_deep: bool
    # The parser's work on nested expressions, in statements: ANTLR re-reads the rest of a
    # nested run at each level, so a statement's cost grows with the square of its nesting
    # (one 60 `exp(` deep: 17 ms, 120 deep: 55 ms, a plain statement 0.3 ms): each bracket
    # opened inside two others weighs its depth past two, as does each prefix operator past
    # the second of a run (`---x`), and _NESTING_WORK_PER_STATEMENT of that is one statement
    # (about half what one costs, for margin). What `qasm3.dumps` writes for gate angles
    # rarely nests past two.
    work: int


def _qasm3_nesting(text: str) -> _Nesting:
    """The program's nesting, from one pass over its text before any parsing."""
    code = _QASM3_COMMENTS.sub(" ", text)
    # Runs found whole (linear; a bounded repeat would be retried at every start in a run).
    runs = [len(run) for run in _PREFIX_OPERATORS.findall(_SPACE.sub("", code))]
    work = sum((n - 2) * (n - 1) // 2 for n in runs if n > 2)
    raw = np.frombuffer(code.encode("utf-8", "surrogatepass"), dtype=np.uint8)
    depths = _bracket_depths(np.isin(raw, _OPENING), np.isin(raw, _CLOSING))
    # Braces left out of the work: a block's statements are no deeper an expression for
    # being in one.
    opening = np.isin(raw, _OPENING[:2])
    expression_depths = _bracket_depths(opening, np.isin(raw, _CLOSING[:2]))
    work += int(np.maximum(expression_depths[opening] - 2, 0).sum())
    too_deep = max(runs, default=0) > MAX_QASM3_NESTING or (
        bool(depths.size) and int(depths.max()) > MAX_QASM3_NESTING
    )
    return _Nesting(too_deep, work // _NESTING_WORK_PER_STATEMENT)


def _bracket_depths(opening: np.ndarray, closing: np.ndarray) -> np.ndarray:
    """The nesting depth after each character, never below 0: a stray closing bracket (in a
    `pragma` line, which the parser reads as text) does not make the brackets after it shallower
    (`pragma` and 30,000 `)` let 200 statements 120 `exp(` deep count as none, 6.5 s of
    parsing, and a nesting of 300 reach the parser)."""
    walk = np.cumsum(opening.astype(np.int64) - closing)
    # A walk held at 0 is the free walk less its lowest point so far (when below 0).
    return walk - np.minimum(np.minimum.accumulate(walk), 0)


def _check_declared(
    qubits: int, clbits: int, limits: CircuitLimits, max_qubits: int | None, field: str
) -> None:
    """Refuses declared sizes before the importer allocates a bit for each."""
    if max_qubits is not None and qubits > max_qubits:
        raise _too_many_qubits(qubits, max_qubits, field)
    if clbits > limits.max_clbits:
        raise invalid(
            "CIRCUIT_TOO_LARGE",
            f"the program declares {clbits} classical bits; the limit is {limits.max_clbits}",
            field,
            num_clbits=clbits,
            max_clbits=limits.max_clbits,
        )
    # Without a backend's qubit count, the operation limit still bounds what is allocated.
    if qubits + clbits > limits.max_operations:
        raise invalid(
            "CIRCUIT_TOO_LARGE",
            f"the program declares {qubits + clbits} bits; the limit is {limits.max_operations}",
            field,
            max_operations=limits.max_operations,
        )


def _quoted(names: Iterable[str]) -> str:
    return " or ".join(f'"{name}"' for name in sorted(names))


def _too_many_qubits(count: int, max_qubits: int, field: str) -> InvalidArgument:
    return invalid(
        "TOO_MANY_QUBITS",
        f"the circuit uses {count} qubits; this backend has {max_qubits}",
        field,
        num_qubits=count,
        max_qubits=max_qubits,
    )


# --------------------------------------------------------------------------------------------
# OpenQASM 3 AST checks, before the importer allocates bits or materialises gate definitions.
# --------------------------------------------------------------------------------------------


def _literal_int(node: object) -> int | None:
    if isinstance(node, q3ast.IntegerLiteral):
        return int(node.value)
    if (
        isinstance(node, q3ast.UnaryExpression)
        and node.op is q3ast.UnaryOperator["-"]
        and isinstance(node.expression, q3ast.IntegerLiteral)
    ):
        return -int(node.expression.value)
    return None


def _inclusive_range_length(start: int, end: int, step: int) -> int:
    """len(range(start, end + 1, step)) for step > 0 (end - 1 for step < 0), without len():
    a range longer than a C ssize_t makes len() raise OverflowError."""
    if step > 0:
        return max(0, (end - start) // step + 1)
    return max(0, (start - end) // -step + 1)


def _iterations(indexset: object) -> int:
    """Iterations of a for-loop's index set (a range may be longer than len() can say)."""
    if isinstance(indexset, range):
        if not indexset.step:
            return 0
        last = indexset.stop - (1 if indexset.step > 0 else -1)
        return _inclusive_range_length(indexset.start, last, indexset.step)
    return len(indexset) if isinstance(indexset, Sized) else 1


def _loop_iterations(node: q3ast.ForInLoop) -> int:
    decl = node.set_declaration
    if isinstance(decl, q3ast.DiscreteSet):
        return len(decl.values)
    if isinstance(decl, q3ast.RangeDefinition):
        start = _literal_int(decl.start) if decl.start is not None else None
        end = _literal_int(decl.end) if decl.end is not None else None
        step = _literal_int(decl.step) if decl.step is not None else 1
        if start is not None and end is not None and step:
            # OpenQASM ranges include their end.
            return _inclusive_range_length(start, end, step)
    return 1  # unknown here; the converted circuit is counted exactly afterwards


def _children(node: object) -> Iterable[q3ast.QASMNode]:
    if not dataclasses.is_dataclass(node):
        return
    for f in dataclasses.fields(node):
        if f.name in ("span", "annotations"):
            continue
        # Fields hold nodes, lists of nodes, or lists of lists and tuples of them (indices,
        # switch cases): flatten containers, which nest only a few levels.
        pending: list[object] = [getattr(node, f.name)]
        while pending:
            value = pending.pop()
            if isinstance(value, q3ast.QASMNode):
                yield value
            elif isinstance(value, list | tuple):
                pending.extend(reversed(value))


def _where(node: q3ast.QASMNode) -> tuple[int, int]:
    span = node.span
    return (span.start_line, span.start_column) if span is not None else (0, 0)


@dataclass
class _Qasm3Declarations:
    qubits: int = 0
    clbits: int = 0
    # Register and alias widths by name (qubits and bits), for broadcast and alias sizes.
    widths: dict[str, int] = dataclasses.field(default_factory=dict)
    # (circuit clbit index, variable name) of every global `bit x;`, in declaration order.
    loose_bits: list[tuple[int, str]] = dataclasses.field(default_factory=list)
    alias_work: int = 0
    switch_case_values: int = 0


def _declared_size(size: q3ast.Expression | None, node: q3ast.QASMNode, field: str) -> int:
    if size is None:
        return 1
    if isinstance(size, q3ast.IntegerLiteral):
        return int(size.value)
    raise _nonliteral_size(*_where(node), field)


def _qasm3_declarations(
    program: q3ast.Program, limits: CircuitLimits, field: str
) -> _Qasm3Declarations:
    """Reads includes, declared sizes, physical qubits, aliases and literals from the AST.

    Walks every node (nested scopes included) iteratively, in source order, so nothing the
    importer would act on is missed and no nesting depth can exhaust the stack.
    """
    found = _Qasm3Declarations()
    max_physical = -1
    allowed = ALLOWED_INCLUDES[CircuitLanguage.QASM3]
    stack: list[q3ast.QASMNode] = list(reversed(program.statements))
    while stack:
        node = stack.pop()
        if isinstance(node, q3ast.Include):
            if node.filename not in allowed:
                raise _include_not_allowed(CircuitLanguage.QASM3, *_where(node), field)
        elif isinstance(node, q3ast.QubitDeclaration):
            width = _declared_size(node.size, node, field)
            found.qubits += width
            found.widths[node.qubit.name] = width
        elif isinstance(node, q3ast.ClassicalDeclaration) and isinstance(node.type, q3ast.BitType):
            width = _declared_size(node.type.size, node, field)
            found.clbits += width
            found.widths[node.identifier.name] = width
        elif isinstance(node, q3ast.Identifier) and node.name.startswith("$"):
            digits = node.name[1:]
            if digits.isdigit():
                # The importer creates every physical qubit up to the highest one named. Past
                # 18 digits any index is over every limit (and int() refuses 4300+ digits).
                max_physical = max(max_physical, _HUGE if _too_long(digits) else int(digits))
        elif isinstance(node, q3ast.FloatLiteral | q3ast.DurationLiteral):
            if not math.isfinite(node.value):
                line, col = _where(node)
                raise _non_finite(f"line {line}, column {col}: the number is not finite", field)
        elif isinstance(node, q3ast.ForInLoop):
            _check_loop_set(node, field)
        elif isinstance(node, q3ast.SwitchStatement):
            found.switch_case_values += sum(len(values) for values, _ in node.cases)
            if found.switch_case_values > MAX_SWITCH_CASE_VALUES:
                raise invalid(
                    "CIRCUIT_TOO_LARGE",
                    f"the program's switch statements have more than {MAX_SWITCH_CASE_VALUES} "
                    "case values",
                    field,
                    max_switch_case_values=MAX_SWITCH_CASE_VALUES,
                )
        elif isinstance(node, q3ast.AliasStatement):
            width, work = _alias_size(node.value, found.widths)
            found.widths[node.target.name] = width
            found.alias_work += work
            budget = _ALIAS_WORK_PER_CLBIT * limits.max_clbits
            if found.alias_work > budget:
                raise invalid(
                    "CIRCUIT_TOO_LARGE",
                    f"aliases (`let`) copy more than {budget} bits in total",
                    field,
                    max_alias_bits=budget,
                )
        stack.extend(reversed(list(_children(node))))
    # Physical and virtual qubits cannot be mixed (the importer refuses it): adding is an upper
    # bound either way.
    found.qubits += max_physical + 1
    # The importer appends a program's classical bits in the order of its global declarations
    # (only global ones are accepted): that order names the loose bits.
    index = 0
    for statement in program.statements:
        if isinstance(statement, q3ast.ClassicalDeclaration) and isinstance(
            statement.type, q3ast.BitType
        ):
            if statement.type.size is None:
                found.loose_bits.append((index, statement.identifier.name))
                index += 1
            else:
                index += _declared_size(statement.type.size, statement, field)
    return found


def _check_loop_set(node: q3ast.ForInLoop, field: str) -> None:
    """Loop bounds must be integer literals that fit 62 bits.

    Qiskit stores a for-loop's range natively; one whose end does not fit 64 bits it tries to
    list element by element instead, which allocates until the process aborts.
    """
    decl = node.set_declaration
    if isinstance(decl, q3ast.RangeDefinition):
        bounds = [decl.start, decl.end, decl.step]
    elif isinstance(decl, q3ast.DiscreteSet):
        bounds = list(decl.values)
    else:
        return  # the importer accepts only ranges and sets
    for bound in bounds:
        if bound is None:
            continue
        value = _literal_int(bound)
        if value is None or abs(value) >= _MAX_LOOP_BOUND:
            line, col = _where(node)
            raise invalid(
                "UNSUPPORTED_FEATURE",
                f"line {line}, column {col}: for-loop bounds must be integer literals below "
                "2^62 in magnitude",
                field,
                feature="for_loop_bounds",
            )


def _alias_size(value: q3ast.QASMNode, widths: Mapping[str, int]) -> tuple[int, int]:
    """(width, copying work) of an alias value; `a ++ b` copies both sides into a new tuple."""
    # Iterative post-order over concatenations, whose left-deep chains can be very long.
    work = 0
    results: list[int] = []
    stack: list[tuple[q3ast.QASMNode, bool]] = [(value, False)]
    while stack:
        node, expanded = stack.pop()
        if isinstance(node, q3ast.Concatenation):
            if expanded:
                right, left = results.pop(), results.pop()
                results.append(left + right)
                work += left + right
            else:
                stack.append((node, True))
                stack.append((node.rhs, False))
                stack.append((node.lhs, False))
            continue
        results.append(_selection_width(node, widths))
    width = results[-1] if results else 0
    return width, work + width


def _selection_width(node: q3ast.QASMNode, widths: Mapping[str, int]) -> int:
    if isinstance(node, q3ast.Identifier):
        return widths.get(node.name, 1)
    if isinstance(node, q3ast.IndexExpression | q3ast.IndexedIdentifier):
        base = node.collection if isinstance(node, q3ast.IndexExpression) else node.name
        width = widths.get(base.name, 1) if isinstance(base, q3ast.Identifier) else 1
        indices = [node.index] if isinstance(node, q3ast.IndexExpression) else node.indices
        for index in indices:
            if isinstance(index, q3ast.DiscreteSet):
                width = len(index.values)
            elif isinstance(index, list) and len(index) == 1:
                (element,) = index
                if isinstance(element, q3ast.RangeDefinition):
                    width = min(width, _range_length(element, width))
                else:
                    width = 1
        return width
    return 1


def _range_length(node: q3ast.RangeDefinition, width: int) -> int:
    """Elements a literal range selects from `width` (an upper bound when not literal)."""
    start = 0 if node.start is None else _literal_int(node.start)
    end = width - 1 if node.end is None else _literal_int(node.end)
    step = 1 if node.step is None else _literal_int(node.step)
    if start is None or end is None or not step:
        return width
    return _inclusive_range_length(start, end, step)


def _register_loose_bits(circuit: QuantumCircuit, loose_bits: Sequence[tuple[int, str]]) -> None:
    """Puts each loose classical bit in a one-bit register named after its variable."""
    taken = {register.name for register in circuit.cregs}
    for index, variable in loose_bits:
        bit = circuit.clbits[index]
        # The declaration order and the importer's bit order must agree; if not, this is a bug.
        assert not circuit.find_bit(bit).registers, f"clbit {index} ({variable}) is in a register"
        name = unique_name(variable, taken)
        taken.add(name)
        circuit.add_register(ClassicalRegister(name=name, bits=[bit]))


def unique_name(name: str, taken: Collection[str]) -> str:
    """`name`, or `name_1`, `name_2`, ...: the first not in `taken`."""
    candidate, suffix = name, 0
    while candidate in taken:
        suffix += 1
        candidate = f"{name}_{suffix}"
    return candidate


def slice_registers(circuit: QuantumCircuit) -> frozenset[str]:
    """The registers `parse_circuit` found the OpenQASM 3 importer made for slices (kept in the
    circuit, whose conditions and switches read them; transpiling keeps the metadata)."""
    names = (circuit.metadata or {}).get(SLICE_REGISTERS, ())
    return frozenset(name for name in names if isinstance(name, str))


def result_registers(circuit: QuantumCircuit) -> tuple[tuple[str, tuple[int, ...]], ...]:
    """Every classical register as (name, circuit clbit indices in register-bit order).

    Circuits from `parse_circuit` have every bit in a register (loose OpenQASM 3 bits become
    one-bit registers named after their variable, placed after the program's other registers).
    A bit outside every register (a circuit built elsewhere) is reported as a one-bit register
    named `clbit<index>`, made unique against the real register names. Transpiling keeps classical
    bits and registers, so this works on the transpiled circuit as well. The registers the
    importer made for slices (`slice_registers`) are left out: their bits are in declared ones.
    """
    hidden = slice_registers(circuit)
    registers = [
        (register.name, tuple(circuit.find_bit(bit).index for bit in register))
        for register in circuit.cregs
        if register.name not in hidden
    ]
    taken = {name for name, _ in registers}
    for index, bit in enumerate(circuit.clbits):
        if not circuit.find_bit(bit).registers:
            name = unique_name(f"clbit{index}", taken)
            taken.add(name)
            registers.append((name, (index,)))
    return tuple(registers)


@dataclass
class _Qasm3Cost:
    limits: CircuitLimits
    field: str
    registers: dict[str, int] = dataclasses.field(default_factory=dict)
    gates: dict[str, tuple[int, int]] = dataclasses.field(default_factory=dict)  # size, depth
    work: int = 0

    def _operand_width(self, operand: q3ast.QASMNode) -> int:
        return _selection_width(operand, self.registers)

    def _application(
        self, node: q3ast.QuantumGate | q3ast.QuantumPhase
    ) -> tuple[int, int, int, int]:
        """(executed operations, conversion work, definition depth, operations inside user
        definitions) of a gate call."""
        name = node.name.name if isinstance(node, q3ast.QuantumGate) else "gphase"
        size, depth = self.gates.get(name, (1, 0))
        user_gate = name in self.gates
        # Only user gates are copied (their whole definition, at every application).
        work = size if user_gate else 0
        num_qubits = len(node.qubits)
        # gphase acts on no qubit of its own: every operand may be a control.
        max_controls = num_qubits if isinstance(node, q3ast.QuantumPhase) else num_qubits - 1
        for modifier in node.modifiers:
            if modifier.modifier is q3ast.GateModifierName.pow and num_qubits > _MAX_POW_QUBITS:
                raise self._error(
                    "CIRCUIT_TOO_COMPLEX",
                    node,
                    f"'pow' is limited to gates on at most {_MAX_POW_QUBITS} qubits",
                )
            if modifier.modifier in (q3ast.GateModifierName.ctrl, q3ast.GateModifierName.negctrl):
                controls = 1 if modifier.argument is None else _literal_int(modifier.argument)
                if controls is not None and not 0 < controls <= max_controls:
                    raise self._error("INVALID_QASM", node, "more controls than qubit operands")
                if user_gate:
                    work *= _CTRL_WORK_FACTOR
        width = max((self._operand_width(q) for q in node.qubits), default=1)
        return size * width, work * width, depth, size * width if user_gate else 0

    def _error(self, reason: str, node: q3ast.QASMNode, message: str) -> InvalidArgument:
        span = node.span
        where = f"line {span.start_line}, column {span.start_column}: " if span else ""
        return invalid(reason, where + message, self.field)

    def block(self, nodes: Iterable[q3ast.QASMNode]) -> tuple[int, int, int, int]:
        """(executed operations, conversion work, depth, operations inside user definitions)
        of statements."""
        ops = work = depth = inside = 0
        for node in nodes:
            if isinstance(node, q3ast.QuantumGate | q3ast.QuantumPhase):
                o, w, d, i = self._application(node)
            elif isinstance(node, q3ast.ForInLoop):
                o, w, d, i = self.block(node.block)
                # Neither the importer nor the transpiler unrolls loops: work once. Running
                # costs a step per iteration even with an empty body.
                o = max(o, 1) * _loop_iterations(node)
            elif isinstance(node, q3ast.Expression):
                # No gate calls; a condition's operators are evaluated (each an expression
                # node Aer walks) every time it is tested.
                o, w, d, i = _operators(node), 0, 0, 0
            else:
                o, w, d, i = self.block(_children(node))
            ops += o
            work += w
            depth = max(depth, d)
            inside += i
        return ops, work, depth, inside

    def program(self, program: q3ast.Program) -> None:
        ops = inside = 0
        for statement in program.statements:
            if isinstance(statement, q3ast.Include):
                if statement.filename not in ALLOWED_INCLUDES[CircuitLanguage.QASM3]:
                    raise self._error(
                        "INCLUDE_NOT_ALLOWED", statement, 'only include "stdgates.inc" is allowed'
                    )
            elif isinstance(statement, q3ast.QubitDeclaration):
                size = 1 if statement.size is None else _literal_int(statement.size)
                self.registers[statement.qubit.name] = max(size or 1, 1)
            elif isinstance(statement, q3ast.QuantumGateDefinition):
                body_ops, body_work, depth, _ = self.block(statement.body)
                depth += 1
                if depth > MAX_DEFINITION_DEPTH:
                    raise self._error(
                        "CIRCUIT_TOO_COMPLEX",
                        statement,
                        f"gate definitions are nested deeper than {MAX_DEFINITION_DEPTH}",
                    )
                # Defining a gate applies (and copies) every gate in its body once.
                self.work += body_work
                self.gates[statement.name.name] = (max(body_ops, 1), depth)
            else:
                o, w, _, i = self.block([statement])
                ops += o
                self.work += w
                inside += i
        # The size of what would run is the better answer, so it is checked first.
        if ops > self.limits.max_operations:
            raise _too_many_operations(ops, self.limits.max_operations, self.field)
        if inside > self.limits.max_definition_operations:
            raise _too_many_definition_operations(self.limits.max_definition_operations, self.field)
        budget = min(
            self.limits.max_operations,
            QASM3_MAX_CONVERSION_WORK,
            _CONVERSION_WORK_PER_DEFINITION_OPERATION * self.limits.max_definition_operations,
        )
        if self.work > budget:
            raise invalid(
                "CIRCUIT_TOO_COMPLEX",
                "the program's gate definitions expand to too many operations to import",
                self.field,
                max_conversion_work=budget,
            )


# --------------------------------------------------------------------------------------------
# Circuit-level checks.
# --------------------------------------------------------------------------------------------


def _too_many_operations(count: int, limit: int, field: str) -> InvalidArgument:
    return invalid(
        "CIRCUIT_TOO_LARGE",
        f"the circuit has more than {limit} operations once gate definitions are unrolled",
        field,
        max_operations=limit,
    )


def _is_atomic(op: Operation) -> bool:
    if isinstance(op, _ATOMIC_TYPES):
        return True
    standard = _STANDARD_GATES.get(op.name)
    if standard is not None and type(op) is type(standard):
        return True
    if getattr(op, "_standard_gate", None) is not None:
        return True
    # Library gates (mcx from `ctrl(n) @ x`, c4x, ...) are synthesised by the transpiler, not
    # written by the client: one operation each (`tally_operations` counts the synthesis of
    # one the target lacks). Singleton instances have a generated class without a module; the
    # library class is its base.
    return _is_library_gate(op)


def _is_library_gate(op: Operation) -> bool:
    module = next((cls.__module__ for cls in type(op).__mro__ if cls.__module__), "")
    return module.startswith("qiskit.circuit.library")


def _synthesised_library_gate(op: Operation, native: Collection[str] | None) -> bool:
    """Whether `op` is a library gate (not a standard one) that the target with operations
    `native` lacks, so that the transpiler synthesises its definition at every instance."""
    if native is None or op.name in native or isinstance(op, _ATOMIC_TYPES):
        return False
    standard = _STANDARD_GATES.get(op.name)
    if standard is not None and type(op) is type(standard):
        return False
    return getattr(op, "_standard_gate", None) is None and _is_library_gate(op)


def _params_key(params: Sequence[object]) -> tuple[object, ...]:
    # A library gate's size may depend on its parameters (a permutation, a list of angles).
    key: list[object] = []
    for value in params:
        if isinstance(value, np.ndarray):
            key.append((value.shape, value.tobytes()))
        else:
            try:
                hash(value)
                key.append(value)
            except TypeError:
                key.append(repr(value))
    return tuple(key)


def _definition_key(op: Operation) -> tuple[object, ...]:
    # Gate names are unique within one program; the class separates e.g. a user gate "cg"
    # from the controlled version of a user gate "g".
    key: tuple[object, ...] = (type(op), op.name, op.num_qubits, op.num_clbits)
    if isinstance(op, ControlledGate):
        key += (op.num_ctrl_qubits, op.ctrl_state)
    return key


@dataclass(frozen=True)
class OperationCount:
    """Operations of a circuit as if every gate definition were unrolled.

    Attributes:
        total: Every operation that would run: for-loop bodies once per iteration, while-loop
            bodies once, the largest branch of an if/else or switch.
        in_definitions: Operations that exist only inside user gate definitions, which the
            transpiler must copy and unroll one instance at a time: every branch counts, a loop
            body once (it is transpiled once, not per iteration).
    """

    total: int
    in_definitions: int


def tally_operations(
    circuit: QuantumCircuit, cap: int | None = None, *, native: Collection[str] | None = None
) -> OperationCount:
    """Counts operations as if every gate definition were unrolled, without unrolling.

    Each distinct gate definition is counted once (memoised), so exponentially nested
    definitions cost linear time. Counting stops early once `total` exceeds `cap` (both numbers
    are then lower bounds). With `native`, the operation names of the target the circuit will
    be transpiled to, a matrix or vector gate or Pauli evolution the target lacks counts as
    its synthesis (`synthesis_size`), and any other library gate it lacks as its definition,
    in `in_definitions` too; without it, as Aer runs it.

    Raises:
        RecursionError: if definitions nest deeper than Python's recursion limit (parse_circuit
            refuses those first).
    """
    memo: dict[tuple[object, ...], int] = {}
    limit = cap if cap is not None else math.inf

    def definition_size(op: Operation) -> int:
        key = _definition_key(op)
        cached = memo.get(key)
        if cached is None:
            definition = getattr(op, "definition", None)
            cached = 1 if definition is None else max(block(definition)[0], 1)
            memo[key] = cached
        return cached

    def library_size(op: Operation) -> int:
        key = (*_definition_key(op), _params_key(op.params))
        cached = memo.get(key)
        if cached is None:
            try:
                definition = op.definition
            except Exception:  # the transpiler reports it as it always has
                definition = None
            cached = 1 if definition is None else max(block(definition)[0], 1)
            memo[key] = cached
        return cached

    def block(body: QuantumCircuit) -> tuple[int, int]:
        total = inside = 0
        for instruction in body.data:
            op = instruction.operation
            if isinstance(op, ControlFlowOp):
                inner = [block(b) for b in op.blocks]
                if isinstance(op, ForLoopOp):
                    # Even an empty body costs the simulator a step per iteration.
                    count = 1 + _iterations(op.params[0]) * max(inner[0][0], 1)
                elif isinstance(op, WhileLoopOp):
                    count = 1 + inner[0][0]
                else:
                    count = 1 + max((t for t, _ in inner), default=0)
                total += count
                inside += sum(u for _, u in inner)
            elif (synthesised := synthesis_size(op, native)) is not None:
                total += synthesised
                inside += synthesised
            elif isinstance(op, UnitaryGate | HamiltonianGate):
                # A HamiltonianGate is defined as one UnitaryGate.
                total += unitary_steps(op.num_qubits)
            elif _synthesised_library_gate(op, native):
                # QFTGate(20) is one operation in QPY and 220 after synthesis, an MCXGate of 19
                # controls 685 on Braket's target: 29 KB of them took 6-15 s to compile.
                size = library_size(op)
                total += size
                inside += size
            elif _is_atomic(op):
                total += 1
            else:
                size = definition_size(op)
                total += size
                inside += size
            if total > limit:
                break
        return total, inside

    total, inside = block(circuit)
    return OperationCount(total=total, in_definitions=inside)


def unitary_steps(qubits: int) -> int:
    """Operations a dense unitary on `qubits` qubits counts as: its matrix multiplies 2^k
    amplitudes into each one (measured on Aer at 24 qubits: a 4-qubit unitary, which `pow` of
    a gate becomes, costs ~8.5 gates; 400 of them, counted as 400 operations, ran 102 s)."""
    return 1 if qubits <= 2 else 1 << (qubits - 1)


def synthesis_size(op: Operation, native: Collection[str] | None) -> int | None:
    """Operations the transpiler synthesises a matrix or vector gate into on a target whose
    operations are `native`, bounded above: SYNTHESIS_OPERATIONS_PER_ENTRY per entry of its
    matrix or vector. None for any other gate, for one the target runs as it is, and without a
    target. A controlled matrix gate is counted through its definition (QPY carries it)."""
    if native is None or op.name in native:
        return None
    if isinstance(op, PauliEvolutionGate):
        return evolution_size(op, native)
    if not isinstance(op, _MATRIX_GATES):
        return None
    if isinstance(op, HamiltonianGate) and "unitary" in native:
        return None  # its definition, one UnitaryGate, runs as it is
    entries = sum(int(np.size(p)) if isinstance(p, np.ndarray | list) else 1 for p in op.params)
    return SYNTHESIS_OPERATIONS_PER_ENTRY * max(entries, int(op.num_qubits))


def evolution_size(op: PauliEvolutionGate, native: Collection[str] | None = None) -> int:
    """Operations a Pauli evolution's synthesis makes, bounded above from its operator and the
    synthesis settings it carries, without synthesising: per repetition, each term once per
    stage of the product formula (2·5^(k-1) stages for Suzuki-Trotter of order 2k), or QDrift's
    ceil(2·λ²·t²·reps) sampled terms; a dense matrix of its qubits for MatrixExponential. What
    cannot be bounded (a symbolic time or coefficient under QDrift) counts as unbounded. A term
    Qiskit writes as one rotation the target with operations `native` runs counts as one."""
    synthesis = op.synthesis
    if isinstance(synthesis, MatrixExponential):
        return SYNTHESIS_OPERATIONS_PER_ENTRY * (1 << (2 * int(op.num_qubits)))
    operators = op.operator if isinstance(op.operator, list) else [op.operator]
    per_term: list[int] = []
    weights: list[complex] = []
    for operator in operators:
        paulis = getattr(operator, "paulis", None)
        if paulis is None:  # a SparseObservable: its terms' non-identity factors
            per_term.extend(_sparse_term_size(term) for term in operator)
            weights.extend(term.coeff for term in operator)
        else:
            per_term.extend(_pauli_term_sizes(paulis.x, paulis.z, native))
            weights.extend(operator.coeffs)
    per_term = per_term or [1]
    reps = getattr(synthesis, "reps", 1)
    reps = reps if isinstance(reps, int) and reps > 0 else 1
    if isinstance(synthesis, QDrift):
        try:
            lam = float(np.sum(np.abs(np.asarray(weights, dtype=complex))))
            samples = 2 * lam**2 * float(op.params[0]) ** 2 * reps
        except (TypeError, ValueError):
            return sys.maxsize  # a parameter: QDrift samples by its value
        except OverflowError:
            return sys.maxsize  # a coefficient or time of 1e200: `lam**2` overflows
        if not math.isfinite(samples) or samples > sys.maxsize:
            return sys.maxsize
        return math.ceil(samples) * max(per_term)
    order = getattr(synthesis, "order", 1)
    order = order if isinstance(order, int) and order > 1 else 1
    if order > _MAX_EVOLUTION_ORDER:
        return sys.maxsize  # 5^(order/2) stages: never computed for an order of 10**9
    stages = 1 if order == 1 else 2 * 5 ** (order // 2 - 1)
    return reps * stages * sum(per_term)


def _sparse_term_size(term: SparseObservable.Term) -> int:
    """Operations a SparseObservable term's rotation is synthesised into, bounded above: its
    projectors (`0`, `+`, `r`, ...) become the controls of one multi-controlled rotation,
    which the transpiler makes into ~40·p² operations for p of them (measured up to 40; 4 per
    factor counted `0` * 20 as 81 where 15,045 came out)."""
    projectors = sum(1 for bit in term.bit_terms if int(bit) not in _PAULI_BIT_TERMS)
    return (
        _EVOLUTION_OPERATIONS_PER_WEIGHT * len(term.indices)
        + 1
        + _EVOLUTION_OPERATIONS_PER_PROJECTOR_SQUARED * projectors * projectors
    )


def _pauli_term_sizes(x: np.ndarray, z: np.ndarray, native: Collection[str] | None) -> list[int]:
    """Per Pauli term (rows of `x` and `z`), operations its rotation is synthesised into:
    Qiskit writes a term of one Pauli on one or two qubits (`X`, `ZZ`) as that rotation (`rx`,
    `rzz`), one operation on a target that runs it; any other term at most 2(w-1) CX, one
    rotation and 2w basis changes. A Heisenberg chain's XX, YY and ZZ terms counted by the
    general rule made 9 times the operations Aer's synthesis made: reps=100 on 12 qubits
    (3,300 operations, 0.2 s to compile) was refused as unrolling to more than 20,000."""
    weights = np.count_nonzero(x | z, axis=1)
    sizes = _EVOLUTION_OPERATIONS_PER_WEIGHT * weights + 1
    if native is not None:
        # Vectorised: an operator of 1 MiB of QPY has a million factors.
        for letter, only in (
            ("x", ~z.any(axis=1)),
            ("z", ~x.any(axis=1)),
            ("y", (x == z).all(axis=1)),
        ):
            for weight in (1, 2):
                if "r" + letter * weight in native:
                    sizes[only & (weights == weight)] = 1
    return [int(size) for size in sizes]


def count_operations(circuit: QuantumCircuit, cap: int | None = None) -> int:
    """`tally_operations(circuit, cap).total`: every operation, definitions unrolled."""
    return tally_operations(circuit, cap).total


def check_operation_count(
    circuit: QuantumCircuit,
    limits: CircuitLimits,
    field: str,
    *,
    native: Collection[str] | None = None,
) -> int:
    """Returns the unrolled operation count; matrix gates that the target with operations
    `native` must synthesise count as their synthesis (see `tally_operations`), so a circuit
    whose synthesis would take seconds is refused before any.

    Raises:
        InvalidArgument: CIRCUIT_TOO_LARGE above limits.max_operations; CIRCUIT_TOO_COMPLEX when
            definitions nest deeper than MAX_DEFINITION_DEPTH or unroll to more than
            limits.max_definition_operations operations; UNKNOWN_GATE for a gate without a
            definition that no backend knows (OpenQASM 2 `opaque`).
    """
    _check_definitions(circuit, field)
    try:
        count = tally_operations(circuit, cap=limits.max_operations, native=native)
    except RecursionError:
        raise invalid("CIRCUIT_TOO_COMPLEX", "gate definitions nest too deeply", field) from None
    # The size of what would run is the better answer, so it is checked first.
    if count.total > limits.max_operations:
        raise _too_many_operations(count.total, limits.max_operations, field)
    if count.in_definitions > limits.max_definition_operations:
        raise _too_many_definition_operations(limits.max_definition_operations, field)
    return count.total


def _too_many_definition_operations(limit: int, field: str) -> InvalidArgument:
    return invalid(
        "CIRCUIT_TOO_COMPLEX",
        f"gate definitions unroll to more than {limit} operations, which is too costly to "
        "compile; define fewer or smaller gates",
        field,
        max_definition_operations=limit,
    )


def check_finite_parameters(circuit: QuantumCircuit, field: str) -> None:
    """NON_FINITE_ANGLE when a numeric gate parameter (or the global phase) is inf or NaN.

    Looks at the circuit, its control-flow blocks and each distinct gate definition once (as
    counted by `tally_operations`). Definitions whose instances differ only in their
    parameters are looked at through one instance, so call this on the transpiled circuit too
    (linear in its size) to see every angle that will run. Symbolic parameters are checked once
    bound (resolve_bindings refuses non-finite values).

    But for definitions that hold an OpenQASM 2 body's gphase (`_BodyPhase`), themselves or in
    a gate they call: transpiling unrolls the phase to nothing, so the transpiled circuit never
    shows its angle, and each of their instances with distinct parameters is looked at here.
    """
    seen: set[tuple[object, ...]] = set()
    # A definition's key -> the keys of the definitions it is used in (who holds a phase).
    users: dict[tuple[object, ...], set[tuple[object, ...]]] = {}
    phased: set[tuple[object, ...]] = set()  # the definitions a _BodyPhase is in
    pending: list[tuple[QuantumCircuit, tuple[object, ...] | None]] = [(circuit, None)]
    while pending:
        body, owner = pending.pop()  # the circuit or a definition (`owner`'s)
        _check_finite_body(body, field)
        for instruction in body.data:
            op = instruction.operation
            if isinstance(op, ControlFlowOp):
                pending.extend((block, owner) for block in op.blocks)
                continue
            if owner is not None and isinstance(op, _BodyPhase):
                phased.add(owner)
            if _is_atomic(op):
                continue
            key = _definition_key(op)
            if owner is not None:
                users.setdefault(key, set()).add(owner)
            if key not in seen:
                seen.add(key)
                definition = getattr(op, "definition", None)
                if definition is not None:
                    pending.append((definition, key))
    if phased:
        _check_each_phased_instance(circuit, _used_in(phased, users), field)


def _check_finite_body(body: QuantumCircuit, field: str) -> None:
    """The global phase of `body` and the parameters of its operations (not of its blocks)."""
    if not _finite(body.global_phase):
        raise _non_finite("the global phase is not finite", field)
    for instruction in body.data:
        op = instruction.operation
        if isinstance(op, ControlFlowOp):
            continue
        for value in op.params:
            if not _finite(value):
                raise _non_finite(f"a parameter of {op.name!r} is not finite", field)


def _used_in(
    keys: Collection[tuple[object, ...]],
    users: Mapping[tuple[object, ...], Collection[tuple[object, ...]]],
) -> set[tuple[object, ...]]:
    """`keys` and the keys of every definition that uses one of them, however deep."""
    found = set(keys)
    stack = list(keys)
    while stack:
        for user in users.get(stack.pop(), ()):
            if user not in found:
                found.add(user)
                stack.append(user)
    return found


def _check_each_phased_instance(
    circuit: QuantumCircuit, phased: Collection[tuple[object, ...]], field: str
) -> None:
    """`check_finite_parameters` for the definition of each instance of a gate in `phased`
    with distinct parameters: the reader binds those into the body's angles, gphase's too.
    Linear in the distinct instances and their definitions' sizes (the transpiler unrolls
    every instance anyway)."""
    seen: set[tuple[object, ...]] = set()
    pending: list[QuantumCircuit] = [circuit]
    while pending:
        body = pending.pop()
        for instruction in body.data:
            op = instruction.operation
            if isinstance(op, ControlFlowOp):
                pending.extend(op.blocks)
                continue
            key = _definition_key(op)
            if key not in phased:
                continue
            instance = (*key, _params_key(op.params))
            if instance in seen:
                continue
            seen.add(instance)
            definition = _definition(op, field)
            if definition is not None:
                _check_finite_body(definition, field)
                pending.append(definition)


def _finite(value: object) -> bool:
    if isinstance(value, ParameterExpression):
        if value.parameters:
            return True
        try:
            value = complex(value)
        except (TypeError, ValueError):
            return True
    if isinstance(value, bool | int | np.integer):
        # An integer angle past the largest double is infinite to every simulator (Qiskit's
        # transpiler panics building its matrix).
        try:
            float(value)
        except OverflowError:
            return False
        return True
    if isinstance(value, float | complex | np.floating | np.complexfloating):
        return cmath.isfinite(complex(value))
    if isinstance(value, np.ndarray) and value.dtype.kind in "fc":
        return bool(np.all(np.isfinite(value)))
    return True


def _check_definitions(circuit: QuantumCircuit, field: str) -> None:
    seen: set[tuple[object, ...]] = set()

    def visit(body: QuantumCircuit, depth: int) -> None:
        if depth > MAX_DEFINITION_DEPTH:
            raise invalid(
                "CIRCUIT_TOO_COMPLEX",
                f"gate definitions are nested deeper than {MAX_DEFINITION_DEPTH}",
                field,
            )
        for instruction in body.data:
            op = instruction.operation
            if isinstance(op, ControlFlowOp):
                for b in op.blocks:
                    visit(b, depth)
                continue
            if _is_atomic(op):
                continue
            key = _definition_key(op)
            if key in seen:
                continue
            seen.add(key)
            definition = _definition(op, field)
            if definition is None:
                raise invalid(
                    "UNKNOWN_GATE",
                    f"gate {op.name!r} has no definition (opaque gates are not supported)",
                    field,
                    gate=op.name,
                )
            visit(definition, depth + 1)

    visit(circuit, 0)


def _definition(op: Operation, field: str) -> QuantumCircuit | None:
    try:
        definition: QuantumCircuit | None = getattr(op, "definition", None)
    except qiskit.qasm2.QASM2ParseError as exc:
        # The QASM 2 reader builds a gate's definition lazily, on first access: a definition
        # that does not fit its use (an opaque gate redeclaring a built-in with other
        # parameters, a division by a call's zero) fails only there.
        raise invalid(
            "INVALID_QASM", f"gate {op.name!r}: {_sdk_message(exc)}", field, gate=op.name
        ) from None
    return definition


def check_qubit_count(circuit: QuantumCircuit, max_qubits: int, field: str) -> None:
    """TOO_MANY_QUBITS when the circuit has more qubits than the backend."""
    if circuit.num_qubits > max_qubits:
        raise _too_many_qubits(circuit.num_qubits, max_qubits, field)


def has_while_loop(circuit: QuantumCircuit) -> bool:
    """Whether a `while` loop is anywhere in the circuit (its blocks included): its
    iterations, and so its run time, are unknown until it runs."""
    pending = [circuit]
    while pending:
        body = pending.pop()
        for instruction in body.data:
            op = instruction.operation
            if isinstance(op, ControlFlowOp):
                if op.name == "while_loop":
                    return True
                pending.extend(op.blocks)
    return False


def count_mid_circuit_measurements(circuit: QuantumCircuit) -> int:
    """Measurements a branching simulator splits its paths at: those something later acts on
    the same qubit after, every one before control flow (which may read its bit: feed-forward),
    and every one inside control flow (each block once). A qubit's last measurement, with
    nothing after it and no control flow, is not counted."""
    count = 0
    later: set[object] = set()  # qubits some later instruction acts on
    branches_later = False  # control flow comes later (it may read any earlier bit)
    for instruction in reversed(circuit.data):
        op = instruction.operation
        if isinstance(op, ControlFlowOp):
            count += _block_measurements(op)
            branches_later = True
        elif op.name == "measure" and (branches_later or instruction.qubits[0] in later):
            count += 1
        if op.name != "barrier":
            later.update(instruction.qubits)
    return count


def _block_measurements(op: ControlFlowOp) -> int:
    """The measurements in a control-flow operation's blocks, nested ones included, each block
    counted once (a loop's iterations are not known here)."""
    count = 0
    pending = list(op.blocks)
    while pending:
        for inner in pending.pop().data:
            if isinstance(inner.operation, ControlFlowOp):
                pending.extend(inner.operation.blocks)
            elif inner.operation.name == "measure":
                count += 1
    return count


# Gates that leave every qubit's computational-basis populations as they were (a qubit whose
# outcome was certain stays so), and gates that map basis states to basis states.
_DIAGONAL = frozenset(
    {"barrier", "delay", "id", "z", "s", "sdg", "t", "tdg", "rz", "p", "u1", "cz", "cp", "crz"}
    | {"ccz", "rzz", "cs", "csdg"}
)
_PERMUTATIONS = frozenset({"x", "y", "cx", "cy", "ccx", "swap", "cswap"})


def count_path_measurements(circuit: QuantumCircuit) -> tuple[int, int]:
    """What a branching simulator (Braket's) does path by path: (measurements, splitting).

    Once a circuit branches (count_mid_circuit_measurements > 0, the caller's to check) Braket
    applies every measurement on every path then active, the ones it deferred before the
    branch point included. `splitting`: those that may split a
    path, because something acted on the measured qubit since its last measurement or reset
    (from |0>, a measurement or a reset, its outcome is certain until a gate other than a
    diagonal one, or a permutation of certain qubits, acts on it). Measurements inside control
    flow are counted once each, as splitting, and leave their block's qubits uncertain.
    """
    measurements = splitting = 0
    certain: set[object] = set(circuit.qubits)  # qubits in a basis state a measurement reads
    for instruction in circuit.data:
        op = instruction.operation
        if isinstance(op, ControlFlowOp):
            inside = _block_measurements(op)
            measurements += inside
            splitting += inside
            certain.difference_update(instruction.qubits)
        elif op.name == "measure":
            measurements += 1
            if instruction.qubits[0] not in certain:
                splitting += 1
            certain.add(instruction.qubits[0])
        elif op.name == "reset":
            certain.update(instruction.qubits)
        elif op.name in _PERMUTATIONS and certain.issuperset(instruction.qubits):
            pass  # a basis state in, a basis state out
        elif op.name not in _DIAGONAL:
            certain.difference_update(instruction.qubits)
    return measurements, splitting


def detect_features(circuit: QuantumCircuit) -> frozenset[CircuitFeature]:
    """Dynamic-circuit features the circuit uses.

    MID_CIRCUIT_MEASUREMENT: an operation other than measure, barrier or delay acts on a qubit
    after it was measured (a reset after a measurement counts). RESET: any reset.
    CONTROL_FLOW: if/else, while, for, switch (and a legacy `condition`, if present).
    """
    features: set[CircuitFeature] = set()

    def walk(body: QuantumCircuit, measured: set[int]) -> set[int]:
        # `measured` holds indices into body.qubits.
        measured = set(measured)
        for instruction in body.data:
            op = instruction.operation
            qubits = [body.find_bit(q).index for q in instruction.qubits]
            if getattr(op, "condition", None) is not None:
                features.add(CircuitFeature.CONTROL_FLOW)
            if isinstance(op, ControlFlowOp):
                if op.name != "box":
                    features.add(CircuitFeature.CONTROL_FLOW)
                for inner in op.blocks:
                    # Block qubit i is the instruction's qubit i.
                    inner_measured = {i for i, q in enumerate(qubits) if q in measured}
                    after = walk(inner, inner_measured)
                    measured |= {qubits[i] for i in after}
                continue
            name = op.name
            if name == "reset":
                features.add(CircuitFeature.RESET)
            if name == "measure":
                measured.update(qubits)
                continue
            if name in _PASSIVE_NAMES:
                continue
            if measured.intersection(qubits):
                features.add(CircuitFeature.MID_CIRCUIT_MEASUREMENT)
        return measured

    walk(circuit, set())
    return frozenset(features)


def writes_clbits(circuit: QuantumCircuit) -> bool:
    """False when nothing in the circuit can change a classical bit (every one reads its
    initial 0 in every shot): no instruction names a clbit (a measurement, a condition) and
    none stores to one. Conservative: a condition only reads, yet counts."""
    return _any_instruction(circuit, lambda i: bool(i.clbits) or i.operation.name == "store")


def has_measurements(circuit: QuantumCircuit) -> bool:
    """True when the circuit measures anywhere, control-flow blocks included."""
    return _any_instruction(circuit, lambda i: i.operation.name == "measure")


def _any_instruction(circuit: QuantumCircuit, found: Callable[[CircuitInstruction], bool]) -> bool:
    """Whether `found` holds for an instruction of the circuit, control-flow blocks included."""
    for instruction in circuit.data:
        if found(instruction):
            return True
        op = instruction.operation
        if isinstance(op, ControlFlowOp) and any(_any_instruction(b, found) for b in op.blocks):
            return True
    return False


def check_features(
    features: Iterable[CircuitFeature],
    supported: Iterable[CircuitFeature],
    field: str,
) -> None:
    """UNSUPPORTED_FEATURE (metadata feature=...) for the first feature not supported."""
    allowed = frozenset(supported)
    for feature in sorted(set(features) - allowed, key=lambda f: f.value):
        raise invalid(
            "UNSUPPORTED_FEATURE",
            f"this backend does not support {feature.value.replace('_', ' ')}",
            field,
            feature=feature.value,
        )


def check_control_flow_supported(
    circuit: QuantumCircuit, supported: Collection[str], field: str
) -> None:
    """UNSUPPORTED_FEATURE for a control-flow construct (e.g. `box`) the backend lacks."""
    for instruction in circuit.data:
        op = instruction.operation
        if not isinstance(op, ControlFlowOp):
            continue
        if op.name not in supported:
            raise invalid(
                "UNSUPPORTED_FEATURE",
                f"this backend does not support the {op.name!r} construct",
                field,
                feature=op.name,
            )
        if isinstance(op, SwitchCaseOp) and isinstance(op.target, expr.Expr):
            # QPY carries `circuit.switch(expr.bit_and(c, 2))`; Aer (0.18) fails such a switch
            # when it runs ("jump condition does not support ..."), EXECUTION_FAILED.
            raise invalid(
                "UNSUPPORTED_FEATURE",
                "a switch on a classical expression is not supported; switch on a bit or a "
                "register",
                field,
                feature="switch_case",
            )
        for block in op.blocks:
            check_control_flow_supported(block, supported, field)


def settle_unreachable_conditions(circuit: QuantumCircuit, field: str) -> QuantumCircuit:
    """`circuit`, its `if`/`while` conditions that compare a register or bit with a value it
    cannot hold (`if (c == 3)` on a one-bit `c`) made a literal false, and casts of integers
    to bool in its expression conditions written `!= 0` (`_without_integer_casts`), in every
    block.

    OpenQASM 2 and 3 compare the register's integer value: never equal, so the branch is never
    taken. Aer compares the value cut to the register's width (3 read as 1) and took it, or
    looped on a `while` forever, where the Braket simulator skipped it: one circuit, two
    results. Qiskit's own expressions refuse such a literal; its (register, value) conditions,
    which both OpenQASM readers produce, do not.

    Raises:
        InvalidArgument: CIRCUIT_TOO_COMPLEX when blocks nest too deeply to walk.
    """
    try:
        settled = _settled(circuit)
    except RecursionError:
        raise _too_deep(field) from None
    return circuit if settled is None else settled


def _settled(circuit: QuantumCircuit) -> QuantumCircuit | None:
    """A settled copy of `circuit`, or None when nothing in it needs settling. A copy, not an
    edit in place: a loop's body read from circuit.data is itself a copy, and Qiskit's own
    bookkeeping of blocks breaks when one is edited (a Rust panic)."""
    replaced: dict[int, CircuitInstruction] = {}
    for index, instruction in enumerate(circuit.data):
        op = instruction.operation
        if not isinstance(op, ControlFlowOp):
            continue
        blocks = list(op.blocks)
        inner = [_settled(block) for block in blocks]
        condition = None
        if isinstance(op, IfElseOp | WhileLoopOp):
            condition = _settled_condition(op.condition)
        if condition is None and all(block is None for block in inner):
            continue
        settled = op.replace_blocks(
            [old if new is None else new for old, new in zip(blocks, inner, strict=True)]
        )
        if condition is not None:
            settled.condition = condition
        replaced[index] = instruction.replace(operation=settled)
    return _with_replaced(circuit, replaced) if replaced else None


def _with_replaced(
    circuit: QuantumCircuit, replaced: Mapping[int, CircuitInstruction]
) -> QuantumCircuit:
    """A copy of `circuit` with the instructions at `replaced`'s indexes replaced. A copy, not
    an edit in place (see `_settled`)."""
    out = circuit.copy_empty_like()
    for index, instruction in enumerate(circuit.data):
        out._append(replaced.get(index, instruction))
    return out


def _settled_condition(condition: object) -> expr.Expr | None:
    """What `condition` becomes (None: it stays as it is)."""
    if _unreachable(condition):
        return expr.lift(False)
    if isinstance(condition, expr.Expr):
        rewritten, changed = _without_integer_casts(condition)
        return rewritten if changed else None
    return None


def _without_integer_casts(node: expr.Expr) -> tuple[expr.Expr, bool]:
    """`node` with every cast of an unsigned integer to bool written `!= 0`, and whether there
    was one. Aer (0.18) evaluates that cast inverted: `if (c && true)`, `expr.logic_not(c)`
    (both cast the register `c`) were taken exactly when they should not be."""
    if isinstance(node, expr.Cast):
        operand, changed = _without_integer_casts(node.operand)
        if node.type.kind is expr_types.Bool and operand.type.kind is expr_types.Uint:
            return expr.not_equal(operand, 0), True
        if changed:
            return expr.Cast(operand, node.type, implicit=node.implicit), True
        return node, False
    if isinstance(node, expr.Unary):
        operand, changed = _without_integer_casts(node.operand)
        return (expr.Unary(node.op, operand, node.type), True) if changed else (node, False)
    if isinstance(node, expr.Binary):
        left, left_changed = _without_integer_casts(node.left)
        right, right_changed = _without_integer_casts(node.right)
        if left_changed or right_changed:
            return expr.Binary(node.op, left, right, node.type), True
        return node, False
    if isinstance(node, expr.Index):
        target, target_changed = _without_integer_casts(node.target)
        index, index_changed = _without_integer_casts(node.index)
        if target_changed or index_changed:
            return expr.Index(target, index, node.type), True
        return node, False
    return node, False


def _unreachable(condition: object) -> bool:
    if not (isinstance(condition, tuple) and len(condition) == 2):
        return False
    target, value = condition
    # A single bit holds 0 or 1 (QPY can say `(clbit, 2)`; the OpenQASM 3 reader refuses it).
    width = len(target) if isinstance(target, ClassicalRegister) else 1
    return isinstance(value, int) and (value < 0 or value >> width != 0)


# Angles past this are brought into (-2pi, 2pi]: ulp(2^20) is 2^-32, so below it the transpiler's
# added constants (rx(t) becomes rz(t + pi) between two sx) keep ~10 significant digits.
_HUGE_ANGLE = float(1 << 20)
# pi to this many bits after the point: x - k*4pi is exact to a double for every finite x (the
# largest k is ~2^1021, so 2^-1200 * k leaves >100 bits past a double's last).
_PI_BITS = 1200


def _arctan_inverse(x: int, one: int) -> int:
    """arctan(1/x) * one, in fixed point (Machin's series)."""
    total = term = one // x
    square, n, sign = x * x, 3, -1
    while term:
        term //= square
        total += sign * (term // n)
        sign, n = -sign, n + 2
    return total


def _four_pi_fixed() -> int:
    """4 pi * 2^_PI_BITS, rounded down (to within a few units)."""
    guard = 64
    one = 1 << (_PI_BITS + guard)
    pi = 16 * _arctan_inverse(5, one) - 4 * _arctan_inverse(239, one)
    return (4 * pi) >> guard


_FOUR_PI_FIXED = _four_pi_fixed()


def _reduced_angle(value: float) -> float:
    """`value` minus the multiple of 4 pi nearest it, computed exactly, then rounded once."""
    numerator, denominator = value.as_integer_ratio()  # denominator: a power of two <= 2^1074
    scaled = (numerator << _PI_BITS) // denominator
    turns = (2 * scaled + _FOUR_PI_FIXED) // (2 * _FOUR_PI_FIXED)
    return (scaled - turns * _FOUR_PI_FIXED) / (1 << _PI_BITS)


def _settable_definition(op: Operation, field: str) -> QuantumCircuit | None:
    """The definition that `op.definition = ...` replaces. For a gate with open controls
    (`negctrl @`), Qiskit conjugates the stored definition with X on every read: what it
    returns, stored back, would be conjugated twice (the controls made closed)."""
    if isinstance(op, ControlledGate) and op.ctrl_state != (1 << op.num_ctrl_qubits) - 1:
        closed = op.to_mutable()
        closed.ctrl_state = None  # all closed
        return _definition(closed, field)
    return _definition(op, field)


def _is_standard_gate(op: Operation | None) -> bool:
    return isinstance(op, Gate) and getattr(op, "_standard_gate", None) is not None


def _constant(param: object) -> float | None:
    """The number an expression of parameters stands for when none is left in it (`0*th`,
    `th - th`: Qiskit keeps them as expressions of `th`), else None."""
    if (
        isinstance(param, ParameterExpression)
        and not param.is_symbol()
        and param.is_real() is True  # None while a symbol is left in it
    ):
        return float(param)
    return None


def _settled_params(params: Sequence[object]) -> list[object] | None:
    """`params` with each constant expression made its number and each finite number past
    2^20 reduced, or None when neither is found."""
    out = list(params)
    changed = False
    for index, param in enumerate(out):
        constant = _constant(param)
        if constant is not None:
            param = out[index] = constant
            changed = True
        if isinstance(param, int | float) and math.isfinite(param) and abs(param) > _HUGE_ANGLE:
            out[index] = _reduced_angle(float(param))
            changed = True
    return out if changed else None


def settle_angles(circuit: QuantumCircuit, field: str) -> QuantumCircuit:
    """`circuit` with its angles settled, at any depth (control-flow blocks and the
    definitions of user gates): an expression of parameters that is constant (`0*th`,
    `th - th`) made its number, in a standard gate's parameters and in a global phase, and every
    number of a standard gate larger than 2^20 in magnitude replaced by the angle in
    (-2pi, 2pi] that differs from it by a multiple of 4pi. Run on the client's circuit and again
    on the transpiled one, whose phases the transpiler computes.

    Constant expressions: Qiskit's transpiler fails on one in a gate from `optimization_level`
    3 (copying the circuit: "Parameter expression with unbound parameters {} is not numeric"),
    and Qiskit cannot hash one whose value is negative (OverflowError), which Aer does to the
    global phase at every run with parameters: valid circuits answered INTERNAL, a client's
    "infinite angle", or an SDK error counted against the backend. A parameter that only such
    expressions used stays the circuit's, as Qiskit's reader keeps an unused input: in a zero
    phase added to the circuit's, which is made non-negative (whole turns) for the hash.

    Huge angles: every parameter of a standard gate enters its matrix as e^{i t/2} or e^{i t}:
    a multiple of 4pi changes nothing, not even the global phase a control would reveal. The
    transpiler's rules add constants to angles (rx(t) becomes rz(t + pi) between two sx on an
    sx/rz basis): added to 1e17 they vanish in rounding, so rx(1e17) ran as rx(1e17 - pi) on the
    noisy Aer and IBM fakes, and <Z> came out +0.886 where every other backend read
    cos(1e17) = -0.886. A parameter bound per run is not reduced (its value is unknown here).

    Raises:
        InvalidArgument: CIRCUIT_TOO_COMPLEX when definitions nest too deeply to rewrite.
    """
    # id -> (the operation, its rewrite): the operation is kept so its id is not reused.
    memo: dict[int, tuple[Operation, Operation]] = {}

    def rewrite_op(op: Operation) -> Operation:
        if isinstance(op, ControlFlowOp):
            return op.replace_blocks([rewrite_body(block) for block in op.blocks])
        # Gates only: a delay's parameter is a duration, not an angle. By class, not name: an
        # open-controlled standard gate is named `crx_o0`.
        if _is_standard_gate(op):
            params = _settled_params(op.params)
            if params is None:
                return op
            new = op.copy()
            new.params = params
            return new
        # Atomic first: reading a UnitaryGate's (or a library gate's) definition synthesises it,
        # which took 7 s of CPU for one 7-qubit unitary, on Aer too (it runs `unitary` as it is).
        if not isinstance(op, Gate) or _is_atomic(op):
            return op
        definition = _settable_definition(op, field)
        if definition is None:
            return op
        key = id(op)
        if key not in memo:
            rewritten = rewrite_body(definition)
            # `ctrl(2) @ rx(t)`, `ctrl @ gphase(t)`: the transpiler may synthesise such a gate
            # from its base gate's angles rather than from its definition.
            base = op.base_gate if isinstance(op, ControlledGate) else None
            params = (
                _settled_params(base.params)
                if base is not None and _is_standard_gate(base)
                else None
            )
            new = op
            if rewritten is not definition or params is not None:
                # Shallow: a deep copy would copy every nested definition only to replace it.
                new = copy.copy(op)
                if base is not None and params is not None:
                    new.base_gate = base.copy()
                    new.params = params  # a controlled gate's are its base gate's
                new.definition = rewritten
            memo[key] = (op, new)
        return memo[key][1]

    def rewrite_body(body: QuantumCircuit) -> QuantumCircuit:
        replaced: dict[int, CircuitInstruction] = {}
        for index, instruction in enumerate(body.data):
            op = rewrite_op(instruction.operation)
            if op is not instruction.operation:
                replaced[index] = instruction.replace(operation=op)
        constant = _constant(body.global_phase)
        if not replaced and constant is None:
            return body
        out = _with_replaced(body, replaced)
        if constant is not None:
            out.global_phase = constant
        # Every parameter the body had stays its own: a circuit's, bound by the client, or a
        # `for` loop's, which Aer binds into the loop's body (an unused one is Qiskit's
        # `0*_loop_i_0` phase), strictly.
        lost = set(body.parameters) - set(out.parameters)
        if lost:
            phase = out.global_phase
            if not isinstance(phase, ParameterExpression):
                phase = float(phase) % (2 * math.pi)
            for parameter in sorted(lost, key=lambda p: p.name):
                phase = phase + 0 * parameter
            out.global_phase = phase
        return out

    try:
        return rewrite_body(circuit)
    except RecursionError:
        raise _too_deep(field) from None


def rename_shadowing_gates(
    circuit: QuantumCircuit, reserved: Collection[str], field: str
) -> QuantumCircuit:
    """The circuit with every user-defined gate named like a standard gate or one of the
    backend's own instructions (`reserved`, e.g. Aer's `unitary`, `kraus`) given a name of its
    own, and every definition that uses one rewritten to match.

    The transpiler matches gates by name: it would run the standard gate (or the library's
    `iswap`, `dcx`, ...) instead of the client's definition, silently, or hand the simulator an
    instruction it fails on. Renamed, the gate is unrolled from its definition like any user
    gate. Refusing instead is not an option: Qiskit's own OpenQASM 2 and 3 writers define every
    gate outside their include file (`gate rzz(...)`, `gate ecr ...`) under its standard name.
    Definitions that need no change are shared, so the work is linear in distinct definitions
    plus the rewritten instances.

    Raises:
        InvalidArgument: CIRCUIT_TOO_COMPLEX when definitions nest too deeply to rewrite.
    """
    names = STANDARD_GATE_NAMES | frozenset(reserved)
    plugins = _synthesis_plugin_names()
    taint: dict[tuple[object, ...], bool] = {}

    def shadows(op: Operation) -> bool:
        # The transpiler's high-level synthesis also picks a plugin by name: a user gate named
        # `IntComp` reached the integer comparator's, which failed on it (INTERNAL).
        return op.name in names or (isinstance(op, Gate) and op.name in plugins)

    def body_tainted(body: QuantumCircuit | None) -> bool:
        if body is None:
            return False
        for instruction in body.data:
            op = instruction.operation
            if isinstance(op, ControlFlowOp):
                if any(body_tainted(block) for block in op.blocks):
                    return True
            elif not _is_atomic(op) and op_tainted(op):
                return True
        return False

    def op_tainted(op: Operation) -> bool:
        key = _definition_key(op)
        if key not in taint:
            taint[key] = False  # gate definitions cannot recurse; this only guards the walk
            taint[key] = (
                shadows(op) or body_tainted(getattr(op, "definition", None)) or base_tainted(op)
            )
        return taint[key]

    def base_tainted(op: Operation) -> bool:
        # `ctrl @ h` on a user gate `h`: Qiskit controls the base gate by its name, so the
        # controlled gate's definition holds a standard CH, whatever the user's `h` does.
        base = getattr(op, "base_gate", None) if isinstance(op, ControlledGate) else None
        return base is not None and not _is_atomic(base) and op_tainted(base)

    def fresh(name: str) -> str:
        candidate = f"{name}_def"
        while candidate in names or candidate in plugins:
            candidate += "_"
        return candidate

    def rewrite_op(op: Operation) -> Operation:
        if isinstance(op, ControlledGate) and base_tainted(op):
            # Controlled again from the renamed base: synthesised from its definition.
            base = rewrite_op(op.base_gate)
            return base.control(op.num_ctrl_qubits, ctrl_state=op.ctrl_state)
        new = op.copy(name=fresh(op.name) if shadows(op) else None)
        definition = _settable_definition(op, field)
        if definition is not None:
            new.definition = rewrite_body(definition)
        return new

    def rewrite_body(body: QuantumCircuit) -> QuantumCircuit:
        if not body_tainted(body):
            return body
        out = body.copy_empty_like()
        for instruction in body.data:
            op = instruction.operation
            if isinstance(op, ControlFlowOp):
                op = op.replace_blocks([rewrite_body(block) for block in op.blocks])
            elif not _is_atomic(op) and op_tainted(op):
                op = rewrite_op(op)
            out._append(instruction.replace(operation=op))
        return out

    try:
        return rewrite_body(circuit)
    except RecursionError:
        raise _too_deep(field) from None


@functools.cache
def _synthesis_plugin_names() -> frozenset[str]:
    """The operation names the transpiler's high-level synthesis looks plugins up by (`qft`,
    `mcx`, `IntComp`, ... and those of installed plugin packages)."""
    from qiskit.transpiler.passes.synthesis.plugin import HighLevelSynthesisPluginManager

    return frozenset(
        name.split(".")[0] for name in HighLevelSynthesisPluginManager().plugins.names()
    )


def has_bits_outside_registers(circuit: QuantumCircuit) -> bool:
    """True when a classical bit belongs to no register (e.g. OpenQASM 3 `bit c;`)."""
    return any(not circuit.find_bit(bit).registers for bit in circuit.clbits)


# --------------------------------------------------------------------------------------------
# Parameters, observables, shapes.
# --------------------------------------------------------------------------------------------


# The values of a PUB with no parameters and no sweep, shared (read-only).
_NO_VALUES: FloatArray = np.zeros((0,), dtype=np.float64)
_NO_VALUES.flags.writeable = False


def resolve_bindings(
    bindings: Bindings, circuit_parameters: Sequence[str], field: str
) -> FloatArray:
    """Checks parameter values and returns them as (*shape, len(circuit_parameters)).

    Columns come out in `circuit_parameters` order (Qiskit's order); empty
    `bindings.parameters` means the values are already in that order.

    Raises:
        InvalidArgument: UNKNOWN_PARAMETERS, UNBOUND_PARAMETERS, INVALID_PARAMETER_VALUES or
            INVALID_SHAPE.
    """
    shape = tuple(int(d) for d in bindings.shape)
    if any(d < 1 for d in shape):
        raise invalid(
            "INVALID_SHAPE",
            f"every dimension of the sweep shape must be >= 1, got {shape}",
            field,
            shape=shape,
        )
    if not bindings.parameters and np.size(bindings.values) == 0:
        if not circuit_parameters:
            # The common case: nothing to bind (a cache-hit prepare should cost microseconds).
            return _NO_VALUES if not shape else np.zeros((*shape, 0), dtype=np.float64)
        raise invalid(
            "UNBOUND_PARAMETERS",
            _clip(f"no values for circuit parameters {', '.join(map(repr, circuit_parameters))}"),
            field,
            parameters=",".join(circuit_parameters),
        )
    known = set(circuit_parameters)
    if bindings.parameters:
        names = tuple(_as_declared(name, known) for name in bindings.parameters)
    else:
        names = tuple(circuit_parameters)
    if len(set(names)) != len(names):
        # The API refuses repeated columns, so two columns met here at one input: a vector
        # element (`x[1]`) read as the input qasm3.dumps would declare for it (`_x_1_`) that
        # the circuit declares for a parameter of that name. Say which, not just "unique".
        target = next(name for name, n in Counter(names).items() if n > 1)
        given = bindings.parameters or names
        columns = [g for g, name in zip(given, names, strict=True) if name == target]
        raise invalid(
            "INVALID_PARAMETER_VALUES",
            _clip(
                f"parameter names must be unique: {' and '.join(map(repr, columns))} both name "
                f"the circuit's input {target!r}"
            ),
            field,
        )
    unknown = [name for name in names if name not in known]
    if unknown:
        raise invalid(
            "UNKNOWN_PARAMETERS",
            _clip(f"the circuit has no parameters named {', '.join(map(repr, unknown))}"),
            field,
            parameters=",".join(unknown),
        )
    unbound = [name for name in circuit_parameters if name not in set(names)]
    if unbound:
        raise invalid(
            "UNBOUND_PARAMETERS",
            _clip(f"no values for circuit parameters {', '.join(map(repr, unbound))}"),
            field,
            parameters=",".join(unbound),
        )
    try:
        values = np.asarray(bindings.values, dtype=np.float64)
    except (TypeError, ValueError):
        raise invalid(
            "INVALID_PARAMETER_VALUES", "parameter values must be real numbers", field
        ) from None
    size = math.prod(shape)
    expected = size * len(names)
    if values.size != expected:
        raise invalid(
            "INVALID_PARAMETER_VALUES",
            f"expected {expected} values (shape {shape} x {len(names)} parameters), got "
            f"{values.size}",
            field,
            expected=expected,
            actual=values.size,
        )
    if not np.all(np.isfinite(values)):
        raise invalid("INVALID_PARAMETER_VALUES", "parameter values must be finite", field)
    table = values.reshape((*shape, len(names)))
    order = [names.index(name) for name in circuit_parameters]
    result: FloatArray = np.ascontiguousarray(table[..., order], dtype=np.float64)
    return result


# A ParameterVector's element as Qiskit names it (`θ[10]`), which `qasm3.dumps` declares as
# the input `_θ_10_`.
_VECTOR_ELEMENT = re.compile(r"(.+)\[(\d+)\]")


def _as_declared(name: str, known: Collection[str]) -> str:
    """A client's column name as the circuit declares it: a vector element named as in the
    circuit it wrote (`θ[10]`, what `ParameterVector` names it) is the input `qasm3.dumps`
    declared for it (`_θ_10_`), when the circuit has that one and not the name itself. By
    position, those inputs come in name order (`_θ_10_` before `_θ_2_`), as `qasm3.loads`
    gives them: naming them by the original circuit's parameters is how a client binds a
    dumped ansatz in its own order."""
    if name in known:
        return name
    element = _VECTOR_ELEMENT.fullmatch(name)
    if element is not None:
        declared = f"_{element[1]}_{element[2]}_"
        if declared in known:
            return declared
    return name


_PAULI_RE = re.compile(r"[IXYZ]*")


def validate_observables(
    observables: Sequence[Observable],
    observables_shape: Sequence[int],
    num_qubits: int,
    field: str,
) -> tuple[int, ...]:
    """Checks estimator observables and returns their shape.

    `observables_shape` is the array's shape (the API edge has resolved an empty one): () for
    a single observable, as Qiskit reads one. Character 0 of a dense Pauli string acts on the
    highest-index qubit; a sparse term's pauli[i] acts on its qubits[i] (distinct qubits of
    the circuit). Work is linear in the terms' own lengths, each bounded by the circuit's
    width.

    Raises:
        InvalidArgument: INVALID_OBSERVABLE.
    """
    if not observables:
        raise invalid("INVALID_OBSERVABLE", "at least one observable is required", field)
    shape = tuple(int(d) for d in observables_shape)
    if any(d < 1 for d in shape) or math.prod(shape) != len(observables):
        raise invalid(
            "INVALID_OBSERVABLE",
            f"observables_shape {shape} does not hold {len(observables)} observables",
            field,
            observables_shape=shape,
        )
    if num_qubits < 1:
        raise invalid("INVALID_OBSERVABLE", "the circuit has no qubits to observe", field)
    for index, observable in enumerate(observables):
        where = f"observable {index}"
        if not observable.terms:
            raise invalid("INVALID_OBSERVABLE", f"{where} has no terms", field, index=index)
        # Bounds the expectation value: finite coefficients whose magnitudes sum past the
        # largest float (two terms at 1e308) made every simulator's answer overflow.
        magnitude = 0.0
        for term_index, term in enumerate(observable.terms):
            pauli, coefficient = term.pauli, term.coefficient
            magnitude += abs(coefficient)
            if term.qubits is not None:
                _check_sparse_term(
                    term.qubits,
                    len(pauli),
                    num_qubits,
                    f"{where}, term {term_index}",
                    f"{field}[{index}].terms[{term_index}].qubits",
                    index,
                    term_index,
                )
            elif len(pauli) != num_qubits:
                raise invalid(
                    "INVALID_OBSERVABLE",
                    f"{where}: Pauli string of length {len(pauli)} on a {num_qubits}-qubit circuit",
                    field,
                    index=index,
                )
            if _PAULI_RE.fullmatch(pauli) is None:
                raise invalid(
                    "INVALID_OBSERVABLE",
                    f"{where}: Pauli strings may only contain I, X, Y and Z",
                    field,
                    index=index,
                )
            if not math.isfinite(coefficient):
                raise invalid(
                    "INVALID_OBSERVABLE",
                    f"{where}: coefficients must be finite",
                    field,
                    index=index,
                )
        if not math.isfinite(magnitude):
            raise invalid(
                "INVALID_OBSERVABLE",
                f"{where}: the magnitudes of its coefficients sum past the largest float; "
                "scale the observable down",
                field,
                index=index,
            )
    return shape


def _check_sparse_term(
    qubits: Sequence[int],
    num_paulis: int,
    num_qubits: int,
    where: str,
    field: str,
    index: int,
    term_index: int,
) -> None:
    """A sparse term names one distinct qubit of the circuit per Pauli character (linear in the
    term's length, never in the circuit's width)."""

    def refuse(description: str) -> InvalidArgument:
        return invalid(
            "INVALID_OBSERVABLE", f"{where}: {description}", field, index=index, term=term_index
        )

    if len(qubits) != num_paulis:
        raise refuse(f"{num_paulis} Paulis for {len(qubits)} qubits; give one qubit per Pauli")
    if len(qubits) > num_qubits:
        # Distinct qubits of the circuit cannot be more than it has: refused before any loop.
        raise refuse(f"{len(qubits)} qubits listed on a {num_qubits}-qubit circuit")
    for qubit in qubits:
        if not 0 <= qubit < num_qubits:
            raise refuse(f"qubit {qubit} is not a qubit of the {num_qubits}-qubit circuit")
    if len(set(qubits)) != len(qubits):
        raise refuse("a qubit is listed twice; list each qubit once")


def broadcast_pub_shape(
    observables_shape: Sequence[int], bindings_shape: Sequence[int], field: str
) -> tuple[int, ...]:
    """The estimator PUB's shape: numpy broadcasting of the two shapes (INVALID_SHAPE)."""
    try:
        return tuple(
            int(d) for d in np.broadcast_shapes(tuple(observables_shape), tuple(bindings_shape))
        )
    except ValueError:
        raise invalid(
            "INVALID_SHAPE",
            f"observables shape {tuple(observables_shape)} does not broadcast with parameter "
            f"shape {tuple(bindings_shape)}",
            field,
            observables_shape=tuple(observables_shape),
            parameter_shape=tuple(bindings_shape),
        ) from None


# --------------------------------------------------------------------------------------------
# Result size and memory estimates.
# --------------------------------------------------------------------------------------------


def statevector_bytes(num_qubits: int) -> int:
    """A state vector of complex128 amplitudes."""
    return 16 * (1 << num_qubits)


def density_matrix_bytes(num_qubits: int) -> int:
    """A density matrix of complex128 entries."""
    return 16 * (1 << (2 * num_qubits))


def _cut_rank_log2(op: Operation, positions: Sequence[int], cut: int) -> int:
    """log2 of an upper bound on op's operator-Schmidt rank across the cut after `cut`."""
    left = sum(1 for p in positions if p <= cut)
    right = len(positions) - left
    if left == 0 or right == 0:
        return 0
    if isinstance(op, ControlledGate) and op.base_gate.num_qubits == 1:
        # C^k(U) = I - P_1..1 (x) (I - U): two product terms across any cut.
        return 1
    if op.name in _RANK2_NAMES:
        return 1
    return 2 * min(left, right)


def mps_bond_dimensions(
    circuit: QuantumCircuit, max_bond_dimension: int | None = None
) -> tuple[int, ...]:
    """Upper bounds on the bond dimension at each of the n-1 cuts of a matrix product state.

    For the cut between qubits i and i+1: min(2^min(i+1, n-i-1), product over the gates whose
    qubits lie on both sides of their operator-Schmidt rank, max_bond_dimension). Ranks: 2 for
    controlled single-qubit gates and rxx/ryy/rzz/rzx/ecr, 4^min(a, b) otherwise (a, b = the
    gate's qubits on each side). For-loops multiply by their iteration count; a while-loop
    that entangles across a cut leaves only the structural bound there.

    The bound is on the Schmidt rank of the state in the circuit's qubit order; count gates on a
    circuit already transpiled to the simulator's basis.
    """
    n = circuit.num_qubits
    if n < 2:
        return ()
    caps = [min(i + 1, n - i - 1) for i in range(n - 1)]
    growth = [0] * (n - 1)

    def add(cut: int, amount: int) -> None:
        growth[cut] = min(growth[cut] + amount, caps[cut])

    def walk(body: QuantumCircuit, where: Sequence[int], repeat: int) -> None:
        for instruction in body.data:
            op = instruction.operation
            positions = [where[body.find_bit(q).index] for q in instruction.qubits]
            if isinstance(op, ControlFlowOp):
                if isinstance(op, ForLoopOp):
                    times = repeat * max(_iterations(op.params[0]), 1)
                elif isinstance(op, WhileLoopOp):
                    times = n  # unbounded: saturates every cut it touches
                else:
                    times = repeat
                for inner in op.blocks:
                    # Every branch may run: bounding by all of them is sound.
                    walk(inner, positions, times)
                continue
            if len(positions) < 2 or op.name in _PASSIVE_NAMES:
                continue
            for cut in range(min(positions), max(positions)):
                rank = _cut_rank_log2(op, positions, cut)
                if rank:
                    add(cut, min(rank * repeat, caps[cut]))

    walk(circuit, list(range(n)), 1)
    dims = []
    for cut in range(n - 1):
        chi = 1 << min(growth[cut], caps[cut])
        if max_bond_dimension is not None:
            chi = min(chi, max_bond_dimension)
        dims.append(chi)
    return tuple(dims)


def mps_bytes(circuit: QuantumCircuit, max_bond_dimension: int | None = None) -> int:
    """Upper estimate of matrix-product-state memory for a transpiled circuit.

    Site tensors take 2 * 16 * chi_{i-1} * chi_i bytes; applying a two-qubit gate merges two
    sites into a (2 chi_{i-1}) x (2 chi_{i+1}) matrix that the SVD holds about four times.
    """
    n = circuit.num_qubits
    dims = (1, *mps_bond_dimensions(circuit, max_bond_dimension), 1)
    tensors = sum(2 * 16 * dims[i] * dims[i + 1] for i in range(n))
    merge = max((4 * 16 * 4 * dims[i] * dims[i + 2] for i in range(n - 1)), default=0)
    return MPS_OVERHEAD_BYTES + tensors + merge


def check_memory(estimate: int, budget: int, method: str, field: str) -> None:
    """MEMORY_BUDGET_EXCEEDED when the estimate exceeds the backend's budget."""
    if estimate > budget:
        raise invalid(
            "MEMORY_BUDGET_EXCEEDED",
            f"simulating this circuit with {method} needs about {_human_bytes(estimate)}; the "
            f"backend's budget is {_human_bytes(budget)}",
            field,
            estimate_bytes=estimate,
            budget_bytes=budget,
            method=method,
        )


def _human_bytes(value: int) -> str:
    units = ["B", "KiB", "MiB", "GiB", "TiB", "PiB", "EiB"]
    amount = float(value)
    for unit in units:
        if amount < 1024 or unit == units[-1]:
            return f"{amount:.0f} {unit}" if unit == "B" else f"{amount:.1f} {unit}"
        amount /= 1024
    return f"{value} B"  # pragma: no cover
