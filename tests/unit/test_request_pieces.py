"""gateway.api.request_pieces: a large request decoded in pieces is the message protobuf's own
parse gives, no piece holds the GIL for more than its size, and a field past its limit is
refused before the rest is read."""

from __future__ import annotations

from typing import Any

import pytest
from google.protobuf.message import DecodeError
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from qgateway.v1 import circuit_pb2, job_pb2, job_service_pb2

from gateway.api import codec, request_pieces
from gateway.api.request_pieces import Occurrences, parse
from gateway.api.wire_format import encode_varint, length_delimited
from gateway.domain.errors import InvalidArgument

_text = st.text(max_size=40)
_int32 = st.integers(-(2**31), 2**31 - 1)  # negative int32: ten-byte varints
_double = st.floats(allow_nan=True, allow_infinity=True)


@st.composite
def _bindings(draw: st.DrawFn) -> circuit_pb2.BindingsArray:
    return circuit_pb2.BindingsArray(
        parameters=draw(st.lists(_text, max_size=4)),
        shape=draw(st.lists(_int32, max_size=4)),
        values=draw(st.lists(_double, max_size=30)),
    )


@st.composite
def _circuit(draw: st.DrawFn) -> circuit_pb2.Circuit:
    kind = draw(st.sampled_from(["qasm3", "qasm2", "qpy"]))
    if kind == "qpy":
        return circuit_pb2.Circuit(qpy=draw(st.binary(max_size=200)))
    return circuit_pb2.Circuit(**{kind: draw(st.text(max_size=200))})


@st.composite
def _pub(draw: st.DrawFn) -> circuit_pb2.Pub:
    if draw(st.booleans()):
        sampler = circuit_pb2.SamplerPub(
            circuit=draw(_circuit()),
            parameter_values=draw(_bindings()),
            shots=draw(st.integers(-(2**63), 2**63 - 1)),
        )
        return circuit_pb2.Pub(sampler=sampler)
    observables = [
        circuit_pb2.Observable(
            terms=[
                circuit_pb2.PauliTerm(
                    pauli=draw(_text),
                    coefficient=draw(_double),
                    qubits=draw(st.lists(_int32, max_size=12)),
                )
                for _ in range(draw(st.integers(0, 3)))
            ]
        )
        for _ in range(draw(st.integers(0, 6)))
    ]
    estimator = circuit_pb2.EstimatorPub(
        circuit=draw(_circuit()),
        observables=observables,
        observables_shape=draw(st.lists(_int32, max_size=3)),
        parameter_values=draw(_bindings()),
        precision=draw(_double),
        single_observable=draw(st.booleans()),
    )
    return circuit_pb2.Pub(estimator=estimator)


@st.composite
def _request(draw: st.DrawFn) -> job_service_pb2.SubmitJobRequest:
    spec = job_pb2.JobSpec(
        backend=draw(_text),
        pubs=draw(st.lists(_pub(), max_size=4)),
        session=draw(_text),
        labels=draw(st.dictionaries(_text, _text, max_size=3)),
    )
    if draw(st.booleans()):
        spec.options.seed = draw(st.integers(0, 2**63 - 1))
        spec.options.provider_options.update({"a": draw(_text), "b": [1.5, {"c": True}]})
    return job_service_pb2.SubmitJobRequest(
        request_id=draw(_text), spec=spec, validate_only=draw(st.booleans())
    )


def _wire(message: Any) -> bytes:
    return bytes(message.SerializeToString(deterministic=True))


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    st.lists(_request(), min_size=1, max_size=3),
    st.sampled_from([1, 2, 3, 5, 16, 64, 1 << 16]),
    st.binary(max_size=20),
)
def test_the_pieces_parse_as_protobuf_does(
    requests: list[job_service_pb2.SubmitJobRequest], piece: int, unknown: bytes
) -> None:
    # Concatenated messages parse as their merge: singular fields repeated, oneofs switched,
    # repeated fields appended, an unknown field kept.
    data = b"".join(_wire(r) for r in requests) + length_delimited(1000, unknown)
    whole = job_service_pb2.SubmitJobRequest.FromString(data)
    pieces = parse(job_service_pb2.SubmitJobRequest, data, piece_bytes=piece)
    assert _wire(pieces) == _wire(whole)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(_request(), st.sampled_from([1, 3, 16]), st.data())
def test_a_cut_request_fails_in_pieces_as_it_fails_whole(
    request: job_service_pb2.SubmitJobRequest, piece: int, data: st.DataObject
) -> None:
    wire = _wire(request)
    cut = wire[: data.draw(st.integers(0, max(0, len(wire) - 1)))]
    try:
        whole = job_service_pb2.SubmitJobRequest.FromString(cut)
    except DecodeError:
        with pytest.raises((DecodeError, ValueError)):
            parse(job_service_pb2.SubmitJobRequest, cut, piece_bytes=piece)
    else:
        assert _wire(parse(job_service_pb2.SubmitJobRequest, cut, piece_bytes=piece)) == _wire(
            whole
        )


def _merges(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """The size of every piece merged from now on."""
    sizes: list[int] = []
    merge = request_pieces._merge

    def recorded(message: Any, piece: bytes) -> None:
        sizes.append(len(piece))
        merge(message, piece)

    monkeypatch.setattr(request_pieces, "_merge", recorded)
    return sizes


def test_sixteen_mib_of_empty_pubs_is_refused_after_the_limit(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    sizes = _merges(monkeypatch)
    empty_pubs = b"\x12\x00" * ((16 << 20) // 2 - 8)
    data = length_delimited(2, empty_pubs)  # SubmitJobRequest.spec
    with pytest.raises(InvalidArgument) as refused:
        parse(job_service_pb2.SubmitJobRequest, data)
    err = refused.value
    # As the job's own check refuses it, without a count: the rest was never counted.
    assert err.reason == "TOO_MANY_PUBS"
    assert [v.field for v in err.field_violations] == ["spec.pubs"]
    assert err.metadata == {"maxPubs": str(codec.MAX_PUBS)}
    assert "got more than 1000;" in err.message
    assert sum(sizes) == 0  # refused before any of it was parsed


def test_no_piece_is_larger_than_a_piece_but_one_string(monkeypatch: pytest.MonkeyPatch) -> None:
    spec = job_pb2.JobSpec(backend="backends/aer")
    estimator = spec.pubs.add().estimator
    estimator.circuit.qasm3 = "OPENQASM 3.0;" + " " * (1 << 20)  # one string of 1 MiB
    for i in range(30_000):
        estimator.observables.add().terms.add(pauli="ZZ", coefficient=0.5, qubits=[0, i])
    estimator.observables.add().terms.add(qubits=[-1] * 200_000)  # 2 MB of 10-byte varints
    estimator.parameter_values.values.extend([0.25] * 300_000)  # 2.4 MB of doubles
    request = job_service_pb2.RunRequest(request_id="r", spec=spec)
    data = _wire(request)
    sizes = _merges(monkeypatch)
    assert _wire(parse(job_service_pb2.RunRequest, data)) == data
    piece = request_pieces.PIECE_BYTES
    large = [size for size in sizes if size > piece + 16]  # a key and a length at most
    assert len(large) == 1 and large[0] > 1 << 20  # the circuit's text, on its own
    assert len(sizes) > (len(data) - large[0]) // piece  # the rest was cut, not parsed whole


def _limits(terms: int, qubits: int) -> dict[str, Occurrences]:
    refuse = request_pieces._too_many("TOO_MANY_TERMS", "Pauli terms", terms)
    return {
        "qgateway.v1.Observable.terms": Occurrences(terms, refuse, at_holder=True),
        "qgateway.v1.PauliTerm.qubits": Occurrences(qubits, refuse),
    }


def test_a_field_past_its_limit_is_refused_where_the_jobs_check_refuses_it() -> None:
    observable = circuit_pb2.Observable(terms=[circuit_pb2.PauliTerm(pauli="Z")] * 40)
    spec = job_pb2.JobSpec(pubs=[circuit_pb2.Pub()] * 2)
    spec.pubs[1].estimator.observables.extend([observable] * 3)
    data = _wire(job_service_pb2.SubmitJobRequest(spec=spec))
    with pytest.raises(InvalidArgument) as refused:
        parse(job_service_pb2.SubmitJobRequest, data, piece_bytes=8, limits=_limits(119, 50))
    err = refused.value
    # Terms count over the whole request, named where the job's check names them: the PUB's
    # observables (codec.check_counts).
    field = "spec.pubs[1].estimator.observables"
    assert (err.reason, err.metadata) == ("TOO_MANY_TERMS", {"limit": "119"})
    assert [v.field for v in err.field_violations] == [field]
    assert err.message == f"{field}: a job holds at most 119 Pauli terms"
    # Within the limit, the same request decodes.
    parsed = parse(job_service_pb2.SubmitJobRequest, data, piece_bytes=8, limits=_limits(120, 50))
    assert _wire(parsed) == data
    # A field counted where it is: unpacked qubit indices of one term.
    term = bytes(length_delimited(1, b"Z") + b"\x18\x01" * 51)  # qubits = 3, as varints
    spec_bytes = length_delimited(
        2, length_delimited(2, length_delimited(2, length_delimited(1, term)))
    )
    with pytest.raises(InvalidArgument) as refused:
        parse(job_pb2.JobSpec, spec_bytes, piece_bytes=8, limits=_limits(120, 50))
    field = "pubs[0].estimator.observables[0].terms[0].qubits"
    assert [v.field for v in refused.value.field_violations] == [field]


def test_any_field_repeated_past_the_default_is_malformed() -> None:
    # A singular field (or one protobuf does not know) sent over and over: protobuf keeps the
    # last; no client sends it 65,537 times, and walking them costs Python per field.
    backend = length_delimited(1, b"b") * (request_pieces.DEFAULT_OCCURRENCES + 1)
    unknown = (encode_varint(999 << 3) + b"\x01") * (request_pieces.DEFAULT_OCCURRENCES + 1)
    for spec, where in ((backend, "spec.backend"), (unknown, "spec.(unknown field)")):
        with pytest.raises(InvalidArgument) as refused:
            parse(job_service_pb2.SubmitJobRequest, length_delimited(2, spec))
        assert refused.value.reason == "MALFORMED_REQUEST"
        assert [v.field for v in refused.value.field_violations] == [where]
        assert refused.value.metadata == {"limit": str(request_pieces.DEFAULT_OCCURRENCES)}
    within = backend[: len(backend) - 3]
    parsed = parse(job_service_pb2.SubmitJobRequest, length_delimited(2, within))
    assert parsed.spec.backend == "b"
