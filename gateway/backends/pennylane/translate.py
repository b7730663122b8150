"""Qiskit circuits as PennyLane operations, without pennylane-qiskit (it downgrades the Qiskit
stack, FIELD-NOTES "Installing").

A circuit is translated once (per compiled circuit, in the simulator worker) into a list of
operation specs on compact wires: every qubit some gate acts on gets a wire 0..k-1 in ascending
Qiskit order, so PennyLane simulates only those k qubits (lightning.qubit simulates every wire of
its device, and both devices remap non-contiguous wire labels on every execution). Each gate
angle is an affine form over "leaves": a circuit Parameter (read straight from its column of the
bindings, vectorised) or, for a non-linear ParameterExpression, the expression itself (evaluated
binding by binding). An operation whose angles are all constant is built once and reused.

Gates map onto operations both devices run natively (lightning.qubit would otherwise decompose
them on every execution: U3 into three ops, CH into three, CCZ into fifteen), up to a global
phase where no control makes it relative: probabilities and expectation values ignore it, which
is also why `global_phase`, `delay`, `barrier` and `id` translate to nothing.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, TypeAlias

import numpy as np
import pennylane as qml
from pennylane.ops.op_math import Controlled
from qiskit.circuit import Parameter, ParameterExpression, QuantumCircuit

from gateway.backends.pennylane.gates import IGNORED_INSTRUCTIONS, QISKIT_GATES
from gateway.domain.circuits import FloatArray
from gateway.domain.errors import ExecutionError
from gateway.domain.failures import FailureKind

__all__ = ["IGNORED_INSTRUCTIONS", "QISKIT_GATES", "Translation", "translate"]

# An angle: a float (every binding) or one value per binding.
Angle: TypeAlias = float | FloatArray
# Builds one PennyLane operation from its angles and wires.
Factory: TypeAlias = Callable[[Sequence[Angle], Sequence[int]], Any]


def _cls(cls: Any) -> Factory:
    def build(angles: Sequence[Angle], wires: Sequence[int]) -> Any:
        return cls(*angles, wires=wires)

    return build


def _adjoint(cls: Any) -> Factory:
    def build(angles: Sequence[Angle], wires: Sequence[int]) -> Any:
        return qml.adjoint(cls(wires=wires))

    return build


def _controlled(cls: Any) -> Factory:
    """`cls` on the last wire, controlled by the others. Built as a Controlled operation on
    purpose: qml.ctrl would turn a controlled Hadamard into qml.CH, which lightning.qubit
    decomposes, while both devices apply C(Hadamard), C(SX) and C(PauliZ) natively."""

    def build(angles: Sequence[Angle], wires: Sequence[int]) -> Any:
        return Controlled(cls(wires=wires[-1]), control_wires=list(wires[:-1]))

    return build


_H = _cls(qml.Hadamard)
_RZ = _cls(qml.RZ)
_PHASE = _cls(qml.PhaseShift)
_CPHASE = _cls(qml.ControlledPhaseShift)
_ROT = _cls(qml.Rot)
_CROT = _cls(qml.CRot)
_CNOT = _cls(qml.CNOT)


@dataclass(frozen=True)
class _Affine:
    """constant + sum(coefficient * leaf value): a gate angle in terms of the circuit's leaves."""

    constant: float = 0.0
    terms: tuple[tuple[int, float], ...] = ()

    def __add__(self, other: _Affine) -> _Affine:
        return _Affine(self.constant + other.constant, self.terms + other.terms)

    def __sub__(self, other: _Affine) -> _Affine:
        return self + other.scaled(-1.0)

    def __neg__(self) -> _Affine:
        return self.scaled(-1.0)

    def scaled(self, factor: float) -> _Affine:
        return _Affine(self.constant * factor, tuple((i, c * factor) for i, c in self.terms))

    def evaluate(self, leaves: Sequence[FloatArray]) -> Angle:
        if not self.terms:
            return self.constant
        value: FloatArray = np.full(leaves[0].shape, self.constant, dtype=np.float64)
        for index, coefficient in self.terms:
            value += coefficient * leaves[index]
        return value


_ZERO = _Affine()
_HALF_PI = _Affine(math.pi / 2)
# One rule per gate: (gate angles, gate qubits) -> [(factory, qubits, angles)].
_Spec: TypeAlias = tuple[Factory, tuple[int, ...], tuple[_Affine, ...]]
_Rule: TypeAlias = Callable[[Sequence[_Affine], tuple[int, ...]], list[_Spec]]


def _plain(factory: Factory) -> _Rule:
    """The gate is `factory` on the same qubits with the same angles."""
    return lambda p, q: [(factory, q, tuple(p))]


def _fixed(cls: Any) -> _Rule:
    return _plain(_cls(cls))


def _u(p: Sequence[_Affine], q: tuple[int, ...]) -> list[_Spec]:
    # U(θ, φ, λ) = e^{i(φ+λ)/2} RZ(φ) RY(θ) RZ(λ) = e^{i(φ+λ)/2} Rot(λ, θ, φ); lightning.qubit
    # runs Rot natively and would decompose U3.
    return [(_ROT, q, (p[2], p[0], p[1]))]


def _cu(p: Sequence[_Affine], q: tuple[int, ...]) -> list[_Spec]:
    # Controlled, U's phase e^{i(φ+λ)/2} (and cu's gamma) is relative: a phase shift on the control.
    gamma = p[3] if len(p) > 3 else _ZERO
    phase = gamma + (p[1] + p[2]).scaled(0.5)
    return [(_PHASE, q[:1], (phase,)), (_CROT, q, (p[2], p[0], p[1]))]


_RULES: dict[str, _Rule] = {
    "x": _fixed(qml.PauliX),
    "y": _fixed(qml.PauliY),
    "z": _fixed(qml.PauliZ),
    "h": _fixed(qml.Hadamard),
    "s": _fixed(qml.S),
    "sdg": _plain(_adjoint(qml.S)),
    "t": _fixed(qml.T),
    "tdg": _plain(_adjoint(qml.T)),
    "sx": _fixed(qml.SX),
    "sxdg": _plain(_adjoint(qml.SX)),
    "rx": _fixed(qml.RX),
    "ry": _fixed(qml.RY),
    "rz": _fixed(qml.RZ),
    "p": _plain(_PHASE),
    "u1": _plain(_PHASE),
    "u": _u,
    "u3": _u,
    "u2": lambda p, q: _u((_HALF_PI, p[0], p[1]), q),
    # R(θ, φ) = U(θ, φ - π/2, π/2 - φ) (Qiskit's definition).
    "r": lambda p, q: _u((p[0], p[1] - _HALF_PI, _HALF_PI - p[1]), q),
    "cx": _plain(_CNOT),
    "cy": _fixed(qml.CY),
    "cz": _fixed(qml.CZ),
    "ch": _plain(_controlled(qml.Hadamard)),
    "cs": lambda p, q: [(_CPHASE, q, (_HALF_PI,))],
    "csdg": lambda p, q: [(_CPHASE, q, (-_HALF_PI,))],
    "csx": _plain(_controlled(qml.SX)),
    "c3sx": _plain(_controlled(qml.SX)),
    "ccx": _fixed(qml.Toffoli),
    "ccz": _plain(_controlled(qml.PauliZ)),
    "cswap": _fixed(qml.CSWAP),
    "cp": _plain(_CPHASE),
    "cu1": _plain(_CPHASE),
    "cu3": _cu,
    "cu": _cu,
    "crx": _fixed(qml.CRX),
    "cry": _fixed(qml.CRY),
    "crz": _fixed(qml.CRZ),
    "swap": _fixed(qml.SWAP),
    "iswap": _fixed(qml.ISWAP),
    # Qiskit's DCX is cx(0, 1) then cx(1, 0).
    "dcx": lambda p, q: [(_CNOT, q, ()), (_CNOT, q[::-1], ())],
    "ecr": _fixed(qml.ECR),
    "rxx": _fixed(qml.IsingXX),
    "ryy": _fixed(qml.IsingYY),
    "rzz": _fixed(qml.IsingZZ),
    # RZX(θ) = exp(-iθ/2 Z⊗X), Z on the first qubit: IsingZZ with the second in the X basis
    # (PauliRot("ZX") would be decomposed into the same three on every lightning run).
    "rzx": lambda p, q: [(_H, q[1:], ()), (_cls(qml.IsingZZ), q, (p[0],)), (_H, q[1:], ())],
    # RZ_0(-β) exp(-iθ/4 (XX+YY)) RZ_0(β); IsingXY(φ) = exp(iφ/4 (XX+YY)).
    "xx_plus_yy": lambda p, q: [
        (_RZ, q[:1], (p[1],)),
        (_cls(qml.IsingXY), q, (-p[0],)),
        (_RZ, q[:1], (-p[1],)),
    ],
    # RZ_1(β) exp(-iθ/4 (XX-YY)) RZ_1(-β); IsingXX(φ) = exp(-iφ/2 XX), and XX, YY commute.
    "xx_minus_yy": lambda p, q: [
        (_RZ, q[1:], (-p[1],)),
        (_cls(qml.IsingXX), q, (p[0].scaled(0.5),)),
        (_cls(qml.IsingYY), q, (p[0].scaled(-0.5),)),
        (_RZ, q[1:], (p[1],)),
    ],
}


@dataclass(frozen=True, eq=False)
class _Operation:
    """One PennyLane operation: `fixed` when its angles are constant (built once), else built
    per run from `angles` evaluated on the bindings."""

    factory: Factory
    wires: tuple[int, ...]
    angles: tuple[_Affine, ...]
    fixed: Any


@dataclass(frozen=True, eq=False)
class Translation:
    """A circuit as PennyLane operations on compact wires.

    Attributes:
        qubits: The Qiskit qubits some operation acts on, ascending; wire i is qubits[i].
        operations: The operations, in circuit order.
        leaves: What the angles are affine in: circuit Parameters (read from their columns) and
            non-linear expressions (evaluated per binding).
    """

    qubits: tuple[int, ...]
    operations: tuple[_Operation, ...]
    leaves: tuple[ParameterExpression, ...]

    @property
    def wire_of(self) -> Mapping[int, int]:
        """Qiskit qubit -> wire, for the qubits some operation acts on."""
        return {qubit: wire for wire, qubit in enumerate(self.qubits)}

    @property
    def constant(self) -> bool:
        """True when no angle depends on a binding: one run serves every binding."""
        return not self.leaves

    def leaf_values(self, parameters: Sequence[str], values: FloatArray) -> list[FloatArray]:
        """Each leaf's value per binding (`values` is (bindings, len(parameters)), columns in
        `parameters` order)."""
        column = {name: i for i, name in enumerate(parameters)}

        def column_of(parameter: Parameter) -> int:
            index = column.get(parameter.name)
            if index is None:
                raise ExecutionError(
                    "UNBOUND_PARAMETERS",
                    f"no value for circuit parameter {parameter.name!r}",
                    kind=FailureKind.CLIENT_ERROR,
                )
            return index

        result: list[FloatArray] = []
        for leaf in self.leaves:
            if isinstance(leaf, Parameter):
                result.append(np.ascontiguousarray(values[:, column_of(leaf)], dtype=np.float64))
                continue
            own = [(parameter, column_of(parameter)) for parameter in leaf.parameters]
            evaluated = [
                _real(leaf.bind_all({parameter: float(row[i]) for parameter, i in own}))
                for row in values
            ]
            result.append(np.asarray(evaluated, dtype=np.float64).reshape(values.shape[0]))
        return result

    def build(self, leaves: Sequence[FloatArray], index: int | None = None) -> list[Any]:
        """The PennyLane operations for the given leaf values: angles broadcast over every
        binding, or for the one binding `index`."""
        chosen = leaves if index is None else [leaf[index : index + 1] for leaf in leaves]
        operations: list[Any] = []
        for operation in self.operations:
            if operation.fixed is not None:
                operations.append(operation.fixed)
                continue
            angles = [angle.evaluate(chosen) for angle in operation.angles]
            if index is not None:
                angles = [a if isinstance(a, float) else float(a[0]) for a in angles]
            operations.append(operation.factory(angles, operation.wires))
        return operations


def translate(circuit: QuantumCircuit) -> Translation:
    """`circuit` (transpiled to QISKIT_GATES, no measurements) as PennyLane operations.

    Raises:
        ExecutionError: An instruction outside QISKIT_GATES and IGNORED_INSTRUCTIONS (a
            CLIENT_ERROR: it fails the same way wherever it runs).
    """
    leaves: dict[str, int] = {}
    leaf_list: list[ParameterExpression] = []

    def leaf(expression: ParameterExpression) -> int:
        # Parameter names are unique within a circuit: an expression's text identifies it.
        key = ("p:" if isinstance(expression, Parameter) else "e:") + str(expression)
        index = leaves.get(key)
        if index is None:
            index = leaves[key] = len(leaf_list)
            leaf_list.append(expression)
        return index

    def angle(value: Any) -> _Affine:
        if isinstance(value, Parameter):
            return _Affine(0.0, ((leaf(value), 1.0),))
        if isinstance(value, ParameterExpression):
            return _affine(value, leaf)
        return _Affine(_real(value))

    specs: list[_Spec] = []
    for instruction in circuit.data:
        operation = instruction.operation
        name = operation.name
        if name in IGNORED_INSTRUCTIONS:
            continue
        rule = _RULES.get(name)
        if rule is None:
            raise ExecutionError(
                "EXECUTION_FAILED",
                f"instruction {name!r} has no PennyLane translation (supported: "
                f"{', '.join(sorted(QISKIT_GATES))})"[:500],
                kind=FailureKind.CLIENT_ERROR,
            )
        qubits = tuple(circuit.find_bit(q).index for q in instruction.qubits)
        # An open control changes the name (cx_o0): a rule never meets one.
        specs.extend(rule([angle(value) for value in operation.params], qubits))

    active = tuple(sorted({q for _, qubits, _ in specs for q in qubits}))
    wire = {qubit: i for i, qubit in enumerate(active)}
    operations: list[_Operation] = []
    for factory, qubits, angles in specs:
        wires = tuple(wire[q] for q in qubits)
        constant = all(not a.terms for a in angles)
        fixed = factory([a.constant for a in angles], wires) if constant else None
        operations.append(_Operation(factory, wires, angles, fixed))
    return Translation(active, tuple(operations), tuple(leaf_list))


def _affine(expression: ParameterExpression, leaf: Callable[[ParameterExpression], int]) -> _Affine:
    """`expression` as an affine form over its Parameters when it is one (`2*theta`,
    `theta/2 - phi`: what transpilers write), so it evaluates vectorised; else one opaque leaf."""
    parameters = list(expression.parameters)
    try:
        coefficients: list[tuple[Parameter, float]] = []
        for parameter in parameters:
            gradient = expression.gradient(parameter)
            if isinstance(gradient, ParameterExpression) and gradient.parameters:
                return _Affine(0.0, ((leaf(expression), 1.0),))
            coefficients.append((parameter, _real(gradient)))
        constant = _real(expression.bind_all(dict.fromkeys(parameters, 0.0)))
    except (ArithmeticError, TypeError, ValueError, RuntimeError):
        # Not differentiable or undefined at 0 (abs, log): evaluate it as it is.
        return _Affine(0.0, ((leaf(expression), 1.0),))
    # A parameter that cancels out (`theta - theta + 1`) is no leaf: nothing reads its value.
    terms = tuple((leaf(p), c) for p, c in coefficients if c != 0.0)
    return _Affine(constant, terms)


def _real(value: Any) -> float:
    if isinstance(value, ParameterExpression):
        value = value.numeric()
    number = complex(value)
    if abs(number.imag) > 1e-10 * max(1.0, abs(number.real)):
        # The client's bindings: NON_FINITE_ANGLE (INVALID_ARGUMENT), not the INTERNAL
        # EXECUTION_FAILED of a backend fault.
        raise ExecutionError(
            "NON_FINITE_ANGLE",
            f"a gate angle evaluated to the complex number {number}",
            kind=FailureKind.CLIENT_ERROR,
        )
    return number.real
