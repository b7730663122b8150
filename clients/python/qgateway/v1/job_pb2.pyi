import datetime

from google.api import field_behavior_pb2 as _field_behavior_pb2
from google.api import resource_pb2 as _resource_pb2
from google.protobuf import duration_pb2 as _duration_pb2
from google.protobuf import struct_pb2 as _struct_pb2
from google.protobuf import timestamp_pb2 as _timestamp_pb2
from google.rpc import status_pb2 as _status_pb2
from qgateway.v1 import circuit_pb2 as _circuit_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class SamplerOutput(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    SAMPLER_OUTPUT_UNSPECIFIED: _ClassVar[SamplerOutput]
    SAMPLER_OUTPUT_SAMPLES_AND_COUNTS: _ClassVar[SamplerOutput]
    SAMPLER_OUTPUT_SAMPLES: _ClassVar[SamplerOutput]
    SAMPLER_OUTPUT_COUNTS: _ClassVar[SamplerOutput]

class JobState(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    JOB_STATE_UNSPECIFIED: _ClassVar[JobState]
    JOB_STATE_QUEUED: _ClassVar[JobState]
    JOB_STATE_SUBMITTING: _ClassVar[JobState]
    JOB_STATE_RUNNING: _ClassVar[JobState]
    JOB_STATE_SUCCEEDED: _ClassVar[JobState]
    JOB_STATE_FAILED: _ClassVar[JobState]
    JOB_STATE_CANCELLED: _ClassVar[JobState]
    JOB_STATE_CANCELLING: _ClassVar[JobState]
SAMPLER_OUTPUT_UNSPECIFIED: SamplerOutput
SAMPLER_OUTPUT_SAMPLES_AND_COUNTS: SamplerOutput
SAMPLER_OUTPUT_SAMPLES: SamplerOutput
SAMPLER_OUTPUT_COUNTS: SamplerOutput
JOB_STATE_UNSPECIFIED: JobState
JOB_STATE_QUEUED: JobState
JOB_STATE_SUBMITTING: JobState
JOB_STATE_RUNNING: JobState
JOB_STATE_SUCCEEDED: JobState
JOB_STATE_FAILED: JobState
JOB_STATE_CANCELLED: JobState
JOB_STATE_CANCELLING: JobState

class JobSpec(_message.Message):
    __slots__ = ("backend", "pubs", "options", "session", "labels")
    class LabelsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    BACKEND_FIELD_NUMBER: _ClassVar[int]
    PUBS_FIELD_NUMBER: _ClassVar[int]
    OPTIONS_FIELD_NUMBER: _ClassVar[int]
    SESSION_FIELD_NUMBER: _ClassVar[int]
    LABELS_FIELD_NUMBER: _ClassVar[int]
    backend: str
    pubs: _containers.RepeatedCompositeFieldContainer[_circuit_pb2.Pub]
    options: JobOptions
    session: str
    labels: _containers.ScalarMap[str, str]
    def __init__(self, backend: _Optional[str] = ..., pubs: _Optional[_Iterable[_Union[_circuit_pb2.Pub, _Mapping]]] = ..., options: _Optional[_Union[JobOptions, _Mapping]] = ..., session: _Optional[str] = ..., labels: _Optional[_Mapping[str, str]] = ...) -> None: ...

class JobOptions(_message.Message):
    __slots__ = ("default_shots", "seed", "default_precision", "fallback_backend", "sampler_output", "max_execution_time", "provider_options")
    DEFAULT_SHOTS_FIELD_NUMBER: _ClassVar[int]
    SEED_FIELD_NUMBER: _ClassVar[int]
    DEFAULT_PRECISION_FIELD_NUMBER: _ClassVar[int]
    FALLBACK_BACKEND_FIELD_NUMBER: _ClassVar[int]
    SAMPLER_OUTPUT_FIELD_NUMBER: _ClassVar[int]
    MAX_EXECUTION_TIME_FIELD_NUMBER: _ClassVar[int]
    PROVIDER_OPTIONS_FIELD_NUMBER: _ClassVar[int]
    default_shots: int
    seed: int
    default_precision: float
    fallback_backend: str
    sampler_output: SamplerOutput
    max_execution_time: _duration_pb2.Duration
    provider_options: _struct_pb2.Struct
    def __init__(self, default_shots: _Optional[int] = ..., seed: _Optional[int] = ..., default_precision: _Optional[float] = ..., fallback_backend: _Optional[str] = ..., sampler_output: _Optional[_Union[SamplerOutput, str]] = ..., max_execution_time: _Optional[_Union[datetime.timedelta, _duration_pb2.Duration, _Mapping]] = ..., provider_options: _Optional[_Union[_struct_pb2.Struct, _Mapping]] = ...) -> None: ...

class ExecutionInfo(_message.Message):
    __slots__ = ("backend", "seed", "sdk_versions", "layouts", "attempts", "provider_job_id")
    class SdkVersionsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    BACKEND_FIELD_NUMBER: _ClassVar[int]
    SEED_FIELD_NUMBER: _ClassVar[int]
    SDK_VERSIONS_FIELD_NUMBER: _ClassVar[int]
    LAYOUTS_FIELD_NUMBER: _ClassVar[int]
    ATTEMPTS_FIELD_NUMBER: _ClassVar[int]
    PROVIDER_JOB_ID_FIELD_NUMBER: _ClassVar[int]
    backend: str
    seed: int
    sdk_versions: _containers.ScalarMap[str, str]
    layouts: _containers.RepeatedCompositeFieldContainer[Layout]
    attempts: int
    provider_job_id: str
    def __init__(self, backend: _Optional[str] = ..., seed: _Optional[int] = ..., sdk_versions: _Optional[_Mapping[str, str]] = ..., layouts: _Optional[_Iterable[_Union[Layout, _Mapping]]] = ..., attempts: _Optional[int] = ..., provider_job_id: _Optional[str] = ...) -> None: ...

class Layout(_message.Message):
    __slots__ = ("physical_qubits",)
    PHYSICAL_QUBITS_FIELD_NUMBER: _ClassVar[int]
    physical_qubits: _containers.RepeatedScalarFieldContainer[int]
    def __init__(self, physical_qubits: _Optional[_Iterable[int]] = ...) -> None: ...

class JobTimings(_message.Message):
    __slots__ = ("queued", "transpile", "execute")
    QUEUED_FIELD_NUMBER: _ClassVar[int]
    TRANSPILE_FIELD_NUMBER: _ClassVar[int]
    EXECUTE_FIELD_NUMBER: _ClassVar[int]
    queued: _duration_pb2.Duration
    transpile: _duration_pb2.Duration
    execute: _duration_pb2.Duration
    def __init__(self, queued: _Optional[_Union[datetime.timedelta, _duration_pb2.Duration, _Mapping]] = ..., transpile: _Optional[_Union[datetime.timedelta, _duration_pb2.Duration, _Mapping]] = ..., execute: _Optional[_Union[datetime.timedelta, _duration_pb2.Duration, _Mapping]] = ...) -> None: ...

class StateTransition(_message.Message):
    __slots__ = ("state", "time")
    STATE_FIELD_NUMBER: _ClassVar[int]
    TIME_FIELD_NUMBER: _ClassVar[int]
    state: JobState
    time: _timestamp_pb2.Timestamp
    def __init__(self, state: _Optional[_Union[JobState, str]] = ..., time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...

class Job(_message.Message):
    __slots__ = ("name", "tenant", "backend", "state", "create_time", "start_time", "end_time", "error", "execution", "timings", "num_pubs", "labels", "update_time", "state_history", "expire_time", "session", "queue_position", "sampler_output", "usage", "cost", "trace_id")
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
    STATE_FIELD_NUMBER: _ClassVar[int]
    CREATE_TIME_FIELD_NUMBER: _ClassVar[int]
    START_TIME_FIELD_NUMBER: _ClassVar[int]
    END_TIME_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    EXECUTION_FIELD_NUMBER: _ClassVar[int]
    TIMINGS_FIELD_NUMBER: _ClassVar[int]
    NUM_PUBS_FIELD_NUMBER: _ClassVar[int]
    LABELS_FIELD_NUMBER: _ClassVar[int]
    UPDATE_TIME_FIELD_NUMBER: _ClassVar[int]
    STATE_HISTORY_FIELD_NUMBER: _ClassVar[int]
    EXPIRE_TIME_FIELD_NUMBER: _ClassVar[int]
    SESSION_FIELD_NUMBER: _ClassVar[int]
    QUEUE_POSITION_FIELD_NUMBER: _ClassVar[int]
    SAMPLER_OUTPUT_FIELD_NUMBER: _ClassVar[int]
    USAGE_FIELD_NUMBER: _ClassVar[int]
    COST_FIELD_NUMBER: _ClassVar[int]
    TRACE_ID_FIELD_NUMBER: _ClassVar[int]
    name: str
    tenant: str
    backend: str
    state: JobState
    create_time: _timestamp_pb2.Timestamp
    start_time: _timestamp_pb2.Timestamp
    end_time: _timestamp_pb2.Timestamp
    error: _status_pb2.Status
    execution: ExecutionInfo
    timings: JobTimings
    num_pubs: int
    labels: _containers.ScalarMap[str, str]
    update_time: _timestamp_pb2.Timestamp
    state_history: _containers.RepeatedCompositeFieldContainer[StateTransition]
    expire_time: _timestamp_pb2.Timestamp
    session: str
    queue_position: int
    sampler_output: SamplerOutput
    usage: JobUsage
    cost: Cost
    trace_id: str
    def __init__(self, name: _Optional[str] = ..., tenant: _Optional[str] = ..., backend: _Optional[str] = ..., state: _Optional[_Union[JobState, str]] = ..., create_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., start_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., end_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., error: _Optional[_Union[_status_pb2.Status, _Mapping]] = ..., execution: _Optional[_Union[ExecutionInfo, _Mapping]] = ..., timings: _Optional[_Union[JobTimings, _Mapping]] = ..., num_pubs: _Optional[int] = ..., labels: _Optional[_Mapping[str, str]] = ..., update_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., state_history: _Optional[_Iterable[_Union[StateTransition, _Mapping]]] = ..., expire_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., session: _Optional[str] = ..., queue_position: _Optional[int] = ..., sampler_output: _Optional[_Union[SamplerOutput, str]] = ..., usage: _Optional[_Union[JobUsage, _Mapping]] = ..., cost: _Optional[_Union[Cost, _Mapping]] = ..., trace_id: _Optional[str] = ...) -> None: ...

class Cost(_message.Message):
    __slots__ = ("amount", "unit")
    AMOUNT_FIELD_NUMBER: _ClassVar[int]
    UNIT_FIELD_NUMBER: _ClassVar[int]
    amount: float
    unit: str
    def __init__(self, amount: _Optional[float] = ..., unit: _Optional[str] = ...) -> None: ...

class JobUsage(_message.Message):
    __slots__ = ("shots", "execution_duration", "provider_cost")
    SHOTS_FIELD_NUMBER: _ClassVar[int]
    EXECUTION_DURATION_FIELD_NUMBER: _ClassVar[int]
    PROVIDER_COST_FIELD_NUMBER: _ClassVar[int]
    shots: int
    execution_duration: _duration_pb2.Duration
    provider_cost: Cost
    def __init__(self, shots: _Optional[int] = ..., execution_duration: _Optional[_Union[datetime.timedelta, _duration_pb2.Duration, _Mapping]] = ..., provider_cost: _Optional[_Union[Cost, _Mapping]] = ...) -> None: ...

class CostEstimate(_message.Message):
    __slots__ = ("shots", "cost", "per_second_excluded")
    SHOTS_FIELD_NUMBER: _ClassVar[int]
    COST_FIELD_NUMBER: _ClassVar[int]
    PER_SECOND_EXCLUDED_FIELD_NUMBER: _ClassVar[int]
    shots: int
    cost: Cost
    per_second_excluded: bool
    def __init__(self, shots: _Optional[int] = ..., cost: _Optional[_Union[Cost, _Mapping]] = ..., per_second_excluded: _Optional[bool] = ...) -> None: ...

class JobResult(_message.Message):
    __slots__ = ("pub_results", "name")
    PUB_RESULTS_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    pub_results: _containers.RepeatedCompositeFieldContainer[PubResult]
    name: str
    def __init__(self, pub_results: _Optional[_Iterable[_Union[PubResult, _Mapping]]] = ..., name: _Optional[str] = ...) -> None: ...

class PubResult(_message.Message):
    __slots__ = ("sampler", "estimator")
    SAMPLER_FIELD_NUMBER: _ClassVar[int]
    ESTIMATOR_FIELD_NUMBER: _ClassVar[int]
    sampler: SamplerPubResult
    estimator: EstimatorPubResult
    def __init__(self, sampler: _Optional[_Union[SamplerPubResult, _Mapping]] = ..., estimator: _Optional[_Union[EstimatorPubResult, _Mapping]] = ...) -> None: ...

class SamplerPubResult(_message.Message):
    __slots__ = ("shape", "shots", "registers")
    SHAPE_FIELD_NUMBER: _ClassVar[int]
    SHOTS_FIELD_NUMBER: _ClassVar[int]
    REGISTERS_FIELD_NUMBER: _ClassVar[int]
    shape: _containers.RepeatedScalarFieldContainer[int]
    shots: int
    registers: _containers.RepeatedCompositeFieldContainer[RegisterResult]
    def __init__(self, shape: _Optional[_Iterable[int]] = ..., shots: _Optional[int] = ..., registers: _Optional[_Iterable[_Union[RegisterResult, _Mapping]]] = ...) -> None: ...

class RegisterResult(_message.Message):
    __slots__ = ("name", "num_bits", "samples", "counts")
    NAME_FIELD_NUMBER: _ClassVar[int]
    NUM_BITS_FIELD_NUMBER: _ClassVar[int]
    SAMPLES_FIELD_NUMBER: _ClassVar[int]
    COUNTS_FIELD_NUMBER: _ClassVar[int]
    name: str
    num_bits: int
    samples: bytes
    counts: _containers.RepeatedCompositeFieldContainer[Counts]
    def __init__(self, name: _Optional[str] = ..., num_bits: _Optional[int] = ..., samples: _Optional[bytes] = ..., counts: _Optional[_Iterable[_Union[Counts, _Mapping]]] = ...) -> None: ...

class Counts(_message.Message):
    __slots__ = ("outcomes", "counts")
    OUTCOMES_FIELD_NUMBER: _ClassVar[int]
    COUNTS_FIELD_NUMBER: _ClassVar[int]
    outcomes: bytes
    counts: _containers.RepeatedScalarFieldContainer[int]
    def __init__(self, outcomes: _Optional[bytes] = ..., counts: _Optional[_Iterable[int]] = ...) -> None: ...

class EstimatorPubResult(_message.Message):
    __slots__ = ("shape", "expectation_values", "standard_errors", "precision")
    SHAPE_FIELD_NUMBER: _ClassVar[int]
    EXPECTATION_VALUES_FIELD_NUMBER: _ClassVar[int]
    STANDARD_ERRORS_FIELD_NUMBER: _ClassVar[int]
    PRECISION_FIELD_NUMBER: _ClassVar[int]
    shape: _containers.RepeatedScalarFieldContainer[int]
    expectation_values: _containers.RepeatedScalarFieldContainer[float]
    standard_errors: _containers.RepeatedScalarFieldContainer[float]
    precision: float
    def __init__(self, shape: _Optional[_Iterable[int]] = ..., expectation_values: _Optional[_Iterable[float]] = ..., standard_errors: _Optional[_Iterable[float]] = ..., precision: _Optional[float] = ...) -> None: ...
