"""The benchmark's gateway configuration (the process itself is gateway.testing's)."""

from __future__ import annotations

import tomllib
from collections.abc import Sequence
from pathlib import Path

from gateway.testing import GatewayProcess

__all__ = ["GatewayProcess", "write_config"]


def write_config(
    path: Path,
    data_dir: Path,
    *,
    workers: int,
    max_parallel_threads: int,
    optimization_level: int,
    cpu_affinity: Sequence[int] = (),
) -> Path:
    """A gateway config with one Aer state-vector backend named `aer`, listening on port 0;
    `cpu_affinity`: the CPUs of the gateway's own threads (server.cpu_affinity), if any."""
    options = (
        f'{{ method = "statevector", max_parallel_threads = {max_parallel_threads}, '
        f"optimization_level = {optimization_level} }}"
    )
    text = f"""\
data_dir = "{data_dir}"

[server]
listen = "127.0.0.1:0"
grace_period_s = 2
{f"cpu_affinity = {list(cpu_affinity)}" if cpu_affinity else ""}

[backends.aer]
adapter = "aer"
max_shots = 1000000
max_queued_jobs = 10000
options = {options}
"""
    # A fixed pool: every worker started (warm) before the first job, never more.
    text += f"\n[backends.aer.pool]\nmin_instances = {workers}\nmax_instances = {workers}\n"
    path.write_text(text)
    tomllib.loads(text)  # a broken config fails here, not as a silent gateway exit
    return path
