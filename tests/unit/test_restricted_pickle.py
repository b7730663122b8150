"""What a worker sends back is unpickled under a policy: code run in a compile worker (by a
parser bug on hostile input) must not run again in the gateway or a simulator worker through a
pickle that names os.system, an import with side effects, or a getattr chain."""

from __future__ import annotations

import os
import pickle
import sys
from pathlib import Path

import numpy as np
import pytest
from qiskit import QuantumCircuit, transpile
from qiskit.circuit import Clbit, Parameter, QuantumRegister, Qubit
from qiskit.circuit.classical import expr
from qiskit.circuit.library import UnitaryGate
from qiskit_aer import AerSimulator

from gateway.backends.base import ExecutionOutcome
from gateway.backends.qiskit.adapter import COMPILED_CIRCUIT, CircuitRef
from gateway.domain.bitarray import Counts, RegisterSpec
from gateway.domain.errors import FieldViolation
from gateway.domain.failures import FailureKind
from gateway.domain.jobs import EstimatorResult, JobResult, RegisterResult, SamplerResult
from gateway.runtime.restricted_pickle import WORKER_REPLY, PicklePolicy, RefusedPickle, loads


def _text(value: str) -> bytes:
    data = value.encode()
    return b"\x8c" + bytes([len(data)]) + data  # SHORT_BINUNICODE


def _global(module: str, name: str) -> bytes:
    """Protocol-4 opcodes that push module.name (STACK_GLOBAL, which allows a dotted name)."""
    return _text(module) + _text(name) + b"\x93"


def _pickle(body: bytes) -> bytes:
    return b"\x80\x04" + body + b"."


def _call(module: str, name: str, *args: str) -> bytes:
    """A pickle whose loading calls module.name(*args)."""
    return _pickle(_global(module, name) + b"(" + b"".join(map(_text, args)) + b"tR")


class _Evil:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[object, tuple[str]]:
        return (os.system, (f"touch {self.marker}",))


@pytest.mark.parametrize("policy", [WORKER_REPLY, COMPILED_CIRCUIT], ids=lambda p: p.what)
def test_a_pickle_that_runs_a_command_is_refused_before_it_runs(
    policy: PicklePolicy, tmp_path: Path
) -> None:
    marker = tmp_path / "ran"
    hostile = [
        pickle.dumps(("ok", _Evil(marker)), protocol=pickle.HIGHEST_PROTOCOL),
        _call("posix", "system", f"touch {marker}"),
        _call("builtins", "exec", f"open({str(marker)!r}, 'w')"),
        _call("subprocess", "Popen", "true"),
        # A class of an allowed module that is not the module's own (OrderedDict, ValidationError).
        _call("qiskit.circuit.quantumcircuit", "OrderedDict"),
        _call("gateway.config", "ValidationError"),
        # A dotted name walks attributes: from an allowed class to its module's globals.
        _pickle(_global("gateway.domain.jobs", "JobResult.__init__.__globals__")),
        _pickle(_global("qiskit.circuit", "QuantumCircuit.__init__.__globals__")),
        # A gateway class that is not plain data (it owns a process).
        _call("gateway.runtime.worker", "WorkerProcess"),
    ]
    for data in hostile:
        with pytest.raises(RefusedPickle):
            loads(data, policy)
    assert not marker.exists()


def test_getattr_reaches_only_the_named_attributes_of_allowed_classes() -> None:
    # Qiskit pickles a bit as getattr(Qubit, "_from_owned")(...): allowed. Anything else through
    # getattr (a function's __globals__, a class's __subclasses__) is refused.
    allowed = _pickle(_global("builtins", "getattr") + _global("qiskit.circuit", "Qubit"))
    allowed = allowed[:-1] + _text("_from_owned") + b"\x86R."
    assert callable(loads(allowed, COMPILED_CIRCUIT))
    for owner, name in [
        (_global("qiskit.circuit", "Qubit"), "__init__"),
        (_global("qiskit.circuit", "Qubit"), "__subclasses__"),
        (_global("functools", "partial"), "_from_owned"),
    ]:
        data = _pickle(_global("builtins", "getattr") + owner + _text(name) + b"\x86R")
        with pytest.raises(RefusedPickle):
            loads(data, COMPILED_CIRCUIT)
    # A worker's reply has no use for getattr at all.
    with pytest.raises(RefusedPickle):
        loads(allowed, WORKER_REPLY)


def test_a_module_outside_the_policy_is_never_imported(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Importing a module runs its code; "gatewayx" only starts like the allowed "gateway".
    marker = tmp_path / "imported"
    for module in ("gatewayx", "qiskit_circuit_evil"):
        (tmp_path / f"{module}.py").write_text(
            f"open({str(marker)!r}, 'w').close()\nclass Thing(Exception):\n    pass\n"
        )
    monkeypatch.syspath_prepend(str(tmp_path))
    for policy, module in [(WORKER_REPLY, "gatewayx"), (COMPILED_CIRCUIT, "qiskit_circuit_evil")]:
        with pytest.raises(RefusedPickle):
            loads(_call(module, "Thing"), policy)
        assert module not in sys.modules
    assert not marker.exists()


def test_every_kind_of_worker_reply_reads_back() -> None:
    counts = Counts.from_dict({"00": 3, "11": 5}, 2)
    sampler = SamplerResult(
        (2,), 8, (RegisterResult("c", 2, np.zeros((2, 8, 1), np.uint8), (counts, counts)),)
    )
    estimator = EstimatorResult((3,), np.array([0.5, 0.25, -1.0]), np.array([0.1, 0.1, 0.0]), 0.01)
    replies: list[tuple[object, ...]] = [
        ("ready", 4242),
        ("ok", ExecutionOutcome(result=JobResult((sampler, estimator)), sdk_versions={"aer": "x"})),
        ("failed", "X", "message", {"k": "v"}, FailureKind.CLIENT_ERROR.value),
        ("invalid", "BAD", "message", {}, [("f", "d")]),
        ("ok", (RegisterSpec(name="c", clbits=(0, 1)), FieldViolation("f", "d"), np.float64(2.5))),
        ("traced", 1, 2, ("memory",)),
    ]
    for reply in replies:
        data = pickle.dumps(reply, protocol=pickle.HIGHEST_PROTOCOL)
        assert pickle.dumps(loads(data, WORKER_REPLY), protocol=pickle.HIGHEST_PROTOCOL) == data


def test_compiled_circuits_of_every_kind_read_back_equal() -> None:
    theta = Parameter("theta")
    circuit = QuantumCircuit(3, 3)
    circuit.h(0)
    circuit.rz(theta * 2 + 1, 1)
    circuit.append(UnitaryGate(np.eye(2)), [2])
    circuit.cx(0, 1)
    circuit.reset(2)
    circuit.delay(10, 0)
    circuit.barrier()
    circuit.measure(0, 0)
    with circuit.if_test((circuit.clbits[0], 1)):
        circuit.x(1)
    with circuit.for_loop(range(2)):
        circuit.sx(2)
    with circuit.while_loop((circuit.clbits[1], 0)):
        circuit.x(1)
        circuit.measure(1, 1)
    circuit.measure([1, 2], [1, 2])
    transpiled = transpile(circuit, AerSimulator(), optimization_level=1, seed_transpiler=1)
    transpiled.append(UnitaryGate(np.eye(2)), [0])  # a matrix parameter, as an ndarray
    read = CircuitRef.of("k", transpiled).circuit()
    assert read == transpiled
    assert read.layout == transpiled.layout


def test_circuits_with_loose_bits_and_classical_variables_read_back_equal() -> None:
    circuit = QuantumCircuit([Qubit(), Clbit(), Clbit()], QuantumRegister(2, "q"))
    flag = circuit.add_var("flag", expr.lift(False))
    circuit.h(0)
    circuit.measure(0, 0)
    circuit.store(flag, expr.logic_not(flag))
    with circuit.if_test(expr.logic_and(flag, circuit.clbits[0])):
        circuit.x(1)
    with circuit.switch(circuit.clbits[1]) as case:
        with case(0):
            circuit.z(2)
        with case(1):  # a DEFAULT case does not pickle even with pickle.loads (Qiskit 2.6)
            circuit.y(2)
    circuit.rzz(Parameter("a") * Parameter("b"), 1, 2)
    assert CircuitRef.of("k", circuit).circuit() == circuit


def test_something_other_than_a_circuit_is_refused_as_a_compiled_circuit() -> None:
    with pytest.raises(RefusedPickle):
        CircuitRef("k", pickle.dumps(("not", "a", "circuit"))).circuit()
