"""Work units (PUBs) as the gateway understands them, independent of any SDK."""

from __future__ import annotations

import enum
from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt

FloatArray = npt.NDArray[np.float64]


class CircuitLanguage(enum.Enum):
    QASM3 = "qasm3"
    QASM2 = "qasm2"
    # Qiskit's binary QPY format (bytes, not text).
    QPY = "qpy"


class CircuitFeature(enum.Enum):
    """Circuit features beyond measure-at-the-end that a backend may or may not support."""

    MID_CIRCUIT_MEASUREMENT = "mid_circuit_measurement"
    RESET = "reset"
    CONTROL_FLOW = "control_flow"


@dataclass(frozen=True)
class CircuitSource:
    """A client's circuit: source text (OpenQASM) or bytes (QPY), never parsed in the gateway's
    serving process."""

    language: CircuitLanguage
    text: str = ""
    # The QPY payload (language QPY); empty for the text formats.
    data: bytes = b""

    @property
    def payload(self) -> bytes:
        """The client's bytes: what the size limit and the compile cache key cover."""
        if self.language is CircuitLanguage.QPY:
            return self.data
        return self.text.encode("utf-8", "surrogatepass")


@dataclass(frozen=True, eq=False)
class Bindings:
    """Parameter values: `values` has shape (*shape, len(parameters)).

    `parameters` empty means "all of the circuit's parameters in Qiskit's order".
    """

    parameters: tuple[str, ...] = ()
    shape: tuple[int, ...] = ()
    values: FloatArray = field(default_factory=lambda: np.zeros((0,), dtype=np.float64))

    @property
    def size(self) -> int:
        """Number of bindings (1 for shape ())."""
        return int(np.prod(self.shape, dtype=np.int64))


@dataclass(frozen=True)
class PauliTerm:
    """One Pauli term. Dense (`qubits` None): character 0 of `pauli` acts on the highest-index
    qubit. Sparse: pauli[i] acts on qubits[i] (Qiskit's SparsePauliOp.from_sparse_list), the
    other qubits are I; never expanded, so its cost stays that of its input."""

    pauli: str
    coefficient: float
    qubits: tuple[int, ...] | None = None


@dataclass(frozen=True)
class Observable:
    """A sum of Pauli terms. Terms may be given as (pauli, coefficient) or
    (pauli, coefficient, qubits) tuples; they are kept as PauliTerm."""

    terms: tuple[PauliTerm, ...]

    def __post_init__(self) -> None:
        if not all(isinstance(term, PauliTerm) for term in self.terms):
            terms = tuple(
                term if isinstance(term, PauliTerm) else PauliTerm(*term) for term in self.terms
            )
            object.__setattr__(self, "terms", terms)


@dataclass(frozen=True, eq=False)
class SamplerPub:
    circuit: CircuitSource
    bindings: Bindings
    shots: int | None = None


@dataclass(frozen=True, eq=False)
class EstimatorPub:
    circuit: CircuitSource
    observables: tuple[Observable, ...]
    # The observables array's shape, row-major: () for a single observable.
    observables_shape: tuple[int, ...]
    bindings: Bindings
    precision: float | None = None


Pub = SamplerPub | EstimatorPub

DEFAULT_PRECISION = 0.015625


def circuit_field(index: int, pub: Pub) -> str:
    """The request field of a PUB's circuit, e.g. spec.pubs[0].sampler.circuit.qasm3."""
    kind = "sampler" if isinstance(pub, SamplerPub) else "estimator"
    return f"spec.pubs[{index}].{kind}.circuit.{pub.circuit.language.value}"
