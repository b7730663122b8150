"""Pins found by hand mutation of the Qiskit front end and the Aer adapter: each test fails
on a plausible wrong-number mutation the rest of the suite let through.

Expected values come from the physics of each circuit, never from another run of the same
SDK path.
"""

from __future__ import annotations

import io
import pickle
from typing import Any

import numpy as np
import pytest
from qiskit import qpy

from gateway.backends.aer.adapter import AerAdapter
from gateway.backends.ibm.adapter import IbmAdapter
from gateway.backends.qiskit import measurement
from gateway.domain import bitarray
from gateway.domain.circuits import (
    Bindings,
    CircuitLanguage,
    CircuitSource,
    EstimatorPub,
    Observable,
    SamplerPub,
)
from gateway.domain.jobs import (
    EstimatorResult,
    JobOptions,
    JobSpec,
    SamplerOutput,
    SamplerResult,
)
from tests.adapters import prepare_in_process
from tests.unit.test_aer_adapter import context as aer_context
from tests.unit.test_ibm_adapter import context as ibm_context

pytestmark = pytest.mark.timeout(30)

H3 = 'OPENQASM 3.0;\ninclude "stdgates.inc";\n'


def aer_adapter(**options: Any) -> AerAdapter:
    return AerAdapter(aer_context(**options))


def q3(text: str) -> CircuitSource:
    return CircuitSource(CircuitLanguage.QASM3, H3 + text)


def test_bindings_of_a_sweep_get_independent_draws() -> None:
    # Four bindings of a 6-qubit uniform superposition, 32 shots each: independent draws
    # coincide with probability 64**-32 per pair. Drawing every binding from a freshly
    # seeded generator would give four identical sample lists.
    adapter = aer_adapter()
    pub = SamplerPub(
        circuit=q3("qubit[6] q; bit[6] c; h q; c = measure q;"),
        bindings=Bindings((), (4,)),
        shots=32,
    )
    job = JobSpec(backend="aer-test", pubs=(pub,), options=JobOptions())
    prepared = prepare_in_process(adapter, job, 99)
    outcome = adapter.execute(pickle.loads(pickle.dumps(prepared.payload)))
    result = outcome.result.pubs[0]
    assert isinstance(result, SamplerResult) and result.shape == (4,)
    samples = result.registers[0].samples
    assert samples is not None and samples.shape == (4, 32, 1)
    rows = [tuple(samples[b, :, 0].tolist()) for b in range(4)]
    assert len(set(rows)) == 4
    # Each binding's counts are its own samples counted.
    for b, counts in enumerate(result.registers[0].counts):
        assert sum(counts.values()) == 32
        assert counts == {format(v, "06b"): rows[b].count(v) for v in set(rows[b])}


def test_optimization_level_option_reaches_the_transpiler() -> None:
    # h; h is the identity: level 1 and above cancel the pair, level 0 keeps both gates.
    source = q3("qubit[1] q; bit[1] c; h q[0]; h q[0]; c[0] = measure q[0];")
    kept = aer_adapter(optimization_level=0).compile_circuit(source).operations
    cancelled = aer_adapter(optimization_level=3).compile_circuit(source).operations
    assert kept == cancelled + 2


@pytest.mark.parametrize("level", [1, 3])
def test_a_constant_expression_of_a_parameter_compiles_and_runs_at_every_level(
    level: int,
) -> None:
    # Level 3 failed copying the circuit (a TypeError in Qiskit on `p(0*th)`): INTERNAL.
    source = q3(
        "input float[64] th; qubit[1] q; bit[1] c; h q[0]; p(0*th) q[0]; rz(th - th) q[0]; "
        "h q[0]; c[0] = measure q[0];"
    )
    adapter = aer_adapter(optimization_level=level)
    assert adapter.compile_circuit(source).parameters == ("th",)
    bindings = Bindings((), (), np.array([0.7]))
    pub = SamplerPub(circuit=source, bindings=bindings, shots=64)
    job = JobSpec(backend="aer-test", pubs=(pub,), options=JobOptions())
    outcome = adapter.execute(
        pickle.loads(pickle.dumps(prepare_in_process(adapter, job, 5).payload))
    )
    result = outcome.result.pubs[0]
    assert isinstance(result, SamplerResult)
    assert result.registers[0].counts == ({"0": 64},)  # h p(0) h is the identity


def ibm_adapter(**options: Any) -> IbmAdapter:
    return IbmAdapter(ibm_context(**options))


def test_seed_transpiler_makes_routing_reproducible() -> None:
    # Every qubit talks to every other on Manila's 5-qubit line: Sabre has many equally good
    # layouts and swaps to pick from, at random unless the configured seed reaches it. Fresh
    # adapters (fresh pass managers) must compile the same bytes.
    pairs = [(a, b) for a in range(5) for b in range(5) if a < b]
    body = " ".join(f"cx q[{a}], q[{b}]; h q[{b}];" for a, b in pairs)
    source = q3(f"qubit[5] q; bit[5] c; h q; {body} c = measure q;")
    compiled = [ibm_adapter(seed_transpiler=11).compile_circuit(source) for _ in range(6)]
    # By content: the QPY bytes (and so ref.key) also hold the circuit's generated name.
    circuits = [qpy.load(io.BytesIO(c.ref.data))[0] for c in compiled]
    assert {c.layout for c in compiled} == {compiled[0].layout}
    assert all(circuit == circuits[0] for circuit in circuits)


def test_aer_two_letter_terms_act_on_the_right_qubits() -> None:
    # |q1 q0> = |0>|+>. Qiskit labels put qubit 0 last: "ZX" is X on q0 and Z on q1 (1 x 1),
    # "XZ" is Z on q0 and X on q1 (0 x 0). Single letters and palindromes such as "ZZ" read
    # the same either way round, so only mixed terms pin the order.
    adapter = aer_adapter()
    observables = (Observable((("ZX", 1.0),)), Observable((("XZ", 1.0),)))
    pub = EstimatorPub(
        circuit=q3("qubit[2] q; h q[0];"),
        observables=observables,
        observables_shape=(2,),
        bindings=Bindings(),
        precision=0.0,
    )
    job = JobSpec(backend="aer-test", pubs=(pub,), options=JobOptions())
    prepared = prepare_in_process(adapter, job, 5)
    result = adapter.execute(pickle.loads(pickle.dumps(prepared.payload))).result.pubs[0]
    assert isinstance(result, EstimatorResult)
    np.testing.assert_allclose(result.expectation_values, [1.0, 0.0], atol=1e-9)


def test_draw_tolerates_a_simulators_rounding_below_zero() -> None:
    # A density-matrix simulator can report -1e-17 for an impossible outcome; numpy refuses
    # negative weights, so they are clipped to 0 (never drawn) and the rest renormalised.
    probabilities = np.array([0.25, -1e-17, 0.75 + 1e-17, 0.0])
    drawn = measurement.draw(probabilities, 4000, np.random.default_rng(3))
    assert set(drawn.tolist()) <= {0, 2}
    # 1000 expected zeros, standard deviation about 27: 6 sigma either way.
    assert abs(int(np.count_nonzero(drawn == 0)) - 1000) < 165


@pytest.mark.parametrize("output", list(SamplerOutput))
def test_a_circuit_that_writes_no_bit_reads_zero_in_every_shot(output: SamplerOutput) -> None:
    adapter = aer_adapter()
    pub = SamplerPub(
        circuit=q3("qubit[2] q; bit[3] c; h q[0]; cx q[0], q[1];"),
        bindings=Bindings((), (2,)),
        shots=7,
    )
    job = JobSpec(backend="aer-test", pubs=(pub,), options=JobOptions(sampler_output=output))
    prepared = prepare_in_process(adapter, job, 1)
    result = adapter.execute(pickle.loads(pickle.dumps(prepared.payload))).result.pubs[0]
    assert isinstance(result, SamplerResult)
    register = result.registers[0]
    if output.samples:
        assert register.samples is not None
        assert register.samples.tolist() == [[[0]] * 7] * 2
    if output.counts:
        assert register.counts == ({"000": 7}, {"000": 7})


def test_short_bitstrings_are_left_padded_and_long_ones_keep_their_low_bits() -> None:
    # Column j is clbit j; character 0 is the highest clbit.
    bits = bitarray.bits_from_bitstrings(["1", "10", "1 01", "1110"], 3)
    assert bits.tolist() == [[1, 0, 0], [0, 1, 0], [1, 0, 1], [0, 1, 1]]
