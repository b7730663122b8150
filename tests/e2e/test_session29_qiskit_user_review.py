"""The Python client fed what Qiskit code has at hand, on the session gateway (session 29).

Before its fixes (tests/unit/test_session29_qiskit_user_review.py pins each in-process):
binding columns named by the circuit's own Parameter objects raised protobuf's "bad argument
type for built-in operation", a SparseObservable was refused as "not an observable", and a
result indexed by np.argmin's numpy integer raised "'numpy.int64' object is not iterable".
Here the same inputs run on Aer and agree with Qiskit's StatevectorEstimator."""

from __future__ import annotations

import io
from collections.abc import Iterator

import numpy as np
import pytest
from qgateway import Client, RetryPolicy


@pytest.fixture(scope="module")
def client(address: str) -> Iterator[Client]:
    with Client(address, retry=RetryPolicy(max_attempts=1)) as c:
        yield c


@pytest.mark.timeout(60)
def test_parameter_objects_and_sparse_observables_run_as_qiskit_runs_them(
    client: Client,
) -> None:
    from qiskit import QuantumCircuit, qpy
    from qiskit.circuit import Parameter, ParameterVector
    from qiskit.primitives import StatevectorEstimator
    from qiskit.quantum_info import SparseObservable

    x, a = ParameterVector("x", 3), Parameter("a")
    circuit = QuantumCircuit(3)
    circuit.ry(x[0], 0)
    circuit.rx(x[1], 1)
    circuit.ry(x[2] + a, 2)
    circuit.cx(0, 2)
    buffer = io.BytesIO()
    qpy.dump(circuit, buffer)
    values = np.random.default_rng(5).uniform(-2, 2, size=(4, 4))  # circuit.parameters order
    observables = [
        [SparseObservable.from_sparse_list([("ZX", [2, 0], 0.5), ("Y", [1], -1.0)], 3)],
        [SparseObservable("ZIZ")],
    ]
    want = StatevectorEstimator().run([(circuit, observables, values)]).result()[0].data.evs
    # Columns in an order of the user's own, named by the Parameter objects (neither the
    # circuit's order nor the names' sort order), values permuted to match.
    order = [x[2], a, x[0], x[1]]
    columns = [list(circuit.parameters).index(p) for p in order]
    result = client.estimate(
        buffer.getvalue(),
        observables,
        parameter_values=values[:, columns],
        parameters=order,
        precision=0.0,
    )
    assert result.shape == (2, 4)
    got = np.array(result.expectation_values).reshape(result.shape)
    assert np.abs(got - want).max() <= 1e-9, f"{got} vs {want}"
    # The lowest value, found as a numpy user finds it.
    assert result.expectation_value(np.argmin(result.expectation_values)) == pytest.approx(
        want.min()
    )


# By position, an OpenQASM 3 program's `input`s bind in name order, as Qiskit's reader orders
# the circuit it builds (test_circuit_parameters_come_in_qiskit_order pins that), and
# `qasm3.dumps` writes a ParameterVector's θ[10] as `_θ_10_`, which sorts before `_θ_2_`: values
# in `ansatz.parameters` order bind to other parameters there, as they do in Qiskit after
# `qasm3.loads`. Naming the columns by the ansatz's own parameters was no way out ("θ[0]" was
# not the program's name): such a name now names the input `dumps` declared for it.
@pytest.mark.timeout(60)
def test_qasm3_dumps_of_a_library_ansatz_binds_by_the_circuits_own_parameters(
    client: Client,
) -> None:
    from qiskit import qasm3
    from qiskit.circuit.library import real_amplitudes
    from qiskit.primitives import StatevectorEstimator
    from qiskit.quantum_info import SparsePauliOp

    ansatz = real_amplitudes(2, reps=5)  # θ[0] ... θ[11]
    values = np.random.default_rng(2).uniform(-3, 3, size=ansatz.num_parameters)
    hamiltonian = SparsePauliOp(["ZZ", "XI"])
    want = StatevectorEstimator().run([(ansatz, hamiltonian, values)]).result()[0].data.evs
    program = qasm3.dumps(ansatz)
    named = client.estimate(
        program, hamiltonian, parameter_values=values, parameters=ansatz.parameters, precision=0.0
    )
    assert named.expectation_values == pytest.approx([float(want)], abs=1e-9)
    # By position: Qiskit's own reader's order, as documented (1.0567 wanted, 0.7950 got).
    loaded = qasm3.loads(program)
    reread = StatevectorEstimator().run([(loaded, hamiltonian, values)]).result()[0].data.evs
    positional = client.estimate(program, hamiltonian, parameter_values=values, precision=0.0)
    assert positional.expectation_values == pytest.approx([float(reread)], abs=1e-9)
    assert abs(float(reread) - float(want)) > 0.1
