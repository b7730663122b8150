"""The Python client used as a Qiskit user would use it, reviewed in-process (session 29).

Each finding failed before its fix: a result indexed with a numpy integer (what np.argmin and
np.ndindex's neighbours hand out) raised "'numpy.int64' object is not iterable"; parameter
columns named by the circuit's own Parameter objects (`circuit.parameters`, a ParameterVector)
raised protobuf's "bad argument type for built-in operation", and one name given as a bare
string was split into letters; a SparseObservable, which Qiskit's EstimatorV2 takes, was
refused as "not an observable"."""

from __future__ import annotations

import numpy as np
import pytest
from qgateway.client import bindings_array, estimator_pub, observables_from
from qgateway.results import EstimatorPubResult, RegisterData, SamplerPubResult


def _estimates() -> EstimatorPubResult:
    # Shape (2, 3), row-major: value i*3+j at [i, j].
    return EstimatorPubResult(
        shape=(2, 3),
        expectation_values=[0.5, -1.0, 0.25, 0.0, 0.75, -0.5],
        standard_errors=[0.01 * k for k in range(6)],
        precision=0.01,
    )


# --- 1. numpy integers as binding indices --------------------------------------------------------


def test_a_numpy_integer_indexes_a_result() -> None:
    # The lowest energy's index, as a Qiskit user finds it: np.argmin returns np.intp, not
    # int, and was read as a per-dimension index ("'numpy.int64' object is not iterable").
    result = _estimates()
    best = np.argmin(result.expectation_values)
    assert result.expectation_value(best) == -1.0
    assert result.standard_error(np.int64(5)) == pytest.approx(0.05)
    # np.unravel_index gives a tuple of numpy integers: per dimension, as before.
    assert result.expectation_value(np.unravel_index(best, result.shape)) == -1.0
    # A sampler register's binding index too.
    register = RegisterData(
        name="c",
        num_bits=1,
        shape=(2,),
        shots=2,
        samples=bytes([0, 1, 1, 1]),
        counts_by_binding=(),
    )
    pub = SamplerPubResult(shape=(2,), shots=2, registers={"c": register})
    assert pub.counts(np.int32(1)) == {"1": 2}
    with pytest.raises(IndexError):
        result.expectation_value(np.int64(6))


# --- 2. Parameter objects as column names --------------------------------------------------------


def test_parameter_objects_name_the_columns() -> None:
    # A Qiskit user's columns are Parameter objects: circuit.parameters, a ParameterVector,
    # or a list of them in the order their values come. Each column is the parameter's name,
    # as the gateway names a QPY circuit's parameters (Parameter.name; "x[0]" for a vector's).
    from qiskit import QuantumCircuit
    from qiskit.circuit import Parameter, ParameterVector

    theta, x = Parameter("theta"), ParameterVector("x", 2)
    circuit = QuantumCircuit(2)
    circuit.rx(theta, 0)
    circuit.ry(x[0], 1)
    circuit.rz(x[1], 1)
    message = bindings_array([0.1, 0.2, 0.3], circuit.parameters)
    assert message is not None
    assert list(message.parameters) == ["theta", "x[0]", "x[1]"]
    reordered = bindings_array([[0.3, 0.2], [0.5, 0.4]], list(reversed(x)))
    assert reordered is not None
    assert list(reordered.parameters) == ["x[1]", "x[0]"]


def test_one_name_as_a_bare_string_is_refused_clearly() -> None:
    # parameters="theta" was read as the names "t", "h", "e", "t", "a": with five values per
    # binding that silently named five columns no circuit has; with one, the error spoke of
    # "5 parameter names for 1 values".
    with pytest.raises(TypeError, match="a list of parameter names"):
        bindings_array([0.1], "theta")


# --- 3. SparseObservable -------------------------------------------------------------------------


def test_a_sparse_observable_is_an_observable() -> None:
    # Qiskit's EstimatorV2 takes a SparseObservable as it takes a SparsePauliOp. Sent as Pauli
    # strings of the observable's full width (character 0 on the highest qubit), so the
    # gateway still checks its width against the circuit's, as for a SparsePauliOp.
    from qiskit.quantum_info import SparseObservable

    observable = SparseObservable.from_sparse_list([("ZX", [2, 0], 0.5), ("", [], -2.0)], 3)
    flat, shape = observables_from(observable)
    assert shape == ()
    # (simplified first, as a SparsePauliOp is: that puts the terms in canonical order)
    assert sorted((t.pauli, list(t.qubits), t.coefficient) for t in flat[0].terms) == [
        ("III", [], -2.0),
        ("ZIX", [], 0.5),
    ]
    # In a list (an array of shape (2,)), as estimator PUB observables.
    pub = estimator_pub(
        "OPENQASM 3.0; qubit[3] q;", [observable, SparseObservable("YII")], precision=0.0
    )
    assert [sorted(t.pauli for t in o.terms) for o in pub.estimator.observables] == [
        ["III", "ZIX"],
        ["YII"],
    ]
    assert list(pub.estimator.observables_shape) == [] and not pub.estimator.single_observable


def test_a_sparse_observables_projectors_are_refused_clearly() -> None:
    # Projector terms ("0", "1", "+", "-", "r", "l") are not Pauli strings: the client says
    # so, rather than sending letters the gateway reads as a malformed Pauli string.
    from qiskit.quantum_info import SparseObservable

    with pytest.raises(ValueError, match="projector"):
        observables_from(SparseObservable.from_sparse_list([("+Z", [1, 0], 1.0)], 2))
