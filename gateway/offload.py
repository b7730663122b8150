"""Work sized by client bytes, run on the event loop only when small.

Parsing, decoding, digesting or unpickling takes time in proportion to its input; above a few
tens of KiB it is moved to a thread, so one large request, result or worker reply does not
hold the event loop (every other tenant's calls) for its duration. One threshold, one way.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar, TypeVarTuple, Unpack

import anyio

T = TypeVar("T")
Ts = TypeVarTuple("Ts")

# Inputs up to this many bytes are handled on the event loop (well under a millisecond).
INLINE_BYTES = 64 << 10


async def by_size(
    size: int,
    fn: Callable[[Unpack[Ts]], T],
    *args: *Ts,
    inline_bytes: int = INLINE_BYTES,
) -> T:
    """fn(*args), in a thread when `size` (bytes of its input) is above `inline_bytes`."""
    if size > inline_bytes:
        return await anyio.to_thread.run_sync(fn, *args)
    return fn(*args)
