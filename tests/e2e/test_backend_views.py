"""Backend views and targets over real gRPC (one gateway, an admin key and a tenant key).

Every tenant gets the BASIC view; health, breaker and pool (the FULL view) only admins, and the
health error they read is a reason, never the failure's text. GetBackendTarget answers what a
job really accepts: a circuit using every instruction it lists runs, on as many qubits as
GetBackend says.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path
from typing import Any, cast

import grpc
import pytest
from qgateway import AsyncClient, Client, PermissionDeniedError, RetryPolicy
from qgateway.qiskit_target import to_target
from qgateway.results import JobResult
from qgateway.v1 import backend_pb2, backend_service_pb2, backend_service_pb2_grpc, circuit_pb2
from qiskit import QuantumCircuit, qasm3, transpile

from gateway.security.api_keys import NewKey, generate_key
from gateway.security.principals import Role
from tests.gateway_process import GatewayProcess, keys_toml, write_config
from tests.rpc import status_of
from tests.targets import every_instruction, operation_names, qpy_bytes

ADMIN = generate_key("ops", role=Role.ADMIN)
TENANT = generate_key("acme")
AER_QUBITS = 12
BASIC, FULL = backend_pb2.BACKEND_VIEW_BASIC, backend_pb2.BACKEND_VIEW_FULL
INVALID = grpc.StatusCode.INVALID_ARGUMENT
DOMAIN = "qgateway.dev"


@pytest.fixture(scope="module")
def sick_switch(tmp_path_factory: pytest.TempPathFactory) -> Path:
    # Its path is in the injected failure's message: it must never reach a client.
    switch = tmp_path_factory.mktemp("secret-dir") / "sick-switch"
    switch.touch()
    return switch


@pytest.fixture(scope="module")
def gw(tmp_path_factory: pytest.TempPathFactory, sick_switch: Path) -> Iterator[GatewayProcess]:
    root = tmp_path_factory.mktemp("views")
    backends = f"""
[backends.aer]
adapter = "aer"
pool = {{ min_instances = 1, max_instances = 1 }}
max_run_time_s = 120
options = {{ method = "statevector", num_qubits = {AER_QUBITS} }}

[backends.sick]
adapter = "aer"
pool = {{ min_instances = 1, max_instances = 1 }}
health_interval_s = 3600
breaker = {{ failure_threshold = 1000 }}
faults = {{ fail_while_exists = "{sick_switch}" }}
"""
    config = write_config(root / "g.toml", root / "data", keys_toml(ADMIN, TENANT) + backends)
    # The gateway announces itself once every backend's first probe has finished.
    process = GatewayProcess.start(config, root / "gateway.log")
    yield process
    assert process.terminate() == 0, process.log_path.read_text()[-3000:]


def _md(key: NewKey) -> list[tuple[str, str]]:
    return [("authorization", f"Bearer {key.key}")]


@pytest.fixture(scope="module")
def stub(gw: GatewayProcess) -> Iterator[Any]:
    with grpc.insecure_channel(gw.address) as channel:
        yield backend_service_pb2_grpc.BackendServiceStub(channel)  # type: ignore[no-untyped-call]


@pytest.fixture(scope="module")
def tenant(gw: GatewayProcess) -> Iterator[Client]:
    with Client(gw.address, metadata=_md(TENANT), retry=RetryPolicy(max_attempts=1)) as c:
        yield c


@pytest.fixture(scope="module")
def admin(gw: GatewayProcess) -> Iterator[Client]:
    with Client(gw.address, metadata=_md(ADMIN), retry=RetryPolicy(max_attempts=1)) as c:
        yield c


# The generated stubs are untyped: Any.
def _get(stub: Any, key: NewKey, name: str, view: int = 0) -> backend_pb2.Backend:
    request = backend_service_pb2.GetBackendRequest(name=name, view=cast(Any, view))
    backend: backend_pb2.Backend = stub.GetBackend(request, metadata=_md(key), timeout=10).backend
    return backend


def _list(
    stub: Any, key: NewKey, view: int = 0, **kw: Any
) -> backend_service_pb2.ListBackendsResponse:
    request = backend_service_pb2.ListBackendsRequest(view=cast(Any, view), **kw)
    response: backend_service_pb2.ListBackendsResponse = stub.ListBackends(
        request, metadata=_md(key), timeout=10
    )
    return response


def _no_operational_detail(backend: backend_pb2.Backend) -> None:
    assert not backend.HasField("health"), backend.name
    assert not backend.HasField("pool"), backend.name
    assert backend.breaker_state == backend_pb2.BREAKER_STATE_UNSPECIFIED, backend.name


# -------------------------------------------------------------------------------------- views


@pytest.mark.parametrize("view", [backend_pb2.BACKEND_VIEW_UNSPECIFIED, BASIC])
def test_tenant_basic_view_has_no_health_pool_or_breaker(stub: Any, view: int) -> None:
    got = _get(stub, TENANT, "backends/aer", view)
    _no_operational_detail(got)
    assert (got.name, got.provider, got.num_qubits) == ("backends/aer", "aer", AER_QUBITS)
    assert got.kind == backend_pb2.BACKEND_KIND_SIMULATOR
    assert got.status == backend_pb2.BACKEND_STATUS_ONLINE and got.queue_length == 0
    assert got.limits.max_shots > 0 and got.limits.max_execution_seconds == 120
    listed = _list(stub, TENANT, view)
    assert [b.name for b in listed.backends] == ["backends/aer", "backends/sick"]
    for backend in listed.backends:
        _no_operational_detail(backend)
    # A sick backend is OFFLINE to everyone, without saying why.
    assert listed.backends[1].status == backend_pb2.BACKEND_STATUS_OFFLINE


def test_client_basic_view(tenant: Client) -> None:
    backend = tenant.get_backend("aer")
    assert (backend.health, backend.pool, backend.breaker_state) == (None, None, None)
    assert backend.queue_length == 0 and backend.limits is not None
    assert all(b.health is None for b in tenant.list_backends(view="BASIC"))


@pytest.mark.parametrize("call", ["get", "list"])
def test_full_view_is_denied_to_a_tenant(stub: Any, call: str) -> None:
    with pytest.raises(grpc.RpcError) as caught:
        if call == "get":
            _get(stub, TENANT, "backends/aer", FULL)
        else:
            _list(stub, TENANT, FULL)
    info = status_of(caught.value)
    assert (info.code, info.reason, info.domain) == (
        grpc.StatusCode.PERMISSION_DENIED,
        "ADMIN_VIEW_DENIED",
        DOMAIN,
    )
    assert info.metadata == {"view": "BACKEND_VIEW_FULL"}


def test_client_full_view_denied_to_a_tenant(tenant: Client) -> None:
    with pytest.raises(PermissionDeniedError) as caught:
        tenant.get_backend("aer", view="FULL")
    assert caught.value.reason == "ADMIN_VIEW_DENIED"
    with pytest.raises(PermissionDeniedError):
        tenant.list_backends(view="FULL")


def test_admin_full_view_has_health_pool_and_breaker(stub: Any, sick_switch: Path) -> None:
    aer = _get(stub, ADMIN, "backends/aer", FULL)
    assert aer.health.serving and aer.health.HasField("last_probe_time")
    assert aer.health.last_error == ""
    assert aer.breaker_state == backend_pb2.BREAKER_STATE_CLOSED
    assert (aer.pool.min_instances, aer.pool.max_instances) == (1, 1)
    assert aer.pool.in_use + aer.pool.idle >= 1 and aer.pool.peak_instances >= 1
    sick = _get(stub, ADMIN, "backends/sick", FULL)
    assert not sick.health.serving and sick.health.HasField("last_probe_time")
    # The injected failure's message names the switch's path; the API shows only a reason.
    assert sick.health.last_error == "PROBE_FAILED: execution failed"
    assert str(sick_switch.parent) not in sick.health.last_error
    listed = _list(stub, ADMIN, FULL)
    assert [b.health.last_error for b in listed.backends] == ["", sick.health.last_error]
    # An admin asking for BASIC gets BASIC.
    _no_operational_detail(_get(stub, ADMIN, "backends/aer", BASIC))


def test_client_full_view_for_admin(admin: Client) -> None:
    backend = admin.get_backend("backends/sick", view="FULL")
    assert backend.health is not None and not backend.health.serving
    assert backend.health.last_error == "PROBE_FAILED: execution failed"
    assert backend.breaker_state == "CLOSED" and backend.pool is not None
    assert [b.pool is not None for b in admin.list_backends(view="FULL")] == [True, True]


@pytest.mark.parametrize("view", [3, -1, 1 << 20])
def test_undefined_view_is_invalid_argument(stub: Any, view: int) -> None:
    for call in (_get, _list):
        with pytest.raises(grpc.RpcError) as caught:
            if call is _get:
                _get(stub, ADMIN, "backends/aer", view)
            else:
                _list(stub, ADMIN, view)
        info = status_of(caught.value)
        assert (info.code, info.reason) == (INVALID, "INVALID_BACKEND_VIEW")
        assert info.fields == ["view"]


def test_page_token_is_bound_to_its_view(stub: Any) -> None:
    first = _list(stub, ADMIN, BASIC, page_size=1)
    assert [b.name for b in first.backends] == ["backends/aer"] and first.next_page_token
    second = _list(stub, ADMIN, BASIC, page_size=1, page_token=first.next_page_token)
    assert [b.name for b in second.backends] == ["backends/sick"]
    assert not second.next_page_token
    with pytest.raises(grpc.RpcError) as caught:
        _list(stub, ADMIN, FULL, page_size=1, page_token=first.next_page_token)
    assert status_of(caught.value).reason == "INVALID_PAGE_TOKEN"


# ------------------------------------------------------------------------------------ targets


def _target(stub: Any, key: NewKey, name: str) -> backend_pb2.BackendTarget:
    request = backend_service_pb2.GetBackendTargetRequest(name=name)
    target: backend_pb2.BackendTarget = stub.GetBackendTarget(
        request, metadata=_md(key), timeout=30
    ).target
    return target


def test_aer_target_is_what_a_job_accepts(tenant: Client) -> None:
    message = tenant.get_backend_target("aer")
    assert message.name == "backends/aer/target"
    assert message.num_qubits == tenant.get_backend("aer").num_qubits == AER_QUBITS
    # An ideal simulator: no qubit data, no dt, all-to-all, every instruction on any qubits.
    assert not message.qubits and not message.coupling_map and not message.HasField("dt")
    assert all(not i.qargs for i in message.instructions)
    names = [i.name for i in message.instructions]
    assert names == sorted(names)
    offered = {"cx", "h", "rz", "measure", "reset", "if_else", "while_loop", "for_loop"}
    assert offered | {"switch_case"} <= set(names)  # switch: OpenQASM 3's reader builds it
    # Aer's own instructions, and what the gateway's reader refuses, are not offered.
    assert not {"save_statevector", "kraus", "unitary"} & set(names)
    assert {"break_loop", "continue_loop"} <= set(names)  # they run inside loops

    target = to_target(message)
    circuit = every_instruction(target)
    assert set(target.operation_names) <= operation_names(circuit)
    # Sent as QPY, which carries every standard gate as itself (OpenQASM 3 text has only the
    # gates of stdgates.inc).
    source = circuit_pb2.Circuit(qpy=qpy_bytes(circuit))
    result = tenant.run(source, backend="aer", shots=32, seed=3, timeout=120)
    assert isinstance(result, JobResult) and sum(result.counts().values()) == 32

    # A circuit transpiled for the target, on every qubit it offers, runs as well.
    wide = QuantumCircuit(AER_QUBITS)
    wide.h(0)
    for q in range(AER_QUBITS - 1):
        wide.cx(q, q + 1)
    wide.measure_all()
    isa = transpile(wide, target=target, seed_transpiler=1)
    counts = tenant.run(qasm3.dumps(isa), backend="aer", shots=64, seed=4, timeout=120).counts()
    assert set(counts) <= {"0" * AER_QUBITS, "1" * AER_QUBITS} and sum(counts.values()) == 64


def test_target_is_the_same_for_every_caller_and_every_call(stub: Any) -> None:
    first = _target(stub, TENANT, "backends/aer/target")
    assert _target(stub, ADMIN, "backends/aer/target") == first
    assert _target(stub, TENANT, "backends/aer/target") == first


def test_async_client_reads_views_and_targets(gw: GatewayProcess) -> None:
    async def main() -> tuple[int, bool, int]:
        async with AsyncClient(gw.address, metadata=_md(ADMIN)) as client:
            target = await client.get_backend_target("backends/aer/target")
            full = await client.get_backend("aer", view="FULL")
            listed = await client.list_backends(view="BASIC")
            return target.num_qubits, full.pool is not None, len(listed)

    assert asyncio.run(main()) == (AER_QUBITS, True, 2)


@pytest.mark.parametrize(
    "name",
    [
        "aer",
        "backends/aer",
        "aer/target",
        "backends/aer/target/",
        "backends/aer/targets",
        "backends//target",
        "backends/aer/x/target",
        "backends/a b/target",
        "jobs/aer/target",
        "",
        "backends/" + "a" * 200 + "/target",
    ],
)
def test_bad_target_names_are_invalid_argument(stub: Any, name: str) -> None:
    with pytest.raises(grpc.RpcError) as caught:
        _target(stub, TENANT, name)
    info = status_of(caught.value)
    assert (info.code, info.reason, info.domain) == (INVALID, "INVALID_TARGET_NAME", DOMAIN)
    assert info.fields == ["name"]


def test_unknown_backend_target_is_not_found(stub: Any) -> None:
    with pytest.raises(grpc.RpcError) as caught:
        _target(stub, TENANT, "backends/nope/target")
    info = status_of(caught.value)
    assert (info.code, info.reason) == (grpc.StatusCode.NOT_FOUND, "BACKEND_NOT_FOUND")
    assert info.metadata.get("backend") == "backends/nope"
