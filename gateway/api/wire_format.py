"""The pieces of protobuf's wire format the gateway reads and writes itself: varints, a
message's top-level fields, a length-delimited field.

Stored results are cut on their wire bytes (gateway.api.result_views, gateway.api.counts_slices)
and sent as they are (gateway.api.preserialized), so that their samples and counts are never
turned into Python objects.
"""

from __future__ import annotations

from collections.abc import Iterator

VARINT, I64, LEN, I32 = 0, 1, 2, 5  # wire types
MAX_FIELD_NUMBER = (1 << 29) - 1


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


def fields(data: bytes) -> Iterator[tuple[int, int, int, int]]:
    """(field number, wire type, start, end) of each top-level field of the message `data`,
    never walking into one; for a length-delimited field, data[start:end] is its payload.

    Raises:
        ValueError: A field number outside protobuf's range (a zero-filled tail reads as
            field 0), a wire type it does not use, or a field running past the end.
    """
    at = 0
    while at < len(data):
        key, at = read_varint(data, at)
        number, wire_type = key >> 3, key & 7
        if not 1 <= number <= MAX_FIELD_NUMBER:
            raise ValueError(f"field number {number} is outside protobuf's range")
        start = at
        if wire_type == VARINT:
            _, at = read_varint(data, at)
        elif wire_type in (I64, I32):
            at += 8 if wire_type == I64 else 4
        elif wire_type == LEN:
            size, start = read_varint(data, at)
            at = start + size
        else:
            raise ValueError(f"wire type {wire_type} has no place here")
        if at > len(data):
            raise ValueError("the last field runs past the message's end")
        yield number, wire_type, start, at


def length_delimited(number: int, payload: bytes) -> bytes:
    """Field `number` holding `payload` (bytes, or a message's wire bytes)."""
    return encode_varint(number << 3 | LEN) + encode_varint(len(payload)) + payload
