"""An estimator PUB's observables packed into a few arrays: the form that crosses to a worker
process (or a provider's submit thread).

Held as Python tuples, one per term, the observables were pickled on the event loop when the
job went to its worker: at 500,000 terms that one pickle.dumps held the interpreter lock for
0.2-0.3 s (a single C call, so every other request waited, whatever thread it ran in). Packed,
the payload pickles in microseconds; the side that reads the terms unpacks them once.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import Any

import numpy as np

__all__ = ["PackedObservables", "PauliKey"]

# A dense Pauli string (character 0 on the highest virtual qubit), or sparse Paulis and the
# qubits they act on (paulis[i] on qubits[i], ascending).
PauliKey = str | tuple[str, tuple[int, ...]]
Observable = tuple[tuple[PauliKey, float], ...]


class PackedObservables:
    """Observables, each a sequence of (PauliKey, coefficient) terms, as arrays. Iterating
    gives each observable as a tuple of its terms (unpacked on first use, then kept)."""

    __slots__ = (
        "_coefficients",
        "_letter_ends",
        "_letters",
        "_qubit_ends",
        "_qubits",
        "_sparse",
        "_term_ends",
        "_unpacked",
    )

    def __init__(
        self,
        letters: str,
        letter_ends: np.ndarray[Any, np.dtype[np.int64]],
        qubits: np.ndarray[Any, np.dtype[np.int64]],
        qubit_ends: np.ndarray[Any, np.dtype[np.int64]],
        sparse: np.ndarray[Any, np.dtype[np.bool_]],
        coefficients: np.ndarray[Any, np.dtype[np.float64]],
        term_ends: np.ndarray[Any, np.dtype[np.int64]],
    ) -> None:
        # Per term: where its letters (and, when sparse, its qubits) end; per observable:
        # where its terms end.
        self._letters = letters
        self._letter_ends = letter_ends
        self._qubits = qubits
        self._qubit_ends = qubit_ends
        self._sparse = sparse
        self._coefficients = coefficients
        self._term_ends = term_ends
        self._unpacked: tuple[Observable, ...] | None = None

    @classmethod
    def pack(cls, observables: Iterable[Iterable[tuple[PauliKey, float]]]) -> PackedObservables:
        letters: list[str] = []
        letter_ends: list[int] = []
        qubits: list[int] = []
        qubit_ends: list[int] = []
        sparse: list[bool] = []
        coefficients: list[float] = []
        term_ends: list[int] = []
        length = 0
        for observable in observables:
            for key, coefficient in observable:
                if isinstance(key, str):
                    text = key
                else:
                    text, on = key
                    qubits.extend(on)
                letters.append(text)
                length += len(text)
                letter_ends.append(length)
                qubit_ends.append(len(qubits))
                sparse.append(not isinstance(key, str))
                coefficients.append(coefficient)
            term_ends.append(len(coefficients))
        return cls(
            "".join(letters),
            np.array(letter_ends, dtype=np.int64),
            np.array(qubits, dtype=np.int64),
            np.array(qubit_ends, dtype=np.int64),
            np.array(sparse, dtype=np.bool_),
            np.array(coefficients, dtype=np.float64),
            np.array(term_ends, dtype=np.int64),
        )

    def _unpack(self) -> tuple[Observable, ...]:
        if self._unpacked is not None:
            return self._unpacked
        text, qubits = self._letters, self._qubits.tolist()
        terms: list[tuple[PauliKey, float]] = []
        start = qubit_start = 0
        for end, qubit_end, sparse, coefficient in zip(
            self._letter_ends.tolist(),
            self._qubit_ends.tolist(),
            self._sparse.tolist(),
            self._coefficients.tolist(),
            strict=True,
        ):
            letters = text[start:end]
            key: PauliKey = (letters, tuple(qubits[qubit_start:qubit_end])) if sparse else letters
            terms.append((key, coefficient))
            start, qubit_start = end, qubit_end
        unpacked: list[Observable] = []
        first = 0
        for end in self._term_ends.tolist():
            unpacked.append(tuple(terms[first:end]))
            first = end
        self._unpacked = tuple(unpacked)
        return self._unpacked

    def __iter__(self) -> Iterator[Observable]:
        return iter(self._unpack())

    def __len__(self) -> int:
        return len(self._term_ends)

    def __reduce__(self) -> tuple[Any, ...]:
        # The arrays only: an unpacked copy is never sent along.
        return (
            PackedObservables,
            (
                self._letters,
                self._letter_ends,
                self._qubits,
                self._qubit_ends,
                self._sparse,
                self._coefficients,
                self._term_ends,
            ),
        )
