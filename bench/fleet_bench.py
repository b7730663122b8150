"""The local fleet: every backend's Run via the gateway against that SDK's own direct call.

    .venv/bin/python -m bench.fleet_bench [--quick] [--backends aer,braket-sv,...]

Starts ONE gateway process (127.0.0.1, port 0, data in a temporary directory) serving the whole
local fleet, one warm instance per backend (aer, aer-noisy-manila, braket-sv, braket-dm,
pennylane-lightning, pennylane-default), and measures for each backend, in the same run:

1. the 5-qubit GHZ, 1024 shots, fixed seed, the same text every call (caches hit), sequential
   `Client.run` calls from one client, against the SDK's own idiomatic call for the same work in
   this process (simulator and circuit built once);
2. a parameter sweep, one PUB of N bindings (16), against the SDK's own sweep call.

Gateway and direct calls are measured in alternating blocks. A backend that fails to start or
to run is printed as FAILED with its reason; the others are still measured. Not a test: nothing
here asserts. See bench/README.md.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import contextlib
import functools
import os
import platform
import re
import signal
import statistics
import sys
import tempfile
import time
import tomllib
import traceback
import warnings
from collections.abc import Callable, Sequence
from dataclasses import astuple, dataclass, field
from importlib.metadata import PackageNotFoundError, entry_points, version
from pathlib import Path
from types import FrameType
from typing import Any, Protocol

import numpy as np
import psutil

from bench.direct import GHZ, GHZ_SHOTS, SEED, SWEEP, sweep_values
from bench.gateway_proc import GatewayProcess
from bench.run_bench import (
    OTHER_LOAD_WARNING,
    CpuMeter,
    CpuSnapshot,
    Latencies,
    header,
    ms,
    out,
    ratio,
    timed,
    verdict,
)

# Issue 9 sets no figure for this comparison; issue 8's target for Aer (a repeated Run's p50
# within 1.5x of the direct call) is applied to every backend's GHZ row for orientation.
ORIENTATION_RATIO = 1.5
GHZ_OUTCOMES = frozenset({"00000", "11111"})
SWEEP_SHOTS_PER_BINDING = 100
RUN_TIMEOUT_S = 60.0
# The fleet imports every SDK (qiskit-ibm-runtime, Braket, PennyLane) in its workers.
START_TIMEOUT_S = 240.0


@dataclass(frozen=True)
class Settings:
    """Iteration counts and time bounds; every loop stops at whichever comes first."""

    warmup: int
    rounds: int  # blocks alternate gateway / direct, so a burst of outside load hits both
    ghz_n: int  # GHZ calls per path, over all rounds
    sweep_n: int  # sweep calls per path, over all rounds
    bindings: int  # of the sweep's one PUB
    breakdown_n: int  # extra gateway Runs per workload for the gateway's own timings
    phase_s: float  # time bound of one path of one workload, over all rounds
    breakdown_s: float  # time bound of the extra Runs of one workload


FULL = Settings(
    warmup=10,
    rounds=4,
    ghz_n=200,
    sweep_n=40,
    bindings=16,
    breakdown_n=20,
    phase_s=10.0,
    breakdown_s=3.0,
)
QUICK = Settings(
    warmup=3,
    rounds=2,
    ghz_n=24,
    sweep_n=4,
    bindings=16,
    breakdown_n=3,
    phase_s=3.0,
    breakdown_s=1.0,
)


@dataclass(frozen=True)
class Backend:
    """One backend of the fleet: its gateway config block and its direct reference."""

    name: str
    adapter: str
    options: str  # TOML inline table
    exact: bool  # noiseless: GHZ outcomes are only 00000 and 11111


FLEET: tuple[Backend, ...] = (
    Backend("aer", "aer", '{ method = "statevector" }', True),
    Backend(
        "aer-noisy-manila",
        "aer",
        '{ method = "density_matrix", noise_from = "FakeManilaV2" }',
        False,
    ),
    Backend("braket-sv", "braket", '{ device = "braket_sv" }', True),
    Backend("braket-dm", "braket", '{ device = "braket_dm" }', True),
    Backend("pennylane-lightning", "pennylane", '{ device = "lightning.qubit" }', True),
    Backend("pennylane-default", "pennylane", '{ device = "default.qubit" }', True),
)


def write_fleet_config(path: Path, data_dir: Path, backends: Sequence[Backend]) -> Path:
    """A gateway config serving `backends`, one warm instance each, listening on port 0."""
    text = f"""\
data_dir = "{data_dir}"

[server]
listen = "127.0.0.1:0"
grace_period_s = 2
"""
    for b in backends:
        text += f"""
[backends.{b.name}]
adapter = "{b.adapter}"
options = {b.options}
pool = {{ min_instances = 1, max_instances = 1 }}
"""
    path.write_text(text)
    tomllib.loads(text)  # a broken config fails here, not as a silent gateway exit
    return path


# --------------------------------------------------------------------------- direct references


class Direct(Protocol):
    """An SDK's own path for the benchmark's work, built once in this process."""

    call: str  # what one GHZ call is, for the output

    def ghz(self) -> dict[str, int]:
        """One GHZ run, 1024 shots; its counts."""
        ...

    def sweep(self, thetas: Sequence[float]) -> int:
        """One sweep over `thetas`, 100 shots each; the number of bindings it returned."""
        ...


class AerDirect:
    """Aer: AerSimulator.run on a circuit transpiled once for it (or for a fake backend)."""

    def __init__(self, noise_from: str | None = None) -> None:
        from qiskit import qasm3
        from qiskit.transpiler import generate_preset_pass_manager
        from qiskit_aer import AerSimulator

        # max_parallel_threads=1 as in the gateway's Aer workers (irrelevant at 5 qubits).
        if noise_from is None:
            self.sim = AerSimulator(max_parallel_threads=1)
            target: Any = self.sim
            self.call = "AerSimulator(max_parallel_threads=1).run(transpiled).result().get_counts()"
        else:
            from qiskit_ibm_runtime import fake_provider

            target = getattr(fake_provider, noise_from)()
            self.sim = AerSimulator.from_backend(
                target, method="density_matrix", max_parallel_threads=1
            )
            self.call = f"AerSimulator.from_backend({noise_from}(), method='density_matrix').run"
        # The gateway's Aer adapter transpiles at optimization_level 1, seed_transpiler 0.
        pm = generate_preset_pass_manager(backend=target, optimization_level=1, seed_transpiler=0)
        self._ghz = pm.run(qasm3.loads(GHZ))
        self._sweep = pm.run(qasm3.loads(SWEEP))
        (self._theta,) = self._sweep.parameters

    def ghz(self) -> dict[str, int]:
        result = self.sim.run(self._ghz, shots=GHZ_SHOTS, seed_simulator=SEED).result()
        counts: dict[str, int] = result.get_counts()
        return counts

    def sweep(self, thetas: Sequence[float]) -> int:
        result = self.sim.run(
            self._sweep,
            shots=SWEEP_SHOTS_PER_BINDING,
            seed_simulator=SEED,
            parameter_binds=[{self._theta: list(thetas)}],
        ).result()
        return len(result.get_counts())


class BraketDirect:
    """Braket: LocalSimulator.run on a braket.circuits.Circuit (no seed: Braket takes none)."""

    def __init__(self, device: str) -> None:
        from braket.circuits import Circuit, FreeParameter
        from braket.devices import LocalSimulator

        self.device = LocalSimulator(device)
        self._ghz = Circuit().h(0).cnot(0, 1).cnot(1, 2).cnot(2, 3).cnot(3, 4)
        theta = FreeParameter("theta")
        self._sweep = Circuit().h(0).rz(0, theta).h(0).cnot(0, 1).cnot(1, 2).cnot(2, 3).cnot(3, 4)
        self.call = f'LocalSimulator("{device}").run(Circuit, shots).result().measurement_counts'

    def ghz(self) -> dict[str, int]:
        with _quiet():
            counts = self.device.run(self._ghz, shots=GHZ_SHOTS).result().measurement_counts
        return dict(counts)

    def sweep(self, thetas: Sequence[float]) -> int:
        # One run per binding: LocalSimulator's ProgramSet (one task, N bindings) was slower
        # (GHZ-5 sweep of 16: ~260 ms against ~150 ms for the loop), run_batch forks a process
        # pool. The faster loop is the reference.
        n = 0
        with _quiet():
            for theta in thetas:
                result = self.device.run(
                    self._sweep, shots=SWEEP_SHOTS_PER_BINDING, inputs={"theta": theta}
                ).result()
                n += 1 if result.measurement_counts else 0
        return n


class PennyLaneDirect:
    """PennyLane: a QNode returning qml.counts(), shots via qml.set_shots, seeded device."""

    def __init__(self, device: str) -> None:
        import pennylane as qml

        dev = qml.device(device, wires=5, seed=SEED)
        wires = range(5)

        def ghz_body() -> Any:
            qml.H(0)
            for i in range(4):
                qml.CNOT([i, i + 1])
            return qml.counts(wires=wires)

        def sweep_body(theta: Any) -> Any:
            qml.H(0)
            qml.RZ(theta, 0)
            qml.H(0)
            for i in range(4):
                qml.CNOT([i, i + 1])
            return qml.counts(wires=wires)

        self._ghz = qml.set_shots(qml.QNode(ghz_body, dev), GHZ_SHOTS)
        # Parameter broadcasting: one QNode call for every binding (faster than a loop).
        self._sweep = qml.set_shots(qml.QNode(sweep_body, dev), SWEEP_SHOTS_PER_BINDING)
        self.call = f'QNode on qml.device("{device}", wires=5) -> qml.counts(), set_shots(1024)'

    def ghz(self) -> dict[str, int]:
        return {str(k): int(v) for k, v in self._ghz().items()}

    def sweep(self, thetas: Sequence[float]) -> int:
        return len(self._sweep(np.asarray(thetas, dtype=np.float64)))


DIRECTS: dict[str, Callable[[], Direct]] = {
    "aer": lambda: AerDirect(),
    "aer-noisy-manila": lambda: AerDirect("FakeManilaV2"),
    "braket-sv": lambda: BraketDirect("braket_sv"),
    "braket-dm": lambda: BraketDirect("braket_dm"),
    "pennylane-lightning": lambda: PennyLaneDirect("lightning.qubit"),
    "pennylane-default": lambda: PennyLaneDirect("default.qubit"),
}


@contextlib.contextmanager
def _quiet() -> Any:
    # braket_dm warns on every noiseless run ("Consider running this circuit on the state
    # vector simulator"); the benchmark runs it noiseless on purpose.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        yield


# --------------------------------------------------------------------------- measurement


@dataclass
class Workload:
    """One workload on one backend: both paths' latencies and the gateway's CPU per job."""

    gateway: Latencies = field(default_factory=Latencies)
    direct: Latencies = field(default_factory=Latencies)
    gw_cpu_ms: float = float("nan")  # gateway process, per job
    wk_cpu_ms: float = float("nan")  # its worker processes, per job
    execute_ms: float = float("nan")  # gateway-reported execute phase, median
    other_cores: float = 0.0
    direct_error: str = ""


@dataclass
class Row:
    backend: str
    call: str = ""
    ghz: Workload | None = None
    sweep: Workload | None = None
    failed: str = ""


class Cpu:
    """CPU used during one or more `with cpu:` blocks, by the gateway tree and by the rest."""

    def __init__(self, meter: CpuMeter) -> None:
        self._meter = meter
        self._start: CpuSnapshot | None = None
        self.sums = [0.0] * 6  # wall, gateway, workers, bench, bench children, machine busy

    def __enter__(self) -> None:
        self._start = self._meter.snapshot()

    def __exit__(self, *exc: object) -> None:
        end, start = self._meter.snapshot(), self._start
        assert start is not None
        for i, (a, b) in enumerate(zip(astuple(end), astuple(start), strict=True)):
            self.sums[i] += a - b

    def per_job_ms(self, jobs: int) -> tuple[float, float]:
        """CPU ms per job of the gateway process and of its worker processes."""
        _, gw, wk, *_ = self.sums
        n = max(1, jobs)
        return gw / n * 1e3, wk / n * 1e3

    def other_cores(self) -> float:
        """Cores that processes other than the gateway and this benchmark kept busy."""
        wall, gw, wk, me, kids, busy = self.sums
        return max(0.0, busy - (gw + wk + me + kids)) / max(1e-9, wall)


def _check_counts(counts: dict[str, int], shots: int, exact: bool, where: str) -> None:
    if sum(counts.values()) != shots or (exact and not set(counts) <= GHZ_OUTCOMES):
        raise RuntimeError(f"unexpected GHZ counts from {where}: {counts}")


def measure(
    s: Settings,
    fn_gateway: Callable[[], object],
    fn_direct: Callable[[], object] | None,
    n: int,
    meter: CpuMeter,
) -> Workload:
    """Warm-up, then `s.rounds` alternating blocks of gateway and direct calls."""
    w = Workload()
    # At least one call each (the first may compile, build caches or start threads).
    warm_until = time.monotonic() + s.phase_s / 4
    for i in range(s.warmup):
        if i and time.monotonic() >= warm_until:
            break
        fn_gateway()
        if fn_direct is not None:
            fn_direct()
    per_round = max(1, n // s.rounds)
    cpu, cpu_direct = Cpu(meter), Cpu(meter)
    gw_deadline = direct_deadline = time.monotonic() + s.phase_s

    def gateway_block() -> None:
        with cpu:
            timed(fn_gateway, per_round, gw_deadline, w.gateway)

    def direct_block() -> None:
        if fn_direct is not None:
            with cpu_direct:
                timed(fn_direct, per_round, direct_deadline, w.direct)

    for r in range(s.rounds):
        if r == 0:
            gw_deadline = time.monotonic() + s.phase_s
            gateway_block()
            direct_deadline = time.monotonic() + s.phase_s
            direct_block()
        elif r % 2:
            direct_block()
            gateway_block()
        else:
            gateway_block()
            direct_block()
    w.gw_cpu_ms, w.wk_cpu_ms = cpu.per_job_ms(w.gateway.n)
    w.other_cores = max(cpu.other_cores(), cpu_direct.other_cores() if w.direct.n else 0.0)
    return w


def bench_backend(
    s: Settings,
    address: str,
    backend: Backend,
    direct: Direct | None,
    direct_error: str,
    meter: CpuMeter,
) -> Row:
    from qgateway import Client, sampler_pub

    row = Row(backend.name, call=direct.call if direct is not None else "")
    thetas = [v[0] for v in sweep_values(s.bindings)]
    with Client(address) as client:

        def gw_ghz() -> None:
            client.run(GHZ, backend=backend.name, shots=GHZ_SHOTS, seed=SEED, timeout=RUN_TIMEOUT_S)

        def gw_sweep() -> None:
            result = client.run(
                SWEEP,
                backend=backend.name,
                shots=SWEEP_SHOTS_PER_BINDING,
                seed=SEED,
                parameter_values=[[t] for t in thetas],
                timeout=RUN_TIMEOUT_S,
            )
            if result.sampler(0).num_bindings != len(thetas):
                raise RuntimeError("the sweep came back with the wrong number of bindings")

        first = client.run(
            GHZ, backend=backend.name, shots=GHZ_SHOTS, seed=SEED, timeout=RUN_TIMEOUT_S
        )
        _check_counts(first.counts(), GHZ_SHOTS, backend.exact, f"the gateway's {backend.name}")

        ghz_direct: Callable[[], object] | None = None
        sweep_direct: Callable[[], object] | None = None
        if direct is not None:
            try:
                _check_counts(direct.ghz(), GHZ_SHOTS, backend.exact, row.call)
                if direct.sweep(thetas) != len(thetas):
                    raise RuntimeError("the direct sweep returned the wrong number of bindings")
                ghz_direct = direct.ghz
                sweep_direct = functools.partial(direct.sweep, thetas)
            except Exception as exc:  # the gateway side is still measured
                direct_error = f"{type(exc).__name__}: {exc}"
                traceback.print_exc()

        row.ghz = measure(s, gw_ghz, ghz_direct, s.ghz_n, meter)
        row.sweep = measure(s, gw_sweep, sweep_direct, s.sweep_n, meter)
        for w in (row.ghz, row.sweep):
            w.direct_error = direct_error

        # Where a gateway Run's time goes, as the gateway reports it (an extra pass).
        pubs = {
            "ghz": sampler_pub(GHZ, shots=GHZ_SHOTS),
            "sweep": sampler_pub(
                SWEEP, shots=SWEEP_SHOTS_PER_BINDING, parameter_values=[[t] for t in thetas]
            ),
        }
        for name, w in (("ghz", row.ghz), ("sweep", row.sweep)):
            execute = []
            deadline = time.monotonic() + s.breakdown_s
            for _ in range(s.breakdown_n):
                if time.monotonic() >= deadline:
                    break
                job = client.run_pubs(
                    [pubs[name]], backend=backend.name, seed=SEED, timeout=RUN_TIMEOUT_S
                )
                t = job.timings
                if t is not None and t.execute is not None:
                    execute.append(t.execute.total_seconds())
            if execute:
                w.execute_ms = statistics.median(execute) * 1e3
    return row


# --------------------------------------------------------------------------- starting the fleet


def registered_adapters() -> set[str]:
    return {ep.name for ep in entry_points(group="qgateway.backends")}


def _blame(log: str, names: Sequence[str]) -> str | None:
    """The one backend a failed start's log names, if exactly one is named."""
    named = {n for n in names if re.search(rf"(?<![\w-]){re.escape(n)}(?![\w-])", log)}
    return named.pop() if len(named) == 1 else None


def _reason(exc: BaseException, log_path: Path) -> str:
    """The last error line of a failed start (the log's, else the exception's)."""
    log = log_path.read_text(errors="replace") if log_path.exists() else ""
    lines = [ln.strip() for ln in log.splitlines() if ln.strip()]
    for ln in reversed(lines):
        if re.search(r"error|Error|exception|Exception|failed|unknown|invalid", ln):
            return ln[-300:]
    return f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"[:300]


def start_fleet(
    root: Path, backends: list[Backend], failed: dict[str, str]
) -> tuple[GatewayProcess | None, list[Backend], float]:
    """Starts one gateway for `backends`; a backend that keeps it from starting is left out.

    A failed start is blamed on the one backend its log names and retried without it. When the
    log names none (or several), each backend is started alone once to find the culprits.
    Returns the gateway (None if nothing started), the backends it serves and its start time.
    """
    attempt = 0
    remaining = list(backends)
    isolated = False
    while remaining:
        attempt += 1
        data = root / f"data-{attempt}"
        config = write_fleet_config(root / f"gateway-{attempt}.toml", data, remaining)
        log_path = root / f"gateway-{attempt}.log"
        t0 = time.perf_counter()
        try:
            gateway = GatewayProcess.start(config, log_path, start_timeout=START_TIMEOUT_S)
            return gateway, remaining, time.perf_counter() - t0
        except (RuntimeError, TimeoutError) as exc:
            reason = _reason(exc, log_path)
            log = log_path.read_text(errors="replace") if log_path.exists() else ""
            culprit = _blame(log, [b.name for b in remaining])
            if len(remaining) == 1:
                culprit = remaining[0].name
            if culprit is not None:
                out(f"  gateway did not start: {culprit} failed ({reason}); retrying without it")
                failed[culprit] = f"gateway start failed: {reason}"
                remaining = [b for b in remaining if b.name != culprit]
                continue
            if isolated:
                out(f"  gateway did not start with backends that each started alone: {reason}")
                for b in remaining:
                    failed[b.name] = f"gateway start failed with the others: {reason}"
                return None, [], 0.0
            out(f"  gateway did not start ({reason}); starting each backend alone to find why")
            isolated = True
            ok: list[Backend] = []
            alone: dict[str, str] = {}
            for b in remaining:
                attempt += 1
                one = write_fleet_config(
                    root / f"gateway-{attempt}.toml", root / f"data-{attempt}", [b]
                )
                one_log = root / f"gateway-{attempt}.log"
                try:
                    GatewayProcess.start(one, one_log, start_timeout=START_TIMEOUT_S).terminate()
                    ok.append(b)
                except (RuntimeError, TimeoutError) as one_exc:
                    alone[b.name] = _reason(one_exc, one_log)
            # Every backend failing alone with one and the same error is the gateway's failure
            # (e.g. a broken checkout), not each backend's.
            everyone = not ok and len(remaining) > 1 and len(set(alone.values())) == 1
            for name, why in alone.items():
                failed[name] = (
                    f"the gateway does not start with any backend alone: {why}"
                    if everyone
                    else f"gateway start failed: {why}"
                )
            remaining = ok
    return None, [], 0.0


# --------------------------------------------------------------------------- output


def _fmt(value: float, width: int = 8) -> str:
    return f"{'-':>{width}}" if value != value else f"{value:{width}.2f}"  # NaN -> "-"


TABLE_HEAD = (
    f"  {'backend':<21}{'work':<7}{'gw n':>5}{'gw p50':>8}{'gw p99':>8}{'dir n':>6}"
    f"{'dir p50':>8}{'dir p99':>8}{'p50 x':>7}{'p99 x':>7}{'exec':>8}{'CPU gw':>8}{'CPU wk':>8}"
)


def table_rows(row: Row, s: Settings) -> list[str]:
    if row.failed:
        return [f"  {row.backend:<21}FAILED: {row.failed}"]
    lines = []
    for label, w in (("ghz", row.ghz), (f"sw{s.bindings}", row.sweep)):
        if w is None:
            continue
        r50, r99 = ratio(w.gateway.p50, w.direct.p50), ratio(w.gateway.p99, w.direct.p99)
        notes = []
        if w.gateway.limited or w.direct.limited:
            notes.append("time bound hit")
        if w.other_cores > OTHER_LOAD_WARNING:
            notes.append(f"SKEWED: other processes {w.other_cores:.2f} cores")
        if w.direct_error:
            notes.append(f"direct FAILED: {w.direct_error[:120]}")
        line = (
            f"  {row.backend:<21}{label:<7}{w.gateway.n:>5}{ms(w.gateway.p50)}{ms(w.gateway.p99)}"
            f"{w.direct.n:>6}{_fmt(w.direct.p50 * 1e3)}{_fmt(w.direct.p99 * 1e3)}"
            f"{_fmt(r50, 6)}x{_fmt(r99, 6)}x{_fmt(w.execute_ms)}{_fmt(w.gw_cpu_ms)}"
            f"{_fmt(w.wk_cpu_ms)}"
        )
        lines.append(line + (f"  [{'; '.join(notes)}]" if notes else ""))
    return lines


def print_table(rows: Sequence[Row], s: Settings) -> None:
    out(TABLE_HEAD)
    for row in rows:
        for line in table_rows(row, s):
            out(line)


def _versions() -> str:
    parts = [f"python {platform.python_version()}"]
    for dist in (
        "qiskit",
        "qiskit-aer",
        "qiskit-ibm-runtime",
        "amazon-braket-sdk",
        "amazon-braket-default-simulator",
        "pennylane",
        "pennylane-lightning",
    ):
        try:
            parts.append(f"{dist} {version(dist)}")
        except PackageNotFoundError:
            parts.append(f"{dist} ?")
    return ", ".join(parts)


def _raise_on_sigterm(signum: int, frame: FrameType | None) -> None:
    raise SystemExit(128 + signum)


# --------------------------------------------------------------------------- main


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.fleet_bench", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="smoke run: small counts")
    parser.add_argument(
        "--backends",
        default=",".join(b.name for b in FLEET),
        help="comma-separated subset of the fleet (default: all)",
    )
    args = parser.parse_args(argv)
    s = QUICK if args.quick else FULL
    wanted = [n.strip() for n in args.backends.split(",") if n.strip()]
    unknown = [n for n in wanted if n not in {b.name for b in FLEET}]
    if unknown:
        parser.error(f"unknown backends {unknown}; the fleet: {[b.name for b in FLEET]}")
    signal.signal(signal.SIGTERM, _raise_on_sigterm)
    started = time.monotonic()

    out(f"qgateway fleet benchmark ({'quick' if args.quick else 'full'} run)")
    out(f"  {_versions()}")
    load1, load5, _ = os.getloadavg()
    out(
        f"  {psutil.cpu_count()} cores, load average {load1:.2f} / {load5:.2f} (1 / 5 min) "
        "before start; other processes' load skews every figure"
    )
    out(
        f"  work: GHZ-5, {GHZ_SHOTS} shots, seed {SEED}, same text every call; sweep: one PUB of "
        f"{s.bindings} bindings x {SWEEP_SHOTS_PER_BINDING} shots; sequential, one client"
    )

    failed: dict[str, str] = {}
    registered = registered_adapters()
    candidates = []
    for b in FLEET:
        if b.name not in wanted:
            continue
        if b.adapter not in registered:
            failed[b.name] = f"adapter {b.adapter!r} is not registered (qgateway.backends)"
        else:
            candidates.append(b)

    rows: dict[str, Row] = {}
    with contextlib.ExitStack() as stack:
        root = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="qgateway-fleet-")))
        # The gateway starts (its workers import every SDK) while this process builds its
        # direct references: the two waits overlap.
        starter = stack.enter_context(concurrent.futures.ThreadPoolExecutor(1))
        starting = starter.submit(start_fleet, root, candidates, failed)
        gateway: GatewayProcess | None = None
        try:
            directs: dict[str, Direct | str] = {}
            for b in candidates:
                t0 = time.perf_counter()
                try:
                    directs[b.name] = DIRECTS[b.name]()
                    out(f"  direct {b.name}: built in {time.perf_counter() - t0:.1f} s")
                except Exception as exc:  # the gateway side is still measured
                    directs[b.name] = f"{type(exc).__name__}: {exc}"
                    traceback.print_exc()
            gateway, serving, ready_s = starting.result()
            if gateway is not None:
                out(
                    f"  gateway pid {gateway.pid} on {gateway.address}, serving "
                    f"{', '.join(b.name for b in serving)} (ready in {ready_s:.1f} s)"
                )
                meter = CpuMeter(gateway.pid)
                for b in serving:
                    header(f"{b.name}  (adapter {b.adapter}, options {b.options})")
                    built = directs[b.name]
                    direct = None if isinstance(built, str) else built
                    direct_error = built if isinstance(built, str) else ""
                    out(f"  direct: {direct.call if direct else 'FAILED: ' + direct_error}")
                    try:
                        row = bench_backend(s, gateway.address, b, direct, direct_error, meter)
                    except Exception as exc:  # one broken backend must not hide the others
                        row = Row(b.name, failed=f"{type(exc).__name__}: {exc}"[:400])
                        traceback.print_exc()
                    rows[b.name] = row
                    print_table([row], s)
        finally:
            if gateway is None:
                # Interrupted before the start finished: wait for it, then stop what started.
                with contextlib.suppress(Exception):
                    gateway = starting.result()[0]
                if gateway is not None:
                    gateway.terminate()
                    gateway = None
            if gateway is not None:
                code = gateway.terminate()
                if code != 0:
                    failed.setdefault("(gateway)", f"exit status {code}")
                    log = gateway.log_path.read_text(errors="replace")[-3000:]
                    out(f"\ngateway exited with status {code}; log tail:\n{log}")

    ordered: list[Row] = []
    for b in FLEET:
        if b.name in rows:
            ordered.append(rows[b.name])
        elif b.name in failed:
            ordered.append(Row(b.name, failed=failed[b.name]))
    header("The fleet: Run via the gateway vs the SDK's own direct call (ms)")
    print_table(ordered, s)
    out(
        "  gw = Client.run through the gateway; dir = the SDK's own call in this process; "
        "p50 x / p99 x = gateway / direct;"
    )
    out(
        "  exec = gateway-reported execute phase (median): the RUNNING commit to the worker's "
        "answer; the worker starts with that commit, so a short job shows ~0"
    )
    out("  CPU gw / CPU wk = CPU ms per Run of the gateway process / of its worker processes")
    out(
        f"  for orientation (issue 8's Aer target, not an issue-9 target): GHZ Run p50 <= "
        f"{ORIENTATION_RATIO:g}x direct"
    )
    for row in ordered:
        if row.failed or row.ghz is None or not row.ghz.direct.n:
            continue
        r = ratio(row.ghz.gateway.p50, row.ghz.direct.p50)
        out(f"    {verdict(r <= ORIENTATION_RATIO)}  {row.backend:<21}{r:6.2f}x")
    broken = [r.backend for r in ordered if r.failed] + [
        r.backend for r in ordered if r.ghz is not None and r.ghz.direct_error
    ]
    if "(gateway)" in failed:
        broken.append(f"gateway exit: {failed['(gateway)']}")
    if broken:
        out(f"  FAILED: {', '.join(broken)}")
    out(f"\n  total benchmark time {time.monotonic() - started:.0f} s")
    return 1 if broken else 0


if __name__ == "__main__":
    sys.exit(main())
