"""Results just written, so Run and GetJobResult right after a job ends skip a store read."""

from __future__ import annotations

from collections import OrderedDict

RECENT_RESULTS_BYTES = 32 << 20


class RecentResults:
    """A byte-bounded LRU of serialised results (a copy of what is already durable)."""

    def __init__(self, max_bytes: int = RECENT_RESULTS_BYTES) -> None:
        self._max = max_bytes
        self._size = 0
        self._items: OrderedDict[str, bytes] = OrderedDict()

    def put(self, job_id: str, data: bytes) -> None:
        # A job's result put again (a re-run) replaces the old one, which must neither stay
        # counted (the count would creep up until nothing fits) nor be read after it.
        stale = self._items.pop(job_id, None)
        if stale is not None:
            self._size -= len(stale)
        if len(data) > self._max // 4:
            return
        self._items[job_id] = data
        self._size += len(data)
        while self._size > self._max:
            _, old = self._items.popitem(last=False)
            self._size -= len(old)

    def get(self, job_id: str) -> bytes | None:
        data = self._items.get(job_id)
        if data is not None:
            self._items.move_to_end(job_id)
        return data
