"""Before/after in one run: a baseline commit's gateway against the current one, alternately.

    .venv/bin/python -m bench.run_bench --baseline REF [--candidate REF] [--quick]

The baseline REF is checked out into a git worktree under .bench-baseline/<commit> (gitignored)
with its own virtualenv, synced from ITS OWN uv.lock by the pinned uv in .tools/ (uv's cache
makes a repeated sync take about a second). The candidate is this checkout as it is on disk
(uncommitted edits included), or another REF checked out the same way with --candidate.

Both gateways run at once, each from its own tree with its own interpreter (same configuration:
bench.gateway_proc.write_config), and each is driven by bench/ab_driver.py running under that
tree's interpreter, i.e. through that tree's own Python client. Every workload is measured in
rounds that alternate the order (baseline, candidate, in-process / candidate, baseline,
in-process, ...), so a burst of load from elsewhere on this VM falls on both sides alike.

Per workload and side it prints Run p50/p99, jobs/s with 64 concurrent clients, and CPU
milliseconds per job split into the gateway process and its worker processes, read from
/proc/<pid>/stat (utime + stime of the gateway, + cutime/cstime of children it reaped, + every
live descendant) right before and right after each measured window. On a VM with steal time
the CPU figures are the steady ones; wall-clock figures move with the neighbours, and the
steal and other-process load of each window are printed beside them.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench.direct import Direct, distinct_ghz
from bench.gateway_proc import write_config
from gateway.testing import READY_PREFIX, _drain, _read_line, _stop

REPO = Path(__file__).resolve().parent.parent
WORKTREES = REPO / ".bench-baseline"
DRIVER = Path(__file__).resolve().parent / "ab_driver.py"
UV = REPO / ".tools" / "bin" / "uv"
TICK_S = 1.0 / os.sysconf("SC_CLK_TCK")
REPLY_TIMEOUT_S = 300.0


def out(line: str = "") -> None:
    print(line, flush=True)


# --------------------------------------------------------------------------- the trees


@dataclass(frozen=True)
class Tree:
    """A checkout under test: where it is, its interpreter, and how to name it."""

    label: str
    path: Path
    python: Path
    describe: str


def _git(*args: str, cwd: Path = REPO) -> str:
    return subprocess.run(
        ["git", *args], cwd=cwd, check=True, capture_output=True, text=True
    ).stdout.strip()


def checkout(ref: str, label: str) -> Tree:
    """REF in a worktree under .bench-baseline/, with a virtualenv synced from its uv.lock."""
    sha = _git("rev-parse", "--verify", f"{ref}^{{commit}}")
    path = WORKTREES / sha[:12]
    if not (path / ".git").exists():
        WORKTREES.mkdir(exist_ok=True)
        _git("worktree", "prune")
        _git("worktree", "add", "--detach", "--force", str(path), sha)
    if not UV.exists():
        raise RuntimeError(f"{UV} is missing: run `make venv` first (it installs the pinned uv)")
    env = {
        k: v for k, v in os.environ.items() if k not in ("VIRTUAL_ENV", "UV_PROJECT_ENVIRONMENT")
    }
    t0 = time.perf_counter()
    subprocess.run([str(UV), "sync", "--frozen", "--quiet"], cwd=path, check=True, env=env)
    subject = _git("log", "-1", "--format=%s", sha)[:70]
    out(
        f"  {label}: {sha[:12]} ({subject}) in {path}, venv synced in "
        f"{time.perf_counter() - t0:.1f} s"
    )
    return Tree(label, path, path / ".venv" / "bin" / "python", f"{sha[:12]}")


def directory(path: Path, label: str) -> Tree:
    """A checkout elsewhere on disk, as it is, with its own .venv (for trying a change)."""
    path = path.resolve()
    head = _git("rev-parse", "--short=12", "HEAD", cwd=path)
    dirty = bool(_git("status", "--porcelain", "--untracked-files=no", cwd=path))
    describe = f"{head}{'+edits' if dirty else ''}"
    out(f"  {label}: {path}, {describe}")
    return Tree(label, path, path / ".venv" / "bin" / "python", describe)


def this_checkout(label: str) -> Tree:
    """The checkout this benchmark runs from, uncommitted edits included."""
    head = _git("rev-parse", "--short=12", "HEAD")
    dirty = bool(_git("status", "--porcelain", "--untracked-files=no"))
    describe = f"{head}{'+working tree' if dirty else ''}"
    out(f"  {label}: this checkout, {describe}")
    return Tree(label, REPO, Path(sys.executable), describe)


# --------------------------------------------------------------------------- CPU from /proc


def _stat(pid: int) -> tuple[int, float, float] | None:
    """(ppid, own CPU seconds, reaped children's CPU seconds) of a process, or None."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # The command name may hold spaces and parentheses: fields start after the last ')'.
    fields = text[text.rindex(")") + 2 :].split()
    ppid = int(fields[1])
    utime, stime, cutime, cstime = (int(x) for x in fields[11:15])
    return ppid, (utime + stime) * TICK_S, (cutime + cstime) * TICK_S


@dataclass(frozen=True)
class Cpu:
    """CPU seconds so far: gateway process, its workers (alive or reaped), machine-wide."""

    gateway: float
    workers: float
    client: float  # the driver process (the load generator)
    machine_busy: float
    steal: float
    wall: float

    def __sub__(self, other: Cpu) -> Cpu:
        return Cpu(
            self.gateway - other.gateway,
            self.workers - other.workers,
            self.client - other.client,
            self.machine_busy - other.machine_busy,
            self.steal - other.steal,
            self.wall - other.wall,
        )

    def __add__(self, other: Cpu) -> Cpu:
        return Cpu(
            self.gateway + other.gateway,
            self.workers + other.workers,
            self.client + other.client,
            self.machine_busy + other.machine_busy,
            self.steal + other.steal,
            self.wall + other.wall,
        )


ZERO = Cpu(0.0, 0.0, 0.0, 0.0, 0.0, 0.0)
CORES = os.cpu_count() or 1


def _machine() -> tuple[float, float]:
    """Seconds of busy (non-idle, non-steal) and stolen CPU of the machine, from /proc/stat."""
    with open("/proc/stat", encoding="ascii") as f:
        values = [int(x) for x in f.readline().split()[1:]]
    user, nice, system, _idle, _iowait, irq, softirq, steal = (values + [0] * 8)[:8]
    return (user + nice + system + irq + softirq) * TICK_S, steal * TICK_S


def cpu_of(root: int, client: int | None = None) -> Cpu:
    """The gateway's CPU and that of all its descendants, alive or reaped by it, and the
    client process's own."""
    parents: dict[int, int] = {}
    own: dict[int, float] = {}
    reaped = 0.0
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        stat = _stat(int(entry.name))
        if stat is None:
            continue
        pid = int(entry.name)
        parents[pid], own[pid] = stat[0], stat[1]
        if pid == root:
            reaped = stat[2]
    children: dict[int, list[int]] = {}
    for pid, ppid in parents.items():
        children.setdefault(ppid, []).append(pid)
    workers, stack = 0.0, list(children.get(root, []))
    while stack:
        pid = stack.pop()
        workers += own.get(pid, 0.0)
        stack.extend(children.get(pid, []))
    busy, steal = _machine()
    client_s = own.get(client, 0.0) if client is not None else 0.0
    return Cpu(own.get(root, 0.0), workers + reaped, client_s, busy, steal, time.monotonic())


# --------------------------------------------------------------------------- one side


class Side:
    """One gateway (from its tree) and the driver that loads it (with that tree's client)."""

    def __init__(
        self,
        tree: Tree,
        root: Path,
        workers: int,
        optimization_level: int,
        entry: Sequence[str] = ("-m", "gateway"),
    ) -> None:
        self.tree = tree
        self.dir = root / tree.label
        self.dir.mkdir()
        config = write_config(
            self.dir / "gateway.toml",
            self.dir / "data",
            workers=workers,
            max_parallel_threads=1,
            optimization_level=optimization_level,
        )
        env = {
            k: v
            for k, v in os.environ.items()
            if not k.startswith("QGATEWAY_") and k not in ("VIRTUAL_ENV", "PYTHONPATH")
        }
        self.log_path = self.dir / "gateway.log"
        with self.log_path.open("a") as log:
            # cwd is the tree, so `-m gateway` imports that tree's package.
            self.gateway = subprocess.Popen(
                [str(tree.python), *entry, "serve", "--config", str(config)],
                stdout=subprocess.PIPE,
                stderr=log,
                stdin=subprocess.DEVNULL,
                text=True,
                env=env,
                cwd=tree.path,
            )
        try:
            self._start_driver(env)
        except BaseException:
            _stop(self.gateway, 10.0)  # a side that failed to start leaves no process behind
            if getattr(self, "driver", None) is not None and self.driver.poll() is None:
                self.driver.kill()
            raise

    def _start_driver(self, env: dict[str, str]) -> None:
        tree = self.tree
        line = _read_line(self.gateway, 180.0)
        if not line.startswith(READY_PREFIX):
            tail = self.log_path.read_text(errors="replace")[-3000:]
            raise RuntimeError(f"{tree.label} gateway did not start: {line!r}\n{tail}")
        shutil.copy(DRIVER, self.dir / "ab_driver.py")  # run from here: no bench/ on sys.path
        self.address = line[len(READY_PREFIX) :].strip()
        threading.Thread(target=_drain, args=(self.gateway,), daemon=True).start()
        self.driver = subprocess.Popen(
            [str(tree.python), str(self.dir / "ab_driver.py"), self.address],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            env=env,
            cwd=self.dir,
        )
        ready = self._reply()
        if not ready.get("ready"):
            raise RuntimeError(f"{tree.label} driver did not start: {ready}")

    @property
    def pid(self) -> int:
        return self.gateway.pid

    def _reply(self) -> dict[str, Any]:
        assert self.driver.stdout is not None
        line = self.driver.stdout.readline()
        if not line:
            raise RuntimeError(f"{self.tree.label} driver exited ({self.driver.poll()})")
        reply: dict[str, Any] = json.loads(line)
        if "error" in reply:
            raise RuntimeError(f"{self.tree.label} driver: {reply['error']}")
        return reply

    def call(self, op: str, **args: Any) -> dict[str, Any]:
        assert self.driver.stdin is not None
        self.driver.stdin.write(json.dumps({"op": op, **args}) + "\n")
        self.driver.stdin.flush()
        return self._reply()

    def measured(self, op: str, **args: Any) -> tuple[dict[str, Any], Cpu]:
        """One driver command, with the gateway's CPU over exactly that window."""
        before = cpu_of(self.pid, self.driver.pid)
        reply = self.call(op, **args)
        return reply, cpu_of(self.pid, self.driver.pid) - before

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.call_nowait_quit()
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.driver.wait(10)
        if self.driver.poll() is None:
            self.driver.kill()
        code = _stop(self.gateway, 30.0)
        if code != 0:
            tail = self.log_path.read_text(errors="replace")[-2000:]
            out(f"  {self.tree.label} gateway exited with status {code}; log tail:\n{tail}")

    def call_nowait_quit(self) -> None:
        assert self.driver.stdin is not None
        self.driver.stdin.write(json.dumps({"op": "quit"}) + "\n")
        self.driver.stdin.close()


# --------------------------------------------------------------------------- figures


@dataclass
class Figures:
    """What one side did over all rounds of one workload."""

    samples: list[float] = field(default_factory=list)
    jobs: int = 0
    elapsed: float = 0.0
    cpu: Cpu = ZERO
    process_cpu: float = 0.0  # in-process path: this process's CPU seconds
    errors: dict[str, int] = field(default_factory=dict)

    def add(self, samples: Sequence[float], jobs: int, elapsed: float, cpu: Cpu) -> None:
        self.samples.extend(samples)
        self.jobs += jobs
        self.elapsed += elapsed
        self.cpu = self.cpu + cpu

    def pct(self, q: float) -> float:
        if not self.samples:
            return float("nan")
        ordered = sorted(self.samples)
        return ordered[min(len(ordered) - 1, int(q / 100 * len(ordered)))]

    def per_job_ms(self, seconds: float) -> float:
        return seconds / max(1, self.jobs) * 1e3

    @property
    def rate(self) -> float:
        return self.jobs / self.elapsed if self.elapsed > 0 else float("nan")

    def other_cores(self) -> float:
        """Cores busy with anything but this gateway and its client."""
        c = self.cpu
        return max(0.0, c.machine_busy - c.gateway - c.workers - c.client) / max(1e-9, c.wall)

    def steal_cores(self) -> float:
        return self.cpu.steal / max(1e-9, self.cpu.wall)


@dataclass(frozen=True)
class Settings:
    rounds: int
    latency_n: int  # Runs per side per round
    load_clients: int
    load_jobs: int  # per side per round
    load_s: float
    load_distinct_jobs: int


QUICK = Settings(
    rounds=2, latency_n=40, load_clients=64, load_jobs=400, load_s=8.0, load_distinct_jobs=150
)
FULL = Settings(
    rounds=4, latency_n=150, load_clients=64, load_jobs=1500, load_s=20.0, load_distinct_jobs=400
)


def _orders(sides: Sequence[Side], rounds: int) -> Iterator[tuple[int, list[Side]]]:
    """Round r measures the sides in turn, reversing the order every other round."""
    for r in range(rounds):
        yield r, list(sides) if r % 2 == 0 else list(reversed(sides))


def _fmt(value: float, spec: str = "8.2f") -> str:
    return format(value, spec) if value == value else f"{'-':>8}"


def _table(
    title: str,
    sides: Sequence[Side],
    figures: Sequence[Figures],
    rows: Sequence[tuple[str, Callable[[Figures], float]]],
) -> None:
    out(f"  {title}")
    names = [f"{s.tree.label} {s.tree.describe}" for s in sides]
    out(f"    {'':<40}" + "".join(f"{n[:26]:>28}" for n in names) + f"{'after/before':>14}")
    for label, get in rows:
        values = [get(f) for f in figures]
        change = values[-1] / values[0] if values[0] else float("nan")
        out(
            f"    {label:<40}"
            + "".join(f"{_fmt(v, '28.2f')}" for v in values)
            + f"{_fmt(change, '13.2f')}x"
        )


# --------------------------------------------------------------------------- workloads


def latency(
    s: Settings, sides: Sequence[Side], direct: Direct, kind: str, counter: Iterator[int]
) -> tuple[list[Figures], Figures]:
    figures = [Figures() for _ in sides]
    ip = Figures()
    index = {id(side): i for i, side in enumerate(sides)}
    if kind == "repeated":
        ip_call: Callable[[], object] = direct.run_prepared
    else:

        def ip_call() -> object:
            return direct.run_parse_pm(distinct_ghz(next(counter)))

    for _ in range(5):  # warm-up of the in-process path
        ip_call()
    for side in sides:  # and of each gateway (caches, connections)
        side.call("latency", kind=kind, n=10, start=_skip(counter, 10))
    for _, order in _orders(sides, s.rounds):
        for side in order:
            start = _skip(counter, s.latency_n)
            reply, cpu = side.measured("latency", kind=kind, n=s.latency_n, start=start)
            samples = reply["samples"]
            figures[index[id(side)]].add(samples, len(samples), sum(samples), cpu)
        before, p0 = cpu_of(os.getpid()), time.process_time()
        samples = []
        for _ in range(s.latency_n):
            t0 = time.perf_counter()
            ip_call()
            samples.append(time.perf_counter() - t0)
        ip.process_cpu += time.process_time() - p0
        ip.add(samples, len(samples), sum(samples), cpu_of(os.getpid()) - before)
    return figures, ip


def _skip(counter: Iterator[int], n: int) -> int:
    """The first of n fresh indices (distinct circuits never repeat across blocks)."""
    first = next(counter)
    for _ in range(n - 1):
        next(counter)
    return first


def load(s: Settings, sides: Sequence[Side], kind: str, counter: Iterator[int]) -> list[Figures]:
    figures = [Figures() for _ in sides]
    index = {id(side): i for i, side in enumerate(sides)}
    jobs = s.load_jobs if kind == "repeated" else s.load_distinct_jobs
    for _, order in _orders(sides, s.rounds):
        for side in order:
            start = _skip(counter, jobs)
            reply, cpu = side.measured("load", kind=kind, jobs=jobs, seconds=s.load_s, start=start)
            f = figures[index[id(side)]]
            f.add(reply["samples"], reply["done"], reply["elapsed"], cpu)
            for key, n in reply["errors"].items():
                f.errors[key] = f.errors.get(key, 0) + n
    return figures


def report_latency(
    kind: str, sides: Sequence[Side], figures: Sequence[Figures], ip: Figures
) -> None:
    what = (
        "REPEATED circuit (same GHZ-5 text every Run: parse/transpile caches hit)"
        if kind == "repeated"
        else "DISTINCT circuits (a new rz angle every Run: caches miss, compiled in a worker)"
    )
    ip_name = (
        "pre-transpiled AerSimulator.run (best in-process path)"
        if kind == "repeated"
        else "qasm3.loads + cached pass manager + AerSimulator.run"
    )
    out()
    out(f"== Run latency, {what}, sequential, one client")
    ip50 = ip.pct(50)
    out(
        f"  in-process {ip_name}: p50 {ip50 * 1e3:.2f} ms, p99 {ip.pct(99) * 1e3:.2f} ms, "
        f"CPU {ip.process_cpu / max(1, ip.jobs) * 1e3:.2f} ms per job ({ip.jobs} calls)"
    )
    _table(
        f"gateway Client.run ({figures[0].jobs} Runs per side)",
        sides,
        figures,
        [
            ("Run p50 ms", lambda f: f.pct(50) * 1e3),
            ("Run p99 ms", lambda f: f.pct(99) * 1e3),
            ("p50 / in-process p50 (target <= 1.5x)", lambda f: f.pct(50) / ip50),
            ("CPU ms/job, gateway process", lambda f: f.per_job_ms(f.cpu.gateway)),
            ("CPU ms/job, worker processes", lambda f: f.per_job_ms(f.cpu.workers)),
            ("CPU ms/job, gateway + workers", _cpu_per_job),
            ("CPU ms/job, the client (not counted)", lambda f: f.per_job_ms(f.cpu.client)),
        ],
    )
    _noise([*figures, ip])


def report_load(kind: str, s: Settings, sides: Sequence[Side], figures: Sequence[Figures]) -> None:
    what = "REPEATED circuit" if kind == "repeated" else "DISTINCT circuits"
    out()
    out(f"== Throughput, {what}, {s.load_clients} concurrent AsyncClients (one channel each)")
    _table(
        f"jobs per side: {', '.join(str(f.jobs) for f in figures)}",
        sides,
        figures,
        [
            ("jobs/s", lambda f: f.rate),
            ("Run p50 ms under load", lambda f: f.pct(50) * 1e3),
            ("Run p99 ms under load", lambda f: f.pct(99) * 1e3),
            ("CPU ms/job, gateway process", lambda f: f.per_job_ms(f.cpu.gateway)),
            ("CPU ms/job, worker processes", lambda f: f.per_job_ms(f.cpu.workers)),
            ("CPU ms/job, gateway + workers", _cpu_per_job),
            ("CPU ms/job, the client (not counted)", lambda f: f.per_job_ms(f.cpu.client)),
            (f"jobs/s gateway CPU allows, {CORES} cores", _cpu_bound_rate),
        ],
    )
    for side, f in zip(sides, figures, strict=True):
        if f.errors:
            out(f"    {side.tree.label} errors: {f.errors}")
    _noise(figures)


def _cpu_per_job(f: Figures) -> float:
    return f.per_job_ms(f.cpu.gateway + f.cpu.workers)


def _cpu_bound_rate(f: Figures) -> float:
    """Jobs per second if the gateway and its workers had every core to themselves."""
    return CORES * 1e3 / max(1e-9, _cpu_per_job(f))


def _noise(figures: Sequence[Figures]) -> None:
    out(
        "    noise (cores stolen by the hypervisor / busy outside this gateway tree, per window "
        "set): " + ", ".join(f"{f.steal_cores():.2f}/{f.other_cores():.2f}" for f in figures)
    )


# --------------------------------------------------------------------------- main

TARGET_CPU_MS = 4.0
TARGET_JOBS_PER_S = 400.0
TARGET_RATIO = 1.5


def run(
    baseline: str,
    candidate: str | None,
    *,
    quick: bool,
    workers: int,
    optimization_level: int,
) -> int:
    """Measures the baseline REF against the candidate (this checkout when None); see above."""
    import itertools

    s = QUICK if quick else FULL
    started = time.monotonic()
    load1, load5, _ = os.getloadavg()
    out(f"qgateway A/B benchmark ({'quick' if quick else 'full'} run): before/after in one run")
    out(
        f"  {CORES} cores, load average {load1:.2f} / {load5:.2f} before start; {s.rounds} rounds "
        "per workload, alternating which side goes first"
    )
    trees = [
        checkout(baseline, "before"),
        this_checkout("after")
        if not candidate
        else directory(Path(candidate), "after")
        if Path(candidate).is_dir()
        else checkout(candidate, "after"),
    ]
    with contextlib.ExitStack() as stack:
        root = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="qgateway-ab-")))
        sides: list[Side] = []
        for tree in trees:
            t0 = time.perf_counter()
            side = Side(tree, root, workers, optimization_level)
            stack.callback(side.close)
            sides.append(side)
            out(
                f"  {tree.label} gateway pid {side.pid} on {side.address} ({workers} Aer workers, "
                f"max_parallel_threads=1), ready in {time.perf_counter() - t0:.1f} s"
            )
        direct = Direct(optimization_level)
        counter = itertools.count()

        lat_rep, ip_rep = latency(s, sides, direct, "repeated", counter)
        report_latency("repeated", sides, lat_rep, ip_rep)
        lat_dis, ip_dis = latency(s, sides, direct, "distinct", counter)
        report_latency("distinct", sides, lat_dis, ip_dis)
        for side in sides:
            side.call("load_setup", clients=s.load_clients)
        load_rep = load(s, sides, "repeated", counter)
        report_load("repeated", s, sides, load_rep)
        load_dis = load(s, sides, "distinct", counter)
        report_load("distinct", s, sides, load_dis)

    out()
    out("== Before / after (the issue's figures)")
    summary = [
        ("repeated: Run p50 ms", lat_rep, lambda f: f.pct(50) * 1e3),
        ("repeated: Run p50 / best in-process", lat_rep, lambda f: f.pct(50) / ip_rep.pct(50)),
        (
            "repeated: CPU ms/job gateway (64 clients)",
            load_rep,
            lambda f: f.per_job_ms(f.cpu.gateway),
        ),
        (
            "repeated: CPU ms/job workers (64 clients)",
            load_rep,
            lambda f: f.per_job_ms(f.cpu.workers),
        ),
        ("repeated: CPU ms/job total (64 clients)", load_rep, _cpu_per_job),
        ("repeated: jobs/s, 64 clients", load_rep, lambda f: f.rate),
        ("distinct: Run p50 ms", lat_dis, lambda f: f.pct(50) * 1e3),
        ("distinct: Run p50 / in-process", lat_dis, lambda f: f.pct(50) / ip_dis.pct(50)),
        ("distinct: CPU ms/job total (64 clients)", load_dis, _cpu_per_job),
        ("distinct: jobs/s, 64 clients", load_dis, lambda f: f.rate),
    ]
    names = [f"{t.label} {t.describe}" for t in trees]
    out(f"  {'':<44}" + "".join(f"{n[:26]:>28}" for n in names) + f"{'after/before':>14}")
    for label, figures, get in summary:
        values = [get(f) for f in figures]
        change = values[-1] / values[0] if values[0] else float("nan")
        out(f"  {label:<44}" + "".join(_fmt(v, "28.2f") for v in values) + f"{change:13.2f}x")
    after_rep, after_lat = load_rep[-1], lat_rep[-1]
    checks = [
        (
            f"CPU per repeated job (gateway + workers) <= {TARGET_CPU_MS:g} ms",
            _cpu_per_job(after_rep) <= TARGET_CPU_MS,
            f"{_cpu_per_job(after_rep):.2f} ms",
        ),
        (
            f">= {TARGET_JOBS_PER_S:g} jobs/s with {s.load_clients} clients (repeated)",
            after_rep.rate >= TARGET_JOBS_PER_S,
            f"{after_rep.rate:.1f} jobs/s (CPU allows {_cpu_bound_rate(after_rep):.0f})",
        ),
        (
            f"repeated Run p50 <= {TARGET_RATIO:g}x best in-process",
            after_lat.pct(50) / ip_rep.pct(50) <= TARGET_RATIO,
            f"{after_lat.pct(50) / ip_rep.pct(50):.2f}x ({after_lat.pct(50) * 1e3:.2f} vs "
            f"{ip_rep.pct(50) * 1e3:.2f} ms)",
        ),
    ]
    out()
    for name, ok, figure in checks:
        out(f"  {'PASS' if ok else 'MISS'}  {name:<58} {figure}")
    out(f"\n  total benchmark time {time.monotonic() - started:.0f} s")
    return 0
