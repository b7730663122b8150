"""A fake IBM device's noise model on some of its qubits, renumbered.

A circuit transpiled for a device is as wide as the device, however few qubits it uses. A noisy
twin simulates it without its idle qubits (gateway.backends.qiskit.idle), so its noise model must
name the kept qubits by their new numbers: qubit i of the simulated circuit is physical qubit
kept[i]. The model is Aer's own (`NoiseModel.from_backend`), built from the device's Target
restricted to the kept qubits, so each kept qubit keeps its readout error, relaxation times and
the errors of the gates among kept qubits, exactly as the whole device's model gives them. The
qubits left out are acted on by nothing but barriers and delays; a delay's relaxation leaves a
qubit in |0> there (the model's temperature is 0), so leaving them out changes no result.
"""

from __future__ import annotations

from collections.abc import Sequence

from qiskit.providers import BackendV2, Options
from qiskit.transpiler import Target
from qiskit_aer.noise import NoiseModel

__all__ = ["noise_model_on", "restricted_target"]


def restricted_target(target: Target, kept: Sequence[int]) -> Target:
    """`target` on the qubits `kept` (qubit i is target's kept[i]): their properties, and the
    instructions whose qubits are all kept with their properties; global instructions (control
    flow, variadic gates) as they are."""
    position = {qubit: i for i, qubit in enumerate(kept)}
    properties = target.qubit_properties
    restricted = Target(
        description=f"{target.description} on qubits {list(kept)}",
        num_qubits=len(kept),
        dt=target.dt,
        qubit_properties=[properties[q] for q in kept] if properties else None,
    )
    for name in target.operation_names:
        operation = target.operation_from_name(name)
        qargs = target.qargs_for_operation_name(name)
        if qargs is None:
            # On every qubit: a class (control flow) takes no properties.
            if isinstance(operation, type):
                restricted.add_instruction(operation, name=name)
            else:
                restricted.add_instruction(operation, {None: None}, name=name)
            continue
        entries = {
            tuple(position[q] for q in args): target[name][args]
            for args in qargs
            if all(q in position for q in args)
        }
        if entries:
            restricted.add_instruction(operation, entries, name=name)
    return restricted


class _TargetOnly(BackendV2):  # type: ignore[misc]  # qiskit.providers is untyped
    """What NoiseModel.from_backend reads of a backend: its Target (and dt, from it)."""

    def __init__(self, target: Target) -> None:
        super().__init__(name=target.description or "restricted")
        self._restricted = target

    @property
    def target(self) -> Target:
        return self._restricted

    @property
    def max_circuits(self) -> None:
        return None

    @classmethod
    def _default_options(cls) -> Options:
        return Options()

    def run(self, run_input: object, **options: object) -> None:
        raise NotImplementedError("a noise model's source, not a backend to run on")


def noise_model_on(target: Target, kept: Sequence[int]) -> NoiseModel:
    """Aer's noise model of the device described by `target`, on its qubits `kept` renumbered
    0..len(kept)-1."""
    return NoiseModel.from_backend(_TargetOnly(restricted_target(target, kept)))
