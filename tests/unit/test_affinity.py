"""server.cpu_affinity: the gateway's own threads bound, its workers given every CPU back.

Binding is process-wide, so it is exercised in child processes, never in the test process."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from gateway.config import ConfigError, load_config
from gateway.runtime import affinity

ROOT = Path(__file__).resolve().parents[2]

# A gateway-like process: binds itself, starts a thread, then a worker-like child that releases
# itself; prints every thread's CPUs of both.
BIND_THEN_SPAWN = """
import json, os, subprocess, sys, threading
from gateway.runtime import affinity
before = sorted(os.sched_getaffinity(0))
started = threading.Event(); stop = threading.Event()
early = threading.Thread(target=lambda: (started.set(), stop.wait())); early.start()
started.wait()
affinity.bind_gateway([before[-1]])
late = threading.Thread(target=stop.wait); late.start()
child = subprocess.run(
    [sys.executable, "-c", CHILD, *affinity.worker_args()],
    capture_output=True, text=True, check=True,
)
gateway = [sorted(os.sched_getaffinity(t)) for t in affinity.thread_ids()]
stop.set(); early.join(); late.join()
print(json.dumps({"before": before, "gateway": gateway, "worker": json.loads(child.stdout)}))
"""
CHILD = """
import json, os, sys, threading
from gateway.runtime import affinity
inherited = sorted(os.sched_getaffinity(0))
stop = threading.Event()
early = threading.Thread(target=stop.wait); early.start()  # as an SDK's import would
affinity.release_worker(sys.argv[1:])
print(json.dumps({"inherited": inherited,
                  "threads": [sorted(os.sched_getaffinity(t)) for t in affinity.thread_ids()]}))
stop.set(); early.join()
"""


@pytest.mark.skipif(not hasattr(os, "sched_setaffinity"), reason="CPU affinity is Linux's")
def test_the_gateway_binds_every_thread_and_its_workers_get_every_cpu_back() -> None:
    script = f"CHILD = {CHILD!r}\n{BIND_THEN_SPAWN}"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    out = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, check=True, env=env
    )
    seen = json.loads(out.stdout)
    before, bound = seen["before"], [seen["before"][-1]]
    # Threads started before the binding are bound too, and later ones inherit it.
    assert len(seen["gateway"]) >= 3
    assert all(cpus == bound for cpus in seen["gateway"])
    # The worker starts with the gateway's binding (fork) and gives every thread its CPUs back.
    assert seen["worker"]["inherited"] == bound
    assert len(seen["worker"]["threads"]) >= 2
    assert all(cpus == before for cpus in seen["worker"]["threads"])


def test_an_unbound_gateway_gives_workers_no_binding_to_undo() -> None:
    assert affinity.worker_args() == []


@pytest.mark.skipif(not hasattr(os, "sched_setaffinity"), reason="CPU affinity is Linux's")
def test_a_cpu_this_process_may_not_use_is_refused_before_anything_is_bound() -> None:
    allowed = os.sched_getaffinity(0)
    outside = max(allowed) + 1000
    with pytest.raises(affinity.AffinityError, match=f"CPU {outside} is not one"):
        affinity.bind_gateway([min(allowed), outside])
    assert os.sched_getaffinity(0) == allowed
    assert affinity.worker_args() == []


def test_serve_exits_2_naming_the_cpu(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from gateway.server import serve_forever

    path = tmp_path / "g.toml"
    path.write_text(f'data_dir = "{tmp_path}"\n[server]\ncpu_affinity = [100000]\n')
    assert serve_forever(path) == 2
    assert "server.cpu_affinity: CPU 100000 is not one" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("value", "needle"),
    [("[]", "at least 1"), ("[-1]", ">= 0"), ("[0, 0]", "named twice"), ('["a"]', "integer")],
)
def test_cpu_lists_are_checked(tmp_path: Path, value: str, needle: str) -> None:
    path = tmp_path / "g.toml"
    path.write_text(f"[server]\ncpu_affinity = {value}\n")
    with pytest.raises(ConfigError, match=r"server\.cpu_affinity") as err:
        load_config(path)
    assert needle in str(err.value)


def test_cpu_affinity_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("QGATEWAY_SERVER__CPU_AFFINITY", "[0, 1]")
    assert load_config(None).server.cpu_affinity == (0, 1)


def test_a_worker_is_released_before_numpy_loads() -> None:
    # numpy's OpenBLAS sizes its thread pool from the CPUs the process may use when it loads:
    # released after that, a worker of a bound gateway kept one BLAS thread.
    probe = "import sys, gateway.runtime.worker_main; print('numpy' in sys.modules)"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    out = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, check=True, env=env
    )
    assert out.stdout.strip() == "False"


def test_a_thread_that_ends_while_binding_does_not_stop_the_others_being_bound(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Nothing is really bound here: the system call is recorded instead.
    bound: list[tuple[int, frozenset[int]]] = []

    def setaffinity(tid: int, cpus: frozenset[int]) -> None:
        if tid == 2:
            raise ProcessLookupError(tid)  # the thread ended after it was listed
        bound.append((tid, frozenset(cpus)))

    monkeypatch.setattr(affinity, "thread_ids", lambda pid=None: [1, 2, 3])
    monkeypatch.setattr(affinity.os, "sched_setaffinity", setaffinity)
    affinity.release_worker(["label", "cpus=0,1"])
    assert bound == [(1, frozenset({0, 1})), (3, frozenset({0, 1}))]
