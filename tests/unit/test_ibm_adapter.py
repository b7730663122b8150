"""The IBM adapter in process, on qiskit-ibm-runtime's FakeManilaV2 in local mode.

Ideal answers are derived by hand from each circuit; the fake's calibrated noise (readout 2-5 %
per qubit, CX near 1 %) bounds how far a result may be from them.
"""

from __future__ import annotations

import dataclasses
import math
import pickle
from typing import Any

import numpy as np
import pytest
from pydantic import ValidationError
from qiskit import QuantumCircuit
from qiskit.transpiler.exceptions import TranspilerError

from gateway.backends import registry
from gateway.backends.base import AdapterContext, CircuitLimits, PreparedJob
from gateway.backends.ibm import adapter as ibm
from gateway.backends.ibm.adapter import IbmAdapter, IbmPayload
from gateway.backends.ibm.options import TOKEN_ENV, IbmOptions, IbmProviderOptions
from gateway.backends.qiskit import idle
from gateway.backends.qiskit.adapter import CompiledCircuit
from gateway.backends.qiskit.fakes import fake_backend
from gateway.domain import bitarray
from gateway.domain.backends import BackendKind, BackendLimits
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
from gateway.domain.errors import ExecutionError, InvalidArgument
from gateway.domain.failures import FailureKind
from gateway.domain.jobs import EstimatorResult, JobOptions, JobSpec, SamplerResult
from tests.adapters import prepare_in_process
from tests.targets import qpy_bytes

H3 = 'OPENQASM 3.0;\ninclude "stdgates.inc";\n'
NAME = "ibm-fake-manila"


def context(**options: Any) -> AdapterContext:
    return AdapterContext(
        name=NAME,
        limits=BackendLimits(
            max_shots=100_000,
            memory_budget_bytes=1 << 30,
            max_queued_jobs=10,
            max_result_bytes=64 << 20,
        ),
        default_shots=1024,
        circuit_limits=CircuitLimits(),
        options={"backend": "FakeManilaV2", **options},
    )


def device_context(**options: Any) -> AdapterContext:
    """A device on IBM's service (the cloud runner's), whose target the gateway has fetched:
    FakeManilaV2's, handed over as to a compile worker, so nothing reaches the network."""
    return dataclasses.replace(
        context(backend="ibm_device", token="unused", instance="crn:unused", **options),
        target_data=pickle.dumps(fake_backend("FakeManilaV2").target),
    )


@pytest.fixture(scope="module")
def manila() -> IbmAdapter:
    adapter = IbmAdapter(context())
    adapter.warm_up()
    return adapter


def q3(text: str) -> CircuitSource:
    return CircuitSource(CircuitLanguage.QASM3, H3 + text)


def spec(*pubs: Pub, **options: Any) -> JobSpec:
    return JobSpec(backend=NAME, pubs=pubs, options=JobOptions(**options))


def sampler(text: str, shots: int = 2000, bindings: Bindings | None = None) -> SamplerPub:
    return SamplerPub(circuit=q3(text), bindings=bindings or Bindings(), shots=shots)


def run(adapter: IbmAdapter, job: JobSpec, seed: int = 7) -> tuple[PreparedJob, list[Any]]:
    prepared = prepare_in_process(adapter, job, seed)
    payload = pickle.loads(pickle.dumps(prepared.payload))  # as on the way to a worker
    outcome = adapter.execute(payload)
    assert set(outcome.sdk_versions) == {"qiskit", "qiskit-ibm-runtime", "qiskit-aer"}
    return prepared, list(outcome.result.pubs)


def total_variation(counts: dict[str, int], ideal: dict[str, float]) -> float:
    total = sum(counts.values())
    keys = set(counts) | set(ideal)
    return 0.5 * sum(abs(counts.get(k, 0) / total - ideal.get(k, 0.0)) for k in keys)


# ------------------------------------------------------------------------- options, info


def test_registered_as_the_ibm_entry_point() -> None:
    assert registry.load_adapter("ibm") is IbmAdapter


def test_token_is_secret_and_read_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(TOKEN_ENV, raising=False)
    bare = IbmOptions.model_validate({"backend": "FakeManilaV2"})
    assert bare.token is None and not bare.has_credentials and bare.is_fake
    monkeypatch.setenv(TOKEN_ENV, "s3cr3t-from-env")
    options = IbmOptions.model_validate(
        {"backend": "ibm_brisbane", "channel": "ibm_cloud", "instance": "crn:v1:x"}
    )
    assert options.token is not None and options.token.get_secret_value() == "s3cr3t-from-env"
    assert options.has_credentials and not options.is_fake
    for text in (repr(options), str(options), options.model_dump_json()):
        assert "s3cr3t" not in text
    configured = IbmOptions.model_validate({"backend": "FakeManilaV2", "token": "from-config"})
    assert configured.token is not None and configured.token.get_secret_value() == "from-config"
    with pytest.raises(ValidationError):
        IbmOptions.model_validate({"backend": "FakeManilaV2", "tokn": "typo"})
    with pytest.raises(ValidationError):
        IbmOptions.model_validate({"backend": "FakeManilaV2", "channel": "ibm_quantum"})


def test_no_credentials_no_runner(manila: IbmAdapter, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(TOKEN_ENV, raising=False)
    assert IbmAdapter(context()).create_runner() is None
    # A fake backend stays local even when the environment holds a token.
    monkeypatch.setenv(TOKEN_ENV, "s3cr3t-from-env")
    assert IbmAdapter(context()).create_runner() is None


def test_info_and_target_are_the_fake_device(manila: IbmAdapter) -> None:
    info = manila.info()
    assert info.provider == "ibm"
    assert info.kind is BackendKind.SIMULATOR  # a local simulation, not IBM's hardware
    assert info.num_qubits == 5
    assert set(info.basis_gates) == {"cx", "id", "rz", "sx", "x"}
    assert info.features == frozenset(CircuitFeature)
    target = manila.target()
    assert target.num_qubits == 5
    cx = next(i for i in target.instructions if i.name == "cx")
    # Manila is a line 0-1-2-3-4: CX only between neighbours.
    assert {tuple(sorted(q.qubits)) for q in cx.qargs} == {(0, 1), (1, 2), (2, 3), (3, 4)}


def test_circuits_compile_to_isa_on_the_fake_target(manila: IbmAdapter) -> None:
    # A star from q[0] cannot sit on a line: routing is needed, and the result is ISA.
    compiled = manila.compile_circuit(
        q3(
            "qubit[4] q; bit[4] c; h q[0]; cx q[0], q[1]; cx q[0], q[2]; cx q[0], q[3]; "
            "c = measure q;"
        )
    )
    assert isinstance(compiled, CompiledCircuit)
    circuit: QuantumCircuit = compiled.ref.circuit()
    target = manila.qiskit_target()
    for instruction in circuit.data:
        name = instruction.operation.name
        if name == "barrier":
            continue
        qargs = tuple(circuit.find_bit(q).index for q in instruction.qubits)
        assert target.instruction_supported(name, qargs), (name, qargs)
    assert circuit.num_qubits == 5


# ------------------------------------------------------------------------------ sampler


BIT_ORDER = (
    "qubit[5] q; bit[1] a; bit[3] b; bit[2] c;\n"
    "x q[0]; x q[1]; x q[2]; x q[3];\n"
    "a[0] = measure q[3]; b[0] = measure q[4]; b[2] = measure q[0]; c[1] = measure q[1];\n"
)


def test_bit_order_across_registers_within_noise(manila: IbmAdapter) -> None:
    _, results = run(manila, spec(sampler(BIT_ORDER)))
    result = results[0]
    assert isinstance(result, SamplerResult)
    assert [(r.name, r.num_bits) for r in result.registers] == [("a", 1), ("b", 3), ("c", 2)]
    expected = {"a": "1", "b": "100", "c": "10"}
    for register in result.registers:
        counts = dict(register.counts[0])
        assert sum(counts.values()) == 2000
        # Readout errors of a few percent: the expected value dominates.
        assert counts[expected[register.name]] / 2000 > 0.85, (register.name, counts)


def test_a_wide_register_is_unpacked_a_few_shots_at_a_time(
    manila: IbmAdapter, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The runtime's packed rows are unpacked a bounded number of shots at a time: every shot
    of every binding at once took a byte per clbit per shot (800 MB for 8000 shots of a
    100,000-bit register). The bits still land where the circuit measured them."""
    monkeypatch.setattr(bitarray, "_UNPACK_BYTES", 200 * 64)
    unpacked: list[int] = []
    unpack = ibm.unpack_rows

    def counted(packed: Any, num_bits: int) -> Any:
        unpacked.append(packed.shape[0])
        return unpack(packed, num_bits)

    monkeypatch.setattr(ibm, "unpack_rows", counted)
    text = "qubit[2] q; bit[200] w; bit m; x q[0]; w[150] = measure q[0]; m = measure q[1];"
    _, results = run(manila, spec(sampler(text, shots=300)))
    result = results[0]
    assert isinstance(result, SamplerResult)
    wide, loose = result.registers
    assert (wide.name, wide.num_bits, loose.name) == ("w", 200, "m")
    ones = dict(wide.counts[0]).get("0" * 49 + "1" + "0" * 150, 0)
    assert ones > 270  # readout errors of a few percent
    assert dict(loose.counts[0]).get("0", 0) > 270
    step = (200 * 64) // 201  # shots per unpack: the bound over the circuit's 201 clbits
    assert max(unpacked) == step and sum(unpacked) == 2 * 300  # two registers


def test_an_empty_register_beside_more_than_64_clbits_runs(manila: IbmAdapter) -> None:
    """The runtime's sampler fails on a register of no bits once a circuit has more than 64
    clbits, which counted against the backend's breaker: such a register is not sent, and
    reads empty."""
    from qiskit import ClassicalRegister, QuantumRegister
    from qiskit.circuit import Clbit

    bits = [Clbit() for _ in range(70)]
    circuit = QuantumCircuit(QuantumRegister(2, "q"))
    circuit.add_bits(bits)
    circuit.add_register(ClassicalRegister(name="z", bits=[]))
    circuit.add_register(ClassicalRegister(name="w", bits=bits))
    circuit.x(0)
    circuit.measure(0, bits[0])
    source = CircuitSource(CircuitLanguage.QPY, data=qpy_bytes(circuit))
    _, results = run(manila, spec(SamplerPub(circuit=source, bindings=Bindings(), shots=50)))
    result = results[0]
    assert isinstance(result, SamplerResult)
    empty, wide = result.registers
    assert (empty.name, empty.num_bits, dict(empty.counts[0])) == ("z", 0, {"": 50})
    assert (wide.name, wide.num_bits) == ("w", 70)
    assert dict(wide.counts[0]).get("0" * 69 + "1", 0) > 40


def test_registers_of_scattered_or_reordered_bits_read_their_own_bits(
    manila: IbmAdapter,
) -> None:
    """The runtime's sampler reads a register as a run from its first bit's index: a register
    of reordered bits (only QPY can carry one) read `00` for `10`, every other backend right."""
    from qiskit import ClassicalRegister, QuantumRegister
    from qiskit.circuit import Clbit

    bits = [Clbit() for _ in range(4)]
    circuit = QuantumCircuit(QuantumRegister(4, "q"), bits)
    circuit.add_register(ClassicalRegister(name="r", bits=[bits[1], bits[0]]))
    circuit.add_register(ClassicalRegister(name="a", bits=[bits[0], bits[2]]))
    circuit.add_register(ClassicalRegister(name="b", bits=[bits[3]]))
    circuit.x([0, 2])
    circuit.measure(range(4), range(4))  # clbits 1, 0, 1, 0
    source = CircuitSource(CircuitLanguage.QPY, data=qpy_bytes(circuit))
    _, results = run(manila, spec(SamplerPub(circuit=source, bindings=Bindings(), shots=500)))
    result = results[0]
    assert isinstance(result, SamplerResult)
    counts = {r.name: dict(r.counts[0]) for r in result.registers}
    # r = (clbit 1, clbit 0) = (0, 1): "10"; a = (clbit 0, clbit 2) = (1, 1): "11"; b: "0".
    # Hard-coded, and dominant within Manila's readout noise.
    expected = {"r": "10", "a": "11", "b": "0"}
    for name, bitstring in expected.items():
        assert counts[name].get(bitstring, 0) > 400, (name, counts[name])
    assert [r.name for r in result.registers] == ["r", "a", "b"]  # the added one not shown


def test_loose_bits_are_returned(manila: IbmAdapter) -> None:
    _, results = run(
        manila,
        spec(
            sampler(
                "qubit[2] q; bit m; bit n; x q[1]; m = measure q[0]; n = measure q[1];", shots=500
            )
        ),
    )
    result = results[0]
    assert isinstance(result, SamplerResult)
    counts = {r.name: dict(r.counts[0]) for r in result.registers}
    assert set(counts) == {"m", "n"}
    assert counts["m"].get("0", 0) > 450 and counts["n"].get("1", 0) > 450


def test_ghz_is_close_to_ideal_and_seeds_reproduce(manila: IbmAdapter) -> None:
    ghz = "qubit[3] q; bit[3] c; h q[0]; cx q[0], q[1]; cx q[1], q[2]; c = measure q;"
    job = spec(sampler(ghz, shots=4000))
    _, first = run(manila, job, seed=11)
    counts = dict(first[0].registers[0].counts[0])
    # Noise leaves most of the weight on 000 and 111; the bound fails a wrong bit order.
    assert total_variation(counts, {"000": 0.5, "111": 0.5}) < 0.15, counts
    assert sum(v for k, v in counts.items() if k not in ("000", "111")) > 0  # noisy, really
    _, again = run(manila, job, seed=11)
    assert first[0].registers[0].samples.tolist() == again[0].registers[0].samples.tolist()
    _, other = run(manila, job, seed=12)
    assert first[0].registers[0].samples.tolist() != other[0].registers[0].samples.tolist()


def test_parameter_sweep(manila: IbmAdapter) -> None:
    text = "input float theta; qubit[1] q; bit[1] c; ry(theta) q[0]; c = measure q;"
    bindings = Bindings(("theta",), (3,), np.array([0.0, math.pi, math.pi / 2]))
    _, results = run(manila, spec(sampler(text, shots=2000, bindings=bindings)))
    result = results[0]
    assert isinstance(result, SamplerResult) and result.shape == (3,)
    ones = [dict(c).get("1", 0) / 2000 for c in result.registers[0].counts]
    assert ones[0] < 0.1 and ones[1] > 0.9 and abs(ones[2] - 0.5) < 0.1, ones


def test_mid_circuit_measurement_and_feed_forward(manila: IbmAdapter) -> None:
    text = (
        "qubit[2] q; bit[2] c; x q[0]; c[0] = measure q[0]; if (c[0]) { x q[1]; } "
        "c[1] = measure q[1];"
    )
    _, results = run(manila, spec(sampler(text, shots=400)))
    counts = dict(results[0].registers[0].counts[0])
    assert max(counts, key=lambda k: counts[k]) == "11", counts


# ---------------------------------------------------------------------------- estimator


STAR = "input float phi; qubit[4] q; ry(phi) q[0]; cx q[0], q[1]; cx q[0], q[2]; cx q[0], q[3];"


def test_estimator_through_a_routed_layout(manila: IbmAdapter) -> None:
    observables = (
        Observable((("IIIZ", 1.0),)),
        Observable((("ZZ", 1.0, (3, 0)),)),
        Observable((("XXXX", 1.0),)),
        Observable((("Z", 0.5, (1,)), ("X", 2.0, (2,)))),
    )
    angles = [0.0, 0.9]
    pub = EstimatorPub(
        circuit=q3(STAR),
        observables=observables,
        observables_shape=(4,),
        bindings=Bindings(("phi",), (2, 1), np.array(angles)),
        precision=0.02,
    )
    prepared, results = run(manila, spec(pub, provider_options={"resilience_level": 0}))
    assert prepared.layouts[0] != (0, 1, 2, 3)  # mapped through a real layout
    est = results[0]
    assert isinstance(est, EstimatorResult) and est.shape == (2, 4)
    ideal = np.array([[math.cos(t), 1.0, math.sin(t), 0.5 * math.cos(t)] for t in angles])
    assert np.abs(est.expectation_values - ideal).max() < 0.3, est.expectation_values
    assert est.precision == 0.02
    # The runtime's own standard errors, from its shots (about the precision asked for).
    assert (est.standard_errors > 0).all() and (est.standard_errors < 0.05).all()


def test_exact_precision_runs_at_the_runtime_default(manila: IbmAdapter) -> None:
    pub = EstimatorPub(
        circuit=q3("qubit[1] q; x q[0];"),
        observables=(Observable((("Z", 1.0),)),),
        observables_shape=(1,),
        bindings=Bindings(),
        precision=0.0,
    )
    _, results = run(manila, spec(pub, provider_options={"resilience_level": 0}))
    est = results[0]
    assert isinstance(est, EstimatorResult)
    assert est.precision == 0.015625
    assert -1.0 <= est.expectation_values[0] < -0.85


def zero_refused(adapter: IbmAdapter, job: JobSpec) -> ExecutionError:
    prepared = prepare_in_process(adapter, job, 1)
    with pytest.raises(ExecutionError) as info:
        adapter.execute(pickle.loads(pickle.dumps(prepared.payload)))
    return info.value


def test_a_zero_observable_fails_the_job_as_the_clients(manila: IbmAdapter) -> None:
    # The runtime's estimator refuses an observable that simplifies to zero; its ValueError
    # failed the job as an SDK error (on the cloud path, a backend fault the breaker counts).
    def pub(*observables: Observable) -> EstimatorPub:
        return EstimatorPub(
            circuit=q3("qubit[3] q; h q[0];"),
            observables=observables,
            observables_shape=(len(observables),),
            bindings=Bindings(),
        )

    fine = Observable((("IZI", 1.0),))
    for zero in (
        Observable((("IIZ", 0.0),)),
        Observable((("IXI", 0.5), ("X", -0.5, (1,)))),  # dense and sparse forms cancel
        Observable((("ZZI", 1e-9),)),  # zero as the runtime reads it: within its tolerance
        Observable((("III", 1.0), ("I", -1.0, (2,)))),  # identities cancelling
        Observable((("ZX", 2.0, (2, 0)), ("ZIX", -2.0))),  # sparse past the dense ones
    ):
        error = zero_refused(manila, spec(pub(fine, zero)))
        assert error.reason == "INVALID_OBSERVABLE", error
        assert error.kind is FailureKind.CLIENT_ERROR
        assert "observable 1 is zero" in str(error), error
    # Nearly cancelling is not zero, nor is an identity alone: they run.
    nearly = Observable((("IXI", 0.5), ("IXI", -0.25)))
    _, results = run(manila, spec(pub(fine, nearly, Observable((("III", 0.5),)))))
    assert isinstance(results[0], EstimatorResult)
    assert results[0].expectation_values[2] == pytest.approx(0.5)


def test_coefficients_whose_squares_overflow_fail_the_job_as_the_clients(
    manila: IbmAdapter,
) -> None:
    # The runtime adds coefficient**2 into the variance: OverflowError, an INTERNAL
    # EXECUTION_FAILED after the run, for an observable every other backend answers.
    def pub(observable: Observable) -> EstimatorPub:
        return EstimatorPub(
            circuit=q3("qubit[2] q; h q[0]; cx q[0], q[1];"),
            observables=(Observable((("ZZ", 1.0),)), observable),
            observables_shape=(2,),
            bindings=Bindings(),
        )

    for huge, largest in (
        (Observable((("ZZ", 1.4e154),)), "1.4e+154"),
        (Observable((("ZZ", 9e153), ("ZZ", 9e153))), "1.8e+154"),  # merged by the runtime
    ):
        error = zero_refused(manila, spec(pub(huge)))
        assert error.reason == "INVALID_OBSERVABLE", error
        assert error.kind is FailureKind.CLIENT_ERROR
        assert f"observable 1 has a coefficient of {largest}" in str(error), error
    # Just below the bound, and huge terms that cancel when merged: they run.
    _, results = run(manila, spec(pub(Observable((("ZZ", 1.3e154),)))))
    assert isinstance(results[0], EstimatorResult)
    assert 1.1e154 < results[0].expectation_values[1] <= 1.3e154
    cancelled = Observable((("ZZ", 1e154), ("ZZ", -1e154), ("XX", 1.0)))
    _, results = run(manila, spec(pub(cancelled)))
    assert isinstance(results[0], EstimatorResult)
    assert 0.8 < results[0].expectation_values[1] <= 1.0


# ---------------------------------------------------------------------- provider options


def refused(adapter: IbmAdapter, job: JobSpec, field: str) -> InvalidArgument:
    with pytest.raises(InvalidArgument) as info:
        adapter.validate_provider_options(
            job.options.provider_options, "spec.options.provider_options"
        )
        prepare_in_process(adapter, job, 1)
    error = info.value
    assert error.reason == "INVALID_PROVIDER_OPTIONS", error
    assert field in [v.field for v in error.field_violations], error.field_violations
    return error


@pytest.mark.parametrize(
    ("options", "field"),
    [
        ({"resilience_level": 3.0}, "spec.options.provider_options.resilience_level"),
        ({"resilience_level": 1.5}, "spec.options.provider_options.resilience_level"),
        ({"resilence_level": 1.0}, "spec.options.provider_options.resilence_level"),
        (
            {"twirling": {"num_randomizations": 0.0}},
            "spec.options.provider_options.twirling.num_randomizations",
        ),
        (
            {"twirling": {"shots_per_randomization": "many"}},
            "spec.options.provider_options.twirling.shots_per_randomization",
        ),
        ({"twirling": {"strategy": "all"}}, "spec.options.provider_options.twirling.strategy"),
        (
            {"dynamical_decoupling": {"sequence_type": "XZ"}},
            "spec.options.provider_options.dynamical_decoupling.sequence_type",
        ),
    ],
)
def test_bad_provider_options_are_refused(
    manila: IbmAdapter, options: dict[str, Any], field: str
) -> None:
    refused(
        manila,
        spec(sampler("qubit[1] q; bit[1] c; c = measure q;"), provider_options=options),
        field,
    )


def test_options_that_do_not_fit_the_job_are_refused(manila: IbmAdapter) -> None:
    one = "qubit[1] q; bit[1] c; c = measure q;"
    refused(
        manila,
        spec(sampler(one), provider_options={"resilience_level": 1.0}),
        "spec.options.provider_options.resilience_level",
    )
    twirl = {"enable_gates": True, "num_randomizations": 4.0, "shots_per_randomization": 10.0}
    refused(
        manila,
        spec(sampler(one, shots=100), provider_options={"twirling": twirl}),
        "spec.options.provider_options.twirling.shots_per_randomization",
    )


def test_json_numbers_are_accepted_and_passed_on(manila: IbmAdapter) -> None:
    options = {
        "twirling": {"enable_gates": True, "enable_measure": True, "num_randomizations": 4.0},
        "dynamical_decoupling": {"enable": True, "sequence_type": "XY4"},
    }
    job = spec(
        sampler("qubit[2] q; bit[2] c; h q[0]; cx q[0], q[1]; c = measure q;", shots=300),
        provider_options=options,
    )
    prepared = prepare_in_process(manila, job, 3)
    assert isinstance(prepared.payload, IbmPayload)
    parsed = prepared.payload.options
    assert parsed == IbmProviderOptions.model_validate(options)
    assert parsed.runtime_options("sampler") == {
        "twirling": {"enable_gates": True, "enable_measure": True, "num_randomizations": 4},
        "dynamical_decoupling": {"enable": True, "sequence_type": "XY4"},
    }
    # Twirled in 4 randomizations of ceil(300/4) = 75 shots: exactly the shots asked for.
    outcome = manila.execute(prepared.payload)
    result = outcome.result.pubs[0]
    assert isinstance(result, SamplerResult)
    counts = dict(result.registers[0].counts[0])
    assert sum(counts.values()) == 300
    assert total_variation(counts, {"00": 0.5, "11": 0.5}) < 0.2, counts


def test_twirling_rounding_up_keeps_the_shots_asked_for(manila: IbmAdapter) -> None:
    # "auto": shots per randomization max(64, ceil(100/32)) = 64, 2 randomizations = 128 shots.
    job = spec(
        sampler("qubit[1] q; bit[1] c; x q[0]; c = measure q;", shots=100),
        provider_options={"twirling": {"enable_measure": True}},
    )
    _, results = run(manila, job)
    result = results[0]
    assert isinstance(result, SamplerResult)
    assert result.registers[0].samples is not None
    assert result.registers[0].samples.shape == (100, 1)


def test_resilience_level_is_passed_to_the_estimator(manila: IbmAdapter) -> None:
    pub = EstimatorPub(
        circuit=q3("qubit[1] q; x q[0];"),
        observables=(Observable((("Z", 1.0),)),),
        observables_shape=(1,),
        bindings=Bindings(),
        precision=0.02,
    )
    seen: list[dict[str, Any]] = []
    original = manila._primitive_options

    def spy(primitive: Any, seed: int) -> dict[str, Any]:
        options = original(primitive, seed)
        seen.append(options)
        return options

    manila._primitive_options = spy  # type: ignore[method-assign]
    try:
        run(manila, spec(pub, provider_options={"resilience_level": 0.0}))
    finally:
        del manila._primitive_options
    assert seen[-1]["resilience_level"] == 0
    assert seen[-1]["simulator"]["seed_simulator"] > 0


# ------------------------------------------------------------------ the worker's simulator


def test_the_simulator_is_built_once_per_worker(manila: IbmAdapter) -> None:
    """Jobs reuse the worker's simulator (local mode given the fake itself rebuilds it)."""
    fresh = IbmAdapter(context())
    before = ibm.simulator_builds()
    one = "qubit[1] q; bit[1] c; x q[0]; c = measure q;"
    for seed in range(3):
        run(fresh, spec(sampler(one, shots=10)), seed=seed)
    run(
        fresh,
        spec(
            EstimatorPub(
                circuit=q3("qubit[1] q;"),
                observables=(Observable((("Z", 1.0),)),),
                observables_shape=(1,),
                bindings=Bindings(),
                precision=0.05,
            ),
            provider_options={"resilience_level": 0},
        ),
    )
    assert ibm.simulator_builds() - before == 1


def test_a_restricted_noise_model_gives_the_same_shots() -> None:
    """The noise model restricted to a circuit's qubits is the whole model for that circuit:
    the same seed gives the very same shots on FakeBrisbane (127 qubits)."""
    from qiskit.transpiler import generate_preset_pass_manager
    from qiskit_aer import AerSimulator

    fake = fake_backend("FakeBrisbane")
    simulator = AerSimulator.from_backend(fake)
    full = simulator.options.noise_model
    ghz = QuantumCircuit(3, 3)
    ghz.h(0)
    ghz.cx(0, 1)
    ghz.cx(1, 2)
    ghz.measure([0, 1, 2], [0, 1, 2])
    isa = generate_preset_pass_manager(1, target=fake.target, seed_transpiler=0).run(ghz)
    touched = idle.used_qubits(isa)
    assert len(touched) == 3
    counts_full = simulator.run(isa, shots=2000, seed_simulator=9).result().get_counts()
    restricted = ibm._restricted(full, touched)
    assert set(restricted._local_readout_errors) == {(q,) for q in touched}
    simulator.set_options(noise_model=restricted)
    counts_restricted = simulator.run(isa, shots=2000, seed_simulator=9).result().get_counts()
    assert counts_restricted == counts_full
    assert len(counts_full) > 2  # noisy, really
    # The whole model is untouched.
    assert len(full._local_readout_errors) == 127


def test_an_observable_on_an_idle_qubit_keeps_its_readout_error(manila: IbmAdapter) -> None:
    # q[1] gets no gate: <Z1> is exactly 1 without noise; its readout error (2-5 % on Manila)
    # pulls the estimate (resilience 0: no mitigation) below 1.
    pub = EstimatorPub(
        circuit=q3("qubit[2] q; x q[0];"),
        observables=(Observable((("Z", 1.0, (1,)),)),),
        observables_shape=(1,),
        bindings=Bindings(),
        precision=0.004,
    )
    _, results = run(manila, spec(pub, provider_options={"resilience_level": 0}))
    est = results[0]
    assert isinstance(est, EstimatorResult)
    assert 0.8 < est.expectation_values[0] < 0.99, est.expectation_values


def test_estimator_pubs_count_the_shots_their_precision_costs(manila: IbmAdapter) -> None:
    # The runtime samples to reach the precision (~1/precision^2 shots per binding): those
    # shots count against the job's shot limits, quotas and per-shot prices like a sampler's.
    def estimator(precision: float | None, bindings: int = 1) -> EstimatorPub:
        return EstimatorPub(
            circuit=q3("input float[64] theta; qubit[1] q; rx(theta) q[0];"),
            observables=(Observable((("Z", 1.0),)),),
            observables_shape=(1,),
            bindings=Bindings(("theta",), (bindings, 1), np.zeros(bindings)),
            precision=precision,
        )

    assert prepare_in_process(manila, spec(estimator(0.01, bindings=3)), 1).shots == 3 * 10_000
    default = 1 / 0.015625**2  # the runtime's default precision: unset, or 0
    assert prepare_in_process(manila, spec(estimator(None)), 1).shots == default
    assert prepare_in_process(manila, spec(estimator(0.0)), 1).shots == default
    both = spec(estimator(0.1), sampler("qubit[1] q; bit[1] c; c[0] = measure q[0];", shots=50))
    assert prepare_in_process(manila, both, 1).shots == 100 + 50
    # Past the backend's shots per PUB (100 000 here): 1e6 shots, and 1/p^2 past any float.
    for precision in (0.001, 1e-300):
        with pytest.raises(InvalidArgument) as too_fine:
            prepare_in_process(manila, spec(estimator(precision)), 1)
        assert too_fine.value.reason == "INVALID_PRECISION"
        assert too_fine.value.metadata["maxShots"] == "100000"
        assert too_fine.value.field_violations[0].field == "spec.pubs[0].estimator.precision"
    # Within it per binding, past the job's 10 million in all.
    with pytest.raises(InvalidArgument) as too_many:
        prepare_in_process(manila, spec(estimator(0.004, bindings=200)), 1)
    assert too_many.value.reason == "TOO_MANY_SHOTS"


def test_a_delay_is_scheduled_on_the_device_and_runs(manila: IbmAdapter) -> None:
    # The device's target has timing: an unscheduled `delay` was refused TRANSPILE_FAILED
    # ("not scheduled", Qiskit's own transpile too) though qasm3.dumps writes delays.
    source = q3("qubit[2] q; bit[2] c; x q[0]; delay[100ns] q[0]; x q[1]; c = measure q;")
    compiled = manila.compile_circuit(source)
    assert isinstance(compiled, CompiledCircuit)
    assert "delay" in compiled.ref.circuit().count_ops()
    _, results = run(
        manila,
        spec(sampler("qubit[2] q; bit[2] c; x q[0]; delay[100ns] q[0]; x q[1]; c = measure q;")),
    )
    result = results[0]
    assert isinstance(result, SamplerResult)
    counts = dict(result.registers[0].counts[0])
    assert counts["11"] / sum(counts.values()) > 0.85, counts  # readout noise of a few percent


def test_a_circuit_the_transpiler_cannot_take_is_refused_not_a_gateway_fault(
    manila: IbmAdapter, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A transpiler refusal used to be INTERNAL COMPILER_FAILED (and cost the compile worker).
    class Refusing:
        def run(self, circuit: QuantumCircuit) -> QuantumCircuit:
            raise TranspilerError("no way to route this")

    monkeypatch.setattr(manila, "_pass_manager", lambda scheduled=False, mapped=False: Refusing())
    with pytest.raises(InvalidArgument) as refused:
        manila.compile_circuit(q3("qubit[1] q; bit[1] c; x q[0]; c[0] = measure q[0];"))
    assert refused.value.reason == "TRANSPILE_FAILED"
    assert "cannot be compiled for this backend: 'no way to route this'" in refused.value.message


@pytest.mark.parametrize(
    "options",
    [
        # The runtime's own bounds: the sampler job of the test above refuses any
        # resilience_level, so these are checked on the model itself.
        {"resilience_level": 3},
        {"resilience_level": -1},
        {"twirling": {"num_randomizations": 4.5}},  # no silent rounding down to 4
        {"twirling": {"shots_per_randomization": True}},  # a flag is no count
        {"twirling": {"num_randomizations": 0}},
    ],
)
def test_provider_options_keep_the_runtimes_bounds(options: dict[str, Any]) -> None:
    with pytest.raises(ValidationError):
        IbmProviderOptions.model_validate(options)


def test_resilience_level_goes_to_the_estimator_only() -> None:
    options = IbmProviderOptions.model_validate({"resilience_level": 2})
    assert options.runtime_options("estimator") == {"resilience_level": 2}
    assert options.runtime_options("sampler") == {}


@pytest.mark.parametrize(
    ("knob", "value"), [("poll_interval_s", 61.0), ("retry_attempts", 0), ("creates_per_s", 0.0)]
)
def test_cloud_knobs_out_of_bounds_are_refused(knob: str, value: float) -> None:
    with pytest.raises(ValidationError):
        IbmOptions.model_validate({"backend": "ibm_brisbane", knob: value})


def test_an_empty_or_null_token_is_no_credentials(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(TOKEN_ENV, raising=False)
    device = {"backend": "ibm_brisbane", "instance": "crn:v1:x"}
    empty = IbmOptions.model_validate({**device, "token": ""})
    assert not empty.has_credentials
    # No runner without a key: a device job would otherwise fail at its first call.
    assert IbmAdapter(context(**device, token="")).create_runner() is None
    assert IbmAdapter(context(**device)).backend_kind() is BackendKind.HARDWARE
    monkeypatch.setenv(TOKEN_ENV, "s3cr3t-from-env")
    # A configuration that names the token as null still reads it from the environment.
    nulled = IbmOptions.model_validate({**device, "token": None})
    assert nulled.has_credentials


def test_twirling_counts_bind_the_shots_only_when_twirling_is_on() -> None:
    from gateway.backends.qiskit.adapter import QiskitPayload, SamplerTask
    from gateway.domain.jobs import SamplerOutput

    task = SamplerTask(None, (), np.zeros(0), (), 100, (), 0, True)  # type: ignore[arg-type]
    payload = QiskitPayload("local_mode", SamplerOutput.COUNTS, (task,))
    counts = {"num_randomizations": 4, "shots_per_randomization": 10}  # 40 shots, not 100
    ibm._check_options(IbmProviderOptions.model_validate({"twirling": counts}), payload, NAME)
    on = IbmProviderOptions.model_validate({"twirling": {**counts, "enable_measure": True}})
    with pytest.raises(InvalidArgument):
        ibm._check_options(on, payload, NAME)


def test_estimator_shots_are_one_over_the_precision_squared(manila: IbmAdapter) -> None:
    assert manila.estimator_shots(0.01) == 10_000
    # Just above the cap's precision: computed, not capped.
    assert manila.estimator_shots(2e-9) < ibm.MAX_SAMPLED_SHOTS
    assert manila.estimator_shots(1e-10) == ibm.MAX_SAMPLED_SHOTS


def test_a_jobs_provider_options_end_with_it(manila: IbmAdapter) -> None:
    # A worker runs one job after another: the next job must not inherit this one's
    # dynamical decoupling (the whole noise model) or twirling.
    options = {"dynamical_decoupling": {"enable": True}}
    run(
        manila,
        spec(sampler("qubit[1] q; bit[1] c; c = measure q;", shots=10), provider_options=options),
    )
    assert manila._job_options == IbmProviderOptions()


def test_a_register_of_ascending_but_scattered_bits_is_read_from_the_whole_run() -> None:
    # The runtime slices a register from its first bit's index: bits 0 and 2 would read 0, 1.
    assert ibm._ascending_run((3, 4, 5)) and ibm._ascending_run(())
    assert not ibm._ascending_run((0, 2)) and not ibm._ascending_run((1, 0))


def test_barriers_and_delays_touch_no_qubit() -> None:
    # A transpiled circuit's barrier spans the device: counted, a 2-qubit circuit on a
    # 127-qubit device was sized (and its noise model kept) as a 127-qubit one.
    circuit = QuantumCircuit(5, 1)
    circuit.h(1)
    circuit.barrier()
    circuit.delay(100, 3)
    circuit.measure(1, 0)
    assert idle.used_qubits(circuit) == frozenset({1})


def test_aer_running_out_of_memory_is_out_of_memory() -> None:

    def too_big() -> None:
        raise RuntimeError("required memory (4096M) greater than max allowed (1024M)")

    with pytest.raises(ExecutionError) as info:
        ibm._call(too_big)
    assert info.value.kind is FailureKind.OUT_OF_MEMORY


# ------------------------------------------------ review H: register names as declared, zero obs


@pytest.mark.parametrize(
    "name", ["_data", "_shape", "_SHAPE", "_FIELDS", "shape", "keys", "__class__", "__dict__"]
)
def test_a_register_the_runtime_cannot_return_is_refused_when_compiled(
    manila: IbmAdapter, name: str
) -> None:
    # The runtime's results hold each register as a DataBin attribute, which refuses these
    # names: the job would fail only after it ran (on a device, after it was paid for).
    text = f"qubit[1] q; bit[1] {name}; x q[0]; {name}[0] = measure q[0];"
    with pytest.raises(InvalidArgument) as info:
        prepare_in_process(manila, spec(sampler(text, shots=50)), 1)
    assert info.value.reason == "UNSUPPORTED_FEATURE", info.value
    assert repr(name) in str(info.value), info.value


@pytest.mark.parametrize("name", ["_c", "C", "data", "__len__", "\u00e9t\u00e9"])
def test_a_register_named_as_the_runtime_allows_is_returned(manila: IbmAdapter, name: str) -> None:
    text = f"qubit[1] q; bit[1] {name}; x q[0]; {name}[0] = measure q[0];"
    _, results = run(manila, spec(sampler(text, shots=50)))
    result = results[0]
    assert isinstance(result, SamplerResult)
    counts = {r.name: dict(r.counts[0]) for r in result.registers}
    assert set(counts) == {name} and counts[name].get("1", 0) > 40


def test_a_register_named_like_the_adapters_own_register_runs(manila: IbmAdapter) -> None:
    text = (
        "qubit[2] q; bit[2] c; bit[1] _qgateway_loose_all; let d = c[{1, 0}];"
        " x q[0]; c = measure q; _qgateway_loose_all[0] = measure q[1];"
    )
    _, results = run(manila, spec(sampler(text, shots=50)))
    result = results[0]
    assert isinstance(result, SamplerResult)
    counts = {r.name: dict(r.counts[0]) for r in result.registers}
    assert set(counts) == {"c", "d", "_qgateway_loose_all"}
    assert counts["c"].get("01", 0) > 40 and counts["d"].get("10", 0) > 40


# ------------------------------------------- what IBM's service cannot run: refused when submitted

GHZ2 = "qubit[2] q; bit[2] c; h q[0]; cx q[0], q[1]; c = measure q;"


def z_of_plus(precision: float | None = None) -> EstimatorPub:
    return EstimatorPub(
        circuit=q3("qubit[1] q; h q[0];"),
        observables=(Observable((("Z", 1.0),)),),
        observables_shape=(1,),
        bindings=Bindings(),
        precision=precision,
    )


@pytest.mark.parametrize(
    ("pubs", "says"),
    [
        ((sampler(GHZ2, shots=8), z_of_plus()), "sampler and estimator PUBs in separate jobs"),
        ((sampler(GHZ2, shots=8), sampler(GHZ2, shots=16)), "one shots per job"),
        ((z_of_plus(0.1), z_of_plus(0.2)), "one precision per job"),
    ],
    ids=["sampler-and-estimator", "shots", "precisions"],
)
def test_a_device_refuses_pubs_one_runtime_job_cannot_hold_when_submitted(
    manila: IbmAdapter, pubs: tuple[Pub, ...], says: str
) -> None:
    # The runtime's primitives run PUBs of one kind, with one shot count or one precision, per
    # job: refused at the API edge (INVALID_ARGUMENT), not a job that FAILED at its create.
    device = IbmAdapter(device_context())
    with pytest.raises(InvalidArgument) as refused:
        prepare_in_process(device, spec(*pubs), 1)
    assert refused.value.reason == "UNSUPPORTED_FEATURE"
    assert says in refused.value.message
    assert [v.field for v in refused.value.field_violations] == ["spec.pubs"]
    # Local mode runs them.
    prepare_in_process(manila, spec(*pubs), 1)


def test_a_device_refuses_a_register_its_service_would_read_from_other_bits(
    manila: IbmAdapter,
) -> None:
    # `let d = c[{1, 0}];` is a register of clbits (1, 0); the runtime's sampler reads a
    # register as the run of clbits from its first one on, so IBM's service would answer
    # clbits (1, 2) under its name. Local mode cuts every register from all the clbits.
    pub = sampler("qubit[3] q; bit[3] c; let d = c[{1, 0}]; x q[0]; c = measure q;", shots=64)
    device = IbmAdapter(device_context())
    with pytest.raises(InvalidArgument) as refused:
        prepare_in_process(device, spec(pub), 1)
    assert refused.value.reason == "UNSUPPORTED_FEATURE"
    assert "register d holds clbits that are not one ascending run" in refused.value.message
    assert [v.field for v in refused.value.field_violations] == ["spec.pubs[0].sampler.circuit"]
    _, (result,) = run(manila, spec(pub))
    assert isinstance(result, SamplerResult)
    (d,) = [dict(r.counts[0]) for r in result.registers if r.name == "d"]
    assert max(d, key=d.__getitem__) == "10"  # d[1] is c[0], the flipped qubit's


_RZ_BEFORE_MEASURE = "input float th; qubit[1] q; bit[1] c; x q[0]; rz(th) q[0]; c = measure q;"


@pytest.mark.parametrize("make", [context, device_context], ids=["local-mode", "device"])
def test_a_sweep_of_a_circuit_transpiling_left_without_parameters_is_refused(
    make: Any,
) -> None:
    # From optimization_level 2 on, transpiling removes an rz right before a measurement, and
    # with it the circuit's only parameter: the runtime's sampler then runs it once (shape
    # ()), which failed local mode's worker with a raw reshape error and would have run a
    # billed device job the layout check refuses.
    sweep = Bindings(("th",), (3,), np.array([[0.1], [0.2], [0.3]]))
    pub = sampler(_RZ_BEFORE_MEASURE, shots=16, bindings=sweep)
    with pytest.raises(InvalidArgument) as refused:
        prepare_in_process(IbmAdapter(make(optimization_level=2)), spec(pub), 1)
    assert refused.value.reason == "UNSUPPORTED_FEATURE"
    assert "parameters transpiling removed" in refused.value.message
    assert [v.field for v in refused.value.field_violations] == [
        "spec.pubs[0].sampler.parameter_values"
    ]


def test_the_same_sweep_keeping_its_parameter_runs(manila: IbmAdapter) -> None:
    sweep = Bindings(("th",), (3,), np.array([[0.1], [0.2], [0.3]]))
    _, (result,) = run(manila, spec(sampler(_RZ_BEFORE_MEASURE, shots=16, bindings=sweep)))
    assert isinstance(result, SamplerResult)
    assert result.shape == (3,)


def test_a_prepared_job_counts_its_estimators_sampled_shots(manila: IbmAdapter) -> None:
    # Its estimator PUBs sample too (about 1/precision^2 shots per binding), or they ran free;
    # a job re-attached after a restart is charged the same (its quota reservation keeps them).
    def estimator(precision: float | None, bindings: int) -> EstimatorPub:
        return EstimatorPub(
            circuit=q3("input float[64] theta; qubit[1] q; rx(theta) q[0];"),
            observables=(Observable((("Z", 1.0),)),),
            observables_shape=(1,),
            bindings=Bindings(("theta",), (bindings, 1), np.linspace(0, 1, bindings)),
            precision=precision,
        )

    jobs = (
        spec(estimator(0.05, 3), estimator(None, 2)),
        spec(estimator(None, 1), default_precision=0.1),
        spec(estimator(0.0, 1)),  # the runtime's default precision
        spec(sampler("qubit[1] q; bit[1] c; c[0] = measure q[0];", shots=300)),
    )
    counted = [prepare_in_process(manila, job, 1).shots for job in jobs]
    assert counted[0] == 3 * 400 + 2 * 4096 and counted[3] == 300
