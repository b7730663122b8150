"""Hostile review of the operator-facing parts: the configuration file and `qgateway serve`'s
start on a data directory. A damaged database or page-token key crashed the start with a
traceback (exit 1, not the one-line exit 2), a config file not in UTF-8 did too, an empty
data_dir meant the process's working directory, and some durations and sizes lacked the
upper bounds README promises (an exporter interval past threading's limit killed its thread)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from gateway.config import ConfigError, load_config

REPO = Path(__file__).resolve().parents[2]

# A gateway that starts in about a second: no backends, one compile worker, any free port.
_SMALL = """
[server]
listen = "127.0.0.1:0"
grace_period_s = 0

[compiler]
workers = 1

[backends]
"""


def _serve(tmp_path: Path) -> subprocess.CompletedProcess[str]:
    """`qgateway serve` on tmp_path/data; the process must give up by itself (it never
    becomes ready on the broken directories below, or it would outlive the timeout)."""
    config = tmp_path / "g.toml"
    config.write_text('data_dir = "data"\n' + _SMALL)
    return subprocess.run(
        [sys.executable, "-m", "gateway", "serve", "--config", str(config)],
        cwd=REPO,
        env=dict(os.environ),
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=15,
    )


def _assert_one_line_exit_2(done: subprocess.CompletedProcess[str]) -> None:
    assert "Traceback" not in done.stderr, done.stderr[-2000:]
    assert done.returncode == 2, (done.returncode, done.stderr[-2000:])
    assert done.stderr.strip().splitlines()[-1].startswith("error: ")


def test_a_damaged_database_is_refused_in_one_line_exit_2(tmp_path: Path) -> None:
    data = tmp_path / "data"
    data.mkdir(mode=0o700)
    (data / "qgateway.db").write_bytes(b"this is not an SQLite database\n" * 100)
    _assert_one_line_exit_2(_serve(tmp_path))


def test_a_damaged_page_token_key_is_refused_in_one_line_exit_2(tmp_path: Path) -> None:
    data = tmp_path / "data"
    data.mkdir(mode=0o700)
    (data / "page-token.key").write_bytes(b"short")
    _assert_one_line_exit_2(_serve(tmp_path))


def test_an_empty_data_dir_is_refused_or_taken_from_the_files_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    config = tmp_path / "conf" / "g.toml"
    config.parent.mkdir()
    config.write_text('data_dir = ""\n')
    elsewhere = tmp_path / "cwd"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    try:
        loaded = load_config(config)
    except ConfigError:
        return
    assert loaded.data_dir.resolve() == config.parent.resolve()


# README: "values that could only fail later [are errors]: ... durations past 100 years (36 500
# days) ... memory settings past 2^40 MiB". These settings have no upper bound. A tracing or
# OTLP metrics interval past threading.TIMEOUT_MAX (~292 years) is accepted and kills the
# exporter's thread at its first wait (OverflowError): spans and metrics are then silently
# never exported.
@pytest.mark.parametrize(
    "toml",
    [
        "[telemetry.tracing]\nenabled = true\nexport_interval_s = 1e10\n",
        '[telemetry.metrics]\notlp_endpoint = "http://127.0.0.1:4317"\notlp_interval_s = 1e10\n',
        "[telemetry.metrics]\nsample_interval_s = 1e10\n",
        '[auth.jwt]\nissuer = "i"\naudience = "a"\njwks_file = "k.json"\njwks_refresh_s = 1e10\n',
        "[server]\nmax_streamed_result_mb = 1e300\n",
        "[server]\nmax_streamed_result_mb_per_tenant = 1e300\n",
    ],
    ids=[
        "tracing.export_interval_s",
        "metrics.otlp_interval_s",
        "metrics.sample_interval_s",
        "jwt.jwks_refresh_s",
        "max_streamed_result_mb",
        "max_streamed_result_mb_per_tenant",
    ],
)
def test_durations_and_memory_past_the_documented_bounds_are_refused(
    tmp_path: Path, toml: str
) -> None:
    config = tmp_path / "g.toml"
    config.write_text(toml)
    with pytest.raises(ConfigError):
        load_config(config)


def test_a_config_file_that_is_not_utf8_is_a_config_error_naming_the_file(tmp_path: Path) -> None:
    config = tmp_path / "g.toml"
    config.write_bytes('[tenants.acme]\ndisplay_name = "M\u00fcller"\n'.encode("latin-1"))
    with pytest.raises(ConfigError, match=r"g\.toml"):
        load_config(config)
