"""CLI output: counts tables and histograms, backend tables, error lines."""

from __future__ import annotations

import argparse
import dataclasses
import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from qgateway import (
    AbortedError,
    Backend,
    DeadlineExceededError,
    InvalidArgumentError,
    Job,
    JobFailedError,
    JobResult,
    JobState,
    RetryPolicy,
    UnavailableError,
)
from qgateway.v1 import job_pb2

from gateway import cli

COUNTS = {"00": 6, "11": 3, "01": 1, "10": 3}


def test_counts_table_sorted_by_count_then_outcome() -> None:
    assert cli.format_counts(COUNTS, width=6, title="register c (2 bits)") == (
        "register c (2 bits)\n"
        "outcome  count    prob  histogram\n"
        "00           6  0.4615  ######\n"
        "10           3  0.2308  ###\n"
        "11           3  0.2308  ###\n"
        "01           1  0.0769  #"
    )


def test_rare_outcomes_still_get_a_bar_and_top_truncates() -> None:
    text = cli.format_counts({"0": 1000, "1": 1}, width=10, bar="*")
    assert text.splitlines()[1:] == [
        "0         1000  0.9990  **********",
        "1            1  0.0010  *",
    ]
    short = cli.format_counts(COUNTS, width=6, top=2)
    assert short.splitlines()[-1] == (
        "... 2 more outcomes (4 shots) not shown; use --top 0 or --json"
    )
    assert len(short.splitlines()) == 4


def test_several_registers_give_one_table_each() -> None:
    pub = job_pb2.PubResult(
        sampler=job_pb2.SamplerPubResult(
            shots=4,
            registers=[
                job_pb2.RegisterResult(
                    name="a", num_bits=1, counts=[job_pb2.Counts(outcomes=b"\x01", counts=[4])]
                ),
                job_pb2.RegisterResult(
                    name="b",
                    num_bits=2,
                    counts=[job_pb2.Counts(outcomes=b"\x00\x02", counts=[1, 3])],
                ),
            ],
        )
    )
    text = cli.format_result(JobResult.from_proto(job_pb2.JobResult(pub_results=[pub])), top=0)
    assert text == (
        "register a (1 bit): 4 shots, 1 outcome\n"
        "outcome  count    prob  histogram\n"
        "1            4  1.0000  ########################################\n"
        "\n"
        "register b (2 bits): 4 shots, 2 outcomes\n"
        "outcome  count    prob  histogram\n"
        "10           3  0.7500  ########################################\n"
        "00           1  0.2500  #############"
    )


def backend(name: str, qubits: int, status: str, queued: int) -> Backend:
    return Backend(
        name=f"backends/{name}",
        provider="aer",
        kind="SIMULATOR",
        num_qubits=qubits,
        basis_gates=[],
        primitives=["SAMPLER"],
        features=[],
        status=status,
        queue_length=queued,
        running_jobs=0,
        limits=None,
        properties={},
    )


def test_backends_table() -> None:
    text = cli.format_backends(
        [backend("aer", 30, "ONLINE", 3), backend("aer-mps", 100, "OFFLINE", 12)]
    )
    assert text == (
        "NAME     KIND       QUBITS  STATUS   QUEUED\n"
        "aer      simulator      30  online        3\n"
        "aer-mps  simulator     100  offline      12"
    )


def test_watch_event_line() -> None:
    when = datetime(2025, 3, 4, 5, 6, 7, tzinfo=UTC)
    running = Job(name="jobs/j1", state=JobState.RUNNING)
    assert cli.format_event(running, when) == "2025-03-04 05:06:07Z jobs/j1 RUNNING"
    failed = Job(
        name="jobs/j1",
        state=JobState.FAILED,
        error_reason="WORKER_CRASHED",
        error_message="worker\nkilled",
    )
    assert cli.format_event(failed, when) == (
        "2025-03-04 05:06:07Z jobs/j1 FAILED WORKER_CRASHED: worker killed"
    )


def test_error_line_with_field_violations() -> None:
    err = InvalidArgumentError(
        "circuit does not parse:\nline 3",
        reason="INVALID_QASM",
        field_violations=[("spec.pubs[0].sampler.circuit", "unknown gate 'foo'")],
    )
    assert cli.format_error(err) == (
        "error: INVALID_ARGUMENT INVALID_QASM: circuit does not parse: line 3\n"
        "  spec.pubs[0].sampler.circuit: unknown gate 'foo'"
    )


def test_error_lines_for_transport_deadline_and_failed_job() -> None:
    assert cli.format_error(UnavailableError("failed to connect"), target="h:1") == (
        "error: UNAVAILABLE: failed to connect (gateway h:1)"
    )
    late = DeadlineExceededError("too slow", reason="DEADLINE", metadata={"job": "jobs/j9"})
    assert cli.format_error(late) == (
        "error: DEADLINE_EXCEEDED DEADLINE: too slow (job jobs/j9 keeps running)"
    )
    failed = JobFailedError("jobs/j2", "FAILED", "EXECUTION_FAILED", "simulator said no")
    assert cli.format_error(failed) == (
        "error: job jobs/j2 FAILED EXECUTION_FAILED: simulator said no"
    )


def test_a_run_left_running_says_how_to_get_the_same_job_back(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`qgateway run` past its timeout: the error names the request_id, and --request-id sends
    it again (before, the id was hidden, so repeating the command ran a second job)."""
    sent: list[str | None] = []

    class Late:
        def __init__(self, *args: object, **kwargs: object) -> None:
            pass

        def __enter__(self) -> Late:
            return self

        def __exit__(self, *exc: object) -> None:
            pass

        def run_pubs(self, pubs: object, **kwargs: object) -> None:
            request_id = kwargs["request_id"]
            assert isinstance(request_id, str) and request_id
            sent.append(request_id)
            if request_id == "drained":
                raise AbortedError(
                    "the gateway is shutting down; repeat the call with the same request_id",
                    reason="GATEWAY_DRAINING",
                    request_id=request_id,
                )
            if request_id == "interrupted":
                raise KeyboardInterrupt
            raise DeadlineExceededError(
                "job jobs/j9 did not finish within the deadline",
                reason="RUN_DEADLINE_EXCEEDED",
                metadata={"job": "jobs/j9"},
                request_id=request_id,
            )

    monkeypatch.setattr(cli, "Client", Late)
    source = tmp_path / "one.qasm"
    source.write_text('OPENQASM 3.0;\ninclude "stdgates.inc";\nqubit q; bit c; c = measure q;\n')
    assert cli.main(["run", str(source), "--timeout", "0.5"]) == 1
    assert f"(request_id {sent[0]}: repeat with --request-id" in capsys.readouterr().err
    assert cli.main(["run", str(source), "--request-id", "mine-7"]) == 1
    assert "request_id mine-7" in capsys.readouterr().err
    # A drain (ABORTED) and Ctrl-C left the job running with its request_id unsaid.
    assert cli.main(["run", str(source), "--request-id", "drained"]) == 1
    assert "request_id drained: repeat with --request-id" in capsys.readouterr().err
    assert cli.main(["run", str(source), "--request-id", "interrupted"]) == 130
    assert "request_id interrupted: repeat with --request-id" in capsys.readouterr().err
    assert sent[1:] == ["mine-7", "drained", "interrupted"]


def test_missing_file_is_one_line(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    code = cli.main(["run", str(tmp_path / "absent.qasm"), "--shots", "10"])
    assert code == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1
    assert err.startswith(f"error: cannot read {tmp_path / 'absent.qasm'}: ")


def test_unreachable_gateway_is_one_line(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(cli, "CLI_RETRY", RetryPolicy(max_attempts=1))
    code = cli.main(["--target", "127.0.0.1:1", "backends", "--timeout", "10"])
    assert code == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1
    assert err.startswith("error: UNAVAILABLE")
    assert err.rstrip().endswith("(gateway 127.0.0.1:1)")


def test_target_from_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(cli.ENV_TARGET, "gw.example:443")
    assert cli.build_parser().parse_args(["backends"]).target == "gw.example:443"
    monkeypatch.delenv(cli.ENV_TARGET)
    assert cli.build_parser().parse_args(["backends"]).target == "127.0.0.1:50051"
    args = cli.build_parser().parse_args(
        ["--target", "a:1", "jobs", "get", "j1", "--target", "b:2"]
    )
    assert args.target == "b:2"


def test_timeout_before_or_after_the_subcommand() -> None:
    parse = cli.build_parser().parse_args
    assert parse(["--timeout", "5", "backends"]).timeout == 5.0
    assert parse(["backends", "--timeout", "7"]).timeout == 7.0
    assert parse(["--timeout", "5", "jobs", "get", "j1", "--timeout", "9"]).timeout == 9.0
    assert parse(["backends"]).timeout is None
    assert parse(["--timeout", "5", "serve"]).timeout == 5.0  # accepted, unused by serve


class FakeClient:
    def __init__(self, job: Job) -> None:
        self.job = job
        self.calls: list[dict[str, Any]] = []

    def __enter__(self) -> FakeClient:
        return self

    def __exit__(self, *exc: object) -> None:
        pass

    def run_pubs(self, pubs: Any, **kwargs: Any) -> Job:
        self.calls.append(kwargs)
        return self.job


def test_run_command_prints_job_line_and_tables(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    source = tmp_path / "bell.qasm"
    source.write_text("OPENQASM 3.0;\n", encoding="utf-8")
    msg = job_pb2.Job(
        name="jobs/j1",
        state=job_pb2.JOB_STATE_SUCCEEDED,
        execution=job_pb2.ExecutionInfo(backend="backends/aer", seed=7),
    )
    result = job_pb2.JobResult(
        pub_results=[
            job_pb2.PubResult(
                sampler=job_pb2.SamplerPubResult(
                    shots=8,
                    registers=[
                        job_pb2.RegisterResult(
                            name="c",
                            num_bits=2,
                            counts=[job_pb2.Counts(outcomes=b"\x00\x03", counts=[5, 3])],
                        )
                    ],
                )
            )
        ]
    )
    fake = FakeClient(dataclasses.replace(Job.from_proto(msg), result=JobResult.from_proto(result)))

    def make(args: argparse.Namespace) -> FakeClient:
        return fake

    monkeypatch.setattr(cli, "_client", make)
    code = cli.main(["run", str(source), "--shots", "8", "--seed", "7", "--counts-only"])
    assert code == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0] == "jobs/j1 SUCCEEDED on backends/aer (seed 7)"
    assert out[2] == "register c (2 bits): 8 shots, 2 outcomes"
    assert out[4].startswith("00           5  0.6250  ")
    request_id = fake.calls[0].pop("request_id")
    assert isinstance(request_id, str) and request_id  # named by the CLI (see above)
    assert fake.calls == [
        {
            "backend": "aer",
            "seed": 7,
            "counts_only": True,
            "sampler_output": None,
            "timeout": None,
        }
    ]
    # --json writes the 64-bit seed as a string (protobuf's JSON mapping): a JSON number this
    # large is rounded by readers that take numbers as doubles.
    big = 2**63 + 5
    seeded = fake.job
    assert seeded.execution is not None
    fake.job = dataclasses.replace(
        seeded, execution=dataclasses.replace(seeded.execution, seed=big)
    )
    assert cli.main(["run", str(source), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["seed"] == str(big)
    fake.job = seeded
    fake.calls.clear()
    assert cli.main(["run", str(source), "--sampler-output", "samples"]) == 0
    assert fake.calls[0]["sampler_output"] == "samples"
    assert fake.calls[0]["counts_only"] is False
    capsys.readouterr()

    fake.job = Job(
        name="jobs/j1", state=JobState.FAILED, error_reason="EXECUTION_FAILED", error_message="x"
    )
    # Its own exit status: a script tells a failed job from a failed call (1).
    assert cli.main(["run", str(source)]) == cli.JOB_NOT_SUCCEEDED == 3
    assert capsys.readouterr().err == "error: job jobs/j1 FAILED EXECUTION_FAILED: x\n"


def test_an_api_key_is_not_sent_in_plaintext_to_another_host(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv(cli.ENV_API_KEY, "qgw_abcdef12_secret")
    code = cli.main(["--target", "gw.example.com:443", "backends"])
    assert code == 1
    err = capsys.readouterr().err
    assert "refusing to send QGATEWAY_API_KEY in plaintext to gw.example.com:443" in err
    assert "secret" not in err
    for local in ("127.0.0.1:50051", "localhost:1", "[::1]:50051", "unix:/run/q.sock"):
        assert cli._is_local(local), local
    assert cli._is_local("ipv6:[::1]:1,[::1]:2")
    for remote in (
        "gw.example.com:443",
        "10.0.0.5:50051",
        "[2001:db8::1]:443",
        "dns:///gw:1",
        # gRPC goes on to the second address when the first one fails: it got the key.
        "ipv6:[::1]:50051,[2001:db8::1]:50051",
        "ipv4:127.0.0.1:1,10.0.0.5:2",
    ):
        assert not cli._is_local(remote), remote
    parse = cli.build_parser().parse_args
    for argv in (["--tls", "backends"], ["backends", "--plaintext"]):
        with cli._client(parse(["--target", "gw.example.com:443", *argv])) as client:
            assert client.target == "gw.example.com:443"


BROKEN_PIPE_SCRIPT = """
import sys
from gateway import cli

def flood(args):
    for _ in range(200_000):
        print("x" * 100)
    return 0

cli._cmd_backends = flood  # build_parser, called by main, binds it
sys.exit(cli.main(["backends"]))
"""


def test_a_reader_that_goes_away_ends_the_command_quietly() -> None:
    # `qgateway run ... --json | head -c 100` printed a BrokenPipeError traceback and exited 1.
    import signal
    import subprocess
    import sys

    process = subprocess.Popen(
        [sys.executable, "-c", BROKEN_PIPE_SCRIPT],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        cwd=Path(cli.__file__).parents[1],
    )
    assert process.stdout is not None and process.stderr is not None
    assert process.stdout.read(100) == b"x" * 100
    process.stdout.close()
    stderr = process.stderr.read()
    assert process.wait(timeout=60) == 128 + signal.SIGPIPE
    assert stderr == b""
