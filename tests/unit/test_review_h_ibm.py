"""Hostile review H: IBM prepare-time refusals (gateway.backends.ibm.adapter)."""

from __future__ import annotations

from gateway.backends.ibm.adapter import IbmAdapter
from gateway.domain.circuits import DEFAULT_PRECISION
from tests.adapters import prepare_in_process
from tests.unit.test_ibm_adapter import device_context, spec, z_of_plus


def test_a_device_runs_precision_0_beside_the_default_as_one_precision() -> None:
    # Precision 0 runs at the runtime's default (a sampled estimate is never exact; README):
    # beside a PUB left at the default, both run at 1/64, one precision. The uniform-precision
    # check read 0 as another precision and refused the job as mixing them.
    device = IbmAdapter(device_context())
    prepared = prepare_in_process(device, spec(z_of_plus(0.0), z_of_plus()), 1)
    tasks = prepared.payload.inner.tasks  # type: ignore[attr-defined]
    assert [t.precision for t in tasks] == [0.0, DEFAULT_PRECISION]
