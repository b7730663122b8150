"""One gateway per data directory with the in-memory queue (gateway.store.data_dir_lock)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from gateway.store.data_dir_lock import DataDirInUse, lock_data_dir

REPO = Path(__file__).resolve().parents[2]


def test_an_owner_excludes_everyone_and_store_queue_gateways_share(tmp_path: Path) -> None:
    owner = lock_data_dir(tmp_path / "data", exclusive=True)
    for exclusive in (True, False):
        with pytest.raises(DataDirInUse, match=f"pid {os.getpid()}"):
            lock_data_dir(tmp_path / "data", exclusive=exclusive)
    owner.release()
    replicas = [lock_data_dir(tmp_path / "data", exclusive=False) for _ in range(2)]
    with pytest.raises(DataDirInUse, match="queue = 'store'"):
        lock_data_dir(tmp_path / "data", exclusive=True)
    for replica in replicas:
        replica.release()
    lock_data_dir(tmp_path / "data", exclusive=True).release()


def test_a_replica_is_alone_only_when_no_other_gateway_holds_the_directory(
    tmp_path: Path,
) -> None:
    """Migrations that older gateways cannot run beside need the directory alone: a replica
    sees whether it is, holds it exclusively until it shares again, and keeps its shared
    lock when it is not alone (Linux drops it while trying)."""
    first = lock_data_dir(tmp_path, exclusive=False)
    second = lock_data_dir(tmp_path, exclusive=False)
    assert not first.try_alone()
    with pytest.raises(DataDirInUse):  # `first` still holds its shared lock
        lock_data_dir(tmp_path, exclusive=True)
    second.release()
    assert first.try_alone()
    with pytest.raises(DataDirInUse, match=f"pid {os.getpid()} is migrating"):
        lock_data_dir(tmp_path, exclusive=False)  # nobody starts while it migrates
    first.share()
    third = lock_data_dir(tmp_path, exclusive=False)
    assert not first.try_alone() and not third.try_alone()
    first.release()
    third.release()
    owner = lock_data_dir(tmp_path, exclusive=True)
    assert owner.try_alone()  # a memory-queue gateway is alone by its lock
    owner.share()  # and keeps it exclusive
    with pytest.raises(DataDirInUse):
        lock_data_dir(tmp_path, exclusive=False)
    owner.release()


def test_a_killed_owner_leaves_no_stale_lock(tmp_path: Path) -> None:
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys; from pathlib import Path;"
            "from gateway.store.data_dir_lock import lock_data_dir;"
            f"lock_data_dir(Path({str(tmp_path)!r}), exclusive=True);"
            "print('held', flush=True); sys.stdin.read()",
        ],
        cwd=REPO,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline() == "held\n"
        with pytest.raises(DataDirInUse, match=f"pid {holder.pid}"):
            lock_data_dir(tmp_path, exclusive=False)
    finally:
        holder.kill()
        holder.wait()
    lock_data_dir(tmp_path, exclusive=True).release()
