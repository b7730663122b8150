"""Adapters in process: compile every PUB's circuit as a compile worker would, then prepare."""

from __future__ import annotations

from gateway.backends.base import BackendAdapter, PreparedJob
from gateway.domain.circuits import circuit_field
from gateway.domain.errors import InvalidArgument
from gateway.domain.jobs import JobSpec
from gateway.runtime.compiler import relocated


def prepare_in_process(adapter: BackendAdapter, spec: JobSpec, seed: int) -> PreparedJob:
    circuits = []
    for index, pub in enumerate(spec.pubs):
        try:
            circuits.append(adapter.compile_circuit(pub.circuit))
        except InvalidArgument as refusal:
            raise relocated(refusal, circuit_field(index, pub)) from None
    return adapter.prepare(spec, seed, circuits)
