"""Pool instances for simulators and compilers: supervised worker processes."""

from __future__ import annotations

from gateway.runtime.worker import CompileRole, SimulatorRole, WorkerProcess


class WorkerFactory:
    """Creates worker processes in one role: a simulator of one adapter, or a compiler."""

    def __init__(self, role: SimulatorRole | CompileRole) -> None:
        # What workers created from now on are started as (the workers already running keep
        # theirs).
        self.role = role

    async def create(self) -> WorkerProcess:
        return await WorkerProcess.start(self.role)

    async def check(self, instance: WorkerProcess) -> bool:
        return instance.alive

    async def destroy(self, instance: WorkerProcess) -> None:
        if instance.alive:
            await instance.stop()
        else:
            instance.kill()
            await instance.wait()
