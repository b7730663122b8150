"""Review of the suite against DESIGN.md's "Guards against a test that passes while users lose":
in-process tests closing gaps the existing tests leave open."""

from __future__ import annotations

import pathlib
import pickle
import sqlite3
from typing import Any

import pytest

from gateway.domain.jobs import EstimatorResult
from gateway.store import sqlite as sqlite_module
from gateway.store.sqlite import SqliteStore

pytestmark = pytest.mark.anyio


async def test_the_store_sets_full_sync_even_where_sqlites_default_is_weaker(
    tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # tests/unit/test_sqlite_store.py::test_durability_pragmas reads synchronous == 2 back from
    # the store, but 2 (FULL) is also this SQLite build's default: the test passes with the
    # store's `PRAGMA synchronous = FULL` deleted, and a build or wrapper whose default is
    # NORMAL or OFF (common in distributions) would then acknowledge jobs a power cut loses.
    # Here every connection the store opens starts with synchronous = OFF, as such a build's
    # would: only the store's own setting brings it to FULL.
    real_connect = sqlite3.connect
    opened: list[sqlite3.Connection] = []

    def weak_default(*args: Any, **kwargs: Any) -> sqlite3.Connection:
        conn: sqlite3.Connection = real_connect(*args, **kwargs)
        conn.execute("PRAGMA synchronous = OFF")
        opened.append(conn)
        return conn

    # The module the store calls sqlite3.connect through (sqlite3 itself: one module object).
    assert sqlite_module.sqlite3 is sqlite3  # type: ignore[attr-defined]
    monkeypatch.setattr(sqlite3, "connect", weak_default)
    store = SqliteStore(tmp_path / "weak.db")
    await store.open()
    try:
        settings = await store.settings()
    finally:
        await store.close()
    assert opened, "the store opened no connection through sqlite3.connect"
    assert settings["synchronous"] == 2  # FULL, whatever the build's default
    assert settings["journal_mode"] == "wal"


@pytest.mark.parametrize("device", ["braket_sv", "braket_dm", "lightning.qubit", "default.qubit"])
def test_an_unset_precision_reports_the_default_standard_error_on_every_local_simulator(
    device: str,
) -> None:
    # Only Aer's adapter test (tests/unit/test_aer_adapter.py::test_estimator_default_precision)
    # covers an estimator PUB without a precision; every Braket and PennyLane estimator test
    # passes one. An unset precision asked for no exact value: its standard errors are the
    # documented default (circuit.proto: 0.015625), and only a precision of 0 gives zero.
    from gateway.backends.braket.adapter import BraketAdapter
    from gateway.backends.pennylane.adapter import PennyLaneAdapter
    from tests.adapters import prepare_in_process
    from tests.unit.test_aer_adapter import context, estimator, q3, single, spec

    if device.startswith("braket"):
        adapter: Any = BraketAdapter(context(device=device))
    else:
        adapter = PennyLaneAdapter(context(device=device))
    # x on q[0]: "IZ" (Z on q[0], the rightmost label) is -1, "ZI" is +1, hard-coded.
    source = q3("qubit[2] q; x q[0];")
    observables = [single("IZ"), single("ZI")]

    def run(precision: float | None) -> EstimatorResult:
        job = spec(estimator(source, observables, precision=precision))
        # Through pickle, as on the way to a worker process.
        payload = pickle.loads(pickle.dumps(prepare_in_process(adapter, job, 7).payload))
        result = adapter.execute(payload).result.pubs[0]
        assert isinstance(result, EstimatorResult)
        return result

    sampled = run(None)
    assert sampled.standard_errors.tolist() == [0.015625, 0.015625]
    assert abs(sampled.expectation_values - [-1.0, 1.0]).max() <= 6 * 0.015625
    exact = run(0.0)
    assert exact.standard_errors.tolist() == [0.0, 0.0]
    assert exact.expectation_values.tolist() == [-1.0, 1.0]
