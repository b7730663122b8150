"""Review of sampled estimation (precision > 0) and result statistics, in process (compile,
prepare, pickle, execute as a worker would).

Exact simulators (Aer statevector/MPS/density matrix, Braket, PennyLane) follow Qiskit's
StatevectorEstimator: the exact value plus a normal draw of standard deviation `precision`,
standard error = precision. IBM fakes run qiskit-ibm-runtime's estimator: ~1/precision^2 shots
per binding, the runtime's own standard errors. Statistical checks use fixed seeds (so they are
deterministic) and tolerances of ~5 standard errors. Its one finding, IBM's standard errors of
correlated terms, is the runtime's own and a documented limit (strict xfail).
"""

from __future__ import annotations

import math
import pickle
from typing import Any

import numpy as np
import pytest
from qiskit.qasm3 import loads
from qiskit.quantum_info import SparsePauliOp, Statevector

from gateway.backends.aer.adapter import AerAdapter
from gateway.backends.base import AdapterContext
from gateway.backends.braket.adapter import BraketAdapter
from gateway.backends.ibm.adapter import IbmAdapter
from gateway.backends.pennylane.adapter import PennyLaneAdapter
from gateway.backends.qiskit.adapter import QiskitAdapter
from gateway.domain.circuits import (
    Bindings,
    CircuitLanguage,
    CircuitSource,
    EstimatorPub,
    Observable,
    PauliTerm,
    Pub,
    SamplerPub,
)
from gateway.domain.jobs import EstimatorResult, JobOptions, JobSpec, SamplerOutput, SamplerResult
from tests.adapters import adapter_context, prepare_in_process

H3 = 'OPENQASM 3.0;\ninclude "stdgates.inc";\n'


def _context(name: str, **options: Any) -> AdapterContext:
    return adapter_context(name, max_shots=1_000_000, **options)


@pytest.fixture(scope="module")
def adapters() -> dict[str, QiskitAdapter]:
    ibm = IbmAdapter(_context("ibm-fake-manila", backend="FakeManilaV2"))
    ibm.warm_up()
    return {
        "aer": AerAdapter(_context("aer")),
        "aer-mps": AerAdapter(_context("aer-mps", method="matrix_product_state")),
        "aer-noisy": AerAdapter(
            _context("aer-noisy-manila", method="density_matrix", noise_from="FakeManilaV2")
        ),
        "braket_sv": BraketAdapter(_context("braket-sv", device="braket_sv")),
        "braket_dm": BraketAdapter(_context("braket-dm", device="braket_dm")),
        "lightning.qubit": PennyLaneAdapter(_context("pl-l", device="lightning.qubit")),
        "default.qubit": PennyLaneAdapter(_context("pl-d", device="default.qubit")),
        "ibm": ibm,
    }


EXACT = (
    "aer",
    "aer-mps",
    "aer-noisy",
    "braket_sv",
    "braket_dm",
    "lightning.qubit",
    "default.qubit",
)
ALL = (*EXACT, "ibm")


def q3(text: str) -> CircuitSource:
    return CircuitSource(CircuitLanguage.QASM3, H3 + text)


def obs(*terms: tuple[Any, ...]) -> Observable:
    return Observable(tuple(PauliTerm(*t) for t in terms))


def run(adapter: QiskitAdapter, *pubs: Pub, seed: int = 1234, **options: Any) -> list[Any]:
    spec = JobSpec(backend=adapter.context.name, pubs=pubs, options=JobOptions(**options))
    prepared = prepare_in_process(adapter, spec, seed)
    payload = pickle.loads(pickle.dumps(prepared.payload))
    return list(adapter.execute(payload).result.pubs)


ROT = "input float theta; qubit[2] q; ry(theta) q[0]; cx q[0], q[1];"
# ZZ, a weighted sum with an identity-free mix, and a pure identity.
OBSERVABLES = (obs(("ZZ", 1.0)), obs(("IZ", 0.5), ("XX", -2.0)), obs(("II", 3.0)))


def _broadcast_pub(precision: float) -> EstimatorPub:
    return EstimatorPub(
        q3(ROT),
        OBSERVABLES,
        (3,),
        Bindings(("theta",), (2, 1), np.array([[[0.9]], [[0.3]]])),
        precision=precision,
    )


def _exact(theta: float) -> list[float]:
    return [1.0, 0.5 * math.cos(theta) - 2 * math.sin(theta), 3.0]


# ----------------------------------------------------------------- what holds (regressions)


@pytest.mark.parametrize("name", ALL)
def test_broadcast_seeds_reproduce_and_differ(
    adapters: dict[str, QiskitAdapter], name: str
) -> None:
    adapter = adapters[name]
    (a,) = run(adapter, _broadcast_pub(0.05), seed=5)
    (b,) = run(adapter, _broadcast_pub(0.05), seed=5)
    (c,) = run(adapter, _broadcast_pub(0.05), seed=6)
    first, second = run(adapter, _broadcast_pub(0.05), _broadcast_pub(0.05), seed=5)
    assert isinstance(a, EstimatorResult)
    assert a.expectation_values.shape == a.standard_errors.shape == (2, 3)
    assert np.array_equal(a.expectation_values, b.expectation_values)
    assert np.array_equal(a.standard_errors, b.standard_errors)
    assert not np.array_equal(a.expectation_values, c.expectation_values)
    # The second PUB of a job draws its own noise (derived seed per PUB index).
    assert np.array_equal(first.expectation_values, a.expectation_values)
    assert not np.array_equal(first.expectation_values, second.expectation_values)
    assert (a.standard_errors[:, :2] > 0).all()
    if name == "ibm":
        # A sampled estimate: the identity is exact, finer precision -> smaller errors.
        assert np.array_equal(a.expectation_values[:, 2], [3.0, 3.0])
        assert not a.standard_errors[:, 2].any()
        assert (a.standard_errors[:, :2] < 3 * 0.05 * np.array([1, 2.5])).all()
    else:
        # Qiskit's StatevectorEstimator semantics: every element gets std = precision.
        assert np.all(a.standard_errors == 0.05)
    want = np.array([_exact(0.9), _exact(0.3)])
    noise = 0.35 if name in ("ibm", "aer-noisy") else 0.0
    assert np.all(np.abs(a.expectation_values - want) <= 5 * a.standard_errors + 0.05 + noise)


def test_exact_backends_draw_unbiased_noise_of_the_stated_spread(
    adapters: dict[str, QiskitAdapter],
) -> None:
    # 200 copies of one binding; the normalised deviations' mean within 5/sqrt(n), their
    # spread within ~5 sigma of 1 (chi-square, 199 dof). The noisy and MPS Aer backends are
    # not in the conformance suite's EXACT list.
    precision = 0.03
    n = 200
    pub = EstimatorPub(
        q3(ROT),
        (obs(("IZ", 0.5), ("XX", -2.0)),),
        (),
        Bindings(("theta",), (n,), np.full((n, 1), 0.9)),
        precision=precision,
    )
    circuit = loads(H3 + ROT).assign_parameters([0.9])
    reference = (
        Statevector(circuit)
        .expectation_value(SparsePauliOp.from_list([("IZ", 0.5), ("XX", -2.0)]))
        .real
    )
    for name in ("aer", "aer-mps", "braket_dm", "default.qubit"):
        (result,) = run(adapters[name], pub, seed=11)
        z = (result.expectation_values.ravel() - reference) / precision
        assert abs(z.mean()) <= 5 / math.sqrt(n), (name, z.mean())
        assert 0.75 <= z.std(ddof=1) <= 1.25, (name, z.std(ddof=1))
        assert np.all(result.standard_errors == precision)


def test_ibm_precision_maps_to_shots_and_errors(adapters: dict[str, QiskitAdapter]) -> None:
    ibm = adapters["ibm"]
    pub = EstimatorPub(
        q3(ROT),
        (obs(("IZ", 1.0)),),
        (),
        Bindings(("theta",), (1,), np.array([[0.9]])),
        precision=0.05,
    )
    coarse = prepare_in_process(ibm, JobSpec(backend=ibm.context.name, pubs=(pub,)), 1)
    assert coarse.shots == 400  # ceil(1/0.05^2), as the runtime runs
    fine_pub = EstimatorPub(pub.circuit, pub.observables, (), pub.bindings, precision=0.0)
    fine = prepare_in_process(ibm, JobSpec(backend=ibm.context.name, pubs=(fine_pub,)), 1)
    assert fine.shots == 4096  # precision 0: the runtime's default, 1/64
    (c,) = run(ibm, pub, seed=3)
    (f,) = run(ibm, fine_pub, seed=3)
    assert f.precision == 1 / 64
    assert 0 < f.standard_errors[0] < c.standard_errors[0]


def test_ibm_standard_errors_match_the_spread_of_single_terms(
    adapters: dict[str, QiskitAdapter],
) -> None:
    # 30 seeds at precision 0.05 (400 shots): for single Pauli terms and a weighted sum of
    # terms measured in different bases, the runtime's stds are the spread within ~1.6x.
    pub = EstimatorPub(
        q3(ROT),
        (obs(("IZ", 1.0)), obs(("XX", 1.0)), obs(("IZ", 0.5), ("XX", -2.0))),
        (3,),
        Bindings(("theta",), (1,), np.array([[0.9]])),
        precision=0.05,
    )
    evs, stds = [], []
    for seed in range(30):
        (result,) = run(adapters["ibm"], pub, seed=100 + seed)
        evs.append(result.expectation_values.ravel())
        stds.append(result.standard_errors.ravel())
    spread = np.std(evs, axis=0, ddof=1)
    reported = np.mean(stds, axis=0)
    assert np.all(spread / reported <= 1.6) and np.all(spread / reported >= 1 / 1.6), (
        spread,
        reported,
    )


@pytest.mark.parametrize("name", ALL)
def test_sampler_counts_and_samples_agree(adapters: dict[str, QiskitAdapter], name: str) -> None:
    circuit = q3(
        "input float theta; qubit[3] q; bit[2] a; bit[1] b; rx(theta) q[0]; cx q[0], q[1];"
        "h q[2]; a[0] = measure q[0]; a[1] = measure q[2]; b[0] = measure q[1];"
    )
    bindings = Bindings(("theta",), (2, 3), np.linspace(0.2, 2.2, 6).reshape(2, 3, 1))
    adapter = adapters[name]
    for shots in (1, 97):
        pub = SamplerPub(circuit, bindings, shots=shots)
        (both,) = run(adapter, pub, seed=9)
        (again,) = run(adapter, pub, seed=9)
        (counts_only,) = run(adapter, pub, seed=9, sampler_output=SamplerOutput.COUNTS)
        assert isinstance(both, SamplerResult) and both.shape == (2, 3) and both.shots == shots
        for reg, reg2, regc in zip(
            both.registers, again.registers, counts_only.registers, strict=True
        ):
            assert reg.samples is not None and reg.samples.shape == (2, 3, shots, 1)
            assert np.array_equal(reg.samples, reg2.samples)
            bits = np.unpackbits(reg.samples, axis=-1)[..., 8 - reg.num_bits :].reshape(
                6, shots, -1
            )
            assert len(reg.counts) == 6
            for b in range(6):
                keys, numbers = np.unique(bits[b], axis=0, return_counts=True)
                from_samples = {
                    "".join(map(str, k)): int(n) for k, n in zip(keys, numbers, strict=True)
                }
                assert dict(reg.counts[b]) == from_samples
                assert dict(regc.counts[b]) == from_samples  # same draws whatever the output
                assert sum(reg.counts[b].values()) == shots


@pytest.mark.parametrize("name", ["aer", "aer-mps", "braket_sv", "default.qubit"])
def test_many_shots_few_outcomes(adapters: dict[str, QiskitAdapter], name: str) -> None:
    shots = 1_000_000
    pub = SamplerPub(
        q3("qubit[1] q; bit[1] c; ry(1.0) q[0]; c[0] = measure q[0];"), Bindings(), shots
    )
    (result,) = run(adapters[name], pub, seed=3, sampler_output=SamplerOutput.COUNTS)
    counts = dict(result.registers[0].counts[0])
    assert sum(counts.values()) == shots
    p = math.sin(0.5) ** 2
    assert abs(counts["1"] / shots - p) <= 5 * math.sqrt(p * (1 - p) / shots)


# ----------------------------------------------------------------- defects


@pytest.mark.xfail(
    strict=True,
    reason=(
        "a known limit (README, IBM): the runtime's standard error of a sum of Pauli terms "
        "measured in one basis "
        "ignores their covariance (adds per-term variances): on a GHZ state Z0+..+Z4 are "
        "perfectly correlated, so the reported std is ~1/sqrt(5) of the true spread (the same "
        "observable written 5*Z0 gets an honest std). Clients sizing precision or error bars "
        "from stds are misled by >2x."
    ),
)
def test_ibm_std_of_correlated_sum_is_honest(adapters: dict[str, QiskitAdapter]) -> None:
    ghz = q3(
        "qubit[5] q; ry(1.2) q[0]; cx q[0], q[1]; cx q[1], q[2]; cx q[2], q[3]; cx q[3], q[4];"
    )
    summed = obs(*(("Z", 1.0, (i,)) for i in range(5)))
    scaled = obs(("Z", 5.0, (0,)))
    pub = EstimatorPub(ghz, (summed, scaled), (2,), Bindings(), precision=0.05)
    evs, stds = [], []
    # The reported stds alone (their mean is steady over seeds) tell the two apart.
    for seed in range(8):
        (result,) = run(adapters["ibm"], pub, seed=300 + seed)
        evs.append(result.expectation_values.ravel())
        stds.append(result.standard_errors.ravel())
    spread = np.std(evs, axis=0, ddof=1)
    reported = np.mean(stds, axis=0)
    # Same distribution up to device noise: the two stds should be comparable.
    assert reported[0] >= 0.7 * reported[1], (reported, spread)
    assert spread[0] / reported[0] <= 1.6, (spread, reported)
