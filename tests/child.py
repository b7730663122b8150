"""A Python script run in a child process that imports this checkout (the gateway and tests).

For what must not run in the test process: a reader that may abort or allocate gigabytes,
run under a limit the script sets on itself (`resource.setrlimit`).
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def run_python(
    script: str, *args: str, timeout: float, cwd: Path | None = None
) -> subprocess.CompletedProcess[str]:
    """`python -c script args...` with this checkout first on PYTHONPATH, its output as text."""
    path = os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])
    return subprocess.run(
        [sys.executable, "-c", script, *args],
        cwd=cwd,
        env=dict(os.environ, PYTHONPATH=path),
        capture_output=True,
        text=True,
        timeout=timeout,
    )
