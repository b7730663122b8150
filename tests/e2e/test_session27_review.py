"""Session 27's changes, reviewed on a real gateway process: the Health.Watch bound
(gateway.interceptors.public_calls) was one count for both ports (fixed: each its own)."""

from __future__ import annotations

import re
from collections.abc import Iterator

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from tests.gateway_process import GatewayProcess, write_config

MAX_WATCHES = 2
SERVING = health_pb2.HealthCheckResponse.SERVING


@pytest.fixture(scope="module")
def gw(tmp_path_factory: pytest.TempPathFactory) -> Iterator[GatewayProcess]:
    root = tmp_path_factory.mktemp("s27")
    config = write_config(
        root / "g.toml",
        root / "data",
        # One small backend: the embedded defaults start several (seconds of start-up).
        '[backends.aer]\nadapter = "aer"\npool = { min_instances = 1, max_instances = 1 }\n',
        server=f'health_listen = "127.0.0.1:0"\nmax_health_watches = {MAX_WATCHES}\n',
    )
    process = GatewayProcess.start(config, root / "gateway.log")
    yield process
    assert process.terminate() == 0, process.log_path.read_text()[-3000:]


def _health_address(gw: GatewayProcess) -> str:
    match = re.search(r"plaintext health-only port on (\S+)", gw.log_path.read_text())
    assert match is not None, gw.log_path.read_text()[-2000:]
    return match.group(1)


@pytest.mark.timeout(60)
def test_strangers_on_the_public_port_do_not_take_the_health_ports_watches(
    gw: GatewayProcess,
) -> None:
    request = health_pb2.HealthCheckRequest(service="")
    public = grpc.insecure_channel(gw.address)
    private = grpc.insecure_channel(_health_address(gw))
    held = []
    try:
        stranger = health_pb2_grpc.HealthStub(public)
        for _ in range(MAX_WATCHES):
            watch = stranger.Watch(request, timeout=30)
            assert next(watch).status == SERVING  # open and counted
            held.append(watch)
        probe = health_pb2_grpc.HealthStub(private).Watch(request, timeout=30)
        held.append(probe)
        try:
            first = next(probe)
        except grpc.RpcError as refused:
            pytest.fail(f"the health-only port's Watch refused: {refused.code()} {refused}")
        assert first.status == SERVING
    finally:
        for watch in held:
            watch.cancel()
        public.close()
        private.close()
