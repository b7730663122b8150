import datetime

from google.api import field_behavior_pb2 as _field_behavior_pb2
from google.api import resource_pb2 as _resource_pb2
from google.protobuf import timestamp_pb2 as _timestamp_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class BackendKind(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    BACKEND_KIND_UNSPECIFIED: _ClassVar[BackendKind]
    BACKEND_KIND_SIMULATOR: _ClassVar[BackendKind]
    BACKEND_KIND_HARDWARE: _ClassVar[BackendKind]

class Primitive(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    PRIMITIVE_UNSPECIFIED: _ClassVar[Primitive]
    PRIMITIVE_SAMPLER: _ClassVar[Primitive]
    PRIMITIVE_ESTIMATOR: _ClassVar[Primitive]

class CircuitFeature(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    CIRCUIT_FEATURE_UNSPECIFIED: _ClassVar[CircuitFeature]
    CIRCUIT_FEATURE_MID_CIRCUIT_MEASUREMENT: _ClassVar[CircuitFeature]
    CIRCUIT_FEATURE_RESET: _ClassVar[CircuitFeature]
    CIRCUIT_FEATURE_CONTROL_FLOW: _ClassVar[CircuitFeature]

class BackendStatus(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    BACKEND_STATUS_UNSPECIFIED: _ClassVar[BackendStatus]
    BACKEND_STATUS_ONLINE: _ClassVar[BackendStatus]
    BACKEND_STATUS_OFFLINE: _ClassVar[BackendStatus]

class BackendView(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    BACKEND_VIEW_UNSPECIFIED: _ClassVar[BackendView]
    BACKEND_VIEW_BASIC: _ClassVar[BackendView]
    BACKEND_VIEW_FULL: _ClassVar[BackendView]

class BreakerState(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    BREAKER_STATE_UNSPECIFIED: _ClassVar[BreakerState]
    BREAKER_STATE_CLOSED: _ClassVar[BreakerState]
    BREAKER_STATE_OPEN: _ClassVar[BreakerState]
    BREAKER_STATE_HALF_OPEN: _ClassVar[BreakerState]
BACKEND_KIND_UNSPECIFIED: BackendKind
BACKEND_KIND_SIMULATOR: BackendKind
BACKEND_KIND_HARDWARE: BackendKind
PRIMITIVE_UNSPECIFIED: Primitive
PRIMITIVE_SAMPLER: Primitive
PRIMITIVE_ESTIMATOR: Primitive
CIRCUIT_FEATURE_UNSPECIFIED: CircuitFeature
CIRCUIT_FEATURE_MID_CIRCUIT_MEASUREMENT: CircuitFeature
CIRCUIT_FEATURE_RESET: CircuitFeature
CIRCUIT_FEATURE_CONTROL_FLOW: CircuitFeature
BACKEND_STATUS_UNSPECIFIED: BackendStatus
BACKEND_STATUS_ONLINE: BackendStatus
BACKEND_STATUS_OFFLINE: BackendStatus
BACKEND_VIEW_UNSPECIFIED: BackendView
BACKEND_VIEW_BASIC: BackendView
BACKEND_VIEW_FULL: BackendView
BREAKER_STATE_UNSPECIFIED: BreakerState
BREAKER_STATE_CLOSED: BreakerState
BREAKER_STATE_OPEN: BreakerState
BREAKER_STATE_HALF_OPEN: BreakerState

class BackendLimits(_message.Message):
    __slots__ = ("max_shots", "memory_budget_bytes", "max_queued_jobs", "max_result_bytes", "max_job_shots", "max_execution_seconds")
    MAX_SHOTS_FIELD_NUMBER: _ClassVar[int]
    MEMORY_BUDGET_BYTES_FIELD_NUMBER: _ClassVar[int]
    MAX_QUEUED_JOBS_FIELD_NUMBER: _ClassVar[int]
    MAX_RESULT_BYTES_FIELD_NUMBER: _ClassVar[int]
    MAX_JOB_SHOTS_FIELD_NUMBER: _ClassVar[int]
    MAX_EXECUTION_SECONDS_FIELD_NUMBER: _ClassVar[int]
    max_shots: int
    memory_budget_bytes: int
    max_queued_jobs: int
    max_result_bytes: int
    max_job_shots: int
    max_execution_seconds: float
    def __init__(self, max_shots: _Optional[int] = ..., memory_budget_bytes: _Optional[int] = ..., max_queued_jobs: _Optional[int] = ..., max_result_bytes: _Optional[int] = ..., max_job_shots: _Optional[int] = ..., max_execution_seconds: _Optional[float] = ...) -> None: ...

class Backend(_message.Message):
    __slots__ = ("name", "provider", "kind", "num_qubits", "basis_gates", "primitives", "features", "status", "running_jobs", "limits", "properties", "health", "breaker_state", "pool", "queue_length", "price")
    class PropertiesEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    NAME_FIELD_NUMBER: _ClassVar[int]
    PROVIDER_FIELD_NUMBER: _ClassVar[int]
    KIND_FIELD_NUMBER: _ClassVar[int]
    NUM_QUBITS_FIELD_NUMBER: _ClassVar[int]
    BASIS_GATES_FIELD_NUMBER: _ClassVar[int]
    PRIMITIVES_FIELD_NUMBER: _ClassVar[int]
    FEATURES_FIELD_NUMBER: _ClassVar[int]
    STATUS_FIELD_NUMBER: _ClassVar[int]
    RUNNING_JOBS_FIELD_NUMBER: _ClassVar[int]
    LIMITS_FIELD_NUMBER: _ClassVar[int]
    PROPERTIES_FIELD_NUMBER: _ClassVar[int]
    HEALTH_FIELD_NUMBER: _ClassVar[int]
    BREAKER_STATE_FIELD_NUMBER: _ClassVar[int]
    POOL_FIELD_NUMBER: _ClassVar[int]
    QUEUE_LENGTH_FIELD_NUMBER: _ClassVar[int]
    PRICE_FIELD_NUMBER: _ClassVar[int]
    name: str
    provider: str
    kind: BackendKind
    num_qubits: int
    basis_gates: _containers.RepeatedScalarFieldContainer[str]
    primitives: _containers.RepeatedScalarFieldContainer[Primitive]
    features: _containers.RepeatedScalarFieldContainer[CircuitFeature]
    status: BackendStatus
    running_jobs: int
    limits: BackendLimits
    properties: _containers.ScalarMap[str, str]
    health: BackendHealth
    breaker_state: BreakerState
    pool: PoolStats
    queue_length: int
    price: Price
    def __init__(self, name: _Optional[str] = ..., provider: _Optional[str] = ..., kind: _Optional[_Union[BackendKind, str]] = ..., num_qubits: _Optional[int] = ..., basis_gates: _Optional[_Iterable[str]] = ..., primitives: _Optional[_Iterable[_Union[Primitive, str]]] = ..., features: _Optional[_Iterable[_Union[CircuitFeature, str]]] = ..., status: _Optional[_Union[BackendStatus, str]] = ..., running_jobs: _Optional[int] = ..., limits: _Optional[_Union[BackendLimits, _Mapping]] = ..., properties: _Optional[_Mapping[str, str]] = ..., health: _Optional[_Union[BackendHealth, _Mapping]] = ..., breaker_state: _Optional[_Union[BreakerState, str]] = ..., pool: _Optional[_Union[PoolStats, _Mapping]] = ..., queue_length: _Optional[int] = ..., price: _Optional[_Union[Price, _Mapping]] = ...) -> None: ...

class Price(_message.Message):
    __slots__ = ("per_task", "per_shot", "per_second", "unit")
    PER_TASK_FIELD_NUMBER: _ClassVar[int]
    PER_SHOT_FIELD_NUMBER: _ClassVar[int]
    PER_SECOND_FIELD_NUMBER: _ClassVar[int]
    UNIT_FIELD_NUMBER: _ClassVar[int]
    per_task: float
    per_shot: float
    per_second: float
    unit: str
    def __init__(self, per_task: _Optional[float] = ..., per_shot: _Optional[float] = ..., per_second: _Optional[float] = ..., unit: _Optional[str] = ...) -> None: ...

class BackendHealth(_message.Message):
    __slots__ = ("serving", "last_probe_time", "last_error")
    SERVING_FIELD_NUMBER: _ClassVar[int]
    LAST_PROBE_TIME_FIELD_NUMBER: _ClassVar[int]
    LAST_ERROR_FIELD_NUMBER: _ClassVar[int]
    serving: bool
    last_probe_time: _timestamp_pb2.Timestamp
    last_error: str
    def __init__(self, serving: _Optional[bool] = ..., last_probe_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., last_error: _Optional[str] = ...) -> None: ...

class PoolStats(_message.Message):
    __slots__ = ("in_use", "idle", "waiting", "min_instances", "max_instances", "peak_instances")
    IN_USE_FIELD_NUMBER: _ClassVar[int]
    IDLE_FIELD_NUMBER: _ClassVar[int]
    WAITING_FIELD_NUMBER: _ClassVar[int]
    MIN_INSTANCES_FIELD_NUMBER: _ClassVar[int]
    MAX_INSTANCES_FIELD_NUMBER: _ClassVar[int]
    PEAK_INSTANCES_FIELD_NUMBER: _ClassVar[int]
    in_use: int
    idle: int
    waiting: int
    min_instances: int
    max_instances: int
    peak_instances: int
    def __init__(self, in_use: _Optional[int] = ..., idle: _Optional[int] = ..., waiting: _Optional[int] = ..., min_instances: _Optional[int] = ..., max_instances: _Optional[int] = ..., peak_instances: _Optional[int] = ...) -> None: ...

class BackendTarget(_message.Message):
    __slots__ = ("name", "num_qubits", "instructions", "qubits", "dt", "timing_constraints", "calibration_time", "coupling_map")
    NAME_FIELD_NUMBER: _ClassVar[int]
    NUM_QUBITS_FIELD_NUMBER: _ClassVar[int]
    INSTRUCTIONS_FIELD_NUMBER: _ClassVar[int]
    QUBITS_FIELD_NUMBER: _ClassVar[int]
    DT_FIELD_NUMBER: _ClassVar[int]
    TIMING_CONSTRAINTS_FIELD_NUMBER: _ClassVar[int]
    CALIBRATION_TIME_FIELD_NUMBER: _ClassVar[int]
    COUPLING_MAP_FIELD_NUMBER: _ClassVar[int]
    name: str
    num_qubits: int
    instructions: _containers.RepeatedCompositeFieldContainer[InstructionProperties]
    qubits: _containers.RepeatedCompositeFieldContainer[QubitProperties]
    dt: float
    timing_constraints: TimingConstraints
    calibration_time: _timestamp_pb2.Timestamp
    coupling_map: _containers.RepeatedCompositeFieldContainer[CouplingEdge]
    def __init__(self, name: _Optional[str] = ..., num_qubits: _Optional[int] = ..., instructions: _Optional[_Iterable[_Union[InstructionProperties, _Mapping]]] = ..., qubits: _Optional[_Iterable[_Union[QubitProperties, _Mapping]]] = ..., dt: _Optional[float] = ..., timing_constraints: _Optional[_Union[TimingConstraints, _Mapping]] = ..., calibration_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., coupling_map: _Optional[_Iterable[_Union[CouplingEdge, _Mapping]]] = ...) -> None: ...

class InstructionProperties(_message.Message):
    __slots__ = ("name", "num_qubits", "num_params", "qargs")
    NAME_FIELD_NUMBER: _ClassVar[int]
    NUM_QUBITS_FIELD_NUMBER: _ClassVar[int]
    NUM_PARAMS_FIELD_NUMBER: _ClassVar[int]
    QARGS_FIELD_NUMBER: _ClassVar[int]
    name: str
    num_qubits: int
    num_params: int
    qargs: _containers.RepeatedCompositeFieldContainer[QargProperties]
    def __init__(self, name: _Optional[str] = ..., num_qubits: _Optional[int] = ..., num_params: _Optional[int] = ..., qargs: _Optional[_Iterable[_Union[QargProperties, _Mapping]]] = ...) -> None: ...

class QargProperties(_message.Message):
    __slots__ = ("qubits", "error", "duration")
    QUBITS_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    DURATION_FIELD_NUMBER: _ClassVar[int]
    qubits: _containers.RepeatedScalarFieldContainer[int]
    error: float
    duration: float
    def __init__(self, qubits: _Optional[_Iterable[int]] = ..., error: _Optional[float] = ..., duration: _Optional[float] = ...) -> None: ...

class QubitProperties(_message.Message):
    __slots__ = ("t1", "t2", "frequency", "readout_error")
    T1_FIELD_NUMBER: _ClassVar[int]
    T2_FIELD_NUMBER: _ClassVar[int]
    FREQUENCY_FIELD_NUMBER: _ClassVar[int]
    READOUT_ERROR_FIELD_NUMBER: _ClassVar[int]
    t1: float
    t2: float
    frequency: float
    readout_error: float
    def __init__(self, t1: _Optional[float] = ..., t2: _Optional[float] = ..., frequency: _Optional[float] = ..., readout_error: _Optional[float] = ...) -> None: ...

class TimingConstraints(_message.Message):
    __slots__ = ("granularity", "min_length", "pulse_alignment", "acquire_alignment")
    GRANULARITY_FIELD_NUMBER: _ClassVar[int]
    MIN_LENGTH_FIELD_NUMBER: _ClassVar[int]
    PULSE_ALIGNMENT_FIELD_NUMBER: _ClassVar[int]
    ACQUIRE_ALIGNMENT_FIELD_NUMBER: _ClassVar[int]
    granularity: int
    min_length: int
    pulse_alignment: int
    acquire_alignment: int
    def __init__(self, granularity: _Optional[int] = ..., min_length: _Optional[int] = ..., pulse_alignment: _Optional[int] = ..., acquire_alignment: _Optional[int] = ...) -> None: ...

class CouplingEdge(_message.Message):
    __slots__ = ("control", "target")
    CONTROL_FIELD_NUMBER: _ClassVar[int]
    TARGET_FIELD_NUMBER: _ClassVar[int]
    control: int
    target: int
    def __init__(self, control: _Optional[int] = ..., target: _Optional[int] = ...) -> None: ...
