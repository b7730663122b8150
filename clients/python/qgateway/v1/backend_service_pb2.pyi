from google.api import field_behavior_pb2 as _field_behavior_pb2
from google.api import resource_pb2 as _resource_pb2
from qgateway.v1 import backend_pb2 as _backend_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class ListBackendsRequest(_message.Message):
    __slots__ = ("page_size", "page_token", "view")
    PAGE_SIZE_FIELD_NUMBER: _ClassVar[int]
    PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    VIEW_FIELD_NUMBER: _ClassVar[int]
    page_size: int
    page_token: str
    view: _backend_pb2.BackendView
    def __init__(self, page_size: _Optional[int] = ..., page_token: _Optional[str] = ..., view: _Optional[_Union[_backend_pb2.BackendView, str]] = ...) -> None: ...

class ListBackendsResponse(_message.Message):
    __slots__ = ("backends", "next_page_token")
    BACKENDS_FIELD_NUMBER: _ClassVar[int]
    NEXT_PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    backends: _containers.RepeatedCompositeFieldContainer[_backend_pb2.Backend]
    next_page_token: str
    def __init__(self, backends: _Optional[_Iterable[_Union[_backend_pb2.Backend, _Mapping]]] = ..., next_page_token: _Optional[str] = ...) -> None: ...

class GetBackendRequest(_message.Message):
    __slots__ = ("name", "view")
    NAME_FIELD_NUMBER: _ClassVar[int]
    VIEW_FIELD_NUMBER: _ClassVar[int]
    name: str
    view: _backend_pb2.BackendView
    def __init__(self, name: _Optional[str] = ..., view: _Optional[_Union[_backend_pb2.BackendView, str]] = ...) -> None: ...

class GetBackendResponse(_message.Message):
    __slots__ = ("backend",)
    BACKEND_FIELD_NUMBER: _ClassVar[int]
    backend: _backend_pb2.Backend
    def __init__(self, backend: _Optional[_Union[_backend_pb2.Backend, _Mapping]] = ...) -> None: ...

class GetBackendTargetRequest(_message.Message):
    __slots__ = ("name",)
    NAME_FIELD_NUMBER: _ClassVar[int]
    name: str
    def __init__(self, name: _Optional[str] = ...) -> None: ...

class GetBackendTargetResponse(_message.Message):
    __slots__ = ("target",)
    TARGET_FIELD_NUMBER: _ClassVar[int]
    target: _backend_pb2.BackendTarget
    def __init__(self, target: _Optional[_Union[_backend_pb2.BackendTarget, _Mapping]] = ...) -> None: ...
