"""Each backend's processes import only their own SDK (issue 9, item 5): a compile worker pays
for neither Braket nor PennyLane (it only transpiles, with Qiskit), and a simulator worker of
one backend loads no other backend's SDK. Checked in fresh interpreters doing what the workers
do (gateway.runtime.worker builds the adapter from its entry point, then warms it up).

Qiskit's preset pass manager loads every installed transpiler plugin, and qiskit-ibm-runtime
registers some (which import Aer): any process that transpiles pays for those two, whichever
backend it compiles for. That is Qiskit's cost, asserted here so that a change shows."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

SDKS = ("qiskit_aer", "qiskit_ibm_runtime", "braket", "pennylane")

_PROGRAM = f"""
import json, sys
from dataclasses import replace
from gateway.backends.base import AdapterContext, CircuitLimits
from gateway.backends.registry import load_adapter
from gateway.domain.backends import BackendLimits

context = AdapterContext(
    name="probe",
    limits=BackendLimits(
        max_shots=1000, memory_budget_bytes=1 << 30, max_queued_jobs=10, max_result_bytes=1 << 20
    ),
    default_shots=16,
    circuit_limits=CircuitLimits(),
)
# argv: warm-up method, then adapter name and JSON options pairs (a compile worker builds
# every backend's adapter; a simulator worker one).
for name, options in zip(sys.argv[2::2], sys.argv[3::2]):
    adapter = load_adapter(name)(replace(context, options=json.loads(options)))
    getattr(adapter, sys.argv[1])()
print(json.dumps(sorted(m for m in {SDKS!r} if m in sys.modules)))
"""

# Qiskit's transpiler plugins (see above).
TRANSPILER = ["qiskit_aer", "qiskit_ibm_runtime"]
CASES = {
    # adapter: (options, the SDKs its simulator worker loads)
    "aer": ({}, ["qiskit_aer"]),
    "braket": ({"device": "braket_sv"}, ["braket"]),
    "pennylane": ({"device": "lightning.qubit"}, ["pennylane"]),
}


def _loaded(warm_up: str, *adapters: tuple[str, dict[str, str]]) -> list[str]:
    pairs = [arg for name, options in adapters for arg in (name, json.dumps(options))]
    out = subprocess.run(
        [sys.executable, "-c", _PROGRAM, warm_up, *pairs],
        capture_output=True,
        text=True,
        check=True,
        timeout=120,
    )
    loaded: list[str] = json.loads(out.stdout.strip().splitlines()[-1])
    return loaded


@pytest.mark.parametrize("adapter", sorted(CASES))
def test_a_simulator_worker_imports_only_its_own_sdk(adapter: str) -> None:
    options, simulator = CASES[adapter]
    assert _loaded("warm_up", (adapter, options)) == simulator


def test_a_compile_worker_imports_neither_braket_nor_pennylane() -> None:
    every = [(name, options) for name, (options, _) in CASES.items()]
    assert _loaded("warm_up_compiler", *every) == TRANSPILER
