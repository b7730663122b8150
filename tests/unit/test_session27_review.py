"""Session 27's changes, reviewed: what the changes themselves got wrong (fixed: a TypeError
naming "complex" anywhere in a run was taken for the client's complex angle)."""

from __future__ import annotations

import pickle
from typing import Any

import numpy as np
import pytest

from gateway.backends.aer.adapter import AerAdapter
from gateway.domain.circuits import (
    Bindings,
    CircuitLanguage,
    CircuitSource,
    EstimatorPub,
    Observable,
    PauliTerm,
)
from gateway.domain.errors import ExecutionError
from gateway.domain.failures import FailureKind
from gateway.domain.jobs import JobSpec
from tests.adapters import adapter_context, prepare_in_process

H3 = 'OPENQASM 3.0;\ninclude "stdgates.inc";\n'


def _aer() -> AerAdapter:
    return AerAdapter(adapter_context("aer"))


def test_a_backend_result_with_complex_values_is_not_the_clients_error(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    adapter = _aer()

    def faulty_expectations(
        key: str, circuit: Any, terms: Any, parameters: Any, values: Any
    ) -> Any:
        # What a simulator whose result carries complex numbers makes of the conversion the
        # adapter does (np.asarray(..., dtype=np.float64)): nothing the client sent.
        return np.asarray([[0.5 + 0.25j] * len(terms)] * values.shape[0], dtype=np.float64)

    monkeypatch.setattr(adapter, "expectations", faulty_expectations)
    pub = EstimatorPub(
        CircuitSource(CircuitLanguage.QASM3, H3 + "qubit[1] q; h q[0];"),
        (Observable((PauliTerm("Z", 1.0),)),),
        (),
        Bindings(),
        precision=0.0,
    )
    prepared = prepare_in_process(adapter, JobSpec(backend="aer", pubs=(pub,)), 1)
    with pytest.raises(Exception) as failed:  # any failure but the client's
        adapter.execute(pickle.loads(pickle.dumps(prepared.payload)))
    error = failed.value
    assert not (isinstance(error, ExecutionError) and error.kind is FailureKind.CLIENT_ERROR), (
        f"a backend fault labelled the client's: {error!r}"
    )
