"""Attacker review of costs on the backends the first cost review left: PennyLane's devices, Aer's
state vector estimator and the estimator's combination of terms into observables (shared by
Aer, Braket and PennyLane), and the compile path's OpenQASM 3 parser. Each request here was
admitted at a small fraction of what it was measured to cost on one worker (in process, one
thread, CPU seconds; 5e10 work units a second); each was an xfail until priced. The tests price
or refuse; none runs a simulation.
"""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest

from gateway.backends.aer.adapter import AerAdapter
from gateway.backends.pennylane.adapter import PennyLaneAdapter
from gateway.backends.qiskit.adapter import CompiledCircuit, QiskitAdapter
from gateway.domain import costs
from gateway.domain.circuits import (
    Bindings,
    CircuitLanguage,
    CircuitSource,
    EstimatorPub,
    Observable,
    PauliTerm,
    SamplerPub,
)
from gateway.domain.errors import InvalidArgument
from gateway.domain.jobs import JobSpec
from tests.adapters import prepare_in_process
from tests.unit.test_aer_adapter import context

GiB = 1 << 30


def layered(n: int, layers: int, measure: bool) -> CircuitSource:
    """`layers` of rx(th + c) on every qubit and a cx brick: one parameter, many operations."""
    lines = ["OPENQASM 3.0;", 'include "stdgates.inc";', "input float th;", f"qubit[{n}] q;"]
    if measure:
        lines.append(f"bit[{n}] c;")
    for layer in range(layers):
        lines += [f"rx(th + {0.1 * q + 0.01 * layer:.3f}) q[{q}];" for q in range(n)]
        lines += [f"cx q[{q}], q[{q + 1}];" for q in range(layer % 2, n - 1, 2)]
    if measure:
        lines.append("c = measure q;")
    return CircuitSource(CircuitLanguage.QASM3, "\n".join(lines) + "\n")


def sweep(count: int) -> Bindings:
    return Bindings(("th",), (count,), np.linspace(0.0, 1.0, count).reshape(count, 1))


def paulis(n: int, count: int) -> Observable:
    """The first `count` non-identity Pauli strings on n qubits (X and Y among them)."""
    words = itertools.islice(itertools.product("IXYZ", repeat=n), 1, count + 1)
    return Observable(tuple(PauliTerm("".join(word), 1.0) for word in words))


def compiled(adapter: QiskitAdapter, source: CircuitSource) -> CompiledCircuit:
    entry = adapter.compile_circuit(source)
    assert isinstance(entry, CompiledCircuit)
    return entry


# --------------------------------------------------------------------- PennyLane, sampler


def test_lightning_sampler_prices_each_operation_of_each_binding() -> None:
    """Each operation of each binding costs ~15 us on lightning (measured: 2 qubits, 1002 ops,
    100 bindings 1.69 s, 400 bindings 6.29 s): 1e5 bindings (~25 min) were admitted as 0.2 s."""
    adapter = PennyLaneAdapter(context(budget=GiB, device="lightning.qubit"))
    source = layered(2, 400, measure=True)
    bindings = 100_000
    job = JobSpec(backend="pl", pubs=(SamplerPub(source, sweep(bindings), shots=1),))
    entry = compiled(adapter, source)
    assert entry.operations == 1002
    # Measured marginal cost: ~15 us = 750,000 units per operation and binding, so this job
    # runs ~1500 s (7.5e13 units) against the default budget of 1e13 (~200 s).
    with pytest.raises(InvalidArgument) as refused:
        prepare_in_process(adapter, job, 1)
    assert refused.value.reason == "EXECUTION_TOO_EXPENSIVE"


def test_default_qubit_sampler_prices_each_operation_of_each_binding() -> None:
    """~1.06 us per operation and binding on default.qubit (4000 bindings of 1002 operations
    ran 4.23 s) was priced at ~17 ns: 62x under."""
    adapter = PennyLaneAdapter(context(budget=GiB, device="default.qubit"))
    source = layered(2, 400, measure=True)
    bindings = 4000
    job = JobSpec(backend="pl", pubs=(SamplerPub(source, sweep(bindings), shots=1),))
    entry = compiled(adapter, source)
    measured = 4.23 * costs.WORK_PER_SECOND
    # Within 10x of what it ran.
    assert adapter.sampling_work(entry, bindings, 1, job) >= measured / 10


# ------------------------------------------------------------------ estimators, per term


def test_lightning_estimator_prices_each_term_of_each_binding() -> None:
    """lightning's expval costs ~63 us per term and binding (4 qubits, 255 terms, 40 bindings
    0.64 s): 255 terms x 98,000 bindings (~26 min) were admitted as ~4 s."""
    adapter = PennyLaneAdapter(context(budget=GiB, device="lightning.qubit"))
    source = layered(4, 2, measure=False)
    bindings = 98_000  # 255 terms x 4 qubits x 98,000 < max_estimator_work (1e8)
    pub = EstimatorPub(source, (paulis(4, 255),), (), sweep(bindings))
    job = JobSpec(backend="pl", pubs=(pub,))
    with pytest.raises(InvalidArgument) as refused:
        prepare_in_process(adapter, job, 1)
    assert refused.value.reason == "EXECUTION_TOO_EXPENSIVE"


def test_aer_estimator_prices_each_term_of_each_binding() -> None:
    """Aer's estimator costs ~5.2 us per term and binding on a small circuit (200 bindings of
    255 terms ran 0.295 s), priced at 0.16 us: 36x under."""
    adapter = AerAdapter(context(budget=GiB))
    source = layered(4, 2, measure=False)
    entry = compiled(adapter, source)
    bindings, terms = 200, 255
    job = JobSpec(backend="aer", pubs=())
    measured = 0.295 * costs.WORK_PER_SECOND
    assert adapter.estimation_work(entry, bindings, terms, 1, 1, job) >= measured / 10


# ----------------------------------------------- estimators, terms combined into observables

ONE_QUBIT = CircuitSource(
    CircuitLanguage.QASM3,
    'OPENQASM 3.0;\ninclude "stdgates.inc";\ninput float th;\nqubit[1] q;\nrx(th) q[0];\n',
)


def test_observables_zipped_with_bindings_price_their_product() -> None:
    """The exact estimator combines every observable with every binding before broadcasting
    (N = 4000 zipped: 2.77 s, +173 MiB, priced 0.18 ms and 32 bytes; N = 100,000 is an 80 GB
    matrix): its memory is the PUB's now, and the memory budget refuses it."""
    adapter = AerAdapter(context(budget=GiB))
    count = 100_000
    observables = tuple(Observable((PauliTerm("Z", 1.0),)) for _ in range(count))
    pub = EstimatorPub(ONE_QUBIT, observables, (count,), sweep(count))
    job = JobSpec(backend="aer", pubs=(pub,))
    try:
        prepared = prepare_in_process(adapter, job, 1)
    except InvalidArgument:
        return  # refused as too large: fine
    # The (bindings, observables) float64 matrix _estimate allocates.
    assert prepared.memory_bytes >= 8 * count * count


def test_repeated_terms_price_every_term_of_every_binding() -> None:
    """Admission counted distinct terms, but every listed term is read for every binding
    (5000 copies of Z x 5000 bindings: 2.11 s, +243 MiB, priced 0.22 ms)."""
    adapter = AerAdapter(context(budget=GiB))
    terms, bindings = 200_000, 100_000
    observable = Observable(tuple(PauliTerm("Z", 1.0) for _ in range(terms)))
    pub = EstimatorPub(ONE_QUBIT, (observable,), (), sweep(bindings))
    job = JobSpec(backend="aer", pubs=(pub,))
    assert math.prod(pub.bindings.shape) == bindings
    with pytest.raises(InvalidArgument):
        prepare_in_process(adapter, job, 1)


# ------------------------------------------------------------------- samplers, per binding

RX_MEASURE = CircuitSource(
    CircuitLanguage.QASM3,
    'OPENQASM 3.0;\ninclude "stdgates.inc";\ninput float th;\nqubit[1] q;\nbit[1] c;\n'
    "rx(th) q[0];\nc = measure q;\n",
)


@pytest.mark.parametrize(
    ("backend", "option", "measured_s"),
    [
        ("aer", "statevector", 4.53),
        ("aer", "density_matrix", 4.47),
        ("pennylane", "lightning.qubit", 1.61),
        ("pennylane", "default.qubit", 0.91),
    ],
)
def test_sampler_prices_each_binding_run(backend: str, option: str, measured_s: float) -> None:
    """Each binding's run costs 45-225 us whatever its size (20,000 bindings of one shot ran
    0.9-4.5 s), priced at ~28 ns: 100 PUBs of 100,000 bindings (~36 min on Aer) were admitted
    as 0.3 s."""
    adapter: QiskitAdapter
    if backend == "aer":
        adapter = AerAdapter(context(budget=GiB, method=option))
    else:
        adapter = PennyLaneAdapter(context(budget=GiB, device=option))
    entry = compiled(adapter, RX_MEASURE)
    job = JobSpec(backend=backend, pubs=())
    priced = adapter.sampling_work(entry, 20_000, 1, job)
    assert priced >= measured_s * costs.WORK_PER_SECOND / 10


# ------------------------------------------------------------------------------ compile path


def test_a_qasm3_source_too_long_to_parse_is_refused_before_parsing(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """ANTLR's Python runtime parses ~0.33 ms a statement: 50,000 one-gate lines (800 KB,
    within max_source_bytes) burnt a compile worker's full 10 s, and one changed comment made
    a new cache key. Refused before parsing now."""
    from gateway.backends.qiskit import frontend

    class ParserRan(AssertionError):
        pass

    def parser(*args: object, **kwargs: object) -> None:
        raise ParserRan("the ANTLR parser ran on a source it cannot parse within cpu_time_s")

    monkeypatch.setattr(frontend, "qasm3Parser", parser)
    body = "".join(f"rx({0.001 * (i % 997):.3f}) q[{i % 2}];\n" for i in range(50_000))
    text = 'OPENQASM 3.0;\ninclude "stdgates.inc";\nqubit[2] q;\nbit[2] c;\n' + body
    text += "c = measure q;\n"
    assert len(text.encode()) < 1 << 20  # within max_source_bytes
    adapter = AerAdapter(context(budget=GiB))
    with pytest.raises(InvalidArgument) as refused:
        adapter.compile_circuit(CircuitSource(CircuitLanguage.QASM3, text))
    assert refused.value.reason == "CIRCUIT_TOO_LARGE"
    assert refused.value.metadata["maxStatements"] == str(frontend.MAX_QASM3_STATEMENTS)
    # At the limit the parser runs (here: the stand-in that says so).
    at_limit = "OPENQASM 3.0;\nqubit[1] q;\n" + "x q[0];\n" * (frontend.MAX_QASM3_STATEMENTS - 2)
    with pytest.raises(ParserRan):
        adapter.compile_circuit(CircuitSource(CircuitLanguage.QASM3, at_limit))
