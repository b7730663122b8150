"""The sync Client after close: grpcio crashed the process (SIGSEGV) on a call through an
intercepted channel (the client intercepts whenever opentelemetry is installed, to propagate
trace context) whose method was first used after the close; a method used before raised a bare
ValueError. Every call on a closed client now raises RuntimeError, as AsyncClient's do. Run in a
child process: the crash would take the test runner with it."""

from __future__ import annotations

import subprocess
import sys
import textwrap

SCRIPT = textwrap.dedent(
    """
    from qgateway import Client, telemetry

    assert telemetry.sync_interceptors(False), "the channel is intercepted here"
    calls = {
        "run": lambda c: c.run("OPENQASM 3.0;", shots=1),
        "get_job": lambda c: c.get_job("j1"),
        "cancel": lambda c: c.cancel("j1"),
        "watch": lambda c: list(c.watch("j1")),
        "wait": lambda c: c.wait("j1"),
        "list_backends": lambda c: c.list_backends(),
        "list_sessions": lambda c: list(c.list_sessions()),
        "get_tenant": lambda c: c.get_tenant("acme"),
    }
    for name, call in calls.items():
        client = Client("127.0.0.1:1")
        client.close()
        try:
            call(client)
        except RuntimeError as err:
            print(name, err)
        else:
            print(name, "answered")
    """
)


def test_every_call_on_a_closed_client_raises_runtime_error() -> None:
    done = subprocess.run(
        [sys.executable, "-c", SCRIPT], capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr[-2000:]
    lines = done.stdout.splitlines()
    assert len(lines) == 8
    assert all(line.endswith(" this Client is closed") for line in lines), "\n".join(lines)
