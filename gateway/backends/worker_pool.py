"""Pool instances for simulator backends: supervised worker processes."""

from __future__ import annotations

from gateway.backends.base import AdapterContext
from gateway.backends.worker import WorkerProcess


class WorkerFactory:
    """Creates worker processes that run one adapter."""

    def __init__(self, adapter_name: str, context: AdapterContext) -> None:
        self._adapter_name = adapter_name
        self._context = context

    async def create(self) -> WorkerProcess:
        return await WorkerProcess.start(self._adapter_name, self._context)

    async def check(self, instance: WorkerProcess) -> bool:
        return instance.alive

    async def destroy(self, instance: WorkerProcess) -> None:
        if instance.alive:
            await instance.stop()
        else:
            instance.kill()
            await instance.wait()
