"""Tests that kill hand mutants of this session's product changes which no other test caught.

Each test names the mutant it kills; all run in-process, without sleeps, well under 2 s."""

from __future__ import annotations

import sys
from collections.abc import Mapping
from datetime import UTC, datetime, timedelta
from typing import Any

import numpy as np
import pytest
from qiskit import QuantumCircuit
from qiskit.circuit import Parameter
from qiskit.circuit.library import GraphStateGate, PauliEvolutionGate
from qiskit.quantum_info import SparsePauliOp
from qiskit.synthesis import QDrift, SuzukiTrotter

from gateway.backends.base import AdapterContext, CircuitLimits
from gateway.backends.braket.adapter import BraketAdapter
from gateway.backends.loopback.adapter import LoopbackAdapter
from gateway.backends.qiskit import frontend as fe
from gateway.backends.runner import ExecutionModel
from gateway.domain.api_keys import ApiKeyRecord
from gateway.domain.backends import BackendLimits
from gateway.domain.circuits import Bindings, CircuitLanguage, CircuitSource, SamplerPub
from gateway.domain.errors import (
    FieldViolation,
    InvalidArgument,
    ResourceExhausted,
)
from gateway.domain.failures import FailureKind
from gateway.domain.jobs import Job, JobOptions, JobSpec, JobState
from gateway.jobs.events import MemoryEventBus
from gateway.jobs.hooks import Hooks
from gateway.jobs.transitions import Transitions
from gateway.runtime.compiler import _Cache
from gateway.security.api_keys import LastUsedRecorder
from gateway.security.rate_limits import MAX_IDLE_BUCKETS, RateLimiter
from gateway.security.tenant_policy import RateLimit
from gateway.store.base import NewJob
from gateway.store.sqlite import SqliteStore
from tests.adapters import prepare_in_process
from tests.core_harness import Clock, ScriptedRunner, ThrottledOnce, build_core, make_queue, spec

T0 = datetime(2026, 11, 2, 9, 30, tzinfo=UTC)
LEASE = timedelta(seconds=30)

pytestmark = pytest.mark.anyio


def _new_job(job_id: str) -> NewJob:
    return NewJob(
        id=job_id,
        tenant="acme",
        request_id="",
        request_hash=b"\0" * 32,
        backend="aer",
        spec=b"spec",
        num_pubs=1,
        seed=7,
        created_at=T0,
        placement="",
    )


async def test_a_stale_holders_requeue_through_transitions_leaves_the_new_holders_job(
    store: SqliteStore,
) -> None:
    # Kills `Transitions.queued_again` dropping its holder (store write naming nobody): a
    # replica whose lease lapsed while its create was refused put the job its new holder was
    # submitting back to QUEUED, where it would be claimed and submitted a second time.
    await store.create_job(_new_job("a"))
    old = await store.claim_next("aer", "old", T0 + LEASE, T0)
    assert old is not None
    later = T0 + 2 * LEASE  # "old"'s lease lapsed: "new" claims the job and submits it
    new = await store.claim_next("aer", "new", later + LEASE, later)
    assert new is not None and new.id == "a"
    submitting = await store.mark_submitting("a", later, holder="new")
    assert submitting is not None
    transitions = Transitions(store, MemoryEventBus(), Hooks([]), lambda: later, 60.0)
    assert await transitions.queued_again(submitting, holder="old") is None
    current = await store.get_job("a")
    assert current is not None and current.state is JobState.SUBMITTING
    requeued = await transitions.queued_again(submitting, holder="new")
    assert requeued is not None and requeued.state is JobState.QUEUED


async def test_a_throttled_create_requeues_the_job_as_its_claims_holder(
    store: SqliteStore,
) -> None:
    # Kills the runner step's `_requeue` calling queued_again without the claim's holder:
    # on the store's queue the requeue write must name the holder (as the end and RUNNING
    # writes do), or a replica whose lease lapsed re-queues a job another replica submits.
    seen: list[str | None] = []
    write = store.mark_queued_again

    async def recording(job_id: str, at: datetime, *, holder: str | None = None) -> Job | None:
        seen.append(holder)
        return await write(job_id, at, holder=holder)

    store.mark_queued_again = recording  # type: ignore[method-assign]
    runner = ThrottledOnce()
    core = await build_core(store, "store", {"cloud": runner})
    try:
        job = await core.submit("alice", spec("cloud"))
        await runner.started.wait()  # submitted again once it went back to the queue
        runner.succeed(job.id)
        await core.until("alice", job.id, "SUCCEEDED")
        assert seen == ["holder-1"]
    finally:
        await core.manager.close()


@pytest.mark.parametrize("model", [ExecutionModel.LOCAL, ExecutionModel.REMOTE])
async def test_a_failed_runs_end_is_written_as_its_claims_holder(
    store: SqliteStore, model: ExecutionModel
) -> None:
    # Kills `_failed` (a run the backend failed) writing its FAILED end without the claim's
    # holder: a replica whose lease lapsed while its run went on then failed the job another
    # replica runs again (that holder's own end refused), as 137d3ad fixed for SUCCEEDED.
    seen: list[tuple[JobState, str | None]] = []
    write = store.finish_job

    async def recording(job_id: str, state: JobState, **kwargs: Any) -> Job | None:
        seen.append((state, kwargs.get("holder")))
        return await write(job_id, state, **kwargs)

    store.finish_job = recording  # type: ignore[method-assign]
    runner = ScriptedRunner(slots=1, model=model)
    core = await build_core(store, "store", {"sim": runner})
    try:
        job = await core.submit("alice", spec("sim"))
        await runner.started.wait()
        runner.fail(job.id, FailureKind.BACKEND_FAULT)
        failed = await core.until("alice", job.id, "FAILED")
        assert failed.error is not None
        assert seen == [(JobState.FAILED, "holder-1")]
    finally:
        await core.manager.close()


async def test_a_queue_timeout_of_a_claimed_job_is_written_as_its_claims_holder(
    store: SqliteStore,
) -> None:
    # Kills the scheduler's QUEUE_TIMEOUT end naming no holder on the store's queue: a
    # scheduler whose claim of an expired job lapsed before its write (another replica took
    # the job and runs it) then failed that replica's running job QUEUE_TIMEOUT.
    seen: list[tuple[str, str | None]] = []
    write = store.finish_job

    async def recording(job_id: str, state: JobState, **kwargs: Any) -> Job | None:
        error = kwargs.get("error")
        seen.append((error.reason if error is not None else state.value, kwargs.get("holder")))
        return await write(job_id, state, **kwargs)

    store.finish_job = recording  # type: ignore[method-assign]
    runner = ScriptedRunner(slots=1)
    clock = Clock()
    core = await build_core(
        store, "store", {"sim": runner}, clock=clock, max_queue_time_s=30, lease_s=30
    )
    try:
        blocker = await core.submit("alice", spec("sim"))
        await core.until("alice", blocker.id, "RUNNING")
        job = await core.submit("alice", spec("sim"))
        dead = make_queue("store", store, "sim", "dead-holder", clock, 30.0)
        assert (claim := await dead.claim()) is not None and claim.job.id == job.id
        clock.advance(30)  # the dead holder's lease lapses as the job's queue time ends
        runner.succeed(blocker.id)
        failed = await core.until("alice", job.id, "FAILED")
        assert failed.error is not None and failed.error.reason == "QUEUE_TIMEOUT"
        assert ("QUEUE_TIMEOUT", "holder-1") in seen
        assert all(holder == "holder-1" for _, holder in seen)
    finally:
        await core.manager.close()


@pytest.mark.parametrize("where", ["metadata", "field_violation"])
def test_a_cached_refusal_weighs_the_client_text_it_echoes_anywhere(where: str) -> None:
    # Kills `_weight` counting only the message (not the metadata values, or not the field
    # violations): a refusal echoing a 256 KiB name in its metadata or its field violation
    # (as an unknown gate's does) was weighed at 4 KiB, so one tenant's half of the cache held
    # 64 times its bytes.
    cache = _Cache(4 << 20)  # one tenant may hold 2 MiB
    echoed = "g" * (256 << 10)
    for i in range(32):  # 8 MiB of echoed text, put by one tenant
        if where == "metadata":
            refusal = InvalidArgument("UNKNOWN_GATE", "unknown gate", metadata={"gate": echoed})
        else:
            violation = FieldViolation("spec.pubs[0].circuit", f"unknown gate {echoed}")
            refusal = InvalidArgument("UNKNOWN_GATE", "unknown gate", field_violations=[violation])
        cache.put(f"acme\0{i}", refusal, "acme")
    assert len(cache) * len(echoed) <= 2 << 20


class _Keys:
    def __init__(self) -> None:
        self.touched: list[dict[str, datetime]] = []

    async def get_api_key(self, prefix: str) -> ApiKeyRecord | None:
        return None  # the recorder only writes

    async def touch_api_keys(self, used: Mapping[str, datetime]) -> None:
        self.touched.append(dict(used))


async def test_a_key_used_again_within_the_interval_is_not_written_again_after_a_flush() -> None:
    # Kills a flush that prunes fresh notes too (not only those older than interval_s): every
    # key in use was then written at every flush, one store transaction per key and interval
    # regardless of the batching the recorder promises ("noted at most once per interval_s").
    keys = _Keys()
    now = [100.0]
    recorder = LastUsedRecorder(keys, interval_s=60.0, clock=lambda: now[0], now=lambda: T0)
    recorder.note("k1")
    await recorder.flush()
    now[0] += 10.0  # within the interval: the note still stands
    recorder.note("k1")
    await recorder.flush()
    assert keys.touched == [{"k1": T0}]
    now[0] += 60.0  # past it: noted and written again
    recorder.note("k1")
    await recorder.flush()
    assert len(keys.touched) == 2


_LONG = "r" * 3000


def test_a_loopback_result_estimate_counts_its_registers_names() -> None:
    # Kills the loopback adapter's sampler_result_bytes call without `name_bytes`: two
    # registers named by 3000 characters each make a result of over 6 KB that admission
    # priced at tens of bytes, so a job was admitted past max_result_bytes (4 KiB here).
    # No service is contacted: the refusal comes from prepare.
    context = AdapterContext(
        name="remote",
        limits=BackendLimits(
            max_shots=1000,
            memory_budget_bytes=1 << 30,
            max_queued_jobs=100,
            max_result_bytes=4096,
        ),
        default_shots=64,
        circuit_limits=CircuitLimits(),
        options={"url": "http://127.0.0.1:9", "retry_attempts": 1, "retry_backoff_s": 0.01},
    )
    adapter = LoopbackAdapter(context)
    named = CircuitSource(
        CircuitLanguage.QASM3,
        'OPENQASM 3.0;\ninclude "stdgates.inc";\nqubit[2] q;\n'
        f"bit {_LONG}a;\nbit {_LONG}b;\nx q[0];\n"
        f"{_LONG}a = measure q[0];\n{_LONG}b = measure q[1];\n",
    )
    spec_ = JobSpec(
        backend="remote",
        pubs=(SamplerPub(circuit=named, bindings=Bindings(), shots=1),),
        options=JobOptions(seed=3),
    )
    with pytest.raises(InvalidArgument) as refused:
        prepare_in_process(adapter, spec_, 3)
    assert refused.value.reason == "RESULT_LIMIT_EXCEEDED"


def test_forgetting_idle_buckets_keeps_a_bucket_a_token_short_of_full() -> None:
    # Kills `TokenBucket.full` taking a bucket one token short of its burst for full: that
    # bucket was forgotten once MAX_IDLE_BUCKETS were kept and came back full, so a tenant at
    # its limit had a token more than its rate gives, at every new tenant past the bound.
    now = [0.0]
    limiter = RateLimiter(clock=lambda: now[0])
    rate = RateLimit(per_second=1e-9, burst=2)  # nothing refills during the test
    limiter.check("busy", "request", rate)  # one of its two tokens taken
    for i in range(MAX_IDLE_BUCKETS + 1):  # idle tenants, one request each: none full
        limiter.check(f"idle-{i}", "request", RateLimit(per_second=1e-9, burst=1))
    limiter.check("busy", "request", rate)  # its second token
    with pytest.raises(ResourceExhausted) as refused:
        limiter.check("busy", "request", rate)  # no third one
    assert refused.value.reason == "RATE_LIMITED"


SV1 = "arn:aws:braket:::device/quantum-simulator/amazon/sv1"


def test_a_braket_cloud_backends_default_shots_are_capped_at_a_tasks_limit() -> None:
    # Kills the Braket adapter capping max_shots at a task's 100 000 but not default_shots:
    # configured with default_shots 200 000, a PUB that sets no shots was refused
    # INVALID_SHOTS for a number the client never sent, on a backend its shot limit allows.
    context = AdapterContext(
        name="sv1",
        limits=BackendLimits(
            max_shots=1_000_000,
            memory_budget_bytes=1 << 30,
            max_queued_jobs=100,
            max_result_bytes=64 << 20,
        ),
        default_shots=200_000,
        circuit_limits=CircuitLimits(),
        options={"device": SV1, "region": "us-east-1", "s3_bucket": "results"},
    )
    adapter = BraketAdapter(context)
    bell = CircuitSource(
        CircuitLanguage.QASM3,
        'OPENQASM 3.0;\ninclude "stdgates.inc";\nqubit[2] q;\nbit[2] c;\nh q[0];\n'
        "cx q[0], q[1];\nc = measure q;\n",
    )
    unset = JobSpec(backend="sv1", pubs=(SamplerPub(bell, Bindings(), None),))
    assert prepare_in_process(adapter, unset, 1).shots == 100_000


def test_library_gates_of_one_name_count_by_their_own_parameters() -> None:
    # Kills the library-gate memo keyed without the gate's parameters: a graph state of no
    # edges (8 operations) put first stood for ten of a complete graph (36 each), 88 counted
    # for 368, so a circuit of large instances passed the operation limits behind one small.
    n = 8
    empty = GraphStateGate(np.zeros((n, n), dtype=int))
    full = GraphStateGate(np.ones((n, n), dtype=int) - np.eye(n, dtype=int))
    circuit = QuantumCircuit(n)
    circuit.append(empty, range(n))
    for _ in range(10):
        circuit.append(full, range(n))
    counted = fe.tally_operations(circuit, native={"cx", "rz", "sx", "x", "measure"})
    assert counted.total == 8 + 10 * 36
    assert counted.in_definitions == counted.total  # all of it is synthesised definitions


def test_a_qdrift_evolution_counts_its_samples_by_the_square_of_its_time() -> None:
    # Kills QDrift's bound taking t for t^2: ceil(2 lambda^2 t^2 reps) terms are sampled, 200
    # here (5 operations each at most), and qiskit's own synthesis makes 200 rotations; a bound
    # of 20 samples let times past 1 in under the operation limits 10 times their size.
    gate = PauliEvolutionGate(SparsePauliOp("X"), time=10.0, synthesis=QDrift(reps=1, seed=1))
    assert fe.evolution_size(gate) == 200 * 5
    assert len(gate.definition.data) <= fe.evolution_size(gate)


def test_a_qdrift_evolution_of_a_parameter_time_is_unbounded() -> None:
    # Kills the QDrift bound no longer catching the TypeError of a symbolic time: QDrift
    # samples by the bound value, so the bound is unknown (refused as too large), and the
    # TypeError escaping the count was an INTERNAL error for the client's circuit.
    gate = PauliEvolutionGate(SparsePauliOp("X"), time=Parameter("t"), synthesis=QDrift())
    assert fe.evolution_size(gate) == sys.maxsize


def test_a_suzuki_trotter_of_a_huge_order_is_unbounded_without_computing_its_stages() -> None:
    # Kills dropping the order cap: 2*5^(order/2-1) stages were then computed as an integer
    # of hundreds of millions of digits for an order QPY carries in a few bytes, holding the
    # compile worker's CPU (the mutant runs into the test's timeout).
    gate = PauliEvolutionGate(SparsePauliOp("X"), time=1.0, synthesis=SuzukiTrotter(order=10**9))
    assert fe.evolution_size(gate) == sys.maxsize


def test_a_two_pauli_term_with_an_identity_is_no_single_y_rotation() -> None:
    # Kills the Y-only test of a term matching on any qubit (an identity's x == z too): the
    # term X Z (I) of weight 2 was counted as one `ryy` on a target that runs it, 1 operation
    # for its 9 (2 CX, one rotation, basis changes), under-counting such evolutions 9 times.
    gate = PauliEvolutionGate(SparsePauliOp("IXZ"), time=1.0)
    native = {"rxx", "ryy", "rzz", "rx", "ry", "rz", "cx"}
    assert fe.evolution_size(gate, native) == 4 * 2 + 1
    assert fe.evolution_size(PauliEvolutionGate(SparsePauliOp("IYY"), time=1.0), native) == 1


def test_a_pauli_term_is_one_rotation_only_where_the_target_runs_that_rotation() -> None:
    # Kills the X-only and Z-only masks swapped: on a target with `rzz` and no `rxx`, an XX
    # term (9 operations there: basis changes around 2 CX and one rz) was counted as one,
    # and a ZZ term, which that target runs as one `rzz`, as 9.
    native = {"rzz", "rz", "sx", "x", "cx"}
    assert fe.evolution_size(PauliEvolutionGate(SparsePauliOp("XX"), time=1.0), native) == 9
    assert fe.evolution_size(PauliEvolutionGate(SparsePauliOp("ZZ"), time=1.0), native) == 1


def test_nesting_work_is_counted_as_documented_in_statements() -> None:
    # Kills the nesting pre-count's boundaries (depth past 3 instead of 2; 32 units of work a
    # statement instead of 16): one statement nested 60 `exp(` deep weighs 1 + ... + 58 =
    # 1711 units, 106 statements, which is what lets ~100 such statements (~0.2 s of parsing
    # each) reach the statement limit before the parser runs. Comments weigh nothing.
    nested = "OPENQASM 3.0;\nfloat x = " + "exp(" * 60 + "1" + ")" * 60 + ";\n"
    assert fe._qasm3_nesting(nested).work == 1711 // 16
    prefixed = "OPENQASM 3.0;\nfloat x = " + "-" * 40 + "1;\n"  # a run weighs 1 + ... + 38
    assert fe._qasm3_nesting(prefixed).work == (38 * 39 // 2) // 16
    assert fe._qasm3_nesting("// " + "(" * 600 + "\nfloat x = 1;\n").work == 0


def _columns(names: tuple[str, ...], values: list[float]) -> Bindings:
    return Bindings(parameters=names, shape=(), values=np.array(values, dtype=np.float64))


def test_vector_element_columns_bind_the_inputs_qasm3_dumps_declared_for_them() -> None:
    # Kills `_as_declared` unused (columns named θ[2], θ[10] refused UNKNOWN_PARAMETERS for a
    # dumped ansatz declaring _θ_2_, _θ_10_), its own-name-first rule dropped (a circuit with
    # a parameter literally named a[1] bound it to _a_1_ instead), and its check that the
    # circuit declares the input (an unknown column was reported by a name the client never
    # sent). Columns come out in the circuit's order, hard-coded here.
    declared = ("_θ_10_", "_θ_2_")  # qasm3.loads order: by name
    resolved = fe.resolve_bindings(_columns(("θ[2]", "θ[10]"), [0.2, 1.0]), declared, "f")
    assert resolved.tolist() == [1.0, 0.2]
    both = ("_a_1_", "a[1]")
    resolved = fe.resolve_bindings(_columns(("a[1]", "_a_1_"), [0.5, 0.7]), both, "f")
    assert resolved.tolist() == [0.7, 0.5]
    with pytest.raises(InvalidArgument) as unknown:
        fe.resolve_bindings(_columns(("b[0]",), [0.1]), ("x",), "f")
    assert unknown.value.reason == "UNKNOWN_PARAMETERS"
    assert unknown.value.metadata["parameters"] == "b[0]"


def test_a_numpy_number_in_a_refusal_reads_as_a_number() -> None:
    # Kills `_user_number` writing a real number by its repr: numpy's is `np.float64(0.5)`,
    # an object's spelling in a message the client reads.
    assert fe._user_number(np.float64(0.5)) == "0.5"
    assert fe._user_number(np.int64(-1)) == "-1"
    assert fe._user_number(1e-7) == "1e-07"
