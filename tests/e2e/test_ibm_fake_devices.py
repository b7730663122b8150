"""A 127-qubit IBM fake device behind a real gateway: FakeBrisbane's target, noise and local-mode
primitives in a simulator worker (one small job: local mode on 127 qubits costs seconds)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from qgateway import Client

from tests.gateway_process import GatewayProcess, write_config

BACKENDS = """
[backends.ibm-fake-brisbane]
adapter = "ibm"
pool = { min_instances = 1, max_instances = 1 }
options = { backend = "FakeBrisbane" }
"""


@pytest.fixture(scope="module")
def client(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Client]:
    root = tmp_path_factory.mktemp("ibm")
    config = write_config(root / "gateway.toml", root / "data", BACKENDS)
    process = GatewayProcess.start(config, root / "gateway.log", start_timeout=180.0)
    try:
        with Client(process.address) as c:
            yield c
    finally:
        assert process.terminate() == 0, Path(process.log_path).read_text()[-4000:]


def test_a_small_circuit_runs_on_the_127_qubit_fake(client: Client) -> None:
    backend = client.get_backend("ibm-fake-brisbane")
    assert backend.num_qubits == 127
    assert "ecr" in backend.basis_gates
    # GHZ-3 on three of the device's 127 qubits, through its ECR basis and coupling map.
    ghz = (
        'OPENQASM 3.0;\ninclude "stdgates.inc";\nqubit[3] q; bit[3] c;\n'
        "h q[0]; cx q[0], q[1]; cx q[1], q[2]; c = measure q;\n"
    )
    job = client.submit(ghz, backend="ibm-fake-brisbane", shots=1000, seed=5)
    done = client.wait(job.name, timeout=60)
    assert done.state == "SUCCEEDED", done.error
    counts = client.get_result(job.name).sampler().counts()
    assert sum(counts.values()) == 1000
    # Calibrated noise of a few percent: GHZ keeps most of its weight on 000 and 111.
    assert counts.get("000", 0) + counts.get("111", 0) > 800, counts
    assert done.execution is not None
    assert len(done.execution.layouts[0]) == 3 and max(done.execution.layouts[0]) < 127
