"""Circuit front end shared by every Qiskit-based adapter.

Turns client source text into a `QuantumCircuit` under size, include and time limits, and
validates everything about a PUB that can be checked without running it: operation count,
dynamic features, parameter bindings, observables, shots, precision, result size and memory.

Every client-caused problem raises `gateway.domain.errors.InvalidArgument` with a specific reason
and a `FieldViolation` naming the offending request field. SDK exceptions are caught only
around the SDK calls that parse client text; anything else propagates, because it is a bug.

This module imports qiskit at the top; adapters import it lazily.
"""

from __future__ import annotations

import dataclasses
import math
import re
import threading
from collections.abc import Callable, Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

import numpy as np
import qiskit.qasm2
import qiskit_qasm3_import
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
from openqasm3.parser import QASM3ParsingError, QASMNodeVisitor
from qiskit.circuit import (
    Barrier,
    ControlFlowOp,
    ControlledGate,
    Delay,
    ForLoopOp,
    Measure,
    Operation,
    QuantumCircuit,
    Reset,
    WhileLoopOp,
)
from qiskit.circuit.exceptions import CircuitError
from qiskit.circuit.library import UnitaryGate, get_standard_gate_name_mapping
from qiskit_qasm3_import import ConversionError

from gateway.backends.base import CircuitLimits
from gateway.domain.circuits import (
    Bindings,
    CircuitFeature,
    CircuitLanguage,
    CircuitSource,
    FloatArray,
    Observable,
)
from gateway.domain.errors import FieldViolation, InvalidArgument

__all__ = [
    "ALLOWED_INCLUDES",
    "MAX_DEFINITION_DEPTH",
    "MPS_OVERHEAD_BYTES",
    "QASM3_MAX_CONVERSION_WORK",
    "STANDARD_GATE_NAMES",
    "CircuitAnalysis",
    "analyze_circuit",
    "bits_outside_registers_error",
    "broadcast_pub_shape",
    "check_clbits_in_registers",
    "check_control_flow_supported",
    "check_features",
    "check_memory",
    "check_operation_count",
    "check_precision",
    "check_qubit_count",
    "check_result_size",
    "check_sampler_has_clbits",
    "count_operations",
    "density_matrix_bytes",
    "detect_features",
    "estimator_result_bytes",
    "has_bits_outside_registers",
    "has_measurements",
    "invalid",
    "mps_bond_dimensions",
    "mps_bytes",
    "parse_circuit",
    "resolve_bindings",
    "resolve_shots",
    "sampler_result_bytes",
    "statevector_bytes",
    "validate_observables",
]

ALLOWED_INCLUDES: Mapping[CircuitLanguage, frozenset[str]] = {
    CircuitLanguage.QASM3: frozenset({"stdgates.inc"}),
    CircuitLanguage.QASM2: frozenset({"qelib1.inc"}),
}

# The qasm3 importer deep-copies a gate's whole definition tree at every application (about
# 50 us per copied operation here), so its work is bounded before conversion starts.
QASM3_MAX_CONVERSION_WORK = 100_000
# Deeper nesting of gate definitions than this makes the SDK recurse past Python's limit.
MAX_DEFINITION_DEPTH = 64
# `pow` makes the qasm3 importer build the gate's full unitary matrix: 4^k entries.
_MAX_POW_QUBITS = 4
# Controlling a user gate re-synthesises every operation of its definition.
_CTRL_WORK_FACTOR = 16
# Aer's MPS bookkeeping beyond the tensors themselves.
MPS_OVERHEAD_BYTES = 1 << 20
_MAX_MESSAGE_CHARS = 300

_STANDARD_GATES = get_standard_gate_name_mapping()
STANDARD_GATE_NAMES: frozenset[str] = frozenset(_STANDARD_GATES)
_ATOMIC_TYPES = (Measure, Reset, Barrier, Delay, UnitaryGate)
# Two-qubit gates of operator-Schmidt rank 2 that are not ControlledGate subclasses.
_RANK2_NAMES = frozenset({"rzz", "rxx", "ryy", "rzx", "ecr"})
_PASSIVE_NAMES = frozenset({"barrier", "delay"})


def invalid(reason: str, message: str, field: str, **metadata: object) -> InvalidArgument:
    """Builds an InvalidArgument carrying one FieldViolation for `field`."""
    return InvalidArgument(
        reason,
        message,
        metadata={key: str(value) for key, value in metadata.items()},
        field_violations=(FieldViolation(field=field, description=message),),
    )


def _clip(message: str) -> str:
    message = " ".join(message.split())
    if len(message) > _MAX_MESSAGE_CHARS:
        return message[: _MAX_MESSAGE_CHARS - 3] + "..."
    return message


# --------------------------------------------------------------------------------------------
# Lexical pre-scan: includes and declared sizes, before any parser sees the text.
# --------------------------------------------------------------------------------------------


@dataclass
class _Scan:
    includes: list[tuple[int, int, str | None]] = dataclasses.field(default_factory=list)
    qubits: int = 0
    clbits: int = 0
    max_physical_qubit: int = -1
    nonliteral_size_at: tuple[int, int] | None = None


# What each lexer skips. Strings come first so that comment markers inside them stay text, as
# in the real lexers; OpenQASM 2 has only `//` comments, OpenQASM 3 also `/* */`, and its pragma
# and annotation lines are raw text to the end of the line.
_SKIP_QASM2 = re.compile(r"""(?P<str>"[^"\n]*"?|'[^'\n]*'?)|(?P<skip>//[^\n]*)""")
_SKIP_QASM3 = re.compile(
    r"""(?P<str>"[^"\n]*"?|'[^'\n]*'?)"""
    r"|(?P<skip>//[^\n]*|/\*.*?(?:\*/|\Z)|\#?\bpragma\b[^\n]*|@[^\n]*)",
    re.DOTALL,
)
_INCLUDE = re.compile(r"""\binclude\b\s*(?:"([^"\n]*)"|'([^'\n]*)')?""")
_QASM3_DECL = re.compile(r"\b(qubit|bit)\b\s*(?:\[\s*([^\]\n]*?)\s*\])?")
_REG_DECL = re.compile(r"\b(qreg|creg)\b\s*[^\W\d]\w*\s*\[\s*([^\]\n]*?)\s*\]")
_PHYSICAL = re.compile(r"\$(\d+)")


def _blank(match: re.Match[str]) -> str:
    if match.lastgroup == "str":
        return match[0]
    # Same length, same line breaks: positions in the blanked text match the source.
    return re.sub(r"[^\n]", " ", match[0])


def _parse_int(text: str) -> int | None:
    text = text.replace("_", "")
    lowered = text.lower()
    try:
        if lowered.startswith(("0x", "0o", "0b")):
            return int(lowered, 0)
        return int(text, 10)
    except ValueError:
        return None


def _scan(text: str, language: CircuitLanguage) -> _Scan:
    """Finds includes and declared register sizes without parsing.

    Comments are blanked exactly where the language's lexer would skip them, so no code the
    parser would read can hide from this scan; a match inside a string literal only makes the
    scan stricter.
    """
    qasm3 = language is CircuitLanguage.QASM3
    code = (_SKIP_QASM3 if qasm3 else _SKIP_QASM2).sub(_blank, text)
    scan = _Scan()

    def where(pos: int) -> tuple[int, int]:
        line_start = code.rfind("\n", 0, pos) + 1
        return code.count("\n", 0, pos) + 1, pos - line_start

    for m in _INCLUDE.finditer(code):
        name = m[1] if m[1] is not None else m[2]
        scan.includes.append((*where(m.start()), name))

    def add(kind: str, size_text: str | None, pos: int) -> None:
        size = 1 if size_text is None else _parse_int(size_text)
        if size is None:
            scan.nonliteral_size_at = scan.nonliteral_size_at or where(pos)
        elif kind in ("qubit", "qreg"):
            scan.qubits += size
        else:
            scan.clbits += size

    for m in _REG_DECL.finditer(code):
        add(m[1], m[2], m.start())
    if qasm3:
        for m in _QASM3_DECL.finditer(code):
            add(m[1], m[2], m.start())
        for m in _PHYSICAL.finditer(code):
            scan.max_physical_qubit = max(scan.max_physical_qubit, int(m[1]))
    return scan


# --------------------------------------------------------------------------------------------
# Parsing under a wall-clock limit.
# --------------------------------------------------------------------------------------------


class _Cancelled(Exception):
    """Raised inside an abandoned parse so it stops consuming CPU."""


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


class _CancellableLexer(qasm3Lexer):  # type: ignore[misc]
    def __init__(self, stream: Any, cancel: threading.Event) -> None:
        super().__init__(stream)
        self._cancel = cancel

    def nextToken(self) -> Any:  # ANTLR names this method
        if self._cancel.is_set():
            raise _Cancelled
        return super().nextToken()


_T = TypeVar("_T")


def _run_with_deadline(work: Callable[[threading.Event], _T], timeout_s: float, field: str) -> _T:
    """Runs `work` in a daemon thread and gives up after `timeout_s` (CIRCUIT_TOO_COMPLEX).

    Threads cannot be killed, so `work` receives an event that is set on timeout and should
    poll it where it can.
    """
    cancel = threading.Event()
    box: dict[str, Any] = {}

    def target() -> None:
        try:
            box["value"] = work(cancel)
        except BaseException as exc:  # re-raised in the calling thread
            box["error"] = exc

    thread = threading.Thread(target=target, name="qgateway-parse", daemon=True)
    thread.start()
    thread.join(timeout_s)
    if thread.is_alive():
        cancel.set()
        raise invalid(
            "CIRCUIT_TOO_COMPLEX",
            f"parsing the circuit took longer than {timeout_s:g} s",
            field,
            parse_timeout_s=timeout_s,
        )
    if "error" in box:
        error: BaseException = box["error"]
        raise error
    value: _T = box["value"]
    return value


def _loads_qasm2(text: str, field: str) -> QuantumCircuit:
    try:
        # include_path=() keeps the parser off the file system: only the built-in qelib1.inc
        # can be found.
        circuit: QuantumCircuit = qiskit.qasm2.loads(text, include_path=())
    except qiskit.qasm2.QASM2ParseError as exc:
        raise _map_qasm2_error(text, _sdk_message(exc), field) from None
    except (CircuitError, IndexError, KeyError, TypeError, ValueError, ArithmeticError) as exc:
        raise _importer_rejected(exc, "OpenQASM 2", field) from None
    return circuit


_QASM2_POS = re.compile(r"<input>:(\d+),(\d+):\s*")
_QASM2_UNDEFINED = re.compile(r"<input>:(\d+),(\d+): '([^']+)' is not defined in this scope")


def _map_qasm2_error(text: str, message: str, field: str) -> InvalidArgument:
    undefined = _QASM2_UNDEFINED.search(message)
    if undefined is not None:
        line, col, name = int(undefined[1]), int(undefined[2]), undefined[3]
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
    if isinstance(exc, IndexError):
        detail = "an index is out of range"
    else:
        detail = _sdk_message(exc) or type(exc).__name__
    return invalid("INVALID_QASM", _clip(f"{language} program rejected: {detail}"), field)


def _parse_qasm3_ast(text: str, cancel: threading.Event, field: str) -> q3ast.Program:
    lexer = _CancellableLexer(InputStream(text), cancel)
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
    try:
        program: q3ast.Program = QASMNodeVisitor().visitProgram(tree)  # type: ignore[no-untyped-call]
    except QASM3ParsingError as exc:
        raise invalid("INVALID_QASM", _clip(f"OpenQASM 3 program rejected: {exc}"), field) from None
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


_QASM3_UNDEFINED_GATE = re.compile(r"^(\d+),(\d+): gate '([^']+)' is not defined")


def _convert_qasm3(program: q3ast.Program, field: str) -> QuantumCircuit:
    try:
        circuit: QuantumCircuit = qiskit_qasm3_import.convert(program)
    except ConversionError as exc:
        message = _sdk_message(exc)
        undefined = _QASM3_UNDEFINED_GATE.match(message)
        if undefined is not None:
            return_error = invalid(
                "UNKNOWN_GATE",
                f"line {undefined[1]}, column {undefined[2]}: gate {undefined[3]!r} is not defined",
                field,
                gate=undefined[3],
            )
            raise return_error from None
        raise invalid(
            "INVALID_QASM", _clip(f"OpenQASM 3 program rejected: {message}"), field
        ) from None
    except (CircuitError, IndexError, KeyError, TypeError, ValueError, ArithmeticError) as exc:
        raise _importer_rejected(exc, "OpenQASM 3", field) from None
    return circuit


def parse_circuit(
    source: CircuitSource,
    limits: CircuitLimits,
    field: str,
    *,
    max_qubits: int | None = None,
) -> QuantumCircuit:
    """Parses client source into a circuit, enforcing size, include and time limits.

    Args:
        source: The client's circuit text.
        limits: Source size, operation count and parse time limits.
        field: Request field to name in errors, e.g. "spec.pubs[0].sampler.circuit.qasm3".
        max_qubits: Refuse (TOO_MANY_QUBITS) before parsing when the program declares more.

    Raises:
        InvalidArgument: CIRCUIT_TOO_LARGE, INCLUDE_NOT_ALLOWED, INVALID_QASM, UNKNOWN_GATE,
            CIRCUIT_TOO_COMPLEX or TOO_MANY_QUBITS.
    """
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
    if not text.strip():
        raise invalid("INVALID_QASM", "the circuit source is empty", field)
    scan = _scan(text, source.language)
    allowed = ALLOWED_INCLUDES[source.language]
    for line, col, name in scan.includes:
        if name not in allowed:
            # Never echo the path: the message must not help probe the server's files.
            raise invalid(
                "INCLUDE_NOT_ALLOWED",
                f"line {line}, column {col}: only include {_quoted(allowed)} is allowed",
                field,
                allowed=",".join(sorted(allowed)),
            )
    if scan.nonliteral_size_at is not None:
        line, col = scan.nonliteral_size_at
        raise invalid(
            "INVALID_QASM",
            f"line {line}, column {col}: register sizes must be integer literals",
            field,
        )
    declared_qubits = scan.qubits + scan.max_physical_qubit + 1
    if max_qubits is not None and declared_qubits > max_qubits:
        raise _too_many_qubits(declared_qubits, max_qubits, field)
    if declared_qubits + scan.clbits > limits.max_operations:
        raise invalid(
            "CIRCUIT_TOO_LARGE",
            f"the program declares {declared_qubits + scan.clbits} bits; the limit is "
            f"{limits.max_operations}",
            field,
            max_operations=limits.max_operations,
        )

    if source.language is CircuitLanguage.QASM2:
        circuit = _run_with_deadline(
            lambda _cancel: _loads_qasm2(text, field), limits.parse_timeout_s, field
        )
    else:

        def work(cancel: threading.Event) -> QuantumCircuit:
            try:
                program = _parse_qasm3_ast(text, cancel, field)
                _check_qasm3_program(program, limits, field)
                return _convert_qasm3(program, field)
            except RecursionError:
                raise invalid(
                    "CIRCUIT_TOO_COMPLEX", "the program is nested too deeply", field
                ) from None

        circuit = _run_with_deadline(work, limits.parse_timeout_s, field)

    if max_qubits is not None:
        check_qubit_count(circuit, max_qubits, field)
    check_operation_count(circuit, limits, field)
    return circuit


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
# OpenQASM 3 AST checks, before the importer materialises gate definitions.
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
            return len(range(start, end + (1 if step > 0 else -1), step))
    return 1  # unknown here; the converted circuit is counted exactly afterwards


def _children(node: object) -> Iterable[q3ast.QASMNode]:
    if not dataclasses.is_dataclass(node):
        return
    for f in dataclasses.fields(node):
        if f.name in ("span", "annotations"):
            continue
        value = getattr(node, f.name)
        if isinstance(value, q3ast.QASMNode):
            yield value
        elif isinstance(value, list):
            for item in value:
                if isinstance(item, q3ast.QASMNode):
                    yield item
                elif isinstance(item, list):
                    yield from (x for x in item if isinstance(x, q3ast.QASMNode))


@dataclass
class _Qasm3Cost:
    limits: CircuitLimits
    field: str
    registers: dict[str, int] = dataclasses.field(default_factory=dict)
    gates: dict[str, tuple[int, int]] = dataclasses.field(default_factory=dict)  # size, depth
    work: int = 0

    def _operand_width(self, operand: object) -> int:
        if isinstance(operand, q3ast.Identifier):
            return self.registers.get(operand.name, 1)
        if isinstance(operand, q3ast.IndexedIdentifier):
            for index in operand.indices:
                if isinstance(index, list) and any(
                    isinstance(x, q3ast.RangeDefinition) for x in index
                ):
                    return self.registers.get(operand.name.name, 1)
        return 1

    def _application(self, node: q3ast.QuantumGate | q3ast.QuantumPhase) -> tuple[int, int, int]:
        """Returns (executed operations, conversion work, definition depth) of a gate call."""
        name = node.name.name if isinstance(node, q3ast.QuantumGate) else "gphase"
        size, depth = self.gates.get(name, (1, 0))
        user_gate = name in self.gates
        work = size
        num_qubits = len(node.qubits)
        for modifier in node.modifiers:
            if modifier.modifier is q3ast.GateModifierName.pow and num_qubits > _MAX_POW_QUBITS:
                raise self._error(
                    "CIRCUIT_TOO_COMPLEX",
                    node,
                    f"'pow' is limited to gates on at most {_MAX_POW_QUBITS} qubits",
                )
            if modifier.modifier in (q3ast.GateModifierName.ctrl, q3ast.GateModifierName.negctrl):
                controls = 1 if modifier.argument is None else _literal_int(modifier.argument)
                if controls is not None and not 0 < controls < max(num_qubits, 1):
                    raise self._error("INVALID_QASM", node, "more controls than qubit operands")
                if user_gate:
                    work *= _CTRL_WORK_FACTOR
        width = max((self._operand_width(q) for q in node.qubits), default=1)
        return size * width, work * width, depth

    def _error(self, reason: str, node: q3ast.QASMNode, message: str) -> InvalidArgument:
        span = node.span
        where = f"line {span.start_line}, column {span.start_column}: " if span else ""
        return invalid(reason, where + message, self.field)

    def block(self, nodes: Iterable[q3ast.QASMNode]) -> tuple[int, int, int]:
        """Returns (executed operations, conversion work, depth) of statements."""
        ops = work = depth = 0
        for node in nodes:
            if isinstance(node, q3ast.QuantumGate | q3ast.QuantumPhase):
                o, w, d = self._application(node)
            elif isinstance(node, q3ast.ForInLoop):
                o, w, d = self.block(node.block)
                o *= _loop_iterations(node)  # the importer does not unroll loops: work once
            elif isinstance(node, q3ast.Expression):
                continue  # expressions hold no gate calls
            else:
                o, w, d = self.block(_children(node))
            ops += o
            work += w
            depth = max(depth, d)
        return ops, work, depth

    def program(self, program: q3ast.Program) -> None:
        ops = 0
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
                body_ops, body_work, depth = self.block(statement.body)
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
                o, w, _ = self.block([statement])
                ops += o
                self.work += w
        # The size of what would run is the better answer, so it is checked first.
        if ops > self.limits.max_operations:
            raise _too_many_operations(ops, self.limits.max_operations, self.field)
        budget = min(self.limits.max_operations, QASM3_MAX_CONVERSION_WORK)
        if self.work > budget:
            raise invalid(
                "CIRCUIT_TOO_COMPLEX",
                "the program's gate definitions expand to too many operations to import",
                self.field,
                max_conversion_work=budget,
            )


def _check_qasm3_program(program: q3ast.Program, limits: CircuitLimits, field: str) -> None:
    _Qasm3Cost(limits=limits, field=field).program(program)


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
    # Library gates (mcx from `ctrl(n) @ x`, ...) are synthesised by the transpiler, not
    # written by the client: one operation each.
    return type(op).__module__.startswith("qiskit.circuit.library")


def _definition_key(op: Operation) -> tuple[object, ...]:
    # Gate names are unique within one program; the class separates e.g. a user gate "cg"
    # from the controlled version of a user gate "g".
    key: tuple[object, ...] = (type(op), op.name, op.num_qubits, op.num_clbits)
    if isinstance(op, ControlledGate):
        key += (op.num_ctrl_qubits, op.ctrl_state)
    return key


def count_operations(circuit: QuantumCircuit, cap: int | None = None) -> int:
    """Counts operations as if every gate definition were unrolled, without unrolling.

    Each distinct gate definition is counted once (memoised), so exponentially nested
    definitions cost linear time. For-loops count their body once per iteration, while-loops
    once, if/else and switch the largest branch. Counting stops early above `cap`.

    Raises:
        RecursionError: if definitions nest deeper than Python's recursion limit (parse_circuit
            refuses those first).
    """
    memo: dict[tuple[object, ...], int] = {}
    limit = cap if cap is not None else math.inf

    def block(body: QuantumCircuit) -> int:
        total = 0
        for instruction in body.data:
            total += operation(instruction.operation)
            if total > limit:
                break
        return total

    def operation(op: Operation) -> int:
        if isinstance(op, ControlFlowOp):
            blocks = [block(b) for b in op.blocks]
            if isinstance(op, ForLoopOp):
                return 1 + len(op.params[0]) * blocks[0]
            if isinstance(op, WhileLoopOp):
                return 1 + blocks[0]
            return 1 + max(blocks, default=0)
        if _is_atomic(op):
            return 1
        key = _definition_key(op)
        cached = memo.get(key)
        if cached is not None:
            return cached
        definition = getattr(op, "definition", None)
        count = 1 if definition is None else max(block(definition), 1)
        memo[key] = count
        return count

    return block(circuit)


def check_operation_count(circuit: QuantumCircuit, limits: CircuitLimits, field: str) -> int:
    """Returns the unrolled operation count; CIRCUIT_TOO_LARGE above limits.max_operations.

    Also refuses gates without a definition that no backend knows (OpenQASM 2 `opaque`):
    UNKNOWN_GATE.
    """
    _check_definitions(circuit, field)
    try:
        count = count_operations(circuit, cap=limits.max_operations)
    except RecursionError:
        raise invalid("CIRCUIT_TOO_COMPLEX", "gate definitions nest too deeply", field) from None
    if count > limits.max_operations:
        raise _too_many_operations(count, limits.max_operations, field)
    return count


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
            definition = getattr(op, "definition", None)
            if definition is None:
                raise invalid(
                    "UNKNOWN_GATE",
                    f"gate {op.name!r} has no definition (opaque gates are not supported)",
                    field,
                    gate=op.name,
                )
            visit(definition, depth + 1)

    visit(circuit, 0)


def check_qubit_count(circuit: QuantumCircuit, max_qubits: int, field: str) -> None:
    """TOO_MANY_QUBITS when the circuit has more qubits than the backend."""
    if circuit.num_qubits > max_qubits:
        raise _too_many_qubits(circuit.num_qubits, max_qubits, field)


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


def has_measurements(circuit: QuantumCircuit) -> bool:
    """True when the circuit measures anywhere, control-flow blocks included."""
    for instruction in circuit.data:
        op = instruction.operation
        if op.name == "measure":
            return True
        if isinstance(op, ControlFlowOp) and any(has_measurements(b) for b in op.blocks):
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
        for block in op.blocks:
            check_control_flow_supported(block, supported, field)


def has_bits_outside_registers(circuit: QuantumCircuit) -> bool:
    """True when a classical bit belongs to no register (e.g. OpenQASM 3 `bit c;`)."""
    return any(not circuit.find_bit(bit).registers for bit in circuit.clbits)


def bits_outside_registers_error(field: str) -> InvalidArgument:
    """The UNSUPPORTED_FEATURE error for classical bits outside every register."""
    return invalid(
        "UNSUPPORTED_FEATURE",
        "classical bits outside a register are not supported (results are reported per "
        "register); declare a register, e.g. `bit[1] c;` instead of `bit c;`",
        field,
        feature="bits_outside_registers",
    )


def check_clbits_in_registers(circuit: QuantumCircuit, field: str) -> None:
    """Refuses classical bits outside every register, which results could not report."""
    if has_bits_outside_registers(circuit):
        raise bits_outside_registers_error(field)


def check_sampler_has_clbits(circuit: QuantumCircuit, field: str) -> None:
    """NO_MEASUREMENTS when a sampler circuit has no classical bits at all."""
    if circuit.num_clbits == 0:
        raise invalid(
            "NO_MEASUREMENTS",
            "the circuit has no classical bits, so a sampler has nothing to return",
            field,
        )


@dataclass(frozen=True)
class CircuitAnalysis:
    """What the gateway needs to know about a parsed circuit."""

    num_qubits: int
    num_clbits: int
    operations: int
    features: frozenset[CircuitFeature]
    has_measurements: bool
    parameters: tuple[str, ...]


def analyze_circuit(circuit: QuantumCircuit, limits: CircuitLimits, field: str) -> CircuitAnalysis:
    """Counts operations (refusing above the limit) and detects features."""
    return CircuitAnalysis(
        num_qubits=circuit.num_qubits,
        num_clbits=circuit.num_clbits,
        operations=check_operation_count(circuit, limits, field),
        features=detect_features(circuit),
        has_measurements=has_measurements(circuit),
        parameters=tuple(p.name for p in circuit.parameters),
    )


# --------------------------------------------------------------------------------------------
# Parameters, observables, shapes.
# --------------------------------------------------------------------------------------------


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
            return np.zeros((*shape, 0), dtype=np.float64)
        raise invalid(
            "UNBOUND_PARAMETERS",
            _clip(f"no values for circuit parameters {', '.join(map(repr, circuit_parameters))}"),
            field,
            parameters=",".join(circuit_parameters),
        )
    names = tuple(bindings.parameters) if bindings.parameters else tuple(circuit_parameters)
    if len(set(names)) != len(names):
        raise invalid("INVALID_PARAMETER_VALUES", "parameter names must be unique", field)
    known = set(circuit_parameters)
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


_PAULI_RE = re.compile(r"[IXYZ]*")


def validate_observables(
    observables: Sequence[Observable],
    observables_shape: Sequence[int],
    num_qubits: int,
    field: str,
) -> tuple[int, ...]:
    """Checks estimator observables and returns their shape.

    An empty `observables_shape` means one dimension of length len(observables), as the API
    documents. Character 0 of a Pauli string acts on the highest-index qubit.

    Raises:
        InvalidArgument: INVALID_OBSERVABLE.
    """
    if not observables:
        raise invalid("INVALID_OBSERVABLE", "at least one observable is required", field)
    shape = tuple(int(d) for d in observables_shape) or (len(observables),)
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
        for pauli, coefficient in observable.terms:
            if len(pauli) != num_qubits:
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
    return shape


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
        ) from None


def resolve_shots(shots: int | None, default: int, max_shots: int, field: str) -> int:
    """The PUB's shots (its own, else `default`), within 1..max_shots (INVALID_SHOTS)."""
    value = default if shots is None else shots
    if not 1 <= value <= max_shots:
        raise invalid(
            "INVALID_SHOTS",
            f"shots must be between 1 and {max_shots}, got {value}",
            field,
            max_shots=max_shots,
        )
    return value


def check_precision(precision: float, field: str) -> float:
    """Precision must be finite and >= 0 (INVALID_PRECISION)."""
    if not (math.isfinite(precision) and precision >= 0.0):
        raise invalid(
            "INVALID_PRECISION", f"precision must be finite and >= 0, got {precision!r}", field
        )
    return float(precision)


# --------------------------------------------------------------------------------------------
# Result size and memory estimates.
# --------------------------------------------------------------------------------------------

# A counts entry: the key's characters plus a varint count and map-entry framing.
_COUNTS_ENTRY_OVERHEAD = 8


def sampler_result_bytes(
    register_widths: Sequence[int], bindings: int, shots: int, counts_only: bool
) -> int:
    """Upper estimate of a sampler PUB's result: packed samples plus counts."""
    samples = 0 if counts_only else bindings * shots * sum((w + 7) // 8 for w in register_widths)
    counts = bindings * sum(
        min(shots, 1 << min(w, 62)) * (w + _COUNTS_ENTRY_OVERHEAD) for w in register_widths
    )
    return samples + counts


def estimator_result_bytes(shape: Sequence[int]) -> int:
    """An estimator PUB's result: two doubles per entry."""
    return 16 * math.prod(shape)


def check_result_size(estimate: int, max_result_bytes: int, field: str) -> None:
    """RESULT_TOO_LARGE when the estimate exceeds the backend's limit."""
    if estimate > max_result_bytes:
        raise invalid(
            "RESULT_TOO_LARGE",
            f"the result would be about {estimate} bytes; the limit is {max_result_bytes} "
            "(use fewer shots or bindings, or counts_only)",
            field,
            estimate_bytes=estimate,
            max_result_bytes=max_result_bytes,
        )


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
                    times = repeat * max(len(op.params[0]), 1)
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
