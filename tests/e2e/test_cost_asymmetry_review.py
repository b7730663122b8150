"""A cost-asymmetry review over real gRPC: cheap requests whose actual cost (worker CPU, worker
restarts, a backend's availability) is far above what admission estimated or allows.

One gateway: aer-mps (matrix product state), an IBM fake device in local mode
(FakeGuadalupeV2, 16 qubits, its noise model) and Braket's local braket_sv, one worker each,
default limits (max_execution_work 1e13, about 200 s of one worker; max_shots 1e6;
max_job_shots 1e7). Each finding was an xfail until fixed. The refusals are asked with
validate_only, so nothing expensive runs here.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from qgateway import Client
from qgateway.client import estimator_pub, sampler_pub
from qgateway.errors import InvalidArgumentError
from qgateway.results import JobState
from qgateway.v1 import circuit_pb2

from tests.gateway_process import GatewayProcess, write_config

BACKENDS = """
[backends.aer-mps]
adapter = "aer"
pool = { min_instances = 1, max_instances = 1 }
options = { method = "matrix_product_state" }

[backends.ibm-guadalupe]
adapter = "ibm"
pool = { min_instances = 1, max_instances = 1 }
options = { backend = "FakeGuadalupeV2" }

[backends.braket-sv]
adapter = "braket"
pool = { min_instances = 1, max_instances = 1 }
options = { device = "braket_sv" }
"""


@pytest.fixture(scope="module")
def client(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Client]:
    root = tmp_path_factory.mktemp("cost-asymmetry")
    config = write_config(root / "gateway.toml", root / "data", BACKENDS)
    process = GatewayProcess.start(config, root / "gateway.log", start_timeout=180.0)
    try:
        with Client(process.address) as c:
            yield c
    finally:
        assert process.terminate() == 0, process.log_path.read_text()[-4000:]


def brick(n: int, layers: int, measure: bool = True) -> str:
    """Layers of distinct one-qubit rotations and a brickwork of cx: entangling, no symmetry."""
    lines = ["OPENQASM 3.0;", 'include "stdgates.inc";', f"qubit[{n}] q;"]
    if measure:
        lines.append(f"bit[{n}] c;")
    for layer in range(layers):
        lines += [f"rx({0.3 + 0.1 * q + 0.07 * layer:.3f}) q[{q}];" for q in range(n)]
        lines += [f"rz({0.2 + 0.05 * q:.3f}) q[{q}];" for q in range(n)]
        lines += [f"cx q[{q}], q[{q + 1}];" for q in range(layer % 2, n - 1, 2)]
    if measure:
        lines.append("c = measure q;")
    return "\n".join(lines) + "\n"


def _refusal(
    client: Client,
    pubs: list[circuit_pb2.Pub],
    backend: str,
    provider_options: dict[str, Any] | None = None,
) -> InvalidArgumentError:
    with pytest.raises(InvalidArgumentError) as caught:
        client.validate(pubs, backend=backend, provider_options=provider_options, timeout=60)
    return caught.value


def test_mps_shots_are_priced_at_what_sampling_the_mps_costs(client: Client) -> None:
    """Aer samples an MPS shot by shot (~chi^2 x n each): a 16-qubit, 16-layer brickwork ran
    ~3.2 ms a shot, so 1,000,000 shots (~3200 s) were admitted as 0.35 s of work."""
    pub = sampler_pub(brick(16, 16), shots=1_000_000)
    error = _refusal(client, [pub], "aer-mps")
    assert error.reason == "EXECUTION_TOO_EXPENSIVE"
    assert error.metadata["limit"] == "max_execution_work"


def test_noisy_ibm_fake_shots_are_priced_as_trajectories(client: Client) -> None:
    """An IBM fake's noise model makes Aer follow each shot as a trajectory while the shots
    are at most 2^n (~7 ms a shot at 12 qubits), priced as one batched run: 65,536 shots of a
    16-qubit brickwork would run about an hour. Past 2^n Aer evolves the density matrix once,
    which is cheap: 1,000,000 shots of 12 qubits are admitted."""
    error = _refusal(client, [sampler_pub(brick(16, 6), shots=65_536)], "ibm-guadalupe")
    assert error.reason == "EXECUTION_TOO_EXPENSIVE"
    assert error.metadata["limit"] == "max_execution_work"
    estimate = client.validate(
        [sampler_pub(brick(12, 6), shots=1_000_000)], backend="ibm-guadalupe", timeout=60
    )
    assert estimate.shots == 1_000_000


def test_twirling_randomizations_are_priced(client: Client) -> None:
    """Each randomization is a circuit the runtime builds and Aer runs (~0.37 ms each at one
    qubit): 10 x 1,000,000 randomizations of one shot (~3700 s) were admitted as 0.2 s."""
    pubs = [sampler_pub(brick(1, 1), shots=1_000_000) for _ in range(10)]
    twirling = {
        "enable_gates": True,
        "enable_measure": True,
        "num_randomizations": 1_000_000,
        "shots_per_randomization": 1,
    }
    error = _refusal(client, pubs, "ibm-guadalupe", {"twirling": twirling})
    assert error.reason == "EXECUTION_TOO_EXPENSIVE"
    assert error.metadata["limit"] == "max_execution_work"


def test_ibm_fake_estimator_mitigation_is_priced(client: Client) -> None:
    """An IBM fake's estimator was priced as one noiseless pass: at resilience_level 2 a
    7-qubit <ZZZZZZZ> at precision 0.01 ran 43.6 s (0.41 s at level 0); 50 of them
    (~2200 s) were admitted as under 1 ms."""
    circuit = brick(7, 6, measure=False)
    pubs = [estimator_pub(circuit, "ZZZZZZZ", precision=0.01) for _ in range(50)]
    error = _refusal(client, pubs, "ibm-guadalupe", {"resilience_level": 2})
    assert error.reason == "EXECUTION_TOO_EXPENSIVE"
    assert error.metadata["limit"] == "max_execution_work"


def remeasured(measurements: int) -> str:
    """One qubit put in superposition and measured again and again (into 64 bits in turn):
    every measurement splits every path Braket follows, up to one path per shot."""
    lines = ["OPENQASM 3.0;", 'include "stdgates.inc";', "qubit[1] q;", "bit[64] c;"]
    for i in range(measurements):
        lines += ["h q[0];", f"c[{i % 64}] = measure q[0];"]
    return "\n".join(lines) + "\n"


def test_braket_branching_is_priced_per_path_and_measurement(client: Client) -> None:
    """braket_sv re-evolves every path's prefix at each mid-circuit measurement: quadratic in
    them (100 shots: 25, 50, 100 measurements ran 1.1, 4.3, 16 s); 1600 (~70 min) were
    admitted as 193 s."""
    pub = sampler_pub(remeasured(1600), shots=100)
    error = _refusal(client, [pub], "braket-sv")
    assert error.reason == "EXECUTION_TOO_EXPENSIVE"
    assert error.metadata["limit"] == "max_execution_work"


def test_an_ibm_fake_estimator_job_does_not_crash_its_worker(client: Client) -> None:
    """Each observable went into NumPy's object array as a slice, so NumPy asked it for its
    dense 4^n matrix over the device's qubits: on 16 qubits the allocation panicked and the
    worker exited (6 of 6 jobs WORKER_CRASHED; 5 in a row opened the breaker for everyone)."""
    pub = estimator_pub(brick(2, 1, measure=False), "ZZ", precision=0.1)
    job = client.submit_pubs([pub], backend="ibm-guadalupe", seed=1, timeout=60)
    done = client.wait(job.name, timeout=60)
    assert (done.state, done.error_reason) == (JobState.SUCCEEDED, "")
