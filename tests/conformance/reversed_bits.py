"""A test-only backend that reverses Aer's bit order: the suite must turn red on it.

Registered through the "qgateway.backends" entry-point group by a distribution the conformance
fixture writes into a temporary directory on the gateway's PYTHONPATH, as a third-party adapter
package would be.
"""

from __future__ import annotations

import numpy as np

from gateway.backends.aer.adapter import AerAdapter
from gateway.backends.qiskit import measurement
from gateway.domain.circuits import FloatArray


class ReversedBitsAerAdapter(AerAdapter):
    """Aer, with the measured qubits' order reversed in every probability vector."""

    def terminal_probabilities(
        self,
        key: str,
        plan: measurement.TerminalPlan,
        parameters: tuple[str, ...],
        values: FloatArray,
    ) -> FloatArray:
        probabilities = super().terminal_probabilities(key, plan, parameters, values)
        bindings, width = probabilities.shape[0], len(plan.qubits)
        # Axis 1 of the (bindings, 2, ..., 2) view is the highest bit: reversing the axes
        # swaps bit i with bit width-1-i.
        tensor = probabilities.reshape((bindings,) + (2,) * width)
        reversed_ = np.transpose(tensor, (0, *range(width, 0, -1)))
        return np.ascontiguousarray(reversed_).reshape(bindings, 1 << width)
