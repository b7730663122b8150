"""Review: the IBM adapter's answers against qiskit-ibm-runtime's own primitives in local mode
(FakeManilaV2, same transpiled circuit, same seed).

Checked and fine (probes, not kept as tests): sampler samples are bit-for-bit those of the
runtime's executor Sampler on AerSimulator.from_backend(FakeManilaV2) with the PUB's seed
(several registers, Qiskit bit order); the noise applies (GHZ-3, 4000 shots: ~14 % outside
000/111, as the runtime itself gives); sweep shapes (2, 3) come back row-major; observables of
shape (3, 1) broadcast against bindings (2,) give shape (3, 2); observables are mapped through
the final layout (routing permutations included) and onto 2 of 5 qubits; resilience level 2
and dynamical decoupling reach the runtime; a 6-qubit circuit is TOO_MANY_QUBITS.
"""

from __future__ import annotations

import math
import warnings
from typing import Any

import pytest

from gateway.backends.ibm.adapter import IbmAdapter
from gateway.domain.circuits import Bindings, EstimatorPub, Observable
from gateway.domain.errors import InvalidArgument
from tests.unit.test_ibm_adapter import context, q3, run, spec


@pytest.fixture(scope="module")
def manila() -> IbmAdapter:
    adapter = IbmAdapter(context())
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        adapter.warm_up()
    return adapter


BELL = "qubit[2] q; h q[0]; cx q[0], q[1];"


def bell_pub(**kwargs: Any) -> EstimatorPub:
    return EstimatorPub(
        circuit=q3(BELL),
        observables=(Observable((("ZZ", 1.0),)), Observable((("XX", 1.0),))),
        observables_shape=(2,),
        bindings=Bindings(),
        **kwargs,
    )


def test_estimator_twirling_shot_split_matches_its_precision(manila: IbmAdapter) -> None:
    options = {
        "twirling": {"enable_measure": True, "num_randomizations": 2, "shots_per_randomization": 5}
    }
    job = spec(bell_pub(), provider_options=options)
    try:
        prepared, results = run(manila, job)
    except InvalidArgument as refused:
        # Refused as for sampler PUBs (it ran 10 shots reported and billed as 4096 before).
        assert refused.reason == "INVALID_PROVIDER_OPTIONS"
        return
    ran = 2 * 5
    result = results[0]
    # Either the reported precision and billed shots are those of the shots that ran...
    assert prepared.shots == ran
    assert result.precision >= 1 / math.sqrt(ran) - 1e-9
