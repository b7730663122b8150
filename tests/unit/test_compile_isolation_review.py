"""Review of the compile path's isolation: what a hostile tenant (or a compile worker a parser
bug took over) could do. A compile answer's type and shape were not checked (a wrong one
escaped as a bare ValueError, nothing cached); a source past max_source_bytes was digested on
the event loop and sent to a worker before being refused; compiled QPY read in the gateway
process (the cloud runners) was bounded at its top level only (now every circuit header in it
is walked first: qpy_walk, tests/unit/test_session31_qpy_walk.py)."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace
from typing import Any

import pytest

from gateway.backends.base import CircuitLimits
from gateway.backends.qiskit.adapter import CompiledCircuit
from gateway.domain.circuits import CircuitLanguage, CircuitSource
from gateway.domain.errors import Internal, InvalidArgument
from gateway.runtime import worker
from gateway.runtime.compiler import CompileLimits, Compiler
from gateway.runtime.worker import WorkerProcess, WorkerReplyRefused
from tests.child import run_python
from tests.worker_output import WrittenWorker

SOURCE = CircuitSource(CircuitLanguage.QASM3, "OPENQASM 3.0; qubit q; h q;")


class _Sink:
    def write(self, data: bytes) -> None:
        pass

    async def drain(self) -> None:
        pass


def _answering(reply: tuple[Any, ...]) -> tuple[WrittenWorker, WorkerProcess]:
    """A compile worker whose next reply is `reply`, encoded as a worker encodes replies (so it
    passes reply_codec: what code run in a compile worker can send)."""
    process = WrittenWorker(worker._reply_frame(reply))
    process.stdin = _Sink()  # type: ignore[assignment]
    return process, WorkerProcess(process, 1 << 20)  # type: ignore[arg-type]


# ------------------------------------------------------------------------------------------
# 1. A compile answer's value is never type-checked (a run's is).


def test_a_compile_answer_that_holds_no_compiled_circuit_is_refused() -> None:
    pool = _OnePool(("ok", ("not", "a compiled circuit")))
    compiler = Compiler(pool, CompileLimits())  # type: ignore[arg-type]

    async def main() -> None:
        async with asyncio.timeout(10):  # a guard, not a synchronisation
            with pytest.raises(Internal) as crashed:
                await compiler.compile("acme", "aer", _Adapter(), SOURCE, "spec.pubs[0]")  # type: ignore[arg-type]
            assert crashed.value.reason == "COMPILER_CRASHED"

    asyncio.run(main())
    assert pool.released == [True]  # the worker was killed, not handed back


# ------------------------------------------------------------------------------------------
# 2. A malformed (but codec-legal) compile reply escapes as a bare Python exception.


@pytest.mark.anyio
@pytest.mark.parametrize(
    "reply",
    [
        ("invalid", "x"),
        ("ok",),
        ("failed", "R", "m", {}, "not a failure kind"),
    ],
    ids=["short-invalid", "ok-without-value", "unknown-failure-kind"],
)
async def test_a_compile_reply_of_the_wrong_shape_is_refused(reply: tuple[Any, ...]) -> None:
    process, handle = _answering(reply)
    with pytest.raises(WorkerReplyRefused):
        await handle.compile("aer", SOURCE, 1.0)
    assert process.killed


class _OnePool:
    """Hands out one fresh worker per acquire, each answering `reply`."""

    def __init__(self, reply: tuple[Any, ...]) -> None:
        self.reply = reply
        self.acquired = 0
        self.released: list[bool] = []
        self.limits = SimpleNamespace(max_instances=1)

    async def acquire(self, timeout: float) -> WorkerProcess:
        self.acquired += 1
        return _answering(self.reply)[1]

    async def release(self, instance: WorkerProcess, *, broken: bool) -> None:
        self.released.append(broken)

    async def maintain(self) -> None:
        pass


class _Adapter:
    context = SimpleNamespace(circuit_limits=CircuitLimits())
    compiled_type = CompiledCircuit

    def circuit_key(self, source: CircuitSource) -> str:
        return source.text


def test_a_malformed_compile_reply_is_compiler_crashed_and_cached() -> None:
    pool = _OnePool(("invalid", "x"))
    compiler = Compiler(pool, CompileLimits())  # type: ignore[arg-type]
    caught: list[BaseException] = []

    async def main() -> None:
        async with asyncio.timeout(10):  # a guard, not a synchronisation
            for _ in range(2):
                try:
                    await compiler.compile("acme", "aer", _Adapter(), SOURCE, "spec.pubs[0]")  # type: ignore[arg-type]
                except Exception as exc:  # what escapes is the point
                    caught.append(exc)
            await asyncio.gather(*compiler._background)

    asyncio.run(main())
    assert all(isinstance(e, Internal) and e.reason == "COMPILER_CRASHED" for e in caught)
    assert len(caught) == 2
    assert pool.acquired == 1  # the second ask is answered from the cache


# ------------------------------------------------------------------------------------------
# 3. The serving process does not check a circuit's size before digesting it and shipping it
#    to a compile worker.


class _CountingWorker:
    def __init__(self) -> None:
        self.compiles = 0
        self.bytes_sent = 0

    async def compile(self, backend: str, source: CircuitSource, cpu_seconds: float) -> object:
        self.compiles += 1
        self.bytes_sent += len(source.payload)
        # What the real worker answers (frontend.parse_circuit's size check).
        raise InvalidArgument("CIRCUIT_TOO_LARGE", "circuit source is too large")

    def kill(self) -> None:
        pass


class _CountingPool:
    def __init__(self) -> None:
        self.worker = _CountingWorker()
        self.limits = SimpleNamespace(max_instances=1)

    async def acquire(self, timeout: float) -> _CountingWorker:
        return self.worker

    async def release(self, instance: object, *, broken: bool) -> None:
        pass

    async def maintain(self) -> None:
        pass


def test_a_source_past_max_source_bytes_is_refused_before_any_worker() -> None:
    pool = _CountingPool()
    compiler = Compiler(pool, CompileLimits())  # type: ignore[arg-type]
    limit = CircuitLimits().max_source_bytes
    big = CircuitSource(CircuitLanguage.QASM3, "// " + "x" * (4 * limit))

    async def main() -> None:
        async with asyncio.timeout(10):
            with pytest.raises(InvalidArgument) as refused:
                await compiler.compile("acme", "aer", _Adapter(), big, "spec.pubs[0]")  # type: ignore[arg-type]
            assert refused.value.reason == "CIRCUIT_TOO_LARGE"

    asyncio.run(main())
    assert pool.worker.compiles == 0, f"{pool.worker.bytes_sent} bytes shipped to a worker"


# ------------------------------------------------------------------------------------------
# 4. A compiled circuit's QPY is bounded at its top level only, yet the gateway process itself
#    reads it (the IBM and Braket runners: ibm/cloud.py `_circuit`, braket/cloud.py
#    `_task_specs`), without any memory limit.

_NESTED = r"""
import resource, struct, sys
from qiskit import QuantumCircuit
from gateway.backends.qiskit.qpy_reader import dump_compiled, load_compiled

qc = QuantumCircuit(1, 1)
qc.measure(0, 0)
with qc.if_test((qc.clbits[0], 1)):
    qc.x(0)
data = dump_compiled(qc)
# The if block's circuit header (qubits, clbits = 1, 1) is the last such pair in the payload.
pattern = struct.pack("!II", 1, 1)
at = data.rindex(pattern)
assert at > 60, at  # past the top-level circuit header
load_compiled(data)  # the honest payload reads
# What a taken-over compile worker can put in its CircuitRef: a nested block of 2^25 qubits.
hostile = data[:at] + struct.pack("!I", 1 << 25) + data[at + 4 :]
# The gateway has no such limit; here it keeps the host safe (the reader wants ~12 GB).
resource.setrlimit(resource.RLIMIT_AS, (3 << 30, 3 << 30))
try:
    load_compiled(hostile)
except ValueError:
    print("REFUSED")
    sys.exit(0)
print("LOADED")
sys.exit(3)
"""


def test_a_compiled_circuit_with_a_huge_nested_block_is_refused_not_read(tmp_path: Any) -> None:
    done = run_python(_NESTED, cwd=tmp_path, timeout=60)
    assert done.returncode == 0 and "REFUSED" in done.stdout, (
        done.returncode,
        done.stdout[-300:],
        done.stderr[-300:],
    )
