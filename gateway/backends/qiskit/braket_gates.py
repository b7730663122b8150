"""Amazon Braket's built-in OpenQASM 3 gates, as the exact Qiskit gates they are.

Braket's own writer (`Circuit.to_ir(IRType.OPENQASM)`) includes no library: its simulators and
devices know `h`, `cnot`, `si`, `phaseshift`, `xx`, `gpi`, ... by themselves. The OpenQASM 3
front end defines the ones a program calls but neither defines nor includes (see
`frontend._braket_builtins`), so what Braket's SDK writes runs here unchanged.

Each entry is the very matrix Braket defines, global phase included (a `ctrl @` or `pow(k) @`
modifier reveals a phase): tests/unit/test_session30_sdk_writers_review.py checks every one
against `braket.circuits.gates.<Gate>.to_matrix()` and against Braket's LocalSimulator. Names
Qiskit's standard library has (`h`, `rx`, `cy`, `swap`, ...) are Qiskit's own gates, with the
same matrices under both SDKs. This module imports no Braket code.
"""

from __future__ import annotations

import math
from collections.abc import Callable

from qiskit.circuit import Gate, Parameter, QuantumCircuit
from qiskit.circuit.library import (
    CCXGate,
    CPhaseGate,
    CSwapGate,
    CSXGate,
    CXGate,
    CYGate,
    CZGate,
    ECRGate,
    HGate,
    IGate,
    PhaseGate,
    RGate,
    RXGate,
    RXXGate,
    RYGate,
    RYYGate,
    RZGate,
    RZZGate,
    SdgGate,
    SGate,
    SwapGate,
    SXdgGate,
    SXGate,
    TdgGate,
    TGate,
    UGate,
    XGate,
    XXPlusYYGate,
    YGate,
    ZGate,
    iSwapGate,
)
from qiskit_qasm3_import.converter import GateBuilder

# name -> (builder called with the call's angles, number of angles, number of qubits): the
# shape of the importer's own table for `stdgates.inc`.
BuiltinGate = tuple[Callable[..., Gate], int, int]


def _phase_on(name: str, flips: tuple[int, ...]) -> GateBuilder:
    """cphaseshiftAB(λ): e^{iλ} on |AB> of (first qubit, second qubit), 1 elsewhere: the qubits
    that must read 0 flipped around a controlled phase."""
    angle = Parameter("lambda")
    definition = QuantumCircuit(2)
    for qubit in flips:
        definition.x(qubit)
    definition.cp(angle, 0, 1)
    for qubit in flips:
        definition.x(qubit)
    return GateBuilder(name, definition, [angle])


def _pswap() -> GateBuilder:
    """pswap(θ): swap, with e^{iθ} on |01> and |10> (p on each qubit, and cp(-2θ) takes the
    doubled phase off |11>)."""
    angle = Parameter("theta")
    definition = QuantumCircuit(2)
    definition.swap(0, 1)
    definition.p(angle, 0)
    definition.p(angle, 1)
    definition.cp(-2 * angle, 0, 1)
    return GateBuilder("pswap", definition, [angle])


def _ms() -> GateBuilder:
    """ms(φ0, φ1, θ) = exp(-iθ/2 (cos φ0 X + sin φ0 Y) ⊗ (cos φ1 X + sin φ1 Y)): an rxx(θ)
    conjugated by rz(φ) on each qubit, which turns X into cos φ X + sin φ Y, phase and all."""
    phi0, phi1, theta = Parameter("phi0"), Parameter("phi1"), Parameter("theta")
    definition = QuantumCircuit(2)
    definition.rz(-phi0, 0)
    definition.rz(-phi1, 1)
    definition.rxx(theta, 0, 1)
    definition.rz(phi0, 0)
    definition.rz(phi1, 1)
    return GateBuilder("ms", definition, [phi0, phi1, theta])


def _gpi(phi: object) -> Gate:
    # [[0, e^{-iφ}], [e^{iφ}, 0]] = U(π, φ, π - φ).
    return UGate(math.pi, phi, math.pi - phi)  # type: ignore[operator]


def _gpi2(phi: object) -> Gate:
    # (1/√2)[[1, -i e^{-iφ}], [-i e^{iφ}, 1]] = R(π/2, φ).
    return RGate(math.pi / 2, phi)


def _xy(theta: object) -> Gate:
    # Braket's XY(θ) turns |01> into cos(θ/2)|01> + i sin(θ/2)|10>; Qiskit's XX+YY(θ, 0) with
    # -i: the same gate at -θ.
    return XXPlusYYGate(-theta, 0)  # type: ignore[operator]


BRAKET_BUILTIN_GATES: dict[str, BuiltinGate] = {
    # The names Braket shares with Qiskit's standard gates, with the same matrices.
    "h": (HGate, 0, 1),
    "x": (XGate, 0, 1),
    "y": (YGate, 0, 1),
    "z": (ZGate, 0, 1),
    "s": (SGate, 0, 1),
    "t": (TGate, 0, 1),
    "rx": (RXGate, 1, 1),
    "ry": (RYGate, 1, 1),
    "rz": (RZGate, 1, 1),
    "cy": (CYGate, 0, 2),
    "cz": (CZGate, 0, 2),
    "ecr": (ECRGate, 0, 2),
    "swap": (SwapGate, 0, 2),
    "iswap": (iSwapGate, 0, 2),
    "cswap": (CSwapGate, 0, 3),
    # Braket's own names for Qiskit's gates.
    "i": (IGate, 0, 1),
    "si": (SdgGate, 0, 1),
    "ti": (TdgGate, 0, 1),
    "v": (SXGate, 0, 1),
    "vi": (SXdgGate, 0, 1),
    "phaseshift": (PhaseGate, 1, 1),
    "prx": (RGate, 2, 1),
    "gpi": (_gpi, 1, 1),
    "gpi2": (_gpi2, 1, 1),
    "cnot": (CXGate, 0, 2),
    "cv": (CSXGate, 0, 2),
    "cphaseshift": (CPhaseGate, 1, 2),
    "cphaseshift00": (_phase_on("cphaseshift00", (0, 1)), 1, 2),
    "cphaseshift01": (_phase_on("cphaseshift01", (0,)), 1, 2),
    "cphaseshift10": (_phase_on("cphaseshift10", (1,)), 1, 2),
    "pswap": (_pswap(), 1, 2),
    "xy": (_xy, 1, 2),
    "xx": (RXXGate, 1, 2),
    "yy": (RYYGate, 1, 2),
    "zz": (RZZGate, 1, 2),
    "ms": (_ms(), 3, 2),
    "ccnot": (CCXGate, 0, 3),
}
