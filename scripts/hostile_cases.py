# ruff: noqa: E402 -- the checkout to test goes on sys.path before its modules are imported
"""Runs one hostile case of issue 6 through a checkout's Aer adapter, in process; prints the
outcome, time and peak memory as one JSON line. Used to show each defect before and after:

    cd CHECKOUT && .venv/bin/python scripts/hostile_cases.py CHECKOUT CASE

(run it with a checkout of the old code as well; each case in its own process, as some of them
abort or take gigabytes on the old code).
"""

import json
import resource
import sys
import time

tree, name = sys.argv[1], sys.argv[2]
sys.path.insert(0, tree)
resource.setrlimit(resource.RLIMIT_DATA, (4 << 30, 4 << 30))
import numpy as np

from gateway.backends.aer.adapter import AerAdapter
from gateway.backends.base import AdapterContext, CircuitLimits
from gateway.domain.backends import BackendLimits
from gateway.domain.circuits import (
    Bindings,
    CircuitSource,
    EstimatorPub,
    Observable,
    SamplerPub,
)
from gateway.domain.circuits import (
    CircuitLanguage as L,
)
from gateway.domain.jobs import JobSpec

ctx = AdapterContext(
    name="aer",
    limits=BackendLimits(
        max_shots=1_000_000,
        memory_budget_bytes=4 << 30,
        max_queued_jobs=100,
        max_result_bytes=256 << 20,
    ),
    default_shots=1024,
    circuit_limits=CircuitLimits(),
)
a = AerAdapter(ctx)
H3 = 'OPENQASM 3.0;\ninclude "stdgates.inc";\n'
H2 = 'OPENQASM 2.0;\ninclude "qelib1.inc";\n'


def nested2(d):
    lines = [H2 + "qreg q[2];\ncreg c[2];\ngate g0 a, b { cx a, b; h a; }"]
    lines += [f"gate g{k} a, b {{ g{k - 1} a, b; g{k - 1} b, a; }}" for k in range(1, d + 1)]
    return "\n".join([*lines, f"g{d} q[0], q[1];", "measure q -> c;"])


def pauli(i):
    return "".join("XYZI"[(i >> (2 * k)) % 4] for k in range(20))


cases = {
    "crash_cr_comment": SamplerPub(
        CircuitSource(
            L.QASM3, "OPENQASM 3.0;\n// x\rbit[300000000] c;\nqubit[1] q;\nc[0] = measure q[0];\n"
        ),
        Bindings(),
        1,
    ),
    "regex_freeze_2kb": SamplerPub(
        CircuitSource(L.QASM3, "OPENQASM 3.0;\nqubit[1] q;\nbit[" + " " * 2000), Bindings(), 1
    ),
    "nested_qasm2_depth16": SamplerPub(CircuitSource(L.QASM2, nested2(16)), Bindings(), 1),
    "million_bit_register": SamplerPub(
        CircuitSource(L.QASM3, H3 + "qubit[1] q;\nbit[900000] c;\nc[0] = measure q[0];\n"),
        Bindings(),
        1,
    ),
    "comment_only": SamplerPub(CircuitSource(L.QASM3, "// nothing\n"), Bindings(), 1),
    "infinite_angle": SamplerPub(
        CircuitSource(L.QASM3, H3 + "qubit[1] q;\nbit[1] c;\nrx(1e400) q[0];\nc = measure q;\n"),
        Bindings(),
        16,
    ),
    "bom": SamplerPub(
        CircuitSource(L.QASM3, "\ufeff" + H3 + "qubit[1] q;\nbit[1] c;\nx q[0];\nc = measure q;\n"),
        Bindings(),
        16,
    ),
    "qasm2_dumps_sx_swap": SamplerPub(
        CircuitSource(
            L.QASM2, H2 + "qreg q[2];\ncreg c[2];\nsx q[0];\nswap q[0],q[1];\nmeasure q -> c;\n"
        ),
        Bindings(),
        16,
    ),
    "sweep_1e7_parameterless": SamplerPub(
        CircuitSource(L.QASM3, H3 + "qubit[2] q;\nbit[2] c;\nh q[0];\nc = measure q;\n"),
        Bindings(shape=(10_000_000,), values=np.zeros((10_000_000, 0))),
        1,
    ),
    "estimator_1e5_terms": EstimatorPub(
        CircuitSource(L.QASM3, H3 + "qubit[20] q;\nh q[0];\n"),
        (Observable(tuple((pauli(i), 1.0) for i in range(100_000))),),
        (1,),
        Bindings(),
        None,
    ),
}
pub = cases[name]
t = time.monotonic()
try:
    if hasattr(a, "compile_circuit"):
        from tests.adapters import prepare_in_process

        prepared = prepare_in_process(a, JobSpec(backend="aer", pubs=(pub,)), 1)
    else:
        prepared = a.prepare(JobSpec(backend="aer", pubs=(pub,)), 1)
    outcome = "ACCEPTED"
    if name in ("infinite_angle", "bom", "qasm2_dumps_sx_swap"):
        outcome += " -> " + str(a.execute(prepared.payload).result.pubs[0].registers[0].counts[0])
except Exception as e:
    outcome = (
        f"{type(e).__name__} {getattr(e, 'reason', '')}: {str(getattr(e, 'message', e))[:120]}"
    )
rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss >> 10
print(
    json.dumps(
        {
            "case": name,
            "seconds": round(time.monotonic() - t, 2),
            "max_rss_mb": rss,
            "outcome": outcome,
        }
    )
)
