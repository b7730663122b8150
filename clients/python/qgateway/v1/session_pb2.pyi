import datetime

from google.api import field_behavior_pb2 as _field_behavior_pb2
from google.api import resource_pb2 as _resource_pb2
from google.protobuf import duration_pb2 as _duration_pb2
from google.protobuf import timestamp_pb2 as _timestamp_pb2
from qgateway.v1 import job_pb2 as _job_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class SessionMode(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    SESSION_MODE_UNSPECIFIED: _ClassVar[SessionMode]
    SESSION_MODE_DEDICATED: _ClassVar[SessionMode]
    SESSION_MODE_BATCH: _ClassVar[SessionMode]

class SessionState(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    SESSION_STATE_UNSPECIFIED: _ClassVar[SessionState]
    SESSION_STATE_PENDING: _ClassVar[SessionState]
    SESSION_STATE_ACTIVE: _ClassVar[SessionState]
    SESSION_STATE_CLOSING: _ClassVar[SessionState]
    SESSION_STATE_CLOSED: _ClassVar[SessionState]
    SESSION_STATE_FAILED: _ClassVar[SessionState]

class SessionFailurePolicy(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    SESSION_FAILURE_POLICY_UNSPECIFIED: _ClassVar[SessionFailurePolicy]
    SESSION_FAILURE_POLICY_CONTINUE: _ClassVar[SessionFailurePolicy]
    SESSION_FAILURE_POLICY_ABORT: _ClassVar[SessionFailurePolicy]
SESSION_MODE_UNSPECIFIED: SessionMode
SESSION_MODE_DEDICATED: SessionMode
SESSION_MODE_BATCH: SessionMode
SESSION_STATE_UNSPECIFIED: SessionState
SESSION_STATE_PENDING: SessionState
SESSION_STATE_ACTIVE: SessionState
SESSION_STATE_CLOSING: SessionState
SESSION_STATE_CLOSED: SessionState
SESSION_STATE_FAILED: SessionState
SESSION_FAILURE_POLICY_UNSPECIFIED: SessionFailurePolicy
SESSION_FAILURE_POLICY_CONTINUE: SessionFailurePolicy
SESSION_FAILURE_POLICY_ABORT: SessionFailurePolicy

class Session(_message.Message):
    __slots__ = ("name", "tenant", "backend", "mode", "state", "max_ttl", "idle_ttl", "accepting_jobs", "failure_policy", "provider_session_id", "create_time", "end_time", "labels", "usage", "costs")
    class LabelsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    NAME_FIELD_NUMBER: _ClassVar[int]
    TENANT_FIELD_NUMBER: _ClassVar[int]
    BACKEND_FIELD_NUMBER: _ClassVar[int]
    MODE_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    MAX_TTL_FIELD_NUMBER: _ClassVar[int]
    IDLE_TTL_FIELD_NUMBER: _ClassVar[int]
    ACCEPTING_JOBS_FIELD_NUMBER: _ClassVar[int]
    FAILURE_POLICY_FIELD_NUMBER: _ClassVar[int]
    PROVIDER_SESSION_ID_FIELD_NUMBER: _ClassVar[int]
    CREATE_TIME_FIELD_NUMBER: _ClassVar[int]
    END_TIME_FIELD_NUMBER: _ClassVar[int]
    LABELS_FIELD_NUMBER: _ClassVar[int]
    USAGE_FIELD_NUMBER: _ClassVar[int]
    COSTS_FIELD_NUMBER: _ClassVar[int]
    name: str
    tenant: str
    backend: str
    mode: SessionMode
    state: SessionState
    max_ttl: _duration_pb2.Duration
    idle_ttl: _duration_pb2.Duration
    accepting_jobs: bool
    failure_policy: SessionFailurePolicy
    provider_session_id: str
    create_time: _timestamp_pb2.Timestamp
    end_time: _timestamp_pb2.Timestamp
    labels: _containers.ScalarMap[str, str]
    usage: _job_pb2.JobUsage
    costs: _containers.RepeatedCompositeFieldContainer[_job_pb2.Cost]
    def __init__(self, name: _Optional[str] = ..., tenant: _Optional[str] = ..., backend: _Optional[str] = ..., mode: _Optional[_Union[SessionMode, str]] = ..., state: _Optional[_Union[SessionState, str]] = ..., max_ttl: _Optional[_Union[datetime.timedelta, _duration_pb2.Duration, _Mapping]] = ..., idle_ttl: _Optional[_Union[datetime.timedelta, _duration_pb2.Duration, _Mapping]] = ..., accepting_jobs: _Optional[bool] = ..., failure_policy: _Optional[_Union[SessionFailurePolicy, str]] = ..., provider_session_id: _Optional[str] = ..., create_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., end_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., labels: _Optional[_Mapping[str, str]] = ..., usage: _Optional[_Union[_job_pb2.JobUsage, _Mapping]] = ..., costs: _Optional[_Iterable[_Union[_job_pb2.Cost, _Mapping]]] = ...) -> None: ...
