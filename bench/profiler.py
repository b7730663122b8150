"""A small CPU-weighted sampling profiler for the gateway process (all Python threads).

    python -m bench.profiler OUT.json serve --config FILE

runs `qgateway serve ...` with a sampler thread that, every few milliseconds, reads the stack of
every Python thread and the CPU time that thread used since the previous sample
(`pthread_getcpuclockid`), and charges that CPU time to the stack. A thread that waits (for I/O,
a lock, the GIL) uses no CPU and so costs nothing: the result is where the CPU went, by function
and by thread. Used by `run_bench --profile` (py-spy is not part of the environment).

Only windows are recorded, so start-up (imports) does not drown what is measured: SIGUSR1
opens a window (counters reset), SIGUSR2 closes it and writes OUT-<n>.json, n = 0, 1, ...
Within a window the main thread (the event loop) is also followed by cProfile, exactly.
CPU spent in threads without Python frames (gRPC's C-core threads) is not seen.

The sampler thread needs the GIL to read stacks; with the default 5 ms switch interval it would
mostly get it when the busy thread blocks, and so charge CPU bursts to the blocking call (usually
`select`). The profiler lowers the switch interval to SWITCH_INTERVAL_S so a sample lands inside
the burst; that perturbs the gateway a little more.
"""

from __future__ import annotations

import cProfile
import io
import json
import os
import pstats
import signal
import sys
import threading
import time
from collections import Counter
from pathlib import Path
from types import FrameType

INTERVAL_S = 0.005
SWITCH_INTERVAL_S = 0.0002
MAX_DEPTH = 80
STACK_FRAMES = 10


def _where(frame: FrameType) -> str:
    code = frame.f_code
    path = code.co_filename
    for marker in ("site-packages/", "/work/main/", "python3.11/"):
        if marker in path:
            path = path.split(marker, 1)[1]
            break
    return f"{path}:{code.co_name}"


def _os_thread_cpu() -> dict[int, tuple[str, float]]:
    """CPU seconds of every thread of this process (C threads included), from /proc."""
    ticks = os.sysconf("SC_CLK_TCK")
    threads: dict[int, tuple[str, float]] = {}
    for task in Path("/proc/self/task").iterdir():
        try:
            stat = (task / "stat").read_text()
            comm = (task / "comm").read_text().strip()
        except OSError:
            continue
        fields = stat.rsplit(")", 1)[1].split()
        threads[int(task.name)] = (comm, (int(fields[11]) + int(fields[12])) / ticks)
    return threads


def _cprofile_text(profile: cProfile.Profile) -> str:
    text = io.StringIO()
    stats = pstats.Stats(profile, stream=text)
    stats.sort_stats("tottime").print_stats(30)
    stats.sort_stats("cumulative").print_stats(45)
    return "\n".join(
        line.replace("/work/main/.venv/lib/python3.11/site-packages/", "")
        for line in text.getvalue().splitlines()
    )


def window_path(out: Path, index: int) -> Path:
    return out.with_name(f"{out.stem}-{index}{out.suffix}")


class Sampler:
    def __init__(self, interval: float = INTERVAL_S) -> None:
        self.interval = interval
        self._lock = threading.Lock()
        self._last: dict[int, int] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="bench-profiler", daemon=True)
        self.active = False
        self._os_threads: dict[int, tuple[str, float]] = {}
        self._reset()

    def _reset(self) -> None:
        self.self_ns: Counter[str] = Counter()
        self.total_ns: Counter[str] = Counter()
        self.thread_ns: Counter[str] = Counter()
        self.stacks_ns: Counter[str] = Counter()
        self.samples = 0
        self.opened = time.monotonic()

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)

    def open_window(self) -> None:
        with self._lock:
            self._reset()
            self._os_threads = _os_thread_cpu()
            self.active = True

    def close_window(self) -> dict[str, object]:
        with self._lock:
            self.active = False
            report = self._report()
        before, after = self._os_threads, _os_thread_cpu()
        names = {t.native_id: t.name for t in threading.enumerate()}
        per_thread: dict[str, float] = {}
        for tid, (comm, cpu) in after.items():
            used = cpu - before.get(tid, (comm, 0.0))[1]
            if used > 0:
                name = names.get(tid) or f"{comm} (no Python frames)"
                key = name.rstrip("0123456789_-")
                per_thread[key] = per_thread.get(key, 0.0) + used
        report["os_threads"] = sorted(per_thread.items(), key=lambda kv: -kv[1])[:20]
        return report

    def _loop(self) -> None:
        me = threading.get_ident()
        while not self._stop.wait(self.interval):
            names = {t.ident: t.name for t in threading.enumerate()}
            frames = sys._current_frames()
            with self._lock:
                if self.active:
                    self.samples += 1
                for ident, frame in frames.items():
                    if ident != me:
                        self._sample(ident, frame, names.get(ident, str(ident)))

    def _sample(self, ident: int, frame: FrameType, thread: str) -> None:
        try:
            cpu = time.clock_gettime_ns(time.pthread_getcpuclockid(ident))
        except (OSError, OverflowError):
            return
        previous = self._last.get(ident)
        self._last[ident] = cpu
        if self.active and previous is not None and cpu > previous:
            self._charge(cpu - previous, frame, thread)

    def _charge(self, ns: int, frame: FrameType | None, thread: str) -> None:
        # Thread names like "AnyIO worker thread" or "ThreadPoolExecutor-0_3": group by kind.
        self.thread_ns[thread.rstrip("0123456789_-")] += ns
        seen: set[str] = set()
        chain: list[str] = []
        depth = 0
        while frame is not None and depth < MAX_DEPTH:
            where = _where(frame)
            if depth == 0:
                self.self_ns[where] += ns
            if where not in seen:
                self.total_ns[where] += ns
                seen.add(where)
            if len(chain) < STACK_FRAMES:
                chain.append(where)
            frame = frame.f_back
            depth += 1
        self.stacks_ns[" <- ".join(chain)] += ns

    def _report(self) -> dict[str, object]:
        def top(counter: Counter[str], n: int) -> list[tuple[str, float]]:
            return [(k, v / 1e9) for k, v in counter.most_common(n)]

        return {
            "wall_s": time.monotonic() - self.opened,
            "samples": self.samples,
            "sampled_cpu_s": sum(self.thread_ns.values()) / 1e9,
            "threads": top(self.thread_ns, 20),
            "self": top(self.self_ns, 40),
            "total": top(self.total_ns, 80),
            "stacks": top(self.stacks_ns, 30),
        }


def main() -> int:
    if len(sys.argv) < 3:
        print("usage: python -m bench.profiler OUT.json serve --config FILE", file=sys.stderr)
        return 2
    out = Path(sys.argv[1])
    windows = 0
    sampler = Sampler()

    main_profile: list[cProfile.Profile] = []

    # Signal handlers run in the main thread, the event loop's: cProfile follows that thread
    # exactly (the sampler covers the others).
    def on_open(signum: int, frame: FrameType | None) -> None:
        sampler.open_window()
        # thread_time: CPU of this thread only, so time blocked in epoll counts for nothing.
        main_profile[:] = [cProfile.Profile(time.thread_time)]
        main_profile[0].enable()

    def on_close(signum: int, frame: FrameType | None) -> None:
        nonlocal windows
        report = sampler.close_window()
        if main_profile:
            main_profile[0].disable()
            report["main_thread_cprofile"] = _cprofile_text(main_profile.pop())
        path = window_path(out, windows)
        windows += 1
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(report, indent=1))
        tmp.rename(path)  # the reader polls for the final name: never sees half a file

    # Installed before the gateway starts its event loop (which handles only TERM and INT).
    signal.signal(signal.SIGUSR1, on_open)
    signal.signal(signal.SIGUSR2, on_close)
    from gateway.cli import main as gateway_main

    sys.setswitchinterval(SWITCH_INTERVAL_S)
    sampler.start()
    try:
        return gateway_main(sys.argv[2:])
    finally:
        sampler.stop()


if __name__ == "__main__":
    raise SystemExit(main())
