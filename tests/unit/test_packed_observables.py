"""Estimator observables packed for the trip to a worker: the same terms come out, and the
pickle does not grow in objects with the number of terms (one pickle.dumps of 500,000 term
tuples held the interpreter lock, and so the event loop, for 0.2-0.3 s)."""

from __future__ import annotations

import pickle
import pickletools

from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.backends.aer.adapter import AerAdapter
from gateway.backends.qiskit.adapter import EstimatorTask, QiskitPayload
from gateway.backends.qiskit.observables import PackedObservables, PauliKey
from gateway.domain.circuits import Observable, PauliTerm
from tests.adapters import prepare_in_process
from tests.unit.test_aer_adapter import context, estimator, q3, spec

_LETTERS = st.text(alphabet="IXYZ", min_size=1, max_size=6)


@st.composite
def _keys(draw: st.DrawFn) -> PauliKey:
    letters = draw(_LETTERS)
    if draw(st.booleans()):
        return letters
    qubits = draw(
        st.lists(st.integers(0, 200), min_size=len(letters), max_size=len(letters), unique=True)
    )
    return letters, tuple(sorted(qubits))


_OBSERVABLES = st.lists(
    st.lists(st.tuples(_keys(), st.floats(allow_nan=False, allow_infinity=False)), max_size=6),
    min_size=1,
    max_size=5,
)


@settings(max_examples=300)
@given(_OBSERVABLES)
def test_the_terms_come_out_as_they_went_in(
    observables: list[list[tuple[PauliKey, float]]],
) -> None:
    expected = tuple(tuple(observable) for observable in observables)
    packed = pickle.loads(pickle.dumps(PackedObservables.pack(observables)))
    assert len(packed) == len(expected)
    assert tuple(packed) == expected
    assert tuple(packed) == expected  # read twice, as the estimator does


def _opcodes(data: bytes) -> int:
    return sum(1 for _ in pickletools.genops(data))


def _prepared_observables(terms: int) -> EstimatorTask:
    circuit = q3("qubit[12] q;\nh q[0];\n")
    observable = Observable(
        tuple(
            PauliTerm(format(i, "012b").replace("0", "I").replace("1", "Z"), 0.5)
            for i in range(terms)
        )
    )
    prepared = prepare_in_process(AerAdapter(context()), spec(estimator(circuit, [observable])), 1)
    assert isinstance(prepared.payload, QiskitPayload)
    task = prepared.payload.tasks[0]
    assert isinstance(task, EstimatorTask)
    return task


def test_a_prepared_payload_pickles_to_the_same_few_objects_however_many_terms() -> None:
    small, large = _prepared_observables(200), _prepared_observables(4000)
    assert len(next(iter(large.observables))) == 4000
    # Only the framing of longer arrays may differ (as term tuples, 4000 terms were ~20,000).
    few = _opcodes(pickle.dumps(small.observables))
    assert _opcodes(pickle.dumps(large.observables)) <= few + 16
