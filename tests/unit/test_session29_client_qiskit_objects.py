"""What a Qiskit user has at hand, given to the Python client as is (session 29), in-process.

Before: a QuantumCircuit as the circuit raised "circuit must be OpenQASM text or QPY bytes"; a
PUB tuple, a SamplerPub or an EstimatorPub in `run_pubs`/`submit_pubs`/`validate` failed inside
protobuf; parameter values as a {Parameter: values} dict or a BindingsArray raised "must be a
number or nested lists of numbers"; `qgateway jobs get` had no `--json`. The gateway's answers
to the same inputs are pinned in tests/e2e/test_session29_client_qiskit_objects.py."""

from __future__ import annotations

import argparse
import asyncio
import io
import json
from typing import Any

import numpy as np
import pytest
from qgateway import AsyncClient, Client, Job, JobState
from qgateway.client import bindings_array, circuit_from_source, estimator_pub, sampler_pub
from qgateway.v1 import circuit_pb2, job_pb2, job_service_pb2
from qiskit import QuantumCircuit, qpy
from qiskit.circuit import Parameter, ParameterVector
from qiskit.primitives.containers import BindingsArray
from qiskit.primitives.containers.estimator_pub import EstimatorPub
from qiskit.primitives.containers.sampler_pub import SamplerPub

from gateway import cli


def _circuit() -> QuantumCircuit:
    x, a = ParameterVector("x", 2), Parameter("a")
    circuit = QuantumCircuit(2)
    circuit.ry(x[0], 0)
    circuit.rx(x[1] + a, 1)
    circuit.cx(0, 1)
    return circuit


def _loaded(message: circuit_pb2.Circuit) -> QuantumCircuit:
    assert message.WhichOneof("source") == "qpy"
    (circuit,) = qpy.load(io.BytesIO(message.qpy))
    return circuit


# --- 1. a QuantumCircuit as the circuit -----------------------------------------------------


def test_a_quantum_circuit_is_sent_as_qpy_with_its_parameters() -> None:
    circuit = _circuit()
    loaded = _loaded(circuit_from_source(circuit))
    assert loaded == circuit
    # The names the gateway binds by, in the order unnamed columns follow.
    assert [p.name for p in loaded.parameters] == ["a", "x[0]", "x[1]"]
    sampler = sampler_pub(circuit, shots=5).sampler
    assert _loaded(sampler.circuit) == circuit and sampler.shots == 5
    estimator = estimator_pub(circuit, "ZZ").estimator
    assert _loaded(estimator.circuit) == circuit


def test_a_circuit_of_another_kind_says_what_is_accepted() -> None:
    with pytest.raises(TypeError, match="OpenQASM text, QPY bytes, a qiskit QuantumCircuit"):
        circuit_from_source(42)


# --- 3. parameter values keyed by parameters -------------------------------------------------


def test_a_dict_of_parameters_becomes_named_columns() -> None:
    a, b = Parameter("a"), Parameter("b")
    v = ParameterVector("v", 2)
    values = {
        (a, b): [[0.0, 1.0], [2.0, 3.0], [4.0, 5.0]],  # shape (3, 2): one column per parameter
        "c": [10.0, 11.0, 12.0],  # one parameter: one number per binding
        v: -np.arange(6.0).reshape(3, 2),
    }
    message = bindings_array(values)
    assert message is not None
    assert list(message.parameters) == ["a", "b", "c", "v[0]", "v[1]"]
    assert list(message.shape) == [3]
    assert list(message.values) == [
        *(0.0, 1.0, 10.0, -0.0, -1.0),
        *(2.0, 3.0, 11.0, -2.0, -3.0),
        *(4.0, 5.0, 12.0, -4.0, -5.0),
    ]
    # Qiskit's BindingsArray of the same dict: the same columns and values.
    assert bindings_array(BindingsArray.coerce(values)) == message


def test_a_bindings_array_keeps_its_shape() -> None:
    a, b = Parameter("a"), Parameter("b")
    grid = np.arange(12.0).reshape(2, 3, 2)
    message = bindings_array(BindingsArray({(b, a): grid}))
    assert message is not None
    assert list(message.parameters) == ["b", "a"] and list(message.shape) == [2, 3]
    assert list(message.values) == grid.ravel().tolist()
    # One parameter, a trailing axis of 1 read as Qiskit reads it (shape (2,), not (2, 1)).
    single = bindings_array({a: [[0.5], [1.5]]})
    assert single is not None and list(single.shape) == [2] and list(single.values) == [0.5, 1.5]
    # One binding of one parameter: shape ().
    scalar = bindings_array({a: 0.25})
    assert scalar is not None and list(scalar.shape) == [] and list(scalar.values) == [0.25]
    # A sweep of a circuit with no parameters, and no sweep at all.
    empty = bindings_array(BindingsArray(shape=(3,)))
    assert empty is not None and list(empty.shape) == [3] and not empty.parameters
    assert bindings_array(BindingsArray()) is None


def test_keyed_values_that_disagree_are_refused_clearly() -> None:
    a, b = Parameter("a"), Parameter("b")
    with pytest.raises(ValueError, match="one sweep shape"):
        bindings_array({a: [1.0, 2.0], b: [1.0, 2.0, 3.0]})
    with pytest.raises(ValueError, match="one value per parameter"):
        bindings_array({(a, b): [1.0, 2.0, 3.0]})
    with pytest.raises(ValueError, match="named twice"):
        bindings_array({a: 1.0}, ["a"])


# --- 2. PUBs as Qiskit's primitives take them ------------------------------------------------


def _sent(client: Client, monkeypatch: pytest.MonkeyPatch) -> list[Any]:
    requests: list[Any] = []

    def unary(method: Any, request: Any, **kwargs: Any) -> Any:
        requests.append(request)
        return job_service_pb2.SubmitJobResponse(
            job=job_pb2.Job(name="jobs/j1", state=job_pb2.JOB_STATE_QUEUED), created=True
        )

    monkeypatch.setattr(client, "_unary", unary)
    return requests


def test_sampler_pub_tuples_and_objects(monkeypatch: pytest.MonkeyPatch) -> None:
    circuit = _circuit()
    circuit.measure_all()
    values = np.array([[0.1, 0.2, 0.3], [0.4, 0.5, 0.6]])
    with Client("127.0.0.1:1") as client:
        requests = _sent(client, monkeypatch)
        client.submit_pubs(
            [
                (circuit,),
                (circuit, values),
                (circuit, values, 7),
                (circuit, None, 9),
                SamplerPub.coerce((circuit, values, 11)),
                circuit,
            ],
            primitive="sampler",
        )
        # (circuit,) and a bare circuit need no primitive: they can only be a sampler's; the
        # messages inside a Pub are PUBs too (read before as a qiskit SamplerPub, shots 0).
        client.submit_pubs([(circuit,), circuit, sampler_pub(circuit, shots=3).sampler])
    pubs = [p.sampler for p in requests[0].spec.pubs]
    assert [p.shots if p.HasField("shots") else None for p in pubs] == [None, None, 7, 9, 11, None]
    assert all(_loaded(p.circuit) == circuit for p in pubs)
    assert not pubs[0].HasField("parameter_values") and not pubs[3].HasField("parameter_values")
    for p in (pubs[1], pubs[2]):
        assert list(p.parameter_values.shape) == [2] and not p.parameter_values.parameters
        assert list(p.parameter_values.values) == pytest.approx(values.ravel().tolist())
    # A SamplerPub's BindingsArray names its columns as the circuit does.
    assert list(pubs[4].parameter_values.parameters) == ["a", "x[0]", "x[1]"]
    assert [p.WhichOneof("pub") for p in requests[1].spec.pubs] == ["sampler"] * 3
    assert requests[1].spec.pubs[2].sampler.shots == 3


def test_estimator_pub_tuples_and_objects(monkeypatch: pytest.MonkeyPatch) -> None:
    circuit = _circuit()
    a, x0, x1 = circuit.parameters
    with Client("127.0.0.1:1") as client:
        requests = _sent(client, monkeypatch)
        client.validate(
            [
                (circuit, "ZZ"),
                (circuit, ["ZI", "IX"], [0.1, 0.2, 0.3]),
                (circuit, [["ZZ"], ["XX"]], {a: [1.0, 2.0, 3.0], (x0, x1): np.zeros((3, 2))}, 0.0),
                EstimatorPub.coerce((circuit, {"ZZ": 0.5, "XX": -1.0}, [0.1, 0.2, 0.3], 0.01)),
            ],
            primitive="estimator",
        )
    pubs = [p.estimator for p in requests[0].spec.pubs]
    assert pubs[0].single_observable and pubs[0].observables[0].terms[0].pauli == "ZZ"
    assert not pubs[0].HasField("precision")
    assert [o.terms[0].pauli for o in pubs[1].observables] == ["ZI", "IX"]
    assert list(pubs[1].parameter_values.values) == pytest.approx([0.1, 0.2, 0.3])
    assert list(pubs[2].observables_shape) == [2, 1] and pubs[2].precision == 0.0
    assert list(pubs[2].parameter_values.parameters) == ["a", "x[0]", "x[1]"]
    assert list(pubs[2].parameter_values.shape) == [3]
    assert list(pubs[2].parameter_values.values) == [1.0, 0, 0, 2.0, 0, 0, 3.0, 0, 0]
    # An EstimatorPub: its ObservablesArray, its BindingsArray's names, its precision.
    terms = {t.pauli: t.coefficient for t in pubs[3].observables[0].terms}
    assert pubs[3].single_observable and terms == {"ZZ": 0.5, "XX": -1.0}
    assert list(pubs[3].parameter_values.parameters) == ["a", "x[0]", "x[1]"]
    assert pubs[3].precision == pytest.approx(0.01)


def test_the_async_client_takes_the_same_pubs(monkeypatch: pytest.MonkeyPatch) -> None:
    circuit = _circuit()
    requests: list[Any] = []

    async def unary(method: Any, request: Any, **kwargs: Any) -> Any:
        requests.append(request)
        return job_service_pb2.SubmitJobResponse(job=job_pb2.Job(name="jobs/j1"))

    async def main() -> None:
        async with AsyncClient("127.0.0.1:1") as client:
            monkeypatch.setattr(client, "_unary", unary)
            await client.submit_pubs([(circuit, "ZZ", [0.1, 0.2, 0.3])], primitive="estimator")
            await client.validate([(circuit, [0.1, 0.2, 0.3], 5)], primitive="sampler")

    asyncio.run(main())
    assert requests[0].spec.pubs[0].WhichOneof("pub") == "estimator"
    assert requests[1].spec.pubs[0].sampler.shots == 5


def test_pubs_the_client_cannot_read_say_what_it_takes(monkeypatch: pytest.MonkeyPatch) -> None:
    circuit = _circuit()
    with Client("127.0.0.1:1") as client:
        requests = _sent(client, monkeypatch)
        with pytest.raises(ValueError, match="pass primitive='sampler' or primitive='estimator'"):
            client.submit_pubs([(circuit, "ZZ")])
        with pytest.raises(ValueError, match="observables are needed"):
            client.submit_pubs([(circuit,)], primitive="estimator")
        with pytest.raises(ValueError, match=r"\(circuit, parameter_values, shots\)"):
            client.submit_pubs([(circuit, None, 5, 6)], primitive="sampler")
        with pytest.raises(TypeError, match="shots must be an integer"):
            client.submit_pubs([(circuit, None, 5.5)], primitive="sampler")
        with pytest.raises(TypeError, match=r"a PUB is a Pub message .* QuantumCircuit"):
            client.submit_pubs([circuit], primitive="estimator")
        with pytest.raises(TypeError, match="a PUB is a Pub message"):
            client.submit_pubs([{"circuit": circuit}])
        with pytest.raises(ValueError, match="primitive must be 'sampler' or 'estimator'"):
            client.submit_pubs([(circuit,)], primitive="Sampler")
    assert requests == []


# --- 4. `qgateway jobs get --json` -----------------------------------------------------------


def test_jobs_get_json(capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    result = job_pb2.JobResult(
        pub_results=[job_pb2.PubResult(estimator=job_pb2.EstimatorPubResult(shape=[2]))]
    )
    message = job_pb2.Job(
        name="jobs/j1",
        state=job_pb2.JOB_STATE_SUCCEEDED,
        tenant="default",
        backend="backends/aer",
        num_pubs=1,
        execution=job_pb2.ExecutionInfo(backend="backends/aer", seed=2**62 + 5),
    )
    message.create_time.FromSeconds(1_800_000_000)
    asked: list[bool] = []

    class Fake:
        def __enter__(self) -> Fake:
            return self

        def __exit__(self, *exc: object) -> None:
            pass

        def get_job(self, name: str, *, view_basic: bool, timeout: float | None) -> Job:
            asked.append(view_basic)
            from qgateway import JobResult

            full = None if view_basic else JobResult.from_proto(result)
            return Job.from_proto(message, result=full)

    def make(args: argparse.Namespace) -> Fake:
        return Fake()

    monkeypatch.setattr(cli, "_client", make)
    assert cli.main(["jobs", "get", "j1", "--json"]) == 0
    shown = json.loads(capsys.readouterr().out)
    assert shown["job"] == "jobs/j1" and shown["state"] == JobState.SUCCEEDED.value
    assert shown["seed"] == str(2**62 + 5)  # a string, as `run --json` writes it
    assert shown["backend"] == "backends/aer" and shown["tenant"] == "default"
    assert shown["create_time"] == "2027-01-15T08:00:00+00:00"
    assert shown["error"] is None and "pubs" not in shown
    assert cli.main(["jobs", "get", "j1", "--json", "--result"]) == 0
    shown = json.loads(capsys.readouterr().out)
    assert shown["pubs"] == [{"shape": [2], "expectation_values": [], "standard_errors": []}]
    assert asked == [True, False]
