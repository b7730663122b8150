from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import settings

from tests.gateway_process import GatewayProcess, write_config

pytest_plugins = ["tests.phase_watchdog"]

# Property tests draw the same examples on every run: a CI result must not depend on luck. A
# case one of them finds once becomes a plain test of its own.
settings.register_profile("deterministic", derandomize=True)
settings.load_profile("deterministic")

# One gateway for the whole session (every process that imports the SDK stack pays seconds).
SESSION_BACKENDS = """
[backends.aer]
adapter = "aer"
pool = { min_instances = 2, max_instances = 2 }
max_shots = 100000
max_queued_jobs = 10000
options = { method = "statevector" }

[backends.aer-mps]
adapter = "aer"
pool = { min_instances = 1, max_instances = 1 }
options = { method = "matrix_product_state" }

[backends.aer-tiny]
adapter = "aer"
pool = { min_instances = 1, max_instances = 1 }
memory_budget_mb = 1
options = { method = "statevector" }
"""


@pytest.fixture(scope="session")
def gateway(tmp_path_factory: pytest.TempPathFactory) -> Iterator[GatewayProcess]:
    root = tmp_path_factory.mktemp("gateway")
    config = write_config(root / "gateway.toml", root / "data", SESSION_BACKENDS)
    process = GatewayProcess.start(config, root / "gateway.log")
    yield process
    code = process.terminate()
    assert code == 0, f"gateway exited {code}:\n{process.log_path.read_text()[-4000:]}"


@pytest.fixture(scope="session")
def address(gateway: GatewayProcess) -> str:
    return gateway.address


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture(scope="session")
def examples() -> Path:
    return Path(__file__).resolve().parent.parent / "examples"
