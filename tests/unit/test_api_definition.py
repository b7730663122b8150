"""The API definition: Buf lint clean, and the committed generated code is current."""

from __future__ import annotations

import filecmp
import subprocess
import sys
from pathlib import Path

from scripts.gen_protos import DEFAULT_OUT, PROTO_ROOT, generate

BIN = Path(sys.executable).parent


def test_buf_lint_standard_is_clean() -> None:
    result = subprocess.run(
        [str(BIN / "buf"), "lint"], cwd=PROTO_ROOT, capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_generated_code_is_current(tmp_path: Path) -> None:
    # Regenerate and compare: a hash of the inputs would miss a changed generator.
    generate(tmp_path)
    fresh = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*") if p.is_file())
    committed_dir = DEFAULT_OUT / "qgateway" / "v1"
    committed = sorted(
        p.relative_to(DEFAULT_OUT)
        for p in committed_dir.rglob("*")
        if p.is_file() and "__pycache__" not in p.parts
    )
    assert fresh == committed, "generated file set differs: run `make protos`"
    stale = [str(p) for p in fresh if not filecmp.cmp(tmp_path / p, DEFAULT_OUT / p, shallow=False)]
    assert not stale, f"stale generated code (run `make protos`): {stale}"
