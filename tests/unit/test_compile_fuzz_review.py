"""Findings of a compile-path fuzz review (random and hand-made circuits through
compile_circuit / prepare / execute, in process, on every backend and optimization level):
valid circuits the gateway answered wrongly.

Both: Qiskit 2.x raises OverflowError ("can't convert negative int to unsigned") hashing a
ParameterExpression that still names a parameter but whose value is a negative constant
(`0*a - 1`, `a - a - 1`), and qiskit_aer hashes the circuit's global phase at every run with
parameters (`_convert_circuit_binds`). settle_angles settled gate angles only, never a global
phase, and ran only before the transpiler, which can itself make such a phase.
"""

from __future__ import annotations

import pickle
from typing import Any

import numpy as np
import pytest

from gateway.backends.aer.adapter import AerAdapter
from gateway.backends.ibm.adapter import IbmAdapter
from gateway.domain.circuits import Bindings, CircuitLanguage, CircuitSource, SamplerPub
from gateway.domain.jobs import JobOptions, JobSpec, SamplerResult
from tests.adapters import prepare_in_process
from tests.unit.test_aer_adapter import context as aer_context
from tests.unit.test_ibm_adapter import context as ibm_context

pytestmark = pytest.mark.timeout(30)

H3 = 'OPENQASM 3.0;\ninclude "stdgates.inc";\n'


def _run(adapter: Any, text: str, values: list[float], shots: int) -> SamplerResult:
    pub = SamplerPub(
        circuit=CircuitSource(CircuitLanguage.QASM3, text),
        bindings=Bindings((), (), np.array(values, dtype=float)),
        shots=shots,
    )
    job = JobSpec(backend=adapter.context.name, pubs=(pub,), options=JobOptions())
    prepared = prepare_in_process(adapter, job, 5)
    result = adapter.execute(pickle.loads(pickle.dumps(prepared.payload))).result.pubs[0]
    assert isinstance(result, SamplerResult)
    return result


@pytest.mark.parametrize("level", [0, 3])
@pytest.mark.parametrize("phase", ["0*a - 1", "a - a - 1"])
def test_aer_runs_a_constant_negative_global_phase_expression(level: int, phase: str) -> None:
    """rx(0) then a global phase: always reads 0 (Braket and PennyLane do).

    Aer's run failed for the finite binding a = 0 with a CLIENT_ERROR "PUB 0: the parameter
    values make a gate angle infinite or NaN (OverflowError)": the OverflowError came from
    hashing the client's global phase `0*a - 1`.
    """
    adapter = AerAdapter(aer_context(optimization_level=level))
    text = H3 + (
        f"input float[64] a; qubit[1] q; bit[1] c; rx(a) q[0]; gphase({phase}); "
        "c[0] = measure q[0];"
    )
    result = _run(adapter, text, [0.0], 64)
    assert result.registers[0].counts == ({"0": 64},)


# Shrunk from a random parameterised circuit written by qiskit.qasm3.dumps (its user gates
# named like standard gates, as the writer emits them; the shrinking emptied some bodies).
IBM_TEXT = """\
OPENQASM 3.0;
include "stdgates.inc";
input float[64] a;
input float[64] _v_0_;
gate ccz _gate_q_0, _gate_q_1, _gate_q_2 {
  h _gate_q_2;
  ccx _gate_q_0, _gate_q_1, _gate_q_2;
  h _gate_q_2;
}
gate rccx _gate_q_0, _gate_q_1, _gate_q_2 {
  h _gate_q_2;
  h _gate_q_2;
}
gate sxdg _gate_q_0 {
  s _gate_q_0;
  h _gate_q_0;
  s _gate_q_0;
}
gate ryy(p0) _gate_q_0, _gate_q_1 {
  sxdg _gate_q_0;
  sxdg _gate_q_1;
  rz(p0) _gate_q_1;
  cx _gate_q_0, _gate_q_1;
}
gate r(p0, p1) _gate_q_0 {
  U(p0, -pi/2 + p1, pi/2 - p1) _gate_q_0;
}
bit[4] meas;
qubit[4] q;
h q[0];
h q[1];
h q[2];
h q[3];
ccz q[1], q[3], q[0];
rccx q[0], q[2], q[3];
ryy(_v_0_) q[0], q[3];
r(-a, _v_0_) q[0];
meas[3] = measure q[3];
"""


def test_ibm_runs_a_circuit_whose_transpiled_global_phase_is_a_constant_expression() -> None:
    """FakeManilaV2, optimization_level 0, a = _v_0_ = 0.4 (finite, valid).

    The run failed EXECUTION_FAILED (an SDK_ERROR, counted against the backend's breaker)
    "OverflowError: can't convert negative int to unsigned": the transpiled circuit's global
    phase was an expression of _v_0_ whose value is the constant -1.178..., made by the
    transpiler after the client's circuit was settled.
    """
    adapter = IbmAdapter(ibm_context(optimization_level=0))
    result = _run(adapter, IBM_TEXT, [0.4, 0.4], 64)
    assert sum(result.registers[0].counts[0].values()) == 64
