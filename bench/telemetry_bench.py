"""What telemetry costs: Run p50 and jobs/s with tracing + metrics on vs off, in one run.

    .venv/bin/python -m bench.telemetry_bench [--quick]

Starts THREE gateway processes (127.0.0.1, port 0, one warm Aer worker and one compile worker
each): `[telemetry]` off; tracing with every trace sampled (every span exported over OTLP/gRPC
to a loopback sink started here) plus metrics (Prometheus endpoint, scraped once per block, and
OTLP push every second); and the same with 10% of traces sampled (what a busy production
gateway would run). JSON logs stay off (a separate choice). Measured in alternating blocks so
drift and other load hit every side alike:

1. Run latency, sequential calls from one client: the 5-qubit GHZ with the same text every call
   (compile cache hits: the VQE-loop case) and a distinct circuit per call (cache misses: a
   compile in the compile worker, one more worker span);
2. throughput: N AsyncClients in one event loop, Run in a loop for a fixed time.

Prints each figure and its ratio to "off" (goal: cost <= 5%, i.e. ratio <= 1.05 for latency
and >= 0.95 for jobs/s). Not a test: nothing here asserts. See bench/README.md.
"""

from __future__ import annotations

import argparse
import asyncio
import random
import re
import tempfile
import time
import tomllib
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from bench.direct import GHZ, GHZ_SHOTS, SEED
from bench.run_bench import Latencies, header, ms, out, ratio, verdict
from gateway.testing import GatewayProcess
from tests.otlp_receiver import OtlpReceiver

RUN_TIMEOUT_S = 60.0


@dataclass(frozen=True)
class Settings:
    blocks: int  # alternating blocks per figure
    calls: int  # sequential Run calls per block
    clients: int
    load_s: float  # seconds of load per throughput block


FULL = Settings(blocks=6, calls=60, clients=16, load_s=8.0)
QUICK = Settings(blocks=2, calls=25, clients=8, load_s=3.0)


def _config(root: Path, name: str, telemetry: str) -> Path:
    text = f"""\
data_dir = "{root / name}"

[server]
listen = "127.0.0.1:0"
grace_period_s = 2

[compiler]
workers = 1

[backends.aer]
adapter = "aer"
max_queued_jobs = 10000
options = {{ method = "statevector", max_parallel_threads = 1 }}
pool = {{ min_instances = 1, max_instances = 1 }}
{telemetry}
"""
    tomllib.loads(text)
    path = root / f"{name}.toml"
    path.write_text(text)
    return path


def _telemetry(endpoint: str, sample_ratio: float = 1.0) -> str:
    return f"""
[telemetry.tracing]
enabled = true
otlp_endpoint = "{endpoint}"
sample_ratio = {sample_ratio}

[telemetry.metrics]
prometheus_listen = "127.0.0.1:0"
otlp_endpoint = "{endpoint}"
otlp_interval_s = 1.0
"""


# Angles differ per call and per run, so no earlier run's compile cache entry is hit.
_BASE = random.random()


def _distinct(i: int) -> str:
    angle = (_BASE + i * 0.6180339887) % 6.0
    return GHZ.replace("h q[0];\n", f"h q[0];\nrz({angle:.10f}) q[0];\n", 1)


@dataclass
class Side:
    label: str
    gateway: GatewayProcess
    metrics_url: str | None
    repeated: Latencies
    distinct: Latencies
    rates: list[float]


def _scrape(side: Side) -> None:
    if side.metrics_url is not None:  # a Prometheus server would scrape it meanwhile
        with urllib.request.urlopen(side.metrics_url, timeout=10) as reply:
            reply.read()


def _latency_block(side: Side, calls: int, counter: list[int]) -> None:
    from qgateway import Client

    with Client(side.gateway.address) as client:
        client.run(GHZ, shots=GHZ_SHOTS, seed=SEED, timeout=RUN_TIMEOUT_S)  # warm the channel
        for _ in range(calls):
            t0 = time.perf_counter()
            client.run(GHZ, shots=GHZ_SHOTS, seed=SEED, timeout=RUN_TIMEOUT_S)
            side.repeated.samples.append(time.perf_counter() - t0)
        for _ in range(calls):
            counter[0] += 1
            circuit = _distinct(counter[0])
            t0 = time.perf_counter()
            client.run(circuit, shots=GHZ_SHOTS, seed=SEED, timeout=RUN_TIMEOUT_S)
            side.distinct.samples.append(time.perf_counter() - t0)
    _scrape(side)


async def _load(address: str, clients: int, seconds: float) -> float:
    from qgateway import AsyncClient

    pool = [AsyncClient(address) for _ in range(clients)]
    done = 0
    try:
        await asyncio.gather(*(c.run(GHZ, shots=GHZ_SHOTS, seed=SEED) for c in pool))
        stop_at = time.monotonic() + seconds

        async def loop(client: AsyncClient) -> None:
            nonlocal done
            while time.monotonic() < stop_at:
                await client.run(GHZ, shots=GHZ_SHOTS, seed=SEED, timeout=RUN_TIMEOUT_S)
                done += 1

        t0 = time.perf_counter()
        await asyncio.gather(*(loop(c) for c in pool))
        elapsed = time.perf_counter() - t0
    finally:
        await asyncio.gather(*(c.close() for c in pool), return_exceptions=True)
    return done / elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer blocks and calls")
    args = parser.parse_args()
    s = QUICK if args.quick else FULL
    receiver = OtlpReceiver(keep=False).start()  # a sink: parsing spans here would cost CPU
    with tempfile.TemporaryDirectory(prefix="qgw-telemetry-bench-") as tmp:
        root = Path(tmp)
        configs = {
            "off": "",
            "on": _telemetry(receiver.endpoint),
            "on, 10% of traces": _telemetry(receiver.endpoint, 0.1),
        }
        gateways = []
        try:
            sides = []
            for n, (label, telemetry) in enumerate(configs.items()):
                log = root / f"g{n}.log"
                gateway = GatewayProcess.start(_config(root, f"g{n}", telemetry), log)
                gateways.append(gateway)
                found = re.search(r"http://127\.0\.0\.1:\d+/metrics", log.read_text())
                url = None if found is None else found.group(0)
                sides.append(Side(label, gateway, url, Latencies(), Latencies(), []))
            counter = [0]
            header(f"Run latency, {s.blocks} alternating blocks of {s.calls} calls per side")
            for block in range(s.blocks):
                for side in _order(sides, block):
                    _latency_block(side, s.calls, counter)
            header(f"Throughput, {s.clients} AsyncClients, {s.load_s:g} s per block")
            for block in range(s.blocks):
                for side in _order(sides, block):
                    side.rates.append(asyncio.run(_load(side.gateway.address, s.clients, s.load_s)))
                    _scrape(side)
            _report(sides, receiver)
        finally:
            for gateway in gateways:
                gateway.terminate()
            receiver.stop()


def _order(sides: list[Side], block: int) -> list[Side]:
    """Each block starts with another side (rotation), so no side always runs first."""
    k = block % len(sides)
    return sides[k:] + sides[:k]


def _median(values: list[float]) -> float:
    return sorted(values)[len(values) // 2] if values else float("nan")


def _report(sides: list[Side], receiver: OtlpReceiver) -> None:
    off, *ons = sides
    header("Telemetry on vs off (ratio to off; goal: <= 5% cost)")
    out(f"  {'figure':<46}{'off':>9}" + "".join(f"{o.label:>24}" for o in ons))
    figures: list[tuple[str, Callable[[Side], float]]] = [
        ("Run p50 ms, repeated circuit (cache hits)", lambda x: x.repeated.p50),
        ("Run p50 ms, distinct circuits (cache misses)", lambda x: x.distinct.p50),
    ]
    for what, pick in figures:
        base = pick(off)
        cells = "".join(
            f"{ms(pick(o))} ({ratio(pick(o), base):.3f} {verdict(ratio(pick(o), base) <= 1.05)})"
            for o in ons
        )
        out(f"  {what:<46}{ms(base)} {cells}")
    base = _median(off.rates)
    cells = "".join(
        f"{_median(o.rates):8.1f} ({ratio(_median(o.rates), base):.3f} "
        f"{verdict(ratio(_median(o.rates), base) >= 0.95)})"
        for o in ons
    )
    out(f"  {'jobs/s (median block)':<46}{base:8.1f} {cells}")
    out(f"  spans received by the loopback collector: {receiver.span_count}")


if __name__ == "__main__":
    main()
