from __future__ import annotations

from pathlib import Path

import pytest

from gateway.config import ConfigError, load_config


def test_embedded_default_needs_no_file(monkeypatch: pytest.MonkeyPatch) -> None:
    for var in [v for v in __import__("os").environ if v.startswith("QGATEWAY_")]:
        monkeypatch.delenv(var)
    config = load_config(None)
    assert config.server.listen == "127.0.0.1:50051"
    assert set(config.backends) == {"aer", "aer-mps"}
    assert config.backends["aer-mps"].options["method"] == "matrix_product_state"
    assert config.data_dir == Path("data")


def test_file_then_environment_override(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "g.toml"
    path.write_text(
        'data_dir = "/srv/q"\n[server]\nlisten = "127.0.0.1:7000"\n'
        '[backends.sim]\nadapter = "aer"\nmax_shots = 10\n'
    )
    monkeypatch.setenv("QGATEWAY_SERVER__LISTEN", "127.0.0.1:7001")
    config = load_config(path)
    assert config.server.listen == "127.0.0.1:7001"
    assert config.data_dir == Path("/srv/q")
    assert config.backends["sim"].max_shots == 10
    assert set(config.backends) == {"sim"}


@pytest.mark.parametrize(
    ("toml", "needle"),
    [
        ('[server]\nlistn = "x"\n', "server.listn"),
        ('[backends.a]\nadapter = "aer"\nmax_shotz = 1\n', "backends.a.max_shotz"),
        ("[backends.a]\nmax_shots = 1\n", "backends.a.adapter"),
        ('[backends.a]\nadapter = "aer"\nmax_shots = 0\n', "backends.a.max_shots"),
        ('[backends."a/b"]\nadapter = "aer"\n', "backends"),
        ("data_dir = [\n", "not valid TOML"),
    ],
)
def test_typos_and_bad_values_name_the_key(tmp_path: Path, toml: str, needle: str) -> None:
    path = tmp_path / "g.toml"
    path.write_text(toml)
    with pytest.raises(ConfigError, match=needle.replace(".", r"\.")):
        load_config(path)


def test_unknown_environment_variable_is_an_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("QGATEWAY_SERVR__LISTEN", "x")
    with pytest.raises(ConfigError, match="QGATEWAY_SERVR__LISTEN"):
        load_config(None)


def test_missing_file_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read config file"):
        load_config(tmp_path / "absent.toml")
