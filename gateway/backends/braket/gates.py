"""What Braket's local simulators run, in Qiskit's terms: the gates circuits are transpiled to,
the circuit features, the widths. Imports no SDK (compile workers and the gateway read it).

Each gate is checked against qiskit.quantum_info and each feature by a run in
tests/unit/test_braket_simulation.py.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Final, Literal

from gateway.domain.circuits import CircuitFeature

__all__ = [
    "DEFINED",
    "DEVICE_QUBITS",
    "FEATURES",
    "NATIVE",
    "NOISY_FEATURES",
    "QISKIT_GATES",
    "SPECIAL",
    "Device",
    "features",
]

Device = Literal["braket_sv", "braket_dm"]

# Qiskit gate -> the Braket gate with the same matrix, parameters and qubit order.
NATIVE: Final[Mapping[str, str]] = {
    "id": "i",
    "x": "x",
    "y": "y",
    "z": "z",
    "h": "h",
    "s": "s",
    "sdg": "si",
    "t": "t",
    "tdg": "ti",
    "sx": "v",
    "sxdg": "vi",
    "rx": "rx",
    "ry": "ry",
    "rz": "rz",
    "p": "phaseshift",
    "u1": "phaseshift",
    "u": "U",
    "u3": "U",
    "r": "prx",
    "cx": "cnot",
    "cy": "cy",
    "cz": "cz",
    "csx": "cv",
    "cp": "cphaseshift",
    "cu1": "cphaseshift",
    "swap": "swap",
    "iswap": "iswap",
    "ecr": "ecr",
    "rxx": "xx",
    "ryy": "yy",
    "rzz": "zz",
    "ccx": "ccnot",
    "cswap": "cswap",
}
# Gates written as a few Braket gates (u2 as U, cs/csdg as cphaseshift, dcx as two cnots, rzx as
# zz between Hadamards).
SPECIAL: Final = frozenset({"u2", "cs", "csdg", "dcx", "rzx"})
# Gates written as their Qiskit definition, gate by gate. Braket has no counterpart, or only a
# `ctrl @` modified gate: after one of those, Braket 1.41's numba kernels fail on the
# non-contiguous state it leaves (state vectors over 10 qubits, density matrices over 5:
# TypingError "reshape() supports contiguous array only" on a later gate).
DEFINED: Final = frozenset(
    {"ch", "crx", "cry", "crz", "cu", "cu3", "ccz", "c3sx"}
    | {"xx_plus_yy", "xx_minus_yy", "rccx", "rcccx"}
)

QISKIT_GATES: Final[frozenset[str]] = frozenset(NATIVE) | SPECIAL | DEFINED
"""Every Qiskit standard gate (get_standard_gate_name_mapping) but the non-gates (measure,
reset, delay) and global_phase."""

FEATURES: Final[frozenset[CircuitFeature]] = frozenset(
    {
        CircuitFeature.MID_CIRCUIT_MEASUREMENT,
        CircuitFeature.RESET,
        CircuitFeature.CONTROL_FLOW,  # if/else on measured bits (no loops, no switch)
    }
)
"""What both simulators run without noise. Braket branches the simulation at each mid-circuit
measurement whose qubit is used again or whose bit a condition reads, and resets in place."""

NOISY_FEATURES: Final[frozenset[CircuitFeature]] = frozenset({CircuitFeature.RESET})
"""What braket_dm runs with noise. Noise pragmas must sit at the top level of a program (none
inside an if/else), and Braket's branched simulation silently drops every noise channel after
its first branch point (ProgramContext.add_noise_instruction writes to the unbranched circuit,
which no path runs): a noisy backend refuses mid-circuit measurement and control flow rather
than drop noise."""

# Qubits each simulator's properties allow (Braket does not enforce them: a 14-qubit density
# matrix runs, for ~30 s and 4 GiB).
DEVICE_QUBITS: Final[Mapping[str, int]] = {"braket_sv": 26, "braket_dm": 13}


def features(device: Device, noisy: bool) -> frozenset[CircuitFeature]:
    """The circuit features of a simulator, with or without noise (only braket_dm has any)."""
    return NOISY_FEATURES if device == "braket_dm" and noisy else FEATURES
