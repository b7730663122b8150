"""Helpers for tests that talk to the gateway with raw generated stubs."""

from __future__ import annotations

from dataclasses import dataclass, field

import grpc
from google.rpc import error_details_pb2
from grpc_status import rpc_status
from qgateway.v1 import circuit_pb2, job_pb2


@dataclass
class StatusInfo:
    code: grpc.StatusCode
    message: str
    reason: str = ""
    domain: str = ""
    metadata: dict[str, str] = field(default_factory=dict)
    fields: list[str] = field(default_factory=list)
    retry_delay_s: float | None = None
    has_quota_failure: bool = False


def status_of(err: grpc.RpcError) -> StatusInfo:
    info = StatusInfo(err.code(), err.details() or "")  # type: ignore[attr-defined]
    status = rpc_status.from_call(err)  # type: ignore[arg-type]
    if status is None:
        return info
    for detail in status.details:
        if detail.Is(error_details_pb2.ErrorInfo.DESCRIPTOR):
            ei = error_details_pb2.ErrorInfo()
            detail.Unpack(ei)
            info.reason, info.domain, info.metadata = ei.reason, ei.domain, dict(ei.metadata)
        elif detail.Is(error_details_pb2.BadRequest.DESCRIPTOR):
            br = error_details_pb2.BadRequest()
            detail.Unpack(br)
            info.fields = [v.field for v in br.field_violations]
        elif detail.Is(error_details_pb2.RetryInfo.DESCRIPTOR):
            ri = error_details_pb2.RetryInfo()
            detail.Unpack(ri)
            info.retry_delay_s = ri.retry_delay.ToNanoseconds() / 1e9
        elif detail.Is(error_details_pb2.QuotaFailure.DESCRIPTOR):
            info.has_quota_failure = True
    return info


def sampler_spec(
    qasm: str,
    backend: str = "aer",
    shots: int | None = 64,
    seed: int | None = 7,
    qasm2: bool = False,
) -> job_pb2.JobSpec:
    circuit = circuit_pb2.Circuit(qasm2=qasm) if qasm2 else circuit_pb2.Circuit(qasm3=qasm)
    pub = circuit_pb2.SamplerPub(circuit=circuit)
    if shots is not None:
        pub.shots = shots
    spec = job_pb2.JobSpec(backend=f"backends/{backend}", pubs=[circuit_pb2.Pub(sampler=pub)])
    if seed is not None:
        spec.options.seed = seed
    return spec


def ghz(n: int) -> str:
    lines = [
        "OPENQASM 3.0;",
        'include "stdgates.inc";',
        f"qubit[{n}] q;",
        f"bit[{n}] c;",
        "h q[0];",
    ]
    lines += [f"cx q[{i}], q[{i + 1}];" for i in range(n - 1)]
    lines.append("c = measure q;")
    return "\n".join(lines) + "\n"


def slow_circuit(n: int = 10, layers: int = 4) -> str:
    """A circuit Aer must simulate shot by shot (mid-circuit measurement and reset), so its
    run time grows with the number of shots: slow by its own size, not by a sleep."""
    lines = ["OPENQASM 3.0;", 'include "stdgates.inc";', f"qubit[{n}] q;", f"bit[{n}] c;"]
    lines.append("bit[1] m;")
    for _ in range(layers):
        lines += [f"h q[{i}];" for i in range(n)]
        lines += [f"cx q[{i}], q[{i + 1}];" for i in range(n - 1)]
    lines += ["m[0] = measure q[0];", "reset q[0];"]
    for _ in range(layers):
        lines += [f"rx(0.3) q[{i}];" for i in range(n)]
        lines += [f"cx q[{i}], q[{i + 1}];" for i in range(n - 1)]
    lines.append("c = measure q;")
    return "\n".join(lines) + "\n"
