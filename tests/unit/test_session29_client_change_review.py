"""Review of session 29's client changes (7e8a3a7, 5c9af3f), in-process: what Qiskit code hands
the Python client, compared with what Qiskit's own primitives do with it.

Most conversions held (keyed dicts of every shape, BindingsArray, ObservablesArray, PUB tuples
and objects, QuantumCircuits as QPY); these are the defects found, each fixed."""

from __future__ import annotations

import io
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from qgateway import Client
from qgateway.client import sampler_pub
from qiskit import QuantumCircuit, qasm3, qpy
from qiskit.circuit import Parameter, ParameterVector
from qiskit.primitives import StatevectorSampler

from gateway.backends.qiskit import frontend as fe
from gateway.domain.circuits import Bindings
from gateway.domain.errors import InvalidArgument

CLIENT = Path(__file__).resolve().parents[2] / "clients" / "python"


def test_the_client_sends_openqasm_text_with_qiskit_and_numpy_blocked() -> None:
    # "qiskit stays optional": a program that blocks it (sys.modules["qiskit"] = None, as
    # tests and sandboxes do) has "qiskit" in sys.modules, so the QuantumCircuit check imported
    # it and every OpenQASM PUB raised ModuleNotFoundError from deep in the client.
    script = (
        "import sys\n"
        "sys.modules['qiskit'] = None\n"
        "sys.modules['numpy'] = None\n"
        "from qgateway.client import _pubs, sampler_pub\n"
        "src = 'OPENQASM 3.0; input float a; qubit q; rx(a) q;'\n"
        "pub = _pubs([(src, 'Z', {'a': [0.1, 0.2]}, 0.01)], 'estimator')[0]\n"
        "assert list(pub.estimator.parameter_values.shape) == [2]\n"
        "assert sampler_pub(src).sampler.circuit.qasm3 == src\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", script],
        env={"PYTHONPATH": str(CLIENT), "PYTHONDONTWRITEBYTECODE": "1"},
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-2000:]


def test_a_circuit_whose_metadata_json_cannot_write_is_sent() -> None:
    # Qiskit's primitives run a circuit whatever its metadata holds (np.int64 from a loop
    # index, an array of angles); qpy.dump's default JSON encoder raised "Object of type int64
    # is not JSON serializable" from inside json. The gateway never reads the metadata.
    circuit = QuantumCircuit(1, metadata={"index": np.int64(3), "angles": np.array([0.5])})
    circuit.x(0)
    circuit.measure_all()
    want = StatevectorSampler(seed=1).run([circuit], shots=4).result()[0].data.meas.get_counts()
    assert want == {"1": 4}

    message = sampler_pub(circuit).sampler.circuit
    (loaded,) = qpy.load(io.BytesIO(message.qpy))
    assert loaded == circuit  # the same operations (QuantumCircuit equality skips metadata)
    assert loaded.metadata == {"index": 3, "angles": [0.5]}


def test_a_vector_element_whose_declared_name_a_parameter_holds_is_named_in_the_error() -> None:
    # A vector x and a parameter named "_x_1_": qasm3.dumps declares x[1] as `_x_1__0`, so
    # `_as_declared` read the column "x[1]" (named as Qiskit names it) as the plain `_x_1_`,
    # and the gateway said only "parameter names must be unique" of two distinct names.
    x = ParameterVector("x", 2)
    circuit = QuantumCircuit(1)
    circuit.rx(x[0], 0)
    circuit.ry(x[1], 0)
    circuit.rz(Parameter("_x_1_"), 0)
    declared = tuple(
        sorted(
            line.split()[-1].rstrip(";")
            for line in qasm3.dumps(circuit).splitlines()
            if line.startswith("input ")
        )
    )
    assert declared == ("_x_0_", "_x_1_", "_x_1__0")
    columns = tuple(p.name for p in circuit.parameters)  # ("_x_1_", "x[0]", "x[1]")
    with pytest.raises(InvalidArgument) as info:
        fe.resolve_bindings(Bindings(columns, (), np.array([0.1, 0.2, 0.3])), declared, "pubs[0]")
    assert "'x[1]'" in info.value.message and "'_x_1_'" in info.value.message


def test_a_bare_circuit_for_an_estimator_says_observables_are_needed() -> None:
    # Before: "a PUB is ... a QuantumCircuit, ...; not QuantumCircuit", which lists the very
    # form given as accepted. Qiskit's EstimatorPub.coerce refuses a bare circuit too.
    circuit = QuantumCircuit(1)
    circuit.h(0)
    with Client("127.0.0.1:1") as client, pytest.raises(TypeError, match="needs observables"):
        client.validate([circuit], primitive="estimator")
