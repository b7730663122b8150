"""What a worker sends back is data (reply_codec), and a compiled circuit is QPY: code run in a
compile worker (by a parser bug on hostile input) must not run again in the gateway or in a
simulator worker through what they read from it. A restricted Unpickler was tried first and a
review ran code through it (a pickle's BUILD sets attributes on the classes it may name)."""

from __future__ import annotations

import dataclasses
import hashlib
import io
import os
import pickle
import sys
from pathlib import Path
from typing import Any

import msgpack
import numpy as np
import pytest
from qiskit import QuantumCircuit, qpy, transpile
from qiskit.circuit import Clbit, Parameter, QuantumRegister, Qubit
from qiskit.circuit.classical import expr
from qiskit.circuit.library import UnitaryGate
from qiskit_aer import AerSimulator

from gateway.backends.base import ExecutionOutcome
from gateway.backends.loopback.adapter import LoopbackCircuit
from gateway.backends.qiskit.adapter import CircuitRef, CompiledCircuit
from gateway.backends.qiskit.qpy_reader import QPY_MAX_VERSION
from gateway.domain.bitarray import Counts, RegisterSpec
from gateway.domain.circuits import CircuitFeature
from gateway.domain.failures import FailureKind
from gateway.domain.jobs import EstimatorResult, JobResult, RegisterResult, SamplerResult
from gateway.runtime.reply_codec import RefusedReply, decode, encode
from tests.qpy_payloads import dump, patch_header, top_header_offset, x_on


class _Evil:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[object, tuple[str]]:
        return (os.system, (f"touch {self.marker}",))


def _object(tag: str, fields: list[object]) -> msgpack.ExtType:
    return msgpack.ExtType(1, msgpack.packb([tag, fields], use_bin_type=True))


def _reply(*values: object) -> bytes:
    return msgpack.packb(("ok", *values), use_bin_type=True)


def test_replies_that_are_not_data_a_worker_sends_are_refused(tmp_path: Path) -> None:
    marker = tmp_path / "ran"
    dtype = msgpack.packb(["|O", [1], b"A" * 8], use_bin_type=True)
    hostile = [
        pickle.dumps(("ok", _Evil(marker))),  # the old wire format: refused, never unpickled
        b"",
        b"\xc1",  # a byte msgpack never writes
        msgpack.packb(["ok"]),  # a list, not the tuple... which msgpack cannot tell apart:
        msgpack.packb({"ok": 1}),
        msgpack.packb((1, 2)),  # untagged
        _reply(_object("posix:system", [f"touch {marker}"])),
        _reply(_object("gateway.runtime.reply_codec:RefusedReply", ["x"])),
        _reply(_object("gateway.domain.policies:Principal", ["t", True])),
        _reply(_object("gateway.__main__:x", [])),  # importing it would start a gateway
        _reply(msgpack.ExtType(4, dtype)),  # an object array: its bytes would be pointers
        _reply(msgpack.ExtType(4, msgpack.packb(["<f8", [-1], b""]))),
        _reply(msgpack.ExtType(4, msgpack.packb(["<f8", [2, 2], b"x" * 8]))),  # wrong size
        _reply(msgpack.ExtType(5, msgpack.packb([3, "not bytes", b""]))),
        _reply(msgpack.ExtType(2, msgpack.packb(["gateway.domain.circuits:CircuitFeature", "x"]))),
        _reply(msgpack.ExtType(99, b"")),
        # A registered class with the wrong number of fields.
        _reply(_object("gateway.domain.bitarray:RegisterSpec", ["c"])),
    ]
    for data in hostile[:3] + hostile[4:]:
        with pytest.raises(RefusedReply):
            decode(data)
    assert not marker.exists()
    assert "gateway.__main__" not in sys.modules
    # msgpack has one array type: a list reads as the tuple a reply is.
    assert decode(hostile[3]) == ("ok",)


def _compiled(**changes: object) -> CompiledCircuit:
    fields: dict[str, Any] = {
        "ref": CircuitRef(b"QISKIT..."),
        "num_qubits": 2,
        "num_clbits": 2,
        "parameters": ("a",),
        "keeps_parameters": True,
        "features": frozenset({CircuitFeature.MID_CIRCUIT_MEASUREMENT}),
        "has_measurements": True,
        "terminal": False,
        "writes_clbits": True,
        "registers": (RegisterSpec(name="c", clbits=(0, 1)),),
        "layout": (1, 0),
        "active_qubits": 2,
        "memory_bytes": 64,
        "operations": 3,
        "amplitudes": 4,
        "has_while_loop": True,
    }
    fields.update(changes)
    return CompiledCircuit(**fields)


def _sampler() -> SamplerResult:
    counts = Counts.from_dict({"00": 3, "11": 5}, 2)
    samples = np.arange(16, dtype=np.uint8).reshape(2, 8, 1)
    return SamplerResult((2,), 8, (RegisterResult("c", 2, samples, (counts, counts)),))


def test_every_kind_of_worker_reply_reads_back() -> None:
    estimator = EstimatorResult((3,), np.array([0.5, 0.25, -1.0]), np.array([0.1, 0.1, 0.0]), 0.01)
    outcome = ExecutionOutcome(
        result=JobResult((_sampler(), estimator)),
        sdk_versions={"qiskit-aer": "0.18"},
        seeded=False,
        execution_seconds=np.float64(0.25),
        tasks=2,
    )
    back = decode(encode(("traced", 1, 2, ("ok", outcome))))
    assert back[:3] == ("traced", 1, 2)
    read = back[3][1]
    assert isinstance(read, ExecutionOutcome)
    assert (read.sdk_versions, read.seeded, read.execution_seconds, read.tasks) == (
        {"qiskit-aer": "0.18"},
        False,
        0.25,
        2,
    )
    sampler, est = read.result.pubs
    register = sampler.registers[0]
    assert (sampler.shape, sampler.shots, register.name, register.num_bits) == ((2,), 8, "c", 2)
    assert np.array_equal(register.samples, _sampler().registers[0].samples)
    assert dict(register.counts[1]) == {"00": 3, "11": 5}
    assert np.array_equal(est.expectation_values, estimator.expectation_values)
    assert est.precision == 0.01
    assert type(read.execution_seconds) is np.float64  # NumPy scalars stay NumPy scalars
    scalar = EstimatorResult((), np.float64(0.5), np.float64(0.0), 0.0)  # shape (): scalars
    read_scalar = decode(encode(("ok", scalar)))[1]
    assert type(read_scalar.expectation_values) is np.float64
    assert read_scalar.expectation_values == 0.5
    for reply in [
        ("ready", 4242),
        ("failed", "X", "message", {"k": "v"}, FailureKind.CLIENT_ERROR.value),
        ("invalid", "BAD", "message", {}, (("f", "d"),)),
        ("unavailable", "the target"),
        ("memory",),
    ]:
        assert decode(encode(reply)) == reply


def test_compile_replies_read_back() -> None:
    compiled = _compiled()
    read = decode(encode(("ok", compiled)))[1]
    assert isinstance(read, CompiledCircuit)
    assert read.__dict__ == compiled.__dict__
    loopback = LoopbackCircuit("OPENQASM 3.0;", 1, (), (("c", 1),), (0,), 1, 16, 1, False)
    assert decode(encode(("ok", loopback)))[1].__dict__ == loopback.__dict__


def test_a_worker_cannot_send_what_no_reply_holds() -> None:
    # The worker's own side: an unregistered type is the adapter's bug, caught where it starts.
    with pytest.raises(TypeError):
        encode(("ok", object()))
    with pytest.raises(TypeError):
        encode(("ok", np.array([object()])))


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
    transpiled.append(UnitaryGate(np.eye(2)), [0])
    read = CircuitRef.of(transpiled).circuit()
    assert read == transpiled
    assert read.layout == transpiled.layout


def test_circuits_with_loose_bits_classical_variables_and_switches_read_back_equal() -> None:
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
        with case(case.DEFAULT):  # which a pickle could not carry (Qiskit 2.6)
            circuit.y(2)
    circuit.rzz(Parameter("a") * Parameter("b"), 1, 2)
    assert CircuitRef.of(circuit).circuit() == circuit


def test_a_pickle_is_not_read_as_a_compiled_circuit(tmp_path: Path) -> None:
    marker = tmp_path / "ran"
    with pytest.raises(ValueError):
        CircuitRef(pickle.dumps(_Evil(marker))).circuit()
    assert not marker.exists()


def test_a_deeply_nested_reply_is_refused_not_a_crash() -> None:
    # Each extension level re-entered msgpack's C unpacker: ~200 of them (a 722-byte reply)
    # overran the stack and segfaulted the gateway, whose event loop decodes small replies.
    value: object = 0
    for _ in range(400):
        value = msgpack.ExtType(3, msgpack.packb([value]))
    data = msgpack.packb(("ok", value))
    assert len(data) < 4096
    with pytest.raises(RefusedReply):
        decode(data)


def test_counts_that_no_simulation_gives_are_refused() -> None:
    negative = np.array([-5], dtype=np.int64).tobytes()
    for num_bits, outcomes, counts in [(1, b"\x00", negative), ((1 << 63) - 1, b"", b"")]:
        with pytest.raises(RefusedReply):
            decode(_reply(msgpack.ExtType(5, msgpack.packb([num_bits, outcomes, counts]))))


def _as_sent(compiled: CompiledCircuit, **changes: object) -> bytes:
    """A compile reply carrying `compiled` with fields changed past the constructor's checks,
    as a compile worker taken over could send it."""
    tag = "gateway.backends.qiskit.adapter:CompiledCircuit"
    data = encode(("ok", compiled))
    ok, value = msgpack.unpackb(data, ext_hook=lambda c, d: (c, d))
    _, payload = value
    _, fields = msgpack.unpackb(payload, ext_hook=msgpack.ExtType, strict_map_key=False)
    names = [f.name for f in dataclasses.fields(CompiledCircuit)]
    for name, changed in changes.items():
        fields[names.index(name)] = changed
    return msgpack.packb((ok, msgpack.ExtType(1, msgpack.packb([tag, fields]))))


@pytest.mark.parametrize(
    "changes",
    [
        {"num_qubits": 2**33, "layout": []},  # 2^33 qubits held the event loop 16 s, 4.4 GB
        {"amplitudes": -(10**12)},  # cancelled other PUBs' work against max_execution_work
        {"memory_bytes": -1},
        {"layout": [0]},  # one qubit unaccounted for by the per-job qubit policy
        {"layout": [0, 0]},
        {"operations": 1.5},
        {"num_clbits": 1},  # the register's bit 1 past the circuit's clbits
        {"features": msgpack.ExtType(3, msgpack.packb(["x"]))},
        {"terminal": 1},
    ],
)
def test_a_compiled_circuit_that_no_compile_makes_is_refused(changes: dict[str, object]) -> None:
    assert decode(_as_sent(_compiled()))[1].__dict__ == _compiled().__dict__  # the unchanged one
    with pytest.raises(RefusedReply):
        decode(_as_sent(_compiled(), **changes))


def test_a_compile_reply_cannot_choose_the_key_workers_cache_its_circuit_by() -> None:
    # The key was sent with the circuit: a worker taken over named another tenant's circuit's
    # key, and that tenant's next job on a shared simulator worker ran the attacker's circuit.
    assert [f.name for f in dataclasses.fields(CircuitRef)] == ["data"]
    read = decode(encode(("ok", CircuitRef(b"QISKIT-one"))))[1]
    assert read.key == hashlib.blake2b(b"QISKIT-one", digest_size=16).hexdigest()
    assert read.key != CircuitRef(b"QISKIT-two").key


def test_qpy_declaring_more_than_any_backend_has_is_refused_before_it_is_read() -> None:
    # In the gateway (IBM and Braket runners) a 417-byte payload declaring 2^25 qubits took
    # 12 GB before the reader gave up.
    version = QPY_MAX_VERSION
    data = dump(x_on([0, 1], 2), version)
    start = top_header_offset(version)
    for field in ("num_qubits", "num_clbits"):
        patched = data[:start] + patch_header(data[start:], field, 2**25)
        with pytest.raises(ValueError):
            CircuitRef(patched).circuit()
    assert CircuitRef(data).circuit().num_qubits == 2


def _delays(circuit: QuantumCircuit) -> list[tuple[object, str]]:
    found: list[tuple[object, str]] = []
    for instruction in circuit.data:
        operation = instruction.operation
        if operation.name == "delay":
            found.append((operation.duration, operation.unit))
        for block in getattr(operation, "blocks", ()):
            found += _delays(block)
    return found


def test_delays_keep_their_units_through_qpy() -> None:
    # Qiskit 2.6's QPY reader reads every delay's unit as dt: 10 ns came back as 10 dt, and
    # 1.5 us did not load (a job with `delay[1.5us]` failed on its worker).
    circuit = QuantumCircuit(2, 1)
    circuit.metadata = {"client": "kept"}
    circuit.delay(1.5, 0, unit="us")
    circuit.delay(10.0, 1, unit="ns")
    circuit.measure(0, 0)
    with circuit.if_test((circuit.clbits[0], 1)) as otherwise:
        circuit.delay(2e-9, 1, unit="s")
    with otherwise:
        circuit.delay(7, 1, unit="dt")
    with circuit.for_loop(range(2)):
        circuit.delay(3.0, 0, unit="ps")
    read = CircuitRef.of(circuit).circuit()
    assert (
        _delays(read)
        == _delays(circuit)
        == [
            (1.5, "us"),
            (10.0, "ns"),
            (2e-9, "s"),
            (7, "dt"),
            (3.0, "ps"),
        ]
    )
    assert read.metadata == {"client": "kept"}
    assert circuit.metadata == {"client": "kept"}  # the compiled circuit itself untouched


def test_delay_units_that_do_not_match_the_delays_are_refused() -> None:
    circuit = QuantumCircuit(1)
    circuit.delay(1.5, 0, unit="us")
    for units in (["us", "ns"], [], ["parsec"], "us"):
        circuit.metadata = {"qgateway.delay_units": units}
        buffer = io.BytesIO()
        qpy.dump(circuit, buffer)
        with pytest.raises(ValueError):
            CircuitRef(buffer.getvalue()).circuit()


def test_a_clients_own_delay_units_entry_is_not_obeyed() -> None:
    # A client's QPY metadata naming the entry made a 10 dt delay run as 10 s.
    circuit = QuantumCircuit(1)
    circuit.metadata = {"qgateway.delay_units": ["s"], "client": "kept"}
    circuit.delay(10, 0)
    read = CircuitRef.of(circuit).circuit()
    assert _delays(read) == [(10, "dt")]
    assert read.metadata == {"client": "kept"}
    with_units = QuantumCircuit(1)
    with_units.metadata = {"qgateway.delay_units": ["s", "s"]}
    with_units.delay(1.5, 0, unit="us")
    assert _delays(CircuitRef.of(with_units).circuit()) == [(1.5, "us")]


def _nested_sets(levels: int) -> frozenset[object]:
    value: frozenset[object] = frozenset({1})
    for _ in range(levels - 1):
        value = frozenset({value})
    return value


def test_extension_types_nest_at_most_sixteen_deep() -> None:
    assert decode(encode(("ok", _nested_sets(16))))[1] == _nested_sets(16)
    with pytest.raises(RefusedReply, match="nested deeper than 16"):
        decode(encode(("ok", _nested_sets(17))))


def test_counts_of_zero_are_refused() -> None:
    # A simulation reports only the outcomes it saw: a count of zero is no simulation's.
    zero = np.array([0], dtype=np.int64).tobytes()
    with pytest.raises(RefusedReply, match="not positive"):
        decode(_reply(msgpack.ExtType(5, msgpack.packb([1, b"\x00", zero]))))


def test_counts_as_wide_as_the_bound_read_back_and_one_bit_more_is_refused() -> None:
    widest = 1 << 24
    outcome = b"\x01" + b"\x00" * (widest // 8 - 1)
    one = np.array([1], dtype=np.int64).tobytes()
    read = decode(_reply(msgpack.ExtType(5, msgpack.packb([widest, outcome, one]))))[1]
    assert isinstance(read, Counts) and read.num_bits == widest
    with pytest.raises(RefusedReply, match="bits"):
        decode(_reply(msgpack.ExtType(5, msgpack.packb([widest + 1, outcome + b"\x00", one]))))


def test_an_empty_array_reads_back() -> None:
    # No samples kept, no bindings: a zero-length axis is a result a worker sends.
    for shape in [(0,), (3, 0)]:
        empty = np.zeros(shape, dtype=np.float64)
        read = decode(encode(("ok", empty)))[1]
        assert read.shape == shape and read.dtype == np.float64


@pytest.mark.parametrize("dtype", ["<f4", "<U1", "|V8", "<M8[s]", ">i8"])
def test_an_array_of_a_dtype_no_worker_sends_is_refused(dtype: str) -> None:
    array = msgpack.ExtType(4, msgpack.packb([dtype, [1], b"\x00" * 8]))
    with pytest.raises(RefusedReply, match="dtype"):
        decode(_reply(array))


def test_an_empty_reply_is_refused() -> None:
    # Every caller reads reply[0]: an empty tuple was an IndexError in the gateway, its worker
    # kept.
    with pytest.raises(RefusedReply):
        decode(encode(()))
