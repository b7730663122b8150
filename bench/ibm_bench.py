"""IBM fake backends: the gateway against qiskit-ibm-runtime's own local mode, and the transpile
cache on a 127-qubit target, in one run.

    .venv/bin/python -m bench.ibm_bench [--quick]

Starts ONE gateway process (127.0.0.1, port 0, data in a temporary directory) with two IBM
backends, `ibm-fake-manila` (FakeManilaV2, 5 qubits) and `ibm-fake-brisbane` (FakeBrisbane, 127
qubits), one warm worker each, and measures in the same run:

1. Manila, GHZ-5, 1024 shots, fixed seed: `Client.run` through the gateway against the runtime's
   own local-mode primitives for the same PUB (ISA circuit, same seed) in this process, in
   alternating blocks: the recommended `executor_sampler.Sampler(mode=FakeManilaV2())` (rebuilds
   the fake's noise model every run), the deprecated `SamplerV2(mode=FakeManilaV2())`, and the
   recommended Sampler on one prebuilt simulator (what the gateway's worker does).
2. Brisbane, per run: the recommended Sampler given the fake itself against the same Sampler on
   one prebuilt simulator (a GHZ-3), and on that simulator with the noise model restricted to
   the circuit's qubits (what the gateway's worker runs), a few runs each.
3. Brisbane, transpile cache: the same circuit Run repeatedly (the gateway's compile cache
   hits) against a new circuit of the same size every Run (rz angle changes, so it misses);
   the gateway reports each job's compile time (Job.timings.transpile); for orientation, the
   in-process cached pass manager and a pass manager built per call.

Not a test: nothing here asserts. See bench/README.md.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path

from bench.run_bench import Latencies, header, ms, out, ratio, timed
from gateway.backends.ibm.adapter import _restricted, _touched
from gateway.testing import GatewayProcess

SEED = 1234
SHOTS = 1024
GHZ5 = (
    'OPENQASM 3.0;\ninclude "stdgates.inc";\nqubit[5] q; bit[5] c;\n'
    "h q[0]; cx q[0], q[1]; cx q[1], q[2]; cx q[2], q[3]; cx q[3], q[4]; c = measure q;\n"
)
GHZ3 = (
    'OPENQASM 3.0;\ninclude "stdgates.inc";\nqubit[3] q; bit[3] c;\n'
    "h q[0]; cx q[0], q[1]; cx q[1], q[2]; c = measure q;\n"
)
# A 12-qubit circuit with routing work on the heavy-hex lattice; `{angle}` makes it distinct.
WIDE = (
    'OPENQASM 3.0;\ninclude "stdgates.inc";\nqubit[12] q; bit[12] c;\nh q[0]; rz({angle}) q[0];\n'
    + "".join(f"cx q[{i}], q[{(5 * i + 3) % 12}];\n" for i in range(12) if i != (5 * i + 3) % 12)
    + "c = measure q;\n"
)
CONFIG = """\
data_dir = "{data}"

[server]
listen = "127.0.0.1:0"
grace_period_s = 2

[backends.ibm-fake-manila]
adapter = "ibm"
pool = {{ min_instances = 1, max_instances = 1 }}
options = {{ backend = "FakeManilaV2" }}

[backends.ibm-fake-brisbane]
adapter = "ibm"
pool = {{ min_instances = 1, max_instances = 1 }}
options = {{ backend = "FakeBrisbane" }}
"""


def row(label: str, lat: Latencies, note: str = "") -> None:
    out(f"  {label:<52}{lat.n:>5}{ms(lat.p50)}{ms(lat.pct(99))}  {note}")


def alternate(
    paths: Sequence[tuple[Latencies, Callable[[], object]]], n: int, rounds: int, bound_s: float
) -> None:
    """Rounds of one block per path, in rotating order (outside load hits every path)."""
    for r in range(rounds):
        order = list(paths[r % len(paths) :]) + list(paths[: r % len(paths)])
        for lat, fn in order:
            timed(fn, max(1, n // rounds), time.monotonic() + bound_s / rounds, lat)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="small counts (a smoke run)")
    args = parser.parse_args(argv)
    quick = args.quick
    warnings.simplefilter("ignore", DeprecationWarning)  # SamplerV2 is deprecated: measured anyway

    from qgateway import Client, sampler_pub
    from qiskit import qasm3
    from qiskit.transpiler import generate_preset_pass_manager
    from qiskit_aer import AerSimulator
    from qiskit_ibm_runtime import SamplerV2
    from qiskit_ibm_runtime.executor_sampler import Sampler
    from qiskit_ibm_runtime.fake_provider import FakeBrisbane, FakeManilaV2

    class SharedSimulator(AerSimulator):  # type: ignore[misc]
        """As the gateway's worker: a prebuilt simulator the runtime does not copy."""

        def __deepcopy__(self, memo: dict[int, object]) -> SharedSimulator:
            return self

    with tempfile.TemporaryDirectory(prefix="ibm-bench-") as tmp:
        root = Path(tmp)
        config = root / "gateway.toml"
        config.write_text(CONFIG.format(data=root / "data"))
        t0 = time.perf_counter()
        gateway = GatewayProcess.start(config, root / "gateway.log", start_timeout=300.0)
        out(f"gateway serving in {time.perf_counter() - t0:.1f} s (both fakes' workers warm)")
        try:
            with Client(gateway.address) as client:
                # ---------------------------------------------------------------- 1. Manila
                manila = FakeManilaV2()
                pm = generate_preset_pass_manager(1, target=manila.target, seed_transpiler=0)
                isa = pm.run(qasm3.loads(GHZ5))
                t0 = time.perf_counter()
                shared = SharedSimulator.from_backend(manila)
                build_manila = time.perf_counter() - t0
                options = {"simulator": {"seed_simulator": SEED}}
                default_mode = Sampler(mode=manila, options=options)
                prebuilt = Sampler(mode=shared, options=options)
                legacy = SamplerV2(mode=manila, options=options)
                pub = (isa, None, SHOTS)
                paths = {
                    "gateway Client.run (ibm-fake-manila)": lambda: client.run(
                        GHZ5, backend="ibm-fake-manila", shots=SHOTS, seed=SEED
                    ),
                    "runtime Sampler(mode=FakeManilaV2()) [default]": lambda: default_mode.run(
                        [pub]
                    ).result(),
                    "runtime SamplerV2(mode=FakeManilaV2()) [deprecated]": lambda: legacy.run(
                        [pub]
                    ).result(),
                    "runtime Sampler(mode=prebuilt simulator)": lambda: prebuilt.run(
                        [pub]
                    ).result(),
                }
                lats = {name: Latencies() for name in paths}
                for fn in paths.values():  # warm-up
                    fn()
                n = 8 if quick else 40
                alternate([(lats[k], fn) for k, fn in paths.items()], n, 2 if quick else 4, 60.0)
                header(f"1. FakeManilaV2, GHZ-5, {SHOTS} shots (ms)      n    p50     p99")
                for name, lat in lats.items():
                    row(name, lat)
                gw = lats["gateway Client.run (ibm-fake-manila)"]
                for name, lat in lats.items():
                    if lat is not gw:
                        out(f"  gateway / {name:<50} {ratio(gw.p50, lat.p50):6.2f}x p50")
                out(f"  (prebuilt simulator: built once in {build_manila * 1e3:.0f} ms)")

                # ---------------------------------------------------------------- 2. Brisbane
                brisbane = FakeBrisbane()
                pm127 = generate_preset_pass_manager(1, target=brisbane.target, seed_transpiler=0)
                isa3 = pm127.run(qasm3.loads(GHZ3))
                t0 = time.perf_counter()
                shared127 = SharedSimulator.from_backend(brisbane)
                build_brisbane = time.perf_counter() - t0
                pub3 = (isa3, None, SHOTS)
                fake_mode = Sampler(mode=brisbane, options=options)
                shared_mode = Sampler(mode=shared127, options=options)
                restricted127 = SharedSimulator.from_backend(brisbane)
                restricted127.set_options(
                    noise_model=_restricted(restricted127.options.noise_model, _touched(isa3))
                )
                restricted_mode = Sampler(mode=restricted127, options=options)
                per_run = {"fake": Latencies(), "prebuilt": Latencies(), "restricted": Latencies()}
                alternate(
                    [
                        (per_run["fake"], lambda: fake_mode.run([pub3]).result()),
                        (per_run["prebuilt"], lambda: shared_mode.run([pub3]).result()),
                        (per_run["restricted"], lambda: restricted_mode.run([pub3]).result()),
                    ],
                    3 if quick else 6,
                    3 if quick else 2,
                    120.0,
                )
                header("2. FakeBrisbane (127 qubits), GHZ-3, per run (ms)    n    p50     p99")
                row("runtime Sampler(mode=FakeBrisbane()) [default]", per_run["fake"])
                row("runtime Sampler(mode=prebuilt simulator)", per_run["prebuilt"])
                row(
                    "  ... its noise model restricted to the circuit [gateway]",
                    per_run["restricted"],
                )
                restricted_speedup = ratio(per_run["fake"].p50, per_run["restricted"].p50)
                out(f"  default / restricted: {restricted_speedup:.1f}x p50")
                speedup = ratio(per_run["fake"].p50, per_run["prebuilt"].p50)
                out(
                    f"  default / prebuilt: {speedup:.2f}x p50; the prebuilt simulator was built"
                    f" once in {build_brisbane:.2f} s"
                )

                # ---------------------------------------------------------------- 3. cache
                counter = iter(range(1, 1_000_000))
                transpile: dict[str, list[float]] = {"hit": [], "miss": []}
                runs = {"hit": Latencies(), "miss": Latencies()}

                def gateway_run(kind: str) -> None:
                    angle = 0.5 if kind == "hit" else 0.5 + next(counter) * 1e-3
                    job = client.run_pubs(
                        # Few shots: each is a noisy trajectory (~8 ms each here), and the
                        # point is the compile step.
                        [sampler_pub(WIDE.format(angle=angle), shots=32)],
                        backend="ibm-fake-brisbane",
                        seed=SEED,
                        timeout=120.0,
                    )
                    if job.state != "SUCCEEDED":
                        raise RuntimeError(f"{kind} run: {job.state} {job.error}")
                    if job.timings is not None and job.timings.transpile is not None:
                        transpile[kind].append(job.timings.transpile.total_seconds())

                gateway_run("hit")  # the cached circuit, compiled once
                alternate(
                    [
                        (runs["hit"], lambda: gateway_run("hit")),
                        (runs["miss"], lambda: gateway_run("miss")),
                    ],
                    2 if quick else 8,
                    2,
                    180.0,
                )
                cached = Latencies()
                fresh = Latencies()
                circuit = qasm3.loads(WIDE.format(angle=0.5))
                timed(lambda: pm127.run(circuit), 20, time.monotonic() + 20, cached)
                timed(
                    lambda: generate_preset_pass_manager(
                        1, target=brisbane.target, seed_transpiler=0
                    ).run(circuit),
                    5 if quick else 10,
                    time.monotonic() + 60,
                    fresh,
                )
                header("3. FakeBrisbane, 12-qubit circuit, transpile cache (ms)  n    p50     p99")
                row("gateway Run, same circuit (compile cache hit)", runs["hit"])
                row("gateway Run, new circuit each time (miss)", runs["miss"])
                for kind in ("hit", "miss"):
                    values = transpile[kind]
                    median = statistics.median(values) * 1e3 if values else float("nan")
                    out(f"  gateway-reported compile time, {kind:<4}: median {median:9.2f} ms")
                row("in process: cached pass manager .run", cached)
                row("in process: pass manager built per call + run", fresh)
                out(
                    f"  Run miss / hit: {ratio(runs['miss'].p50, runs['hit'].p50):.2f}x p50; "
                    f"in process fresh / cached: {ratio(fresh.p50, cached.p50):.1f}x"
                )
        finally:
            code = gateway.terminate()
            if code != 0:
                out(f"gateway exited {code}; log: {gateway.log_path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
