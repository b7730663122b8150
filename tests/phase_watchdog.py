"""Bounds the set-up and tear-down phases of every test, which pytest-timeout leaves alone here.

pytest-timeout runs with `timeout_func_only` (a slow gateway start on a loaded machine must not
fail a whole module), so a fixture whose tear-down hangs would hold CI until its job limit with
no output. Past `phase_timeout_setup` / `phase_timeout_teardown` seconds this prints every
thread's stack and ends the run, as pytest-timeout's thread method does for a test (0: no
bound, e.g. `-o phase_timeout_setup=0` while debugging a fixture).
"""

from __future__ import annotations

import faulthandler
import os
import sys
import threading
from collections.abc import Generator

import pytest

SETUP_INI = "phase_timeout_setup"
TEARDOWN_INI = "phase_timeout_teardown"


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addini(SETUP_INI, "seconds a test's fixture set-up may take", default="300")
    parser.addini(TEARDOWN_INI, "seconds a test's fixture tear-down may take", default="120")


def _expire(item: pytest.Item, phase: str, limit: float) -> None:
    # pytest holds file descriptor 2 during a phase: give it back, or the report is lost.
    capture = item.config.pluginmanager.getplugin("capturemanager")
    if capture is not None:
        capture.suspend_global_capture(in_=True)
    sys.stderr.write(
        f"\n+++ {item.nodeid}: {phase} took over {limit:g} s; every thread's stack: +++\n"
    )
    sys.stderr.flush()
    faulthandler.dump_traceback(file=sys.stderr, all_threads=True)
    # A hung phase cannot be interrupted from here (it may be blocked in C); only ending the
    # process frees CI.
    os._exit(1)


def _watched(item: pytest.Item, phase: str, ini: str) -> Generator[None, None, None]:
    limit = float(item.config.getini(ini))
    if limit <= 0:  # 0: no bound (as pytest-timeout reads it), e.g. to debug a fixture
        yield
        return
    timer = threading.Timer(limit, _expire, args=(item, phase, limit))
    timer.daemon = True
    timer.start()
    try:
        yield
    finally:
        timer.cancel()


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_setup(item: pytest.Item) -> Generator[None, None, None]:
    yield from _watched(item, "set-up", SETUP_INI)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_teardown(item: pytest.Item) -> Generator[None, None, None]:
    yield from _watched(item, "tear-down", TEARDOWN_INI)
