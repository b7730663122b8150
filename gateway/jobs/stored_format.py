"""The port through which the job core reads stored specs and writes stored results.

Specs and results are stored in the API's wire format; only gateway.api knows it
(gateway.api.codec.WIRE_FORMAT implements this), so the job core stays free of protobuf.
"""

from __future__ import annotations

from typing import Protocol

from gateway.domain.jobs import JobResult, JobSpec


class StoredFormat(Protocol):
    def decode_spec(self, data: bytes) -> JobSpec:
        """A stored spec (as SubmitJob received it) back as a domain spec."""
        ...

    def encode_result(self, result: JobResult) -> bytes:
        """A result in its canonical stored form (what StreamJobResult's digest covers)."""
        ...
