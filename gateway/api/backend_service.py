"""qgateway.v1.BackendService."""

from __future__ import annotations

from qgateway.v1 import backend_pb2, backend_service_pb2, backend_service_pb2_grpc

from gateway import codec
from gateway.api import paging
from gateway.api.context import Context
from gateway.jobs.backend import BackendRuntime
from gateway.jobs.manager import JobManager


def describe(runtime: BackendRuntime) -> backend_pb2.Backend:
    return codec.encode_backend(runtime.info, runtime.status())


class BackendServicer(backend_service_pb2_grpc.BackendServiceServicer):
    def __init__(self, manager: JobManager) -> None:
        self._manager = manager

    async def ListBackends(
        self, request: backend_service_pb2.ListBackendsRequest, context: Context
    ) -> backend_service_pb2.ListBackendsResponse:
        limit = paging.page_size(request.page_size)
        after = paging.decode_token(request.page_token, "backends")
        names = sorted(n for n in self._manager.backends if after is None or n > str(after))
        page = names[:limit]
        more = len(names) > limit
        return backend_service_pb2.ListBackendsResponse(
            backends=[describe(self._manager.backends[n]) for n in page],
            next_page_token=paging.encode_token(page[-1], "backends") if more else "",
        )

    async def GetBackend(
        self, request: backend_service_pb2.GetBackendRequest, context: Context
    ) -> backend_service_pb2.GetBackendResponse:
        runtime = self._manager.runtime(codec.backend_id(request.name, "name"))
        return backend_service_pb2.GetBackendResponse(backend=describe(runtime))
