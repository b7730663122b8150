"""The arrows of DESIGN.md ("Layout"), checked on every module's imports (issue 8): api -> jobs
-> (backends, runtime, store) -> domain; only api (and the composition root) knows the wire
format; only backends/<sdk>/ imports a vendor SDK; the job core knows no worker process."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

import gateway

ROOT = Path(gateway.__file__).resolve().parent
VENDOR_SDKS = ("qiskit", "qiskit_aer", "qiskit_ibm_runtime", "braket", "boto3", "pennylane")
WIRE = ("qgateway", "grpc", "grpc_status", "grpc_health", "grpc_reflection", "google")
# Adapter packages: the only places that may import a vendor SDK.
SDK_PACKAGES = (
    "backends/qiskit/",
    "backends/aer/",
    "backends/loopback/",
    "backends/braket/",
    "backends/pennylane/",
    "backends/ibm/",
)


def _imports(path: Path) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            names.add(node.module)
    return names


def _modules(under: str) -> list[Path]:
    return sorted((ROOT / under).rglob("*.py"))


def _offenders(under: str, forbidden: tuple[str, ...]) -> list[str]:
    found = []
    for path in _modules(under):
        for name in _imports(path):
            if any(name == f or name.startswith(f + ".") for f in forbidden):
                found.append(f"{path.relative_to(ROOT)}: {name}")
    return found


def test_the_domain_imports_nothing_but_the_domain() -> None:
    inner = tuple(
        f"gateway.{p}"
        for p in ("api", "jobs", "store", "runtime", "backends", "security", "interceptors")
    )
    rest = ("gateway.server", "gateway.config", "gateway.cli")
    assert not _offenders("domain", inner + rest + WIRE + VENDOR_SDKS)


@pytest.mark.parametrize("layer", ["jobs", "store"])
def test_the_job_core_and_the_store_know_no_wire_format_worker_or_sdk(layer: str) -> None:
    forbidden = (
        *WIRE,
        *VENDOR_SDKS,
        "gateway.api",
        "gateway.interceptors",
        "gateway.server",
        "gateway.runtime.worker",
        "gateway.runtime.worker_pool",
        "gateway.runtime.simulator_runner",
        "gateway.runtime.compiler",
        "gateway.backends.aer",
        "gateway.backends.qiskit",
        "gateway.backends.loopback",
        "gateway.backends.fault",
        "gateway.backends.registry",
    )
    assert not _offenders(layer, forbidden)


def test_the_store_depends_on_the_domain_only() -> None:
    inner = tuple(f"gateway.{p}" for p in ("jobs", "runtime", "backends", "security"))
    assert not _offenders("store", inner)


def test_runtime_and_backends_do_not_reach_up_into_the_core_or_the_api() -> None:
    up = ("gateway.api", "gateway.jobs", "gateway.interceptors", "gateway.server", *WIRE)
    assert not _offenders("runtime", up)
    assert not _offenders("backends", up)


def test_only_adapter_packages_import_a_vendor_sdk() -> None:
    found = [
        line
        for line in _offenders(".", VENDOR_SDKS)
        if not any(line.startswith(p) for p in SDK_PACKAGES)
    ]
    assert not found


def test_only_the_api_and_the_composition_root_know_the_generated_protos() -> None:
    # (cli.py is a client of the API: it talks to a gateway through the qgateway client.)
    allowed = ("api/", "server.py", "cli.py")
    found = [line for line in _offenders(".", ("qgateway",)) if not line.startswith(allowed)]
    assert not found


def test_importing_the_server_pays_for_no_vendor_sdk() -> None:
    code = (
        "import sys, gateway.server, gateway.jobs.manager, gateway.api.job_service\n"
        f"print(sorted(m for m in {VENDOR_SDKS!r} if m in sys.modules))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60
    )
    assert out.stdout.strip() == "[]"


def test_the_checks_can_fail() -> None:
    # A rule that can never fire proves nothing: the Aer adapter does import qiskit.
    assert _offenders("backends/aer", ("qiskit",))
