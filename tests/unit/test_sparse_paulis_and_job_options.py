"""Sparse Pauli terms, max_execution_time and provider_options, in process.

Expectation values are hard-coded from the physics of each circuit (X-prepared qubits read -1
under Z), never taken from another run of the same SDK path.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import pytest
from google.protobuf import duration_pb2, struct_pb2
from pydantic import Field

from gateway.api.codec import positive_seconds
from gateway.api.job_options import (
    MAX_PROVIDER_OPTIONS_BYTES,
    MAX_PROVIDER_OPTIONS_DEPTH,
    decode_provider_options,
)
from gateway.backends.aer.adapter import AerAdapter
from gateway.backends.base import ProviderOptions
from gateway.backends.qiskit.adapter import EstimatorTask, QiskitPayload
from gateway.domain.circuits import Observable, PauliTerm
from gateway.domain.errors import Code, InvalidArgument
from tests.adapters import prepare_in_process
from tests.unit.test_aer_adapter import (
    context,
    estimator,
    estimator_result,
    q3,
    refused,
    run,
    spec,
)

OBS = "spec.pubs[0].estimator.observables"


@pytest.fixture(scope="module")
def aer() -> AerAdapter:
    adapter = AerAdapter(context())
    adapter.warm_up()
    return adapter


@pytest.fixture(scope="module")
def mps() -> AerAdapter:
    return AerAdapter(context(budget=64 << 20, method="matrix_product_state", num_qubits=128))


# X on qubits 1 and 3 of 5: Z reads -1 there, +1 on qubits 0, 2 and 4.
X13 = q3("qubit[5] q;\nx q[1];\nx q[3];\n")


def values(adapter: AerAdapter, *observables: Observable) -> list[float]:
    _, results = run(adapter, spec(estimator(X13, list(observables))))
    return [float(v) for v in estimator_result(results[0]).expectation_values]


def sparse(pauli: str, qubits: tuple[int, ...], coefficient: float = 1.0) -> Observable:
    return Observable((PauliTerm(pauli, coefficient, qubits),))


def dense(pauli: str, coefficient: float = 1.0) -> Observable:
    return Observable((PauliTerm(pauli, coefficient),))


# ------------------------------------------------------------------------------ sparse terms


def test_sparse_terms_give_the_hard_coded_values(aer: AerAdapter) -> None:
    assert values(
        aer,
        sparse("Z", (3,)),  # -1
        sparse("Z", (4,)),  # +1
        sparse("ZZ", (1, 3)),  # (-1)(-1)
        sparse("ZZ", (3, 0), 0.5),  # 0.5 (-1)(+1)
        sparse("X", (2,)),  # <0|X|0> = 0
        sparse("I", (0,), 2.0),  # identity
    ) == [-1.0, 1.0, 1.0, -0.5, 0.0, 2.0]


def test_sparse_and_dense_forms_of_one_observable_agree(aer: AerAdapter) -> None:
    # Character 0 of a dense string is the highest qubit: "IZIII" is Z on qubit 3.
    mixed = Observable(
        (PauliTerm("IZIII", 1.0), PauliTerm("Z", 2.0, (3,)), PauliTerm("ZZ", -1.0, (0, 1)))
    )
    assert values(aer, dense("IZIII"), sparse("Z", (3,)), dense("IIIZZ"), mixed) == [
        -1.0,
        -1.0,
        -1.0,
        -3.0 + 1.0,
    ]


def test_the_order_qubits_are_listed_in_does_not_matter(aer: AerAdapter) -> None:
    assert values(aer, sparse("XZ", (2, 3)), sparse("ZX", (3, 2))) == [0.0, 0.0]
    assert values(aer, sparse("ZIZ", (4, 0, 3)), sparse("ZZI", (3, 4, 0))) == [-1.0, -1.0]


def test_a_sparse_term_on_a_wide_circuit_is_never_expanded(mps: AerAdapter) -> None:
    # 100 qubits (MPS): the payload carries the term as given, not a 100-character string.
    wide = q3("qubit[100] q;\nx q[97];\n")
    job = spec(estimator(wide, [sparse("Z", (97,)), sparse("ZZ", (0, 97))]))
    prepared = prepare_in_process(mps, job, 1)
    assert isinstance(prepared.payload, QiskitPayload)
    task = prepared.payload.tasks[0]
    assert isinstance(task, EstimatorTask)
    assert tuple(task.observables) == (((("Z", (97,)), 1.0),), ((("ZZ", (0, 97)), 1.0),))
    result = mps.execute(prepared.payload).result.pubs[0]
    assert [float(v) for v in estimator_result(result).expectation_values] == [-1.0, -1.0]


@pytest.mark.parametrize(
    ("term", "words"),
    [
        (PauliTerm("ZZ", 1.0, (3,)), "2 Paulis for 1 qubits"),
        (PauliTerm("Z", 1.0, (5,)), "qubit 5 is not a qubit of the 5-qubit circuit"),
        (PauliTerm("Z", 1.0, (-1,)), "qubit -1 is not a qubit"),
        (PauliTerm("ZX", 1.0, (2, 2)), "listed twice"),
        (PauliTerm("Z" * 100_000, 1.0, tuple(range(100_000))), "100000 qubits listed"),
        (PauliTerm("ZQ", 1.0, (0, 1)), "I, X, Y and Z"),
        (PauliTerm("z", 1.0, (0,)), "I, X, Y and Z"),
        (PauliTerm("Z", math.nan, (0,)), "finite"),
        (PauliTerm("Z", math.inf, (0,)), "finite"),
    ],
    ids=[
        "length",
        "out-of-range",
        "negative",
        "duplicate",
        "too-many",
        "letter",
        "lowercase",
        "nan",
        "inf",
    ],
)
def test_malformed_sparse_terms_are_refused(aer: AerAdapter, term: PauliTerm, words: str) -> None:
    # The sparse-structure refusals name the term's qubits field; the rest the observables.
    job = spec(estimator(X13, [Observable((PauliTerm("IIIIZ", 1.0), term))]))
    with pytest.raises(InvalidArgument) as info:
        prepare_in_process(aer, job, 1)
    error = info.value
    assert error.reason == "INVALID_OBSERVABLE"
    assert words in error.message
    assert [v.field for v in error.field_violations] in (
        [OBS],
        [f"{OBS}[0].terms[1].qubits"],
    )


def test_sparse_terms_count_against_the_estimator_limit() -> None:
    # Distinct terms x circuit qubits x bindings, as for dense terms.
    ctx = context()
    strict = AerAdapter(
        dataclasses.replace(ctx, limits=dataclasses.replace(ctx.limits, max_estimator_work=100))
    )
    singles = tuple(PauliTerm(p, 1.0, (q,)) for p in "XYZ" for q in range(5))
    # 15 distinct terms x 5 qubits = 75, however often they repeat.
    prepare_in_process(strict, spec(estimator(X13, [Observable(singles * 10)])), 1)
    pairs = tuple(PauliTerm(p + p, 1.0, (q, (q + 1) % 5)) for p in "XZ" for q in range(5))
    # 25 x 5 = 125.
    error = refused(
        strict, spec(estimator(X13, [Observable(singles + pairs)])), "ESTIMATOR_TOO_LARGE", OBS
    )
    assert error.metadata["value"] == "125"


# ------------------------------------------------------------------------ max_execution_time


@pytest.mark.parametrize(
    ("seconds", "nanos", "expected"),
    [(1, 0, 1.0), (0, 1, 1e-9), (2, 500_000_000, 2.5), (315_576_000_000, 0, 315_576_000_000.0)],
)
def test_a_positive_duration_is_its_seconds(seconds: int, nanos: int, expected: float) -> None:
    value = positive_seconds(duration_pb2.Duration(seconds=seconds, nanos=nanos), "f", "R")
    assert value == expected


@pytest.mark.parametrize(
    ("seconds", "nanos"),
    [(0, 0), (-1, 0), (0, -1), (1, -1), (1, 1_000_000_000), (315_576_000_001, 0), (-(2**63), 0)],
    ids=["zero", "negative", "negative-nanos", "mixed-signs", "nanos-overflow", "past-max", "min"],
)
def test_a_duration_that_is_not_positive_and_valid_is_refused(seconds: int, nanos: int) -> None:
    with pytest.raises(InvalidArgument) as info:
        positive_seconds(
            duration_pb2.Duration(seconds=seconds, nanos=nanos),
            "spec.options.max_execution_time",
            "INVALID_MAX_EXECUTION_TIME",
        )
    error = info.value
    assert error.reason == "INVALID_MAX_EXECUTION_TIME"
    assert error.code is Code.INVALID_ARGUMENT
    assert [v.field for v in error.field_violations] == ["spec.options.max_execution_time"]
    assert error.metadata == {"seconds": str(seconds), "nanos": str(nanos)}


# -------------------------------------------------------------------------- provider_options

PO = "spec.options.provider_options"


def struct(value: dict[str, Any]) -> struct_pb2.Struct:
    out = struct_pb2.Struct()
    out.update(value)
    return out


def nested(depth: int) -> struct_pb2.Struct:
    """A Struct `depth` levels deep ({"a": {"a": ... {"x": 1}}})."""
    value: dict[str, Any] = {"x": 1}
    for _ in range(depth - 1):
        value = {"a": value}
    return struct(value)


def provider_refusal(msg: struct_pb2.Struct) -> InvalidArgument:
    with pytest.raises(InvalidArgument) as info:
        decode_provider_options(msg, PO)
    assert info.value.reason == "INVALID_PROVIDER_OPTIONS"
    assert info.value.code is Code.INVALID_ARGUMENT
    return info.value


def test_options_decode_to_json_values() -> None:
    msg = struct({"a": 1, "b": "x", "c": [True, None, {"d": 2.5}], "e": {}})
    decoded = decode_provider_options(msg, PO)
    assert decoded == {
        "a": 1.0,
        "b": "x",
        "c": [True, None, {"d": 2.5}],
        "e": {},
    }
    # == takes True for 1 and 1.0: the types too (an adapter's schema tells a bool from a number).
    assert [type(decoded["a"]), *map(type, decoded["c"])] == [float, bool, type(None), dict]  # type: ignore[call-overload]
    assert decode_provider_options(struct_pb2.Struct(), PO) == {}


def test_the_depth_limit() -> None:
    assert decode_provider_options(nested(MAX_PROVIDER_OPTIONS_DEPTH), PO)
    error = provider_refusal(nested(MAX_PROVIDER_OPTIONS_DEPTH + 1))
    assert error.metadata == {
        "limit": "max_provider_options_depth",
        "maximum": str(MAX_PROVIDER_OPTIONS_DEPTH),
    }
    # Lists count as levels too.
    value: Any = 1
    for _ in range(MAX_PROVIDER_OPTIONS_DEPTH):
        value = [value]
    assert provider_refusal(struct({"l": value})).metadata["limit"] == "max_provider_options_depth"


def test_the_size_limit() -> None:
    big = struct({"s": "x" * MAX_PROVIDER_OPTIONS_BYTES})
    error = provider_refusal(big)
    assert error.metadata == {
        "limit": "max_provider_options_bytes",
        "value": str(big.ByteSize()),
        "maximum": str(MAX_PROVIDER_OPTIONS_BYTES),
    }
    # A huge list of small numbers is refused by size before anything walks it.
    many = struct_pb2.Struct()
    many.fields["l"].list_value.values.extend(struct_pb2.Value(number_value=1) for _ in range(5000))
    assert provider_refusal(many).metadata["limit"] == "max_provider_options_bytes"


@pytest.mark.parametrize("number", [math.nan, math.inf, -math.inf])
def test_numbers_must_be_finite(number: float) -> None:
    msg = struct_pb2.Struct()
    msg.fields["deep"].struct_value.fields["n"].number_value = number
    error = provider_refusal(msg)
    assert [v.field for v in error.field_violations] == [f"{PO}.deep.n"]


def test_a_value_without_a_kind_is_refused() -> None:
    msg = struct_pb2.Struct()
    msg.fields["empty"].CopyFrom(struct_pb2.Value())
    assert [v.field for v in provider_refusal(msg).field_violations] == [f"{PO}.empty"]


def test_aer_accepts_no_provider_option_and_names_each_key(aer: AerAdapter) -> None:
    assert aer.validate_provider_options({}, PO) == ProviderOptions()
    with pytest.raises(InvalidArgument) as info:
        aer.validate_provider_options({"shots": 1.0, "odd key\n": "x"}, PO)
    error = info.value
    assert error.reason == "INVALID_PROVIDER_OPTIONS"
    assert error.metadata["backend"] == "backends/aer-test"
    assert sorted(v.field for v in error.field_violations) == sorted(
        [f"{PO}.shots", f'{PO}["odd key\\n"]']
    )


class _Schema(ProviderOptions):
    method: str = "auto"
    threads: int = Field(default=1, ge=1, le=8)


class _WithOptions(AerAdapter):
    provider_options_model = _Schema


def test_an_adapter_schema_validates_values_and_refuses_unknown_keys() -> None:
    adapter = _WithOptions(context())
    assert adapter.validate_provider_options({"threads": 4.0}, PO) == _Schema(threads=4)
    with pytest.raises(InvalidArgument) as info:
        adapter.validate_provider_options({"threads": 99.0, "typo": 1.0}, PO)
    assert sorted(v.field for v in info.value.field_violations) == [f"{PO}.threads", f"{PO}.typo"]


def test_options_of_exactly_the_size_limit_are_accepted() -> None:
    sizes = {struct({"s": "x" * n}).ByteSize(): n for n in range(MAX_PROVIDER_OPTIONS_BYTES)}
    exact = struct({"s": "x" * sizes[MAX_PROVIDER_OPTIONS_BYTES]})
    assert exact.ByteSize() == MAX_PROVIDER_OPTIONS_BYTES
    assert decode_provider_options(exact, PO)
    over = struct({"s": "x" * (sizes[MAX_PROVIDER_OPTIONS_BYTES] + 1)})
    assert provider_refusal(over).metadata["limit"] == "max_provider_options_bytes"
