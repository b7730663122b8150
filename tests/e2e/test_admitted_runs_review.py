"""Circuits the gateway admits must run (review: admitted jobs followed to their end).

The fuzz tests (tests/integration/test_fuzz.py, tests/e2e/test_fuzz_gateway.py) check that bad
input is refused with a client error. This module sends circuits as Qiskit's own writers emit
them (qiskit.qasm2.dumps, qiskit.qasm3.dumps, QPY) — classical control, barriers, resets,
delays, mid-circuit measurement, registers of odd sizes, parameter expressions, custom gates,
global phase, unitaries, large angles, the standard-library gates — to the session gateway's
`aer` and `aer-mps` backends, and follows every ADMITTED job to its end: it must SUCCEED with a
result of the right shape (hard-coded bitstrings where the circuit is deterministic), or FAIL with
a reason that names the client's fault. A worker crash, an SDK error, INTERNAL or anything the
breaker counts would, in production, open the backend's breaker for every tenant.

Jobs are submitted in a batch (a few threads) and only then waited for, so a few hundred small
circuits take seconds, not minutes.
"""

from __future__ import annotations

import math
import pickle
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import grpc
import numpy as np
import pytest
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st
from qgateway import Client, RetryPolicy
from qgateway.errors import QGatewayError
from qgateway.results import Job
from qiskit import ClassicalRegister, QuantumCircuit, QuantumRegister, qasm2, qasm3
from qiskit.circuit import Parameter

from gateway.backends.braket.adapter import BraketAdapter
from gateway.backends.pennylane.adapter import PennyLaneAdapter
from gateway.backends.qiskit.adapter import QiskitAdapter
from gateway.domain.circuits import Bindings, CircuitLanguage, CircuitSource, SamplerPub
from gateway.domain.errors import InvalidArgument
from gateway.domain.jobs import JobSpec, SamplerResult
from tests.adapters import adapter_context, prepare_in_process
from tests.gateway_process import GatewayProcess
from tests.qpy_payloads import dump

SHOTS = 32
SEED = 5
BACKENDS = ("aer", "aer-mps")
CALL_TIMEOUT_S = 30.0
# Generated circuits: each one goes out in every form its writers can emit, to both backends.
EXAMPLES = 60
# A failed job whose reason names the client's fault (DESIGN.md: only what a client caused maps
# to INVALID_ARGUMENT and friends; JOB_TIMEOUT is a circuit that ran past the backend's limit).
CLIENT_FAULT_CODES = {
    grpc.StatusCode.INVALID_ARGUMENT,
    grpc.StatusCode.FAILED_PRECONDITION,
    grpc.StatusCode.DEADLINE_EXCEEDED,
}
# What must never end an admitted job: these are the gateway's or the backend's faults.
NEVER = {"WORKER_CRASHED", "EXECUTION_FAILED", "SDK_ERROR", "INTERNAL", "OUT_OF_MEMORY"}


@dataclass(frozen=True)
class Case:
    """One circuit in one written form, with what its result must be."""

    label: str
    source: str | bytes
    # Register name -> width, in the circuit's declaration order.
    registers: dict[str, int]
    # Register name -> the one bitstring every shot must give (deterministic circuits only).
    expected: dict[str, str] | None = None
    parameter_values: list[float] | None = None


@dataclass
class Outcome:
    case: Case
    backend: str
    refused: QGatewayError | None = None
    job: Job | None = None
    counts: dict[str, dict[str, int]] | None = None


@pytest.fixture(scope="module")
def client(gateway: GatewayProcess) -> Iterator[Client]:
    with Client(gateway.address, retry=RetryPolicy(max_attempts=1)) as c:
        yield c


def forms(
    label: str,
    circuit: QuantumCircuit,
    expected: dict[str, str] | None = None,
    parameter_values: list[float] | None = None,
) -> list[Case]:
    """The circuit as every writer that can write it emits it (QASM 2 cannot write control
    flow or free parameters; such writer errors are the writer's, not the gateway's)."""
    registers = {r.name: r.size for r in circuit.cregs}
    cases = []
    writers: list[tuple[str, Callable[[QuantumCircuit], str | bytes]]] = [
        ("qasm2", qasm2.dumps),
        ("qasm3", qasm3.dumps),
        ("qpy", dump),
    ]
    for form, write in writers:
        try:
            source = write(circuit)
        except Exception:
            continue
        cases.append(Case(f"{label}/{form}", source, registers, expected, parameter_values))
    return cases


def run_all(client: Client, cases: list[Case]) -> list[Outcome]:
    """Submits every case to every backend (a few at a time), then waits for each job."""

    def submit(outcome: Outcome) -> Outcome:
        try:
            outcome.job = client.submit(
                outcome.case.source,
                backend=outcome.backend,
                shots=SHOTS,
                seed=SEED,
                parameter_values=outcome.case.parameter_values,
                timeout=CALL_TIMEOUT_S,
            )
        except QGatewayError as refusal:
            outcome.refused = refusal
        return outcome

    def finish(outcome: Outcome) -> Outcome:
        if outcome.job is None:
            return outcome
        outcome.job = client.wait(outcome.job.name, timeout=CALL_TIMEOUT_S)
        if outcome.job.state.name == "SUCCEEDED":
            result = client.get_result(outcome.job.name, timeout=CALL_TIMEOUT_S)
            outcome.counts = {
                name: result.counts(0, register=name) for name in outcome.case.registers
            }
        return outcome

    todo = [Outcome(case, backend) for case in cases for backend in BACKENDS]
    with ThreadPoolExecutor(max_workers=6) as pool:
        submitted = list(pool.map(submit, todo))
        return list(pool.map(finish, submitted))


def check(outcome: Outcome) -> str:
    """OK, a refusal at admission, or a client-fault failure; anything else fails the test."""
    what = f"{outcome.case.label} on {outcome.backend}: {outcome.case.source!r}"
    if outcome.refused is not None:
        # Refusals are the other fuzz tests' business; they still must be client errors.
        assert outcome.refused.code in CLIENT_FAULT_CODES | {grpc.StatusCode.RESOURCE_EXHAUSTED}, (
            outcome.refused.code,
            outcome.refused.reason,
            what,
        )
        return f"refused {outcome.refused.reason}"
    job = outcome.job
    assert job is not None and job.state.is_final, what
    if job.state.name == "FAILED":
        assert job.error is not None, what
        detail = (job.error_reason, job.error_message, what)
        assert job.error_reason not in NEVER, detail
        assert job.error.code in CLIENT_FAULT_CODES, detail
        return f"failed {job.error_reason}"
    assert job.state.name == "SUCCEEDED", (job.state, what)
    assert outcome.counts is not None, what
    for name, width in outcome.case.registers.items():
        counts = outcome.counts[name]
        assert sum(counts.values()) == SHOTS, (name, counts, what)
        assert all(len(key) == width and set(key) <= {"0", "1"} for key in counts), (
            name,
            counts,
            what,
        )
    if outcome.case.expected is not None:
        got = {name: outcome.counts[name] for name in outcome.case.expected}
        want = {name: {bits: SHOTS} for name, bits in outcome.case.expected.items()}
        assert got == want, what
    return "OK"


# ----------------------------------------------------------------- hand-picked edge cases


def _if_else() -> QuantumCircuit:
    qc = QuantumCircuit(2, 2)
    qc.x(0)
    qc.measure(0, 0)
    with qc.if_test((qc.clbits[0], 1)) as else_:
        qc.x(1)
    with else_:
        qc.h(1)
    qc.measure(1, 1)
    return qc


def _switch() -> QuantumCircuit:
    qr, cr = QuantumRegister(2, "q"), ClassicalRegister(2, "c")
    qc = QuantumCircuit(qr, cr)
    qc.x(0)
    qc.measure(qr, cr)
    with qc.switch(cr) as case:
        with case(1):
            qc.x(1)
        with case(case.DEFAULT):
            qc.h(1)
    qc.measure(qr, cr)
    return qc


def _while() -> QuantumCircuit:
    qc = QuantumCircuit(1, 1)
    qc.measure(0, 0)
    with qc.while_loop((qc.clbits[0], 0)):
        qc.x(0)
        qc.measure(0, 0)
    return qc


def _for_with_break() -> QuantumCircuit:
    qc = QuantumCircuit(2, 2)
    with qc.for_loop(range(5)) as i:
        qc.rx(i * math.pi, 1)
        qc.x(0)
        qc.measure(0, 0)
        with qc.if_test((qc.clbits[0], 1)):
            qc.break_loop()
    qc.measure([0, 1], [0, 1])
    return qc


def _barrier_reset_delay() -> QuantumCircuit:
    qc = QuantumCircuit(2, 2)
    qc.x([0, 1])
    qc.barrier()
    qc.reset(0)
    qc.delay(100, 1, unit="ns")
    qc.delay(0, 0, unit="ns")
    qc.measure([0, 1], [0, 1])
    return qc


def _mid_measure() -> QuantumCircuit:
    qc = QuantumCircuit(1, 3)
    qc.x(0)
    qc.measure(0, 0)
    qc.x(0)
    qc.measure(0, 1)
    qc.reset(0)
    qc.x(0)
    qc.measure(0, 2)
    return qc


def _odd_registers() -> QuantumCircuit:
    a, b = QuantumRegister(3, "a"), QuantumRegister(1, "b")
    c, d, e = ClassicalRegister(1, "c"), ClassicalRegister(3, "d"), ClassicalRegister(9, "e")
    qc = QuantumCircuit(a, b, c, d, e)
    qc.x(a[1])
    qc.x(b[0])
    qc.measure(a, d)
    qc.measure(b, c)
    qc.measure(a[1], e[8])
    return qc


def _clbits_only() -> QuantumCircuit:
    return QuantumCircuit(0, 2)


def _unmeasured_bits() -> QuantumCircuit:
    qc = QuantumCircuit(2, 3)
    qc.x(0)
    qc.measure(0, 1)
    return qc


def _custom_gates() -> QuantumCircuit:
    t = Parameter("t")
    inner = QuantumCircuit(2, name="pair")
    inner.x(0)
    inner.cx(0, 1)
    rot = QuantumCircuit(1, name="myrot")
    rot.rx(t, 0)
    qc = QuantumCircuit(3, 3, global_phase=1.25)
    qc.append(inner.to_gate(), [0, 1])
    qc.append(rot.to_gate(), [2])
    qc = qc.assign_parameters({t: math.pi})
    qc.measure([0, 1, 2], [0, 1, 2])
    return qc


def _unitary() -> QuantumCircuit:
    qc = QuantumCircuit(3, 3)
    swap01 = np.eye(8)[[1, 0, 2, 3, 4, 5, 6, 7]]  # |000> <-> |001>
    qc.unitary(swap01, [0, 1, 2])
    qc.unitary(np.array([[0, 1], [1, 0]]), [2])
    qc.measure([0, 1, 2], [0, 1, 2])
    return qc


def _prepare_state() -> QuantumCircuit:
    qc = QuantumCircuit(2, 2)
    qc.prepare_state("10")
    qc.measure([0, 1], [0, 1])
    return qc


def _large_angles() -> QuantumCircuit:
    qc = QuantumCircuit(1, 1)
    qc.rx(2e6 * math.pi, 0)  # whole turns
    qc.rz(1e300, 0)
    qc.p(-1e30, 0)
    qc.rx(5e-324, 0)
    qc.measure(0, 0)
    return qc


def _bound_expression() -> QuantumCircuit:
    t = Parameter("t")
    qc = QuantumCircuit(1, 1)
    qc.rx(2 * t + 1, 0)
    qc.measure(0, 0)
    return qc.assign_parameters({t: (math.pi - 1) / 2})


def _free_expression() -> QuantumCircuit:
    t = Parameter("t")
    qc = QuantumCircuit(2, 2)
    qc.rx(2 * t - 1, 0)
    qc.x(1)
    qc.rz(t * t, 1)  # a phase: q[1] stays 1
    qc.measure([0, 1], [0, 1])
    return qc


def _mcx() -> QuantumCircuit:
    qc = QuantumCircuit(8, 8)
    qc.x(range(7))
    qc.mcx(list(range(7)), 7)
    qc.measure(range(8), range(8))
    return qc


def _wide_idle() -> QuantumCircuit:
    qc = QuantumCircuit(20, 20)
    qc.x(19)
    qc.measure(range(20), range(20))
    return qc


def _library_gates() -> QuantumCircuit:
    # Every gate of qelib1.inc / stdgates.inc, arranged to give back |0000> (each gate followed
    # by its inverse), so a wrong definition on any path shows as a wrong bitstring.
    qc = QuantumCircuit(4, 4)
    gates = QuantumCircuit(4)
    gates.h(0)
    gates.y(1)
    gates.s(2)
    gates.t(3)
    gates.sx(0)
    gates.rx(0.1, 1)
    gates.ry(0.2, 2)
    gates.rz(0.3, 3)
    gates.p(0.4, 0)
    gates.u(0.1, 0.2, 0.3, 1)
    gates.cx(0, 1)
    gates.cy(1, 2)
    gates.cz(2, 3)
    gates.ch(0, 2)
    gates.cp(0.5, 1, 3)
    gates.crx(0.6, 0, 3)
    gates.cry(0.7, 1, 0)
    gates.crz(0.8, 2, 1)
    gates.cu(0.1, 0.2, 0.3, 0.4, 3, 0)
    gates.swap(0, 2)
    gates.ccx(0, 1, 2)
    gates.cswap(3, 0, 1)
    gates.rxx(0.2, 0, 1)
    gates.ryy(0.3, 1, 2)
    gates.rzz(0.4, 2, 3)
    gates.rzx(0.5, 3, 0)
    gates.ecr(0, 1)
    gates.iswap(1, 2)
    gates.dcx(2, 3)
    gates.csx(0, 3)
    gates.rccx(0, 1, 2)
    gates.r(0.3, 0.4, 3)
    gates.id(0)
    qc.compose(gates, inplace=True)
    qc.barrier()
    qc.compose(gates.inverse(), inplace=True)
    qc.x(2)
    qc.measure(range(4), range(4))
    return qc


def edge_cases() -> list[Case]:
    cases: list[Case] = []
    cases += forms("if_else", _if_else(), {"c": "11"})
    cases += forms("switch", _switch(), {"c": "11"})
    cases += forms("while", _while(), {"c": "1"})
    cases += forms("for_break", _for_with_break(), {"c": "01"})
    cases += forms("barrier_reset_delay", _barrier_reset_delay(), {"c": "10"})
    cases += forms("mid_measure", _mid_measure(), {"c": "101"})
    cases += forms("odd_registers", _odd_registers(), {"c": "1", "d": "010", "e": "100000000"})
    cases += forms("clbits_only", _clbits_only(), {"c": "00"})
    cases += forms("unmeasured_bits", _unmeasured_bits(), {"c": "010"})
    cases += forms("custom_gates", _custom_gates(), {"c": "111"})
    cases += forms("unitary", _unitary(), {"c": "101"})
    cases += forms("prepare_state", _prepare_state(), {"c": "10"})
    cases += forms("large_angles", _large_angles(), {"c": "0"})
    cases += forms("bound_expression", _bound_expression(), {"c": "1"})
    cases += forms("free_expression", _free_expression(), {"c": "11"}, [(math.pi + 1) / 2])
    cases += forms("mcx", _mcx(), {"c": "11111111"})
    cases += forms("wide_idle", _wide_idle(), {"c": "1" + "0" * 19})
    cases += forms("library_gates", _library_gates(), {"c": "0100"})
    return cases


def test_hand_picked_edge_cases_run_to_their_hard_coded_bitstrings(client: Client) -> None:
    outcomes = [check(outcome) for outcome in run_all(client, edge_cases())]
    # The edge cases are meant to be admitted: most of them must really have run.
    assert outcomes.count("OK") >= 0.8 * len(outcomes), outcomes


@pytest.mark.parametrize("device", ["braket_sv", "lightning.qubit"])
def test_hand_picked_edge_cases_run_on_the_local_braket_and_pennylane_adapters(
    device: str,
) -> None:
    # The session gateway has no Braket or PennyLane backend: their adapters run in process,
    # compiled, prepared, pickled and executed as a worker would. Every case either is refused
    # at compile time (INVALID_ARGUMENT: these adapters support fewer constructs) or runs to
    # its hard-coded bitstrings; an ExecutionError of any kind, or any other exception, fails.
    adapter: QiskitAdapter = (
        BraketAdapter(adapter_context("braket-sv", device=device))
        if device.startswith("braket")
        else PennyLaneAdapter(adapter_context("pl", device=device))
    )
    ran = 0
    # QPY only: the text forms' parsing is the same front end the gateway tests above cover,
    # and each case costs these simulators tens of milliseconds.
    for case in edge_cases():
        if not isinstance(case.source, bytes):
            continue
        source = CircuitSource(CircuitLanguage.QPY, data=case.source)
        values = case.parameter_values
        bindings = Bindings() if values is None else Bindings((), (), np.array(values))
        spec = JobSpec(backend=device, pubs=(SamplerPub(source, bindings, SHOTS),))
        try:
            prepared = prepare_in_process(adapter, spec, SEED)
        except InvalidArgument:
            continue
        outcome = adapter.execute(pickle.loads(pickle.dumps(prepared.payload)))
        result = outcome.result.pubs[0]
        assert isinstance(result, SamplerResult), case.label
        registers = {r.name: r for r in result.registers}
        for name, bits in (case.expected or {}).items():
            assert dict(registers[name].counts[0].items()) == {bits: SHOTS}, case.label
        ran += 1
    assert ran >= 10, ran


# -------------------------------------------------------------------- generated circuits

ONE = ("h", "x", "y", "z", "s", "sdg", "t", "tdg", "sx", "sxdg", "id")
ONE_ANGLE = ("rx", "ry", "rz", "p")
TWO = ("cx", "cy", "cz", "ch", "swap", "ecr", "iswap", "dcx", "csx")
TWO_ANGLE = ("cp", "crx", "cry", "crz", "rxx", "ryy", "rzz", "rzx")
ANGLES = st.one_of(
    st.floats(-2 * math.pi, 2 * math.pi, allow_nan=False),
    st.sampled_from([0.0, math.pi, -math.pi / 2, 1e6, -1e9, 1e300, 5e-324]),
)


@st.composite
def circuits(draw: st.DrawFn) -> tuple[QuantumCircuit, list[float] | None]:
    n = draw(st.integers(1, 5))
    widths = draw(st.lists(st.integers(1, 4), min_size=1, max_size=3))
    qc = QuantumCircuit(
        QuantumRegister(n, "q"),
        *(ClassicalRegister(w, f"c{i}") for i, w in enumerate(widths)),
        global_phase=draw(ANGLES),
    )
    theta = Parameter("theta") if draw(st.booleans()) else None
    qubits = st.integers(0, n - 1)
    clbits = st.integers(0, qc.num_clbits - 1)

    def angle() -> object:
        if theta is not None and draw(st.integers(0, 3)) == 0:
            return draw(st.sampled_from([theta, 2 * theta + 1, theta * theta, theta / 3]))
        return draw(ANGLES)

    def pair() -> list[int]:
        return draw(st.lists(qubits, min_size=2, max_size=2, unique=True))

    def ops(target: QuantumCircuit, budget: int, depth: int) -> None:
        for _ in range(budget):
            kind = draw(st.integers(0, 12 if depth < 2 else 8))
            if kind <= 2:
                getattr(target, draw(st.sampled_from(ONE)))(draw(qubits))
            elif kind == 3:
                getattr(target, draw(st.sampled_from(ONE_ANGLE)))(angle(), draw(qubits))
            elif kind == 4 and n >= 2:
                getattr(target, draw(st.sampled_from(TWO)))(*pair())
            elif kind == 5 and n >= 2:
                getattr(target, draw(st.sampled_from(TWO_ANGLE)))(angle(), *pair())
            elif kind == 6:
                target.measure(draw(qubits), draw(clbits))
            elif kind == 7:
                target.reset(draw(qubits))
            elif kind == 8:
                if draw(st.booleans()):
                    target.barrier()
                else:
                    target.delay(draw(st.integers(0, 500)), draw(qubits), unit="ns")
            elif kind in (9, 10):
                with target.if_test((target.clbits[draw(clbits)], draw(st.integers(0, 1)))) as e:
                    ops(target, draw(st.integers(1, 3)), depth + 1)
                if draw(st.booleans()):
                    with e:
                        ops(target, draw(st.integers(1, 2)), depth + 1)
            elif kind == 11:
                with target.for_loop(range(draw(st.integers(0, 3)))):
                    ops(target, draw(st.integers(1, 3)), depth + 1)
            elif kind == 12:
                # Terminates: flip then measure until the qubit reads 1 (at most two rounds).
                q, c = draw(qubits), draw(clbits)
                with target.while_loop((target.clbits[c], 0)):
                    target.x(q)
                    target.measure(q, c)

    ops(qc, draw(st.integers(0, 10)), 0)
    for i in range(min(n, qc.num_clbits)):
        qc.measure(i, i)
    values = [draw(st.floats(-3, 3, allow_nan=False))] if qc.parameters else None
    return qc, values


def test_generated_circuits_that_are_admitted_run_to_the_end(client: Client) -> None:
    drawn: list[tuple[QuantumCircuit, list[float] | None]] = []

    # Drawn first, sent in one batch: hypothesis only generates here (no shrinking: every case
    # is reported as it was drawn, with its source).
    @settings(
        max_examples=EXAMPLES,
        deadline=None,
        derandomize=True,
        database=None,
        phases=[Phase.generate],
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    )
    @given(case=circuits())
    def collect(case: tuple[QuantumCircuit, list[float] | None]) -> None:
        drawn.append(case)

    collect()
    cases = [
        case
        for index, (circuit, values) in enumerate(drawn)
        for case in forms(f"generated-{index}", circuit, parameter_values=values)
    ]
    outcomes = [check(outcome) for outcome in run_all(client, cases)]
    assert len(outcomes) >= 200, len(outcomes)
    assert outcomes.count("OK") >= 0.8 * len(outcomes), sorted(set(outcomes))


# ------------------------------------------------------------------------------- defects


def test_a_binding_that_makes_an_angle_complex_fails_as_the_clients_error(
    client: Client,
) -> None:
    theta = Parameter("theta")
    circuit = QuantumCircuit(1, 1)
    circuit.rx(theta**0.5, 0)
    circuit.measure(0, 0)
    for backend in BACKENDS:
        submitted = client.submit(
            dump(circuit), backend=backend, shots=SHOTS, parameter_values=[-1.0]
        )
        job = client.wait(submitted.name, timeout=CALL_TIMEOUT_S)
        assert job.state.name == "FAILED" and job.error is not None, (backend, job.state)
        # The client must be able to tell its own mistake from the gateway's: INTERNAL and
        # EXECUTION_FAILED say "resubmit; report it if it repeats" (README's reason table).
        assert job.error_reason not in NEVER, (backend, job.error_reason, job.error_message)
        assert job.error.code is grpc.StatusCode.INVALID_ARGUMENT, (backend, job.error.code)
