"""Circuits of the benchmark and the direct (in-process) SDK paths it is compared with.

Everything a process-pool worker calls is a module-level function, so it pickles by name.
"""

from __future__ import annotations

import concurrent.futures
import threading
from typing import Any

GHZ_SHOTS = 1024
SWEEP_SHOTS = 100
SEED = 1234

GHZ = """\
OPENQASM 3.0;
include "stdgates.inc";
qubit[5] q;
bit[5] c;
h q[0];
cx q[0], q[1];
cx q[1], q[2];
cx q[2], q[3];
cx q[3], q[4];
c = measure q;
"""

SWEEP = """\
OPENQASM 3.0;
include "stdgates.inc";
input float[64] theta;
qubit[5] q;
bit[5] c;
h q[0];
rz(theta) q[0];
h q[0];
cx q[0], q[1];
cx q[1], q[2];
cx q[2], q[3];
cx q[3], q[4];
c = measure q;
"""


def distinct_ghz(index: int) -> str:
    """A GHZ circuit whose text (and parsed circuit) differs for every index.

    The rz angle is the only difference: the circuit stays a 5-qubit GHZ of the same size and
    cost, but no cache keyed on the text or on the circuit can hit.
    """
    angle = 0.1 + index * 1.0e-5
    return GHZ.replace("h q[0];\n", f"h q[0];\nrz({angle:.10f}) q[0];\n", 1)


def sweep_values(n: int) -> list[list[float]]:
    """n bindings of theta, shape (n, 1), spread over [0, 2*pi)."""
    return [[6.283185307179586 * i / n] for i in range(n)]


class Direct:
    """The in-process SDK: one AerSimulator and one preset pass manager built once.

    Args:
        optimization_level: Of the cached preset pass manager and of `transpile()`.
        max_parallel_threads: Aer's thread limit (1, as in the gateway's workers).
    """

    def __init__(self, optimization_level: int, max_parallel_threads: int = 1) -> None:
        from qiskit import qasm3
        from qiskit.transpiler import generate_preset_pass_manager
        from qiskit_aer import AerSimulator

        self._qasm3 = qasm3
        self.optimization_level = optimization_level
        self.sim = AerSimulator(max_parallel_threads=max_parallel_threads)
        self.pm = generate_preset_pass_manager(
            backend=self.sim, optimization_level=optimization_level
        )
        self.ghz = self.pm.run(qasm3.loads(GHZ))
        self.sweep = self.pm.run(qasm3.loads(SWEEP))

    def run_prepared(self, circuit: Any = None, executor: Any = None) -> dict[str, int]:
        """Best path: a pre-parsed, pre-transpiled circuit, AerSimulator.run per call."""
        options: dict[str, Any] = {"shots": GHZ_SHOTS, "seed_simulator": SEED, "memory": True}
        if executor is not None:
            options["executor"] = executor
        result = self.sim.run(self.ghz if circuit is None else circuit, **options).result()
        counts: dict[str, int] = result.get_counts()
        return counts

    def run_parse_pm(self, source: str) -> dict[str, int]:
        """Distinct circuits: qasm3.loads + the cached pass manager + run."""
        return self.run_prepared(self.pm.run(self._qasm3.loads(source)))

    def run_sdk_usual(self, source: str) -> dict[str, int]:
        """The SDK's usual path: qasm3.loads + transpile() (a new pass manager each call) + run."""
        from qiskit import transpile

        circuit = transpile(
            self._qasm3.loads(source), self.sim, optimization_level=self.optimization_level
        )
        return self.run_prepared(circuit)

    def run_sweep(self, values: list[list[float]]) -> int:
        """One Aer call with every binding (parameter_binds); returns the number of results."""
        (param,) = self.sweep.parameters
        result = self.sim.run(
            self.sweep,
            shots=SWEEP_SHOTS,
            seed_simulator=SEED,
            memory=True,
            parameter_binds=[{param: [v[0] for v in values]}],
        ).result()
        return len(result.results)


# ---------------------------------------------------------------- process-pool workers

_WORKER: Direct | None = None


def pool_init(optimization_level: int) -> None:
    """Process-pool initializer: build the simulator and the pre-transpiled circuit once."""
    global _WORKER
    _WORKER = Direct(optimization_level)


def pool_job(_: int = 0) -> int:
    """One GHZ job in a pool worker; returns the shots counted (small to pickle back)."""
    assert _WORKER is not None, "pool_init did not run"
    return sum(_WORKER.run_prepared().values())


class ThreadJobs:
    """A thread pool's jobs: one simulator and one Aer executor per thread.

    Aer's AerJob submits to a module-wide single-thread executor by default, which would
    serialise every thread's simulation; each thread here brings its own.
    """

    def __init__(self, optimization_level: int) -> None:
        self._optimization_level = optimization_level
        self._local = threading.local()
        self._lock = threading.Lock()
        self._executors: list[concurrent.futures.ThreadPoolExecutor] = []

    def job(self, _: int = 0) -> int:
        local = self._local
        if not hasattr(local, "direct"):
            local.direct = Direct(self._optimization_level)
            local.executor = concurrent.futures.ThreadPoolExecutor(1)
            with self._lock:
                self._executors.append(local.executor)
        counts = local.direct.run_prepared(executor=local.executor)
        return sum(counts.values())

    def close(self) -> None:
        with self._lock:
            executors, self._executors = self._executors, []
        for executor in executors:
            executor.shutdown(wait=True)
