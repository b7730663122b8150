"""Options of the IBM Quantum backend (config) and of its jobs (JobOptions.provider_options).

Shared by the offline half (gateway.backends.ibm.adapter: qiskit-ibm-runtime's fake backends in
local mode) and the cloud half (gateway.backends.ibm.cloud). Free of qiskit-ibm-runtime: the
gateway process validates both without importing the SDK.

Provider options carry the names and bounds of qiskit-ibm-runtime's own
`options_models.SamplerOptions` / `EstimatorOptions` (0.51): `resilience_level` (0-2,
estimator only), `twirling` (enable_gates, enable_measure, num_randomizations,
shots_per_randomization: an int >= 1 or "auto") and `dynamical_decoupling` (enable,
sequence_type: "XX", "XpXm" or "XY4"). Only what a job sets is passed on; the rest keeps the
runtime's defaults.
"""

from __future__ import annotations

import os
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, PlainValidator, SecretStr, model_validator

from gateway.backends.base import ProviderOptions
from gateway.backends.qiskit.adapter import QiskitOptions

__all__ = [
    "TOKEN_ENV",
    "DynamicalDecouplingOptions",
    "IbmOptions",
    "IbmProviderOptions",
    "TwirlingOptions",
]

# Where the API key is read from when the configuration has none (qiskit-ibm-runtime's name).
TOKEN_ENV = "QISKIT_IBM_TOKEN"
_FAKE_PREFIX = "Fake"

Channel = Literal["ibm_quantum_platform", "ibm_cloud"]


def _positive_or_auto(value: object) -> int | str:
    # One validator, not a union: a refusal names the field itself, not a union member.
    if value == "auto":
        return "auto"
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ValueError('must be an integer >= 1 or "auto"')
    if isinstance(value, float) and not value.is_integer():
        raise ValueError('must be an integer >= 1 or "auto"')
    if value < 1:
        raise ValueError('must be an integer >= 1 or "auto"')
    return int(value)


# An int >= 1 or "auto" (JSON numbers arrive as floats: 4.0 is 4).
PositiveOrAuto = Annotated[int | str, PlainValidator(_positive_or_auto)]


class IbmOptions(QiskitOptions):
    """Options of an IBM Quantum backend (from the gateway's configuration).

    Attributes:
        backend: A class of `qiskit_ibm_runtime.fake_provider` ("FakeManilaV2",
            "FakeBrisbane", ...) simulated offline in local mode, or a device name
            ("ibm_brisbane") reached through the cloud runner with credentials.
        channel, instance, url, iam_url: QiskitRuntimeService's account settings (the IAM
            address is normally derived from the service URL; tests point both at a stub).
        token: The API key; from the configuration or, when absent there, from the
            QISKIT_IBM_TOKEN environment variable. A SecretStr: never in a log, repr or dump.
    """

    backend: str = Field(pattern=r"^[A-Za-z][A-Za-z0-9_\-]{0,99}$")
    channel: Channel | None = None
    instance: str | None = None
    token: SecretStr | None = None
    url: str | None = None
    iam_url: str | None = None
    # The cloud runner's own knobs (gateway.backends.ibm.cloud; unused offline).
    max_concurrent_jobs: int = Field(default=16, ge=1)
    poll_interval_s: float = Field(default=1.0, gt=0, le=60, allow_inf_nan=False)
    creates_per_s: float = Field(default=5.0, gt=0, allow_inf_nan=False)
    retry_attempts: int = Field(default=4, ge=1)
    retry_backoff_s: float = Field(default=0.5, gt=0, allow_inf_nan=False)

    @model_validator(mode="before")
    @classmethod
    def _token_from_environment(cls, data: Any) -> Any:
        if isinstance(data, dict) and data.get("token") is None:
            token = os.environ.get(TOKEN_ENV)
            if token:
                data = {**data, "token": token}
        return data

    @property
    def is_fake(self) -> bool:
        """True when `backend` names one of qiskit-ibm-runtime's fake backends."""
        return self.backend.startswith(_FAKE_PREFIX)

    @property
    def has_credentials(self) -> bool:
        """True when a token is configured (the cloud runner needs one)."""
        return self.token is not None and bool(self.token.get_secret_value())


class _Options(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)


class TwirlingOptions(_Options):
    """Pauli twirling (qiskit-ibm-runtime's TwirlingOptions: same names, same bounds)."""

    enable_gates: bool | None = None
    enable_measure: bool | None = None
    num_randomizations: PositiveOrAuto = "auto"
    shots_per_randomization: PositiveOrAuto = "auto"

    @property
    def enabled(self) -> bool:
        return bool(self.enable_gates) or bool(self.enable_measure)


class DynamicalDecouplingOptions(_Options):
    """Dynamical decoupling (qiskit-ibm-runtime's DynamicalDecouplingOptions subset)."""

    enable: bool = False
    sequence_type: Literal["XX", "XpXm", "XY4"] = "XX"


class IbmProviderOptions(ProviderOptions):
    """JobOptions.provider_options on an IBM backend.

    Attributes:
        resilience_level: 0 (no mitigation), 1 (readout mitigation: TREX), 2 (ZNE); estimator
            PUBs only (the runtime's sampler has no such option). Unset: the runtime's default
            (1).
        twirling: Pauli twirling of gates and/or measurements.
        dynamical_decoupling: DD sequences inserted in idle periods.
    """

    resilience_level: Annotated[int, Field(ge=0, le=2)] | None = None
    twirling: TwirlingOptions | None = None
    dynamical_decoupling: DynamicalDecouplingOptions | None = None

    def runtime_options(self, primitive: Literal["sampler", "estimator"]) -> dict[str, Any]:
        """The options as the runtime primitive's `options.update(**...)` takes them: only
        what the job set."""
        out: dict[str, Any] = {}
        if self.twirling is not None:
            out["twirling"] = self.twirling.model_dump(exclude_unset=True)
        if self.dynamical_decoupling is not None:
            out["dynamical_decoupling"] = self.dynamical_decoupling.model_dump(exclude_unset=True)
        if primitive == "estimator" and self.resilience_level is not None:
            out["resilience_level"] = self.resilience_level
        return out
