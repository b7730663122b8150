"""What SubmitJob and Run derive from a JobSpec, kept for specs seen again.

A VQE-style client sends the same spec over and over (a new request_id each time, the spec
itself byte for byte equal). Its request digest and its decoded domain form are pure functions
of the message, so they are kept per deterministic serialisation, which the servicer computes
anyway to store the spec. A spec that fails to decode is not kept: its error is raised afresh.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable

from qgateway.v1 import job_pb2

from gateway.domain.circuits import EstimatorPub, SamplerPub
from gateway.domain.jobs import JobSpec

# Enough for the circuits a few hundred clients iterate on; larger specs (sweeps, big
# circuits) are rarer, and decoding them costs little next to running them.
MAX_ENTRIES = 512
MAX_SPEC_BYTES = 16 << 10


class _Entry:
    __slots__ = ("digest", "spec")

    def __init__(self, digest: bytes) -> None:
        self.digest = digest
        self.spec: JobSpec | None = None


class SpecCache:
    """A small LRU from a spec's deterministic serialisation to its digest and domain form.

    Args:
        digest: The request digest function (gateway.api.request_digest.request_digest).
        decode: The spec decoder (gateway.api.codec.decode_spec); may raise GatewayError.
        max_entries: Entries kept.
        max_spec_bytes: Larger specs are derived every time, never kept.
    """

    def __init__(
        self,
        digest: Callable[[job_pb2.JobSpec], bytes],
        decode: Callable[[job_pb2.JobSpec], JobSpec],
        max_entries: int = MAX_ENTRIES,
        max_spec_bytes: int = MAX_SPEC_BYTES,
    ) -> None:
        self._digest = digest
        self._decode = decode
        self._max_entries = max_entries
        self._max_spec_bytes = max_spec_bytes
        self._entries: OrderedDict[bytes, _Entry] = OrderedDict()

    def digest(self, spec_bytes: bytes, spec: job_pb2.JobSpec) -> bytes:
        """The request digest of `spec`, whose deterministic serialisation is `spec_bytes`;
        call it before `decoded` (which finds the entry this keeps)."""
        entry = self._entries.get(spec_bytes)
        if entry is not None:
            self._entries.move_to_end(spec_bytes)
            return entry.digest
        digest = self._digest(spec)
        if len(spec_bytes) <= self._max_spec_bytes:
            self._entries[spec_bytes] = _Entry(digest)
            if len(self._entries) > self._max_entries:
                self._entries.popitem(last=False)
        return digest

    def decoded(self, spec_bytes: bytes, spec: job_pb2.JobSpec) -> JobSpec:
        """The domain spec of `spec` (raises what the decoder raises; errors are not kept).

        A kept spec is shared by every job that sends the same bytes: its parameter arrays are
        made read-only, so no consumer can change another job's values.
        """
        entry = self._entries.get(spec_bytes)
        if entry is None:  # too large to keep, or pushed out since its digest was taken
            return self._decode(spec)
        if entry.spec is None:
            decoded = self._decode(spec)
            for pub in decoded.pubs:
                if isinstance(pub, SamplerPub | EstimatorPub):
                    pub.bindings.values.flags.writeable = False
            entry.spec = decoded
        return entry.spec
