"""StreamJobResult: a stored JobResult as a resumable sequence of bounded messages.

The order is the contract the client's resume relies on. For each PUB from the start position:
its header (the PubResult with samples, counts and estimator values left empty), then its data
binding by binding from the start binding -- for a sampler PUB, per register, that binding's
samples in slices and then its counts in slices; for an estimator PUB, values in runs starting
at the start binding. Last, the SHA-256 of the whole result. So every binding before the one a
message belongs to is complete once that message arrives, and a broken stream resumes from the
binding it was in.

Every message carries at most `chunk_bytes` of payload (sample bytes; outcome rows plus their
count varints; 16 bytes per estimator value); a counts slice always holds at least one entry.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Iterator

from google.protobuf.message import Message
from qgateway.v1 import job_pb2, job_service_pb2

from gateway.api.counts_slices import CountsSlices
from gateway.api.preserialized import Preserialized
from gateway.api.result_views import BindingCounts, Split
from gateway.api.wire_format import length_delimited
from gateway.domain.costs import varint_bytes
from gateway.domain.errors import FieldViolation, InvalidArgument

DEFAULT_CHUNK_BYTES = 1 << 20
MAX_CHUNK_BYTES = 3 << 20
# Smaller requests are raised to this: a stream of single-byte messages would cost the server
# a message per byte of a result of hundreds of MiB.
MIN_CHUNK_BYTES = 1 << 10
# A message's bytes beyond its payload (positions, field tags, lengths): a chunk leaves this
# much of server.max_response_bytes free.
FRAMING_BYTES = 1 << 10
# Payload bytes of one estimator entry: its value and its standard error.
ESTIMATOR_ENTRY_BYTES = 16

Response = job_service_pb2.StreamJobResultResponse
# Where a counts slice goes: StreamJobResultResponse.counts, then CountsChunk.counts.
_RESPONSE_COUNTS = Response.DESCRIPTOR.fields_by_name["counts"].number
_CHUNK_COUNTS = job_service_pb2.CountsChunk.DESCRIPTOR.fields_by_name["counts"].number


def _invalid(reason: str, field: str, message: str, **metadata: int) -> InvalidArgument:
    return InvalidArgument(
        reason,
        message,
        metadata={key: str(value) for key, value in metadata.items()},
        field_violations=[FieldViolation(field, message)],
    )


def chunk_size(requested: int, max_response_bytes: int) -> int:
    """The payload budget per message for a request's chunk_bytes (0: the default), within
    the server's largest response (`server.max_response_bytes`, less framing): a larger chunk
    was sent past it, and past gRPC's send limit failed the stream with a bare
    RESOURCE_EXHAUSTED."""
    if requested < 0:
        raise _invalid(
            "INVALID_CHUNK_SIZE",
            "chunk_bytes",
            f"chunk_bytes must be >= 0 (0: the default), got {requested}",
            chunkBytes=requested,
        )
    largest = max(MIN_CHUNK_BYTES, min(MAX_CHUNK_BYTES, max_response_bytes - FRAMING_BYTES))
    if requested == 0:
        return min(DEFAULT_CHUNK_BYTES, largest)
    return max(MIN_CHUNK_BYTES, min(requested, largest))


def check_start_fields(start_pub: int, start_binding: int) -> None:
    """Refuses negative resume positions (before anything is looked up)."""
    if start_pub < 0:
        raise _invalid(
            "INVALID_RESUME_POSITION",
            "start_pub_index",
            f"start_pub_index must be >= 0, got {start_pub}",
            startPubIndex=start_pub,
        )
    if start_binding < 0:
        raise _invalid(
            "INVALID_RESUME_POSITION",
            "start_binding_index",
            f"start_binding_index must be >= 0, got {start_binding}",
            startBindingIndex=start_binding,
        )


def num_bindings(pub: job_pb2.PubResult) -> int:
    """The number of bindings of a PUB's result: the product of its shape (1 for ())."""
    if pub.HasField("sampler"):
        return math.prod(pub.sampler.shape)
    return math.prod(pub.estimator.shape)


def check_pub_position(start_pub: int, pubs: int) -> None:
    """Refuses a resume position past the last of `pubs` PUBs: checked from the job, before
    its result is read (a refusal must not cost a read of up to max_result_mb)."""
    if start_pub >= pubs:
        raise _invalid(
            "INVALID_RESUME_POSITION",
            "start_pub_index",
            f"start_pub_index {start_pub} is past the last PUB (the result has {pubs})",
            startPubIndex=start_pub,
            numPubs=pubs,
        )


def check_position(result: job_pb2.JobResult, start_pub: int, start_binding: int) -> None:
    """Refuses a resume position past the end of the result."""
    check_pub_position(start_pub, len(result.pub_results))
    bindings = num_bindings(result.pub_results[start_pub])
    if start_binding >= bindings:
        raise _invalid(
            "INVALID_RESUME_POSITION",
            "start_binding_index",
            f"start_binding_index {start_binding} is past the last binding of PUB {start_pub} "
            f"(it has {bindings})",
            startBindingIndex=start_binding,
            numBindings=bindings,
            pubIndex=start_pub,
        )


def _header(pub: job_pb2.PubResult) -> job_pb2.PubResult:
    # Field by field, skipping the data: a CopyFrom copied every count of a PUB of hundreds
    # of MiB on the event loop, at every stream's start.
    header = job_pb2.PubResult()
    if pub.HasField("sampler"):
        header.sampler.SetInParent()
        _copy_fields(pub.sampler, header.sampler, skip={"registers"})
        for reg in pub.sampler.registers:
            _copy_fields(reg, header.sampler.registers.add(), skip={"samples", "counts"})
    else:
        header.estimator.SetInParent()
        skip = {"expectation_values", "standard_errors"}
        _copy_fields(pub.estimator, header.estimator, skip=skip)
    return header


def _copy_fields(source: Message, target: Message, skip: set[str]) -> None:
    """Copies every field of `source` into `target` but those named in `skip` (not read)."""
    for field in source.DESCRIPTOR.fields:
        if field.name in skip:
            continue
        if field.is_repeated:
            getattr(target, field.name).MergeFrom(getattr(source, field.name))
        elif field.message_type is not None:
            if source.HasField(field.name):
                getattr(target, field.name).CopyFrom(getattr(source, field.name))
        elif not field.has_presence or source.HasField(field.name):
            setattr(target, field.name, getattr(source, field.name))


def _sampler_chunks(
    index: int,
    sampler: job_pb2.SamplerPubResult,
    samples: list[memoryview],
    counts: list[BindingCounts],
    chunk_bytes: int,
    start: int,
) -> Iterator[Response | Preserialized]:
    bindings = math.prod(sampler.shape)
    shots = sampler.shots
    if len(samples) != len(sampler.registers) or len(counts) != len(sampler.registers):
        raise ValueError(f"PUB {index}: {len(samples)} sample arrays, {len(counts)} counts")
    rows = [(reg.num_bits + 7) // 8 for reg in sampler.registers]
    for r in range(len(sampler.registers)):
        if samples[r] and len(samples[r]) != bindings * shots * rows[r]:
            raise ValueError(f"PUB {index} register {r}: stored samples have the wrong size")
        if len(counts[r]) not in (0, bindings):
            raise ValueError(f"PUB {index} register {r}: stored counts have the wrong length")
    if not any(samples) and not any(counts):
        # Nothing to send per binding: walking the shape's bindings anyway took time in the
        # shape's size, not the stored result's (a damaged shape of 10**12 held the loop).
        return
    # Every count is at most the shots: an upper bound on each counts entry's payload.
    count_bytes = varint_bytes(shots)
    for b in range(start, bindings):
        for r in range(len(sampler.registers)):
            data = samples[r]
            if data:
                size = shots * rows[r]
                base = b * size
                for offset in range(0, size, chunk_bytes):
                    yield Response(
                        pub_index=index,
                        samples=job_service_pb2.SamplesChunk(
                            register_index=r,
                            offset=base + offset,
                            data=bytes(
                                data[base + offset : base + min(offset + chunk_bytes, size)]
                            ),
                        ),
                    )
            if counts[r]:
                row = rows[r]
                slices = CountsSlices(counts[r][b], row)
                per = max(1, chunk_bytes // (row + count_bytes))
                head = Response(pub_index=index).SerializeToString()
                for first in range(0, slices.entries, per):
                    # Sent as wire bytes, never parsed: the slice's own, within the small
                    # fields around it (gateway.api.preserialized).
                    chunk = job_service_pb2.CountsChunk(
                        register_index=r, binding_index=b, offset=first
                    ).SerializeToString()
                    chunk += length_delimited(_CHUNK_COUNTS, slices.wire(first, first + per))
                    yield Preserialized(head + length_delimited(_RESPONSE_COUNTS, chunk))


def _estimator_chunks(
    index: int, estimator: job_pb2.EstimatorPubResult, chunk_bytes: int, start: int
) -> Iterator[Response | Preserialized]:
    values = estimator.expectation_values
    errors = estimator.standard_errors
    bindings = math.prod(estimator.shape)
    # Standard errors may be left out, for every entry (as the client reads a stream).
    if len(values) != bindings or len(errors) not in (0, bindings):
        # Sent as they are, the stream ended OK: a client learnt of the damage from its own
        # reassembly, if at all, and the operator not at all.
        raise ValueError(
            f"PUB {index}: {len(values)} values and {len(errors)} standard errors stored for "
            f"{bindings} bindings"
        )
    step = max(1, chunk_bytes // ESTIMATOR_ENTRY_BYTES)
    for offset in range(start, len(values), step):
        yield Response(
            pub_index=index,
            values=job_service_pb2.EstimatorValuesChunk(
                offset=offset,
                expectation_values=values[offset : offset + step],
                standard_errors=errors[offset : offset + step],
            ),
        )


def result_chunks(
    stored: Split,
    chunk_bytes: int,
    start_pub: int = 0,
    start_binding: int = 0,
) -> Iterator[Response | Preserialized]:
    """Headers and data from (start_pub, start_binding) on, without the final digest.
    Raises ValueError, as the messages are made, where the stored result is damaged (a size
    or a length its headers contradict; a Counts message not as the gateway writes it).

    Args:
        stored: The stored result, split (result_views.split_result).
        chunk_bytes: Payload budget per message, > 0.
        start_pub: First PUB to send (its header is sent again).
        start_binding: Within start_pub, the first binding to send; later PUBs start at 0.
    """
    if chunk_bytes <= 0:
        raise ValueError("chunk_bytes must be positive")
    result, samples, counts = stored
    for index in range(start_pub, len(result.pub_results)):
        pub = result.pub_results[index]
        first = start_binding if index == start_pub else 0
        yield Response(pub_index=index, header=_header(pub))
        if pub.HasField("sampler"):
            yield from _sampler_chunks(
                index, pub.sampler, samples[index], counts[index], chunk_bytes, first
            )
        else:
            yield from _estimator_chunks(index, pub.estimator, chunk_bytes, first)


def result_digest(data: bytes) -> bytes:
    """SHA-256 of the result's canonical serialisation (name unset, deterministic=True): of
    the stored bytes as they are, since the gateway stores results so (codec's
    STORED_FORMAT)."""
    return hashlib.sha256(data).digest()


def digest_response(digest: bytes) -> Response:
    """The stream's last message."""
    return Response(digest=job_service_pb2.ResultDigest(sha256=digest))
