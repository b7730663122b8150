"""The client side of one gateway in an A/B benchmark (`run_bench --baseline REF`).

Run as a FILE with the interpreter of the tree under test, so it talks to that tree's gateway
through that tree's own Python client (the wire API changed between releases):

    <tree>/.venv/bin/python bench/ab_driver.py ADDRESS

It imports nothing from `bench` or `gateway`: only the standard library and the tree's
`qgateway` client, whose `Client.run` / `AsyncClient.run` take (circuit, shots=, seed=, timeout=)
in every release since the sampler PUBs. Commands arrive one JSON object per line on stdin and
each is answered with one JSON line on stdout, so the orchestrator can read the gateway's CPU
counters right before and right after each measured window:

    {"op": "latency", "kind": "repeated"|"distinct", "n": N, "start": K}
        -> {"samples": [seconds, ...]}            N sequential Runs on one Client
    {"op": "load_setup", "clients": C}           C AsyncClients connected and warmed up
        -> {"ok": true}
    {"op": "load", "kind": "repeated"|"distinct", "jobs": N, "seconds": S, "start": K}
        -> {"done": n, "elapsed": s, "samples": [...], "errors": {...}}
    {"op": "quit"}

The circuits are bench/direct.py's (copied here: this file must not import the bench package).
"""

from __future__ import annotations

import asyncio
import json
import sys
import time
from collections import Counter
from typing import Any

GHZ_SHOTS = 1024
SEED = 1234
RUN_TIMEOUT_S = 30.0
GHZ = """\
OPENQASM 3.0;
include "stdgates.inc";
qubit[5] q;
bit[5] c;
h q[0];
cx q[0], q[1];
cx q[1], q[2];
cx q[2], q[3];
cx q[3], q[4];
c = measure q;
"""
GHZ_OUTCOMES = frozenset({"00000", "11111"})


def distinct_ghz(index: int) -> str:
    """The same as bench.direct.distinct_ghz (a new rz angle per index)."""
    angle = 0.1 + index * 1.0e-5
    return GHZ.replace("h q[0];\n", f"h q[0];\nrz({angle:.10f}) q[0];\n", 1)


def circuit(kind: str, index: int) -> str:
    return GHZ if kind == "repeated" else distinct_ghz(index)


def check(counts: dict[str, int]) -> None:
    if sum(counts.values()) != GHZ_SHOTS or not set(counts) <= GHZ_OUTCOMES:
        raise RuntimeError(f"unexpected GHZ counts: {counts}")


def _error_key(exc: BaseException) -> str:
    code = getattr(exc, "code_name", None)
    return f"{code} {getattr(exc, 'reason', '') or ''}".strip() if code else type(exc).__name__


class Driver:
    def __init__(self, address: str) -> None:
        from qgateway import Client

        self.address = address
        self.client = Client(address)
        self.loop = asyncio.new_event_loop()
        self.clients: list[Any] = []
        check(self.client.run(GHZ, shots=GHZ_SHOTS, seed=SEED, timeout=RUN_TIMEOUT_S).counts())

    def latency(self, kind: str, n: int, start: int) -> dict[str, Any]:
        run = self.client.run
        samples = []
        for i in range(n):
            source = circuit(kind, start + i)
            t0 = time.perf_counter()
            run(source, shots=GHZ_SHOTS, seed=SEED, timeout=RUN_TIMEOUT_S)
            samples.append(time.perf_counter() - t0)
        return {"samples": samples}

    def load_setup(self, clients: int) -> dict[str, Any]:
        from qgateway import AsyncClient

        async def setup() -> None:
            # One channel (one TCP connection) per client, as separate client programs have.
            options = [("grpc.use_local_subchannel_pool", 1)]
            while len(self.clients) < clients:
                self.clients.append(AsyncClient(self.address, options=options))
            await asyncio.gather(
                *(
                    c.run(GHZ, shots=GHZ_SHOTS, seed=SEED, timeout=RUN_TIMEOUT_S)
                    for c in self.clients
                )
            )

        self.loop.run_until_complete(setup())
        return {"ok": True}

    def load(self, kind: str, jobs: int, seconds: float, start: int) -> dict[str, Any]:
        samples: list[float] = []
        errors: Counter[str] = Counter()
        issued = 0

        async def client_loop(client: Any, stop_at: float) -> None:
            nonlocal issued
            while issued < jobs and time.monotonic() < stop_at:
                source = circuit(kind, start + issued)
                issued += 1
                t0 = time.perf_counter()
                try:
                    await client.run(source, shots=GHZ_SHOTS, seed=SEED, timeout=RUN_TIMEOUT_S)
                except Exception as exc:
                    errors[_error_key(exc)] += 1
                    continue
                samples.append(time.perf_counter() - t0)

        async def run_all() -> float:
            t0 = time.perf_counter()
            stop_at = time.monotonic() + seconds
            await asyncio.wait_for(
                asyncio.gather(*(client_loop(c, stop_at) for c in self.clients)),
                timeout=seconds + RUN_TIMEOUT_S + 10,
            )
            return time.perf_counter() - t0

        elapsed = self.loop.run_until_complete(run_all())
        return {
            "done": len(samples),
            "issued": issued,
            "elapsed": elapsed,
            "samples": samples,
            "errors": dict(errors),
        }

    def close(self) -> None:
        async def close_all() -> None:
            await asyncio.gather(*(c.close() for c in self.clients), return_exceptions=True)

        self.loop.run_until_complete(close_all())
        self.loop.close()
        self.client.close()


def main() -> int:
    out = sys.stdout
    try:
        driver = Driver(sys.argv[1])
    except Exception as exc:
        out.write(json.dumps({"error": f"{type(exc).__name__}: {exc}"}) + "\n")
        out.flush()
        return 1
    out.write(json.dumps({"ready": True}) + "\n")
    out.flush()
    try:
        for line in sys.stdin:
            command = json.loads(line)
            op = command.pop("op")
            if op == "quit":
                break
            try:
                reply = getattr(driver, op)(**command)
            except Exception as exc:
                reply = {"error": f"{type(exc).__name__}: {exc}"}
            out.write(json.dumps(reply) + "\n")
            out.flush()
    finally:
        driver.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
