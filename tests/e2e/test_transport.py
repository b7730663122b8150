"""HTTP/2 connection limits on a real gateway (server.max_connection_idle_s and friends)."""

from __future__ import annotations

import threading
from collections.abc import Iterator

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from tests.gateway_process import GatewayProcess, write_config

BACKENDS = '[backends.aer]\nadapter = "aer"\npool = { min_instances = 1, max_instances = 1 }\n'


@pytest.fixture(scope="module")
def address(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    root = tmp_path_factory.mktemp("transport")
    server = "max_connection_idle_s = 1\n"
    config = write_config(root / "g.toml", root / "data", BACKENDS, server=server)
    gateway = GatewayProcess.start(config, root / "gateway.log")
    yield gateway.address
    assert gateway.terminate() == 0


@pytest.mark.timeout(60)
def test_an_idle_connection_is_closed(address: str) -> None:
    # With grpc's default (no idle limit) a connection that sent one call and nothing more
    # held its descriptor for ever: enough of them and new clients and probes were refused.
    with grpc.insecure_channel(address) as channel:
        health = health_pb2_grpc.HealthStub(channel)
        answer = health.Check(health_pb2.HealthCheckRequest(service=""), timeout=10)
        assert answer.status == health_pb2.HealthCheckResponse.SERVING
        closed = threading.Event()

        def seen(state: grpc.ChannelConnectivity) -> None:
            if state is grpc.ChannelConnectivity.IDLE:  # the server's GOAWAY, not ours
                closed.set()

        channel.subscribe(seen)
        assert closed.wait(30), "the gateway kept an idle connection open"
        channel.unsubscribe(seen)


@pytest.mark.timeout(60)
def test_metadata_up_to_the_limit_is_always_accepted(address: str) -> None:
    # Between grpc's soft (8 KiB) and hard (16 KiB) limits a call was refused at random: a
    # large JWT beside a forwarded client certificate got RESOURCE_EXHAUSTED now and then.
    with grpc.insecure_channel(address) as channel:
        health = health_pb2_grpc.HealthStub(channel)
        request = health_pb2.HealthCheckRequest(service="")
        for _ in range(30):
            answer = health.Check(request, metadata=(("x-big", "a" * 12_000),), timeout=10)
            assert answer.status == health_pb2.HealthCheckResponse.SERVING
        with pytest.raises(grpc.RpcError):
            health.Check(request, metadata=(("x-big", "a" * 17_000),), timeout=10)
