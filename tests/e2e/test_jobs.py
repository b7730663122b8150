"""Jobs end to end: real gateway process, real gRPC, the real client, real Aer, real SQLite.

Expected values are hard-coded from physics, never computed through the SDK path the gateway
uses.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psutil
import pytest
from qgateway import (
    AsyncClient,
    Client,
    DeadlineExceededError,
    InvalidArgumentError,
    NotFoundError,
    sampler_pub,
)
from qgateway.results import JobState
from qgateway.v1 import circuit_pb2

from tests.gateway_process import GatewayProcess, children_of
from tests.rpc import ghz, slow_circuit

BACKENDS = ["aer", "aer-mps"]


@pytest.fixture(scope="module")
def client(address: str) -> Iterator[Client]:
    with Client(address, options=[("grpc.max_receive_message_length", 64 << 20)]) as c:
        yield c


def test_first_job_from_the_example(client: Client, examples: Path) -> None:
    result = client.run((examples / "ghz.qasm").read_text(), backend="aer", shots=1024, seed=11)
    counts = result.counts()
    assert set(counts) <= {"00000", "11111"}
    assert sum(counts.values()) == 1024
    # Binomial(1024, 1/2): sd = 16; 7 sd either side.
    assert 400 <= counts["00000"] <= 624


# X on qubits 0, 2, 4, 12 with registers of widths 1, 3 and 9:
#   a[0] <- q0 (1)            -> a = "1"
#   b[k] <- q(1+k): q2 is b[1] -> b = "010"
#   c[k] <- q(4+k): q4 is c[0], q12 is c[8] -> c = "100000001"
BIT_ORDER = """OPENQASM 3.0;
include "stdgates.inc";
qubit[13] q;
bit[1] a;
bit[3] b;
bit[9] c;
x q[0];
x q[2];
x q[4];
x q[12];
a[0] = measure q[0];
b[0] = measure q[1];
b[1] = measure q[2];
b[2] = measure q[3];
c[0] = measure q[4];
c[1] = measure q[5];
c[2] = measure q[6];
c[3] = measure q[7];
c[4] = measure q[8];
c[5] = measure q[9];
c[6] = measure q[10];
c[7] = measure q[11];
c[8] = measure q[12];
"""


@pytest.mark.parametrize("backend", BACKENDS)
def test_bit_order_is_pinned(client: Client, backend: str) -> None:
    pub = client.run(BIT_ORDER, backend=backend, shots=10, seed=1).sampler(0)
    assert pub.register_names == ["a", "b", "c"]
    assert pub["a"].counts() == {"1": 10}
    assert pub["b"].counts() == {"010": 10}
    assert pub["c"].counts() == {"100000001": 10}
    # Packed rows are big-endian: c = 0b1_0000_0001 -> bytes 0x01 0x01; b = 0b010 -> 0x02.
    assert pub["c"].samples == bytes([0x01, 0x01]) * 10
    assert pub["b"].samples == bytes([0x02]) * 10
    assert pub.counts() == {"100000001 010 1": 10}  # last-declared register first


# Loose bits (`bit a;`) are results like any register: one-bit registers named after the
# variable, in declaration order with the others. X on q0 and q2 only.
LOOSE_BITS = """OPENQASM 3.0;
include "stdgates.inc";
qubit[3] q;
bit a;
bit[2] r;
bit b;
x q[0];
x q[2];
a = measure q[0];
r[0] = measure q[1];
r[1] = measure q[2];
b = measure q[2];
"""


@pytest.mark.parametrize("backend", BACKENDS)
def test_loose_bits_are_one_bit_registers_named_after_the_variable(
    client: Client, backend: str
) -> None:
    pub = client.run(LOOSE_BITS, backend=backend, shots=7, seed=2).sampler(0)
    # The order job.proto promises: declared registers, then loose bits as declared.
    assert list(pub.register_names) == ["r", "a", "b"]
    assert pub["a"].counts() == {"1": 7}
    assert pub["r"].counts() == {"10": 7}
    assert pub["b"].counts() == {"1": 7}
    # Joined, the result's last register first.
    assert pub.counts() == {"1 1 10": 7}


@pytest.mark.parametrize("backend", BACKENDS)
def test_parameter_sweep_is_one_pub_with_per_binding_counts(
    client: Client, examples: Path, backend: str
) -> None:
    pi = math.pi
    values = [[[0.0], [pi], [0.0]], [[pi], [0.0], [pi]]]  # shape (2, 3) x 1 parameter
    result = client.run(
        (examples / "rotation.qasm").read_text(),
        backend=backend,
        shots=50,
        parameter_values=values,
        seed=3,
    )
    pub = result.sampler(0)
    assert pub.shape == (2, 3)
    expected = [["0", "1", "0"], ["1", "0", "1"]]
    for i in range(2):
        for j in range(3):
            assert pub.counts((i, j)) == {expected[i][j]: 50}
    assert len(pub["c"].samples) == 2 * 3 * 50 * 1


def test_seed_makes_sampling_reproducible(client: Client) -> None:
    circuit = ghz(6)
    a = client.run(circuit, shots=300, seed=42).sampler(0)["c"].samples
    b = client.run(circuit, shots=300, seed=42).sampler(0)["c"].samples
    c = client.run(circuit, shots=300, seed=43).sampler(0)["c"].samples
    assert a == b
    assert a != c


def test_execution_reports_what_it_ran_with(client: Client) -> None:
    job = client.run_pubs([_pub(ghz(3), shots=100)], backend="aer")
    assert job.state is JobState.SUCCEEDED
    ex = job.execution
    assert ex is not None and ex.backend == "backends/aer"
    assert ex.seed is not None  # drawn by the gateway when the client gave none
    assert "qiskit-aer" in ex.sdk_versions and "qiskit" in ex.sdk_versions
    assert list(ex.layouts[0]) == [0, 1, 2]
    # The reported seed reproduces the run.
    again = client.run_pubs([_pub(ghz(3), shots=100)], backend="aer", seed=ex.seed)
    assert again.result is not None and job.result is not None
    assert again.result.sampler(0)["c"].samples == job.result.sampler(0)["c"].samples


def _pub(qasm: str, shots: int) -> circuit_pb2.Pub:
    return sampler_pub(qasm, shots=shots)


@pytest.mark.parametrize("backend", BACKENDS)
def test_estimator_exact_and_sampled(client: Client, backend: str) -> None:
    bell = 'OPENQASM 3.0;\ninclude "stdgates.inc";\nqubit[2] q;\nh q[0];\ncx q[0], q[1];\n'
    exact = client.estimate(bell, ["ZZ", "XX", "YY", "ZI"], backend=backend, precision=0.0)
    assert exact.shape == (4,)
    assert exact.expectation_values == pytest.approx([1.0, 1.0, -1.0, 0.0], abs=1e-9)
    assert exact.standard_errors == [0.0, 0.0, 0.0, 0.0]
    sampled = client.estimate(
        bell, [[("ZZ", 0.5), ("XX", 0.25)]], backend=backend, precision=0.01, seed=5
    )
    assert sampled.standard_errors == [0.01]
    assert sampled.expectation_values[0] == pytest.approx(0.75, abs=0.05)  # 5 sd


@pytest.mark.parametrize("backend", BACKENDS)
def test_an_observables_array_broadcasts_as_in_qiskit(client: Client, backend: str) -> None:
    # Qiskit's nested observables are a 2x1 array, broadcast against 3 bindings: 2x3 values.
    from qiskit import qasm3
    from qiskit.primitives import StatevectorEstimator

    qasm = (
        'OPENQASM 3.0;\ninclude "stdgates.inc";\ninput float[64] theta;\nqubit[2] q;\n'
        "ry(theta) q[0];\ncx q[0], q[1];\n"
    )
    observables = [["ZZ"], [{"XX": 0.5, "ZI": -2.0}]]
    values = [[0.1], [0.7], [1.3]]
    got = client.estimate(
        qasm, observables, backend=backend, parameter_values=values, precision=0.0
    )
    reference = StatevectorEstimator().run([(qasm3.loads(qasm), observables, values)])
    evs = reference.result()[0].data.evs
    assert got.shape == evs.shape == (2, 3)
    assert got.expectation_values == pytest.approx(evs.ravel().tolist(), abs=1e-9)


SINGLE_OBSERVABLE_CASES = [
    # (observables, parameter values): Qiskit reads one observable as shape (), a list of one
    # as (1,); a flat list of values as one binding, shape ().
    ("ZZ", [0.4], ()),
    ({"XX": 0.5, "ZI": -2.0}, [[0.1], [0.7]], (2,)),
    (["ZZ"], [0.4], (1,)),
    ("ZZ", [[[0.1], [0.7]]], (1, 2)),
]


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize(("observables", "values", "shape"), SINGLE_OBSERVABLE_CASES)
def test_a_single_observable_has_qiskits_shape(
    client: Client, backend: str, observables: Any, values: Any, shape: tuple[int, ...]
) -> None:
    # One observable was sent as an array of one: its PUB had shape (1,) where Qiskit's has
    # (), and code indexing evs[()] or comparing shapes broke.
    from qiskit import qasm3
    from qiskit.primitives import StatevectorEstimator

    qasm = (
        'OPENQASM 3.0;\ninclude "stdgates.inc";\ninput float[64] theta;\nqubit[2] q;\n'
        "ry(theta) q[0];\ncx q[0], q[1];\n"
    )
    got = client.estimate(
        qasm, observables, backend=backend, parameter_values=values, precision=0.0
    )
    reference = StatevectorEstimator().run([(qasm3.loads(qasm), observables, values)])
    evs = reference.result()[0].data.evs
    assert got.shape == evs.shape == shape
    assert got.expectation_values == pytest.approx(evs.ravel().tolist(), abs=1e-9)


@pytest.mark.parametrize("backend", BACKENDS)
def test_one_observable_at_the_default_precision_is_one_sampled_value(
    client: Client, backend: str
) -> None:
    # The plainest estimator call: one observable (shape ()), no precision (1/64). Its sampled
    # value came back as a Python float and the job failed INTERNAL on every simulator; the
    # tests above all asked for precision 0 or a list of observables.
    bell = 'OPENQASM 3.0;\ninclude "stdgates.inc";\nqubit[2] q;\nh q[0];\ncx q[0], q[1];\n'
    got = client.estimate(bell, "ZZ", backend=backend, seed=5)
    assert got.shape == ()
    assert got.standard_errors == [1 / 64]
    assert got.expectation_values[0] == pytest.approx(1.0, abs=5 / 64)  # 5 sd


def test_dynamic_circuit_runs_on_aer(client: Client, examples: Path) -> None:
    # Teleporting |1>: the output bit is 1 on every shot, whatever the mid-circuit outcomes.
    pub = client.run((examples / "teleport.qasm").read_text(), shots=200, seed=9).sampler(0)
    assert pub["out"].counts() == {"1": 200}
    assert sum(pub["m"].counts().values()) == 200
    assert len(pub["m"].counts()) == 4  # all four mid-circuit outcomes occur


def test_fifty_qubit_ghz_on_matrix_product_state(client: Client) -> None:
    counts = client.run(ghz(50), backend="aer-mps", shots=200, seed=2).counts()
    assert set(counts) <= {"0" * 50, "1" * 50}
    assert sum(counts.values()) == 200 and len(counts) == 2


def test_qasm2_example(client: Client, examples: Path) -> None:
    counts = client.run((examples / "bell.qasm2").read_text(), shots=400, seed=8).counts()
    assert set(counts) == {"00", "11"}


def test_counts_only_and_results_larger_than_a_message(client: Client) -> None:
    # 16-bit register, 30 bindings x 100 000 shots = 6 MB of samples: above the 4 MiB message
    # size, so GetJob leaves it out and the client streams it.
    qasm = (
        'OPENQASM 3.0;\ninclude "stdgates.inc";\ninput float[64] theta;\nqubit[16] q;\nbit[16] c;\n'
        "rx(theta) q[15];\nc = measure q;\n"
    )
    values = [[math.pi if i % 3 == 0 else 0.0] for i in range(30)]
    job = client.run_pubs([_sweep(qasm, values, 100_000)], backend="aer", seed=1, timeout=120)
    assert job.state is JobState.SUCCEEDED
    assert job.result_too_large
    assert job.result is not None
    pub = job.result.sampler(0)
    assert len(pub["c"].samples) == 30 * 100_000 * 2
    for i in range(30):
        expected = "1" + "0" * 15 if i % 3 == 0 else "0" * 16
        assert pub.counts(i) == {expected: 100_000}
    assert pub["c"].samples[:2] == bytes([0x80, 0x00])  # binding 0, shot 0: bit 15 set
    small = client.run_pubs(
        [_sweep(qasm, values, 100_000)], backend="aer", seed=1, counts_only=True, timeout=120
    )
    assert not small.result_too_large and small.result is not None
    assert small.result.sampler(0).counts(3) == {"1" + "0" * 15: 100_000}
    assert small.result.sampler(0)["c"].samples == b""


def _sweep(qasm: str, values: list[list[float]], shots: int) -> circuit_pb2.Pub:
    return sampler_pub(qasm, shots=shots, parameter_values=values)


def test_submit_watch_and_list(client: Client) -> None:
    job = client.submit(ghz(3), backend="aer-mps", shots=100, seed=4, request_id="watch-me")
    events = list(client.watch(job.name))
    states = [e.state for e in events]
    assert states[-1] is JobState.SUCCEEDED
    assert all(s.is_final for s in states[-1:]) and not any(s.is_final for s in states[:-1])
    assert len(states) == len(set(states))  # each state once, in order
    again = client.submit(ghz(3), backend="aer-mps", shots=100, seed=4, request_id="watch-me")
    assert again.name == job.name  # same request_id, same job: no second run
    names = [j.name for j in client.list_jobs(backend="aer-mps", page_size=2)]
    assert job.name in names
    assert len(names) == len(set(names))
    succeeded = list(client.list_jobs(states=["SUCCEEDED"], backend="aer-mps", page_size=3))
    assert all(j.state is JobState.SUCCEEDED for j in succeeded)
    assert job.name in [j.name for j in succeeded]


# The slow job's second Run may wait up to its own 60 s (it took 16 s of the default 30 with
# the module pinned to one core): the test's bound must not fire before that call's.
@pytest.mark.timeout(90)
def test_run_deadline_leaves_the_job_running(client: Client) -> None:
    with pytest.raises(DeadlineExceededError) as exc:
        client.run(
            slow_circuit(),
            backend="aer-mps",
            shots=30_000,
            seed=1,
            request_id="slow-1",
            timeout=2.0,
        )
    name = exc.value.job
    assert name is not None and name.startswith("jobs/")
    # Repeating Run with the same request_id gets the same job, now finished.
    result = client.run(
        slow_circuit(), backend="aer-mps", shots=30_000, seed=1, request_id="slow-1", timeout=60
    )
    assert sum(result.sampler(0)["c"].counts().values()) == 30_000
    job = client.get_job(name)
    assert job.state is JobState.SUCCEEDED and job.execution is not None
    assert job.execution.attempts == 1  # it ran once


def test_cancel_running_job_stops_its_worker(client: Client, gateway: GatewayProcess) -> None:
    tiny_workers = [p for p in children_of(gateway.process.pid) if "aer-tiny" in p.cmdline()]
    assert len(tiny_workers) == 1
    job = client.submit(slow_circuit(), backend="aer-tiny", shots=100_000, seed=1)
    for event in client.watch(job.name):
        if event.state is JobState.RUNNING:
            break
    # CancelJob answers at once (CANCELLING); the worker is stopped in the background.
    cancelling = client.cancel(job.name)
    assert cancelling.state is JobState.CANCELLING
    assert client.wait(job.name, timeout=30).state is JobState.CANCELLED
    # The worker that ran it is gone (killed, not left computing) and was replaced.
    gone, _ = psutil.wait_procs(tiny_workers, timeout=10)
    assert gone == tiny_workers
    after = client.run(ghz(3), backend="aer-tiny", shots=10, seed=1)
    assert set(after.counts()) <= {"000", "111"}


def test_cancel_queued_job(client: Client) -> None:
    blocker = client.submit(slow_circuit(), backend="aer-tiny", shots=100_000, seed=1)
    queued = client.submit(ghz(3), backend="aer-tiny", shots=10, seed=1)
    cancelled = client.cancel(queued.name)
    assert cancelled.state is JobState.CANCELLED
    assert cancelled.start_time is None  # it never ran
    assert client.cancel(queued.name).state is JobState.CANCELLED  # idempotent
    assert client.cancel(blocker.name).state in (JobState.CANCELLING, JobState.CANCELLED)


def test_typed_errors_carry_reasons(client: Client) -> None:
    with pytest.raises(InvalidArgumentError) as exc:
        client.run("OPENQASM 3.0; qubit[1] q; nonsense q[0];", shots=10)
    assert exc.value.reason in {"INVALID_QASM", "UNKNOWN_GATE"}
    with pytest.raises(NotFoundError) as nf:
        client.run(ghz(2), backend="nowhere", shots=10)
    assert nf.value.reason == "BACKEND_NOT_FOUND"


def test_backends_are_described(client: Client) -> None:
    backends = {b.name: b for b in client.list_backends()}
    assert set(backends) == {"backends/aer", "backends/aer-mps", "backends/aer-tiny"}
    aer = backends["backends/aer"]
    assert aer.kind == "SIMULATOR" and aer.status == "ONLINE"
    assert aer.num_qubits >= 30 and "cx" in aer.basis_gates
    assert aer.properties["method"] == "statevector"
    assert backends["backends/aer-mps"].properties["method"] == "matrix_product_state"
    assert client.get_backend("aer-tiny").limits.memory_budget_bytes == 1 << 20


def test_async_client(address: str) -> None:
    import asyncio

    async def main() -> dict[str, int]:
        async with AsyncClient(address) as aclient:
            result = await aclient.run(ghz(2), backend="aer", shots=100, seed=5)
            return result.counts()

    counts = asyncio.run(main())
    assert set(counts) <= {"00", "11"} and sum(counts.values()) == 100


def test_a_worker_killed_from_outside_fails_only_its_job(
    client: Client, gateway: GatewayProcess
) -> None:
    # What the kernel's OOM killer would do: SIGKILL the worker in the middle of a job.
    job = client.submit(slow_circuit(), backend="aer-tiny", shots=100_000, seed=3)
    for event in client.watch(job.name):
        if event.state is JobState.RUNNING:
            break
    (worker,) = [p for p in children_of(gateway.process.pid) if "aer-tiny" in p.cmdline()]
    worker.kill()
    done = client.wait(job.name, timeout=30)
    assert done.state is JobState.FAILED
    assert done.error_reason == "WORKER_CRASHED" and "SIGKILL" in done.error_message
    after = client.run(ghz(3), backend="aer-tiny", shots=10, seed=1)  # on a replacement worker
    assert set(after.counts()) <= {"000", "111"}
