"""One gateway running the whole local fleet, one instance per backend, for the conformance
suite; plus a test-only backend that reverses Aer's bit order (registered through the same
entry-point group a third-party adapter package uses), which the suite must fail."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from qgateway import Client

from tests.gateway_process import GatewayProcess, write_config


@dataclass(frozen=True)
class Profile:
    """What the suite expects of a backend beyond what it declares itself.

    Attributes:
        noise: None for an exact simulator; else the total-variation budget its results keep
            from the ideal distribution on the suite's circuits (its stated fidelity bound).
        estimator_noise: For a noisy backend, how far an expectation value may be from ideal.
        sampled_estimator: Its estimator samples shots (as a QPU's does): standard errors are
            its own estimates, not the precision asked for.
    """

    noise: float | None = None
    estimator_noise: float = 0.0
    sampled_estimator: bool = False


# The braket-dm-noisy channels: see test_conformance.test_braket_noise_matches_its_channels.
BRAKET_NOISE = {"depolarizing_1q": 0.004, "depolarizing_2q": 0.02, "readout_flip": 0.01}

PROFILES: dict[str, Profile] = {
    "aer": Profile(),
    "braket-sv": Profile(),
    "braket-dm": Profile(),
    "pennylane-lightning": Profile(),
    "pennylane-default": Profile(),
    # FakeManilaV2's calibrated noise: readout errors of 2-5 % per qubit and CX errors near 1 %,
    # after routing a GHZ-4 keeps ~0.84 of its weight (measured); 0.3 leaves room for a
    # recalibrated fake without letting a wrong bit order (TV distance 1) pass.
    "aer-noisy-manila": Profile(noise=0.3, estimator_noise=0.35),
    "braket-dm-noisy": Profile(noise=0.2, estimator_noise=0.25),
    # The same device data run through qiskit-ibm-runtime's own primitives in local mode
    # (estimates from shots, readout mitigation at the runtime's default resilience level).
    "ibm-fake-manila": Profile(noise=0.3, estimator_noise=0.35, sampled_estimator=True),
}
_NOISE_TOML = ", ".join(f"{k} = {v}" for k, v in BRAKET_NOISE.items())
EXACT = [name for name, profile in PROFILES.items() if profile.noise is None]
NOISY = [name for name, profile in PROFILES.items() if profile.noise is not None]
REVERSED = "aer-reversed-bits"

FLEET = f"""
[backends.aer]
adapter = "aer"
pool = {{ min_instances = 1, max_instances = 1 }}

[backends.aer-noisy-manila]
adapter = "aer"
pool = {{ min_instances = 1, max_instances = 1 }}
options = {{ method = "density_matrix", noise_from = "FakeManilaV2" }}

[backends.ibm-fake-manila]
adapter = "ibm"
pool = {{ min_instances = 1, max_instances = 1 }}
options = {{ backend = "FakeManilaV2" }}

[backends.braket-sv]
adapter = "braket"
pool = {{ min_instances = 1, max_instances = 1 }}
options = {{ device = "braket_sv" }}

[backends.braket-dm]
adapter = "braket"
pool = {{ min_instances = 1, max_instances = 1 }}
options = {{ device = "braket_dm" }}

[backends.braket-dm-noisy]
adapter = "braket"
pool = {{ min_instances = 1, max_instances = 1 }}
options = {{ device = "braket_dm", noise = {{ {_NOISE_TOML} }} }}

[backends.pennylane-lightning]
adapter = "pennylane"
pool = {{ min_instances = 1, max_instances = 1 }}
options = {{ device = "lightning.qubit" }}

[backends.pennylane-default]
adapter = "pennylane"
pool = {{ min_instances = 1, max_instances = 1 }}
options = {{ device = "default.qubit" }}

[backends.{REVERSED}]
adapter = "{REVERSED}"
pool = {{ min_instances = 1, max_instances = 1 }}
"""

_DIST_INFO = "qgateway_conformance_wrappers-0.dist-info"


def _wrapper_distribution(root: Path) -> Path:
    """A directory holding an installed-looking distribution that registers the reversing
    wrapper under "qgateway.backends" (the module itself is importable from the repository)."""
    site = root / "site"
    dist = site / _DIST_INFO
    dist.mkdir(parents=True)
    (dist / "METADATA").write_text(
        "Metadata-Version: 2.1\nName: qgateway-conformance-wrappers\nVersion: 0\n"
    )
    wrapper = "tests.conformance.reversed_bits:ReversedBitsAerAdapter"
    (dist / "entry_points.txt").write_text(f"[qgateway.backends]\n{REVERSED} = {wrapper}\n")
    return site


@pytest.fixture(scope="session")
def fleet(tmp_path_factory: pytest.TempPathFactory) -> Iterator[GatewayProcess]:
    root = tmp_path_factory.mktemp("fleet")
    config = write_config(root / "fleet.toml", root / "data", FLEET)
    site = _wrapper_distribution(root)
    process = GatewayProcess.start(
        config, root / "gateway.log", start_timeout=180.0, env={"PYTHONPATH": str(site)}
    )
    yield process
    code = process.terminate()
    assert code == 0, f"gateway exited {code}:\n{process.log_path.read_text()[-4000:]}"


@pytest.fixture(scope="session")
def client(fleet: GatewayProcess) -> Iterator[Client]:
    with Client(fleet.address) as c:
        yield c
