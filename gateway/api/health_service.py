"""grpc.health.v1.Health: liveness, readiness and one name per backend (DESIGN "Health").

Not grpc_health's reference servicer: its Watch writes each answer while holding the
service's lock, so one watcher that never reads (a zero HTTP/2 window; no credentials needed)
held it for good, and every later `set` of that name waited behind it: the gateway's stop
(readiness NOT_SERVING first) hung until SIGKILL, other watchers got nothing, and a backend's
health monitor would have stopped at its next change. Here a status change only wakes the
watchers; each writes on its own, holding nothing another call needs.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from typing import TypeAlias

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from gateway.api.context import Context

ServingStatus: TypeAlias = health_pb2.HealthCheckResponse.ServingStatus


class HealthService(health_pb2_grpc.HealthServicer):  # type: ignore[misc]
    def __init__(self) -> None:
        self._status: dict[str, ServingStatus] = {"": health_pb2.HealthCheckResponse.SERVING}
        # Set (and replaced) at every change of a watched name; kept while someone watches it,
        # so watchers of made-up names leave nothing behind.
        self._changed: dict[str, asyncio.Event] = {}
        self._watchers: Counter[str] = Counter()

    async def set(self, service: str, status: ServingStatus) -> None:
        self._status[service] = status
        changed = self._changed.pop(service, None)
        if changed is not None:
            changed.set()

    async def Check(
        self, request: health_pb2.HealthCheckRequest, context: Context
    ) -> health_pb2.HealthCheckResponse:
        status = self._status.get(request.service)
        if status is None:
            await context.abort(grpc.StatusCode.NOT_FOUND, f"unknown service {request.service!r}")
        return health_pb2.HealthCheckResponse(status=status)

    async def Watch(self, request: health_pb2.HealthCheckRequest, context: Context) -> None:
        service = request.service
        self._watchers[service] += 1
        try:
            sent = None
            while True:
                changed = self._changed.setdefault(service, asyncio.Event())
                status = self._status.get(service, health_pb2.HealthCheckResponse.SERVICE_UNKNOWN)
                if status != sent:
                    # Only the latest status matters to a watcher; one that is slow to read
                    # holds up no one else.
                    await context.write(health_pb2.HealthCheckResponse(status=status))
                    sent = status
                    continue  # it may have changed while this write waited
                await changed.wait()
        finally:
            self._watchers[service] -= 1
            if self._watchers[service] == 0:
                del self._watchers[service]
                self._changed.pop(service, None)
