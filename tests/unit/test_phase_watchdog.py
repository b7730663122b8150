"""The set-up/tear-down bound (tests/phase_watchdog.py) ends a run whose fixture hangs."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]

HANGING = """
import threading
import pytest

@pytest.fixture
def {name}():
    {before}
    yield
    {after}

def test_uses_it({name}):
    pass
"""

NEVER = "threading.Event().wait()"


def _run(tmp_path: Path, name: str, before: str, after: str) -> subprocess.CompletedProcess[str]:
    (tmp_path / "test_hang.py").write_text(HANGING.format(name=name, before=before, after=after))
    (tmp_path / "conftest.py").write_text('pytest_plugins = ["tests.phase_watchdog"]\n')
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]),
    }
    return subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-p", "no:randomly",
         "-c", os.devnull, "--rootdir", str(tmp_path),
         "-o", "phase_timeout_setup=1", "-o", "phase_timeout_teardown=1", "test_hang.py"],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=25, check=False,
    )  # fmt: skip


@pytest.mark.parametrize(
    ("phase", "before", "after"),
    [("tear-down", "pass", NEVER), ("set-up", NEVER, "pass")],
)
def test_a_hanging_fixture_ends_the_run_with_its_stack(
    tmp_path: Path, phase: str, before: str, after: str
) -> None:
    done = _run(tmp_path, "stuck_fixture", before, after)
    assert done.returncode == 1, done.stdout + done.stderr
    assert f"test_hang.py::test_uses_it: {phase} took over 1 s" in done.stderr
    assert "stuck_fixture" in done.stderr  # the hanging frame is in the dump


def test_a_quick_fixture_is_left_alone(tmp_path: Path) -> None:
    done = _run(tmp_path, "quick_fixture", "pass", "pass")
    assert done.returncode == 0, done.stdout + done.stderr
    assert "took over" not in done.stderr
