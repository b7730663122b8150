"""A Braket user's first runs through the Python client, on the session gateway (session 30).

Programs are exactly what Amazon Braket's SDK writes (`Circuit.to_ir(IRType.OPENQASM).source`):
no include, `cnot`, `input float` parameters, `b[i] = measure q[i];`. The exact answers come
from Braket's own LocalSimulator (`shots=0` probabilities, exact expectations), so the checks
are "the gateway agrees with Braket", not with a hand derivation of the same gateway code.
Counts keys are Qiskit's (bit 0 rightmost), the reverse of Braket's measurement_counts keys.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Mapping, Sequence

import pytest
from braket.circuits import Circuit, FreeParameter, Observable  # type: ignore[import-untyped]
from braket.circuits.serialization import IRType  # type: ignore[import-untyped]
from braket.devices import LocalSimulator  # type: ignore[import-untyped]
from qgateway import Client, RetryPolicy

SHOTS = 4000
SWEEP = [0.3, 1.2, 2.5]


@pytest.fixture(scope="module")
def client(address: str) -> Iterator[Client]:
    with Client(address, retry=RetryPolicy(max_attempts=1)) as c:
        yield c


@pytest.fixture(scope="module")
def simulators(client: Client) -> list[str]:
    """The session gateway's simulators a Braket user would run on: `aer` and `aer-mps`, plus
    any backend served by the Braket adapter (its LocalSimulator). The session gateway
    (tests/conftest.py) configures only Aer backends, so the Braket list is empty there."""
    listed = client.list_backends()
    names = [b.name.removeprefix("backends/") for b in listed]
    assert "aer" in names, names
    braket_local = [
        b.name.removeprefix("backends/")
        for b in listed
        if b.provider == "braket" and b.kind == "SIMULATOR"
    ]
    return ["aer", *(["aer-mps"] if "aer-mps" in names else []), *braket_local]


def _source(circuit: Circuit) -> str:
    source: str = circuit.to_ir(IRType.OPENQASM).source
    return source


def _braket_probabilities(circuit: Circuit, inputs: Mapping[str, float]) -> dict[str, float]:
    """Braket's exact outcome probabilities, keyed Braket's way (qubit 0 leftmost)."""
    exact = circuit.copy().probability()
    values = LocalSimulator().run(exact, shots=0, inputs=dict(inputs)).result().values[0]
    width = circuit.qubit_count
    return {format(k, f"0{width}b"): float(p) for k, p in enumerate(values) if float(p) > 1e-12}


def _tv_bound(probabilities: Mapping[str, float], shots: int) -> float:
    """Total-variation distance a fair sample of `shots` stays within except with a chance
    far below 1e-6: each outcome's frequency within 6 standard deviations (union bound)."""
    return 0.5 * sum(6 * math.sqrt(p * (1 - p) / shots) for p in probabilities.values()) + 1e-9


def _tv(counts: Mapping[str, int], probabilities: Mapping[str, float]) -> float:
    shots = sum(counts.values())
    keys = set(counts) | set(probabilities)
    return 0.5 * sum(abs(counts.get(k, 0) / shots - probabilities.get(k, 0.0)) for k in keys)


def _qiskit_keys(braket_keyed: Mapping[str, float]) -> dict[str, float]:
    return {k[::-1]: v for k, v in braket_keyed.items()}


def _check_sweep(
    client: Client,
    backend: str,
    circuit: Circuit,
    name: str,
    sweep: Sequence[float],
    seed: int,
) -> None:
    source = _source(circuit)
    assert "include" not in source and f"input float {name};" in source, source
    result = client.run(
        source,
        backend=backend,
        parameter_values={name: list(sweep)},
        shots=SHOTS,
        seed=seed,
    )
    pub = result.sampler()
    assert pub.shape == (len(sweep),)
    for index, value in enumerate(sweep):
        exact = _qiskit_keys(_braket_probabilities(circuit, {name: value}))
        counts = pub.counts(index)
        assert sum(counts.values()) == SHOTS
        assert all(len(k) == circuit.qubit_count for k in counts), counts
        assert set(counts) <= set(exact), (backend, value, counts, exact)
        bound = _tv_bound(exact, SHOTS)
        assert _tv(counts, exact) <= bound, (backend, value, counts, exact, bound)


@pytest.mark.timeout(60)
def test_a_free_parameter_sweep_matches_braket_probabilities(
    client: Client, simulators: list[str]
) -> None:
    circuit = Circuit().rx(0, FreeParameter("theta")).cnot(0, 1)
    for backend in simulators:
        _check_sweep(client, backend, circuit, "theta", SWEEP, seed=11)


@pytest.mark.timeout(60)
def test_a_parameter_named_t_beside_a_t_gate_runs(client: Client, simulators: list[str]) -> None:
    # Braket writes `input float t;` and `t q[0];` in one program: the parameter and the gate.
    # h, t, h makes the t gate visible in the counts (P(1) = sin^2(pi/8) on qubit 1).
    t = FreeParameter("t")
    circuit = Circuit().rx(0, t).t(0).cnot(0, 1).h(2).t(2).h(2)
    source = _source(circuit)
    assert "input float t;" in source and "t q[0];" in source, source
    for backend in simulators:
        _check_sweep(client, backend, circuit, "t", SWEEP, seed=12)


@pytest.mark.timeout(60)
def test_counts_keys_are_qiskit_order_the_reverse_of_braket_measurement_counts(
    client: Client, simulators: list[str]
) -> None:
    # A deterministic, asymmetric outcome: qubit 0 and qubit 1 are 1, qubit 2 is 0, qubit 3 is 1.
    theta = FreeParameter("theta")
    circuit = Circuit().rx(0, theta).cnot(0, 1).i(2).x(3)
    braket = LocalSimulator().run(circuit, shots=50, inputs={"theta": math.pi}).result()
    assert dict(braket.measurement_counts) == {"1101": 50}
    for backend in simulators:
        result = client.run(
            _source(circuit),
            backend=backend,
            parameter_values={"theta": [math.pi]},
            shots=50,
            seed=3,
        )
        counts = result.sampler().counts(0)
        assert counts == {"1011": 50}, (backend, counts)
        assert {k[::-1]: v for k, v in counts.items()} == dict(braket.measurement_counts)


def _without_result_pragmas(source: str) -> str:
    kept = [line for line in source.splitlines() if not line.startswith("#pragma braket result")]
    return "\n".join(kept) + "\n"


@pytest.mark.timeout(60)
def test_the_estimator_on_a_braket_written_circuit_is_exact(
    client: Client, simulators: list[str]
) -> None:
    # Braket writes a circuit with an expectation result type and no measurements; the result
    # type is a `#pragma braket result` line (refused, see the README), so the user drops it and
    # asks the gateway for the same observable. Pauli character 0 is the highest qubit.
    theta, phi = FreeParameter("theta"), FreeParameter("phi")
    body = Circuit().ry(0, theta).rx(1, phi).cz(0, 1).cz(0, 1)
    values = {"theta": 0.7, "phi": 1.9}
    cases = {
        "ZZ": Observable.Z() @ Observable.Z(),
        "IZ": Observable.I() @ Observable.Z(),
        "ZI": Observable.Z() @ Observable.I(),
    }
    for pauli, observable in cases.items():
        with_result = body.copy().expectation(observable, target=[1, 0])
        braket_source = _source(with_result)
        assert "measure" not in braket_source and "#pragma braket result" in braket_source
        # Braket's observable targets [1, 0]: its first factor is qubit 1, as Qiskit's char 0.
        exact = float(LocalSimulator().run(with_result, shots=0, inputs=values).result().values[0])
        for backend in simulators:
            estimate = client.estimate(
                _without_result_pragmas(braket_source),
                pauli,
                backend=backend,
                parameter_values={k: [v] for k, v in values.items()},
                precision=0,
            )
            got = estimate.expectation_value(0)
            assert got == pytest.approx(exact, abs=1e-9), (backend, pauli, got, exact)
    assert math.isclose(
        math.cos(0.7) * math.cos(1.9),
        float(
            LocalSimulator()
            .run(body.copy().expectation(cases["ZZ"], target=[1, 0]), shots=0, inputs=values)
            .result()
            .values[0]
        ),
        abs_tol=1e-12,
    )
