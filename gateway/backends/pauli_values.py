"""Expectation values of Pauli strings read from a simulator's final state, in numpy.

For simulators whose own path would cost more than the state: Braket's local simulators
return a state (they have no cheap per-term expectation), and PennyLane's default.qubit builds
a Pauli product's eigenvalues (about 24x the state for a 20-qubit term). Reading each term from
the state costs two state-sized temporaries and O(2^n) work per term.

States are big-endian, Braket's and PennyLane's order: qubit q of n is bit n-1-q of an
amplitude's index. A term is masks on those indices: P|a> = i^ny (-1)^popcount(a & z) |a ^ x>,
so <psi|P|psi> = i^ny sum_a conj(psi[a^x]) psi[a] sign(a) and
tr(rho P) = i^ny sum_a rho[a, a^x] sign(a).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import numpy.typing as npt

from gateway.domain.circuits import FloatArray

__all__ = ["Masks", "density_matrix_values", "pauli_masks", "state_vector_values"]

# (flipped bits: X and Y, bits whose value gives a sign: Z and Y, number of Ys)
Masks = tuple[int, int, int]

_PHASES = (1.0, 1j, -1.0, -1j)  # i**k


def pauli_masks(letters: str, qubits: Sequence[int], n: int) -> Masks | None:
    """The masks of the term letters[i] on qubits[i] (distinct qubits of n), or None for the
    identity.

    Raises:
        ValueError: Letters and qubits differ in number, a qubit repeats or is not one of the
            n, or a letter is not one of IXYZ.
    """
    if len(letters) != len(qubits) or len(set(qubits)) != len(qubits):
        raise ValueError(
            f"bad Pauli term {letters!r} on {tuple(qubits)}: one distinct qubit per letter"
        )
    x = z = ny = 0
    for letter, qubit in zip(letters, qubits, strict=True):
        if not 0 <= qubit < n:
            raise ValueError(f"Pauli term {letters!r} acts on qubit {qubit} of {n}")
        bit = 1 << (n - 1 - qubit)
        if letter == "X":
            x |= bit
        elif letter == "Z":
            z |= bit
        elif letter == "Y":
            x |= bit
            z |= bit
            ny += 1
        elif letter != "I":
            raise ValueError(f"bad Pauli letter {letter!r} in {letters!r}")
    return None if x == 0 and z == 0 else (x, z, ny)


def state_vector_values(states: npt.NDArray[Any], distinct: Sequence[Masks]) -> FloatArray:
    """(bindings, len(distinct)) expectation values from (bindings, 2^n) state vectors."""
    bindings, size = states.shape
    index = np.arange(size, dtype=np.uint32)
    out = np.empty((bindings, len(distinct)), dtype=np.float64)
    probabilities: FloatArray | None = None
    for k, (x, z, ny) in enumerate(distinct):
        signs = _signs(index, z)
        if x == 0:
            if probabilities is None:
                probabilities = np.abs(states) ** 2
            out[:, k] = probabilities @ signs
            continue
        flipped = states[:, index ^ np.uint32(x)]
        np.conjugate(flipped, out=flipped)
        value = np.einsum("bi,bi->b", flipped, states * signs)
        out[:, k] = np.real(_PHASES[ny % 4] * value)
    return out


def density_matrix_values(rho: npt.NDArray[Any], distinct: Sequence[Masks]) -> FloatArray:
    """(len(distinct),) expectation values from a (2^n, 2^n) density matrix."""
    index = np.arange(rho.shape[0], dtype=np.uint32)
    out = np.empty(len(distinct), dtype=np.float64)
    diagonal: FloatArray | None = None
    for k, (x, z, ny) in enumerate(distinct):
        signs = _signs(index, z)
        if x == 0:
            if diagonal is None:
                diagonal = np.real(np.diagonal(rho))
            out[k] = float(diagonal @ signs)
            continue
        value = np.sum(rho[index, index ^ np.uint32(x)] * signs)
        out[k] = float(np.real(_PHASES[ny % 4] * value))
    return out


def _signs(index: npt.NDArray[np.uint32], z: int) -> npt.NDArray[np.int8]:
    """(-1)^popcount(a & z) for every index a."""
    parity = np.bitwise_count(index & np.uint32(z)) & 1
    signs: npt.NDArray[np.int8] = (1 - 2 * parity).astype(np.int8)
    return signs
