"""The two pieces of protobuf's wire format the gateway reads and writes itself: varints.

Stored results are cut on their wire bytes (gateway.api.result_samples, gateway.api.counts_slices)
so that their samples and counts are never turned into Python objects.
"""

from __future__ import annotations


def read_varint(buf: bytes | memoryview, pos: int) -> tuple[int, int]:
    """The varint at `pos` and the position after it.

    Raises:
        ValueError: It runs past `buf` or is longer than 10 bytes.
    """
    value = shift = 0
    while shift < 64:
        if pos >= len(buf):
            raise ValueError("a varint runs past its message")
        byte = buf[pos]
        pos += 1
        value |= (byte & 0x7F) << shift
        if byte < 0x80:
            return value, pos
        shift += 7
    raise ValueError("a varint is longer than 10 bytes")


def encode_varint(value: int) -> bytes:
    """A non-negative integer as a varint."""
    out = bytearray()
    while value >= 0x80:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)
