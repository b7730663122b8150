"""Review of admission's memory and time estimates for Braket's LocalSimulator and PennyLane.

Measured (scratch, a child process running the adapter's own `execute` after `warm_up`, its
VmHWM above its warm size and its CPU time, amazon-braket-default-simulator on one core):
- braket_sv, a 1-qubit circuit reused after its measurement, 10 equal bindings merged into one
  run: 1e6 shots +228 MiB and 3.3 s of CPU, 3e6 shots +688 MiB and 9.2 s (estimate 64 B and
  0.22 s): ~230 B and ~3 us a shot, Braket's measurements as lists of strings.
- braket_sv, 11 qubits of which one is reused after its measurement and ten measured at the
  end, 2000 shots: 22.4 s of CPU and +60 MiB; admission priced it at 0.047 s (the finding
  below). Once a program branches, Braket applies every later (and every deferred) measurement
  path by path, each splitting the paths again; admission counted only the one measurement
  something acted on after. Counting every measurement (fe.count_mid_circuit_measurements)
  with paths = min(shots, 2^measurements) fixes this case but prices a 4-qubit brickwork with 10
  measurements and resets (10,000 shots, 1.97 s) at 338 s, because each path is also charged a
  whole LocalSimulator run; a fix needs the per-path cost re-measured, so it is left open.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from gateway.backends.braket.adapter import BraketAdapter
from gateway.domain import costs
from gateway.domain.circuits import Bindings, CircuitLanguage, CircuitSource, SamplerPub
from gateway.domain.jobs import JobOptions, JobSpec, SamplerOutput
from tests.adapters import adapter_context, prepare_in_process

H3 = 'OPENQASM 3.0;\ninclude "stdgates.inc";\n'
# The CPU time measured for the circuit below (10 terminal qubits), 2000 shots, one binding.
MEASURED_CPU_S = 22.4
# Braket's shot-by-shot measurements in the worker, a 2-clbit circuit (measured, see above).
MEASURED_BYTES_PER_SHOT = 228
MIB = 1 << 20


def _branching(terminal: int) -> str:
    """One qubit measured, then acted on (Braket branches there), and `terminal` qubits in
    superposition measured at the end."""
    k = terminal
    body = f"qubit[{k + 1}] q; bit[{k + 2}] c; h q[{k}]; c[{k}] = measure q[{k}]; h q[{k}]; "
    body += f"c[{k + 1}] = measure q[{k}]; "
    body += "".join(f"h q[{i}]; c[{i}] = measure q[{i}]; " for i in range(k))
    return H3 + body


@pytest.mark.xfail(
    strict=True,
    reason="Braket splits its paths at every measurement once a program branches; admission "
    "counts only measurements something acts on after (0.046 s priced, 22.4 s of CPU)",
)
def test_braket_prices_every_measurement_of_a_branching_circuit() -> None:
    braket = BraketAdapter(adapter_context("braket", device="braket_sv"))
    entry = braket.compile_circuit(CircuitSource(CircuitLanguage.QASM3, _branching(10)))
    assert entry.shot_by_shot
    spec = JobSpec(backend="braket", pubs=())
    seconds = braket.sampling_work(entry, 1, 2000, spec) / costs.WORK_PER_SECOND
    # Admission's estimate is what max_execution_work and fair share rely on: it must not be
    # far below the run (it was 0.047 s against 22.4 s, 475x under: 1e13 units of budget let
    # in days of one worker's time).
    assert seconds >= MEASURED_CPU_S / 2


@pytest.mark.xfail(
    strict=True,
    reason="Braket's shot-by-shot measurements (~230 B a shot as lists of strings, equal "
    "bindings merged into one run) are not in admission's memory estimate (the state alone)",
)
def test_braket_shot_by_shot_measurements_are_in_the_memory_estimate() -> None:
    context = adapter_context("braket", max_shots=1_000_000, device="braket_sv")
    context = dataclasses.replace(
        context,
        limits=dataclasses.replace(
            context.limits, memory_budget_bytes=4096 * MIB, max_result_bytes=256 * MIB
        ),
    )
    braket = BraketAdapter(context)
    circuit = "input float theta; qubit[1] q; bit[2] c; rx(theta) q[0]; h q[0]; "
    circuit += "c[0] = measure q[0]; h q[0]; c[1] = measure q[0];"
    # Ten equal bindings (~100 bytes on the wire): the worker runs their 10^7 shots as one.
    bindings = Bindings(("theta",), (10,), np.zeros((10, 1)))
    pub = SamplerPub(CircuitSource(CircuitLanguage.QASM3, H3 + circuit), bindings, 1_000_000)
    spec = JobSpec(
        backend="braket", pubs=(pub,), options=JobOptions(sampler_output=SamplerOutput.COUNTS)
    )
    prepared = prepare_in_process(braket, spec, 1234)
    # Measured: 10^6 shots +228 MiB, 3 x 10^6 +688 MiB; 10^7 would hold ~2.2 GiB, where
    # admission counted 64 bytes (a smaller budget's worker runs out of memory at run time).
    real = 10_000_000 * MEASURED_BYTES_PER_SHOT
    assert 2 * prepared.memory_bytes >= real
