"""The compiler's pure parts: refusals renamed to the PUB's field, the byte-bounded cache."""

from __future__ import annotations

from dataclasses import dataclass

from gateway.backends.base import CIRCUIT_FIELD
from gateway.domain.circuits import (
    Bindings,
    CircuitLanguage,
    CircuitSource,
    SamplerPub,
    circuit_field,
)
from gateway.domain.errors import FieldViolation, InvalidArgument
from gateway.runtime.compiler import _Cache, relocated


def test_a_cached_refusal_names_the_field_of_the_pub_that_sent_it() -> None:
    refusal = InvalidArgument(
        "UNKNOWN_GATE",
        "gate 'foo' is not defined",
        metadata={"gate": "foo"},
        field_violations=[
            FieldViolation(CIRCUIT_FIELD, "no such gate"),
            FieldViolation(CIRCUIT_FIELD + ".line", "here"),
            FieldViolation("elsewhere", "kept"),
        ],
    )
    pub = SamplerPub(CircuitSource(CircuitLanguage.QASM2, "x"), Bindings())
    field = circuit_field(3, pub)
    assert field == "spec.pubs[3].sampler.circuit.qasm2"
    moved = relocated(refusal, field)
    assert [v.field for v in moved.field_violations] == [field, field + ".line", "elsewhere"]
    assert (moved.reason, moved.message, moved.metadata) == (
        refusal.reason,
        refusal.message,
        refusal.metadata,
    )
    # The cached original is untouched, ready for the next PUB that sends the same text.
    assert refusal.field_violations[0].field == CIRCUIT_FIELD


@dataclass
class _Weighted:
    nbytes: int


def test_the_cache_keeps_the_most_recent_within_its_bytes() -> None:
    cache = _Cache(max_bytes=100_000)
    cache.put("a", _Weighted(20_000))
    cache.put("b", _Weighted(20_000))
    cache.put("c", _Weighted(20_000))
    assert cache.get("a") is not None  # now the most recent
    cache.put("d", _Weighted(25_000))
    cache.put("e", _Weighted(25_000))  # 110,000 bytes: the least recent ("b") goes
    assert cache.get("b") is None
    assert all(cache.get(k) is not None for k in "acde")
    # Larger than a quarter of the cache: never cached, nothing evicted for it.
    cache.put("huge", _Weighted(30_000))
    assert cache.get("huge") is None and len(cache) == 4
    # Refusals (no nbytes) weigh a small fixed amount.
    cache.put("refused", InvalidArgument("X", "y"))
    assert isinstance(cache.get("refused"), InvalidArgument) and len(cache) == 5
