"""The Qiskit circuit front end: parsing limits, validation reasons, counts and estimates.

Every bad input is asserted by its reason and by the field the error names; expected values
are hard-coded, never computed by the code under test.
"""

from __future__ import annotations

import math
import sys
from pathlib import Path

import numpy as np
import pytest
from qiskit import QuantumCircuit
from qiskit.circuit.classical import expr

from gateway.backends.base import CircuitLimits
from gateway.backends.qiskit import frontend as fe
from gateway.domain.circuits import (
    Bindings,
    CircuitFeature,
    CircuitLanguage,
    CircuitSource,
    Observable,
)
from gateway.domain.errors import Code, InvalidArgument
from gateway.domain.jobs import SamplerOutput

FIELD = "spec.pubs[0].sampler.circuit.qasm3"
LIMITS = CircuitLimits()
H3 = 'OPENQASM 3.0;\ninclude "stdgates.inc";\n'
H2 = 'OPENQASM 2.0;\ninclude "qelib1.inc";\n'


def q3(text: str) -> CircuitSource:
    return CircuitSource(CircuitLanguage.QASM3, text)


def q2(text: str) -> CircuitSource:
    return CircuitSource(CircuitLanguage.QASM2, text)


def refused(
    source: CircuitSource, reason: str, limits: CircuitLimits = LIMITS, **kwargs: int
) -> InvalidArgument:
    with pytest.raises(InvalidArgument) as info:
        fe.parse_circuit(source, limits, FIELD, **kwargs)
    error = info.value
    assert error.reason == reason, (error.reason, error.message)
    assert error.code is Code.INVALID_ARGUMENT
    assert [v.field for v in error.field_violations] == [FIELD]
    return error


def error_text(error: InvalidArgument) -> str:
    parts = [error.message, repr(error), str(error.metadata)]
    parts += [v.description for v in error.field_violations]
    return "\n".join(parts)


def nested_definitions(depth: int, *, qasm3: bool) -> str:
    header = H3 + "qubit[1] q;\n" if qasm3 else H2 + "qreg q[1];\n"
    lines = ["gate g0 a { x a; }"]
    lines += [f"gate g{i} a {{ g{i - 1} a; g{i - 1} a; }}" for i in range(1, depth + 1)]
    return header + "\n".join(lines) + f"\ng{depth} q[0];\n"


# ------------------------------------------------------------------------------- parsing


def test_parses_qasm3_and_qasm2() -> None:
    c3 = fe.parse_circuit(
        q3(H3 + "qubit[2] q; bit[2] c; h q[0]; cx q[0], q[1]; c = measure q;"), LIMITS, FIELD
    )
    c2 = fe.parse_circuit(
        q2(H2 + "qreg q[2]; creg c[2]; h q[0]; cx q[0], q[1]; measure q -> c;"), LIMITS, FIELD
    )
    for circuit in (c3, c2):
        assert circuit.num_qubits == 2
        assert circuit.num_clbits == 2
        assert dict(circuit.count_ops()) == {"h": 1, "cx": 1, "measure": 2}


def test_source_size_limit() -> None:
    source = q3(H3 + "qubit[1] q;\n" + "x q[0];\n" * 50)
    error = refused(source, "CIRCUIT_TOO_LARGE", CircuitLimits(max_source_bytes=200))
    assert error.metadata["maxSourceBytes"] == "200"


def test_empty_source_is_invalid() -> None:
    refused(q3("   \n"), "INVALID_QASM")


@pytest.mark.parametrize("language", [CircuitLanguage.QASM3, CircuitLanguage.QASM2])
def test_include_of_a_real_file_is_refused_and_never_read(
    tmp_path: Path, language: CircuitLanguage
) -> None:
    secret = "TOPSECRET_7f3a9c"
    path = tmp_path / "secret.inc"
    path.write_text(f"{secret} gate leak a {{ x a; }}\n")
    if language is CircuitLanguage.QASM3:
        text = f'OPENQASM 3.0;\ninclude "{path}";\nqubit[1] q;\n'
    else:
        text = f'OPENQASM 2.0;\ninclude "{path}";\nqreg q[1];\n'
    error = refused(CircuitSource(language, text), "INCLUDE_NOT_ALLOWED")
    assert secret not in error_text(error)
    assert str(path) not in error.message


def test_qasm2_parser_itself_cannot_read_files(tmp_path: Path) -> None:
    # Defence in depth: even if the include scan missed something, the parser has no path.
    secret = "TOPSECRET_b41d"
    (tmp_path / "x.inc").write_text(f"{secret};\n")
    for name in (str(tmp_path / "x.inc"), "x.inc"):
        with pytest.raises(InvalidArgument) as info:
            fe._loads_qasm2(f'OPENQASM 2.0;\ninclude "{name}";\nqreg q[1];\n', FIELD)
        assert info.value.reason == "INVALID_QASM"
        assert secret not in error_text(info.value)


@pytest.mark.parametrize(
    "source",
    [
        q3(H3 + 'include "other.inc";\nqubit[1] q;'),
        q3('OPENQASM 3.0;\ninclude "qelib1.inc";\nqubit[1] q;'),  # the other language's library
        q2('OPENQASM 2.0;\ninclude "stdgates.inc";\nqreg q[1];'),
        # A string literal holding comment markers does not start a comment.
        q3(H3 + 'defcalgrammar "//";  include "/etc/passwd";\nqubit[1] q;'),
        q3(H3 + 'include "/*";  include "/etc/hosts"; // */\nqubit[1] q;'),
        q2('OPENQASM 2.0;\ninclude "qelib1.inc"; /* include "/etc/hosts"; */\nqreg q[1];'),
        # OpenQASM 2 line comments end at LF only, OpenQASM 3 ones at CR too.
        q3(H3 + '// note\rinclude "/etc/hosts";\nqubit[1] q;'),
        q2('OPENQASM 2.0;\r\ninclude "/etc/hosts";\r\nqreg q[1];'),
        q2("OPENQASM 2.0;\ninclude '/etc/hosts';\nqreg q[1];"),
        q2('OPENQASM 2.0;\ninclude\n// c\n"/etc/hosts"\n;\nqreg q[1];'),
        q2("OPENQASM 2.0;\ninclude;\nqreg q[1];"),
    ],
)
def test_include_whitelist(source: CircuitSource) -> None:
    refused(source, "INCLUDE_NOT_ALLOWED")


def test_an_include_without_a_file_name_is_a_syntax_error() -> None:
    refused(q3(H3 + "include /etc/passwd;\nqubit[1] q;"), "INVALID_QASM")


def test_includes_inside_comments_are_ignored() -> None:
    text = (
        H3 + '// include "/etc/passwd";\n/* include "/etc/hosts";\n */\n'
        "qubit[1] q; bit[1] c; x q[0]; c = measure q;"
    )
    circuit = fe.parse_circuit(q3(text), LIMITS, FIELD)
    assert circuit.num_qubits == 1
    text2 = H2 + '// include "/etc/passwd";\nqreg q[1];\n'
    assert fe.parse_circuit(q2(text2), LIMITS, FIELD).num_qubits == 1
    # Qiskit's OpenQASM 2 lexer ends a line comment at LF only: a CR does not end it.
    text3 = H2 + '// note\r include "/etc/passwd";\nqreg q[1];\n'
    assert fe.parse_circuit(q2(text3), LIMITS, FIELD).num_qubits == 1


@pytest.mark.parametrize(
    ("source", "where"),
    [
        (q3(H3 + "qubit[2] q;\nh q[0] cx;\n"), "line 4"),
        (q3(H3 + "qubit[2] q;\nh q[0]; ` x q;\n"), "line 4"),
        (q3(H3 + "qubit[2] q;\nh q[0]"), "line 4"),
        (q2(H2 + "qreg q[2];\nh q[0]\n"), "line 4"),
        (q2(H2 + "qreg q[1];\nx r[0];\n"), "line 4"),  # an undefined register, not a gate
    ],
)
def test_syntax_errors_say_where(source: CircuitSource, where: str) -> None:
    error = refused(source, "INVALID_QASM")
    assert where in error.message


@pytest.mark.parametrize(
    "source",
    [
        q3(H3 + "qubit[2] q; x q[5];"),  # index past the register: an IndexError in the SDK
        q3(H3 + "qubit[2] q; cx q[0], q[0];"),
        q3(H3 + "qubit[2] q; x q[0], q[1];"),
        q3(H3 + "qubit[1] q; bit c; c = measure q[0]; if (c == 2) { x q[0]; }"),
        q2(H2 + "qreg q[1]; x q[3];"),
        q3(H3 + "qubit[n] q;"),
    ],
)
def test_invalid_programs(source: CircuitSource) -> None:
    refused(source, "INVALID_QASM")


@pytest.mark.parametrize(
    "source",
    [
        q3(H3 + "qubit[2] q;\nfoo q[0];"),
        q3(H3 + "qubit[2] q;\nfoo(0.5) q[0], q[1];"),
        q3("OPENQASM 3.0;\nqubit[2] q;\nfoo q[0];"),
        q2(H2 + "qreg q[2];\nfoo q[0];"),
        q2(H2 + "qreg q[2];\nfoo(0.1) q[0], q[1];"),
    ],
)
def test_unknown_gates(source: CircuitSource) -> None:
    error = refused(source, "UNKNOWN_GATE")
    assert error.metadata["gate"] == "foo"


def test_opaque_qasm2_gate_is_unknown() -> None:
    error = refused(q2(H2 + "qreg q[1];\nopaque mystery a;\nmystery q[0];"), "UNKNOWN_GATE")
    assert error.metadata["gate"] == "mystery"


@pytest.mark.parametrize("qasm3", [True, False])
def test_exponentially_nested_definitions_are_refused_by_count(qasm3: bool) -> None:
    text = nested_definitions(40, qasm3=qasm3)
    source = q3(text) if qasm3 else q2(text)
    error = refused(source, "CIRCUIT_TOO_LARGE")
    assert error.metadata["maxOperations"] == str(LIMITS.max_operations)


def test_exponential_definitions_that_are_never_used_still_cannot_be_imported() -> None:
    # The qasm3 importer copies definitions eagerly, so defining them is the expensive part.
    text = nested_definitions(40, qasm3=True).rsplit("g40 q[0];", 1)[0]
    refused(q3(text), "CIRCUIT_TOO_COMPLEX")


def test_operation_limit_counts_unrolled_definitions_and_loops() -> None:
    limits = CircuitLimits(max_operations=100)
    fe.parse_circuit(q2(nested_definitions(6, qasm3=False)), limits, FIELD)  # 64 x gates
    refused(q2(nested_definitions(7, qasm3=False)), "CIRCUIT_TOO_LARGE", limits)  # 128
    refused(q3(H3 + "qubit[1] q;\nfor int i in [0:199] { x q[0]; }"), "CIRCUIT_TOO_LARGE", limits)


def test_deeply_nested_expression_is_too_complex() -> None:
    text = H3 + "qubit[1] q;\nrx(" + "(" * 600 + "1" + ")" * 600 + ") q[0];"
    refused(q3(text), "CIRCUIT_TOO_COMPLEX")


def test_pow_on_a_wide_gate_is_refused_before_building_its_matrix() -> None:
    operands = ", ".join(f"q[{i}]" for i in range(6))
    text = H3 + f"qubit[6] q;\ngate w a, b, c, d, e, f {{ h a; }}\npow(0.5) @ w {operands};"
    refused(q3(text), "CIRCUIT_TOO_COMPLEX")


def test_too_many_qubits_is_refused_before_parsing() -> None:
    error = refused(q3(H3 + "qubit[100000000] q;"), "TOO_MANY_QUBITS", max_qubits=64)
    assert error.metadata == {"numQubits": "100000000", "maxQubits": "64"}
    refused(q3(H3 + "x $1000000;"), "TOO_MANY_QUBITS", max_qubits=64)
    refused(q2(H2 + "qreg q[65];"), "TOO_MANY_QUBITS", max_qubits=64)
    # Without a backend limit, the bit count is bounded by the operation limit.
    refused(q2(H2 + "qreg q[100000000];"), "CIRCUIT_TOO_LARGE")


def test_too_many_qubits_after_parsing() -> None:
    circuit = QuantumCircuit(5)
    with pytest.raises(InvalidArgument) as info:
        fe.check_qubit_count(circuit, 4, FIELD)
    assert info.value.reason == "TOO_MANY_QUBITS"


# ---------------------------------------------------------------------- operation count


def test_count_operations_memoises_definitions() -> None:
    circuit = fe.parse_circuit(q2(nested_definitions(12, qasm3=False)), LIMITS, FIELD)
    assert fe.count_operations(circuit) == 4096
    loops = fe.parse_circuit(
        q3(H3 + "qubit[2] q;\nfor int i in [0:9] { x q[0]; h q[1]; }\nx q[0];"), LIMITS, FIELD
    )
    # 1 loop op + 10 iterations x 2 gates + 1 gate
    assert fe.count_operations(loops) == 22


# ------------------------------------------------------------------------------ features


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        ("h q[0]; c[0] = measure q[0]; c[1] = measure q[1];", set()),
        ("c[0] = measure q[0]; c[0] = measure q[0]; barrier q;", set()),
        ("c[0] = measure q[0]; x q[1]; c[1] = measure q[1];", set()),
        ("c[0] = measure q[0]; x q[0];", {CircuitFeature.MID_CIRCUIT_MEASUREMENT}),
        ("reset q[0]; h q[0];", {CircuitFeature.RESET}),
        (
            "c[0] = measure q[0]; reset q[0];",
            {CircuitFeature.RESET, CircuitFeature.MID_CIRCUIT_MEASUREMENT},
        ),
        ("c[0] = measure q[0]; if (c[0]) { x q[1]; }", {CircuitFeature.CONTROL_FLOW}),
        (
            "c[0] = measure q[0]; if (c[0]) { x q[0]; }",
            {CircuitFeature.CONTROL_FLOW, CircuitFeature.MID_CIRCUIT_MEASUREMENT},
        ),
        ("for int i in [0:2] { x q[0]; }", {CircuitFeature.CONTROL_FLOW}),
        ("while (c[0] == false) { c[0] = measure q[0]; }", {CircuitFeature.CONTROL_FLOW}),
    ],
)
def test_detect_features(body: str, expected: set[CircuitFeature]) -> None:
    circuit = fe.parse_circuit(q3(H3 + "qubit[2] q; bit[2] c;\n" + body), LIMITS, FIELD)
    assert fe.detect_features(circuit) == frozenset(expected)


def test_qasm2_if_is_control_flow() -> None:
    text = H2 + "qreg q[1]; creg c[1];\nmeasure q[0] -> c[0];\nif (c == 1) x q[0];"
    circuit = fe.parse_circuit(q2(text), LIMITS, FIELD)
    assert fe.detect_features(circuit) == {
        CircuitFeature.CONTROL_FLOW,
        CircuitFeature.MID_CIRCUIT_MEASUREMENT,
    }


def test_unsupported_feature_names_the_feature() -> None:
    with pytest.raises(InvalidArgument) as info:
        fe.check_features({CircuitFeature.RESET}, {CircuitFeature.CONTROL_FLOW}, FIELD)
    assert info.value.reason == "UNSUPPORTED_FEATURE"
    assert info.value.metadata == {"feature": "reset"}
    assert info.value.field_violations[0].field == FIELD
    fe.check_features({CircuitFeature.RESET}, set(CircuitFeature), FIELD)


def test_bits_outside_registers_become_one_bit_registers() -> None:
    circuit = fe.parse_circuit(q3(H3 + "qubit[1] q; bit c; c = measure q[0];"), LIMITS, FIELD)
    assert not fe.has_bits_outside_registers(circuit)
    assert fe.result_registers(circuit) == (("c", (0,)),)


# ---------------------------------------------------------------------------- parameters

PFIELD = "spec.pubs[0].sampler.parameter_values"


def test_bindings_are_reordered_into_circuit_order() -> None:
    values = np.array([1.0, 10.0, 2.0, 20.0, 3.0, 30.0])  # rows of (b, a)
    table = fe.resolve_bindings(Bindings(("b", "a"), (3,), values), ("a", "b"), PFIELD)
    assert table.shape == (3, 2)
    assert table.tolist() == [[10.0, 1.0], [20.0, 2.0], [30.0, 3.0]]


def test_empty_parameter_names_mean_circuit_order() -> None:
    table = fe.resolve_bindings(
        Bindings((), (2, 1), np.array([1.0, 2.0, 3.0, 4.0])), ("a", "b"), PFIELD
    )
    assert table.shape == (2, 1, 2)
    assert table.reshape(-1).tolist() == [1.0, 2.0, 3.0, 4.0]


def test_no_parameters_and_no_values() -> None:
    assert fe.resolve_bindings(Bindings(), (), PFIELD).shape == (0,)
    assert fe.resolve_bindings(Bindings((), (3,)), (), PFIELD).shape == (3, 0)


@pytest.mark.parametrize(
    ("bindings", "reason"),
    [
        (Bindings(("a", "zz"), (), np.array([1.0, 2.0])), "UNKNOWN_PARAMETERS"),
        (Bindings(("a",), (), np.array([1.0])), "UNBOUND_PARAMETERS"),
        (Bindings(), "UNBOUND_PARAMETERS"),
        (Bindings(("a", "b"), (2,), np.array([1.0, 2.0, 3.0])), "INVALID_PARAMETER_VALUES"),
        (Bindings(("a", "b"), (), np.array([1.0, math.nan])), "INVALID_PARAMETER_VALUES"),
        (Bindings(("a", "b"), (), np.array([math.inf, 0.0])), "INVALID_PARAMETER_VALUES"),
        (Bindings(("a", "a"), (), np.array([1.0, 2.0])), "INVALID_PARAMETER_VALUES"),
        (Bindings(("a", "b"), (0,), np.zeros(0)), "INVALID_SHAPE"),
    ],
)
def test_bad_bindings(bindings: Bindings, reason: str) -> None:
    with pytest.raises(InvalidArgument) as info:
        fe.resolve_bindings(bindings, ("a", "b"), PFIELD)
    assert info.value.reason == reason
    assert info.value.field_violations[0].field == PFIELD


def test_circuit_parameters_come_in_qiskit_order() -> None:
    # Qiskit sorts plain names as strings (only vector elements sort numerically).
    text = H3 + "input float b; input float a10; input float a2;\nqubit[1] q;\n"
    text += "rx(b) q[0]; ry(a10) q[0]; rz(a2) q[0];"
    circuit = fe.parse_circuit(q3(text), LIMITS, FIELD)
    assert tuple(p.name for p in circuit.parameters) == ("a10", "a2", "b")


# --------------------------------------------------------------------------- observables

OFIELD = "spec.pubs[0].estimator.observables"


def obs(*terms: tuple[str, float]) -> Observable:
    return Observable(terms)


def test_observables_shape_is_the_arrays() -> None:
    # The API edge resolves an empty observables_shape (one dimension, or () for a
    # single_observable); here () is a single observable, as Qiskit reads one.
    assert fe.validate_observables([obs(("ZZ", 1.0)), obs(("XI", 0.5))], (2,), 2, OFIELD) == (2,)
    assert fe.validate_observables([obs(("Z", 1.0))] * 6, (2, 3), 1, OFIELD) == (2, 3)
    assert fe.validate_observables([obs(("ZZ", 1.0))], (), 2, OFIELD) == ()
    with pytest.raises(InvalidArgument):
        fe.validate_observables([obs(("ZZ", 1.0)), obs(("XI", 0.5))], (), 2, OFIELD)
    # Near the bound, each observable on its own: accepted.
    big = [obs(("ZZ", 8e307), ("XX", 8e307)), obs(("ZZ", 1.7e308))]
    assert fe.validate_observables(big, (2,), 2, OFIELD) == (2,)


@pytest.mark.parametrize(
    ("observables", "shape"),
    [
        ([obs(("ZZZ", 1.0))], ()),  # wrong length
        ([obs(("Z", 1.0))], ()),
        ([obs(("ZA", 1.0))], ()),  # not a Pauli
        ([obs(("zz", 1.0))], ()),
        ([obs(("ZZ", math.nan))], ()),
        ([obs(("ZZ", math.inf))], ()),
        # Each finite, their magnitudes' sum is not: every simulator's value overflowed.
        ([obs(("ZZ", 1e308), ("XX", -1e308))], ()),
        ([obs()], ()),  # no terms
        ([], ()),  # no observables
        ([obs(("ZZ", 1.0))] * 3, (2, 2)),  # shape does not hold them
    ],
)
def test_bad_observables(observables: list[Observable], shape: tuple[int, ...]) -> None:
    with pytest.raises(InvalidArgument) as info:
        fe.validate_observables(observables, shape, 2, OFIELD)
    assert info.value.reason == "INVALID_OBSERVABLE"
    assert info.value.field_violations[0].field == OFIELD


def test_pub_shape_broadcasting() -> None:
    assert fe.broadcast_pub_shape((3,), (2, 1), "f") == (2, 3)
    assert fe.broadcast_pub_shape((1,), (), "f") == (1,)
    with pytest.raises(InvalidArgument) as info:
        fe.broadcast_pub_shape((2,), (3,), "f")
    assert info.value.reason == "INVALID_SHAPE"
    assert info.value.metadata == {"observablesShape": "(2,)", "parameterShape": "(3,)"}


# -------------------------------------------------------------- shots, precision, results


def test_result_size() -> None:
    # 2 bindings x 100 shots x (1 + 2) bytes of samples; counts of at most 2 and 100 distinct
    # outcomes per binding, each a 1- or 2-byte row and a 1-byte count, 18 bytes of framing.
    framing = 2 * 32
    samples = 2 * 100 * 3
    counts = 2 * (18 + 2 * (1 + 1)) + 2 * (18 + 100 * (2 + 1))
    both, only_samples, only_counts = (
        fe.sampler_result_bytes([1, 9], 2, 100, output)
        for output in (
            SamplerOutput.SAMPLES_AND_COUNTS,
            SamplerOutput.SAMPLES,
            SamplerOutput.COUNTS,
        )
    )
    assert (both, only_samples, only_counts) == (
        framing + samples + counts,
        framing + samples,
        framing + counts,
    )
    # Wide registers: counts are bounded by the shots, and cost more than the samples.
    wide = fe.sampler_result_bytes([22], 1, 400_000, SamplerOutput.COUNTS)
    assert wide == 32 + 18 + 400_000 * (3 + 3)
    assert wide > fe.sampler_result_bytes([22], 1, 400_000, SamplerOutput.SAMPLES)
    # A client's width or shots never overflow anything.
    huge = fe.sampler_result_bytes([10**6], 1, 2**62, SamplerOutput.COUNTS)
    assert huge == 32 + 18 + 2**62 * (125_000 + 9)
    with pytest.raises(InvalidArgument) as info:
        fe.check_result_size(1001, 1000, "spec.pubs[0]")
    assert info.value.reason == "RESULT_LIMIT_EXCEEDED"
    assert info.value.metadata == {"estimateBytes": "1001", "maxResultBytes": "1000"}


# ---------------------------------------------------------------------------------- memory


def ghz(n: int) -> QuantumCircuit:
    circuit = QuantumCircuit(n, n)
    circuit.h(0)
    for i in range(n - 1):
        circuit.cx(i, i + 1)
    circuit.measure(range(n), range(n))
    return circuit


def test_dense_memory() -> None:
    assert fe.statevector_bytes(20) == 16 * 2**20
    assert fe.density_matrix_bytes(10) == 16 * 4**10


def test_mps_bound_of_a_ghz_chain_is_small() -> None:
    assert fe.mps_bond_dimensions(ghz(50)) == (2,) * 49
    assert fe.mps_bytes(ghz(50)) < 4 * 2**20


def test_mps_bound_follows_entanglement_across_each_cut() -> None:
    circuit = QuantumCircuit(6)
    circuit.cx(0, 5)  # crosses every cut: rank 2
    circuit.swap(2, 3)  # rank 4 across the middle cut only
    circuit.rzz(0.3, 1, 2)  # rank 2 across cut 1
    assert fe.mps_bond_dimensions(circuit) == (2, 4, 8, 2, 2)


def test_mps_bound_is_capped_by_the_structure_and_the_option() -> None:
    circuit = QuantumCircuit(8)
    for _ in range(10):
        for i in range(7):
            circuit.cx(i, i + 1)
    assert fe.mps_bond_dimensions(circuit) == (2, 4, 8, 16, 8, 4, 2)
    assert fe.mps_bond_dimensions(circuit, max_bond_dimension=4) == (2, 4, 4, 4, 4, 4, 2)


def test_mps_bound_of_loops() -> None:
    body = H3 + "qubit[4] q; bit[1] c;\n"
    looped = fe.parse_circuit(q3(body + "for int i in [0:1] { cx q[1], q[2]; }"), LIMITS, FIELD)
    assert fe.mps_bond_dimensions(looped) == (1, 4, 1)
    unbounded = fe.parse_circuit(
        q3(body + "while (c[0] == false) { cx q[1], q[2]; c[0] = measure q[0]; }"), LIMITS, FIELD
    )
    assert fe.mps_bond_dimensions(unbounded) == (1, 4, 1)


def test_memory_budget() -> None:
    fe.check_memory(16 * 2**20, 16 * 2**20, "statevector", "f")
    with pytest.raises(InvalidArgument) as info:
        fe.check_memory(16 * 2**20, 8 * 2**20, "statevector", "f")
    error = info.value
    assert error.reason == "MEMORY_BUDGET_EXCEEDED"
    assert error.metadata == {
        "estimateBytes": str(16 * 2**20),
        "budgetBytes": str(8 * 2**20),
        "method": "statevector",
    }


def test_conditions_a_register_cannot_meet_are_settled_false_in_every_block() -> None:
    """`r == 4`, `r == 5` and `r == 7` on a two-bit r (values 0-3) never hold; `r == 3` and
    `r == 1` may. Nested in a for loop's body and an if's branch too."""
    text = (
        H3 + "qubit[2] q; bit[2] r;\nr = measure q;\n"
        "if (r == 3) { x q[0]; }\n"
        "if (r == 4) { x q[0]; } else { x q[1]; }\n"
        "for int i in [0:1] { while (r == 5) { x q[0]; } }\n"
        "if (r == 1) { if (r == 7) { x q[1]; } }\n"
    )
    circuit = fe.settle_unreachable_conditions(fe.parse_circuit(q3(text), LIMITS, FIELD), FIELD)

    def conditions(block: QuantumCircuit) -> list[object]:
        found: list[object] = []
        for instruction in block.data:
            op = instruction.operation
            if op.name in ("if_else", "while_loop"):
                condition = op.condition
                found.append(condition[1] if isinstance(condition, tuple) else condition)
            for inner in getattr(op, "blocks", ()):
                found += conditions(inner)
        return found

    never = expr.lift(False)
    assert conditions(circuit) == [3, never, never, 1, never]
    # The branch not taken is kept: an if/else still runs its else.
    (unreachable,) = [i.operation for i in circuit.data if i.operation.name == "if_else"][1:2]
    assert unreachable.blocks[1].count_ops() == {"x": 1}


def test_a_bit_compared_with_a_value_past_one_is_settled_false() -> None:
    # Only QPY carries such a condition. Aer never took it; the Braket writer read it as bool.
    circuit = QuantumCircuit(2, 1)
    with circuit.if_test((circuit.clbits[0], 2)):
        circuit.x(0)
    with circuit.if_test((circuit.clbits[0], True)):
        circuit.x(1)
    settled = fe.settle_unreachable_conditions(circuit, FIELD)
    assert [i.operation.condition for i in settled.data] == [
        expr.lift(False),
        (circuit.clbits[0], True),
    ]


@pytest.mark.parametrize(
    "angle", [2.0**20 + 0.5, -3e15, 1e17, 123456789012.345, -3e200, 1.7976931348623157e308]
)
def test_a_huge_angle_is_reduced_by_whole_turns_of_4_pi(angle: float) -> None:
    circuit = QuantumCircuit(1)
    circuit.rx(angle, 0)
    (instruction,) = fe.settle_angles(circuit, FIELD).data
    (reduced,) = instruction.operation.params
    assert -2 * math.pi <= reduced <= 2 * math.pi
    # math.cos and math.sin reduce their argument exactly: the same half angle, to rounding.
    assert math.cos(reduced / 2) == pytest.approx(math.cos(angle / 2), abs=1e-15)
    assert math.sin(reduced / 2) == pytest.approx(math.sin(angle / 2), abs=1e-15)


def test_huge_angles_are_reduced_at_every_depth_and_others_left_alone() -> None:
    from qiskit import transpile
    from qiskit.quantum_info import Operator, Statevector

    ordinary = QuantumCircuit(1)
    ordinary.rx(2.0**20, 0)
    ordinary.rz(-7.5, 0)
    ordinary.delay(2_000_000, 0)  # a duration, whatever its size
    assert fe.settle_angles(ordinary, FIELD) is ordinary

    inner = QuantumCircuit(1)
    inner.ry(3e200, 0)
    big = inner.to_gate()
    big.name = "big"
    circuit = QuantumCircuit(2, 1)
    circuit.rx(1e17, 0)
    circuit.append(big, [1])
    circuit.append(big.control(1, ctrl_state=0), [0, 1])  # open control: "cbig_o0"
    circuit.cu(1e17, -1e16, 5e15, 2e18, 0, 1)  # the phase a control reveals, too
    reduced = fe.settle_angles(circuit, FIELD)

    def angles(body: QuantumCircuit) -> list[float]:
        found: list[float] = []
        for instruction in body.data:
            op = instruction.operation
            found += [float(p) for p in op.params]
            if op.definition is not None and op.name not in fe.STANDARD_GATE_NAMES:
                found += angles(op.definition)
        return found

    assert all(abs(a) <= 2 * math.pi for a in angles(reduced))
    assert np.allclose(Operator(reduced).data, Operator(circuit).data, atol=1e-12)  # with phase
    # Inside control flow too.
    flow = QuantumCircuit(1, 1)
    flow.measure(0, 0)
    with flow.if_test((flow.clbits[0], True)):
        flow.rx(1e17, 0)
    (if_else,) = [i.operation for i in fe.settle_angles(flow, FIELD).data[1:]]
    assert abs(if_else.blocks[0].data[0].operation.params[0]) <= 2 * math.pi
    # Why: on an sx/rz basis rx(t) becomes rz(t + pi) between two sx, and pi vanishes next to
    # 1e17; reduced first, the transpiled circuit keeps cos(1e17) (the unreduced one reads +0.886).
    single = QuantumCircuit(1)
    single.rx(1e17, 0)
    basis = ["rz", "sx", "x"]
    for candidate, want in ((fe.settle_angles(single, FIELD), math.cos(1e17)), (single, None)):
        state = Statevector(transpile(candidate, basis_gates=basis, optimization_level=0))
        z = float(state.probabilities()[0] - state.probabilities()[1])
        if want is not None:
            assert z == pytest.approx(want, abs=1e-9)
        else:
            assert z == pytest.approx(-math.cos(1e17), abs=1e-9)  # the SDK's loss, unreduced


def test_controlled_user_gates_named_like_standard_ones_are_controlled_from_their_definition() -> (
    None
):
    from qiskit import transpile
    from qiskit.quantum_info import Statevector

    text = (
        "OPENQASM 3.0;\ngate h a { U(pi, 0, pi) a; }\nqubit[3] q;\n"
        "negctrl @ h q[0], q[1]; ctrl @ h q[1], q[2]; negctrl(2) @ h q[0], q[2], q[1];"
    )
    circuit = fe.rename_shadowing_gates(fe.parse_circuit(q3(text), LIMITS, FIELD), set(), FIELD)
    assert [i.operation.name for i in circuit.data] == ["ch_def_o0", "ch_def", "cch_def_o0"]
    state = Statevector(transpile(circuit, basis_gates=["u", "cx"], optimization_level=0))
    # |000> -> q1 flips (q0 open) -> q2 flips (q1 set) -> q0 = 0 but q2 = 1: no third flip.
    assert state.probabilities_dict()["110"] == pytest.approx(1.0)


def test_a_power_of_a_controlled_user_gate_named_like_a_standard_one_uses_its_definition() -> None:
    from qiskit.quantum_info import Operator

    # The reader folds `pow` over `ctrl @ h` into a matrix, built from a CH when the user gate
    # `h` (an X here) is controlled by its name: sqrt(CH) instead of sqrt(CX).
    text = "OPENQASM 3.0;\ngate h a { U(pi, 0, pi) a; }\nqubit[2] q;\n"
    text += "pow(0.5) @ ctrl @ h q[0], q[1];"
    circuit = fe.parse_circuit(q3(text), LIMITS, FIELD)
    sqrt_x = np.array([[1 + 1j, 1 - 1j], [1 - 1j, 1 + 1j]]) / 2
    want = np.eye(4, dtype=complex)
    want[np.ix_([1, 3], [1, 3])] = sqrt_x  # q0 (the control) is the low bit
    assert np.allclose(Operator(circuit).data, want, atol=1e-9)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("gate h a { U(pi, 0, pi) a; } gate h a { U(0, 0, 0) a; }", "'h' is already defined"),
        ('include "stdgates.inc"; gate h a { U(pi, 0, pi) a; }', "'h' is already defined"),
        ("qubit q; h q; gate h a { U(pi, 0, pi) a; }", "gate 'h' is not defined"),
        ("gate h a { U(pi, 0, pi) a; } gate g(h) a { h a; }", "'h' is a 'angle', not a gate"),
    ],
)
def test_programs_the_reader_refuses_stay_refused_under_the_names_they_wrote(
    text: str, message: str
) -> None:
    # Standard-named gates are renamed before the reader runs; its refusals must not change.
    with pytest.raises(InvalidArgument) as info:
        fe.parse_circuit(q3("OPENQASM 3.0;\n" + text + "\nqubit[1] r;"), LIMITS, FIELD)
    assert message in str(info.value), info.value


def test_user_gates_named_like_synthesis_plugins_are_renamed_library_gates_kept() -> None:
    from qiskit.circuit.library import QFTGate

    # The transpiler picks a synthesis plugin by name: the comparator's failed on a user gate.
    text = "OPENQASM 3.0;\ngate IntComp a { U(pi, 0, pi) a; }\ngate qft a { U(0, 0, pi) a; }\n"
    text += "qubit[2] q;\nIntComp q[0]; qft q[1];"
    circuit = fe.rename_shadowing_gates(fe.parse_circuit(q3(text), LIMITS, FIELD), set(), FIELD)
    assert [i.operation.name for i in circuit.data] == ["IntComp_def", "qft_def"]
    # A library gate is the plugin's to synthesise: kept under its name.
    library = QuantumCircuit(2)
    library.append(QFTGate(2), [0, 1])
    kept = fe.rename_shadowing_gates(library, set(), FIELD)
    assert [i.operation.name for i in kept.data] == ["qft"]


CONSTANT_EXPRESSIONS = ("p(0*th) q[0];", "rz(th - th) q[0];", "rx(0*th + 1e17) q[0];")


@pytest.mark.parametrize("gate", CONSTANT_EXPRESSIONS)
def test_a_constant_expression_of_a_parameter_becomes_its_number(gate: str) -> None:
    # Qiskit keeps `0*th` as an expression of `th` with no symbol left; its level-3
    # transpiler failed on it (a TypeError copying the circuit), which answered INTERNAL.
    text = f"input float[64] th; qubit[1] q; {gate} gate g(a) r {{ p(0*a) r; }} g(th) q[0];"
    circuit = fe.parse_circuit(q3(H3 + text), LIMITS, FIELD)
    settled = fe.settle_angles(circuit, FIELD)
    first, defined = (i.operation for i in settled.data)
    (angle,) = first.params
    assert isinstance(angle, float) and abs(angle) <= 2 * math.pi  # folded, then reduced
    (inner,) = defined.definition.data
    assert inner.operation.params == [0.0]
    # The client still binds `th`: the circuit declares it, and binding it changes nothing.
    assert [p.name for p in settled.parameters] == ["th"]
    from qiskit.quantum_info import Operator

    for value in (0.3, -2.0):
        bound = settled.assign_parameters({settled.parameters[0]: value})
        want = circuit.assign_parameters({circuit.parameters[0]: value})
        assert np.allclose(Operator(bound).data, Operator(want).data, atol=1e-9)


def test_a_constant_phase_of_a_parameter_becomes_its_number_and_the_parameter_stays() -> None:
    # Qiskit cannot hash `0*a - 1` (OverflowError: negative), which Aer does to the phase.
    from qiskit.circuit import Parameter

    a = Parameter("a")
    inner = QuantumCircuit(1, global_phase=0 * a - 1)
    inner.rx(a, 0)
    circuit = QuantumCircuit(1, global_phase=a - a - 1)
    circuit.append(inner.to_gate(), [0])
    settled = fe.settle_angles(circuit, FIELD)
    # A number now (Qiskit keeps a numeric phase in [0, 2pi)).
    assert settled.data[0].operation.definition.global_phase == pytest.approx(2 * math.pi - 1)
    assert [p.name for p in settled.parameters] == ["a"]
    hash(settled.global_phase)
    assert float(settled.global_phase) == pytest.approx(2 * math.pi - 1.0)  # whole turns added
    from qiskit.quantum_info import Operator

    bound = settled.assign_parameters({settled.parameters[0]: 0.4})
    want = circuit.assign_parameters({circuit.parameters[0]: 0.4})
    assert np.allclose(Operator(bound).data, Operator(want).data, atol=1e-9)  # with phase


def test_an_expression_with_a_parameter_left_in_it_is_not_folded() -> None:
    # `th + 1 - th` is 1, but Qiskit keeps `th` in it: bound per run, like `2*th`.
    text = "input float[64] th; qubit[1] q; rz(th + 1 - th) q[0]; rz(2*th) q[0];"
    circuit = fe.parse_circuit(q3(H3 + text), LIMITS, FIELD)
    assert fe.settle_angles(circuit, FIELD) is circuit


def test_a_gate_with_open_controls_keeps_them_when_its_definition_is_rewritten() -> None:
    # Qiskit conjugates an open-controlled gate's stored definition with X on every read.
    inner = QuantumCircuit(1)
    inner.rx(1e17, 0)
    big = inner.to_gate()
    big.name = "big"
    circuit = QuantumCircuit(2)
    circuit.append(big.control(1, ctrl_state=0), [0, 1])
    reduced = fe.settle_angles(circuit, FIELD)
    from qiskit.quantum_info import Statevector

    # q0 = 0 opens the control: rx(1e17) on q1, P(1) = sin^2(5e16).
    probabilities = Statevector(reduced).probabilities_dict()
    assert probabilities["10"] == pytest.approx(math.sin(5e16) ** 2, abs=1e-12)


def test_an_open_controlled_standard_gate_has_its_huge_angle_reduced() -> None:
    # `negctrl @ ry(t)` is a CRYGate named "cry_o0": not found by name among the standard gates.
    text = "qubit[3] q; negctrl @ ry(1e17) q[0], q[1]; ctrl(2) @ rx(1e17) q[0], q[1], q[2];"
    circuit = fe.parse_circuit(q3(H3 + text), LIMITS, FIELD)
    reduced = fe.settle_angles(circuit, FIELD)
    for instruction in reduced.data:
        op = instruction.operation
        assert all(abs(float(p)) <= 2 * math.pi for p in op.params), op.name
        assert all(abs(float(p)) <= 2 * math.pi for p in op.base_gate.params), op.name
    from qiskit.quantum_info import Operator

    assert np.allclose(Operator(reduced).data, Operator(circuit).data, atol=1e-12)


def test_reducing_nested_definitions_does_not_copy_them_per_level() -> None:
    # Each level's two calls are distinct objects (the memo by id never hits): a deep copy per
    # rewritten gate copied its whole subtree, n log n deep copies of a 2^n-leaf tree.
    from unittest import mock

    text = "gate g0 a { rx(1e17) a; }\n"
    for i in range(1, 8):
        text += f"gate g{i} a {{ g{i - 1} a; g{i - 1} a; }}\n"
    circuit = fe.parse_circuit(q3(H3 + text + "qubit[1] q; g7 q[0];"), LIMITS, FIELD)
    deep = QuantumCircuit.__deepcopy__
    calls = []

    def counted(self: QuantumCircuit, memo: object = None) -> QuantumCircuit:
        calls.append(1)
        return deep(self, memo)

    with mock.patch.object(QuantumCircuit, "__deepcopy__", counted):
        reduced = fe.settle_angles(circuit, FIELD)
    assert len(calls) <= 8, len(calls)  # a deep copy per rewritten gate copied its whole subtree
    op = reduced.data[0].operation
    for _ in range(7):
        op = op.definition.data[0].operation
    assert abs(op.definition.data[0].operation.params[0]) <= 2 * math.pi


def test_blocks_nested_past_the_recursion_limit_are_too_complex_to_settle() -> None:
    # Not a bare RecursionError: that would be the compile worker's INTERNAL, not the circuit's.
    circuit = QuantumCircuit(1, 1)
    body = circuit
    for _ in range(sys.getrecursionlimit()):
        inner = QuantumCircuit(circuit.qubits, circuit.clbits)
        body.if_else((circuit.clbits[0], True), inner, None, circuit.qubits, circuit.clbits)
        body = inner
    with pytest.raises(InvalidArgument) as info:
        fe.settle_unreachable_conditions(circuit, FIELD)
    assert info.value.reason == "CIRCUIT_TOO_COMPLEX"
