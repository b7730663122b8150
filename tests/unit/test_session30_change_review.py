"""Review of session 30's changes: prepare threads shared fairly (FairShare.run_blocking), a
tenant's max_qubits counting the qubits a circuit acts on, `qgateway estimate`'s observable
grammar and numbered tenants reads.

Findings fixed here: (1) FairShare.run_blocking ran its thread under anyio's default limiter
(40 threads, shared with every offload): prepare_threads above 40 were capped there, and a
slot's holder queued first come first served behind other work, where the replaced
gateway.runtime.blocking path ran unbounded by it; (2) a caller that left after its slot was
granted but before its thread started still had fn run (a prepare nobody waits for) where
gateway.runtime.blocking never ran it; (3) an observable coefficient past a float's range
("1e999*ZZ") was read as inf. Left as a strict xfail: `-o -ZZ` (an observable starting with a
minus sign and no space) is refused by argparse as a missing argument.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import threading
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import anyio
import anyio.to_thread
import pytest
from qiskit import QuantumCircuit

from gateway import cli
from gateway.api.admin_tenants import _stored
from gateway.backends.aer.adapter import AerAdapter
from gateway.backends.base import PreparedJob, check_compiled_sizes
from gateway.backends.braket.adapter import BraketAdapter
from gateway.backends.ibm.adapter import IbmAdapter
from gateway.backends.loopback.adapter import LoopbackAdapter
from gateway.backends.pennylane.adapter import PennyLaneAdapter
from gateway.backends.qiskit import frontend as fe
from gateway.backends.qiskit import idle
from gateway.domain.circuits import Bindings, CircuitLanguage, CircuitSource, SamplerPub
from gateway.domain.errors import PermissionDenied
from gateway.domain.jobs import JobOptions, JobSpec
from gateway.jobs.admission import Admission
from gateway.runtime import fair_share, shielded
from gateway.runtime.fair_share import FairShare
from gateway.security.policies import PolicyBook
from gateway.security.tenant_policy import Tenant, TenantPolicy
from gateway.server import load_tenants
from tests.adapters import adapter_context, prepare_in_process
from tests.unit.test_ibm_adapter import context as ibm_context
from tests.unit.test_loopback_runner import make_adapter

pytestmark = pytest.mark.timeout(60)

# ------------------------------------------------------------------ FairShare.run_blocking


async def _left_behind_ended() -> None:
    """Waits for every run whose caller left (held by gateway.runtime.shielded) to end."""
    await asyncio.gather(*list(shielded._left_behind), return_exceptions=True)


async def _turns(check: Callable[[], bool]) -> None:
    """Lets the loop run (no clock) until `check` holds: tasks reach their awaits in turns."""
    for _ in range(100):
        if check():
            return
        await asyncio.sleep(0)
    raise AssertionError("not reached in 100 loop turns")


async def _thread_wait(event: threading.Event) -> None:
    # Bounded: a hang fails the test instead of stalling it.
    assert await asyncio.to_thread(event.wait, 5.0)


@pytest.mark.anyio
async def test_run_blocking_is_bounded_by_its_slots_not_by_anyios_default_thread_limiter() -> None:
    limiter = anyio.to_thread.current_default_thread_limiter()
    limiter.total_tokens = 1
    borrower = object()
    await limiter.acquire_on_behalf_of(borrower)  # every default thread busy (offloads)
    try:
        share = FairShare(2)
        async with asyncio.timeout(5):  # a hang guard, not a speed assertion
            assert await share.run_blocking("t", lambda: 7) == 7
    finally:
        limiter.release_on_behalf_of(borrower)


@pytest.mark.anyio
async def test_a_caller_leaving_before_its_thread_starts_never_runs_fn(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # The thread's start is held back (as a busy thread pool would), after the slot is granted.
    gate = asyncio.Event()
    entered = asyncio.Event()
    real = anyio.to_thread.run_sync

    async def late(fn: Callable[[], Any], **kwargs: Any) -> Any:
        entered.set()
        await gate.wait()
        return await real(fn, **kwargs)

    monkeypatch.setattr(fair_share.anyio.to_thread, "run_sync", late)
    share = FairShare(1)
    ran: list[int] = []
    call = asyncio.ensure_future(share.run_blocking("t", lambda: ran.append(1)))
    await entered.wait()
    assert share.held("t") == 1
    call.cancel()
    with pytest.raises(asyncio.CancelledError):
        await call
    gate.set()
    await _left_behind_ended()
    assert ran == []
    assert share.held("t") == 0


@pytest.mark.anyio
async def test_a_caller_leaving_while_fn_runs_keeps_the_slot_until_fn_returns() -> None:
    share = FairShare(1)
    started, release = threading.Event(), threading.Event()

    def slow() -> int:
        started.set()
        release.wait(5.0)
        return 1

    first = asyncio.ensure_future(share.run_blocking("a", slow))
    await _thread_wait(started)
    first.cancel()
    with pytest.raises(asyncio.CancelledError):
        await first
    assert share.held("a") == 1  # the thread still runs: its slot is not free
    second = asyncio.ensure_future(share.run_blocking("b", lambda: 2))
    await _turns(lambda: share.waiting == 1)
    assert not second.done()
    release.set()
    assert await second == 2
    await _left_behind_ended()
    assert share.held("a") == 0 and share.held("b") == 0


@pytest.mark.anyio
async def test_a_caller_leaving_while_it_waits_for_a_slot_gives_its_place_to_the_next() -> None:
    share = FairShare(1)
    started, release = threading.Event(), threading.Event()
    ran: list[str] = []

    def hold() -> None:
        started.set()
        release.wait(5.0)

    holder = asyncio.ensure_future(share.run_blocking("a", hold))
    await _thread_wait(started)
    waiter = asyncio.ensure_future(share.run_blocking("b", lambda: ran.append("b")))
    after = asyncio.ensure_future(share.run_blocking("c", lambda: ran.append("c")))
    await _turns(lambda: share.waiting == 2)
    waiter.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiter
    release.set()
    await holder
    await after
    assert ran == ["c"]
    assert share.held("b") == 0 and share.waiting == 0


@pytest.mark.anyio
async def test_a_waiting_caller_gets_what_fn_raises() -> None:
    def broken() -> None:
        raise ValueError("bad sweep")

    share = FairShare(1)
    with pytest.raises(ValueError, match="bad sweep"):
        await share.run_blocking("t", broken)
    assert share.held("t") == 0


@pytest.mark.anyio
async def test_what_a_thread_raises_after_its_caller_left_is_logged_once(
    caplog: pytest.LogCaptureFixture,
) -> None:
    share = FairShare(1)
    started, release = threading.Event(), threading.Event()

    def fails() -> None:
        started.set()
        release.wait(5.0)
        raise RuntimeError("prepare crashed")

    call = asyncio.ensure_future(share.run_blocking("t", fails))
    await _thread_wait(started)
    call.cancel()
    with pytest.raises(asyncio.CancelledError):
        await call
    with caplog.at_level(logging.ERROR, logger="gateway.runtime.shielded"):
        release.set()
        await _left_behind_ended()
    failures = [r for r in caplog.records if r.exc_info and "prepare crashed" in str(r.exc_info[1])]
    assert len(failures) == 1
    assert share.held("t") == 0


# ------------------------------------------------------------------ active qubits


def test_barriers_delays_and_a_global_phase_act_on_no_qubit() -> None:
    circuit = QuantumCircuit(4)
    circuit.barrier()
    circuit.delay(100, 2)
    circuit.global_phase = 0.5
    assert idle.used_qubits(circuit) == frozenset()
    assert idle.used_qubits(QuantumCircuit(0)) == frozenset()


def test_a_control_flow_block_acts_on_its_qubits_and_a_measure_or_reset_acts() -> None:
    circuit = QuantumCircuit(5, 1)
    circuit.measure(0, 0)
    with circuit.if_test((circuit.clbits[0], 1)):
        circuit.x(3)
    circuit.reset(4)
    assert idle.used_qubits(circuit) == frozenset({0, 3, 4})


# Five qubits declared (an ISA circuit is as wide as its device); the first PUB acts on two,
# the second on one: a job's qubits are the most of its PUBs', not the last one's.
_WIDE = (
    'OPENQASM 3.0;\ninclude "stdgates.inc";\nqubit[5] q;\nbit[2] c;\nh q[3];\ncx q[3], q[1];\n'
    "barrier q;\ndelay[100ns] q[0];\nc[0] = measure q[1];\nc[1] = measure q[3];\n"
)
_NARROW = (
    'OPENQASM 3.0;\ninclude "stdgates.inc";\nqubit[5] q;\nbit[1] c;\n'
    "x q[4];\nc[0] = measure q[4];\n"
)

_ADAPTERS: dict[str, Callable[[], Any]] = {
    "aer": lambda: AerAdapter(adapter_context("aer")),
    "aer-noise": lambda: AerAdapter(
        adapter_context("aer", method="density_matrix", noise_from="FakeManilaV2")
    ),
    "braket": lambda: BraketAdapter(adapter_context("braket", device="braket_sv")),
    "pennylane": lambda: PennyLaneAdapter(adapter_context("pl", device="default.qubit")),
    "ibm": lambda: IbmAdapter(ibm_context()),  # FakeManilaV2: 5 qubits, the wide circuit's width
    "loopback": lambda: make_adapter("http://127.0.0.1:9"),
}


@pytest.mark.parametrize("kind", sorted(_ADAPTERS))
def test_a_jobs_qubits_are_the_most_any_pub_acts_on_on_every_backend(kind: str) -> None:
    adapter = _ADAPTERS[kind]()
    pubs = tuple(
        SamplerPub(CircuitSource(CircuitLanguage.QASM3, text), bindings=Bindings(), shots=8)
        for text in (_WIDE, _NARROW)
    )
    prepared = prepare_in_process(adapter, JobSpec(kind, pubs, JobOptions()), 1)
    assert prepared.qubits == 2
    assert all(len(layout) == 5 for layout in prepared.layouts)
    if isinstance(adapter, LoopbackAdapter):
        return
    compiled = [adapter.compile_circuit(pub.circuit) for pub in pubs]
    assert [c.active_qubits for c in compiled] == [2, 1]


def test_a_compiled_circuit_may_act_on_all_its_qubits_and_no_more() -> None:
    check_compiled_sizes(3, (0, 1, 2), active_qubits=3)
    check_compiled_sizes(3, (0, 1, 2), active_qubits=0)
    for bad in (4, -1, True, 2.0):
        with pytest.raises(ValueError):
            check_compiled_sizes(3, (0, 1, 2), active_qubits=bad)  # type: ignore[arg-type]


def test_admission_checks_the_qubits_a_job_acts_on_not_its_layouts_width(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    policies = PolicyBook([_tenant(2)])
    admission = Admission.__new__(Admission)
    admission._policies = policies
    monkeypatch.setattr(admission, "_check_policy", lambda tenant, spec: None)
    spec = JobSpec("aer", (), JobOptions())

    def prepared(qubits: int) -> PreparedJob:
        return PreparedJob(
            payload=None, memory_bytes=0, layouts=(tuple(range(127)),), shots=1, qubits=qubits
        )

    admission._check_job("acme", spec, "aer", prepared(2))  # a Bell pair on a 127-qubit device
    with pytest.raises(PermissionDenied) as over:
        admission._check_job("acme", spec, "aer", prepared(3))
    assert over.value.metadata["qubits"] == "3"


# ------------------------------------------------------------------ numbered tenants reads


def _tenant(max_qubits: int) -> Tenant:
    return Tenant("acme", "Acme", TenantPolicy(max_qubits=max_qubits), etag=str(max_qubits))


def test_a_load_without_a_read_is_the_newest_whatever_was_loaded_before() -> None:
    book = PolicyBook()
    book.load([_tenant(3)], book.begin_read())
    book.load([_tenant(5)])
    assert book.policy("acme").max_qubits == 5


class _SlowStore:
    """Each list_tenants call (a read in flight) answers when the test resolves its future."""

    def __init__(self) -> None:
        self.answers: list[asyncio.Future[list[Any]]] = []

    @property
    def asked(self) -> int:
        return len(self.answers)

    async def list_tenants(self, *, after: str | None, limit: int) -> list[Any]:
        answer: asyncio.Future[list[Any]] = asyncio.get_running_loop().create_future()
        self.answers.append(answer)
        return await answer


def _stored_tenant(max_qubits: int) -> Any:
    now = datetime(2024, 1, 1, tzinfo=UTC)
    return _stored(_tenant(max_qubits), now, now)


@pytest.mark.anyio
async def test_a_stored_tenants_read_is_numbered_when_it_begins_not_when_it_ends() -> None:
    book = PolicyBook()
    store = _SlowStore()
    older = asyncio.ensure_future(load_tenants(store, book))  # type: ignore[arg-type]
    await _turns(lambda: store.asked == 1)
    newer = asyncio.ensure_future(load_tenants(store, book))  # type: ignore[arg-type]
    await _turns(lambda: store.asked == 2)
    store.answers[1].set_result([_stored_tenant(9)])  # the newer read ends first
    await newer
    store.answers[0].set_result([_stored_tenant(3)])  # the older one, with the old policy
    await older
    assert book.policy("acme").max_qubits == 9


@pytest.mark.anyio
async def test_a_put_while_a_read_is_in_flight_survives_that_reads_load() -> None:
    book = PolicyBook()
    store = _SlowStore()
    read = asyncio.ensure_future(load_tenants(store, book))  # type: ignore[arg-type]
    await _turns(lambda: store.asked == 1)
    book.put("acme", TenantPolicy(max_qubits=7))  # an UpdateTenant here, after the read began
    store.answers[0].set_result([_stored_tenant(3)])  # the read saw the tenant as it was
    await read
    assert book.policy("acme").max_qubits == 7


# ------------------------------------------------------------------ qgateway estimate


@pytest.mark.parametrize(
    ("text", "terms"),
    [
        ("1.*XX", {"XX": 1.0}),
        ("-0*XX", {"XX": 0.0}),
        ("XX - XX", {"XX": 0.0}),
        ("1E2*Z", {"Z": 100.0}),
        ("-.5e-1 * Z + I", {"Z": -0.05, "I": 1.0}),
    ],
)
def test_more_observables_a_user_types(text: str, terms: dict[str, float]) -> None:
    assert cli.parse_observable(text) == pytest.approx(terms)


@pytest.mark.parametrize("text", ["+-XX", "\u2212XX", "--XX", "1e999*ZZ", "0.5*ZZ + 1e400*XX"])
def test_a_double_sign_a_unicode_minus_or_an_infinite_coefficient_is_refused(text: str) -> None:
    with pytest.raises(argparse.ArgumentTypeError):
        cli.parse_observable(text)


# Fixed in session 31: argparse read `-o -ZZ` as `-o` missing its argument.
def test_an_observable_starting_with_a_minus_sign_is_accepted_after_o() -> None:
    args = cli.build_parser().parse_args(["estimate", "bell.qasm", "-o", "-ZZ"])
    assert args.observable == [{"ZZ": -1.0}]


@pytest.mark.parametrize(
    ("words", "observables"),
    [
        (["--observable", "-0.5*XX + YY"], [{"XX": -0.5, "YY": 1.0}]),
        (["-o", "ZZ", "-o", "-.5*XI"], [{"ZZ": 1.0}, {"XI": -0.5}]),
        (["-o=-ZZ"], [{"ZZ": -1.0}]),
        (["-o", "- ZZ"], [{"ZZ": -1.0}]),
    ],
)
def test_observables_with_a_minus_sign_read_in_every_spelling(
    words: list[str], observables: list[dict[str, float]]
) -> None:
    args = cli.build_parser().parse_args(["estimate", "bell.qasm", *words])
    assert args.observable == observables


@pytest.mark.parametrize("words", [["-o", "--precision", "0.1"], ["-o", "-h"], ["-o"]])
def test_an_option_after_o_is_still_an_option(
    words: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    # Only an observable's text is joined to `-o`: `-o --precision` still lacks its argument.
    with pytest.raises(SystemExit) as info:
        cli.build_parser().parse_args(["estimate", "bell.qasm", *words])
    assert info.value.code == 2
    assert "expected one argument" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("flags", "sent"),
    [
        (["-o", "ZZ"], {"ZZ": 1.0}),  # one observable: a scalar result, as the client's pub
        (["-o", "ZZ", "-o", "XX"], [{"ZZ": 1.0}, {"XX": 1.0}]),
    ],
)
def test_estimate_sends_one_observable_alone_and_several_as_a_list(
    monkeypatch: pytest.MonkeyPatch, flags: list[str], sent: object
) -> None:
    seen: dict[str, Any] = {}

    def pub(source: str, observables: object, *, precision: float | None) -> str:
        seen.update(observables=observables, precision=precision)
        return "pub"

    monkeypatch.setattr(cli, "_read_source", lambda path: "OPENQASM 3.0;")
    monkeypatch.setattr(cli, "estimator_pub", pub)
    monkeypatch.setattr(cli, "_run_pub", lambda args, pub, **options: 0 if not options else 9)
    args = cli.build_parser().parse_args(["estimate", "bell.qasm", *flags, "--precision", "0"])
    assert args.backend == "aer"
    assert args.handler(args) == 0
    assert seen == {"observables": sent, "precision": 0.0}


def test_a_job_whose_circuits_act_on_no_qubit_has_no_qubits() -> None:
    idle = 'OPENQASM 3.0;\ninclude "stdgates.inc";\nqubit[3] q;\nbit[1] c;\nbarrier q;\n'
    pub = SamplerPub(CircuitSource(CircuitLanguage.QASM3, idle), bindings=Bindings(), shots=8)
    prepared = prepare_in_process(_ADAPTERS["aer"](), JobSpec("aer", (pub,), JobOptions()), 1)
    assert prepared.qubits == 0


def test_the_ibm_simulation_is_sized_by_the_qubits_an_isa_circuit_uses_not_its_width() -> None:
    circuit = QuantumCircuit(5, 2)
    circuit.h(3)
    circuit.cx(3, 1)
    circuit.barrier()
    circuit.measure([1, 3], [0, 1])
    adapter = _ADAPTERS["ibm"]()
    assert adapter.state_size(circuit, False) == (fe.statevector_bytes(2), 4)


def test_a_brace_inside_a_gphase_statement_ends_it_unblanked() -> None:
    # Blanked through the `}`, the reader would see a gate body the scan did not (and the
    # `creg` after it hidden).
    text = "OPENQASM 2.0;\nqreg q[1];\ngate g a { gphase(0.5) }\ncreg c[1];\n"
    assert fe._blanked(text, fe._global_phase_statements(text) or ()) == text
