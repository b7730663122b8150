"""qgateway.v1.BackendService: backends as the caller may see them, and their targets.

A caller sees only the backends its policy lets it use (gateway.security.policies; any other
answers NOT_FOUND, like one that does not exist); the BASIC view to everyone, the FULL view
(health, breaker, pool) to admin callers only.
"""

from __future__ import annotations

import asyncio

from qgateway.v1 import backend_pb2, backend_service_pb2, backend_service_pb2_grpc

from gateway.api import backend_codec, codec, paging
from gateway.api.backend_codec import View
from gateway.api.context import Context
from gateway.domain.errors import PermissionDenied
from gateway.jobs.backend import BackendRuntime
from gateway.jobs.manager import JobManager
from gateway.security.policies import backend_limits, may_read_operations
from gateway.security.principals import Principal, current_principal


def _view(value: int, principal: Principal) -> View:
    view = backend_codec.view(value)
    if view is View.FULL and not may_read_operations(principal):
        raise PermissionDenied(
            "ADMIN_VIEW_DENIED",
            "the FULL view of backends (health, breaker, pool) is for admin callers; "
            "ask for BACKEND_VIEW_BASIC",
            metadata={"view": "BACKEND_VIEW_FULL"},
        )
    return view


async def describe(
    runtime: BackendRuntime, principal: Principal, view: View
) -> backend_pb2.Backend:
    limits = backend_limits(principal, runtime.name, runtime.info.limits)
    out = backend_codec.encode_backend(
        runtime.info,
        await runtime.status(),
        backend_codec.encode_limits(limits, runtime.settings.max_run_time_s),
        view,
    )
    price = runtime.settings.price
    if price is not None:
        out.price.CopyFrom(
            backend_pb2.Price(
                per_task=price.per_task,
                per_shot=price.per_shot,
                per_second=price.per_second,
                unit=price.unit,
            )
        )
    return out


def _encode_target(runtime: BackendRuntime) -> backend_pb2.BackendTarget:
    return backend_codec.encode_target(runtime.name, runtime.adapter.target())


class BackendServicer(backend_service_pb2_grpc.BackendServiceServicer):
    def __init__(self, manager: JobManager, *, page_tokens: paging.PageTokens) -> None:
        self._manager = manager
        self._page_tokens = page_tokens
        # Each backend's target, computed once, off the event loop, when first asked for (an
        # adapter may need its SDK or its provider to build it).
        self._targets: dict[str, asyncio.Future[backend_pb2.BackendTarget]] = {}

    def _runtime(self, backend: str, principal: Principal) -> BackendRuntime:
        policies = self._manager.policies
        visible = frozenset(policies.visible_backends(principal, self._manager.backend_kinds))
        return self._manager.runtime(backend, "name", visible=visible)

    async def _target(self, runtime: BackendRuntime) -> backend_pb2.BackendTarget:
        if runtime.target_pending:
            # Fetched by the backend's health probe, not by callers: an outage must not turn
            # each GetBackendTarget into a call to the provider.
            raise runtime.target_pending_error()
        future = self._targets.get(runtime.name)
        if future is None:
            future = asyncio.ensure_future(asyncio.to_thread(_encode_target, runtime))
            self._targets[runtime.name] = future
        try:
            # Shielded: a caller that goes away does not cancel the others' computation.
            return await asyncio.shield(future)
        except Exception:
            if self._targets.get(runtime.name) is future:
                del self._targets[runtime.name]  # a failure is not kept: the next call retries
            raise

    async def ListBackends(
        self, request: backend_service_pb2.ListBackendsRequest, context: Context
    ) -> backend_service_pb2.ListBackendsResponse:
        principal = current_principal.get()
        view = _view(request.view, principal)
        limit = paging.page_size(request.page_size)
        # A sealed token, bound to the caller's tenant and the view it was issued for (the
        # proto's "same caller with the same view"); its cursor is the page's last name.
        where = {"kind": "backends", "tenant": principal.tenant, "query": f"view={view.value}"}
        sealed = self._page_tokens.open(request.page_token, **where)
        after = None if sealed is None else sealed.decode(errors="replace")
        visible = self._manager.policies.visible_backends(principal, self._manager.backend_kinds)
        names = [n for n in visible if after is None or n > after]
        page = names[:limit]
        more = len(names) > limit
        return backend_service_pb2.ListBackendsResponse(
            backends=[await describe(self._manager.backends[n], principal, view) for n in page],
            next_page_token=self._page_tokens.seal(page[-1].encode(), **where) if more else "",
        )

    async def GetBackend(
        self, request: backend_service_pb2.GetBackendRequest, context: Context
    ) -> backend_service_pb2.GetBackendResponse:
        principal = current_principal.get()
        backend = codec.backend_id(request.name, "name")
        view = _view(request.view, principal)
        runtime = self._runtime(backend, principal)
        return backend_service_pb2.GetBackendResponse(
            backend=await describe(runtime, principal, view)
        )

    async def GetBackendTarget(
        self, request: backend_service_pb2.GetBackendTargetRequest, context: Context
    ) -> backend_service_pb2.GetBackendTargetResponse:
        principal = current_principal.get()
        backend = backend_codec.target_backend_id(request.name, "name")
        runtime = self._runtime(backend, principal)
        return backend_service_pb2.GetBackendTargetResponse(target=await self._target(runtime))
