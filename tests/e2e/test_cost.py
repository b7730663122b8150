"""Cost before and after every job (issue 10, item 6), over real gRPC: a backend's price table
in config, SubmitJob validate_only (AIP-163) answering the verdict and an estimate without
creating anything, and each finished job's usage and cost, kept across a restart.

Expected amounts are computed here from the price table and the shots each request asks for.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from pathlib import Path

import pytest
from qgateway import Client, sampler_pub
from qgateway.errors import FailedPreconditionError, InvalidArgumentError

from tests.gateway_process import GatewayProcess, write_config

BACKENDS = """
[backends.priced]
adapter = "aer"
pool = { min_instances = 1, max_instances = 1 }
default_shots = 50
price = { per_task = 0.3, per_shot = 0.001, unit = "USD" }

[backends.timed]
adapter = "aer"
pool = { min_instances = 1, max_instances = 1 }
price = { per_task = 0.0, per_shot = 0.0, per_second = 2.0, unit = "credits" }

[backends.free]
adapter = "aer"
pool = { min_instances = 1, max_instances = 1 }
"""

H3 = 'OPENQASM 3.0;\ninclude "stdgates.inc";\n'
BELL = H3 + "qubit[2] q; bit[2] c; h q[0]; cx q[0], q[1]; c = measure q;"
SWEEP = H3 + "input float[64] theta; qubit[1] q; bit[1] c; rx(theta) q[0]; c[0] = measure q[0];"


@pytest.fixture(scope="module")
def root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("cost")
    write_config(path / "g.toml", path / "data", BACKENDS)
    return path


@pytest.fixture(scope="module")
def gateway(root: Path) -> Iterator[GatewayProcess]:
    process = GatewayProcess.start(root / "g.toml", root / "gateway.log")
    yield process
    process.terminate()


@pytest.fixture(scope="module")
def client(gateway: GatewayProcess) -> Iterator[Client]:
    with Client(gateway.address) as c:
        yield c


def pubs() -> list:  # type: ignore[type-arg]
    # 3 bindings x 100 shots, then the backend's default of 50: 350 shots.
    return [
        sampler_pub(SWEEP, shots=100, parameter_values=[[0.1], [0.2], [0.3]]),
        sampler_pub(BELL),
    ]


def test_validate_only_estimates_and_creates_nothing(client: Client) -> None:
    before = len(list(client.list_jobs()))
    estimate = client.validate(pubs(), backend="priced")
    assert estimate.shots == 350
    assert estimate.cost is not None
    assert estimate.cost.unit == "USD"
    assert math.isclose(estimate.cost.amount, 0.3 + 0.001 * 350)
    assert not estimate.per_second_excluded
    assert len(list(client.list_jobs())) == before
    # A per-second price is only known after the run: the estimate says it left it out.
    timed = client.validate(pubs(), backend="timed")
    assert timed.per_second_excluded and timed.cost is not None and timed.cost.amount == 0.0
    # No price table: the verdict alone.
    free = client.validate(pubs(), backend="free")
    assert free.cost is None
    assert free.shots == 3 * 100 + 1024  # its default_shots is the gateway's, 1024


def test_validate_only_refuses_what_a_submission_would(client: Client) -> None:
    bad = [sampler_pub(H3 + "qubit[2] q; bit[2] c; nosuchgate q[0]; c = measure q;")]
    with pytest.raises(InvalidArgumentError) as info:
        client.validate(bad, backend="priced")
    assert info.value.reason == "UNKNOWN_GATE"
    with pytest.raises(InvalidArgumentError) as submitted:
        client.submit_pubs(bad, backend="priced")
    assert submitted.value.reason == info.value.reason


def test_a_finished_job_reports_its_usage_and_cost(client: Client) -> None:
    job = client.wait(client.submit_pubs(pubs(), backend="priced", seed=1).name, timeout=60)
    assert job.state == "SUCCEEDED"
    assert job.usage is not None and job.usage.shots == 350
    assert job.usage.execution_time.total_seconds() > 0
    assert job.cost is not None and job.cost.unit == "USD"
    assert math.isclose(job.cost.amount, 0.3 + 0.001 * 350)
    # Per second: the job's own execution time, at 2 credits a second.
    timed = client.wait(client.submit_pubs(pubs(), backend="timed", seed=1).name, timeout=60)
    assert timed.usage is not None and timed.cost is not None
    assert timed.cost.unit == "credits"
    # Python's timedelta keeps microseconds: the amount is exact to 2 credits x 1 us.
    seconds = timed.usage.execution_time.total_seconds()
    assert seconds > 0
    assert math.isclose(timed.cost.amount, 2.0 * seconds, rel_tol=0, abs_tol=2.0e-6)
    free = client.wait(client.submit_pubs(pubs(), backend="free", seed=1).name, timeout=60)
    assert free.usage is not None and free.usage.shots == 3 * 100 + 1024
    assert free.cost is None


def test_a_session_reports_its_running_total(client: Client) -> None:
    session = client.create_session("priced", mode="BATCH")
    assert session.shots == 0 and session.costs == ()
    jobs = [
        client.wait(
            client.submit_pubs(pubs(), backend="priced", seed=i, session=session.name).name,
            timeout=60,
        )
        for i in range(2)
    ]
    assert all(j.state == "SUCCEEDED" for j in jobs)
    total = client.get_session(session.name)
    assert total.shots == 2 * 350
    assert len(total.costs) == 1 and total.costs[0].unit == "USD"
    assert math.isclose(total.costs[0].amount, 2 * (0.3 + 0.001 * 350))
    # validate_only checks the session as a submission would: open, and on its backend.
    assert client.validate(pubs(), backend="priced", session=session.name).shots == 350
    client.close_session(session.name)
    with pytest.raises(FailedPreconditionError) as info:
        client.validate(pubs(), backend="priced", session=session.name)
    assert info.value.reason == "SESSION_CLOSED"


def test_backends_show_their_price(client: Client) -> None:
    priced = client.get_backend("priced").price
    assert priced is not None
    assert (priced.per_task, priced.per_shot, priced.per_second, priced.unit) == (
        0.3,
        0.001,
        0.0,
        "USD",
    )
    assert client.get_backend("free").price is None


# A restart in the test itself: bounded by the gateway's own start timeout, not the default 30 s.
@pytest.mark.timeout(180)
def test_usage_and_cost_survive_a_restart(root: Path, gateway: GatewayProcess) -> None:
    with Client(gateway.address) as c:
        done = c.wait(c.submit_pubs(pubs(), backend="priced", seed=2).name, timeout=60)
    assert gateway.terminate() == 0
    again = GatewayProcess.start(root / "g.toml", root / "gateway.log")
    try:
        with Client(again.address) as c:
            job = c.get_job(done.name, view_basic=True)
        assert job.usage == done.usage
        assert job.cost == done.cost
    finally:
        again.terminate()
