"""What a Qiskit user has at hand, given to the Python client as is, on the session gateway
(session 29): a QuantumCircuit (sent as QPY), PUB tuples, SamplerPub/EstimatorPub objects, and
parameter values as a {Parameter: values} dict or a BindingsArray. Before, each raised in the
client (tests/unit/test_session29_client_qiskit_objects.py pins the conversions); here the
gateway runs them on Aer and agrees with Qiskit's StatevectorSampler and StatevectorEstimator."""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import pytest
from qgateway import Client, JobState, RetryPolicy


@pytest.fixture(scope="module")
def client(address: str) -> Iterator[Client]:
    with Client(address, retry=RetryPolicy(max_attempts=1)) as c:
        yield c


@pytest.mark.timeout(60)
def test_a_quantum_circuit_estimates_as_qiskit_estimates_it(client: Client) -> None:
    from qiskit import QuantumCircuit
    from qiskit.circuit import Parameter, ParameterVector
    from qiskit.primitives import StatevectorEstimator
    from qiskit.primitives.containers import BindingsArray
    from qiskit.primitives.containers.estimator_pub import EstimatorPub

    # Parameters named out of creation order ("b" sorts before "x[0]"): values by position
    # follow `circuit.parameters`, (b, x[0], x[1]), as Qiskit's primitives bind them.
    x, b = ParameterVector("x", 2), Parameter("b")
    circuit = QuantumCircuit(3)
    circuit.ry(x[0], 0)
    circuit.rx(x[1], 1)
    circuit.ry(b, 2)
    circuit.cx(0, 2)
    values = np.random.default_rng(7).uniform(-2, 2, size=(4, 3))
    observables = ["ZIZ", "IXI", "YYI"]
    want = StatevectorEstimator().run([(circuit, [[o] for o in observables], values)]).result()
    evs = want[0].data.evs  # shape (3, 4)

    # The circuit object itself, values by position.
    result = client.estimate(
        circuit, [[o] for o in observables], parameter_values=values, precision=0.0
    )
    assert result.shape == (3, 4)
    got = np.array(result.expectation_values).reshape(result.shape)
    assert np.abs(got - evs).max() <= 1e-9, f"{got} vs {evs}"

    # A PUB tuple whose values are keyed by parameters, a vector's two as one key.
    column = list(circuit.parameters).index  # (b, x[0], x[1])
    keyed = {(x[1], x[0]): values[:, [column(x[1]), column(x[0])]], b: values[:, column(b)]}
    job = client.run_pubs(
        [(circuit, [[o] for o in observables], keyed, 0.0)], primitive="estimator"
    )
    assert job.state is JobState.SUCCEEDED and job.result is not None
    got = np.array(job.result.estimator(0).expectation_values).reshape(3, 4)
    assert np.abs(got - evs).max() <= 1e-9

    # Qiskit's own EstimatorPub, its BindingsArray ordered otherwise again.
    pub = EstimatorPub.coerce(
        (circuit, "ZIZ", BindingsArray({(x[1], b, x[0]): values[:, [2, 0, 1]]}), 0.0)
    )
    job = client.run_pubs([pub])
    assert job.result is not None
    assert job.result.estimator(0).expectation_values == pytest.approx(evs[0], abs=1e-9)


@pytest.mark.timeout(60)
def test_sampler_pub_tuples_count_as_qiskit_counts(client: Client) -> None:
    from qiskit import QuantumCircuit
    from qiskit.circuit import Parameter
    from qiskit.primitives import StatevectorSampler
    from qiskit.primitives.containers.sampler_pub import SamplerPub

    # Angles 0 and pi: every outcome certain, so counts compare exactly.
    a, b = Parameter("a"), Parameter("b")
    circuit = QuantumCircuit(3)
    circuit.rx(b, 0)
    circuit.rx(a, 2)
    circuit.x(1)
    circuit.measure_all()
    values = np.array([[0.0, 0.0], [np.pi, 0.0], [0.0, np.pi], [np.pi, np.pi]])  # (a, b)
    keyed = {a: values[:, 0], b: values[:, 1]}
    want = StatevectorSampler(seed=3).run([(circuit, keyed, 16)]).result()[0]
    expected = [want.data.meas.get_counts(i) for i in range(4)]
    assert expected[1] == {"110": 16}  # a = pi flips qubit 2: character 0 is the highest bit

    job = client.run_pubs(
        [(circuit, keyed, 16), SamplerPub.coerce((circuit, keyed, 8)), (circuit, values, 16)],
        primitive="sampler",
        seed=3,
    )
    assert job.state is JobState.SUCCEEDED and job.result is not None
    first, second, third = (job.result.sampler(i) for i in range(3))
    assert [first.counts(i) for i in range(4)] == expected
    assert [second.counts(i) for i in range(4)] == [
        {k: v // 2 for k, v in c.items()} for c in expected
    ]
    # By position, in `circuit.parameters` order (a, b): the same bindings as `keyed`.
    assert [third.counts(i) for i in range(4)] == expected

    # A bare circuit, Qiskit's SamplerV2 form, with no parameters; and validate takes tuples.
    fixed = QuantumCircuit(2)
    fixed.x(0)
    fixed.measure_all()
    job = client.run_pubs([fixed], default_shots=5)
    assert job.result is not None and job.result.counts(0) == {"01": 5}
    assert client.validate([(circuit, values, 4)], primitive="sampler") is not None
