"""Mutation review of this session's changes (the stopped-job runner, the new prices, the
OpenQASM 3 statement limit, the estimator's combination memory, quota periods): each test here
kills a hand mutant the other tests let live. In process, no simulation runs; the runner's
clock is injected, so nothing waits on the wall clock.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from typing import cast

import numpy as np
import pytest

from gateway.backends.aer.adapter import AerAdapter
from gateway.backends.ibm import adapter as ibm
from gateway.backends.qiskit import frontend as fe
from gateway.backends.qiskit.adapter import CompiledCircuit, QiskitAdapter, _measurement_bases
from gateway.domain import costs
from gateway.domain.circuits import (
    Bindings,
    CircuitLanguage,
    CircuitSource,
    EstimatorPub,
    Observable,
    PauliTerm,
)
from gateway.domain.errors import ExecutionError, InvalidArgument
from gateway.domain.failures import FailureKind
from gateway.domain.jobs import JobSpec
from gateway.runtime.pool import Pool, PoolLimits
from gateway.runtime.simulator_runner import KILL_AFTER_S, WorkerPoolRunner
from gateway.runtime.worker import WorkerProcess
from tests.adapters import prepare_in_process
from tests.unit.test_aer_adapter import context as aer_context
from tests.unit.test_ibm_adapter import context as ibm_context
from tests.unit.test_review_stopped_jobs import (
    OUTCOME,
    FakeFactory,
    a_job,
    a_prepared,
    settle,
)

GiB = 1 << 30


# ------------------------------------------------------------------ the stopped-job runner


class Clock:
    """The runner's monotonic clock, set by the test."""

    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def clocked_runner(
    clock: Clock, kill_after_s: float | None = None
) -> tuple[WorkerPoolRunner, FakeFactory]:
    factory = FakeFactory()
    pool = Pool(factory, PoolLimits(min_instances=0, max_instances=1, acquire_timeout_s=60))
    typed = cast(Pool[WorkerProcess], pool)
    if kill_after_s is None:
        return WorkerPoolRunner(typed, clock=clock), factory
    return WorkerPoolRunner(typed, kill_after_s=kill_after_s, clock=clock), factory


@pytest.mark.anyio
async def test_a_job_cancelled_before_its_worker_took_the_payload_leaves_the_worker_whole() -> None:
    # Nothing ran on the worker: it goes back to the pool as it was, not destroyed and replaced.
    runner, factory = clocked_runner(Clock())
    await runner.start()
    try:
        handle = await runner.submit(a_prepared("one"), a_job(1))
        await runner.cancel(handle)
        with pytest.raises(ExecutionError) as info:
            await runner.wait(handle)
        assert info.value.kind is FailureKind.CANCELLED
        await settle()
        assert len(factory.workers) == 1 and not factory.workers[0].killed
        second = await runner.submit(a_prepared("two"), a_job(2))
        await settle()
        assert len(factory.workers) == 1  # the same worker, reused
        assert factory.workers[0].payloads == [("two",)]
        factory.workers[0].finish(OUTCOME)
        assert await runner.wait(second) is OUTCOME
    finally:
        for worker in factory.workers:
            worker.kill()
        await runner.close()


@pytest.mark.anyio
@pytest.mark.parametrize(
    ("kill_after_s", "ran_s"),
    [(None, KILL_AFTER_S / 2), (5.0, 2.0)],
    ids=["default", "configured"],
)
async def test_a_job_stopped_before_kill_after_s_is_let_finish(
    kill_after_s: float | None, ran_s: float
) -> None:
    assert KILL_AFTER_S == 1.0  # about what a replacement worker's start costs
    clock = Clock()
    runner, factory = clocked_runner(clock, kill_after_s)
    await runner.start()
    try:
        handle = await runner.submit(a_prepared(), a_job())
        await settle()
        clock.now += ran_s
        await runner.cancel(handle)
        await settle()
        worker = factory.workers[0]
        assert not worker.killed  # its timer is far out: the job may still finish
        worker.finish(OUTCOME)
        with pytest.raises(ExecutionError) as info:
            await runner.wait(handle)
        assert info.value.kind is FailureKind.CANCELLED
        assert not worker.killed and len(factory.workers) == 1
    finally:
        for worker in factory.workers:
            worker.kill()
        await runner.close()


@pytest.mark.anyio
async def test_a_job_stopped_at_the_configured_kill_after_s_is_killed_at_once() -> None:
    clock = Clock()
    runner, factory = clocked_runner(clock, kill_after_s=5.0)
    await runner.start()
    try:
        handle = await runner.submit(a_prepared(), a_job())
        await settle()
        clock.now += 5.0
        await runner.cancel(handle)
        assert factory.workers[0].killed
        with pytest.raises(ExecutionError):
            await runner.wait(handle)
    finally:
        for worker in factory.workers:
            worker.kill()
        await runner.close()


# ------------------------------------------------------------------------- quota periods


def test_a_quota_period_of_negative_nanos_past_a_second_is_no_valid_duration() -> None:
    from google.protobuf.duration_pb2 import Duration
    from qgateway.v1 import admin_pb2

    from gateway.api import tenant_codec

    msg = admin_pb2.TenantPolicy()
    msg.quota.shots = 10
    msg.quota.period.CopyFrom(Duration(seconds=0, nanos=-2_000_000_000))
    with pytest.raises(InvalidArgument) as caught:
        tenant_codec.decode_policy(msg)
    described = [
        v.description
        for v in caught.value.field_violations
        if v.field == "tenant.policy.quota.period"
    ]
    assert any("not a valid Duration" in d for d in described), described


# -------------------------------------------------------------------- OpenQASM 3's parser


def test_qasm3_statements_are_counted_by_semicolons_not_lines(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    class ParserRan(AssertionError):
        pass

    def parser(*args: object, **kwargs: object) -> None:
        raise ParserRan("the parser ran")

    monkeypatch.setattr(fe, "qasm3Parser", parser)
    # Many statements on few lines: the limit counts statements.
    text = "OPENQASM 3.0; qubit[1] q; " + "x q[0]; " * fe.MAX_QASM3_STATEMENTS + "\n"
    adapter = AerAdapter(aer_context(budget=GiB))
    with pytest.raises(InvalidArgument) as refused:
        adapter.compile_circuit(CircuitSource(CircuitLanguage.QASM3, text))
    assert refused.value.reason == "CIRCUIT_TOO_LARGE"


# ---------------------------------------------------------- mid-circuit measurements


def test_measurements_nested_in_control_flow_are_counted() -> None:
    from qiskit.circuit import ClassicalRegister, QuantumCircuit, QuantumRegister

    q, c = QuantumRegister(1), ClassicalRegister(1)
    circuit = QuantumCircuit(q, c)
    with circuit.for_loop(range(2)), circuit.if_test((c[0], 1)):
        circuit.measure(q[0], c[0])
    assert fe.count_mid_circuit_measurements(circuit) == 1


def test_a_barrier_after_a_measurement_does_not_split_paths() -> None:
    from qiskit.circuit import QuantumCircuit

    circuit = QuantumCircuit(2, 2)
    circuit.h(0)
    circuit.measure(0, 0)
    circuit.barrier()
    circuit.measure(1, 1)
    assert fe.count_mid_circuit_measurements(circuit) == 0
    circuit.x(0)  # something acts on qubit 0 after its measurement: it splits now
    assert fe.count_mid_circuit_measurements(circuit) == 1


# ------------------------------------------------------------------ compiled circuits

ONE_QUBIT = CircuitSource(
    CircuitLanguage.QASM3,
    'OPENQASM 3.0;\ninclude "stdgates.inc";\ninput float th;\nqubit[1] q;\nrx(th) q[0];\n',
)


@pytest.fixture(scope="module")
def aer() -> AerAdapter:
    return AerAdapter(aer_context(budget=GiB))


@pytest.fixture(scope="module")
def rx_entry(aer: AerAdapter) -> CompiledCircuit:
    entry = aer.compile_circuit(ONE_QUBIT)
    assert isinstance(entry, CompiledCircuit)
    return entry


def test_a_compiled_circuits_mid_circuit_measurements_are_bounded(
    rx_entry: CompiledCircuit,
) -> None:
    ops = rx_entry.operations
    assert ops >= 1
    # Up to one per operation, and one when there are none (max(operations, 1)).
    assert dataclasses.replace(rx_entry, mid_circuit_measurements=ops).mid_circuit_measurements
    assert dataclasses.replace(rx_entry, operations=0, mid_circuit_measurements=1)
    with pytest.raises(ValueError):
        dataclasses.replace(rx_entry, mid_circuit_measurements=ops + 1)
    with pytest.raises(ValueError):
        dataclasses.replace(rx_entry, mid_circuit_measurements=-1)
    with pytest.raises(ValueError):
        dataclasses.replace(rx_entry, mid_circuit_measurements=cast(int, 1.0))


# ------------------------------------------------------------------- estimator prices


def test_the_bases_of_uniform_and_mixed_terms_add_up() -> None:
    assert _measurement_bases(["ZZ", "XX", "XZ"]) == 3  # Z's basis, X's, and XZ's own


def test_the_exact_estimators_work_is_each_terms_state_passes_and_reads(
    aer: AerAdapter, rx_entry: CompiledCircuit
) -> None:
    runs = aer.run_costs()
    bindings, terms = 7, 5
    passes = costs.simulation_work(
        rx_entry.operations,
        rx_entry.amplitudes,
        bindings,
        1,
        False,
        runs,
        state_passes=terms * costs.TERM_STATE_PASSES,
    )
    job = JobSpec(backend="aer", pubs=())
    work = aer.estimation_work(rx_entry, bindings, terms, 2, 64, job)
    assert work == terms * bindings * runs.per_term + passes


def _sweep(count: int) -> Bindings:
    return Bindings(("th",), (count,), np.linspace(0.0, 1.0, count).reshape(count, 1))


def _observable(*paulis: str) -> Observable:
    return Observable(tuple(PauliTerm(p, 1.0) for p in paulis))


@pytest.fixture
def execution_work(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[int]]:
    """Every execution work a job's cost is charged, in order."""
    charged: list[int] = []
    add = costs.JobCost.add_execution

    def spy(self: costs.JobCost, work: int, field: str) -> None:
        charged.append(work)
        add(self, work, field)

    monkeypatch.setattr(costs.JobCost, "add_execution", spy)
    yield charged


def test_combining_prices_every_listed_term_of_every_binding(
    aer: AerAdapter, execution_work: list[int]
) -> None:
    def total(observable: Observable) -> int:
        execution_work.clear()
        pub = EstimatorPub(ONE_QUBIT, (observable,), (), _sweep(10))
        prepare_in_process(aer, JobSpec(backend="aer", pubs=(pub,)), 1)
        return sum(execution_work)

    # The same distinct term (one state pass), listed once or three times.
    repeated = total(_observable("Z", "Z", "Z")) - total(_observable("Z"))
    assert repeated == 10 * 2 * 4_200  # bindings x extra listed terms x the gather weight


def test_combining_memory_is_the_pubs_beside_its_state(
    aer: AerAdapter, rx_entry: CompiledCircuit
) -> None:
    # 3 distinct terms (Z, X, Y), 2 observables, the widest of 3 listed terms, 2 bindings.
    observables = (_observable("Z", "X", "X"), _observable("Y"))
    pub = EstimatorPub(ONE_QUBIT, observables, (2,), _sweep(2))
    prepared = prepare_in_process(aer, JobSpec(backend="aer", pubs=(pub,)), 1)
    # Beside them, what Aer holds per binding: its copy of the circuit and the saved terms.
    sweep = aer.sweep_memory(rx_entry, 2, 3)
    assert sweep > 0
    assert prepared.memory_bytes == rx_entry.memory_bytes + 8 * 2 * (3 + 2 + 3) + sweep


# --------------------------------------------------------------------- IBM prices

GHZ3 = 'OPENQASM 3.0;\ninclude "stdgates.inc";\nqubit[3] q;\nbit[3] c;\nh q[0];\n'
GHZ3 += "cx q[0], q[1];\ncx q[1], q[2];\nc = measure q;\n"


def _ibm_job(**provider_options: object) -> JobSpec:
    from gateway.domain.jobs import JobOptions

    return JobSpec(backend="x", pubs=(), options=JobOptions(provider_options=provider_options))


@pytest.fixture(scope="module")
def manila() -> ibm.IbmAdapter:
    return ibm.IbmAdapter(ibm_context())


@pytest.fixture(scope="module")
def ghz3(manila: ibm.IbmAdapter) -> CompiledCircuit:
    entry = manila.compile_circuit(CircuitSource(CircuitLanguage.QASM3, GHZ3))
    assert isinstance(entry, CompiledCircuit)
    return entry


def test_noisy_shots_split_over_circuits_round_up(ghz3: CompiledCircuit) -> None:
    # 10 shots over 3 randomizations: 4 each (3 would leave two shots unpriced).
    one = costs.simulation_work(ghz3.operations, 8, 1, 4, True)
    assert ibm._noisy_work(ghz3, 8, 1, 10, 3) == 3 * (one + ibm._RANDOMIZATION_WORK)


def test_randomizations_by_their_size_round_up(
    manila: ibm.IbmAdapter, ghz3: CompiledCircuit
) -> None:
    by_size = {"enable_gates": True, "shots_per_randomization": 300}
    four = {"enable_gates": True, "num_randomizations": 4}  # ceil(1000 / 300)
    work = manila.sampling_work(ghz3, 1, 1000, _ibm_job(twirling=by_size))
    assert work == manila.sampling_work(ghz3, 1, 1000, _ibm_job(twirling=four))


def test_a_provider_run_ibm_job_keeps_the_plain_price(ghz3: CompiledCircuit) -> None:
    cloud = ibm.IbmAdapter(ibm_context(backend="ibm_brisbane", instance="crn:v1:x", token=""))
    assert not cloud.ibm_options.is_fake
    job = _ibm_job(resilience_level=2)
    plain = QiskitAdapter.sampling_work(cloud, ghz3, 2, 1000, job)
    assert cloud.sampling_work(ghz3, 2, 1000, job) == plain
    plain = QiskitAdapter.estimation_work(cloud, ghz3, 2, 4, 3, 1000, job)
    assert cloud.estimation_work(ghz3, 2, 4, 3, 1000, job) == plain


def test_an_ibm_fakes_sampler_is_not_held_to_the_devices_width() -> None:
    # The device's whole state is the runtime estimator's only: on FakeKolkataV2 (27 qubits,
    # 2 GiB) a 3-qubit sampler fits a 1 GiB budget.
    from gateway.domain.circuits import SamplerPub

    adapter = ibm.IbmAdapter(ibm_context(backend="FakeKolkataV2"))
    pub = SamplerPub(CircuitSource(CircuitLanguage.QASM3, GHZ3), Bindings(), shots=100)
    prepared = prepare_in_process(adapter, JobSpec(backend="ibm", pubs=(pub,)), 1)
    assert prepared.memory_bytes < GiB


def test_an_object_array_holds_each_observable_as_itself() -> None:
    from qiskit.quantum_info import SparsePauliOp

    class Dense:
        """An operator NumPy must not ask for its dense matrix (4^n entries on a device)."""

        def __array__(self, *args: object, **kwargs: object) -> object:
            raise AssertionError("NumPy asked for the dense matrix")

    items: list[object] = [SparsePauliOp("ZZ"), Dense(), Dense()]
    array = ibm.object_array(items)
    assert array.shape == (3,) and array.dtype == object
    assert all(array[i] is item for i, item in enumerate(items))


def test_the_ibm_runtime_combines_its_terms_itself(
    manila: ibm.IbmAdapter, ghz3: CompiledCircuit, execution_work: list[int]
) -> None:
    # No gather price and no combination memory: the runtime's estimator takes the observables.
    source = CircuitSource(
        CircuitLanguage.QASM3,
        'OPENQASM 3.0;\ninclude "stdgates.inc";\nqubit[3] q;\nh q[0];\ncx q[0], q[1];\n',
    )
    entry = manila.compile_circuit(source)
    assert isinstance(entry, CompiledCircuit)
    observables = (_observable("ZZI", "ZZI", "IZZ"), _observable("XXI"))
    pub = EstimatorPub(source, observables, (2,), Bindings(), precision=0.5)
    job = JobSpec(backend="ibm", pubs=(pub,), options=_ibm_job().options)
    prepared = prepare_in_process(manila, job, 1)
    assert prepared.memory_bytes == entry.memory_bytes
    work = manila.estimation_work(entry, 1, 3, 2, 4, job)
    assert execution_work == [work]


# ------------------------------------------------------------------------- Aer prices


def test_aer_prices_each_term_and_binding_with_either_state() -> None:
    statevector = AerAdapter(aer_context(budget=GiB)).run_costs()
    assert statevector == costs.RunCosts(per_binding=12_000_000, per_term=260_000)
    density = AerAdapter(aer_context(budget=GiB, method="density_matrix")).run_costs()
    assert density == dataclasses.replace(
        costs.DENSITY_MATRIX_RUNS, per_binding=12_000_000, per_term=260_000
    )


def test_an_mps_run_shot_by_shot_pays_its_shots_once() -> None:
    mps = AerAdapter(aer_context(budget=GiB, method="matrix_product_state"))
    source = CircuitSource(
        CircuitLanguage.QASM3,
        'OPENQASM 3.0;\ninclude "stdgates.inc";\nqubit[2] q;\nbit[2] c;\nh q[0];\n'
        "c[0] = measure q[0];\nx q[0];\nc[1] = measure q[0];\n",
    )
    entry = mps.compile_circuit(source)
    assert isinstance(entry, CompiledCircuit) and entry.shot_by_shot
    job = JobSpec(backend="aer", pubs=())
    plain = QiskitAdapter.sampling_work(mps, entry, 2, 1000, job)
    assert mps.sampling_work(entry, 2, 1000, job) == plain


# ------------------------------------------------------------- Braket and PennyLane prices


def test_braket_dm_branching_grows_with_its_density_matrix() -> None:
    from gateway.backends.braket.adapter import BraketAdapter

    braket = BraketAdapter(aer_context(device="braket_dm"))
    lines = ['OPENQASM 3.0;\ninclude "stdgates.inc";\nqubit[1] q;\nbit[4] c;']
    lines += [f"h q[0];\nc[{i}] = measure q[0];" for i in range(4)]
    entry = braket.compile_circuit(CircuitSource(CircuitLanguage.QASM3, "\n".join(lines)))
    assert isinstance(entry, CompiledCircuit) and entry.mid_circuit_measurements == 3
    ops, amplitudes = entry.operations, entry.amplitudes
    run = costs.simulation_work(ops, amplitudes, 2, 100, False, braket.run_costs())
    # 31 path steps (1 + 2 + 4 + 8 + 16), each evolving the density matrix: ~800 units an entry.
    branching = 2 * 31 * ops * (5_000_000 + amplitudes * 800)
    shots = 2 * 100 * (150_000 + 4 * 20_000)
    assert braket.sampling_work(entry, 2, 100, JobSpec(backend="b", pubs=())) == (
        run + branching + shots
    )


def test_pennylane_run_costs_price_each_binding() -> None:
    from gateway.backends.pennylane.adapter import PennyLaneAdapter

    lightning = PennyLaneAdapter(aer_context(device="lightning.qubit")).run_costs()
    assert lightning == costs.RunCosts(
        per_amplitude=25, per_binding=4_000_000, per_operation_run=750_000, per_term=3_150_000
    )
    default = PennyLaneAdapter(aer_context(device="default.qubit")).run_costs()
    # per_term 0: default.qubit's estimator reads its terms from its states, priced by its own
    # estimation_work (test_pennylane_estimator_memory_review), no longer qml.expval's.
    assert default == costs.RunCosts(
        per_amplitude=210, per_binding=2_500_000, per_operation_run=50_000, per_term=0
    )
