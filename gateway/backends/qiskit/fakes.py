"""qiskit-ibm-runtime's fake devices by class name, for every Qiskit-fed backend that takes one
(noisy Aer's `noise_from`, IBM's offline `ibm-fake-<name>`).

The module is imported on first use: it costs seconds, and only those backends need it."""

from __future__ import annotations

import importlib
from typing import Any

__all__ = ["FAKE_PROVIDER", "fake_backend"]

FAKE_PROVIDER = "qiskit_ibm_runtime.fake_provider"


def fake_backend(name: str) -> Any:
    """A new instance of the fake device class `name` (e.g. "FakeManilaV2").

    Raises:
        ValueError: There is no such class.
    """
    module = importlib.import_module(FAKE_PROVIDER)
    cls = getattr(module, name, None)
    if not isinstance(cls, type):
        raise ValueError(f"{FAKE_PROVIDER} has no fake backend {name!r}")
    return cls()
