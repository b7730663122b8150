"""Qiskit circuits as the OpenQASM 3 programs Braket's local simulators run.

Written here from the circuit's instructions rather than by `qiskit.qasm3.dumps`: Braket knows
its own gate names (`cnot`, `phaseshift`, `v`, `U`, ...), not Qiskit's, and a program of them
interprets ~25% faster than dumps' output behind a prelude of gate definitions (a GHZ-5: 5.5 ms
against 7.4 ms), and without the interpreter's "advanced language features" warning on every run.

What Braket imposes on a program (FIELD-NOTES, "Local simulators of other SDKs"):
- one reportable classical register: every clbit of the circuit is `c[j]`, j its index;
- a measurement's column in the result is its register element's rank among the measured
  elements (`BraketProgram.columns` says which clbit each column holds);
- qubits nothing touches are dropped and the rest renumbered, so a program asking for the whole
  state puts an identity on each untouched qubit (results that name their qubits are renumbered
  back by Braket itself);
- parameters arrive as `input float` values; every gate angle that is not a number becomes one
  input (`a0`, `a1`, ...) whose value the gateway computes per binding, so Qiskit names
  (`v[0]`, `θ`) never reach Braket and Braket never evaluates an expression;
- noise is a `#pragma braket noise ...` line, and pragmas must be at the top level of the
  program: a noisy program has no if/else.

This module imports no Braket code: the compile side may translate a circuit to refuse it early.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Literal

import numpy as np
from qiskit.circuit import (
    Barrier,
    ClassicalRegister,
    Clbit,
    ControlFlowOp,
    Delay,
    Gate,
    IfElseOp,
    Instruction,
    Measure,
    Parameter,
    ParameterExpression,
    QuantumCircuit,
    Reset,
)
from qiskit.circuit.classical import expr, types
from qiskit.circuit.exceptions import CircuitError

from gateway.backends.braket.gates import NATIVE, SPECIAL
from gateway.domain.circuits import FloatArray
from gateway.domain.errors import ExecutionError
from gateway.domain.failures import FailureKind

__all__ = [
    "INPUT_PREFIX",
    "BraketNoise",
    "BraketProgram",
    "UnsupportedCircuit",
    "expectations_program",
    "needs_branching",
    "probabilities_program",
    "shots_program",
]

StateResult = Literal["state_vector", "density_matrix"]

# Input `a{k}` holds angle k: not a name any Qiskit parameter, register or Braket gate takes here.
INPUT_PREFIX = "a"


class UnsupportedCircuit(ValueError):
    """A circuit (or a circuit with noise) these programs cannot express for Braket."""


@dataclass(frozen=True)
class BraketNoise:
    """Noise that braket_dm applies, written into the program as Braket's own channels.

    With Braket's channel definitions, for a state rho:
    - depolarizing(p): (1-p) rho + p/3 (X rho X + Y rho Y + Z rho Z), after every 1-qubit gate;
    - two_qubit_depolarizing(p): (1-p) rho + p/15 (the sum of P rho P over the 15 two-qubit
      Paulis other than II), after every 2-qubit gate;
    - bit_flip(p): (1-p) rho + p X rho X, on each measured qubit just before it is read.
    Gates on 3 or more qubits get no noise. All probabilities are in [0, 1).
    """

    depolarizing_1q: float = 0.0
    depolarizing_2q: float = 0.0
    readout_flip: float = 0.0

    def __post_init__(self) -> None:
        for name in ("depolarizing_1q", "depolarizing_2q", "readout_flip"):
            value = getattr(self, name)
            if not (isinstance(value, int | float) and 0.0 <= value < 1.0):
                raise ValueError(f"{name} must be a probability in [0, 1), got {value!r}")

    @property
    def is_noiseless(self) -> bool:
        return not (self.depolarizing_1q or self.depolarizing_2q or self.readout_flip)


@dataclass(frozen=True, eq=False)
class BraketProgram:
    """An OpenQASM 3 program for Braket, and how to feed and read it.

    Attributes:
        source: The program text.
        angles: Input `a{k}` holds angles[k]: a Parameter or a ParameterExpression of the
            circuit, evaluated per binding by `input_values`.
        columns: For a shots program, the clbit each column of Braket's measurements holds.
        num_qubits: The circuit's width (Braket's results cover exactly these qubits).
        table_qubits: For a probabilities program, the qubits of Braket's table, most
            significant first: those some instruction touches, ascending (Braket simulates no
            other qubit).
    """

    source: str
    angles: tuple[ParameterExpression, ...]
    columns: tuple[int, ...]
    num_qubits: int
    table_qubits: tuple[int, ...] = ()

    @property
    def input_names(self) -> tuple[str, ...]:
        return tuple(f"{INPUT_PREFIX}{k}" for k in range(len(self.angles)))

    def input_values(self, parameters: Sequence[str], values: FloatArray) -> FloatArray:
        """(bindings, len(angles)): each input's value per binding.

        Args:
            parameters: The names of `values`' columns (the circuit's may be fewer).
            values: (bindings, len(parameters)).

        Raises:
            ValueError: An angle needs a parameter `parameters` does not name.
        """
        bindings = values.shape[0]
        out = np.empty((bindings, len(self.angles)), dtype=np.float64)
        column = {name: i for i, name in enumerate(parameters)}

        def column_of(parameter: Parameter) -> int:
            try:
                return column[parameter.name]
            except KeyError:
                raise ValueError(f"no value for parameter {parameter.name!r}") from None

        expressions: list[tuple[int, ParameterExpression]] = []
        used: dict[Parameter, int] = {}
        for k, angle in enumerate(self.angles):
            if isinstance(angle, Parameter):
                out[:, k] = values[:, column_of(angle)]
            else:
                expressions.append((k, angle))
                for parameter in angle.parameters:
                    used[parameter] = column_of(parameter)
        for b in range(bindings if expressions else 0):
            binding = {parameter: float(values[b, i]) for parameter, i in used.items()}
            for k, expression in expressions:
                out[b, k] = _real(expression.bind_all(binding))
        return out


def probabilities_program(
    body: QuantumCircuit, qubits: Sequence[int], noise: BraketNoise | None
) -> BraketProgram:
    """`body` (gates only), then Braket's exact probabilities of every qubit it simulates
    (`table_qubits`), which the caller marginalises to `qubits`: given targets, Braket permutes
    its table through 2^k Python tuples (20 qubits: ~440 MiB and seconds per binding). Readout
    flips act on `qubits` before they are read."""
    writer = _Writer(body.num_qubits, noise)
    writer.gates(body)
    if writer.noise is not None and writer.noise.readout_flip:
        for qubit in qubits:
            writer.line(
                f"#pragma braket noise bit_flip({_number(writer.noise.readout_flip)}) q[{qubit}]"
            )
            writer.touched.add(qubit)
    writer.line("#pragma braket result probability")
    return replace(writer.program(), table_qubits=tuple(sorted(writer.touched)))


def expectations_program(
    circuit: QuantumCircuit, noise: BraketNoise | None, state: StateResult
) -> BraketProgram:
    """`circuit` (gates only), then its whole final state (`state_vector` or `density_matrix`,
    Braket's order: qubit 0 is an index's highest bit), from which expectation values are
    computed. Readout flips do not apply: nothing is read."""
    writer = _Writer(circuit.num_qubits, noise)
    writer.gates(circuit)
    # Untouched qubits would be dropped from the state.
    for qubit in range(circuit.num_qubits):
        if qubit not in writer.touched:
            writer.line(f"i q[{qubit}];")
    writer.line(f"#pragma braket result {state}")
    return writer.program()


def shots_program(circuit: QuantumCircuit, noise: BraketNoise | None) -> BraketProgram:
    """The whole circuit, measurements, resets and if/else included, run shot by shot.

    Raises:
        UnsupportedCircuit: An instruction (or condition) Braket cannot run, or noise on a
            circuit Braket would branch (see needs_branching).
    """
    has_control_flow = any(isinstance(i.operation, ControlFlowOp) for i in circuit.data)
    if noise is not None and needs_branching(circuit):
        # Braket's branched simulation adds noise after the first branch point to a circuit
        # no path runs: it would be silently dropped.
        raise UnsupportedCircuit(
            "braket_dm with noise cannot run mid-circuit measurement or if/else"
        )
    writer = _Writer(circuit.num_qubits, noise)
    if has_control_flow and circuit.num_qubits:
        # A register element Braket never sees measured is no column of its result, and a
        # condition on one fails; a measurement inside an untaken branch is such an element.
        # Measuring the untouched |0> of qubit 0 into every clbit first makes each a column
        # that reads 0 until the circuit writes it (Qiskit's initial value) and disturbs
        # nothing: with control flow Braket branches, recording these outcomes per path.
        for clbit in range(circuit.num_clbits):
            writer.line(f"c[{clbit}] = measure q[0];")
    writer.block(circuit, list(range(circuit.num_qubits)), list(range(circuit.num_clbits)), 0)
    columns = range(circuit.num_clbits) if has_control_flow else sorted(writer.measured)
    return writer.program(clbits=circuit.num_clbits, columns=tuple(columns))


def needs_branching(circuit: QuantumCircuit) -> bool:
    """Whether Braket simulates `circuit` path by path: it has control flow, or a qubit is used
    again after it was measured (a mid-circuit measurement)."""
    measured: set[int] = set()
    for instruction in circuit.data:
        operation = instruction.operation
        if isinstance(operation, ControlFlowOp):
            return True
        if isinstance(operation, Barrier | Delay):
            continue
        qubits = {circuit.find_bit(q).index for q in instruction.qubits}
        if measured & qubits:
            return True
        if isinstance(operation, Measure):
            measured |= qubits
    return False


# ---------------------------------------------------------------------------------- writing


class _Writer:
    def __init__(self, num_qubits: int, noise: BraketNoise | None) -> None:
        self.num_qubits = num_qubits
        self.noise = noise if noise is not None and not noise.is_noiseless else None
        self.lines: list[str] = []
        self.touched: set[int] = set()
        self.measured: set[int] = set()
        self._angles: list[ParameterExpression] = []
        self._angle_index: dict[tuple[bool, str], int] = {}
        # The whole program (`block` at depth 0), whose registers name a block's bits in a
        # refusal: a block knows only the registers its conditions read.
        self._program: QuantumCircuit | None = None

    def line(self, text: str, depth: int = 0) -> None:
        self.lines.append("  " * depth + text)

    def program(self, *, clbits: int = 0, columns: tuple[int, ...] = ()) -> BraketProgram:
        header = ["OPENQASM 3.0;"]
        header += [f"input float {INPUT_PREFIX}{k};" for k in range(len(self._angles))]
        header.append(f"qubit[{self.num_qubits}] q;")
        if clbits:
            header.append(f"bit[{clbits}] c;")
        source = "\n".join(header + self.lines) + "\n"
        return BraketProgram(source, tuple(self._angles), columns, self.num_qubits)

    # ------------------------------------------------------------------ angles

    def angle(self, value: object) -> str:
        if isinstance(value, ParameterExpression):
            if not value.parameters:
                return _number(_real(value.numeric()))
            key = (isinstance(value, Parameter), str(value))
            index = self._angle_index.get(key)
            if index is None:
                index = self._angle_index[key] = len(self._angles)
                self._angles.append(value)
            return f"{INPUT_PREFIX}{index}"
        if isinstance(value, int | float | np.integer | np.floating):
            return _number(float(value))
        raise UnsupportedCircuit(f"a gate parameter Braket cannot take: {value!r}")

    # ------------------------------------------------------------------ instructions

    def gates(self, circuit: QuantumCircuit) -> None:
        """Write a circuit of gates (barriers and delays are no-ops in a simulation)."""
        for instruction in circuit.data:
            operation = instruction.operation
            if isinstance(operation, Barrier | Delay):
                continue
            if not isinstance(operation, Gate):
                raise UnsupportedCircuit(
                    f"'{operation.name}' cannot be part of an exact-result circuit"
                )
            self.gate(operation, [circuit.find_bit(q).index for q in instruction.qubits], 0)

    def block(
        self, circuit: QuantumCircuit, qubit_map: list[int], clbit_map: list[int], depth: int
    ) -> None:
        """Write every instruction of `circuit` (a body's bits mapped to the program's)."""
        if depth == 0:
            self._program = circuit
        for instruction in circuit.data:
            operation = instruction.operation
            qubits = [qubit_map[circuit.find_bit(q).index] for q in instruction.qubits]
            clbits = [clbit_map[circuit.find_bit(c).index] for c in instruction.clbits]
            if isinstance(operation, Barrier | Delay):
                continue
            if isinstance(operation, Measure):
                if self.noise is not None and self.noise.readout_flip:
                    flip = _number(self.noise.readout_flip)
                    self.line(f"#pragma braket noise bit_flip({flip}) q[{qubits[0]}]", depth)
                self.line(f"c[{clbits[0]}] = measure q[{qubits[0]}];", depth)
                self.measured.add(clbits[0])
                self.touched.add(qubits[0])
            elif isinstance(operation, Reset):
                self.line(f"reset q[{qubits[0]}];", depth)
                self.touched.add(qubits[0])
            elif isinstance(operation, IfElseOp):
                self._if_else(operation, circuit, qubits, clbits, clbit_map, depth)
            elif isinstance(operation, Gate):
                self.gate(operation, qubits, depth)
            else:
                raise UnsupportedCircuit(f"Braket's simulators cannot run '{operation.name}'")

    def _if_else(
        self,
        operation: IfElseOp,
        circuit: QuantumCircuit,
        qubits: list[int],
        clbits: list[int],
        clbit_map: list[int],
        depth: int,
    ) -> None:
        program = self._program if self._program is not None else circuit
        condition = _Condition(circuit, clbit_map, program).write(operation.condition)
        true_body, *rest = operation.blocks  # no else: one block
        false_body = rest[0] if rest else None
        self.line(f"if ({condition}) {{", depth)
        self.block(true_body, qubits, clbits, depth + 1)
        if false_body is not None and false_body.data:
            self.line("} else {", depth)
            self.block(false_body, qubits, clbits, depth + 1)
        self.line("}", depth)

    def gate(self, operation: Instruction, qubits: list[int], depth: int) -> None:
        """One Qiskit gate, then its noise (after the whole gate, whatever it is written as)."""
        name = operation.name
        native = NATIVE.get(name)
        if native is not None:
            self._call(native, [self.angle(p) for p in operation.params], qubits, depth)
        elif name in SPECIAL:
            self._special(name, [self.angle(p) for p in operation.params], qubits, depth)
        elif name == "global_phase":
            pass  # unobservable: nothing here controls a gate
        else:
            self._definition(operation, qubits, depth)
        noise = self.noise
        if noise is None:
            return
        targets = ", ".join(f"q[{q}]" for q in qubits)
        if len(qubits) == 1 and noise.depolarizing_1q:
            p = _number(noise.depolarizing_1q)
            self.line(f"#pragma braket noise depolarizing({p}) {targets}", depth)
            self.touched.update(qubits)
        elif len(qubits) == 2 and noise.depolarizing_2q:
            p = _number(noise.depolarizing_2q)
            self.line(f"#pragma braket noise two_qubit_depolarizing({p}) {targets}", depth)
            self.touched.update(qubits)

    def _call(self, name: str, params: Sequence[str], qubits: Sequence[int], depth: int) -> None:
        arguments = f"({', '.join(params)})" if params else ""
        targets = ", ".join(f"q[{q}]" for q in qubits)
        self.line(f"{name}{arguments} {targets};", depth)
        # Only qubits an instruction names are simulated (a gate whose definition leaves one
        # of its qubits alone does not touch it), and Braket's tables cover exactly those.
        self.touched.update(qubits)

    def _special(self, name: str, params: list[str], qubits: list[int], depth: int) -> None:
        if name == "u2":  # U2(phi, lam) = U(pi/2, phi, lam)
            self._call("U", ["pi/2", *params], qubits, depth)
        elif name == "cs":
            self._call("cphaseshift", ["pi/2"], qubits, depth)
        elif name == "csdg":
            self._call("cphaseshift", ["-pi/2"], qubits, depth)
        elif name == "dcx":
            self._call("cnot", [], qubits, depth)
            self._call("cnot", [], qubits[::-1], depth)
        elif name == "rzx":  # exp(-i theta/2 Z(a) X(b)): ZZ seen through H on b
            self._call("h", [], qubits[1:], depth)
            self._call("zz", params, qubits, depth)
            self._call("h", [], qubits[1:], depth)

    def _definition(self, operation: Instruction, qubits: list[int], depth: int) -> None:
        """A gate of gates.DEFINED (or any other gate Qiskit defines) as its definition."""
        definition = operation.definition
        if not isinstance(operation, Gate) or definition is None:
            raise UnsupportedCircuit(f"Braket's simulators cannot run '{operation.name}'")
        saved, self.noise = self.noise, None  # noise follows the whole gate
        try:
            for instruction in definition.data:
                inner = instruction.operation
                if isinstance(inner, Barrier | Delay):
                    continue
                if not isinstance(inner, Gate):
                    raise UnsupportedCircuit(f"'{operation.name}' is defined with '{inner.name}'")
                mapped = [qubits[definition.find_bit(q).index] for q in instruction.qubits]
                self.gate(inner, mapped, depth)
        finally:
            self.noise = saved


# Qiskit's classical operators as OpenQASM 3 writes them.
_BINARY_SYMBOLS = {
    "BIT_AND": "&",
    "BIT_OR": "|",
    "BIT_XOR": "^",
    "LOGIC_AND": "&&",
    "LOGIC_OR": "||",
    "EQUAL": "==",
    "NOT_EQUAL": "!=",
    "LESS": "<",
    "LESS_EQUAL": "<=",
    "GREATER": ">",
    "GREATER_EQUAL": ">=",
    "SHIFT_LEFT": "<<",
    "SHIFT_RIGHT": ">>",
    "ADD": "+",
    "SUB": "-",
    "MUL": "*",
    "DIV": "/",
}
_UNARY_SYMBOLS = {"BIT_NOT": "~", "LOGIC_NOT": "!", "NEGATE": "-"}


class _Condition:
    """An if/else condition in the Braket interpreter's terms: single bits compared with 0 or
    1 (it rejects `!` or `||` on a bare bit) joined by `&&`, `||` and `!`."""

    def __init__(
        self, circuit: QuantumCircuit, clbit_map: list[int], program: QuantumCircuit | None = None
    ) -> None:
        self._circuit = circuit
        self._clbit_map = clbit_map
        # Names bits and registers in a refusal: inside a block, a slice's register (`None_0`)
        # is the only one its bits belong to; the program's declare them.
        self._program = program if program is not None else circuit

    def write(self, condition: object) -> str:
        if isinstance(condition, tuple) and len(condition) == 2:
            target, value = condition
            if isinstance(target, Clbit):
                return self._bit_is(target, int(bool(value)))
            if isinstance(target, ClassicalRegister):
                return self._register_is(target, int(value))
        if isinstance(condition, expr.Expr):
            return self._expr(condition)
        raise UnsupportedCircuit("Braket cannot branch on this condition")

    def _bit(self, bit: Clbit) -> int:
        return self._clbit_map[int(self._circuit.find_bit(bit).index)]

    def _bit_is(self, bit: Clbit, value: int) -> str:
        return f"c[{self._bit(bit)}] == {value}"

    def _register_is(self, register: ClassicalRegister, value: int) -> str:
        if value < 0 or value >> len(register):
            return "false"
        tests = [self._bit_is(bit, (value >> i) & 1) for i, bit in enumerate(register)]
        return " && ".join(tests) or "true"

    def _expr(self, node: expr.Expr) -> str:
        if isinstance(node, expr.Value) and node.type.kind is types.Bool:
            return "true" if node.value else "false"
        if isinstance(node, expr.Var) and isinstance(node.var, Clbit):
            return self._bit_is(node.var, 1)
        if (
            isinstance(node, expr.Cast)
            and node.type.kind is types.Bool
            and node.operand.type.kind is types.Bool
        ):
            return self._expr(node.operand)
        if (
            isinstance(node, expr.Unary)
            and node.type.kind is types.Bool
            and node.op in (expr.Unary.Op.LOGIC_NOT, expr.Unary.Op.BIT_NOT)
        ):
            return f"!({self._expr(node.operand)})"
        if isinstance(node, expr.Binary):
            return self._binary(node)
        raise UnsupportedCircuit(f"Braket cannot branch on {self._written(node)}")

    def _binary(self, node: expr.Binary) -> str:
        op, left, right = node.op, node.left, node.right
        both_bool = left.type.kind is types.Bool and right.type.kind is types.Bool
        if both_bool and op in (expr.Binary.Op.LOGIC_AND, expr.Binary.Op.BIT_AND):
            return f"({self._expr(left)}) && ({self._expr(right)})"
        if both_bool and op in (expr.Binary.Op.LOGIC_OR, expr.Binary.Op.BIT_OR):
            return f"({self._expr(left)}) || ({self._expr(right)})"
        if op in (expr.Binary.Op.EQUAL, expr.Binary.Op.NOT_EQUAL):
            equal = self._equal(left, right)
            return equal if op is expr.Binary.Op.EQUAL else f"!({equal})"
        raise UnsupportedCircuit(f"Braket cannot branch on {self._written(node)}")

    def _equal(self, left: expr.Expr, right: expr.Expr) -> str:
        if isinstance(left, expr.Value) and not isinstance(right, expr.Value):
            left, right = right, left
        if isinstance(right, expr.Value):
            if isinstance(left, expr.Var) and isinstance(left.var, ClassicalRegister):
                return self._register_is(left.var, int(right.value))
            if left.type.kind is types.Bool:
                test = self._expr(left)
                return test if right.value else f"!({test})"
        if left.type.kind is types.Bool and right.type.kind is types.Bool:
            a, b = self._expr(left), self._expr(right)
            return f"(({a}) && ({b})) || (!({a}) && !({b}))"
        raise UnsupportedCircuit(
            f"Braket cannot compare {self._written(left)} with {self._written(right)}"
        )

    def _written(self, node: expr.Expr, outer: bool = True) -> str:
        """A condition as the client wrote it (`c > 1`, `(c & 1) == 1`), for a refusal: Qiskit's
        repr of one (`Binary(Binary.<Op.GREATER: 10>, Var(ClassicalRegister(2, 'c'), ...`)
        names its own classes, not the program's registers and operators."""
        if isinstance(node, expr.Var):
            if isinstance(node.var, Clbit):
                return self._bit_written(node.var)
            if isinstance(node.var, ClassicalRegister):
                return self._register_written(node.var)
            return str(getattr(node.var, "name", "a variable"))
        if isinstance(node, expr.Value):
            value = node.value
            return ("true" if value else "false") if isinstance(value, bool) else str(value)
        if isinstance(node, expr.Cast):
            return self._written(node.operand, outer)
        if isinstance(node, expr.Unary):
            return f"{_UNARY_SYMBOLS.get(node.op.name, '?')}{self._written(node.operand, False)}"
        if isinstance(node, expr.Index):
            return f"{self._written(node.target, False)}[{self._written(node.index)}]"
        if isinstance(node, expr.Binary):
            symbol = _BINARY_SYMBOLS.get(node.op.name, node.op.name.lower())
            text = f"{self._written(node.left, False)} {symbol} {self._written(node.right, False)}"
            return text if outer else f"({text})"
        return "an expression"

    def _bit_written(self, bit: Clbit) -> str:
        try:
            registers = self._program.find_bit(bit).registers
        except CircuitError:  # a bit the program does not know: Braket's own name
            registers = []
        if registers:
            register, index = registers[0]
            return f"{register.name}[{index}]"
        return f"c[{self._bit(bit)}]"

    def _register_written(self, register: ClassicalRegister) -> str:
        # A slice in a condition (`c[0:1] > 1`) is a register the OpenQASM 3 importer made up,
        # over bits of the declared one: said as the slice.
        try:
            places = [self._program.find_bit(bit).registers for bit in register]
        except CircuitError:
            return str(register.name)
        for other, first in places[0] if places else []:
            if other is register or other.name == register.name:
                continue
            indices = [dict((r.name, i) for r, i in place).get(other.name) for place in places]
            if indices == list(range(first, first + len(register))):
                return f"{other.name}[{first}:{first + len(register) - 1}]"
        return str(register.name)


def _number(value: float) -> str:
    if not math.isfinite(value):
        raise UnsupportedCircuit(f"a gate angle Braket cannot take: {value!r}")
    return repr(float(value))


def _real(value: complex | float | int) -> float:
    if isinstance(value, complex):
        if abs(value.imag) > 1e-12:
            # The client's bindings (sqrt(theta) at theta < 0): a bare ValueError was reported
            # as the backend's SDK_ERROR, counted against its breaker.
            # NON_FINITE_ANGLE (INVALID_ARGUMENT): EXECUTION_FAILED would be INTERNAL.
            raise ExecutionError(
                "NON_FINITE_ANGLE",
                f"a gate angle evaluated to the complex number {value!r}",
                kind=FailureKind.CLIENT_ERROR,
            )
        return value.real
    return float(value)
