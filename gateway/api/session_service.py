"""qgateway.v1.SessionService: declared in the frozen v1, built with the provider backends.

Until then every call, and a job that names a session (JobSpec.session), answers UNIMPLEMENTED
with reason SESSIONS_NOT_IMPLEMENTED, so clients written against v1 get a precise answer
instead of gRPC's bare "method not found".
"""

from __future__ import annotations

from typing import NoReturn

from qgateway.v1 import session_service_pb2, session_service_pb2_grpc

from gateway.api.context import Context
from gateway.domain.errors import Unimplemented

SESSIONS_NOT_IMPLEMENTED = "SESSIONS_NOT_IMPLEMENTED"
SERVICE_NAME = "qgateway.v1.SessionService"


def sessions_not_implemented(what: str) -> Unimplemented:
    """The answer for anything that needs sessions; `what` names the call or field."""
    return Unimplemented(
        SESSIONS_NOT_IMPLEMENTED,
        f"{what}: sessions are declared in qgateway.v1 but not implemented by this gateway yet",
        metadata={"unimplemented": what},
    )


def _refuse(method: str) -> NoReturn:
    raise sessions_not_implemented(f"{SERVICE_NAME}/{method}")


class SessionServicer(session_service_pb2_grpc.SessionServiceServicer):
    """Every RPC answers UNIMPLEMENTED, reason SESSIONS_NOT_IMPLEMENTED."""

    async def CreateSession(
        self, request: session_service_pb2.CreateSessionRequest, context: Context
    ) -> session_service_pb2.CreateSessionResponse:
        _refuse("CreateSession")

    async def GetSession(
        self, request: session_service_pb2.GetSessionRequest, context: Context
    ) -> session_service_pb2.GetSessionResponse:
        _refuse("GetSession")

    async def CloseSession(
        self, request: session_service_pb2.CloseSessionRequest, context: Context
    ) -> session_service_pb2.CloseSessionResponse:
        _refuse("CloseSession")

    async def ListSessions(
        self, request: session_service_pb2.ListSessionsRequest, context: Context
    ) -> session_service_pb2.ListSessionsResponse:
        _refuse("ListSessions")
