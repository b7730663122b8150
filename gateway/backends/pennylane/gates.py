"""The Qiskit gates a PennyLane backend runs, free of any SDK import: compile workers build the
transpiler target from them without loading PennyLane (translate.py maps each one)."""

from __future__ import annotations

__all__ = ["IGNORED_INSTRUCTIONS", "QISKIT_GATES"]

QISKIT_GATES: frozenset[str] = frozenset(
    {
        *("id", "x", "y", "z", "h", "s", "sdg", "t", "tdg", "sx", "sxdg"),
        *("rx", "ry", "rz", "p", "u1", "u2", "u3", "u", "r"),
        *("cx", "cy", "cz", "ch", "cs", "csdg", "csx", "c3sx", "ccx", "ccz", "cswap"),
        *("cp", "cu1", "cu3", "cu", "crx", "cry", "crz"),
        *("swap", "iswap", "dcx", "ecr", "rxx", "ryy", "rzz", "rzx", "xx_plus_yy", "xx_minus_yy"),
    }
)
"""The Qiskit standard gates (names from get_standard_gate_name_mapping) the translation runs.

A PennyLane backend's target holds exactly these (plus the instructions below), so the
transpiler rewrites every other gate into them. Left out of the standard set: rccx and rcccx
(relative-phase Toffolis with no PennyLane counterpart: the transpiler's decomposition is what a
translation would do), global_phase (below), and measure and reset (only terminal measurements
run, and the terminal plan removes them).
"""

IGNORED_INSTRUCTIONS: frozenset[str] = frozenset({"id", "barrier", "delay", "global_phase"})
"""Instructions that translate to nothing: they change neither probabilities nor expectation
values (a global phase is unobservable; no noise model makes a delay or an identity act)."""
