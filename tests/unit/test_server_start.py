"""Gateway.start in process, with a real (small) backend: what it turns on when asked to stop
while starting."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest
from grpc_health.v1 import health_pb2

from gateway import server
from gateway.config import load_config
from tests.gateway_process import write_config

BACKEND = """
[backends.aer]
adapter = "aer"
pool = { min_instances = 1, max_instances = 1 }

[backends.sick]
adapter = "aer"
pool = { min_instances = 1, max_instances = 1 }
faults = { fail_while_exists = "SWITCH" }
"""


async def _status(gateway: server.Gateway, service: str) -> int:
    request = health_pb2.HealthCheckRequest(service=service)
    context: Any = None  # a known service: Check never aborts
    response = await gateway.health.Check(request, context)
    return int(response.status)


@pytest.mark.timeout(120)
def test_a_start_asked_to_stop_leaves_readiness_not_serving(tmp_path: Path) -> None:
    # serve() then drains without announcing itself; start() must not have turned readiness
    # SERVING (a load balancer would send traffic to a gateway that is going away).
    switch = tmp_path / "sick"
    switch.touch()  # the sick backend's every probe fails
    backends = BACKEND.replace("SWITCH", str(switch))
    config = load_config(write_config(tmp_path / "g.toml", tmp_path / "data", backends))
    published: list[tuple[str, int]] = []

    async def main() -> tuple[int, int]:
        gateway = server.Gateway(config)
        set_status = gateway.health.set

        async def record(service: str, status: Any) -> None:
            published.append((service, int(status)))
            await set_status(service, status)

        gateway.health.set = record  # type: ignore[method-assign]
        stopping = asyncio.Event()
        stopping.set()  # SIGTERM arrived while starting
        try:
            await gateway.start(stopping=stopping)
            return (
                await _status(gateway, server.READINESS_SERVICE),
                await _status(gateway, ""),
            )
        finally:
            await gateway.stop()

    readiness, liveness = asyncio.run(main())
    assert readiness == server.NOT_SERVING and liveness == server.SERVING
    # A backend is NOT_SERVING until a probe passed: the sick one never read SERVING, not even
    # while the gateway started.
    sick = [status for service, status in published if service == "qgateway.backend.sick"]
    assert sick and set(sick) == {server.NOT_SERVING}
    healthy = [status for service, status in published if service == "qgateway.backend.aer"]
    assert healthy == [server.NOT_SERVING, server.SERVING]
