"""A new user's walk through README.md against a real gateway (session 30).

Finding: the README's Errors table gives `INVALID_QASM` a BadRequest with the line and column,
but an OpenQASM 3 constant expression that divides by zero (`rx(1.0/0)`, `rx(pi/0)`) was
refused with Python's own words, "float division by zero", naming no position (OpenQASM 2
named one: "line 4, column 4: cannot divide by zero"); so was a `**` that overflows a float
(`rx(2**2000)`: "a number is too large"). Both are refused at the expression now.

The table also put every infinite angle under `NON_FINITE_ANGLE`, while a function of a
constant outside its domain or overflowing (`exp(1000)`, `log(0)`, `sqrt(-1)`) is, and was,
`INVALID_QASM` at its line and column: the README says so now (pinned below).

Finding: the README's IBM cloud block (`backend = "ibm_brisbane"`, the token from
QISKIT_IBM_TOKEN) started with the variable unset made `qgateway serve` exit 1 with "is not a
fake backend; a device needs credentials and the cloud runner", a ValueError escaping the
configuration checks that exit 2 (so did a fake class qiskit-ibm-runtime lacks); it is a
configuration error now, naming the backend and where a token goes. Pydantic errors of a whole
options table read "backends.x.options.: ..." (a dot and no field); now "backends.x.options:".

README-only fixes of the same walk (the code was right): `validate`/`run_pubs` take a bare
`QuantumCircuit`, not OpenQASM text (that goes in a tuple); a JWT needs `sub` (and `exp`, `iss`,
`aud`) besides the tenant claim, and with `roles` only its keys grant a role.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from gateway.backends.base import CircuitLimits
from gateway.backends.ibm.options import TOKEN_ENV
from gateway.backends.qiskit.frontend import parse_circuit
from gateway.config import ConfigError, load_config
from gateway.domain.circuits import CircuitLanguage, CircuitSource
from gateway.domain.errors import InvalidArgument
from gateway.server import build_backends
from gateway.store.sqlite import SqliteStore

pytestmark = pytest.mark.timeout(60)

_STD = 'OPENQASM 3.0;\ninclude "stdgates.inc";\nqubit[1] q;\nbit[1] c;\n'


def _refused(angle: str) -> InvalidArgument:
    text = f"{_STD}rx({angle}) q[0];\nc = measure q;\n"
    with pytest.raises(InvalidArgument) as info:
        parse_circuit(CircuitSource(CircuitLanguage.QASM3, text), CircuitLimits(), "f")
    return info.value


def _refused_param(angle: str) -> InvalidArgument:
    text = f"{_STD}input float th;\nrx({angle}) q[0];\nc = measure q;\n"
    with pytest.raises(InvalidArgument) as info:
        parse_circuit(CircuitSource(CircuitLanguage.QASM3, text), CircuitLimits(), "f")
    return info.value


@pytest.mark.parametrize("angle", ["1/0", "1.0/0.0", "0.0/0.0", "pi/0", "1.0/(2-2)"])
def test_a_constant_division_by_zero_is_invalid_qasm_at_its_line(angle: str) -> None:
    err = _refused(angle)
    assert err.reason == "INVALID_QASM"
    assert "line 5, column" in err.message, err.message
    assert "division by zero" in err.message
    assert "float division" not in err.message and "modulo" not in err.message


@pytest.mark.parametrize("angle", ["2**2000", "0.0**-1"])
def test_a_power_without_a_finite_value_is_invalid_qasm_at_its_line(angle: str) -> None:
    err = _refused(angle)
    assert err.reason == "INVALID_QASM"
    assert "line 5, column" in err.message, err.message
    assert "'**' gives no finite real number" in err.message


@pytest.mark.parametrize(
    ("angle", "words"),
    [
        ("exp(1000)", "'exp' of 1000 is not a finite real number"),
        ("log(0)", "'log' of 0 is not a finite real number"),
        ("sqrt(-1)", "'sqrt' of -1 is not a finite real number"),
    ],
)
def test_a_function_of_a_constant_without_a_finite_value_is_invalid_qasm(
    angle: str, words: str
) -> None:
    # As the README's INVALID_QASM row now says; NON_FINITE_ANGLE is for a number that is.
    err = _refused(angle)
    assert err.reason == "INVALID_QASM"
    assert "line 5, column" in err.message and words in err.message, err.message


@pytest.mark.parametrize("angle", ["1e400", "1e308*10", "inf"])
def test_an_infinite_number_is_non_finite_angle(angle: str) -> None:
    assert _refused(angle).reason == "NON_FINITE_ANGLE"


def test_a_division_of_a_parameter_by_zero_names_its_line() -> None:
    err = _refused_param("th/0")
    assert err.reason == "INVALID_QASM"
    assert "line 6, column" in err.message and "division by zero" in err.message, err.message


# ------------------------------------------------------------ configuration errors exit 2


def _build(tmp_path: Path, backend: str) -> None:
    path = tmp_path / "gateway.toml"
    path.write_text(f'data_dir = "{tmp_path / "data"}"\n\n{backend}')
    config = load_config(path)
    # The store is not opened: the refusal comes before any backend would use it.
    build_backends(config, SqliteStore(tmp_path / "q.db"))


_IBM_DEVICE = """[backends.ibm-brisbane]
adapter = "ibm"

[backends.ibm-brisbane.options]
backend = "ibm_brisbane"
channel = "ibm_quantum_platform"
instance = "crn:v1:bluemix:public:quantum-computing:us-east:a/...::"
url = "https://cloud.ibm.com"
"""


def test_an_ibm_device_without_a_token_is_a_configuration_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # ConfigError is what `qgateway serve` answers with exit 2 (serve_forever).
    monkeypatch.delenv(TOKEN_ENV, raising=False)
    with pytest.raises(ConfigError) as info:
        _build(tmp_path, _IBM_DEVICE)
    message = str(info.value)
    assert message.startswith("backends.ibm-brisbane.options: 'ibm_brisbane'"), message
    assert "QISKIT_IBM_TOKEN" in message and "token" in message


def test_an_unknown_ibm_fake_class_is_a_configuration_error(tmp_path: Path) -> None:
    block = '[backends.ibm-x]\nadapter = "ibm"\noptions = { backend = "FakeNoSuchDevice" }\n'
    with pytest.raises(ConfigError, match=r"backends\.ibm-x\.options: .*FakeNoSuchDevice"):
        _build(tmp_path, block)


def test_an_options_table_refused_as_a_whole_names_no_empty_field(tmp_path: Path) -> None:
    block = (
        '[backends.x]\nadapter = "aer"\n'
        'options = { method = "statevector", noise_from = "FakeManilaV2" }\n'
    )
    with pytest.raises(ConfigError) as info:
        _build(tmp_path, block)
    assert "backends.x.options: " in str(info.value), str(info.value)
    assert "options.:" not in str(info.value)
