"""The README's Python snippets, run as a reader copies them, against the real gateway.

A review ran each against a gateway started with the README's own `qgateway serve`; they held.
These keep them holding: a renamed client method or result accessor, a changed default
backend or a parser change that broke `examples/` would first break a new user's first job.
Only the target address is changed (the session gateway's port instead of 50051).
"""

from __future__ import annotations

import ast
import contextlib
import io
import re
from pathlib import Path

import pytest
from qgateway import Client

import gateway

ROOT = Path(gateway.__file__).resolve().parent.parent
README = (ROOT / "README.md").read_text()


def _python_blocks() -> list[str]:
    """Every ```python block of the README, its indentation (inside a list item) removed."""
    blocks = []
    for indent, body in re.findall(r"^( *)```python\n(.*?)^ *```", README, re.S | re.M):
        blocks.append("\n".join(line[len(indent) :] for line in body.splitlines()))
    return blocks


def test_the_first_job_snippet_runs_as_written(address: str) -> None:
    first = _python_blocks()[0]
    assert 'Client("127.0.0.1:50051")' in first
    # The snippet opens examples/ relative to the checkout, where the README's commands run.
    code = first.replace("127.0.0.1:50051", address).replace(
        'open("examples/', f'open("{ROOT}/examples/'
    )
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        exec(compile(code, "README.md", "exec"), {})
    lines = out.getvalue().splitlines()
    assert len(lines) == 3, lines
    # The GHZ counts: only the two outcomes the comment shows, summing to the shots.
    ghz = ast.literal_eval(lines[0])
    assert set(ghz) <= {"00000", "11111"} and sum(ghz.values()) == 1024
    # The sweep: theta 0 always reads 0 and 3.1416 always 1 (a 0 there has probability
    # ~1e-11 a shot); pi/2 splits its 100 shots.
    sweep = ast.literal_eval(lines[1])
    assert sweep[0] == {"0": 100} and sweep[2] == {"1": 100} and sum(sweep[1].values()) == 100
    assert lines[2] == "[1.0, 1.0]"  # the estimator line's comment, exactly


@pytest.mark.parametrize("index", range(1, len(_python_blocks())))
def test_the_other_python_snippets_run_with_a_client(address: str, index: int) -> None:
    # The later snippets continue the first: they use its `client`.
    with Client(address) as client:
        exec(compile(_python_blocks()[index], "README.md", "exec"), {"client": client})
