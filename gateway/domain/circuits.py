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


class CircuitFeature(enum.Enum):
    """Circuit features beyond measure-at-the-end that a backend may or may not support."""

    MID_CIRCUIT_MEASUREMENT = "mid_circuit_measurement"
    RESET = "reset"
    CONTROL_FLOW = "control_flow"


@dataclass(frozen=True)
class CircuitSource:
    language: CircuitLanguage
    text: str


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
class Observable:
    """A sum of Pauli terms; character 0 of each Pauli string acts on the highest qubit."""

    terms: tuple[tuple[str, float], ...]


@dataclass(frozen=True, eq=False)
class SamplerPub:
    circuit: CircuitSource
    bindings: Bindings
    shots: int | None = None


@dataclass(frozen=True, eq=False)
class EstimatorPub:
    circuit: CircuitSource
    observables: tuple[Observable, ...]
    observables_shape: tuple[int, ...]
    bindings: Bindings
    precision: float | None = None


Pub = SamplerPub | EstimatorPub

DEFAULT_PRECISION = 0.015625
