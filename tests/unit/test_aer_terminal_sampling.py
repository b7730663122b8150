"""Terminal-measurement sampling: the shared plan (gateway/backends/qiskit/measurement.py) and
the Aer adapter's use of it. Which circuits take it, and that what it draws is what the
circuit's physics says.

Expected outcomes are hard-coded from each circuit (X gates, rotations with known
probabilities), never taken from another run of the same path.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pytest
from qiskit import qasm3

from gateway.backends.aer.adapter import AerAdapter
from gateway.backends.qiskit import measurement as sampling
from gateway.domain.circuits import Bindings
from gateway.domain.jobs import SamplerOutput
from tests.unit.test_aer_adapter import (
    context,
    q3,
    run,
    sampler,
    sampler_result,
    spec,
)

H3 = 'OPENQASM 3.0;\ninclude "stdgates.inc";\n'


@pytest.fixture(scope="module")
def aer() -> AerAdapter:
    adapter = AerAdapter(context())
    adapter.warm_up()
    return adapter


def plan_of(text: str) -> sampling.TerminalPlan | None:
    return sampling.terminal_plan(qasm3.loads(H3 + text))


def test_terminal_circuits_get_a_plan_and_others_do_not() -> None:
    assert plan_of("qubit[3] q; bit[3] c; h q[0]; cx q[0], q[1]; c = measure q;") is not None
    # A barrier or another measurement after a measurement is still terminal.
    assert (
        plan_of(
            "qubit[2] q; bit[3] c; h q; c[0] = measure q[0]; barrier q; "
            "c[1] = measure q[0]; c[2] = measure q[1];"
        )
        is not None
    )
    # A gate on another qubit after a measurement commutes with it.
    assert plan_of("qubit[2] q; bit[1] c; c[0] = measure q[0]; h q[1];") is not None
    refused = [
        "qubit[1] q; bit[2] c; h q; c[0] = measure q[0]; h q[0]; c[1] = measure q[0];",
        "qubit[1] q; bit[1] c; h q; reset q[0]; c[0] = measure q[0];",
        "qubit[2] q; bit[2] c; h q[0]; c[0] = measure q[0]; if (c[0]) x q[1]; c[1] = measure q[1];",
        "qubit[2] q; bit[2] c; h q;",  # measures nothing: Aer runs it as it is
    ]
    for text in refused:
        assert plan_of(text) is None, text


def test_where_each_clbit_reads_from() -> None:
    # c[0] is overwritten by q[1]; q[2] lands in two clbits; c[3] is never written.
    plan = plan_of(
        "qubit[3] q; bit[4] c; c[0] = measure q[0]; c[0] = measure q[1]; "
        "c[1] = measure q[2]; c[2] = measure q[2];"
    )
    assert plan is not None
    # Positions follow the qubits that some clbit finally reads: q[1] -> 0, q[2] -> 1.
    assert plan.qubits == (1, 2)
    assert plan.sources == ((0, 0), (1, 1), (2, 1))
    assert not plan.identity
    indices = np.array([0b00, 0b01, 0b10, 0b11])
    assert plan.outcomes(indices).tolist() == [0b000, 0b001, 0b110, 0b111]
    identity = plan_of("qubit[3] q; bit[3] c; c = measure q;")
    assert identity is not None and identity.identity


def test_the_adapter_samples_terminal_circuits_itself(aer: AerAdapter) -> None:
    mps = AerAdapter(context(method="matrix_product_state"))
    ghz = qasm3.loads(H3 + "qubit[3] q; bit[3] c; h q[0]; cx q[0], q[1]; c = measure q;")
    assert aer.terminal_plan("ghz", ghz) is not None
    assert mps.terminal_plan("ghz", ghz) is None  # MPS: Aer's own sampling


def test_permuted_measurements_into_several_registers(aer: AerAdapter) -> None:
    text = (
        "qubit[5] q; bit[2] a; bit[3] b; x q[0]; x q[3]; x q[4];"
        "a[0] = measure q[4]; a[1] = measure q[1];"
        "b[0] = measure q[3]; b[1] = measure q[2]; b[2] = measure q[0];"
    )
    for output in (SamplerOutput.SAMPLES_AND_COUNTS, SamplerOutput.COUNTS):
        _, results = run(aer, spec(sampler(q3(text), shots=7), sampler_output=output))
        result = sampler_result(results[0])
        assert {r.name: dict(r.counts[0]) for r in result.registers} == {
            "a": {"01": 7},
            "b": {"101": 7},
        }


def test_frequencies_follow_the_born_rule(aer: AerAdapter) -> None:
    # ry(theta) then measure: P(1) = sin^2(theta / 2); a Bell pair never gives 01 or 10.
    theta = 1.1
    text = f"qubit[3] q; bit[3] c; ry({theta}) q[0]; h q[1]; cx q[1], q[2]; c = measure q;"
    shots = 20_000
    _, results = run(aer, spec(sampler(q3(text), shots=shots)))
    counts = dict(sampler_result(results[0]).registers[0].counts[0])
    ones = sum(n for bits, n in counts.items() if bits[-1] == "1")
    p = math.sin(theta / 2) ** 2
    assert abs(ones / shots - p) < 5 * math.sqrt(p * (1 - p) / shots)
    assert all(bits[0] == bits[1] for bits in counts)  # q[2] == q[1]
    assert sum(counts.values()) == shots


def test_a_sweep_draws_each_binding_from_its_own_state(aer: AerAdapter) -> None:
    text = "input float[64] theta; qubit[1] q; bit[1] c; rx(theta) q[0]; c[0] = measure q[0];"
    values = np.array([[0.0], [math.pi], [math.pi / 2]])
    pub = sampler(q3(text), shots=4000, bindings=Bindings(("theta",), (3,), values))
    _, results = run(aer, spec(pub))
    counts = [dict(c) for c in sampler_result(results[0]).registers[0].counts]
    assert counts[0] == {"0": 4000}
    assert counts[1] == {"1": 4000}
    assert 1700 < counts[2].get("1", 0) < 2300


def test_density_matrix_method_samples_too() -> None:
    dm = AerAdapter(context(method="density_matrix"))
    text = "qubit[2] q; bit[2] c; x q[1]; c = measure q;"
    _, results = run(dm, spec(sampler(q3(text), shots=5)))
    assert dict(sampler_result(results[0]).registers[0].counts[0]) == {"10": 5}


def test_same_seed_same_samples_counts_equal_counted_samples(aer: AerAdapter) -> None:
    text = "qubit[4] q; bit[4] c; h q; c = measure q;"

    def rows(seed: int, output: SamplerOutput) -> Any:
        _, results = run(aer, spec(sampler(q3(text), shots=300), sampler_output=output), seed)
        return sampler_result(results[0]).registers[0]

    a, b = rows(5, SamplerOutput.SAMPLES_AND_COUNTS), rows(5, SamplerOutput.COUNTS)
    assert a.samples is not None and b.samples is None
    assert dict(a.counts[0]) == dict(b.counts[0])
    assert rows(5, SamplerOutput.SAMPLES).samples.tolist() == a.samples.tolist()
    assert rows(6, SamplerOutput.SAMPLES).samples.tolist() != a.samples.tolist()


def test_a_mid_circuit_measurement_still_collapses_the_state(aer: AerAdapter) -> None:
    # h, measure, h, measure: the first outcome is a fair coin, and so is the second (drawn
    # from the final state alone, both would always read 0, since h h = identity).
    text = "qubit[1] q; bit[2] c; h q[0]; c[0] = measure q[0]; h q[0]; c[1] = measure q[0];"
    _, results = run(aer, spec(sampler(q3(text), shots=2000)))
    counts = dict(sampler_result(results[0]).registers[0].counts[0])
    assert set(counts) == {"00", "01", "10", "11"}
    assert all(300 < n < 700 for n in counts.values())


def test_a_wide_sweep_reads_its_probabilities_in_bounded_chunks(
    aer: AerAdapter, monkeypatch: pytest.MonkeyPatch
) -> None:
    """600 bindings of 12 measured qubits: the simulator is asked for a bounded table of
    probability rows at a time, not one row per binding at once (3000 bindings of 16 qubits
    outgrew the worker's memory), and the draws are those of a single table."""
    from gateway.backends.qiskit import adapter as qiskit_adapter

    text = "input float[64] theta; qubit[12] q; bit[12] c; rx(theta) q[0]; x q[5]; c = measure q;"
    # theta = 0, pi, pi/2: qubit 0 reads 0, 1, then either (so the draws themselves count).
    values = np.array([[(0.0, math.pi, math.pi / 2)[k % 3]] for k in range(600)])
    pub = sampler(q3(text), shots=8, bindings=Bindings(("theta",), (600,), values))
    original = aer.terminal_probabilities
    asked: list[int] = []

    def counted(key: str, plan: Any, parameters: Any, rows: Any) -> Any:
        asked.append(rows.shape[0])
        return original(key, plan, parameters, rows)

    monkeypatch.setattr(aer, "terminal_probabilities", counted)
    _, results = run(aer, spec(pub, sampler_output=SamplerOutput.SAMPLES_AND_COUNTS), seed=3)
    chunked = sampler_result(results[0]).registers[0]
    assert sum(asked) == 600 and len(asked) > 1
    assert max(asked) * (1 << 12) * 48 <= qiskit_adapter.PROBABILITY_TABLE_BYTES
    for k in range(0, 600, 3):
        assert dict(chunked.counts[k]) == {"000000100000": 8}
        assert dict(chunked.counts[k + 1]) == {"000000100001": 8}
        assert set(dict(chunked.counts[k + 2])) <= {"000000100000", "000000100001"}

    asked.clear()
    monkeypatch.setattr(qiskit_adapter, "PROBABILITY_TABLE_BYTES", 1 << 40)
    _, results = run(aer, spec(pub, sampler_output=SamplerOutput.SAMPLES_AND_COUNTS), seed=3)
    assert asked == [600]
    whole = sampler_result(results[0]).registers[0]
    assert whole.samples is not None and chunked.samples is not None
    assert whole.samples.tolist() == chunked.samples.tolist()
