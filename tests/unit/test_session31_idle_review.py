"""Review of session 31's idle-qubit compaction (gateway.backends.qiskit.idle).

Ideal all-to-all simulators run a compiled circuit without the qubits only barriers and delays
name, size its memory by what runs, and map estimator terms onto the kept qubits (a left-out
qubit is |0>). Checked here:

- against an independent reference, the uncompacted circuit's exact state from
  qiskit.quantum_info (or Aer on the whole circuit, its truncation off, for mid-circuit
  measurements): random small circuits embedded in a wide register (sampler distributions,
  clbit order, expectation values of random Pauli terms with letters on idle qubits, laid-out
  observables, identity terms, sparse terms, swept parameters, terms that collapse to one
  simulated term);
- that every simulator path (exact probabilities, shot by shot, expectation values) is handed
  the very circuit the memory check sized, on every ideal backend;
- that noisy braket_dm, which compacts, gives the whole circuit's values under the same
  channels (its noise follows gates and reads, an `id` included, never idle qubits);
- the small decisions of idle.py and `_simulated_term`, one by one (each test here fails
  under a mutation of the decision it names).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from qiskit import QuantumCircuit, transpile
from qiskit.circuit import Barrier, ClassicalRegister, Delay, Parameter, QuantumRegister
from qiskit.circuit.library import IGate
from qiskit.quantum_info import SparsePauliOp, Statevector

from gateway.backends.braket.adapter import BraketAdapter
from gateway.backends.qiskit import idle
from gateway.backends.qiskit.adapter import (
    CompiledCircuit,
    QiskitAdapter,
    _simulated_term,
)
from gateway.domain.circuits import (
    Bindings,
    EstimatorPub,
    Observable,
    PauliTerm,
    SamplerPub,
)
from gateway.domain.jobs import EstimatorResult, JobOptions, JobSpec, SamplerResult
from tests.adapters import adapter_context, estimate_in_process, execute_in_process
from tests.targets import client_target, qpy_source
from tests.unit.test_session31_isa_width import IDEAL, _counts, _values

# Built once per kind: each adapter keeps its worker caches, which the properties share (a
# cache filled by one example and read by another is part of what they check).
_MAKERS: dict[str, Callable[[], QiskitAdapter]] = {
    kind: IDEAL[kind] for kind in ("aer-statevector", "braket_sv", "default.qubit")
}
_ADAPTERS: dict[str, QiskitAdapter] = {}

# The properties run 200 examples each on a shared 2-core machine.
pytestmark = pytest.mark.timeout(300)


def _adapter(kind: str) -> QiskitAdapter:
    if kind not in _ADAPTERS:
        _ADAPTERS[kind] = _MAKERS[kind]()
    return _ADAPTERS[kind]


# ------------------------------------------------------------------ random embedded circuits

_ONE_QUBIT = ("h", "x", "s", "sx", "ry", "rz", "rx")


@st.composite
def _embedded(draw: st.DrawFn, measured: bool) -> tuple[QuantumCircuit, list[int]]:
    """A circuit of 1-4 active qubits placed at random among 10-20, barriers and delays on the
    idle ones (and across everything), measurements of some active qubits into clbits in a
    random order. Returns the circuit and its active qubits."""
    width = draw(st.integers(10, 20))
    count = draw(st.integers(1, 4))
    active = draw(st.lists(st.integers(0, width - 1), min_size=count, max_size=count, unique=True))
    idle_qubits = [q for q in range(width) if q not in active]
    circuit = QuantumCircuit(width, width if measured else 0)
    for _ in range(draw(st.integers(1, 8))):
        kind = draw(st.sampled_from(("1q", "2q", "barrier", "delay", "barrier-all")))
        if kind == "1q" or (kind == "2q" and count < 2):
            name = draw(st.sampled_from(_ONE_QUBIT))
            qubit = draw(st.sampled_from(active))
            if name in ("ry", "rz", "rx"):
                angle = draw(st.floats(-3.2, 3.2, allow_nan=False))
                getattr(circuit, name)(angle, qubit)
            else:
                getattr(circuit, name)(qubit)
        elif kind == "2q":
            control, target = draw(
                st.lists(st.sampled_from(active), min_size=2, max_size=2, unique=True)
            )
            circuit.cx(control, target)
        elif kind == "barrier" and idle_qubits:
            chosen = draw(st.lists(st.sampled_from(idle_qubits), min_size=1, max_size=3))
            circuit.barrier(*sorted(set(chosen)))
        elif kind == "delay" and idle_qubits:
            circuit.delay(draw(st.integers(1, 64)), draw(st.sampled_from(idle_qubits)), unit="dt")
        elif kind == "barrier-all":
            circuit.barrier()
    if measured:
        targets = draw(st.permutations(list(range(width))))
        chosen = draw(st.lists(st.sampled_from(active), min_size=1, max_size=count, unique=True))
        for qubit in chosen:
            circuit.measure(qubit, targets[qubit])
    return circuit, active


def _reference_state(circuit: QuantumCircuit) -> Statevector:
    """The uncompacted circuit's exact final state (barriers, delays, measurements dropped)."""
    bare = QuantumCircuit(circuit.num_qubits)
    for instruction in circuit.data:
        if instruction.operation.name in ("barrier", "delay", "measure"):
            continue
        bare.append(instruction.operation, instruction.qubits)
    return Statevector(bare)


def _expected_counts(circuit: QuantumCircuit) -> dict[str, float]:
    """Exact distribution of the clbit string (clbit 0 rightmost) of a terminally measured
    circuit."""
    pairs = [
        (circuit.find_bit(i.qubits[0]).index, circuit.find_bit(i.clbits[0]).index)
        for i in circuit.data
        if i.operation.name == "measure"
    ]
    qubits = [q for q, _ in pairs]
    probabilities = _reference_state(circuit).probabilities(qubits)
    out: dict[str, float] = {}
    for index, p in enumerate(probabilities):
        if p < 1e-12:
            continue
        bits = ["0"] * circuit.num_clbits
        for position, (_, clbit) in enumerate(pairs):
            bits[circuit.num_clbits - 1 - clbit] = str((index >> position) & 1)
        key = "".join(bits)
        out[key] = out.get(key, 0.0) + float(p)
    return out


_ANGLES = st.integers(1, 22).map(lambda k: k / 7.0) | st.integers(1, 22).map(lambda k: -k / 7.0)

_SETTINGS = settings(
    max_examples=200,
    derandomize=True,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)


@pytest.mark.parametrize("kind", sorted(_MAKERS))
def test_samples_of_an_embedded_circuit_follow_the_uncompacted_distribution(kind: str) -> None:
    adapter = _adapter(kind)
    shots = 4000

    @_SETTINGS
    @given(_embedded(measured=True))
    def check(case: tuple[QuantumCircuit, list[int]]) -> None:
        circuit, _ = case
        expected = _expected_counts(circuit)
        counts = _counts(adapter, circuit, shots)
        # Every outcome possible (clbit order and which qubit each clbit reads), and the
        # frequencies within an honest distance: <= 16 outcomes, 4000 draws, TVD ~0.03.
        assert set(counts) <= set(expected), (counts, expected)
        tvd = 0.5 * sum(abs(counts.get(k, 0) / shots - p) for k, p in expected.items())
        assert tvd < 0.08, (tvd, counts, expected)

    check()


def _pauli_words(width: int, active: list[int]) -> st.SearchStrategy[list[str]]:
    """1-6 Pauli words on `width` qubits: letters anywhere, most on the active qubits, some
    identity words, and a few words that differ only on idle qubits (one simulated term)."""

    @st.composite
    def words(draw: st.DrawFn) -> list[str]:
        out: list[str] = []
        for _ in range(draw(st.integers(1, 6))):
            letters = ["I"] * width
            for qubit in draw(st.lists(st.sampled_from(active), max_size=len(active))):
                letters[qubit] = draw(st.sampled_from("IXYZ"))
            for qubit in draw(st.lists(st.integers(0, width - 1), max_size=3)):
                letters[qubit] = draw(st.sampled_from("IXYZ"))
            out.append("".join(reversed(letters)))  # Qiskit labels: qubit 0 rightmost
            if draw(st.booleans()):
                # The same word with a Z (reads 1) or an I on an idle qubit.
                twin = list(reversed(letters))
                spot = draw(st.integers(0, width - 1))
                if spot not in active:
                    twin[width - 1 - spot] = draw(st.sampled_from("ZI"))
                out.append("".join(twin))
        return out

    return words()


@pytest.mark.parametrize("kind", sorted(_MAKERS))
def test_expectation_values_of_an_embedded_circuit_match_the_uncompacted_state(
    kind: str,
) -> None:
    adapter = _adapter(kind)

    @_SETTINGS
    @given(st.data())
    def check(data: st.DataObject) -> None:
        circuit, active = data.draw(_embedded(measured=False))
        words = data.draw(_pauli_words(circuit.num_qubits, active))
        coefficients = data.draw(
            st.lists(
                st.floats(-2.0, 2.0, allow_nan=False), min_size=len(words), max_size=len(words)
            )
        )
        # Each word alone, and all of them summed into one observable.
        observables = [SparsePauliOp(word) for word in words]
        observables.append(SparsePauliOp(words, coeffs=coefficients))
        state = _reference_state(circuit)
        expected = [float(state.expectation_value(op).real) for op in observables]
        values = _values(adapter, circuit, observables)
        np.testing.assert_allclose(values, expected, atol=1e-7)

    check()


@_SETTINGS
@given(st.data())
def test_observables_laid_out_on_the_64_qubit_aer_target_match_the_virtual_circuit(
    data: st.DataObject,
) -> None:
    # The Qiskit user's path: a small circuit transpiled for GetBackendTarget's 64-qubit
    # Target with a random initial_layout, its observables laid out with isa.layout.
    adapter = _adapter("aer-statevector")
    target = client_target(adapter, "aer")
    count = data.draw(st.integers(1, 3))
    virtual = QuantumCircuit(count)
    for _ in range(data.draw(st.integers(1, 6))):
        if count > 1 and data.draw(st.booleans()):
            a, b = data.draw(
                st.lists(st.integers(0, count - 1), min_size=2, max_size=2, unique=True)
            )
            virtual.cx(a, b)
        else:
            # Angles away from 0: the client's own transpile drops a near-identity rotation.
            virtual.ry(data.draw(_ANGLES), data.draw(st.integers(0, count - 1)))
            virtual.rz(data.draw(_ANGLES), data.draw(st.integers(0, count - 1)))
    physical = data.draw(st.lists(st.integers(0, 63), min_size=count, max_size=count, unique=True))
    isa = transpile(virtual, target=target, initial_layout=physical, seed_transpiler=7)
    words = data.draw(
        st.lists(st.text("IXYZ", min_size=count, max_size=count), min_size=1, max_size=5)
    )
    observables = [SparsePauliOp(word).apply_layout(isa.layout) for word in words]
    state = Statevector(virtual)
    expected = [float(state.expectation_value(SparsePauliOp(word)).real) for word in words]
    np.testing.assert_allclose(_values(adapter, isa, observables), expected, atol=1e-7)


# ------------------------------------------------------------------ what runs is what was sized


def _spy(adapter: QiskitAdapter, monkeypatch: pytest.MonkeyPatch) -> list[tuple[str, int]]:
    """Records the width of every circuit the adapter hands its simulator (the exact paths'
    plan bodies, the shot-by-shot path's circuits, the estimator's circuits)."""
    seen: list[tuple[str, int]] = []
    probabilities = adapter.terminal_probabilities
    shots = adapter.sample_shots
    expectations = adapter.expectations

    def on_probabilities(key: str, plan: Any, parameters: Any, values: Any) -> Any:
        seen.append(("probabilities", plan.body.num_qubits))
        return probabilities(key, plan, parameters, values)

    def on_shots(simulated: idle.Simulated, task: Any, output: Any) -> Any:
        seen.append(("shots", simulated.circuit.num_qubits))
        return shots(simulated, task, output)

    def on_expectations(
        key: str, simulated: idle.Simulated, terms: Any, parameters: Any, values: Any
    ) -> Any:
        seen.append(("expectations", simulated.circuit.num_qubits))
        return expectations(key, simulated, terms, parameters, values)

    monkeypatch.setattr(adapter, "terminal_probabilities", on_probabilities)
    monkeypatch.setattr(adapter, "sample_shots", on_shots)
    monkeypatch.setattr(adapter, "expectations", on_expectations)
    return seen


def _two_of_thirteen(measure: str) -> QuantumCircuit:
    """A Bell pair on qubits 4 and 11 of 13 (braket_dm's width), every other qubit under
    barriers and delays."""
    circuit = QuantumCircuit(13, 2)
    circuit.h(4)
    circuit.barrier()
    for qubit in range(13):
        if qubit not in (4, 11):
            circuit.delay(8, qubit, unit="dt")
    circuit.cx(4, 11)
    if measure == "terminal":
        circuit.measure([4, 11], [0, 1])
    elif measure == "mid-circuit":
        circuit.measure(4, 0)
        circuit.x(4)
        circuit.measure(11, 1)
    return circuit


# The ideal simulators but braket_dm, which runs here with noise.
_SPIED: dict[str, Callable[[], QiskitAdapter]] = {
    **{kind: make for kind, make in IDEAL.items() if kind != "braket_dm"},
    "braket_dm-noisy": lambda: BraketAdapter(
        adapter_context("braket", device="braket_dm", noise={"depolarizing_2q": 0.05})
    ),
}
# PennyLane samples terminal measurements only; noisy braket_dm refuses mid-circuit ones.
_SPIED_PATHS = [
    (kind, path)
    for kind in sorted(_SPIED)
    for path in ("terminal", "mid-circuit", "estimator")
    if not (
        path == "mid-circuit" and kind in ("default.qubit", "lightning.qubit", "braket_dm-noisy")
    )
]


@pytest.mark.parametrize(("kind", "path"), _SPIED_PATHS)
def test_the_simulator_is_handed_the_circuit_its_memory_was_sized_by(
    kind: str, path: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    adapter = _SPIED[kind]()
    circuit = _two_of_thirteen("" if path == "estimator" else path)
    compiled = adapter.compile_circuit(qpy_source(circuit))
    assert isinstance(compiled, CompiledCircuit)
    sized = adapter.simulated(compiled.ref.circuit()).circuit
    assert sized.num_qubits == 2
    assert compiled.memory_bytes == adapter.state_size(sized, True)[0]
    seen = _spy(adapter, monkeypatch)
    noisy = kind == "braket_dm-noisy"
    if path == "estimator":
        values = _values(adapter, circuit, [SparsePauliOp("Z" * 13), SparsePauliOp("X" * 13)])
        if not noisy:
            np.testing.assert_allclose(values, [1.0, 0.0], atol=1e-9)
        assert seen == [("expectations", 2)]
    else:
        # Unseeded: Braket runs a mid-circuit measurement shot by shot, without a seed.
        counts = _counts(adapter, circuit, 400, seed=None)
        # Clbit 0 reads qubit 4 before its x: the pair's outcomes either way.
        if not noisy:
            assert set(counts) == {"00", "11"}
        # Aer's matrix product state samples shot by shot even at the end.
        exact = path == "terminal" and kind != "aer-mps"
        assert seen == [("probabilities" if exact else "shots", 2)]


# ------------------------------------------------------------------ idle.py, decision by decision


def test_a_circuit_with_nothing_idle_is_simulated_as_it_is() -> None:
    circuit = QuantumCircuit(3)
    circuit.h(0)
    circuit.cx(0, 1)
    circuit.x(2)
    simulated = idle.without_idle_qubits(circuit)
    assert simulated.circuit is circuit
    assert simulated.kept == (0, 1, 2)


def test_kept_qubits_stay_in_ascending_order_whatever_the_set_order() -> None:
    # {9, 2} iterates 9 first in a small set (hash 9 % 8 == 1): the kept qubits and the
    # simulated circuit's order are ascending all the same.
    assert list(frozenset({9, 2})) == [9, 2]
    circuit = QuantumCircuit(12, 2)
    circuit.x(9)
    circuit.h(2)
    circuit.measure([9, 2], [0, 1])
    simulated = idle.without_idle_qubits(circuit)
    assert simulated.kept == (2, 9)
    assert simulated.position == {2: 0, 9: 1}
    ops = sorted(
        (i.operation.name, [simulated.circuit.find_bit(q).index for q in i.qubits])
        for i in simulated.circuit.data
    )
    assert ops == [("h", [0]), ("measure", [0]), ("measure", [1]), ("x", [1])]
    clbits = {
        simulated.circuit.find_bit(i.qubits[0]).index: simulated.circuit.find_bit(i.clbits[0]).index
        for i in simulated.circuit.data
        if i.operation.name == "measure"
    }
    assert clbits == {1: 0, 0: 1}
    # Clbit 0 reads qubit 9 (always 1), clbit 1 qubit 2 (fair).
    counts = _counts(_adapter("aer-statevector"), circuit, 400)
    assert set(counts) == {"01", "11"}


@pytest.mark.parametrize("kind", sorted(_MAKERS))
def test_a_circuit_of_only_barriers_and_delays_keeps_one_qubit_and_reads_zero(kind: str) -> None:
    circuit = QuantumCircuit(12, 3)
    circuit.barrier()
    circuit.delay(16, 7, unit="dt")
    simulated = idle.without_idle_qubits(circuit)
    assert simulated.kept == (0,)
    assert simulated.circuit.num_qubits == 1
    assert simulated.circuit.num_clbits == 3
    adapter = _adapter(kind)
    assert adapter.compile_circuit(qpy_source(circuit)).amplitudes == 2
    observables = [
        SparsePauliOp("I" * 11 + "Z"),
        SparsePauliOp("Z" * 12),
        SparsePauliOp("I" * 4 + "X" + "I" * 7),
    ]
    np.testing.assert_allclose(_values(adapter, circuit, observables), [1.0, 1.0, 0.0], atol=1e-9)


def test_a_barrier_on_kept_and_idle_qubits_goes_and_one_on_kept_qubits_stays() -> None:
    circuit = QuantumCircuit(6)
    circuit.h(1)
    circuit.barrier(1, 4)  # names idle qubit 4: dropped with it
    circuit.barrier(1, 3)
    circuit.delay(8, 3, unit="dt")  # a delay on a kept qubit stays
    circuit.x(3)
    simulated = idle.without_idle_qubits(circuit).circuit
    assert [i.operation.name for i in simulated.data] == ["h", "barrier", "delay", "x"]
    assert [len(i.qubits) for i in simulated.data] == [1, 2, 1, 1]


def test_operations_that_keep_their_qubits() -> None:
    # Anything but a barrier or a delay keeps its qubits, even where it leaves |0> as it is.
    circuit = QuantumCircuit(8, 1)
    circuit.append(IGate(), [1])
    circuit.reset(2)
    circuit.measure(3, 0)
    with circuit.if_test((circuit.clbits[0], 1)):
        circuit.barrier(4)
    circuit.append(Barrier(1), [5])
    circuit.append(Delay(4, unit="dt"), [6])
    assert idle.used_qubits(circuit) == frozenset({1, 2, 3, 4})
    assert idle.without_idle_qubits(circuit).kept == (1, 2, 3, 4)


# ------------------------------------------------------------------ _simulated_term


def _kept(*qubits: int) -> idle.Simulated:
    return idle.Simulated(QuantumCircuit(len(qubits)), tuple(qubits))


def test_a_term_maps_onto_the_kept_qubits_in_order() -> None:
    kept = _kept(2, 5, 9)
    # Letters follow their qubits; the mapped term is in qubit order.
    assert _simulated_term(("XYZ", (9, 2, 5)), kept) == ("YZX", (0, 1, 2))
    # A Z on a left-out qubit drops out; an X or a Y makes the whole term 0 (None).
    assert _simulated_term(("ZX", (3, 5)), kept) == ("X", (1,))
    assert _simulated_term(("XZ", (3, 5)), kept) is None
    assert _simulated_term(("YZ", (3, 5)), kept) is None
    # Only Z's on left-out qubits: the identity, which reads 1.
    assert _simulated_term(("ZZ", (0, 7)), kept) == ("", ())
    assert _simulated_term(("", ()), kept) == ("", ())


def test_terms_that_collapse_to_one_simulated_term_each_read_their_own_coefficient() -> None:
    # An entangled pair on qubits 1 and 6 of 8 (<Z1 Z6>, <X1 X6> and <Z1> all differ from 0,
    # 1 and each other): Z's riding on idle qubits 0, 4 and 7 leave a term's value as it is,
    # and one simulated term is evaluated for all the terms that collapse to it, interleaved
    # with others.
    adapter = _adapter("aer-statevector")
    circuit = QuantumCircuit(8)
    circuit.ry(0.8, 1)
    circuit.cx(1, 6)
    circuit.ry(0.5, 6)
    # Qiskit labels: qubit 0 rightmost.
    words = ["IZIIIIZI", "IXIIIIXI", "ZZIIIIZI", "IZIIIXZI", "IIIIIIII", "IZIZIIZZ", "IIIIIIZI"]
    observables = [SparsePauliOp(word, coeffs=[float(k + 1)]) for k, word in enumerate(words)]
    observables.append(SparsePauliOp(words, coeffs=[float(k + 1) for k in range(len(words))]))
    state = Statevector(circuit)
    expected = [float(state.expectation_value(op).real) for op in observables]
    # The values tell the columns apart.
    assert len({round(v / (k + 1), 6) for k, v in enumerate(expected[:3])}) == 2
    calls: list[int] = []
    original = adapter.expectations

    def counting(
        key: str, simulated: QuantumCircuit, terms: Any, parameters: Any, values: Any
    ) -> Any:
        calls.append(len(terms))
        return original(key, simulated, terms, parameters, values)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(adapter, "expectations", counting)
        np.testing.assert_allclose(_values(adapter, circuit, observables), expected, atol=1e-9)
    # ZZ and XX on the pair, and Z1: three simulated terms for the six non-identity ones.
    assert calls == [3]


# ------------------------------------------------------------------ clbits, registers, noise


@pytest.mark.parametrize("kind", sorted(_MAKERS))
def test_registers_read_the_same_clbits_after_compaction(kind: str) -> None:
    # x on qubits 3 and 11 of 16; a[1] <- q11, b[0] <- q3, b[1] <- q7 (idle but measured: 0),
    # a[0] never written. Hard-coded outcomes: a = "10", b = "01".
    q = QuantumRegister(16, "q")
    a, b = ClassicalRegister(2, "a"), ClassicalRegister(2, "b")
    circuit = QuantumCircuit(q, a, b)
    circuit.x(3)
    circuit.barrier()
    circuit.x(11)
    circuit.delay(32, 5, unit="dt")
    circuit.measure(11, a[1])
    circuit.measure(3, b[0])
    circuit.measure(7, b[1])
    adapter = _adapter(kind)
    compiled = adapter.compile_circuit(qpy_source(circuit))
    assert compiled.amplitudes == 2**3  # qubits 3, 7, 11
    spec = JobSpec(
        backend=adapter.context.name,
        pubs=(SamplerPub(qpy_source(circuit), Bindings(), 50),),
        options=JobOptions(seed=1),
    )
    (result,) = execute_in_process(adapter, spec, 1)
    assert isinstance(result, SamplerResult)
    counts = {register.name: dict(register.counts[0]) for register in result.registers}
    assert counts == {"a": {"10": 50}, "b": {"01": 50}}


def test_noisy_braket_dm_compacted_matches_the_uncompacted_circuit_under_the_same_noise() -> None:
    # braket_dm's noise channels follow gates and reads, never idle qubits: a density-matrix
    # reference of the whole (uncompacted) compiled circuit with the same channels on every
    # gate agrees with the compacted run. Braket's depolarizing(p) is Qiskit's
    # depolarizing_error(4p/3); two_qubit_depolarizing(p) is depolarizing_error(16p/15, 2).
    from qiskit_aer import AerSimulator
    from qiskit_aer.noise import NoiseModel, depolarizing_error

    p1, p2 = 0.06, 0.09
    adapter = BraketAdapter(
        adapter_context(
            "braket-noisy",
            device="braket_dm",
            noise={"depolarizing_1q": p1, "depolarizing_2q": p2},
        )
    )
    circuit = QuantumCircuit(9)
    circuit.h(6)
    circuit.barrier()
    circuit.cx(6, 1)
    circuit.delay(64, 3, unit="dt")
    circuit.ry(0.7, 8)
    circuit.cx(1, 8)
    compiled = adapter.compile_circuit(qpy_source(circuit))
    whole = compiled.ref.circuit()
    assert adapter.simulated(whole).kept == (1, 6, 8)
    names1 = sorted(
        {i.operation.name for i in whole.data if len(i.qubits) == 1}
        - {"barrier", "delay", "measure"}
    )
    names2 = sorted({i.operation.name for i in whole.data if len(i.qubits) == 2} - {"barrier"})
    model = NoiseModel(basis_gates=names1 + names2)
    if names1:
        model.add_all_qubit_quantum_error(depolarizing_error(4 * p1 / 3, 1), names1)
    model.add_all_qubit_quantum_error(depolarizing_error(16 * p2 / 15, 2), names2)
    words = ["ZIIIIIIZI", "XIIIIXIXI", "IIIZIIIII", "IIIXIIIII", "ZIZIIIIII", "YIIIIIIYI"]
    observables = [SparsePauliOp(word) for word in words]
    reference_circuit = QuantumCircuit(whole.num_qubits)
    for instruction in whole.data:
        if instruction.operation.name not in ("barrier", "delay"):
            reference_circuit.append(instruction.operation, instruction.qubits)
    reference_circuit.save_density_matrix()
    simulator = AerSimulator(method="density_matrix", noise_model=model)
    state = (
        simulator.run(reference_circuit, enable_truncation=False).result().data()["density_matrix"]
    )
    expected = [float(state.expectation_value(op).real) for op in observables]
    # The noise shows: the ideal values are other ones.
    ideal = [
        float(
            Statevector(circuit.remove_final_measurements(inplace=False)).expectation_value(op).real
        )
        for op in observables
    ]
    assert max(abs(x - y) for x, y in zip(expected, ideal, strict=True)) > 0.05
    np.testing.assert_allclose(_values(adapter, circuit, observables), expected, atol=1e-9)


@pytest.mark.parametrize("kind", sorted(_MAKERS))
def test_swept_parameters_on_scattered_qubits_match_the_uncompacted_state(kind: str) -> None:
    # Bindings are assigned after compaction, by name: three parameters on three qubits
    # scattered among 14 (one only in a controlled rotation), swept together.
    adapter = _adapter(kind)
    a, b, c = Parameter("a"), Parameter("b"), Parameter("c")
    circuit = QuantumCircuit(14)
    circuit.ry(a, 11)
    circuit.barrier()
    circuit.rx(b, 2)
    circuit.delay(16, 7, unit="dt")
    circuit.cx(11, 5)
    circuit.crz(c, 2, 5)
    circuit.ry(c, 5)
    rows = np.array([[0.3, 1.1, -0.4], [2.0, -0.7, 0.9], [0.0, 0.0, 3.0], [1.2, 2.5, 0.1]])
    words = [
        "IIZIIIIIZIIIII",
        "IIIIIIIIXIIIZI",
        "IIXIIIIIZIIIII",
        "IIIIIIZIIIIIII",
        "IIYIIIIIIIIIZY",
    ]
    observables = [SparsePauliOp(word) for word in words]
    pub = EstimatorPub(
        qpy_source(circuit),
        tuple(Observable((PauliTerm(word, 1.0),)) for word in words),
        (1, len(words)),
        Bindings(("a", "b", "c"), (len(rows), 1), rows.reshape(len(rows), 1, 3)),
        precision=0.0,
    )
    values = estimate_in_process(adapter, pub)
    expected = [
        [
            float(
                Statevector(circuit.assign_parameters(dict(zip((a, b, c), row, strict=True))))
                .expectation_value(op)
                .real
            )
            for op in observables
        ]
        for row in rows
    ]
    np.testing.assert_allclose(values, expected, atol=1e-9)


@st.composite
def _dynamic(draw: st.DrawFn) -> QuantumCircuit:
    """1-3 active qubits among 6-10 with mid-circuit measurements, resets and an if_test,
    barriers and delays on idle qubits: the shot-by-shot path."""
    width = draw(st.integers(6, 10))
    count = draw(st.integers(1, 3))
    active = draw(st.lists(st.integers(0, width - 1), min_size=count, max_size=count, unique=True))
    idle_qubits = [q for q in range(width) if q not in active]
    circuit = QuantumCircuit(width, 4)
    for _ in range(draw(st.integers(2, 8))):
        kind = draw(st.sampled_from(("h", "ry", "cx", "measure", "reset", "if", "idle")))
        qubit = draw(st.sampled_from(active))
        clbit = draw(st.integers(0, 3))
        if kind == "h":
            circuit.h(qubit)
        elif kind == "ry":
            circuit.ry(draw(_ANGLES), qubit)
        elif kind == "cx" and count > 1:
            other = draw(st.sampled_from([q for q in active if q != qubit]))
            circuit.cx(qubit, other)
        elif kind == "measure":
            circuit.measure(qubit, clbit)
        elif kind == "reset":
            circuit.reset(qubit)
        elif kind == "if":
            with circuit.if_test((circuit.clbits[clbit], 1)):
                circuit.x(qubit)
        elif idle_qubits:
            spot = draw(st.sampled_from(idle_qubits))
            if draw(st.booleans()):
                circuit.delay(16, spot, unit="dt")
            else:
                circuit.barrier(spot, qubit)
    for position, qubit in enumerate(active):
        circuit.measure(qubit, position)
    return circuit


@_SETTINGS
@given(_dynamic())
def test_aer_shot_by_shot_circuits_match_the_uncompacted_run(circuit: QuantumCircuit) -> None:
    # Reference: Aer itself on the whole circuit, its own truncation off (every qubit held).
    from qiskit_aer import AerSimulator

    shots = 2000
    adapter = _adapter("aer-statevector")
    counts = _counts(adapter, circuit, shots)
    reference = (
        AerSimulator(method="statevector")
        .run(circuit, shots=shots, seed_simulator=5, enable_truncation=False)
        .result()
        .get_counts()
    )
    keys = set(counts) | set(reference)
    tvd = 0.5 * sum(abs(counts.get(k, 0) - reference.get(k, 0)) / shots for k in keys)
    # Two samples of <= 16 outcomes, 2000 shots each: TVD ~0.05 at most by chance.
    assert tvd < 0.1, (tvd, counts, reference)


@pytest.mark.parametrize("kind", sorted(_MAKERS))
def test_a_job_mixing_sampler_and_estimator_pubs_of_one_layout_reads_each_right(kind: str) -> None:
    # Two PUBs of the same compacted pair (qubits 13 and 2 of 15), one measured, one not, and
    # the estimator PUB twice (same circuit key: the worker's caches serve the second).
    adapter = _MAKERS[kind]()
    bare = QuantumCircuit(15)
    bare.x(13)
    bare.h(2)
    bare.cx(2, 13)
    measured = bare.copy()
    measured.add_register(ClassicalRegister(2, "c"))
    measured.measure([13, 2], [0, 1])
    words = ["IZIIIIIIIIIIZII", "IXIIIIIIIIIIXII", "ZZIIIIIIIIIIIII"]
    estimator_pub = EstimatorPub(
        qpy_source(bare),
        tuple(Observable((PauliTerm(word, 1.0),)) for word in words),
        (len(words),),
        Bindings(),
        precision=0.0,
    )
    spec = JobSpec(
        backend=adapter.context.name,
        pubs=(estimator_pub, SamplerPub(qpy_source(measured), Bindings(), 300), estimator_pub),
        options=JobOptions(seed=2),
    )
    first, sampled, second = execute_in_process(adapter, spec, 2)
    # (|0>|1> + |1>|0>) on qubits 2 and 13: <Z13 Z2> = -1, <X13 X2> = 1, and <Z14 Z13> =
    # <Z13> = 0 (qubit 14 is left out: |0>).
    for result in (first, second):
        assert isinstance(result, EstimatorResult)
        np.testing.assert_allclose(result.expectation_values, [-1.0, 1.0, 0.0], atol=1e-9)
    assert isinstance(sampled, SamplerResult)
    (register,) = sampled.registers
    # Clbit 0 reads qubit 13, clbit 1 qubit 2: they always differ.
    assert set(register.counts[0]) == {"01", "10"}


def test_an_identity_gate_keeps_its_qubit_where_noise_follows_gates() -> None:
    # On a noisy braket_dm every 1-qubit gate is followed by depolarizing(p), an `id` too: its
    # qubit is no longer |0> (<Z> = 1 - 4p/3), so leaving it out as idle would read 1.
    p = 0.1
    adapter = BraketAdapter(
        adapter_context(
            "braket-noisy",
            device="braket_dm",
            noise={"depolarizing_1q": p},
            optimization_level=0,
        )
    )
    circuit = QuantumCircuit(6)
    circuit.h(0)
    circuit.id(4)
    compiled = adapter.compile_circuit(qpy_source(circuit))
    assert "id" in compiled.ref.circuit().count_ops()
    assert adapter.simulated(compiled.ref.circuit()).kept == (0, 4)
    values = _values(adapter, circuit, [SparsePauliOp("IZIIII"), SparsePauliOp("IIZIII")])
    np.testing.assert_allclose(values, [1 - 4 * p / 3, 1.0], atol=1e-9)


@pytest.mark.parametrize("kind", sorted(_MAKERS))
def test_sparse_terms_in_any_qubit_order_read_the_uncompacted_values(kind: str) -> None:
    # Sparse terms (pauli[i] on qubits[i], listed in any order, I letters allowed) on a 22-qubit
    # register whose qubits 3, 17 and 21 are used: the same values as the dense forms and as
    # the uncompacted state, and a sparse and a dense form of one term are one simulated term.
    adapter = _adapter(kind)
    circuit = QuantumCircuit(22)
    circuit.ry(0.9, 17)
    circuit.cx(17, 3)
    circuit.rx(0.4, 21)
    circuit.cx(21, 17)
    circuit.barrier()
    sparse = [
        ("ZXZ", (21, 3, 17)),
        ("XZY", (3, 9, 21)),  # Z on idle qubit 9
        ("IZY", (4, 17, 21)),  # I on idle qubit 4
        ("ZZ", (0, 12)),  # idle Z's only: 1
        ("YZ", (5, 3)),  # Y on idle qubit 5: 0
    ]
    terms = [PauliTerm(letters, 1.0, qubits) for letters, qubits in sparse]
    dense = [SparsePauliOp.from_sparse_list([(p, list(q), 1.0)], 22) for p, q in sparse]
    terms += [PauliTerm(op.paulis[0].to_label(), 1.0) for op in dense]
    pub = EstimatorPub(
        qpy_source(circuit),
        tuple(Observable((term,)) for term in terms),
        (len(terms),),
        Bindings(),
        precision=0.0,
    )
    values = estimate_in_process(adapter, pub)
    state = Statevector(circuit.remove_final_measurements(inplace=False))
    expected = [float(state.expectation_value(op).real) for op in dense] * 2
    np.testing.assert_allclose(values, expected, atol=1e-9)
