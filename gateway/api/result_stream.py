"""Splits a JobResult into StreamJobResult chunks no larger than a byte budget."""

from __future__ import annotations

from collections.abc import Iterator

from qgateway.v1 import job_pb2, job_service_pb2

DEFAULT_CHUNK_BYTES = 1 << 20
MAX_CHUNK_BYTES = 3 << 20


def result_chunks(
    result: job_pb2.JobResult, chunk_bytes: int
) -> Iterator[job_service_pb2.StreamJobResultResponse]:
    """For each PUB: a header without bulk data, then samples, counts and values in slices."""
    Response = job_service_pb2.StreamJobResultResponse
    for index, pub in enumerate(result.pub_results):
        header = job_pb2.PubResult()
        header.CopyFrom(pub)
        if pub.HasField("sampler"):
            for reg in header.sampler.registers:
                reg.ClearField("samples")
                reg.ClearField("counts")
        else:
            header.estimator.ClearField("expectation_values")
            header.estimator.ClearField("standard_errors")
        yield Response(pub_index=index, header=header)
        if pub.HasField("sampler"):
            for r, reg in enumerate(pub.sampler.registers):
                data = reg.samples
                for offset in range(0, len(data), chunk_bytes):
                    yield Response(
                        pub_index=index,
                        samples=job_service_pb2.SamplesChunk(
                            register_index=r,
                            offset=offset,
                            data=data[offset : offset + chunk_bytes],
                        ),
                    )
                # Base port: one CountsChunk per binding (splitting comes with resumable streams).
                for binding, counts in enumerate(reg.counts):
                    yield Response(
                        pub_index=index,
                        counts=job_service_pb2.CountsChunk(
                            register_index=r, binding_index=binding, offset=0, counts=counts
                        ),
                    )
        else:
            est = pub.estimator
            step = max(1, chunk_bytes // 16)
            for offset in range(0, len(est.expectation_values), step):
                yield Response(
                    pub_index=index,
                    values=job_service_pb2.EstimatorValuesChunk(
                        offset=offset,
                        expectation_values=est.expectation_values[offset : offset + step],
                        standard_errors=est.standard_errors[offset : offset + step],
                    ),
                )
