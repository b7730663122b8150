"""Health, reflection, a generic gRPC client, and the CLI, against the real gateway."""

from __future__ import annotations

import base64
import json
import subprocess
import sys
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha.proto_reflection_descriptor_database import (
    ProtoReflectionDescriptorDatabase,
)
from qgateway import Client

from tests.gateway_process import GatewayProcess
from tests.rpc import ghz

BIN = Path(sys.executable).parent
SERVING = health_pb2.HealthCheckResponse.SERVING


def test_health_names(address: str) -> None:
    with grpc.insecure_channel(address) as channel:
        health = health_pb2_grpc.HealthStub(channel)
        for name in [
            "",
            "qgateway.v1.JobService",
            "qgateway.backend.aer",
            "qgateway.backend.aer-mps",
            "qgateway.backend.aer-tiny",
        ]:
            reply = health.Check(health_pb2.HealthCheckRequest(service=name), timeout=5)
            assert reply.status == SERVING, name
        try:
            health.Check(health_pb2.HealthCheckRequest(service="qgateway.backend.nope"), timeout=5)
        except grpc.RpcError as err:
            assert err.code() == grpc.StatusCode.NOT_FOUND
        else:
            raise AssertionError("unknown health name answered")


def test_reflection_lists_the_services(address: str) -> None:
    with grpc.insecure_channel(address) as channel:
        services = set(ProtoReflectionDescriptorDatabase(channel).get_services())
    assert {
        "qgateway.v1.JobService",
        "qgateway.v1.BackendService",
        "grpc.health.v1.Health",
    } <= services


def _buf_curl(address: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(BIN / "buf"), "curl", "--protocol", "grpc", "--http2-prior-knowledge", *args],
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_generic_client_through_reflection(address: str) -> None:
    # The README's buf curl commands, verbatim in shape: reflection only, no local protos.
    listed = _buf_curl(address, "--list-methods", f"http://{address}")
    assert listed.returncode == 0, listed.stderr
    assert "qgateway.v1.JobService/Run" in listed.stdout
    body = {
        "spec": {
            "backend": "backends/aer",
            "pubs": [
                {
                    "sampler": {
                        "circuit": {
                            "qasm3": (
                                'OPENQASM 3.0; include "stdgates.inc"; qubit[2] q; bit[2] c; '
                                "x q[1]; c = measure q;"
                            )
                        },
                        "shots": 10,
                    }
                }
            ],
            "options": {"seed": "1"},
        }
    }
    ran = _buf_curl(address, "-d", json.dumps(body), f"http://{address}/qgateway.v1.JobService/Run")
    assert ran.returncode == 0, ran.stderr
    answer = json.loads(ran.stdout)
    assert answer["job"]["state"] == "JOB_STATE_SUCCEEDED"
    counts = answer["result"]["pubResults"][0]["sampler"]["registers"][0]["counts"][0]
    # One distinct outcome, "10" = 2, packed as one big-endian byte (base64 in JSON).
    assert counts == {"outcomes": base64.b64encode(b"\x02").decode(), "counts": ["10"]}


def _qgateway(*args: str) -> subprocess.CompletedProcess[str]:
    """The `qgateway` command, run to its end (a bound, not a measure: 120 s)."""
    return subprocess.run(
        [str(BIN / "qgateway"), *args],
        capture_output=True,
        text=True,
        timeout=120,
        stdin=subprocess.DEVNULL,
    )


def _cli(address: str, *args: str) -> subprocess.CompletedProcess[str]:
    return _qgateway(*args, "--target", address)


def test_cli_run_backends_and_jobs(address: str, examples: Path) -> None:
    run = _cli(
        address,
        "run",
        str(examples / "ghz.qasm"),
        "--backend",
        "aer",
        "--shots",
        "200",
        "--seed",
        "3",
    )
    assert run.returncode == 0, run.stderr
    assert "00000" in run.stdout and "11111" in run.stdout
    assert "#" in run.stdout or "█" in run.stdout  # the histogram
    backends = _cli(address, "backends")
    assert backends.returncode == 0 and "aer-mps" in backends.stdout
    listed = _cli(address, "jobs", "list", "--limit", "3")
    assert listed.returncode == 0 and "jobs/" in listed.stdout


def test_cli_estimate_prints_expectation_values(address: str, examples: Path) -> None:
    bell = examples / "bell_state.qasm"  # the README's example
    exact = _cli(
        address,
        "estimate",
        str(bell),
        "-o",
        "ZZ",
        "-o",
        "0.5*XX - 0.25*ZI + 2*YY",
        "--precision",
        "0",
        "--json",
    )
    assert exact.returncode == 0, exact.stderr
    (pub,) = json.loads(exact.stdout)["pubs"]
    # On a Bell pair <ZZ> = <XX> = 1, <YY> = -1, <ZI> = 0.
    assert pub["shape"] == [2]
    assert pub["expectation_values"] == pytest.approx([1.0, -1.5], abs=1e-9)
    assert pub["standard_errors"] == [0.0, 0.0]
    table = _cli(address, "estimate", str(bell), "-o", "ZZ", "--precision", "0")
    assert table.returncode == 0, table.stderr
    assert "expectation values" in table.stdout and "jobs/" in table.stdout
    bad = _cli(address, "estimate", str(bell), "-o", "ZZ XX")
    assert bad.returncode == 2 and "not a sum of Pauli terms" in bad.stderr


def test_cli_errors_are_one_line(address: str, tmp_path: Path) -> None:
    bad = tmp_path / "bad.qasm"
    bad.write_text("OPENQASM 3.0;\nqubit[1] q;\nfrobnicate q[0];\n")
    run = _cli(address, "run", str(bad))
    assert run.returncode == 1
    first = run.stderr.strip().splitlines()[0]
    assert first.startswith("error: INVALID_ARGUMENT")
    assert "Traceback" not in run.stderr
    missing = _cli(address, "run", str(tmp_path / "absent.qasm"))
    assert missing.returncode == 1 and "Traceback" not in missing.stderr
    unreachable = _qgateway("backends", "--target", "127.0.0.1:1", "--timeout", "2")
    assert unreachable.returncode == 1 and "Traceback" not in unreachable.stderr
    assert len(unreachable.stderr.strip().splitlines()) == 1


def test_cli_arguments_that_could_only_fail_later_are_usage_errors(address: str) -> None:
    # A timeout of 0 or below failed every call DEADLINE_EXCEEDED; an empty target printed
    # pages of gRPC's own log.
    for args in (["--timeout", "0"], ["--timeout", "-1"], ["--timeout", "nan"]):
        refused = _cli(address, "backends", *args)
        assert refused.returncode == 2 and "must be a number above 0" in refused.stderr
    empty = _qgateway("backends", "--target", "")
    assert empty.returncode == 2 and "must name the gateway" in empty.stderr
    assert len(empty.stderr.strip().splitlines()) <= 3  # argparse's usage and the reason


def test_a_start_that_cannot_use_its_data_directory_says_why_in_one_line(
    tmp_path: Path,
) -> None:
    # A data_dir that is a file, or a database a newer gateway migrated, ended in a
    # traceback and exit 1.
    import sqlite3

    from gateway.store.sqlite import LATEST_SCHEMA_VERSION

    a_file = tmp_path / "not-a-dir"
    a_file.write_text("")
    newer = tmp_path / "newer"
    newer.mkdir(mode=0o700)
    conn = sqlite3.connect(newer / "qgateway.db")
    conn.execute("CREATE TABLE schema_migrations (version INTEGER PRIMARY KEY, applied_at TEXT)")
    conn.execute("INSERT INTO schema_migrations VALUES (?, 'x')", (LATEST_SCHEMA_VERSION + 1,))
    conn.commit()
    conn.close()
    for data_dir, needle in ((a_file, "data_dir"), (newer, "is newer than this gateway")):
        config = tmp_path / "gateway.toml"
        config.write_text(f'data_dir = "{data_dir}"\n[server]\nlisten = "127.0.0.1:0"\n')
        start = _qgateway("serve", "--config", str(config))
        assert start.returncode == 2, start.stderr[-2000:]
        assert "Traceback" not in start.stderr and needle in start.stderr
        assert start.stderr.strip().splitlines()[-1].startswith("error: ")


def test_a_second_gateway_on_the_same_data_directory_refuses_to_start(
    gateway: GatewayProcess, address: str
) -> None:
    # Started twice on one data directory with the in-memory queue, the second re-queued the
    # first one's running jobs at start and ran them again beside it.
    config = gateway.log_path.parent / "gateway.toml"
    second = _qgateway("serve", "--config", str(config))
    assert second.returncode == 2, second.stderr[-2000:]
    assert f"in use by the gateway with pid {gateway.pid}" in second.stderr
    assert "qgateway listening" not in second.stdout
    with Client(address) as client:  # the first one is untouched
        assert client.run(ghz(2), shots=10, seed=1).counts().keys() <= {"00", "11"}


def test_the_gateways_files_are_its_own(gateway: GatewayProcess) -> None:
    # The database (every tenant's circuits and results), its WAL and the audit head were
    # 0644 in a 0755 directory: readable by every local user.
    data = gateway.log_path.parent / "data"
    made = [data, *data.iterdir()]
    assert any(path.name == "qgateway.db" for path in made)
    for path in made:
        assert path.stat().st_mode & 0o077 == 0, f"{path} is {oct(path.stat().st_mode)}"
