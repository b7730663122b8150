"""The canonical request digest: equal for the same request however it is written, different
for any change of meaning."""

from __future__ import annotations

import hashlib

import pytest
from google.protobuf import struct_pb2
from google.protobuf.duration_pb2 import Duration
from hypothesis import given, settings
from hypothesis import strategies as st
from qgateway.v1 import circuit_pb2, job_pb2

from gateway.api.codec import decode_spec
from gateway.api.job_service import _derive
from gateway.api.request_digest import (
    _canonical_pieces,
    _dumps,
    _pieces,
    canonical_spec,
    request_digest,
)
from gateway.api.spec_cache import SpecCache

QASM = 'OPENQASM 3.0; include "stdgates.inc"; qubit[1] q; bit[1] c; h q[0]; c = measure q;'


def _spec(**overrides: object) -> job_pb2.JobSpec:
    spec = job_pb2.JobSpec(
        backend="backends/aer",
        pubs=[
            circuit_pb2.Pub(
                sampler=circuit_pb2.SamplerPub(circuit=circuit_pb2.Circuit(qasm3=QASM), shots=100)
            )
        ],
    )
    for key, value in overrides.items():
        if key == "labels":
            assert isinstance(value, dict)
            spec.labels.update(value)
        elif key == "options":
            assert isinstance(value, job_pb2.JobOptions)
            spec.options.CopyFrom(value)
        else:
            setattr(spec, key, value)
    return spec


def _estimator(coefficient: float = 1.0) -> circuit_pb2.Pub:
    return circuit_pb2.Pub(
        estimator=circuit_pb2.EstimatorPub(
            circuit=circuit_pb2.Circuit(qasm3="OPENQASM 3.0; qubit[2] q;"),
            observables=[
                circuit_pb2.Observable(
                    terms=[circuit_pb2.PauliTerm(pauli="ZZ", coefficient=coefficient)]
                )
            ],
            parameter_values=circuit_pb2.BindingsArray(
                parameters=["a"], shape=[2], values=[0.5, 1]
            ),
        )
    )


def test_the_canonical_text_is_pinned() -> None:
    # Changing the encoding turns every retry of a stored job into REQUEST_ID_REUSED: this pins
    # it. A deliberate change needs a new DIGEST_VERSION and a migration story.
    spec = _spec(backend="aer", labels={"team": "qml", "a": "1"})
    spec.options.seed = 0
    spec.options.default_precision = -0.0
    spec.pubs.append(_estimator())
    assert canonical_spec(spec) == (
        b'{"spec":{"1":"backends/aer","2":[{"1":{"1":{"1":"OPENQASM 3.0; include \\"stdgates.inc'
        b'\\"; qubit[1] q; bit[1] c; h q[0]; c = measure q;"},"3":100}},{"2":{"1":{"1":"OPENQASM'
        b' 3.0; qubit[2] q;"},"2":[{"1":[{"1":"ZZ","2":"3ff0000000000000"}]}],"4":{"1":["a"],"2"'
        b':[2],"3":"P+AAAAAAAAA/8AAAAAAAAA=="}}}],"3":{"2":0,"3":"0000000000000000"},"5":{"a":"1"'
        b',"team":"qml"}},"v":1}'
    )
    assert request_digest(spec) == hashlib.sha256(canonical_spec(spec)).digest()


@pytest.mark.parametrize(
    ("left", "right"),
    [
        (_spec(backend="aer"), _spec(backend="backends/aer")),
        (_spec(session="s1"), _spec(session="sessions/s1")),
        (_spec(labels={"a": "1", "b": "2"}), _spec(labels={"b": "2", "a": "1"})),
        (_spec(), _spec(options=job_pb2.JobOptions())),
        (_spec(), _spec(labels={})),
        (
            _spec(),
            _spec(
                options=job_pb2.JobOptions(sampler_output=job_pb2.SAMPLER_OUTPUT_SAMPLES_AND_COUNTS)
            ),
        ),
        (
            _spec(options=job_pb2.JobOptions(fallback_backend="aer-mps")),
            _spec(options=job_pb2.JobOptions(fallback_backend="backends/aer-mps")),
        ),
        (
            _spec(options=job_pb2.JobOptions(provider_options=struct_pb2.Struct())),
            _spec(),
        ),
    ],
    ids=[
        "bare-backend",
        "bare-session",
        "label-order",
        "empty-options",
        "empty-labels",
        "sampler-output-default",
        "bare-fallback",
        "empty-provider-options",
    ],
)
def test_the_same_request_written_differently_has_one_digest(
    left: job_pb2.JobSpec, right: job_pb2.JobSpec
) -> None:
    assert request_digest(left) == request_digest(right)


def test_negative_zero_is_zero() -> None:
    left, right = _spec(), _spec()
    left.pubs.append(_estimator(0.0))
    right.pubs.append(_estimator(-0.0))
    assert request_digest(left) == request_digest(right)


def test_every_nan_is_one_nan_in_a_repeated_double_too() -> None:
    # Sweeps (repeated doubles) are written as one base64 string, not value by value: their
    # NaNs must be normalised there as well, or a client that wrote a NaN with another payload
    # or sign on its retry got REQUEST_ID_REUSED for the same request.
    import struct

    def nan(bits: str) -> float:
        return float(struct.unpack(">d", bytes.fromhex(bits))[0])

    def sweep(value: float) -> job_pb2.JobSpec:
        spec = _spec()
        pub = spec.pubs.add()
        pub.CopyFrom(_estimator())
        pub.estimator.parameter_values.values[:] = [value, 1.0]
        return spec

    canonical = request_digest(sweep(float("nan")))
    for bits in ("7ff8000000000001", "fff8000000000000"):
        assert request_digest(sweep(nan(bits))) == canonical, bits
    assert request_digest(sweep(2.0)) != canonical


def test_bytes_are_written_as_standard_padded_base64() -> None:
    # The encoding is part of the digest's contract (a different one turns every retry of a
    # stored job into REQUEST_ID_REUSED), and the pinned text above holds no bytes field.
    spec = _spec()
    spec.pubs[0].sampler.circuit.qpy = bytes([0xFB, 0xFF, 0x00, 0x41])
    assert b'{"3":"+/8AQQ=="}' in canonical_spec(spec)


def test_field_order_on_the_wire_and_unknown_fields_do_not_matter() -> None:
    spec = _spec(labels={"x": "y"})
    spec.options.seed = 7
    # Fields in reverse order (a parse merges concatenated messages), then an unknown field
    # number 15 (varint) that a newer client might send.
    reordered = (
        job_pb2.JobSpec(labels={"x": "y"}).SerializeToString()
        + job_pb2.JobSpec(options=job_pb2.JobOptions(seed=7)).SerializeToString()
        + job_pb2.JobSpec(pubs=spec.pubs).SerializeToString()
        + job_pb2.JobSpec(backend="aer").SerializeToString()
        + bytes([15 << 3 | 0, 1])
    )
    parsed = job_pb2.JobSpec.FromString(reordered)
    assert parsed.SerializeToString().endswith(bytes([15 << 3, 1]))  # kept as unknown
    assert request_digest(parsed) == request_digest(spec)


def _changed(change: str) -> job_pb2.JobSpec:
    spec = _spec(labels={"team": "qml"})
    pub = spec.pubs[0].sampler
    match change:
        case "backend":
            spec.backend = "backends/aer-mps"
        case "session":
            spec.session = "sessions/s1"
        case "label-value":
            spec.labels["team"] = "qm"
        case "label-added":
            spec.labels["extra"] = ""
        case "label-removed":
            del spec.labels["team"]
        case "shots":
            pub.shots = 101
        case "shots-unset":
            pub.ClearField("shots")
        case "seed-0":
            spec.options.seed = 0
        case "default-shots":
            spec.options.default_shots = 100
        case "precision-0":
            spec.options.default_precision = 0.0
        case "qasm2-same-text":
            pub.circuit.qasm2 = QASM
        case "qpy":
            pub.circuit.qpy = QASM.encode()
        case "circuit-text":
            pub.circuit.qasm3 = QASM + " "
        case "values":
            pub.parameter_values.values.extend([1.0, 2.0])
        case "values-order":
            pub.parameter_values.values.extend([2.0, 1.0])
        case "shape":
            pub.parameter_values.shape.append(0)
        case "parameters":
            pub.parameter_values.parameters.append("a")
        case "parameters-two":
            pub.parameter_values.parameters.extend(["a", "b"])
        case "parameters-two-reordered":
            pub.parameter_values.parameters.extend(["b", "a"])
        case "session-one-char":
            spec.session = "s"
        case "counts-only":
            spec.options.sampler_output = job_pb2.SAMPLER_OUTPUT_COUNTS
        case "samples-only":
            spec.options.sampler_output = job_pb2.SAMPLER_OUTPUT_SAMPLES
        case "fallback":
            spec.options.fallback_backend = "backends/aer-mps"
        case "max-execution-time":
            spec.options.max_execution_time.CopyFrom(Duration(seconds=1))
        case "provider-options":
            spec.options.provider_options.update({"k": 1})
        case "provider-options-null":
            spec.options.provider_options.update({"k": None})
        case "second-pub":
            spec.pubs.append(spec.pubs[0])
        case "empty-pub-kind":
            spec.pubs.append(circuit_pb2.Pub())
        case "empty-sampler-pub":
            spec.pubs.append(circuit_pb2.Pub(sampler=circuit_pb2.SamplerPub()))
        case "estimator-pub-after":
            spec.pubs.append(_estimator())
        case "estimator-pub-before":
            sampler = circuit_pb2.Pub()
            sampler.CopyFrom(spec.pubs[0])
            del spec.pubs[:]
            spec.pubs.extend([_estimator(), sampler])
        case _:
            raise AssertionError(change)
    return spec


CHANGES = [
    "backend",
    "session",
    "label-value",
    "label-added",
    "label-removed",
    "shots",
    "shots-unset",
    "seed-0",
    "default-shots",
    "precision-0",
    "qasm2-same-text",
    "qpy",
    "circuit-text",
    "values",
    "shape",
    "parameters",
    "parameters-two",
    "parameters-two-reordered",
    "session-one-char",
    "counts-only",
    "samples-only",
    "fallback",
    "max-execution-time",
    "provider-options",
    "provider-options-null",
    "second-pub",
    "empty-pub-kind",
    "empty-sampler-pub",
    "estimator-pub-after",
    "estimator-pub-before",
]


def test_every_change_of_meaning_changes_the_digest() -> None:
    digests = {"original": request_digest(_spec(labels={"team": "qml"}))}
    for change in [*CHANGES, "values-order"]:
        digests[change] = request_digest(_changed(change))
    # All distinct: from the original and from one another.
    assert len(set(digests.values())) == len(digests)


# ---------------------------------------------------------------------------------- property


names = st.text(alphabet="abcxyz-", min_size=1, max_size=4)
finite = st.floats(allow_nan=False, allow_infinity=False, width=64)


@st.composite
def specs(draw: st.DrawFn) -> job_pb2.JobSpec:
    spec = job_pb2.JobSpec(backend=draw(st.sampled_from(["aer", "backends/aer", "backends/b"])))
    for _ in range(draw(st.integers(0, 2))):
        pub = spec.pubs.add()
        if draw(st.booleans()):
            pub.sampler.circuit.qasm3 = draw(st.sampled_from(["a", "b", "é"]))
            if draw(st.booleans()):
                pub.sampler.shots = draw(st.integers(-1, 2))
            pub.sampler.parameter_values.values.extend(draw(st.lists(finite, max_size=3)))
        else:
            pub.estimator.circuit.qasm2 = draw(st.sampled_from(["a", "b"]))
            for _ in range(draw(st.integers(0, 2))):
                term = pub.estimator.observables.add().terms.add()
                term.pauli = draw(st.sampled_from(["Z", "X"]))
                term.coefficient = draw(finite)
                term.qubits.extend(draw(st.lists(st.integers(0, 2), max_size=2)))
            if draw(st.booleans()):
                pub.estimator.precision = draw(finite)
    if draw(st.booleans()):
        spec.options.seed = draw(st.integers(0, 3))
    spec.options.sampler_output = draw(st.sampled_from(job_pb2.SamplerOutput.values()))
    spec.options.fallback_backend = draw(st.sampled_from(["", "aer", "backends/aer"]))
    if draw(st.booleans()):
        spec.options.provider_options.update(
            draw(st.dictionaries(names, st.one_of(st.none(), st.booleans(), names), max_size=2))
        )
    spec.labels.update(draw(st.dictionaries(names, names, max_size=3)))
    return spec


def _normalised_bytes(spec: job_pb2.JobSpec) -> bytes:
    """An independent statement of "same request": names in full form, the sampler default
    written out, -0.0 as 0.0, then the (same-process) deterministic serialisation."""
    out = job_pb2.JobSpec()
    out.CopyFrom(spec)
    if not out.backend.startswith("backends/"):
        out.backend = "backends/" + out.backend
    fb = out.options.fallback_backend
    if fb and not fb.startswith("backends/"):
        out.options.fallback_backend = "backends/" + fb
    if out.options.sampler_output == job_pb2.SAMPLER_OUTPUT_SAMPLES_AND_COUNTS:
        out.options.sampler_output = job_pb2.SAMPLER_OUTPUT_UNSPECIFIED
    for pub in out.pubs:
        if pub.WhichOneof("pub") == "sampler":
            values = pub.sampler.parameter_values.values
            values[:] = [v + 0.0 for v in values]
        elif pub.WhichOneof("pub") == "estimator":
            for obs in pub.estimator.observables:
                for term in obs.terms:
                    term.coefficient += 0.0
            if pub.estimator.HasField("precision"):
                pub.estimator.precision += 0.0
    if out.HasField("options") and out.options.ByteSize() == 0:
        out.ClearField("options")
    return out.SerializeToString(deterministic=True)


@settings(max_examples=400, deadline=None)
@given(specs(), specs())
def test_digests_are_equal_exactly_when_the_normalised_requests_are(
    a: job_pb2.JobSpec, b: job_pb2.JobSpec
) -> None:
    assert (request_digest(a) == request_digest(b)) == (
        _normalised_bytes(a) == _normalised_bytes(b)
    )


@settings(max_examples=300, deadline=None)
@given(specs())
def test_a_request_hashes_the_same_after_a_round_trip_with_labels_reordered(
    spec: job_pb2.JobSpec,
) -> None:
    copy = job_pb2.JobSpec.FromString(spec.SerializeToString())
    labels = dict(reversed(list(copy.labels.items())))
    copy.ClearField("labels")
    copy.labels.update(labels)
    assert request_digest(copy) == request_digest(spec)


_JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=5),
    lambda children: (
        st.lists(children, max_size=5) | st.dictionaries(st.text(max_size=3), children, max_size=4)
    ),
    max_leaves=40,
)


@settings(max_examples=300)
@given(_JSON_VALUES)
def test_the_text_in_pieces_is_exactly_one_json_dumps(value: object) -> None:
    assert "".join(_pieces(value)) == _dumps(value)


def test_a_large_request_is_written_in_small_pieces() -> None:
    """One json.dumps of a request with many Pauli terms held the interpreter lock for its
    whole length (0.35 s at 500,000 terms), stopping the event loop even from a thread: the
    text is written in pieces no longer than a slice of the array, and is unchanged."""
    terms = [circuit_pb2.PauliTerm(pauli=f"{i:012b}", coefficient=0.5) for i in range(5000)]
    pub = circuit_pb2.EstimatorPub(
        circuit=circuit_pb2.Circuit(qasm3=QASM), observables=[circuit_pb2.Observable(terms=terms)]
    )
    spec = job_pb2.JobSpec(backend="backends/aer", pubs=[circuit_pb2.Pub(estimator=pub)])
    pieces = list(_canonical_pieces(spec))
    text = "".join(pieces)
    assert max(len(p) for p in pieces) < len(text) / 4
    assert canonical_spec(spec) == text.encode("ascii")
    assert request_digest(spec) == hashlib.sha256(text.encode("ascii")).digest()
    # The same nesting written whole.
    nested = {"a": [{"b": i, "c": [i] * 3} for i in range(2500)], "d": {"e": ["x"] * 1001}}
    assert "".join(_pieces(nested)) == _dumps(nested)


def test_unknown_fields_are_not_stored_with_the_spec() -> None:
    # Unknown fields at the top and inside a PUB: what is stored is only what the API defines.
    spec = _spec()
    data = bytearray(spec.SerializeToString()) + bytes([15 << 3 | 0, 1])
    parsed = job_pb2.JobSpec.FromString(bytes(data))
    parsed.pubs[0].MergeFromString(bytes([14 << 3 | 0, 1]))
    spec_bytes, digest, decoded = _derive(parsed, True, SpecCache(request_digest, decode_spec))
    assert spec_bytes == _spec().SerializeToString(deterministic=True)
    assert digest == request_digest(_spec())
    assert not isinstance(decoded, Exception)
