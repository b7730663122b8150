"""What access control and the audit log cost: Run p50 and jobs/s with auth + audit on vs off.

    python -m bench.security_bench [--quick]

Two gateways in one run, each one Aer state-vector backend with the same workers:

- off: keyless (every caller is the anonymous default tenant), `[audit] enabled = false`;
- on:  an API key per call (stored as its hash in the configuration), the caller's tenant under
  a policy with every limit the gateway checks per call (per-job qubits and shots, a shot quota
  per period, request and submit rate buckets far above the load, max queued jobs), and the
  audit log on (a record per RPC; a Run's record commits in its job's transaction).

Both serve the same repeated GHZ-5 circuit (the caches hit: the VQE-loop case), measured
alternately, `rounds` times, so drift in the machine's load hits both sides alike. Not a test:
it prints figures and ratios, and asserts only that the answers are right.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from bench.ab_driver import GHZ, GHZ_OUTCOMES, GHZ_SHOTS, SEED
from gateway.security.api_keys import generate_key
from gateway.testing import GatewayProcess

START_TIMEOUT_S = 120.0
RUN_TIMEOUT_S = 60.0
WORKERS = 2


@dataclass(frozen=True)
class Settings:
    rounds: int
    warmup: int
    sequential: int
    clients: int
    jobs: int


QUICK = Settings(rounds=2, warmup=10, sequential=100, clients=32, jobs=400)
FULL = Settings(rounds=3, warmup=30, sequential=500, clients=64, jobs=3000)


@dataclass
class Side:
    name: str
    gateway: GatewayProcess
    metadata: tuple[tuple[str, str], ...]
    latencies: list[float] = field(default_factory=list)
    rates: list[float] = field(default_factory=list)


def _config(path: Path, data: Path, *, secure: bool, key_prefix: str, key_hash: str) -> Path:
    text = f"""\
data_dir = "{data}"

[server]
listen = "127.0.0.1:0"
grace_period_s = 2

[compiler]
workers = 1

[backends.aer]
adapter = "aer"
max_shots = 1000000
max_queued_jobs = 100000
options = {{ method = "statevector", max_parallel_threads = 1 }}

[backends.aer.pool]
min_instances = {WORKERS}
max_instances = {WORKERS}
"""
    if secure:
        text += f"""
[[auth.api_keys]]
prefix = "{key_prefix}"
sha256 = "{key_hash}"
tenant = "bench"

[tenants.bench.policy]
allowed_simulators = ["*"]
max_qubits = 20
max_shots_per_job = 100000
max_queued_jobs = 100000
request_rate = {{ per_second = 1000000.0, burst = 1000000 }}
submit_rate = {{ per_second = 1000000.0, burst = 1000000 }}
quota = {{ shots = 1000000000000, period_s = 86400 }}
"""
    else:
        text += "\n[audit]\nenabled = false\n"
    path.write_text(text)
    return path


def _check(counts: dict[str, int]) -> None:
    if set(counts) - GHZ_OUTCOMES or sum(counts.values()) != GHZ_SHOTS:
        raise RuntimeError(f"wrong GHZ counts: {counts}")


def _sequential(side: Side, s: Settings) -> None:
    from qgateway import Client

    with Client(side.gateway.address, metadata=side.metadata) as client:
        _check(client.run(GHZ, shots=GHZ_SHOTS, seed=SEED, timeout=RUN_TIMEOUT_S).counts())
        for _ in range(s.warmup):
            client.run(GHZ, shots=GHZ_SHOTS, seed=SEED, timeout=RUN_TIMEOUT_S)
        for _ in range(s.sequential):
            t0 = time.perf_counter()
            client.run(GHZ, shots=GHZ_SHOTS, seed=SEED, timeout=RUN_TIMEOUT_S)
            side.latencies.append(time.perf_counter() - t0)


async def _throughput(side: Side, s: Settings) -> float:
    from qgateway import AsyncClient

    options = [("grpc.use_local_subchannel_pool", 1)]
    clients = [
        AsyncClient(side.gateway.address, metadata=side.metadata, options=options)
        for _ in range(s.clients)
    ]
    try:
        await asyncio.gather(
            *(c.run(GHZ, shots=GHZ_SHOTS, seed=SEED, timeout=RUN_TIMEOUT_S) for c in clients)
        )
        issued = 0

        async def loop(client: AsyncClient) -> None:
            nonlocal issued
            while issued < s.jobs:
                issued += 1
                await client.run(GHZ, shots=GHZ_SHOTS, seed=SEED, timeout=RUN_TIMEOUT_S)

        t0 = time.perf_counter()
        await asyncio.gather(*(loop(c) for c in clients))
        return s.jobs / (time.perf_counter() - t0)
    finally:
        await asyncio.gather(*(c.close() for c in clients), return_exceptions=True)


def _ms(seconds: float) -> str:
    return f"{seconds * 1e3:8.2f}"


def _p50(values: Sequence[float]) -> float:
    return statistics.median(values) if values else float("nan")


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.security_bench", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="small counts (about a minute)")
    args = parser.parse_args(argv)
    s = QUICK if args.quick else FULL
    key = generate_key("bench")
    load1, load5, _ = os.getloadavg()
    print(f"qgateway security benchmark ({'quick' if args.quick else 'full'} run)")
    print(
        f"  {os.cpu_count()} cores, load average {load1:.2f} / {load5:.2f} before start; "
        "other processes' load skews every figure"
    )
    with tempfile.TemporaryDirectory(prefix="qgw-security-bench-") as tmp:
        root = Path(tmp)
        sides: list[Side] = []
        try:
            for name, secure in (("off", False), ("on", True)):
                config = _config(
                    root / f"{name}.toml",
                    root / f"data-{name}",
                    secure=secure,
                    key_prefix=key.config.prefix,
                    key_hash=key.config.sha256,
                )
                t0 = time.perf_counter()
                gateway = GatewayProcess.start(
                    config, root / f"{name}.log", start_timeout=START_TIMEOUT_S
                )
                metadata = (("authorization", f"Bearer {key.key}"),) if secure else ()
                sides.append(Side(name, gateway, metadata))
                print(f"  gateway '{name}' ready in {time.perf_counter() - t0:.1f} s")
            for r in range(s.rounds):
                # Alternate which side goes first, so a trend in the load is shared.
                for side in sides if r % 2 == 0 else reversed(sides):
                    _sequential(side, s)
                    side.rates.append(asyncio.run(_throughput(side, s)))
        finally:
            for side in sides:
                side.gateway.terminate()
        off, on = sides
        print()
        print(f"  {'':46}{'auth+audit off':>16}{'on':>10}{'on/off':>10}")
        p_off, p_on = _p50(off.latencies), _p50(on.latencies)
        print(
            f"  {'Run p50 ms, sequential, one client':46}{_ms(p_off):>16}{_ms(p_on):>10}"
            f"{p_on / p_off:>9.2f}x"
        )
        r_off, r_on = _p50(off.rates), _p50(on.rates)
        print(
            f"  {f'jobs/s, {s.clients} clients (median of rounds)':46}{r_off:>16.1f}"
            f"{r_on:>10.1f}{r_on / r_off:>9.2f}x"
        )
        print(f"  n per side: {len(off.latencies)} sequential Runs, {s.rounds} x {s.jobs} jobs")
    return 0


if __name__ == "__main__":
    sys.exit(main())
