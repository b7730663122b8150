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
  whole LocalSimulator run. Fixed: the per-path and per-shot costs were re-measured (see
  gateway.backends.braket.adapter, _PATH_OPERATION_WEIGHT) and the shots' memory is counted
  (BraketAdapter.shots_memory).
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from gateway.backends.braket.adapter import BraketAdapter
from gateway.domain import costs
from gateway.domain.circuits import Bindings, CircuitLanguage, CircuitSource, SamplerPub
from gateway.domain.errors import InvalidArgument
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


def _shots_job(values: list[float], shots: int) -> tuple[BraketAdapter, JobSpec]:
    braket = BraketAdapter(adapter_context("braket", max_shots=1_000_000, device="braket_sv"))
    circuit = "input float theta; qubit[1] q; bit[2] c; rx(theta) q[0]; h q[0]; "
    circuit += "c[0] = measure q[0]; h q[0]; c[1] = measure q[0];"
    bindings = Bindings(("theta",), (len(values),), np.asarray(values).reshape(-1, 1))
    pub = SamplerPub(CircuitSource(CircuitLanguage.QASM3, H3 + circuit), bindings, shots)
    options = JobOptions(sampler_output=SamplerOutput.COUNTS)
    return braket, JobSpec(backend="braket", pubs=(pub,), options=options)


def test_braket_shots_past_the_budget_are_refused_at_admission() -> None:
    # Five equal bindings of 10^6 shots run as one run of 5 x 10^6 (~1.1 GiB of strings, over
    # the 1 GiB budget); five distinct ones run apart, one run's 10^6 shots alive at a time.
    braket, merged = _shots_job([0.0] * 5, 1_000_000)
    with pytest.raises(InvalidArgument) as refusal:
        prepare_in_process(braket, merged, 1)
    assert refusal.value.reason == "MEMORY_BUDGET_EXCEEDED"
    braket, apart = _shots_job([0.1 * i for i in range(5)], 1_000_000)
    assert prepare_in_process(braket, apart, 1).memory_bytes < 512 * MIB


def _brickwork(n: int, layers: int) -> list[str]:
    """test_review_cost_prices.brick_body: rx and rz on every qubit, then a layer of cx."""
    lines: list[str] = []
    for layer in range(layers):
        lines += [f"rx({0.3 + 0.1 * q + 0.07 * layer:.3f}) q[{q}];" for q in range(n)]
        lines += [f"rz({0.2 + 0.05 * q:.3f}) q[{q}];" for q in range(n)]
        lines += [f"cx q[{q}], q[{q + 1}];" for q in range(layer % 2, n - 1, 2)]
    return lines


def _maximal(n: int, m: int, reset: bool = False, feed: bool = False) -> str:
    """A brickwork, then m times a qubit put in superposition and measured (each outcome 50/50:
    the most paths), optionally reset or steering an X on the next qubit; all measured last."""
    lines = [H3 + f"qubit[{n}] q;", f"bit[{n + m}] c;", *_brickwork(n, 2)]
    for i in range(m):
        lines += [f"h q[{i % n}];", f"c[{n + i}] = measure q[{i % n}];"]
        if reset:
            lines.append(f"reset q[{i % n}];")
        if feed:
            lines.append(f"if (c[{n + i}]) {{ x q[{(i + 1) % n}]; }}")
    lines.append(f"c[0:{n - 1}] = measure q;")
    return "\n".join(lines) + "\n"


@pytest.mark.parametrize(
    ("text", "shots", "measured_cpu_s"),
    [
        # The adapter's own execute, warm, one core (the fit of adapter._PATH_*_WEIGHT).
        (_maximal(2, 12), 10_000, 8.31),
        (_maximal(2, 12, feed=True), 10_000, 17.2),
        (_maximal(4, 10, reset=True), 3_000, 3.31),
        (_maximal(8, 10), 1_000, 4.09),
        (_maximal(12, 4, reset=True), 300, 30.9),
        (_branching(10), 8_000, 39.0),
    ],
)
def test_braket_branching_price_follows_its_cpu(
    text: str, shots: int, measured_cpu_s: float
) -> None:
    braket = BraketAdapter(adapter_context("braket", device="braket_sv"))
    entry = braket.compile_circuit(CircuitSource(CircuitLanguage.QASM3, text))
    spec = JobSpec(backend="braket", pubs=())
    seconds = braket.sampling_work(entry, 1, shots, spec) / costs.WORK_PER_SECOND
    # Neither far under the run (budgets and fair share rely on it) nor far over (refused).
    assert measured_cpu_s / 2 <= seconds <= 3 * measured_cpu_s
