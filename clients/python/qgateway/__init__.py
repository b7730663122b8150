"""Python client for qgateway, a gRPC gateway in front of quantum backends.

    from qgateway import Client

    with Client("127.0.0.1:50051") as client:
        print(client.run(qasm, backend="aer", shots=1024).counts())

The generated API lives in `qgateway.v1`; this package wraps it with typed results and errors.
"""

from __future__ import annotations

from qgateway.client import (
    DEFAULT_RETRY,
    DEFAULT_TARGET,
    AsyncClient,
    Client,
    RetryPolicy,
    bindings_array,
    circuit_from_source,
    estimator_pub,
    observables_from,
    sampler_pub,
)
from qgateway.errors import (
    AbortedError,
    AlreadyExistsError,
    CancelledError,
    DataLossError,
    DeadlineExceededError,
    FailedPreconditionError,
    InternalError,
    InvalidArgumentError,
    JobFailedError,
    NotFoundError,
    OutOfRangeError,
    PermissionDeniedError,
    QGatewayError,
    ResourceExhaustedError,
    UnauthenticatedError,
    UnavailableError,
    UnimplementedError,
    UnknownError,
    from_rpc_error,
)
from qgateway.results import (
    Backend,
    BackendLimits,
    EstimatorPubResult,
    ExecutionInfo,
    Job,
    JobResult,
    JobState,
    JobTimings,
    PubResult,
    RegisterData,
    ResultAssembler,
    SamplerPubResult,
    job_result_from_stream,
)

__all__ = [
    "DEFAULT_RETRY",
    "DEFAULT_TARGET",
    "AbortedError",
    "AlreadyExistsError",
    "AsyncClient",
    "Backend",
    "BackendLimits",
    "CancelledError",
    "Client",
    "DataLossError",
    "DeadlineExceededError",
    "EstimatorPubResult",
    "ExecutionInfo",
    "FailedPreconditionError",
    "InternalError",
    "InvalidArgumentError",
    "Job",
    "JobFailedError",
    "JobResult",
    "JobState",
    "JobTimings",
    "NotFoundError",
    "OutOfRangeError",
    "PermissionDeniedError",
    "PubResult",
    "QGatewayError",
    "RegisterData",
    "ResourceExhaustedError",
    "ResultAssembler",
    "RetryPolicy",
    "SamplerPubResult",
    "UnauthenticatedError",
    "UnavailableError",
    "UnimplementedError",
    "UnknownError",
    "bindings_array",
    "circuit_from_source",
    "estimator_pub",
    "from_rpc_error",
    "job_result_from_stream",
    "observables_from",
    "sampler_pub",
]
