"""The Aer adapter, in process: prepare then execute.

Expected bitstrings, bytes and expectation values are hard-coded from the physics of each
circuit, never taken from another run of the same SDK path.
"""

from __future__ import annotations

import hashlib
import math
import pickle
from collections.abc import Mapping
from typing import Any

import numpy as np
import pytest

from gateway.backends.aer.adapter import AerAdapter
from gateway.backends.base import AdapterContext, CircuitLimits, PreparedJob
from gateway.backends.qiskit import frontend as fe
from gateway.backends.qiskit.adapter import QiskitPayload, SamplerTask
from gateway.domain.backends import BackendKind, BackendLimits, Primitive
from gateway.domain.circuits import (
    Bindings,
    CircuitFeature,
    CircuitLanguage,
    CircuitSource,
    EstimatorPub,
    Observable,
    Pub,
    SamplerPub,
)
from gateway.domain.errors import Code, ExecutionError, InvalidArgument
from gateway.domain.jobs import (
    EstimatorResult,
    JobOptions,
    JobSpec,
    SamplerOutput,
    SamplerResult,
)
from tests.adapters import prepare_in_process
from tests.targets import qpy_bytes

MiB = 1 << 20
H3 = 'OPENQASM 3.0;\ninclude "stdgates.inc";\n'
H2 = 'OPENQASM 2.0;\ninclude "qelib1.inc";\n'


def context(
    budget: int = 1 << 30, max_result_bytes: int = 64 * MiB, **options: Any
) -> AdapterContext:
    return AdapterContext(
        name="aer-test",
        limits=BackendLimits(
            max_shots=100_000,
            memory_budget_bytes=budget,
            max_queued_jobs=100,
            max_result_bytes=max_result_bytes,
        ),
        default_shots=1024,
        circuit_limits=CircuitLimits(),
        options=options,
    )


@pytest.fixture(scope="module")
def aer() -> AerAdapter:
    adapter = AerAdapter(context())
    adapter.warm_up()
    return adapter


@pytest.fixture(scope="module")
def mps() -> AerAdapter:
    return AerAdapter(context(budget=64 * MiB, method="matrix_product_state"))


def q3(text: str) -> CircuitSource:
    return CircuitSource(CircuitLanguage.QASM3, H3 + text)


def q2(text: str) -> CircuitSource:
    return CircuitSource(CircuitLanguage.QASM2, H2 + text)


def sampler(
    source: CircuitSource, shots: int | None = 16, bindings: Bindings | None = None
) -> SamplerPub:
    return SamplerPub(circuit=source, bindings=bindings or Bindings(), shots=shots)


def spec(*pubs: Pub, **options: Any) -> JobSpec:
    return JobSpec(backend="aer-test", pubs=pubs, options=JobOptions(**options))


def run(adapter: AerAdapter, job: JobSpec, seed: int = 1234) -> tuple[PreparedJob, list[Any]]:
    prepared = prepare_in_process(adapter, job, seed)
    # Through pickle, as on the way to a worker process.
    payload = pickle.loads(pickle.dumps(prepared.payload))
    outcome = adapter.execute(payload)
    assert outcome.sdk_versions.keys() == {"qiskit", "qiskit-aer"}
    return prepared, list(outcome.result.pubs)


def refused(adapter: AerAdapter, job: JobSpec, reason: str, field: str) -> InvalidArgument:
    with pytest.raises(InvalidArgument) as info:
        prepare_in_process(adapter, job, 1)
    error = info.value
    assert error.reason == reason, (error.reason, error.message)
    assert error.code is Code.INVALID_ARGUMENT
    assert [v.field for v in error.field_violations] == [field]
    return error


def sampler_result(result: Any) -> SamplerResult:
    assert isinstance(result, SamplerResult)
    return result


def estimator_result(result: Any) -> EstimatorResult:
    assert isinstance(result, EstimatorResult)
    return result


def counts_of(result: SamplerResult) -> Mapping[str, Any]:
    return {r.name: r.counts for r in result.registers}


# ------------------------------------------------------------------------------- basics


def test_info(aer: AerAdapter, mps: AerAdapter) -> None:
    info = aer.info()
    assert info.name == "aer-test"
    assert info.provider == "aer"
    assert info.kind is BackendKind.SIMULATOR
    assert info.num_qubits == 64
    assert info.primitives == {Primitive.SAMPLER, Primitive.ESTIMATOR}
    assert info.features == set(CircuitFeature)
    assert info.properties == {"method": "statevector", "qpy_versions": "13-18"}
    assert info.limits == aer.context.limits
    assert {"cx", "h", "rz", "sx", "x"} <= set(info.basis_gates)
    assert "measure" not in info.basis_gates
    assert mps.info().properties == {
        "method": "matrix_product_state",
        "qpy_versions": "13-18",
    }


def test_bad_options_are_refused() -> None:
    with pytest.raises(ValueError):
        AerAdapter(context(method="stabilizer"))
    with pytest.raises(ValueError):
        AerAdapter(context(max_bond_dimnesion=4))
    # A device's noise on a statevector: one noise trajectory per binding, read as exact.
    with pytest.raises(ValueError, match="noise_from needs method"):
        AerAdapter(context(noise_from="FakeManilaV2"))
    AerAdapter(context(noise_from="FakeManilaV2", method="density_matrix"))


# ---------------------------------------------------------------------------- bit order


BIT_ORDER_QASM3 = """
qubit[13] q;
bit[1] a;
bit[3] b;
bit[9] c;
x q[0];
x q[1]; x q[3];
x q[4]; x q[11]; x q[12];
a[0] = measure q[0];
b[0] = measure q[1]; b[1] = measure q[2]; b[2] = measure q[3];
c[0] = measure q[4]; c[1] = measure q[5]; c[2] = measure q[6];
c[3] = measure q[7]; c[4] = measure q[8]; c[5] = measure q[9];
c[6] = measure q[10]; c[7] = measure q[11]; c[8] = measure q[12];
"""


def test_bit_order_pin(aer: AerAdapter) -> None:
    # a = 1; b[0] = b[2] = 1 -> "101"; c[0] = c[7] = c[8] = 1 -> "110000001" = 0x181.
    _, results = run(aer, spec(sampler(q3(BIT_ORDER_QASM3), shots=5)))
    result = sampler_result(results[0])
    assert result.shape == ()
    assert result.shots == 5
    assert [(r.name, r.num_bits) for r in result.registers] == [("a", 1), ("b", 3), ("c", 9)]
    assert counts_of(result) == {"a": ({"1": 5},), "b": ({"101": 5},), "c": ({"110000001": 5},)}
    a, b, c = (r.samples for r in result.registers)
    assert a is not None and b is not None and c is not None
    assert a.dtype == np.uint8 and a.shape == (5, 1) and a.tolist() == [[1]] * 5
    assert b.shape == (5, 1) and b.tolist() == [[0b101]] * 5
    assert c.shape == (5, 2) and c.tolist() == [[0x01, 0x81]] * 5


def test_bit_order_pin_with_scrambled_measurement_map(aer: AerAdapter) -> None:
    # Register bits filled from qubits in reverse, registers declared out of qubit order.
    text = """
    qreg q[5];
    creg hi[2];
    creg lo[3];
    x q[0]; x q[3];
    measure q[0] -> lo[2]; measure q[1] -> lo[1]; measure q[2] -> lo[0];
    measure q[3] -> hi[0]; measure q[4] -> hi[1];
    """
    _, results = run(aer, spec(sampler(q2(text), shots=3)))
    result = sampler_result(results[0])
    assert counts_of(result) == {"hi": ({"01": 3},), "lo": ({"100": 3},)}
    assert [r.samples.tolist() for r in result.registers if r.samples is not None] == [
        [[1]] * 3,
        [[4]] * 3,
    ]


def test_wide_register_over_64_bits(aer: AerAdapter) -> None:
    text = "qubit[3] q; bit[70] c; x q[0]; x q[2]; c[0] = measure q[0]; c[69] = measure q[2];"
    _, results = run(aer, spec(sampler(q3(text), shots=2)))
    register = sampler_result(results[0]).registers[0]
    assert register.counts == ({"1" + "0" * 68 + "1": 2},)
    assert register.samples is not None and register.samples.shape == (2, 9)
    # 70 bits in 9 bytes: the top 2 padding bits are 0, bit 69 is 0x20 of byte 0.
    assert register.samples[0].tolist() == [0x20, 0, 0, 0, 0, 0, 0, 0, 0x01]


# ---------------------------------------------------------------------------- sweeps


SWEEP = "input float alpha; input float beta; qubit[2] q; bit[2] c; ry(alpha) q[0]; ry(beta) q[1];"
SWEEP += " c = measure q;"


def test_parameter_sweep_of_shape_2x3(aer: AerAdapter) -> None:
    pi = math.pi
    # (beta, alpha) columns, in a different order from the circuit's (alpha, beta).
    table = [
        [(0, 0), (0, pi), (pi, 0)],
        [(pi, pi), (0, 0), (pi, pi)],
    ]
    values = np.array(table, dtype=np.float64).reshape(-1)
    pub = sampler(q3(SWEEP), shots=8, bindings=Bindings(("beta", "alpha"), (2, 3), values))
    prepared, results = run(aer, spec(pub))
    result = sampler_result(results[0])
    assert result.shape == (2, 3)
    # c = (beta bit, alpha bit)
    expected = ["00", "01", "10", "11", "00", "11"]
    assert result.registers[0].counts == tuple({key: 8} for key in expected)
    samples = result.registers[0].samples
    assert samples is not None and samples.shape == (2, 3, 8, 1)
    assert samples[:, :, :, 0].tolist() == [
        [[0] * 8, [1] * 8, [2] * 8],
        [[3] * 8, [0] * 8, [3] * 8],
    ]
    assert prepared.layouts == ((0, 1),)
    # One Aer run for the whole sweep: one task carrying all six bindings.
    assert isinstance(prepared.payload, QiskitPayload)
    task = prepared.payload.tasks[0]
    assert isinstance(task, SamplerTask) and task.values.shape == (2, 3, 2)


def test_sweep_without_parameters_gives_independent_bindings(aer: AerAdapter) -> None:
    pub = sampler(
        q3("qubit[1] q; bit[1] c; x q[0]; c = measure q;"), shots=4, bindings=Bindings((), (3,))
    )
    _, results = run(aer, spec(pub))
    result = sampler_result(results[0])
    assert result.shape == (3,)
    assert result.registers[0].counts == ({"1": 4},) * 3


def test_seeds_reproduce_and_differ(aer: AerAdapter) -> None:
    job = spec(sampler(q3("qubit[4] q; bit[4] c; h q; c = measure q;"), shots=64))

    def samples(seed: int) -> list[Any]:
        _, results = run(aer, job, seed=seed)
        register = sampler_result(results[0]).registers[0]
        assert register.samples is not None
        rows: list[Any] = register.samples.tolist()
        return rows

    assert samples(7) == samples(7)
    assert samples(7) != samples(8)
    # Every outcome is one of the 16 4-bit values.
    assert {row[0] for row in samples(9)} <= set(range(16))


def test_pubs_of_one_job_get_different_seeds(aer: AerAdapter) -> None:
    pub = sampler(q3("qubit[4] q; bit[4] c; h q; c = measure q;"), shots=64)
    _, results = run(aer, spec(pub, pub))
    first, second = (sampler_result(r).registers[0].samples for r in results)
    assert first is not None and second is not None
    assert first.tolist() != second.tolist()


def test_counts_only(aer: AerAdapter) -> None:
    job = spec(sampler(q3(BIT_ORDER_QASM3), shots=9), sampler_output=SamplerOutput.COUNTS)
    prepared, results = run(aer, job)
    assert isinstance(prepared.payload, QiskitPayload)
    assert prepared.payload.sampler_output is SamplerOutput.COUNTS
    result = sampler_result(results[0])
    assert all(r.samples is None for r in result.registers)
    assert counts_of(result) == {"a": ({"1": 9},), "b": ({"101": 9},), "c": ({"110000001": 9},)}
    # The packed form: one outcome row per binding, big-endian, with its count.
    c = result.registers[2].counts[0]
    assert c.outcomes.tolist() == [[0b1, 0b10000001]] and c.counts.tolist() == [9]


def test_samples_only(aer: AerAdapter) -> None:
    job = spec(sampler(q3(BIT_ORDER_QASM3), shots=9), sampler_output=SamplerOutput.SAMPLES)
    result = sampler_result(run(aer, job)[1][0])
    assert all(r.counts == () for r in result.registers)
    c = result.registers[2]
    assert c.samples is not None and c.samples.tolist() == [[0b1, 0b10000001]] * 9


def test_counts_of_many_distinct_outcomes(aer: AerAdapter) -> None:
    # h on 12 qubits: most of the 4096 outcomes appear; both ways of counting agree.
    text = "qubit[12] q; bit[12] c; h q; c = measure q;"
    both = sampler_result(run(aer, spec(sampler(q3(text), shots=20_000)))[1][0])
    only = sampler_result(
        run(aer, spec(sampler(q3(text), shots=20_000), sampler_output=SamplerOutput.COUNTS))[1][0]
    )
    register = both.registers[0]
    assert register.samples is not None
    values = [int.from_bytes(bytes(row), "big") for row in register.samples]
    expected: dict[int, int] = {}
    for v in values:
        expected[v] = expected.get(v, 0) + 1
    for counts in (register.counts[0], only.registers[0].counts[0]):
        outcomes = [int.from_bytes(bytes(row), "big") for row in counts.outcomes]
        assert outcomes == sorted(expected)
        assert dict(zip(outcomes, counts.counts.tolist(), strict=True)) == expected
        assert counts.total == 20_000 and len(counts) > 3000


def test_counts_add_up(aer: AerAdapter) -> None:
    _, results = run(aer, spec(sampler(q3("qubit[3] q; bit[3] c; h q; c = measure q;"), 500)))
    counts = sampler_result(results[0]).registers[0].counts[0]
    assert sum(counts.values()) == 500
    assert set(counts) <= {format(v, "03b") for v in range(8)}


def test_default_shots(aer: AerAdapter) -> None:
    source = q3("qubit[1] q; bit[1] c; c = measure q;")
    _, results = run(aer, spec(sampler(source, shots=None)))
    assert sampler_result(results[0]).shots == 1024
    _, results = run(aer, spec(sampler(source, shots=None), default_shots=3))
    assert sampler_result(results[0]).registers[0].counts == ({"0": 3},)


# -------------------------------------------------------------------------- dynamic


def test_dynamic_circuit(aer: AerAdapter) -> None:
    text = """
    qubit[2] q;
    bit[1] m;
    bit[2] c;
    x q[0];
    m[0] = measure q[0];
    reset q[0];
    if (m[0]) { x q[1]; }
    h q[0];
    h q[0];
    c[0] = measure q[0];
    c[1] = measure q[1];
    """
    _, results = run(aer, spec(sampler(q3(text), shots=20)))
    assert counts_of(sampler_result(results[0])) == {"m": ({"1": 20},), "c": ({"10": 20},)}


def test_while_loop_circuit(aer: AerAdapter) -> None:
    # Repeat until the coin shows 1; then copy it onto q[1].
    text = """
    qubit[2] q;
    bit[1] m;
    bit[1] out;
    h q[0];
    m[0] = measure q[0];
    while (m[0] == false) { reset q[0]; h q[0]; m[0] = measure q[0]; }
    if (m[0]) { x q[1]; }
    out[0] = measure q[1];
    """
    _, results = run(aer, spec(sampler(q3(text), shots=20)))
    assert counts_of(sampler_result(results[0])) == {"m": ({"1": 20},), "out": ({"1": 20},)}


# ------------------------------------------------------------------------- estimator


def estimator(
    source: CircuitSource,
    observables: list[Observable],
    precision: float | None = 0.0,
    bindings: Bindings | None = None,
    shape: tuple[int, ...] | None = None,
) -> EstimatorPub:
    return EstimatorPub(
        circuit=source,
        observables=tuple(observables),
        # One dimension unless told: the API's default for an empty shape.
        observables_shape=(len(observables),) if shape is None else shape,
        bindings=bindings or Bindings(),
        precision=precision,
    )


def single(pauli: str, coefficient: float = 1.0) -> Observable:
    return Observable(((pauli, coefficient),))


BELL = "qubit[2] q; h q[0]; cx q[0], q[1];"
BELL_OBSERVABLES = [
    single("ZZ"),
    single("XX"),
    single("YY"),
    Observable((("ZZ", 0.5), ("XX", 2.0), ("YY", -3.0), ("II", 1.5))),  # 0.5 + 2 + 3 + 1.5
]


def test_estimator_exact_values(aer: AerAdapter) -> None:
    job = spec(
        estimator(q3("qubit[1] q;"), [single("Z")]),
        estimator(q3("qubit[1] q; x q[0];"), [single("Z")]),
        estimator(q3(BELL), BELL_OBSERVABLES),
        # X on qubit 0 only: "IZ" is Z on qubit 0, "ZI" is Z on qubit 1.
        estimator(q3("qubit[2] q; x q[0];"), [single("IZ"), single("ZI")]),
    )
    _, results = run(aer, job)
    expected = [[1.0], [-1.0], [1.0, 1.0, -1.0, 7.0], [-1.0, 1.0]]
    for result, values in zip(results, expected, strict=True):
        est = estimator_result(result)
        assert est.shape == (len(values),)
        assert est.precision == 0.0
        np.testing.assert_allclose(est.expectation_values, values, atol=1e-9)
        assert est.standard_errors.tolist() == [0.0] * len(values)


def test_estimator_with_precision(aer: AerAdapter) -> None:
    job = spec(estimator(q3(BELL), BELL_OBSERVABLES, precision=0.01))
    _, results = run(aer, job, seed=42)
    est = estimator_result(results[0])
    assert est.precision == 0.01
    assert est.standard_errors.tolist() == [0.01] * 4
    # Within 6 standard errors of the exact values (a false failure has odds below 1e-8).
    np.testing.assert_allclose(est.expectation_values, [1.0, 1.0, -1.0, 7.0], atol=0.06)
    assert not np.allclose(est.expectation_values, [1.0, 1.0, -1.0, 7.0], atol=1e-9)
    _, again = run(aer, job, seed=42)
    assert estimator_result(again[0]).expectation_values.tolist() == est.expectation_values.tolist()
    _, other = run(aer, job, seed=43)
    assert estimator_result(other[0]).expectation_values.tolist() != est.expectation_values.tolist()


def test_estimator_default_precision(aer: AerAdapter) -> None:
    _, results = run(aer, spec(estimator(q3("qubit[1] q;"), [single("Z")], precision=None)))
    assert estimator_result(results[0]).standard_errors.tolist() == [0.015625]
    _, results = run(
        aer,
        spec(estimator(q3("qubit[1] q;"), [single("Z")], precision=None), default_precision=0.0),
    )
    assert estimator_result(results[0]).expectation_values.tolist() == [1.0]


def test_estimator_broadcasts_observables_against_bindings(aer: AerAdapter) -> None:
    source = q3("input float theta; qubit[1] q; ry(theta) q[0];")
    pub = estimator(
        source,
        [single("Z"), single("X"), single("Y")],
        bindings=Bindings(("theta",), (2, 1), np.array([0.0, math.pi / 2])),
        shape=(3,),
    )
    _, results = run(aer, spec(pub))
    est = estimator_result(results[0])
    assert est.shape == (2, 3)
    np.testing.assert_allclose(est.expectation_values, [[1, 0, 0], [0, 1, 0]], atol=1e-9)
    assert est.standard_errors.shape == (2, 3)


def test_estimator_cost_is_linear_in_terms_and_observables(
    aer: AerAdapter, monkeypatch: pytest.MonkeyPatch
) -> None:
    """All 256 Pauli strings on |0001> (qubit 0 flipped), in 4096 one-term observables.

    Before: Aer's result data was converted once per term (quadratic: 10k terms took 11 s),
    and the observables were combined through a dense terms x observables matrix (30k x 5k
    terms was 1.2 GB). Counted, not timed: one data read per binding, and a peak of Python
    memory far below the 8 MiB that 256 x 4096 float64 coefficients take.
    """
    import itertools
    import tracemalloc

    from qiskit.result import Result

    paulis = ["".join(p) for p in itertools.product("IXYZ", repeat=4)]

    def exact(pauli: str) -> float:
        if set(pauli) & {"X", "Y"}:
            return 0.0
        return -1.0 if pauli[-1] == "Z" else 1.0  # the last letter acts on qubit 0

    observables = [single(paulis[k % 256], float(k % 7 - 3)) for k in range(4096)]
    source = q3("input float theta; qubit[4] q; x q[0]; rz(theta) q[1];")
    bindings = Bindings(("theta",), (3, 1), np.array([0.0, 0.5, 1.0]))
    job = spec(estimator(source, observables, bindings=bindings, shape=(4096,)))
    prepared = prepare_in_process(aer, job, 7)
    payload = pickle.loads(pickle.dumps(prepared.payload))

    reads: list[int] = []
    original = Result.data

    def counted(self: Result, experiment: Any = None) -> Any:
        reads.append(1)
        return original(self, experiment)

    monkeypatch.setattr(Result, "data", counted)
    tracemalloc.start()
    try:
        outcome = aer.execute(payload)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert len(reads) == 3
    assert peak < 6 * MiB
    est = estimator_result(outcome.result.pubs[0])
    assert est.shape == (3, 4096)
    expected = [exact(paulis[k % 256]) * (k % 7 - 3) for k in range(4096)]
    np.testing.assert_allclose(est.expectation_values, [expected] * 3, atol=1e-9)


# ---------------------------------------------------------------------- memory, MPS


def ghz(n: int) -> str:
    gates = " ".join(f"cx q[{i}], q[{i + 1}];" for i in range(n - 1))
    return f"qubit[{n}] q; bit[{n}] c; h q[0]; {gates} c = measure q;"


def test_forty_qubit_statevector_is_refused(aer: AerAdapter) -> None:
    error = refused(
        aer,
        spec(sampler(q3(ghz(40)))),
        "MEMORY_BUDGET_EXCEEDED",
        "spec.pubs[0].sampler.circuit.qasm3",
    )
    assert error.metadata == {
        "estimateBytes": str(16 * 2**40),
        "budgetBytes": str(1 << 30),
        "method": "statevector",
    }


def test_fifty_qubit_ghz_runs_on_mps(mps: AerAdapter) -> None:
    prepared, results = run(mps, spec(sampler(q3(ghz(50)), shots=100)))
    assert prepared.memory_bytes < 8 * MiB
    counts = sampler_result(results[0]).registers[0].counts[0]
    assert set(counts) <= {"0" * 50, "1" * 50}
    assert sum(counts.values()) == 100


def test_budget_moves_the_statevector_cut_off() -> None:
    job = spec(sampler(q3("qubit[20] q; bit[20] c; x q[19]; c = measure q;"), shots=2))
    refused(
        AerAdapter(context(budget=8 * MiB)),
        job,
        "MEMORY_BUDGET_EXCEEDED",
        "spec.pubs[0].sampler.circuit.qasm3",
    )
    roomy = AerAdapter(context(budget=32 * MiB))
    prepared, results = run(roomy, job)
    assert prepared.memory_bytes == 16 * MiB
    assert sampler_result(results[0]).registers[0].counts == ({"1" + "0" * 19: 2},)


def test_density_matrix_memory() -> None:
    adapter = AerAdapter(context(budget=16 * MiB, method="density_matrix"))
    refused(
        adapter,
        spec(sampler(q3(ghz(11)))),
        "MEMORY_BUDGET_EXCEEDED",
        "spec.pubs[0].sampler.circuit.qasm3",
    )
    prepared, results = run(adapter, spec(sampler(q3(ghz(3)), shots=50)))
    assert prepared.memory_bytes == 16 * 4**3
    assert set(sampler_result(results[0]).registers[0].counts[0]) <= {"000", "111"}


def test_simulator_memory_refusal_is_an_execution_error() -> None:
    # Prepared under a large budget, run by a worker whose Aer is limited to 8 MiB.
    job = spec(sampler(q3("qubit[20] q; bit[20] c; c = measure q;"), shots=1))
    payload = prepare_in_process(AerAdapter(context(budget=32 * MiB)), job, 1).payload
    with pytest.raises(ExecutionError) as info:
        AerAdapter(context(budget=8 * MiB)).execute(payload)
    assert (info.value.reason, info.value.code) == ("OUT_OF_MEMORY", Code.RESOURCE_EXHAUSTED)
    assert info.value.metadata == {"pubIndex": "0"}


# ------------------------------------------------------------------------- caching


def test_circuit_key_is_the_content_and_the_compile_settings(aer: AerAdapter) -> None:
    source = q3("qubit[2] q; bit[2] c; h q[0]; cx q[0], q[1]; c = measure q;")
    assert aer.circuit_key(source) == AerAdapter(context()).circuit_key(source)
    other_text = q3("qubit[2] q; bit[2] c; h q[1]; cx q[0], q[1]; c = measure q;")
    assert aer.circuit_key(other_text) != aer.circuit_key(source)
    # The same text compiles differently for another method or budget: another key.
    mps = AerAdapter(context(method="matrix_product_state"))
    assert mps.circuit_key(source) != aer.circuit_key(source)
    assert AerAdapter(context(budget=8 * MiB)).circuit_key(source) != aer.circuit_key(source)
    # Workers key what they derive from a compiled circuit by its QPY bytes, not by this key.
    ref = aer.compile_circuit(source).ref
    assert ref.key == hashlib.blake2b(ref.data, digest_size=16).hexdigest()


def test_a_fresh_worker_adapter_executes_a_payload(aer: AerAdapter) -> None:
    prepared = prepare_in_process(aer, spec(sampler(q3(BIT_ORDER_QASM3), shots=2)), 5)
    worker = AerAdapter(context())
    outcome = worker.execute(pickle.loads(pickle.dumps(prepared.payload)))
    result = sampler_result(outcome.result.pubs[0])
    assert counts_of(result)["c"] == ({"110000001": 2},)


# ------------------------------------------------------------------------- refusals


def test_bad_inputs_are_refused_with_their_reason(aer: AerAdapter) -> None:
    good = q3("qubit[1] q; bit[1] c; c = measure q;")
    param = q3("input float theta; qubit[1] q; bit[1] c; rx(theta) q[0]; c = measure q;")
    cases: list[tuple[JobSpec, str, str]] = [
        (spec(sampler(good, shots=0)), "INVALID_SHOTS", "spec.pubs[0].sampler.shots"),
        (spec(sampler(good, shots=100_001)), "INVALID_SHOTS", "spec.pubs[0].sampler.shots"),
        (
            spec(sampler(good, shots=None), default_shots=-5),
            "INVALID_SHOTS",
            "spec.options.default_shots",
        ),
        (
            spec(sampler(good), sampler(q3("qubit[1] q; h q[0];"))),
            "NO_MEASUREMENTS",
            "spec.pubs[1].sampler.circuit.qasm3",
        ),
        (
            spec(sampler(q3("qubit[1] q; bit[1] c; box { x q[0]; } c = measure q;"))),
            "UNSUPPORTED_FEATURE",
            "spec.pubs[0].sampler.circuit.qasm3",
        ),
        (
            spec(sampler(param, bindings=Bindings(("phi",), (), np.array([1.0])))),
            "UNKNOWN_PARAMETERS",
            "spec.pubs[0].sampler.parameter_values",
        ),
        (spec(sampler(param)), "UNBOUND_PARAMETERS", "spec.pubs[0].sampler.parameter_values"),
        (
            spec(sampler(param, bindings=Bindings(("theta",), (2,), np.array([1.0])))),
            "INVALID_PARAMETER_VALUES",
            "spec.pubs[0].sampler.parameter_values",
        ),
        (
            spec(sampler(param, bindings=Bindings(("theta",), (), np.array([math.nan])))),
            "INVALID_PARAMETER_VALUES",
            "spec.pubs[0].sampler.parameter_values",
        ),
        (
            spec(sampler(q3("qubit[65] q; bit[1] c;"))),
            "TOO_MANY_QUBITS",
            "spec.pubs[0].sampler.circuit.qasm3",
        ),
        (
            spec(sampler(q3("qubit[1] q; bit[1] c; foo q[0];"))),
            "UNKNOWN_GATE",
            "spec.pubs[0].sampler.circuit.qasm3",
        ),
        (
            spec(sampler(CircuitSource(CircuitLanguage.QASM2, "OPENQASM 2.0;\nqreg q[1];\nx q;"))),
            "UNKNOWN_GATE",
            "spec.pubs[0].sampler.circuit.qasm2",
        ),
        (
            spec(sampler(q3("qubit[1] q; bit[1] c; c = measure q"))),
            "INVALID_QASM",
            "spec.pubs[0].sampler.circuit.qasm3",
        ),
        (
            spec(sampler(q3('include "/etc/passwd"; qubit[1] q;'))),
            "INCLUDE_NOT_ALLOWED",
            "spec.pubs[0].sampler.circuit.qasm3",
        ),
        (
            spec(estimator(q3("qubit[1] q; bit[1] c; c = measure q;"), [single("Z")])),
            "UNSUPPORTED_FEATURE",
            "spec.pubs[0].estimator.circuit.qasm3",
        ),
        (
            spec(estimator(q3("qubit[1] q; reset q[0];"), [single("Z")])),
            "UNSUPPORTED_FEATURE",
            "spec.pubs[0].estimator.circuit.qasm3",
        ),
        (
            spec(estimator(q3("qubit[2] q;"), [single("Z")])),
            "INVALID_OBSERVABLE",
            "spec.pubs[0].estimator.observables",
        ),
        (
            spec(estimator(q3("qubit[1] q;"), [single("Q")])),
            "INVALID_OBSERVABLE",
            "spec.pubs[0].estimator.observables",
        ),
        (
            spec(estimator(q3("qubit[1] q;"), [single("Z")], precision=-1.0)),
            "INVALID_PRECISION",
            "spec.pubs[0].estimator.precision",
        ),
        (
            spec(
                estimator(q3("qubit[1] q;"), [single("Z")], precision=None),
                default_precision=math.inf,
            ),
            "INVALID_PRECISION",
            "spec.options.default_precision",
        ),
        (
            spec(
                estimator(
                    q3("input float theta; qubit[1] q; rx(theta) q[0];"),
                    [single("Z"), single("X")],
                    bindings=Bindings(("theta",), (3,), np.zeros(3)),
                )
            ),
            "INVALID_SHAPE",
            "spec.pubs[0].estimator",
        ),
    ]
    for job, reason, field in cases:
        refused(aer, job, reason, field)


def test_result_size_limit() -> None:
    adapter = AerAdapter(context(max_result_bytes=10_000))
    source = q3("qubit[1] q; bit[1] c; c = measure q;")
    # One byte per shot of samples, 32 bytes of register framing, and counts of at most two
    # outcomes of one byte plus a 2-byte count, with 18 bytes of framing.
    refused(adapter, spec(sampler(source, shots=12_000)), "RESULT_LIMIT_EXCEEDED", "spec.pubs[0]")
    # Each PUB fits (4057 bytes, its register's one-byte name "c" included), the job does not.
    small = sampler(source, shots=4000)
    error = refused(adapter, spec(small, small, small), "RESULT_LIMIT_EXCEEDED", "spec.pubs")
    assert error.metadata == {"estimateBytes": str(3 * 4057), "maxResultBytes": "10000"}
    # Counts only keeps the result small.
    only_counts = SamplerOutput.COUNTS
    _, results = run(adapter, spec(sampler(source, shots=50_000), sampler_output=only_counts))
    assert sampler_result(results[0]).registers[0].counts == ({"0": 50_000},)


def test_assembled_run_reused_matches_aer_own_run(aer: AerAdapter) -> None:
    # A repeated circuit without parameters reuses Aer's assembled form of its run: the
    # probabilities must be Aer's own, on the first run and on every reuse.
    from qiskit import QuantumCircuit

    from gateway.backends.aer import adapter as aer_module

    body = QuantumCircuit(3)
    body.h(0)
    body.ry(0.7, 1)
    body.cx(0, 2)
    plan = aer_module._AerPlan(body.copy())
    plan.circuit.append(
        aer_module.SaveProbabilities(2, label=aer_module._PROBABILITIES),
        [plan.circuit.qubits[0], plan.circuit.qubits[1]],
    )
    own = aer_module._run_raw(aer._sim(), plan.circuit, shots=1, seed_simulator=0)
    expected = np.asarray(own[0]["data"][aer_module._PROBABILITIES])
    c, s = np.cos(0.35) ** 2, np.sin(0.35) ** 2  # qubit 1 after ry(0.7); qubit 0 uniform
    np.testing.assert_allclose(expected, [c / 2, c / 2, s / 2, s / 2], atol=1e-12)
    for _ in range(3):
        got = aer_module._run_assembled(aer._sim(), plan)
        np.testing.assert_allclose(np.asarray(got[0]["data"][aer_module._PROBABILITIES]), expected)
    assert plan.assembled is not None


@pytest.mark.parametrize("device", ["aer", "braket_sv"])
def test_bindings_that_make_an_angle_non_finite_are_the_clients_error(
    aer: AerAdapter, device: str
) -> None:
    """rx(1/th) at th = 0, rx(th*th) at th = 1e200: every input value is finite, the angle is
    not. Before, the sampler failed as a backend fault (counted by the breaker, so one tenant
    could open it for all) and Braket's estimator SUCCEEDED with NaN."""
    from gateway.backends.braket.adapter import BraketAdapter
    from gateway.domain.failures import FailureKind

    adapter = aer if device == "aer" else BraketAdapter(context(device=device))
    zero, huge = np.array([0.0]), np.array([1e200])
    jobs = [
        spec(
            sampler(
                q3("input float th; qubit[1] q; bit[1] c; rx(1/th) q[0]; c[0] = measure q[0];"),
                bindings=Bindings(("th",), (1,), zero),
            )
        ),
        spec(
            estimator(
                q3("input float th; qubit[1] q; rx(th*th) q[0];"),
                [single("Z")],
                bindings=Bindings(("th",), (1,), huge),
            )
        ),
    ]
    for job in jobs:
        with pytest.raises(ExecutionError) as failed:
            run(adapter, job)
        assert failed.value.reason == "NON_FINITE_ANGLE"
        assert failed.value.kind is FailureKind.CLIENT_ERROR
        assert failed.value.metadata["pubIndex"] == "0"


def test_braket_is_admitted_by_its_peak_not_by_its_state() -> None:
    """Braket's simulators peak at ~4x the state: a 12-qubit density matrix (256 MiB) is 1 GiB
    of work, so a 1 GiB budget takes it and a 1023 MiB one does not (it was admitted at
    256 MiB and ran out of the worker's memory)."""
    from gateway.backends.braket.adapter import BraketAdapter

    job = spec(sampler(q3(ghz(12))))
    fits = BraketAdapter(context(budget=1 << 30, device="braket_dm"))
    assert prepare_in_process(fits, job, 1).memory_bytes == 4 * 16 * 4**12
    error = refused(
        BraketAdapter(context(budget=(1 << 30) - MiB, device="braket_dm")),
        job,
        "MEMORY_BUDGET_EXCEEDED",
        "spec.pubs[0].sampler.circuit.qasm3",
    )
    assert error.metadata["estimateBytes"] == str(4 * 16 * 4**12)


def test_a_noisy_braket_density_matrix_is_admitted_by_its_larger_peak() -> None:
    """With noise channels braket_dm peaks at ~6.1-6.6x the density matrix (measured at 11
    and 12 qubits): a 13-qubit noisy job passed the 4x estimate and ran out of memory."""
    from gateway.backends.braket.adapter import BraketAdapter

    job = spec(sampler(q3(ghz(10))))
    noise = {"depolarizing_1q": 0.001}
    noisy = BraketAdapter(context(device="braket_dm", noise=noise))
    assert prepare_in_process(noisy, job, 1).memory_bytes == 7 * 16 * 4**10


def test_estimator_terms_are_priced_as_the_state_passes_they_take() -> None:
    """1000 terms x 900 bindings on 20 qubits (~40 KiB) were admitted as 20 s of work (one
    state pass a term) and ran over an hour on Braket and PennyLane; ~300-750 passes a term
    were measured."""
    words = ["".join("IXYZ"[(i >> (2 * k)) % 4] for k in range(20)) for i in range(1, 1001)]
    observables = [Observable(((word, 1.0),)) for word in words]
    # Every qubit touched: an ideal simulator leaves out qubits nothing acts on (a term on
    # them needs no state pass), and this prices terms on a 20-qubit state.
    text = "input float th; qubit[20] q;" + " ry(th) q[0];" + " h q[1:19];"
    values = np.linspace(0.0, 1.0, 900).reshape(900, 1, 1)
    heavy = estimator(
        q3(text), observables, bindings=Bindings(("th",), (900, 1), values), shape=(1000,)
    )
    refused(
        AerAdapter(context(budget=1 << 30)),
        spec(heavy),
        "EXECUTION_TOO_EXPENSIVE",
        "spec.pubs[0].estimator",
    )


@pytest.mark.parametrize(("device", "copies"), [("lightning.qubit", 2), ("default.qubit", 4)])
def test_pennylane_is_admitted_by_its_peak(device: str, copies: int) -> None:
    """PennyLane peaks at 1.4-2x the state on lightning.qubit and 3-4x on default.qubit
    (measured at 24 qubits); it was estimated at 1x."""
    from gateway.backends.pennylane.adapter import PennyLaneAdapter

    adapter = PennyLaneAdapter(context(device=device))
    assert prepare_in_process(adapter, spec(sampler(q3(ghz(10)))), 1).memory_bytes == (
        copies * 16 * 2**10
    )


def test_braket_pays_for_every_run_of_its_program() -> None:
    """LocalSimulator reads the program again for every binding (~5 ms, and ~0.6 ms per gate):
    a 51 KiB request of 2000 gates x 3000 bindings was admitted as 0.5 ms of work and held
    the backend's one worker for an hour. Aer runs every binding of one assembled circuit."""
    from gateway.backends.braket.adapter import BraketAdapter

    body = "input float th; qubit[2] q; bit[2] c;" + " ry(th) q[0]; cx q[0], q[1];" * 1000
    values = np.linspace(0.0, 1.0, 3000).reshape(3000, 1)
    heavy = spec(sampler(q3(body + " c = measure q;"), 1, Bindings(("th",), (3000,), values)))
    braket = BraketAdapter(context(device="braket_sv"))
    refused(braket, heavy, "EXECUTION_TOO_EXPENSIVE", "spec.pubs[0].sampler")
    prepare_in_process(AerAdapter(context()), heavy, 1)  # Aer: one assembled circuit
    # A sweep of ordinary size is admitted.
    light = spec(
        sampler(q3(ghz(3)), 100, Bindings((), (), np.zeros((0,)))),
        sampler(
            q3("input float th; qubit[1] q; bit[1] c; ry(th) q[0]; c[0] = measure q[0];"),
            100,
            Bindings(("th",), (50,), np.linspace(0.0, 3.0, 50).reshape(50, 1)),
        ),
    )
    prepare_in_process(braket, light, 1)


def test_braket_density_matrices_are_priced_per_entry_above_state_vectors() -> None:
    """braket_dm updates ~1.6e8 density-matrix entries a second, braket_sv ~6.7e8 amplitudes:
    the density matrix's work per amplitude is the larger (it was priced as the state vector's)."""
    from gateway.backends.braket.adapter import BraketAdapter

    dm = BraketAdapter(context(device="braket_dm")).run_costs()
    sv = BraketAdapter(context(device="braket_sv")).run_costs()
    assert dm.per_amplitude > 3 * sv.per_amplitude
    assert (dm.per_run, dm.per_operation_run) == (sv.per_run, sv.per_operation_run)


def test_braket_refuses_a_seed_only_where_it_would_run_shot_by_shot() -> None:
    """LocalSimulator takes no seed: a seeded job whose circuit must run shot by shot would
    silently be unseeded, so it is refused; measurements at the end are sampled with the seed,
    and the same circuit without a seed runs."""
    from gateway.backends.braket.adapter import BraketAdapter

    braket = BraketAdapter(context(device="braket_sv"))
    mid = q3("qubit[1] q; bit[2] c; h q[0]; c[0] = measure q[0]; x q[0]; c[1] = measure q[0];")
    error = refused(
        braket,
        spec(sampler(mid), seed=7),
        "UNSUPPORTED_FEATURE",
        "spec.pubs[0].sampler.circuit.qasm3",
    )
    assert error.metadata.get("feature") == "seed"
    prepare_in_process(braket, spec(sampler(mid)), 1)
    prepare_in_process(braket, spec(sampler(q3(ghz(2))), seed=7), 1)


def test_braket_refuses_more_than_64_clbits_when_preparing() -> None:
    from gateway.backends.braket.adapter import BraketAdapter

    braket = BraketAdapter(context(device="braket_sv"))
    field = "spec.pubs[0].sampler.circuit.qasm3"
    wide = q3("qubit[1] q; bit[65] c; x q[0]; c[64] = measure q[0];")
    assert (
        refused(braket, spec(sampler(wide)), "UNSUPPORTED_FEATURE", field).metadata.get("feature")
        == "clbits"
    )
    prepare_in_process(braket, spec(sampler(q3("qubit[1] q; bit[64] c; c[63] = measure q[0];"))), 1)


@pytest.mark.parametrize(("device", "qubits"), [("braket_sv", 26), ("braket_dm", 13)])
def test_braket_targets_are_as_wide_as_the_simulator_allows(device: str, qubits: int) -> None:
    from gateway.backends.braket.adapter import BraketAdapter

    assert BraketAdapter(context(device=device)).qiskit_target().num_qubits == qubits
    narrow = BraketAdapter(context(device=device, num_qubits=5))
    assert narrow.qiskit_target().num_qubits == 5


def test_pennylane_refuses_a_sampler_measuring_more_than_it_can_sample() -> None:
    """PennyLane samples from exact probabilities only: 21 measured qubits are refused when
    preparing, not failed in the worker."""
    from gateway.backends.pennylane.adapter import PennyLaneAdapter

    adapter = PennyLaneAdapter(context(device="default.qubit"))
    error = refused(
        adapter,
        spec(sampler(q3("qubit[21] q; bit[21] c; c = measure q;"))),
        "UNSUPPORTED_FEATURE",
        "spec.pubs[0].sampler.circuit.qasm3",
    )
    assert error.metadata.get("feature") == "measured_qubits"


def test_pennylane_targets_stop_at_25_qubits() -> None:
    from gateway.backends.pennylane.adapter import PennyLaneAdapter

    assert PennyLaneAdapter(context()).qiskit_target().num_qubits == 25
    assert PennyLaneAdapter(context(num_qubits=7)).qiskit_target().num_qubits == 7


# Angles from bindings on controlled rotations and phases: Aer 0.18 applies these gates wrongly
# when their angles come from parameter_binds (cp(1.1) after x/h read <Z> = 1.0, not 0.4536),
# and the gateway binds every parameterised circuit that way.
CONTROLLED_ANGLES = [
    "cp(theta) q[0], q[1];",
    "crx(theta) q[0], q[1];",
    "cry(theta) q[0], q[1];",
    "crz(theta) q[0], q[1];",
    "cu(theta, 0.3, 0.2, 0.1) q[0], q[1];",
    "ctrl @ ctrl @ p(theta) q[0], q[2], q[1];",
    "ctrl(2) @ ry(theta) q[0], q[2], q[1];",
]


@pytest.mark.parametrize("method", ["statevector", "density_matrix", "matrix_product_state"])
def test_controlled_gates_with_bound_angles_match_qiskit(method: str) -> None:
    from qiskit import qasm3
    from qiskit.primitives import StatevectorEstimator

    adapter = AerAdapter(context(method=method))
    observables = [single("IZI"), single("IXI"), single("IYI")]
    for gate in CONTROLLED_ANGLES:
        text = f"input float[64] theta; qubit[3] q; x q[0]; x q[2]; h q[1]; {gate} h q[1];"
        bindings = Bindings(("theta",), (2,), np.array([[1.1], [2.3]]))
        pub = estimator(q3(text), observables, bindings=bindings, shape=(3, 1))
        _, results = run(adapter, spec(pub))
        got = estimator_result(results[0]).expectation_values
        circuit = qasm3.loads(H3 + text)
        reference = StatevectorEstimator().run(
            [(circuit, [["IZI"], ["IXI"], ["IYI"]], [[1.1], [2.3]])]
        )
        expected = reference.result()[0].data.evs
        np.testing.assert_allclose(got, expected, atol=1e-9, err_msg=f"{method}: {gate}")


def test_a_while_loop_anywhere_marks_the_prepared_job(aer: AerAdapter) -> None:
    # What the runner step's loop limit reads (PreparedJob.has_while_loop).
    declare = "qubit[2] q;\nbit[2] c;\n"
    loop = (
        "c[0] = measure q[0];\nwhile (c[0] == false) { reset q[0]; h q[0]; c[0] = measure q[0]; }\n"
    )
    nested = f"c[1] = measure q[1];\nif (c[1]) {{ {loop} }}\n"
    counted = "for int i in [0:3] { h q[0]; }\nc = measure q;\n"
    for text, expected in ((loop, True), (nested, True), (counted, False)):
        prepared = prepare_in_process(aer, spec(sampler(q3(declare + text), shots=4)), 1)
        assert prepared.has_while_loop is expected, text
    # A job is marked when any of its PUBs has one.
    both = spec(sampler(q3(declare + counted), shots=4), sampler(q3(declare + nested), shots=4))
    assert prepare_in_process(aer, both, 1).has_while_loop


def _chain(qubits: int, pairs: int) -> str:
    """An h/cx chain around `qubits` qubits, measured: the circuit the work unit was measured
    on (24 qubits, 801 operations: 24 s of one Aer thread)."""
    body = "".join(
        f"h q[{i % qubits}]; cx q[{i % qubits}], q[{(i + 1) % qubits}];\n" for i in range(pairs)
    )
    return f"qubit[{qubits}] q;\nbit[1] c;\n{body}c[0] = measure q[0];\n"


def test_work_is_priced_at_the_measured_cost_of_an_amplitude_update() -> None:
    # An amplitude update was counted as one unit (20 ps) where Aer takes ~2 ns: a 24-qubit
    # job of 801 operations (25 s) was admitted at 0.13% of the budget, which allowed hours.
    aer = AerAdapter(context(budget=1 << 30))
    one = spec(sampler(q3(_chain(24, 400)), shots=1000))
    prepare_in_process(aer, one, 1)  # ~27 s of work: within the default ~200 s
    # Eight bindings of it (~3.6 minutes) are past the budget.
    values = np.zeros((8, 1))
    text = "input float th;\n" + _chain(24, 400).replace("h q[0];", "rz(th) q[0]; h q[0];", 1)
    sweep = spec(sampler(q3(text), 1000, Bindings(("th",), (8,), values)))
    refused(aer, sweep, "EXECUTION_TOO_EXPENSIVE", "spec.pubs[0].sampler")
    # A density matrix pays ~3.6x more per entry (measured: 1.4e8 entries a second).
    dm = AerAdapter(context(budget=1 << 30, method="density_matrix"))
    refused(
        dm,
        spec(sampler(q3(_chain(12, 1200)), 1000)),
        "EXECUTION_TOO_EXPENSIVE",
        "spec.pubs[0].sampler",
    )
    prepare_in_process(dm, spec(sampler(q3(_chain(10, 1200)), 1000)), 1)
    # PennyLane's devices at their own measured rates: lightning.qubit ~4x Aer's, default.qubit
    # ~2x slower (one hundred bindings of a 20-qubit chain: ~40 s and ~6 minutes).
    from gateway.backends.pennylane.adapter import PennyLaneAdapter

    chain20 = "input float th;\n" + _chain(20, 400).replace("h q[0];", "rz(th) q[0]; h q[0];", 1)
    hundred = spec(sampler(q3(chain20), 10, Bindings(("th",), (100,), np.zeros((100, 1)))))
    prepare_in_process(
        PennyLaneAdapter(context(budget=1 << 30, device="lightning.qubit")), hundred, 1
    )
    refused(
        PennyLaneAdapter(context(budget=1 << 30, device="default.qubit")),
        hundred,
        "EXECUTION_TOO_EXPENSIVE",
        "spec.pubs[0].sampler",
    )


def test_a_dense_unitary_counts_as_the_gates_it_costs() -> None:
    # `pow` of a 4-qubit gate is a 4-qubit unitary: ~8.5 gates on Aer, counted as one.
    text = (
        "gate g a, b, c, d { h a; cx a, b; cx b, c; cx c, d; t d; }\n"
        "qubit[4] q;\npow(2) @ g q[0], q[1], q[2], q[3];\n"
    )
    aer = AerAdapter(context())
    compiled = aer.compile_circuit(q3(text))
    assert compiled.operations == fe.unitary_steps(4) == 8  # type: ignore[attr-defined]
    assert fe.unitary_steps(1) == fe.unitary_steps(2) == 1


def test_options_reach_the_simulator() -> None:
    adapter = AerAdapter(
        context(
            budget=64 * MiB,
            method="matrix_product_state",
            max_parallel_threads=3,
            max_bond_dimension=7,
        )
    )
    options = adapter._sim().options
    assert options.method == "matrix_product_state"
    assert options.max_parallel_threads == 3
    assert options.matrix_product_state_max_bond_dimension == 7
    assert options.max_memory_mb == 64  # the budget in MiB, as Aer counts it


def test_a_condition_braket_cannot_branch_on_is_refused_at_submission() -> None:
    """`if (c > 1)` (QPY: OpenQASM 3's reader refuses `>` anyway) was accepted, then the job
    failed UNSUPPORTED_FEATURE in the worker."""
    from qiskit import ClassicalRegister, QuantumCircuit, QuantumRegister
    from qiskit.circuit.classical import expr

    from gateway.backends.braket.adapter import BraketAdapter

    def qpy_source(condition: object) -> CircuitSource:
        register = ClassicalRegister(2, "c")
        circuit = QuantumCircuit(QuantumRegister(2, "q"), register)
        circuit.x(0)
        circuit.measure([0, 1], register)
        with circuit.if_test(condition):  # type: ignore[arg-type]
            circuit.x(1)
        circuit.measure([0, 1], register)
        return CircuitSource(CircuitLanguage.QPY, data=qpy_bytes(circuit))

    braket = BraketAdapter(context(device="braket_sv"))
    register = ClassicalRegister(2, "c")
    above = qpy_source(expr.greater(register, 1))
    field = "spec.pubs[0].sampler.circuit.qpy"
    error = refused(braket, spec(sampler(above, 10)), "UNSUPPORTED_FEATURE", field)
    assert "cannot" in error.message
    # A condition it can branch on is still admitted.
    prepare_in_process(braket, spec(sampler(qpy_source((register, 1)), 10)), 1)


# ------------------------------------------------------------------------- binding groups


@pytest.mark.parametrize("terminal", [True, False])
def test_bindings_run_in_groups_give_what_one_run_gives(
    aer: AerAdapter, monkeypatch: pytest.MonkeyPatch, terminal: bool
) -> None:
    # Aer holds a copy of the circuit per binding of a run, so bindings run in groups: the
    # samples (drawn by Aer, seeded per experiment, for a circuit with a mid-circuit
    # measurement; from saved probabilities otherwise) and expectation values stay as one
    # run of every binding gave them.
    from gateway.backends.aer import adapter as aer_module

    middle = "" if terminal else "c[0] = measure q[0]; "
    text = f"input float a; qubit[2] q; bit[2] c; h q[0]; {middle}rx(a) q[0]; cx q[0], q[1]; "
    text += "c = measure q;"
    values = np.linspace(0.0, 3.0, 10).reshape(10, 1)
    sweep = sampler(q3(text), shots=64, bindings=Bindings(("a",), (10,), values))
    observable = estimator(
        q3("input float a; qubit[2] q; h q[0]; rx(a) q[0]; cx q[0], q[1];"),
        [Observable((("ZZ", 1.0), ("XI", 0.5)))],
        bindings=Bindings(("a",), (10,), values),
    )
    job = spec(sweep, observable)
    _, whole = run(aer, job)
    per_binding = aer_module._per_binding(8, 0)
    monkeypatch.setattr(aer_module, "BINDING_GROUP_BYTES", 3 * per_binding)  # groups of 3
    _, grouped = run(aer, job)
    for mine, theirs in zip(
        sampler_result(grouped[0]).registers, sampler_result(whole[0]).registers, strict=True
    ):
        assert np.array_equal(mine.samples, theirs.samples)
    assert counts_of(sampler_result(grouped[0])) == counts_of(sampler_result(whole[0]))
    assert np.array_equal(
        estimator_result(grouped[1]).expectation_values,
        estimator_result(whole[1]).expectation_values,
    )


def test_a_sweeps_memory_is_counted_up_to_one_group(aer: AerAdapter) -> None:
    # Found in review: admission counted the state alone (256 B for 4 qubits) while Aer held
    # ~600 B per operation per binding: 2,000 operations x 100,000 bindings needed ~120 GiB.
    from gateway.backends.aer.adapter import BINDING_GROUP_BYTES

    body = "".join(f"rx(a*{i + 1}) q[0]; cx q[0], q[1]; " for i in range(200))
    text = f"input float a; qubit[2] q; bit[1] c; {body}c[0] = measure q[0];"
    few = Bindings(("a",), (2,), np.array([[0.1], [0.2]]))
    many = Bindings(("a",), (100_000,), np.linspace(0, 1, 100_000).reshape(100_000, 1))
    small = prepare_in_process(aer, spec(sampler(q3(text), bindings=few)), 1)
    large = prepare_in_process(aer, spec(sampler(q3(text), bindings=many)), 1)
    assert small.memory_bytes < large.memory_bytes <= BINDING_GROUP_BYTES + (1 << 20)
