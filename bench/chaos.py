"""Chaos benchmark (not a test): many concurrent clients against `aer` while a 30%-failing
`fault` backend (Aer with `faults = { failure_rate = 0.3 }`) shares the gateway.

Two runs against one gateway configuration, same aer load in both:
  baseline  aer clients only;
  chaos     the same aer clients plus as many clients on the failing backend.
Prints jobs accepted, succeeded, failed by reason, refused at admission, p50/p99 per backend,
and "lost", computed by checking every acknowledged job id at the end. Targets: lost 0, no
INTERNAL/UNKNOWN, aer p99 under chaos within 2x of the baseline.

    .venv/bin/python -m bench.chaos [--seconds 30] [--clients 200]

All traffic goes to 127.0.0.1; every loop is bounded in time.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from qgateway import AsyncClient, QGatewayError, RetryPolicy
from qgateway.results import JobState

from bench.gateway_proc import GatewayProcess

GHZ = (
    'OPENQASM 3.0;\ninclude "stdgates.inc";\nqubit[5] q;\nbit[5] c;\nh q[0];\n'
    "cx q[0], q[1];\ncx q[1], q[2];\ncx q[2], q[3];\ncx q[3], q[4];\nc = measure q;\n"
)

CONFIG = """
data_dir = "{data}"

[server]
listen = "127.0.0.1:0"
grace_period_s = 10

[backends.aer]
adapter = "aer"
pool = {{ min_instances = 2, max_instances = 2 }}
max_queued_jobs = 100000

[backends.fault]
adapter = "aer"
pool = {{ min_instances = 1, max_instances = 1 }}
max_queued_jobs = 100000
breaker = {{ failure_threshold = 20, window_s = 5, cooldown_s = 2 }}
faults = {{ failure_rate = 0.3 }}
"""


@dataclass
class Tally:
    accepted: list[str] = field(default_factory=list)
    outcomes: Counter[str] = field(default_factory=Counter)
    latency: dict[str, list[float]] = field(default_factory=dict)


async def _client_loop(
    client: AsyncClient, backend: str, until: float, tally: Tally, seed0: int
) -> None:
    seed = seed0
    while time.monotonic() < until:
        seed += 1
        t0 = time.perf_counter()
        try:
            job = await client.submit(GHZ, backend=backend, shots=256, seed=seed, timeout=30)
        except QGatewayError as err:
            tally.outcomes[f"{backend} refused {err.code_name} {err.reason}"] += 1
            if err.retry_delay:
                await asyncio.sleep(min(err.retry_delay, max(0.0, until - time.monotonic())))
            continue
        tally.accepted.append(job.name)
        try:
            done = await client.wait(job.name, timeout=60)
        except QGatewayError as err:
            tally.outcomes[f"{backend} wait-error {err.code_name} {err.reason}"] += 1
            continue
        label = (
            done.state.value
            if done.state is JobState.SUCCEEDED
            else (f"{done.state.value} {done.error_reason}")
        )
        tally.outcomes[f"{backend} {label}"] += 1
        if done.state is JobState.SUCCEEDED:
            tally.latency.setdefault(backend, []).append(time.perf_counter() - t0)


async def _run_phase(address: str, clients: dict[str, int], seconds: float) -> Tally:
    tally = Tally()
    until = time.monotonic() + seconds
    # No client-side retries: refusals are counted, not hidden.
    async with AsyncClient(address, retry=RetryPolicy(max_attempts=1)) as client:
        tasks = [
            _client_loop(client, backend, until, tally, seed0=1_000_000 * i)
            for backend, n in clients.items()
            for i in range(n)
        ]
        await asyncio.gather(*tasks)
    return tally


async def _lost(address: str, names: list[str]) -> tuple[int, Counter[str]]:
    """Every acknowledged job must exist and be final."""
    states: Counter[str] = Counter()
    lost = 0
    async with AsyncClient(address) as client:
        for name in names:
            try:
                job = await client.wait(name, timeout=60)
            except QGatewayError:
                lost += 1
                continue
            states[job.state.value] += 1
            lost += 0 if job.state.is_final else 1
    return lost, states


def _pct(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    return statistics.quantiles(values, n=100, method="inclusive")[int(q) - 1] * 1000


def _report(name: str, tally: Tally, seconds: float) -> None:
    print(f"\n== {name}: {len(tally.accepted)} jobs accepted in {seconds:.0f}s")
    for key, count in sorted(tally.outcomes.items()):
        print(f"   {key:<58} {count:>7}")
    for backend, values in sorted(tally.latency.items()):
        print(
            f"   {backend:<6} succeeded p50 {_pct(values, 50):8.1f} ms"
            f"   p99 {_pct(values, 99):8.1f} ms   ({len(values) / seconds:.0f} jobs/s)"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--seconds", type=float, default=30.0)
    parser.add_argument("--clients", type=int, default=200, help="total concurrent clients")
    args = parser.parse_args()
    half = args.clients // 2
    with tempfile.TemporaryDirectory(prefix="qgateway-chaos-") as tmp:
        root = Path(tmp)
        config = root / "gateway.toml"
        config.write_text(CONFIG.format(data=root / "data"))
        gw = GatewayProcess.start(config, root / "gateway.log")
        try:
            baseline = asyncio.run(_run_phase(gw.address, {"aer": half}, args.seconds))
            chaos = asyncio.run(
                _run_phase(gw.address, {"aer": half, "fault": args.clients - half}, args.seconds)
            )
            lost, states = asyncio.run(_lost(gw.address, baseline.accepted + chaos.accepted))
        finally:
            code = gw.terminate()
    _report(f"baseline ({half} clients on aer)", baseline, args.seconds)
    _report(
        f"chaos ({half} on aer + {args.clients - half} on 30%-failing fault)", chaos, args.seconds
    )
    bad = sum(
        n
        for k, n in {**baseline.outcomes, **chaos.outcomes}.items()
        if "INTERNAL" in k or "UNKNOWN" in k
    )
    base_p99 = _pct(baseline.latency.get("aer", []), 99)
    chaos_p99 = _pct(chaos.latency.get("aer", []), 99)
    ratio = chaos_p99 / base_p99
    print("\n== verdict")
    print(f"   acknowledged jobs checked: {sum(states.values()) + lost} -> {dict(states)}")
    print(
        f"   lost: {lost}                                  target 0    "
        f"{'PASS' if lost == 0 else 'MISS'}"
    )
    print(
        f"   INTERNAL/UNKNOWN answers: {bad}                     target 0    "
        f"{'PASS' if bad == 0 else 'MISS'}"
    )
    print(
        f"   aer p99 chaos/baseline: {chaos_p99:.1f}/{base_p99:.1f} ms = {ratio:.2f}x"
        f"   target <= 2x {'PASS' if ratio <= 2 else 'MISS'}"
    )
    print(f"   gateway exit code after SIGTERM: {code}")


if __name__ == "__main__":
    main()
