"""server.cpu_affinity on a real gateway: its own threads on the named CPU, its simulator and
compile workers on every CPU it had, and jobs run as before."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from qgateway import Client

from gateway.runtime.affinity import thread_ids
from tests.gateway_process import GatewayProcess, children_of, write_config

pytestmark = pytest.mark.skipif(
    not hasattr(os, "sched_setaffinity"), reason="CPU affinity is Linux's"
)

BACKENDS = """
[backends.aer]
adapter = "aer"
pool = { min_instances = 1, max_instances = 1 }
options = { method = "statevector" }
"""
GHZ3 = (
    'OPENQASM 3.0;\ninclude "stdgates.inc";\nqubit[3] q;\nbit[3] c;\n'
    "h q[0];\ncx q[0], q[1];\ncx q[1], q[2];\nc = measure q;\n"
)


def test_gateway_threads_are_bound_and_workers_are_not(tmp_path: Path) -> None:
    allowed = sorted(os.sched_getaffinity(0))
    cpu = allowed[-1]
    config = write_config(
        tmp_path / "g.toml", tmp_path / "data", BACKENDS, server=f"cpu_affinity = [{cpu}]\n"
    )
    gw = GatewayProcess.start(config, tmp_path / "gateway.log")
    try:
        with Client(gw.address) as client:
            counts = client.run(GHZ3, shots=400, seed=7, timeout=60).counts()
        assert sum(counts.values()) == 400 and set(counts) <= {"000", "111"}
        # Binomial(400, 1/2): sd = 10; 7 sd either side.
        assert 130 <= counts["000"] <= 270
        gateway_cpus = {tid: sorted(os.sched_getaffinity(tid)) for tid in thread_ids(gw.pid)}
        assert len(gateway_cpus) > 3  # the loop, the store's writer, gRPC's threads
        assert set(map(tuple, gateway_cpus.values())) == {(cpu,)}, gateway_cpus
        workers = children_of(gw.pid)
        assert len(workers) >= 2  # the simulator worker and the compile worker
        for worker in workers:
            for tid in thread_ids(worker.pid):
                assert sorted(os.sched_getaffinity(tid)) == allowed, (worker.cmdline(), tid)
    finally:
        assert gw.terminate() == 0, gw.log_path.read_text()[-3000:]
