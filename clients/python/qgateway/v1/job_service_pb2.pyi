from google.api import field_behavior_pb2 as _field_behavior_pb2
from google.api import resource_pb2 as _resource_pb2
from qgateway.v1 import job_pb2 as _job_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class SubmitJobRequest(_message.Message):
    __slots__ = ("request_id", "spec", "validate_only")
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    SPEC_FIELD_NUMBER: _ClassVar[int]
    VALIDATE_ONLY_FIELD_NUMBER: _ClassVar[int]
    request_id: str
    spec: _job_pb2.JobSpec
    validate_only: bool
    def __init__(self, request_id: _Optional[str] = ..., spec: _Optional[_Union[_job_pb2.JobSpec, _Mapping]] = ..., validate_only: _Optional[bool] = ...) -> None: ...

class SubmitJobResponse(_message.Message):
    __slots__ = ("job", "created", "cost_estimate")
    JOB_FIELD_NUMBER: _ClassVar[int]
    CREATED_FIELD_NUMBER: _ClassVar[int]
    COST_ESTIMATE_FIELD_NUMBER: _ClassVar[int]
    job: _job_pb2.Job
    created: bool
    cost_estimate: _job_pb2.CostEstimate
    def __init__(self, job: _Optional[_Union[_job_pb2.Job, _Mapping]] = ..., created: _Optional[bool] = ..., cost_estimate: _Optional[_Union[_job_pb2.CostEstimate, _Mapping]] = ...) -> None: ...

class GetJobRequest(_message.Message):
    __slots__ = ("name",)
    NAME_FIELD_NUMBER: _ClassVar[int]
    name: str
    def __init__(self, name: _Optional[str] = ...) -> None: ...

class GetJobResponse(_message.Message):
    __slots__ = ("job",)
    JOB_FIELD_NUMBER: _ClassVar[int]
    job: _job_pb2.Job
    def __init__(self, job: _Optional[_Union[_job_pb2.Job, _Mapping]] = ...) -> None: ...

class GetJobResultRequest(_message.Message):
    __slots__ = ("name",)
    NAME_FIELD_NUMBER: _ClassVar[int]
    name: str
    def __init__(self, name: _Optional[str] = ...) -> None: ...

class GetJobResultResponse(_message.Message):
    __slots__ = ("result",)
    RESULT_FIELD_NUMBER: _ClassVar[int]
    result: _job_pb2.JobResult
    def __init__(self, result: _Optional[_Union[_job_pb2.JobResult, _Mapping]] = ...) -> None: ...

class WatchJobRequest(_message.Message):
    __slots__ = ("name",)
    NAME_FIELD_NUMBER: _ClassVar[int]
    name: str
    def __init__(self, name: _Optional[str] = ...) -> None: ...

class WatchJobResponse(_message.Message):
    __slots__ = ("job", "heartbeat")
    JOB_FIELD_NUMBER: _ClassVar[int]
    HEARTBEAT_FIELD_NUMBER: _ClassVar[int]
    job: _job_pb2.Job
    heartbeat: bool
    def __init__(self, job: _Optional[_Union[_job_pb2.Job, _Mapping]] = ..., heartbeat: _Optional[bool] = ...) -> None: ...

class CancelJobRequest(_message.Message):
    __slots__ = ("name",)
    NAME_FIELD_NUMBER: _ClassVar[int]
    name: str
    def __init__(self, name: _Optional[str] = ...) -> None: ...

class CancelJobResponse(_message.Message):
    __slots__ = ("job",)
    JOB_FIELD_NUMBER: _ClassVar[int]
    job: _job_pb2.Job
    def __init__(self, job: _Optional[_Union[_job_pb2.Job, _Mapping]] = ...) -> None: ...

class ListJobsRequest(_message.Message):
    __slots__ = ("page_size", "page_token", "filter")
    PAGE_SIZE_FIELD_NUMBER: _ClassVar[int]
    PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    FILTER_FIELD_NUMBER: _ClassVar[int]
    page_size: int
    page_token: str
    filter: str
    def __init__(self, page_size: _Optional[int] = ..., page_token: _Optional[str] = ..., filter: _Optional[str] = ...) -> None: ...

class ListJobsResponse(_message.Message):
    __slots__ = ("jobs", "next_page_token")
    JOBS_FIELD_NUMBER: _ClassVar[int]
    NEXT_PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    jobs: _containers.RepeatedCompositeFieldContainer[_job_pb2.Job]
    next_page_token: str
    def __init__(self, jobs: _Optional[_Iterable[_Union[_job_pb2.Job, _Mapping]]] = ..., next_page_token: _Optional[str] = ...) -> None: ...

class RunRequest(_message.Message):
    __slots__ = ("request_id", "spec")
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    SPEC_FIELD_NUMBER: _ClassVar[int]
    request_id: str
    spec: _job_pb2.JobSpec
    def __init__(self, request_id: _Optional[str] = ..., spec: _Optional[_Union[_job_pb2.JobSpec, _Mapping]] = ...) -> None: ...

class RunResponse(_message.Message):
    __slots__ = ("job", "result", "result_too_large", "created")
    JOB_FIELD_NUMBER: _ClassVar[int]
    RESULT_FIELD_NUMBER: _ClassVar[int]
    RESULT_TOO_LARGE_FIELD_NUMBER: _ClassVar[int]
    CREATED_FIELD_NUMBER: _ClassVar[int]
    job: _job_pb2.Job
    result: _job_pb2.JobResult
    result_too_large: bool
    created: bool
    def __init__(self, job: _Optional[_Union[_job_pb2.Job, _Mapping]] = ..., result: _Optional[_Union[_job_pb2.JobResult, _Mapping]] = ..., result_too_large: _Optional[bool] = ..., created: _Optional[bool] = ...) -> None: ...

class StreamJobResultRequest(_message.Message):
    __slots__ = ("name", "chunk_bytes", "start_pub_index", "start_binding_index")
    NAME_FIELD_NUMBER: _ClassVar[int]
    CHUNK_BYTES_FIELD_NUMBER: _ClassVar[int]
    START_PUB_INDEX_FIELD_NUMBER: _ClassVar[int]
    START_BINDING_INDEX_FIELD_NUMBER: _ClassVar[int]
    name: str
    chunk_bytes: int
    start_pub_index: int
    start_binding_index: int
    def __init__(self, name: _Optional[str] = ..., chunk_bytes: _Optional[int] = ..., start_pub_index: _Optional[int] = ..., start_binding_index: _Optional[int] = ...) -> None: ...

class StreamJobResultResponse(_message.Message):
    __slots__ = ("pub_index", "header", "samples", "counts", "values", "digest")
    PUB_INDEX_FIELD_NUMBER: _ClassVar[int]
    HEADER_FIELD_NUMBER: _ClassVar[int]
    SAMPLES_FIELD_NUMBER: _ClassVar[int]
    COUNTS_FIELD_NUMBER: _ClassVar[int]
    VALUES_FIELD_NUMBER: _ClassVar[int]
    DIGEST_FIELD_NUMBER: _ClassVar[int]
    pub_index: int
    header: _job_pb2.PubResult
    samples: SamplesChunk
    counts: CountsChunk
    values: EstimatorValuesChunk
    digest: ResultDigest
    def __init__(self, pub_index: _Optional[int] = ..., header: _Optional[_Union[_job_pb2.PubResult, _Mapping]] = ..., samples: _Optional[_Union[SamplesChunk, _Mapping]] = ..., counts: _Optional[_Union[CountsChunk, _Mapping]] = ..., values: _Optional[_Union[EstimatorValuesChunk, _Mapping]] = ..., digest: _Optional[_Union[ResultDigest, _Mapping]] = ...) -> None: ...

class SamplesChunk(_message.Message):
    __slots__ = ("register_index", "offset", "data")
    REGISTER_INDEX_FIELD_NUMBER: _ClassVar[int]
    OFFSET_FIELD_NUMBER: _ClassVar[int]
    DATA_FIELD_NUMBER: _ClassVar[int]
    register_index: int
    offset: int
    data: bytes
    def __init__(self, register_index: _Optional[int] = ..., offset: _Optional[int] = ..., data: _Optional[bytes] = ...) -> None: ...

class CountsChunk(_message.Message):
    __slots__ = ("register_index", "binding_index", "offset", "counts")
    REGISTER_INDEX_FIELD_NUMBER: _ClassVar[int]
    BINDING_INDEX_FIELD_NUMBER: _ClassVar[int]
    OFFSET_FIELD_NUMBER: _ClassVar[int]
    COUNTS_FIELD_NUMBER: _ClassVar[int]
    register_index: int
    binding_index: int
    offset: int
    counts: _job_pb2.Counts
    def __init__(self, register_index: _Optional[int] = ..., binding_index: _Optional[int] = ..., offset: _Optional[int] = ..., counts: _Optional[_Union[_job_pb2.Counts, _Mapping]] = ...) -> None: ...

class EstimatorValuesChunk(_message.Message):
    __slots__ = ("offset", "expectation_values", "standard_errors")
    OFFSET_FIELD_NUMBER: _ClassVar[int]
    EXPECTATION_VALUES_FIELD_NUMBER: _ClassVar[int]
    STANDARD_ERRORS_FIELD_NUMBER: _ClassVar[int]
    offset: int
    expectation_values: _containers.RepeatedScalarFieldContainer[float]
    standard_errors: _containers.RepeatedScalarFieldContainer[float]
    def __init__(self, offset: _Optional[int] = ..., expectation_values: _Optional[_Iterable[float]] = ..., standard_errors: _Optional[_Iterable[float]] = ...) -> None: ...

class ResultDigest(_message.Message):
    __slots__ = ("sha256",)
    SHA256_FIELD_NUMBER: _ClassVar[int]
    sha256: bytes
    def __init__(self, sha256: _Optional[bytes] = ...) -> None: ...
