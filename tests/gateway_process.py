"""Configs and process helpers for tests that start real gateways (127.0.0.1, port 0)."""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Any

from gateway.security.api_keys import NewKey
from gateway.testing import GatewayProcess

__all__ = ["GatewayProcess", "children_of", "keys_toml", "write_config"]


def write_config(
    path: Path, data_dir: Path, backends: str = "", grace_period_s: float = 2, server: str = ""
) -> Path:
    """`backends`: the rest of the file (backends, tenants, keys); `server`: more lines of the
    [server] table."""
    text = (
        f'data_dir = "{data_dir}"\n\n[server]\nlisten = "127.0.0.1:0"\n'
        f"grace_period_s = {grace_period_s}\nmax_request_bytes = 4194304\n{server}\n"
    )
    text += backends
    if "[compiler]" not in backends:
        # One compile worker unless a test asks for more: each start imports the SDK stack
        # (seconds of CPU), and a test gateway compiles a handful of circuits.
        text += "\n\n[compiler]\nworkers = 1\n"
    path.write_text(text)
    tomllib.loads(path.read_text())  # fail early on a broken test config
    return path


def children_of(pid: int) -> list[Any]:
    import psutil

    try:
        return list(psutil.Process(pid).children(recursive=True))
    except psutil.NoSuchProcess:
        return []


def keys_toml(*keys: NewKey) -> str:
    """The `[[auth.api_keys]]` entries of configured keys (their hashes, never the secrets)."""
    return "".join(
        f'[[auth.api_keys]]\nprefix = "{k.config.prefix}"\nsha256 = "{k.config.sha256}"\n'
        f'tenant = "{k.config.tenant}"\nrole = "{k.config.role.value}"\n'
        for k in keys
    )
