"""Stop signals (SIGTERM, SIGINT) that arrive before the event loop handles them.

`qgateway serve` spends seconds importing the SDKs and building its backends before its event
loop takes the signals over (gateway.server.serve): a SIGTERM then killed the process by the
signal (exit -15; Ctrl-C a KeyboardInterrupt traceback) instead of the documented stop with
exit 0. From the command's first line, such a signal is remembered here instead, and the
gateway stops as soon as it can: before turning ready, without serving a call.
"""

from __future__ import annotations

import signal
import threading
from types import FrameType

STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)
asked = threading.Event()


def _remember(signum: int, frame: FrameType | None) -> None:
    asked.set()


def remember_until_served() -> None:
    """Until the event loop installs its own handlers, a stop signal only sets `asked`."""
    for sig in STOP_SIGNALS:
        signal.signal(sig, _remember)
