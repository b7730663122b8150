"""The README as a new production user reads it, held to the code in process.

A review ran every README snippet, CLI command and configuration block against real gateways
and found them to hold, except one gap: the Python client raises a reason of its own,
`RESULT_DIGEST_MISMATCH` (a `DataLossError` after reassembling a streamed result), that the
README's "every reason" section never named (fixed in the README). These tests keep the
README and the code in step where nothing else does: reasons the client raises itself, the
configuration block shown as the defaults, and the `qgateway` commands and flags the README
names. (The error table against the server's reasons is tests/unit/test_error_model.py.)
"""

from __future__ import annotations

import argparse
import ast
import re
import shlex
import tomllib
from pathlib import Path
from typing import Any

import pytest
from pydantic import BaseModel

import gateway
from gateway import cli
from gateway.config import GatewayConfig
from gateway.domain.errors import REASONS

ROOT = Path(gateway.__file__).resolve().parent.parent
README = (ROOT / "README.md").read_text()
CLIENT = ROOT / "clients" / "python" / "qgateway"


# ------------------------------------------------------------- reasons the client raises itself


def client_reasons() -> dict[str, str]:
    """Reason -> where, for every `reason="..."` literal the Python client passes (its own
    errors; the server's arrive in ErrorInfo and are the error table's)."""
    found: dict[str, str] = {}
    for path in sorted(CLIENT.glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.keyword) and node.arg == "reason":
                value = node.value
                if isinstance(value, ast.Constant) and isinstance(value.value, str):
                    found[value.value] = f"{path.name}:{value.lineno}"
    return found


def test_the_client_reason_scan_sees_the_clients_own_errors() -> None:
    # If these stop being found, the scan is broken, not the client fixed.
    assert {"RESULT_EXPIRED", "RESULT_DIGEST_MISMATCH"} <= set(client_reasons())


def test_every_reason_the_python_client_raises_itself_is_documented() -> None:
    """A user catching the client's errors by reason must find each one in the README: the
    client raised RESULT_DIGEST_MISMATCH (DataLossError) that no section named."""
    missing = [
        f"{where}: {reason}"
        for reason, where in client_reasons().items()
        if reason not in REASONS and f"`{reason}`" not in README
    ]
    assert not missing, missing


# ------------------------------------------------------- the configuration shown as defaults


def _readme_default_block() -> dict[str, Any]:
    """The README's first TOML block: the embedded defaults a reader compares against
    ("No file is needed" above it)."""
    blocks = re.findall(r"```toml\n(.*?)```", README, re.S)
    return tomllib.loads(blocks[0])


def _differences(model: BaseModel, shown: dict[str, Any], path: str) -> list[str]:
    out = []
    for key, value in shown.items():
        where = f"{path}.{key}" if path else key
        assert key in type(model).model_fields, f"{where} is not a configuration key"
        actual = getattr(model, key)
        if isinstance(value, dict):
            assert isinstance(actual, BaseModel), where
            out += _differences(actual, value, where)
        elif isinstance(actual, Path):
            if actual != Path(value):
                out.append(f"{where}: README {value!r}, default {actual!r}")
        elif actual != value:
            out.append(f"{where}: README {value!r}, default {actual!r}")
    return out


def test_the_readme_configuration_block_shows_the_defaults() -> None:
    """Every value the README's configuration block shows for `data_dir`, `[server]`,
    `[compiler]`, `[circuits]` and the embedded `aer` backend is the default a gateway
    without a file runs with: a reader sizes a deployment from these numbers."""
    shown = _readme_default_block()
    defaults = GatewayConfig()
    problems = _differences(
        defaults,
        {k: v for k, v in shown.items() if k in ("data_dir", "server", "compiler", "circuits")},
        "",
    )
    aer = dict(shown["backends"]["aer"])
    # Adapter options and the price table are the adapter's and PriceConfig's own models;
    # an unset price is every price 0, as the block shows.
    aer.pop("options")
    assert set(aer.pop("price").values()) <= {0.0, "USD"}
    assert defaults.backends["aer"].price is None
    problems += _differences(defaults.backends["aer"], aer, "backends.aer")
    assert not problems, "\n".join(problems)


# ------------------------------------------------------------ qgateway commands and flags


def _readme_commands() -> list[list[str]]:
    """Every `qgateway ...` command line the README shows, in sh blocks and inline code,
    as argv after `qgateway` (comments and placeholders dropped)."""
    lines = []
    for block in re.findall(r"```sh\n(.*?)```", README, re.S):
        lines += [line.split("#")[0] for line in block.splitlines()]
    lines += re.findall(r"`((?:\.venv/bin/)?qgateway [a-z][^`]*)`", README)
    commands = []
    for line in lines:
        line = line.strip()
        match = re.match(r"(?:\.venv/bin/)?qgateway (.*)", line)
        if match is None or line.startswith("qgateway is"):
            continue
        argv = shlex.split(match.group(1).replace("...", "X").replace("<", "").replace(">", ""))
        if argv not in commands:
            commands.append(argv)
    return commands


def _subparsers(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return dict(action.choices)
    return {}


def _unknown(argv: list[str]) -> list[str]:
    """The commands and options of argv the parser does not define (positionals and values
    are not checked: inline mentions leave required ones out)."""
    parser = cli.build_parser()
    problems = []
    words = list(argv)
    while words:
        word = words.pop(0)
        if word.startswith("-"):
            action = parser._option_string_actions.get(word.split("=")[0])
            if action is None:
                problems.append(f"{parser.prog}: no option {word}")
            elif action.nargs != 0 and "=" not in word and words:
                words.pop(0)  # its value
            continue
        choices = _subparsers(parser)
        if not choices:
            continue  # a positional or an option's value
        if word in choices:
            parser = choices[word]
        elif "|" in word:  # `tenants create|get|list|update`
            problems += [
                f"{parser.prog}: no command {w}" for w in word.split("|") if w not in choices
            ]
            break
        else:
            problems.append(f"{parser.prog}: no command {word}")
            break
    return problems


def test_the_readme_command_scan_sees_the_documented_commands() -> None:
    # If these stop being found or flagged, the scan is broken, not the README fixed.
    seen = {" ".join(argv[:2]) for argv in _readme_commands()}
    assert {"run examples/ghz.qasm", "keys create", "store backup", "audit verify"} <= seen
    assert _unknown(["keys", "list", "--inactiv"]) == ["qgateway keys list: no option --inactiv"]
    assert _unknown(["job", "list"]) == ["qgateway: no command job"]
    assert _unknown(["tenants", "create|delete"]) == ["qgateway tenants: no command delete"]
    assert not _unknown(["--target", "h:1", "jobs", "get", "--top", "5", "jobs/x"])


@pytest.mark.parametrize("argv", _readme_commands(), ids=lambda argv: " ".join(argv)[:60])
def test_every_qgateway_command_the_readme_shows_exists_with_its_flags(argv: list[str]) -> None:
    assert not _unknown(argv)


def test_the_readme_first_job_commands_parse_as_written() -> None:
    # "A first job", verbatim: the commands a new user types first parse completely.
    for argv in (
        ["backends"],
        ["run", "examples/ghz.qasm", "--backend", "aer", "--shots", "1024", "--seed", "7"],
        ["jobs", "list"],
        ["jobs", "watch", "jobs/x"],
        [
            *("keys", "create", "--tenant", "acme", "--name", "ci"),
            *("--role", "user", "--expires-in-days", "90"),
        ],
        ["keys", "list", "--tenant", "acme", "--inactive"],
        ["store", "backup", "--config", "gateway.toml", "DIR"],
        ["audit", "export", "--config", "gateway.toml", "-o", "audit.jsonl"],
    ):
        args = cli.build_parser().parse_args(argv)
        assert getattr(args, "handler", None) is not None, argv
