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

class Role(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    ROLE_UNSPECIFIED: _ClassVar[Role]
    ROLE_USER: _ClassVar[Role]
    ROLE_TENANT_ADMIN: _ClassVar[Role]
    ROLE_ADMIN: _ClassVar[Role]

class ApiKeyState(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    API_KEY_STATE_UNSPECIFIED: _ClassVar[ApiKeyState]
    API_KEY_STATE_ACTIVE: _ClassVar[ApiKeyState]
    API_KEY_STATE_EXPIRED: _ClassVar[ApiKeyState]
    API_KEY_STATE_REVOKED: _ClassVar[ApiKeyState]
ROLE_UNSPECIFIED: Role
ROLE_USER: Role
ROLE_TENANT_ADMIN: Role
ROLE_ADMIN: Role
API_KEY_STATE_UNSPECIFIED: ApiKeyState
API_KEY_STATE_ACTIVE: ApiKeyState
API_KEY_STATE_EXPIRED: ApiKeyState
API_KEY_STATE_REVOKED: ApiKeyState

class ApiKey(_message.Message):
    __slots__ = ("name", "display_name", "role", "state", "create_time", "expire_time", "revoke_time", "last_use_time")
    NAME_FIELD_NUMBER: _ClassVar[int]
    DISPLAY_NAME_FIELD_NUMBER: _ClassVar[int]
    ROLE_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    CREATE_TIME_FIELD_NUMBER: _ClassVar[int]
    EXPIRE_TIME_FIELD_NUMBER: _ClassVar[int]
    REVOKE_TIME_FIELD_NUMBER: _ClassVar[int]
    LAST_USE_TIME_FIELD_NUMBER: _ClassVar[int]
    name: str
    display_name: str
    role: Role
    state: ApiKeyState
    create_time: _timestamp_pb2.Timestamp
    expire_time: _timestamp_pb2.Timestamp
    revoke_time: _timestamp_pb2.Timestamp
    last_use_time: _timestamp_pb2.Timestamp
    def __init__(self, name: _Optional[str] = ..., display_name: _Optional[str] = ..., role: _Optional[_Union[Role, str]] = ..., state: _Optional[_Union[ApiKeyState, str]] = ..., create_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., expire_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., revoke_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., last_use_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...

class RateLimit(_message.Message):
    __slots__ = ("per_second", "burst")
    PER_SECOND_FIELD_NUMBER: _ClassVar[int]
    BURST_FIELD_NUMBER: _ClassVar[int]
    per_second: float
    burst: int
    def __init__(self, per_second: _Optional[float] = ..., burst: _Optional[int] = ...) -> None: ...

class PeriodQuota(_message.Message):
    __slots__ = ("shots", "cost", "cost_unit", "period")
    SHOTS_FIELD_NUMBER: _ClassVar[int]
    COST_FIELD_NUMBER: _ClassVar[int]
    COST_UNIT_FIELD_NUMBER: _ClassVar[int]
    PERIOD_FIELD_NUMBER: _ClassVar[int]
    shots: int
    cost: float
    cost_unit: str
    period: _duration_pb2.Duration
    def __init__(self, shots: _Optional[int] = ..., cost: _Optional[float] = ..., cost_unit: _Optional[str] = ..., period: _Optional[_Union[datetime.timedelta, _duration_pb2.Duration, _Mapping]] = ...) -> None: ...

class TenantPolicy(_message.Message):
    __slots__ = ("allowed_simulators", "allowed_hardware", "max_qubits", "max_shots_per_job", "quota", "request_rate", "submit_rate", "max_queued_jobs", "max_sessions")
    ALLOWED_SIMULATORS_FIELD_NUMBER: _ClassVar[int]
    ALLOWED_HARDWARE_FIELD_NUMBER: _ClassVar[int]
    MAX_QUBITS_FIELD_NUMBER: _ClassVar[int]
    MAX_SHOTS_PER_JOB_FIELD_NUMBER: _ClassVar[int]
    QUOTA_FIELD_NUMBER: _ClassVar[int]
    REQUEST_RATE_FIELD_NUMBER: _ClassVar[int]
    SUBMIT_RATE_FIELD_NUMBER: _ClassVar[int]
    MAX_QUEUED_JOBS_FIELD_NUMBER: _ClassVar[int]
    MAX_SESSIONS_FIELD_NUMBER: _ClassVar[int]
    allowed_simulators: _containers.RepeatedScalarFieldContainer[str]
    allowed_hardware: _containers.RepeatedScalarFieldContainer[str]
    max_qubits: int
    max_shots_per_job: int
    quota: PeriodQuota
    request_rate: RateLimit
    submit_rate: RateLimit
    max_queued_jobs: int
    max_sessions: int
    def __init__(self, allowed_simulators: _Optional[_Iterable[str]] = ..., allowed_hardware: _Optional[_Iterable[str]] = ..., max_qubits: _Optional[int] = ..., max_shots_per_job: _Optional[int] = ..., quota: _Optional[_Union[PeriodQuota, _Mapping]] = ..., request_rate: _Optional[_Union[RateLimit, _Mapping]] = ..., submit_rate: _Optional[_Union[RateLimit, _Mapping]] = ..., max_queued_jobs: _Optional[int] = ..., max_sessions: _Optional[int] = ...) -> None: ...

class Tenant(_message.Message):
    __slots__ = ("name", "display_name", "policy", "etag", "create_time", "update_time")
    NAME_FIELD_NUMBER: _ClassVar[int]
    DISPLAY_NAME_FIELD_NUMBER: _ClassVar[int]
    POLICY_FIELD_NUMBER: _ClassVar[int]
    ETAG_FIELD_NUMBER: _ClassVar[int]
    CREATE_TIME_FIELD_NUMBER: _ClassVar[int]
    UPDATE_TIME_FIELD_NUMBER: _ClassVar[int]
    name: str
    display_name: str
    policy: TenantPolicy
    etag: str
    create_time: _timestamp_pb2.Timestamp
    update_time: _timestamp_pb2.Timestamp
    def __init__(self, name: _Optional[str] = ..., display_name: _Optional[str] = ..., policy: _Optional[_Union[TenantPolicy, _Mapping]] = ..., etag: _Optional[str] = ..., create_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., update_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...

class TenantUsage(_message.Message):
    __slots__ = ("name", "period_start_time", "period_end_time", "shots_used", "shots_reserved", "cost_used", "cost_reserved", "queued_jobs", "open_sessions", "policy")
    NAME_FIELD_NUMBER: _ClassVar[int]
    PERIOD_START_TIME_FIELD_NUMBER: _ClassVar[int]
    PERIOD_END_TIME_FIELD_NUMBER: _ClassVar[int]
    SHOTS_USED_FIELD_NUMBER: _ClassVar[int]
    SHOTS_RESERVED_FIELD_NUMBER: _ClassVar[int]
    COST_USED_FIELD_NUMBER: _ClassVar[int]
    COST_RESERVED_FIELD_NUMBER: _ClassVar[int]
    QUEUED_JOBS_FIELD_NUMBER: _ClassVar[int]
    OPEN_SESSIONS_FIELD_NUMBER: _ClassVar[int]
    POLICY_FIELD_NUMBER: _ClassVar[int]
    name: str
    period_start_time: _timestamp_pb2.Timestamp
    period_end_time: _timestamp_pb2.Timestamp
    shots_used: int
    shots_reserved: int
    cost_used: _job_pb2.Cost
    cost_reserved: _job_pb2.Cost
    queued_jobs: int
    open_sessions: int
    policy: TenantPolicy
    def __init__(self, name: _Optional[str] = ..., period_start_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., period_end_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., shots_used: _Optional[int] = ..., shots_reserved: _Optional[int] = ..., cost_used: _Optional[_Union[_job_pb2.Cost, _Mapping]] = ..., cost_reserved: _Optional[_Union[_job_pb2.Cost, _Mapping]] = ..., queued_jobs: _Optional[int] = ..., open_sessions: _Optional[int] = ..., policy: _Optional[_Union[TenantPolicy, _Mapping]] = ...) -> None: ...

class AuditRecord(_message.Message):
    __slots__ = ("name", "sequence", "time", "end_time", "principal", "tenant", "key_prefix", "peer", "service", "method", "resource", "backend", "circuit_digest", "shots", "code", "reason", "request_id", "trace_id", "count", "mac")
    NAME_FIELD_NUMBER: _ClassVar[int]
    SEQUENCE_FIELD_NUMBER: _ClassVar[int]
    TIME_FIELD_NUMBER: _ClassVar[int]
    END_TIME_FIELD_NUMBER: _ClassVar[int]
    PRINCIPAL_FIELD_NUMBER: _ClassVar[int]
    TENANT_FIELD_NUMBER: _ClassVar[int]
    KEY_PREFIX_FIELD_NUMBER: _ClassVar[int]
    PEER_FIELD_NUMBER: _ClassVar[int]
    SERVICE_FIELD_NUMBER: _ClassVar[int]
    METHOD_FIELD_NUMBER: _ClassVar[int]
    RESOURCE_FIELD_NUMBER: _ClassVar[int]
    BACKEND_FIELD_NUMBER: _ClassVar[int]
    CIRCUIT_DIGEST_FIELD_NUMBER: _ClassVar[int]
    SHOTS_FIELD_NUMBER: _ClassVar[int]
    CODE_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    TRACE_ID_FIELD_NUMBER: _ClassVar[int]
    COUNT_FIELD_NUMBER: _ClassVar[int]
    MAC_FIELD_NUMBER: _ClassVar[int]
    name: str
    sequence: int
    time: _timestamp_pb2.Timestamp
    end_time: _timestamp_pb2.Timestamp
    principal: str
    tenant: str
    key_prefix: str
    peer: str
    service: str
    method: str
    resource: str
    backend: str
    circuit_digest: str
    shots: int
    code: int
    reason: str
    request_id: str
    trace_id: str
    count: int
    mac: str
    def __init__(self, name: _Optional[str] = ..., sequence: _Optional[int] = ..., time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., end_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., principal: _Optional[str] = ..., tenant: _Optional[str] = ..., key_prefix: _Optional[str] = ..., peer: _Optional[str] = ..., service: _Optional[str] = ..., method: _Optional[str] = ..., resource: _Optional[str] = ..., backend: _Optional[str] = ..., circuit_digest: _Optional[str] = ..., shots: _Optional[int] = ..., code: _Optional[int] = ..., reason: _Optional[str] = ..., request_id: _Optional[str] = ..., trace_id: _Optional[str] = ..., count: _Optional[int] = ..., mac: _Optional[str] = ...) -> None: ...
