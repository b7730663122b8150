"""Limit edges review: requests built exactly at a limit and one step past it, in process
(adapters compile and prepare as a compile worker and admission would, then execute as a
worker would).

Found (each a strict xfail on the code before its fix, reason as in its test's comment):
- An estimator PUB whose precision needs more shots than the backend's max_shots (IBM
  backends sample ~1/precision^2 shots per binding) was refused with "ask for a precision of at
  least X", X rounded to 3 significant digits: rounded down for most limits (0.00316 for
  100 000 shots, 0.0316 for 1000, 0.0156 for 4096), so the precision the error asks for was
  refused again.
- A sampler PUB's result estimate counted 32 bytes of framing per classical register whatever
  its name: a circuit whose registers have long names was admitted with an estimate far under
  `max_result_mb`, and its real result (each name is in it once per PUB) passed the limit.
- A Braket cloud backend admitted PUBs of more shots than Braket runs in one task (100 000 on
  its managed simulators, the device's shotsRange) whenever the backend's max_shots was
  higher (its default is 1 000 000): the job queued, held its quota, and failed
  PROVIDER_REJECTED at its first CreateQuantumTask. Its qubits were already capped at SV1's 34.
"""

from __future__ import annotations

import dataclasses
import pickle
import re
from typing import Any

import pytest

from gateway.api import codec
from gateway.backends.aer.adapter import AerAdapter
from gateway.backends.base import AdapterContext, CircuitLimits
from gateway.backends.braket.adapter import BraketAdapter
from gateway.backends.ibm.adapter import IbmAdapter
from gateway.domain.backends import BackendLimits
from gateway.domain.circuits import (
    Bindings,
    CircuitLanguage,
    CircuitSource,
    EstimatorPub,
    Observable,
    PauliTerm,
    SamplerPub,
)
from gateway.domain.errors import InvalidArgument
from gateway.domain.jobs import JobOptions, JobSpec, SamplerOutput
from tests.adapters import prepare_in_process

pytestmark = pytest.mark.timeout(60)


def _context(name: str, *, max_shots: int, max_result_bytes: int, **options: Any) -> AdapterContext:
    return AdapterContext(
        name=name,
        limits=BackendLimits(
            max_shots=max_shots,
            memory_budget_bytes=1 << 30,
            max_queued_jobs=100,
            max_result_bytes=max_result_bytes,
        ),
        default_shots=1024,
        circuit_limits=CircuitLimits(),
        options=options,
    )


def _q3(text: str) -> CircuitSource:
    return CircuitSource(CircuitLanguage.QASM3, text=text)


BELL = _q3('OPENQASM 3.0;\ninclude "stdgates.inc";\nqubit[2] q;\nh q[0];\ncx q[0], q[1];\n')


@pytest.fixture(scope="module")
def ibm() -> IbmAdapter:
    # A limit whose 1/sqrt is not a 3-digit decimal (the default 1e6 happens to be one).
    return IbmAdapter(
        _context(
            "ibm-fake-manila", max_shots=100_000, max_result_bytes=64 << 20, backend="FakeManilaV2"
        )
    )


def _estimator_spec(precision: float) -> JobSpec:
    pub = EstimatorPub(
        circuit=BELL,
        observables=(Observable((PauliTerm("ZZ", 1.0),)),),
        observables_shape=(1,),
        bindings=Bindings(),
        precision=precision,
    )
    return JobSpec(backend="ibm-fake-manila", pubs=(pub,), options=JobOptions(seed=7))


def test_the_precision_an_invalid_precision_error_suggests_is_admitted(ibm: IbmAdapter) -> None:
    # One step past the limit: 0.001 needs 1e6 shots per binding, 10x the backend's 100 000.
    with pytest.raises(InvalidArgument) as info:
        prepare_in_process(ibm, _estimator_spec(0.001), 7)
    assert info.value.reason == "INVALID_PRECISION"
    match = re.search(r"ask for a precision of at least ([0-9.eE+-]+)$", info.value.message)
    assert match is not None, info.value.message
    suggested = float(match.group(1))
    # The client does what the error says: the job must now be admitted, at or under the
    # backend's per-PUB shot limit (it was refused: 0.00316 needs 100 145 shots).
    prepared = prepare_in_process(ibm, _estimator_spec(suggested), 7)
    assert 0 < prepared.shots <= 100_000


# 2 one-bit registers with 3000-character names, 1 shot: the samples are 2 bytes, the names
# 6000. The limit is 4096 bytes.
_LONG = "r" * 3000
NAMED = _q3(
    'OPENQASM 3.0;\ninclude "stdgates.inc";\nqubit[2] q;\n'
    f"bit {_LONG}a;\nbit {_LONG}b;\nx q[0];\n"
    f"{_LONG}a = measure q[0];\n{_LONG}b = measure q[1];\n"
)
MAX_RESULT = 4096


@pytest.mark.parametrize("output", list(SamplerOutput))
def test_a_result_admitted_under_max_result_bytes_fits_in_it(output: SamplerOutput) -> None:
    aer = AerAdapter(_context("aer", max_shots=1000, max_result_bytes=MAX_RESULT))
    spec = JobSpec(
        backend="aer",
        pubs=(SamplerPub(circuit=NAMED, bindings=Bindings(), shots=1),),
        options=JobOptions(seed=3, sampler_output=output),
    )
    try:
        prepared = prepare_in_process(aer, spec, 3)
    except InvalidArgument as refusal:
        # Refused at admission with the documented reason: what the limit is for.
        assert refusal.reason == "RESULT_LIMIT_EXCEEDED"
        return
    # Admitted: then its result must fit in the limit admission checked.
    outcome = aer.execute(pickle.loads(pickle.dumps(prepared.payload)))
    encoded = codec.encode_result(outcome.result).ByteSize()
    assert encoded <= MAX_RESULT, f"admitted, then a result of {encoded} bytes"


SV1 = "arn:aws:braket:::device/quantum-simulator/amazon/sv1"
# SV1's, DM1's and TN1's shotsRange is [0, 100000] (the stub of tests/unit/test_braket_cloud
# refuses the same): a task of more shots is a ValidationException, the job PROVIDER_REJECTED.
BRAKET_TASK_SHOTS = 100_000


def test_a_braket_cloud_pub_one_shot_past_a_tasks_limit_is_refused_at_admission() -> None:
    # The backend as configured with the default max_shots.
    context = _context(
        "sv1",
        max_shots=1_000_000,
        max_result_bytes=64 << 20,
        device=SV1,
        region="us-east-1",
        s3_bucket="results",
    )
    adapter = BraketAdapter(context)
    bell = _q3(
        'OPENQASM 3.0;\ninclude "stdgates.inc";\nqubit[2] q;\nbit[2] c;\nh q[0];\n'
        "cx q[0], q[1];\nc = measure q;\n"
    )

    def spec(shots: int) -> JobSpec:
        return JobSpec(backend="sv1", pubs=(SamplerPub(bell, Bindings(), shots),))

    # At the limit: admitted, one task of 100 000 shots.
    assert prepare_in_process(adapter, spec(BRAKET_TASK_SHOTS), 1).shots == BRAKET_TASK_SHOTS
    # One past: refused at admission as the backend's shot limit, and the limit it shows
    # clients is the one it applies.
    with pytest.raises(InvalidArgument) as refused:
        prepare_in_process(adapter, spec(BRAKET_TASK_SHOTS + 1), 1)
    assert refused.value.reason == "INVALID_SHOTS"
    assert refused.value.metadata["maxShots"] == str(BRAKET_TASK_SHOTS)
    assert adapter.info().limits.max_shots == BRAKET_TASK_SHOTS
    # A lower configured limit stays the limit.
    lower = BraketAdapter(
        dataclasses.replace(context, limits=dataclasses.replace(context.limits, max_shots=500))
    )
    assert lower.info().limits.max_shots == 500
