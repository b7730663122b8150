"""The packed BitArray layout (gateway.domain.bitarray), in process.

Pinned examples compare with bitstrings and bytes written out by hand. The property tests
compare every input format against a reference written bit by bit in plain Python (one
character per clbit, character 0 = the register's highest bit), never against the numpy code
under test.
"""

from __future__ import annotations

import pickle
import pickletools
from collections import Counter
from itertools import pairwise

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gateway.domain import bitarray
from gateway.domain.bitarray import (
    Counts,
    OutcomeDecoder,
    RegisterSpec,
    SamplerResultBuilder,
    bits_from_bitstrings,
    bits_from_ints,
    pack_bits,
    packed_width,
)

PROPERTY = settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])

# ------------------------------------------------------------------------- pinned examples


def test_packed_width() -> None:
    widths = [packed_width(n) for n in (0, 1, 7, 8, 9, 16, 17, 64, 65)]
    assert widths == [0, 1, 1, 1, 2, 2, 3, 8, 9]


def test_two_registers_of_different_widths_from_every_format() -> None:
    # Five clbits: a = clbits (0, 1, 2) (a[0] = clbit 0), b = clbits (3, 4).
    # Shot 1: clbits 0 and 4 set -> a = "001", b = "10".
    # Shot 2: clbits 1, 2, 3 set -> a = "110", b = "01".
    decoder = OutcomeDecoder(5, [RegisterSpec("a", (0, 1, 2)), RegisterSpec("b", (3, 4))])
    expected = [
        [[0b001], [0b110]],
        [[0b10], [0b01]],
    ]
    assert [r.tolist() for r in decoder.hex_samples(["0x11", "0xe"])] == expected
    assert [r.tolist() for r in decoder.int_samples([17, 14])] == expected
    assert [r.tolist() for r in decoder.bitstring_samples(["10001", "01110"])] == expected
    # Qiskit writes one register per word, the last register first.
    assert [r.tolist() for r in decoder.bitstring_samples(["10 001", "01 110"])] == expected
    bits = [[1, 0, 0, 0, 1], [0, 1, 1, 1, 0]]  # column j = clbit j
    assert [r.tolist() for r in decoder.bit_samples(bits)] == expected


def test_a_register_of_scattered_clbits_in_its_own_order() -> None:
    # r[0] = clbit 4, r[1] = clbit 0, r[2] = clbit 2; clbit 4 and clbit 2 set -> r = "101".
    decoder = OutcomeDecoder(5, [RegisterSpec("r", (4, 0, 2))])
    assert decoder.int_samples([0b10100])[0].tolist() == [[0b101]]
    assert decoder.int_samples([0b00001])[0].tolist() == [[0b010]]


def test_nine_bits_pad_the_first_byte() -> None:
    decoder = OutcomeDecoder(9, [RegisterSpec("c", tuple(range(9)))])
    # "100000011": the highest bit alone in the first byte, after seven bits of padding.
    assert decoder.bitstring_samples(["100000011"])[0].tolist() == [[0x01, 0x03]]
    assert decoder.hex_samples(["0x103"])[0].tolist() == [[0x01, 0x03]]


def test_a_wide_circuit_past_64_clbits() -> None:
    # 70 clbits; register w = clbits 60..69. Set clbits 69 and 61: w = "1000000010".
    decoder = OutcomeDecoder(70, [RegisterSpec("w", tuple(range(60, 70))), RegisterSpec("z", (0,))])
    value = (1 << 69) | (1 << 61)
    expected = [[[0b10, 0b00000010]], [[0]]]
    assert [r.tolist() for r in decoder.int_samples([value])] == expected
    assert [r.tolist() for r in decoder.hex_samples([hex(value)])] == expected
    assert [r.tolist() for r in decoder.bitstring_samples([format(value, "070b")])] == expected


@pytest.mark.parametrize("unpack_bytes", [1, 1000, 16 << 20])
def test_wide_outcomes_straight_from_ints_or_in_chunks(
    monkeypatch: pytest.MonkeyPatch, unpack_bytes: int
) -> None:
    """Past 64 clbits a register of consecutive clbits takes its bytes from each outcome's
    int; a scattered one is gathered from bit matrices of a few shots at a time (one shot,
    several, all at once): every way gives the reference rows."""
    monkeypatch.setattr(bitarray, "_UNPACK_BYTES", unpack_bytes)
    unpacked: list[int] = []  # shots per bit matrix: what one unpack holds, x num_clbits
    unpack = bitarray.bits_from_ints

    def counted(values: list[int], num_bits: int) -> bitarray.UInt8Array:
        unpacked.append(len(values))
        return unpack(values, num_bits)

    monkeypatch.setattr(bitarray, "bits_from_ints", counted)
    rng = np.random.default_rng(11)
    num_clbits = 150
    registers = [
        RegisterSpec("low", tuple(range(70))),
        RegisterSpec("scattered", (149, 100, 75, 3)),
        RegisterSpec("none", ()),
        RegisterSpec("high", tuple(range(140, 150))),
    ]
    values = [int.from_bytes(rng.bytes(19), "little") >> 2 for _ in range(37)]
    decoder = OutcomeDecoder(num_clbits, registers)
    expected = [[reference_row(v, r.clbits) for v in values] for r in registers]
    for rows in (
        decoder.int_samples(values),
        decoder.hex_samples([hex(v) for v in values]),
        decoder.bitstring_samples([format(v, f"0{num_clbits}b") for v in values]),
    ):
        assert [r.tolist() for r in rows] == expected
        assert [r.shape for r in rows] == [(37, 9), (37, 1), (37, 0), (37, 2)]
    # Only the scattered registers unpack bits (int and hex outcomes), a bounded number of
    # shots at a time: 8000 shots of 100,000 bits held 2.2 GB at once.
    step = max(1, unpack_bytes // num_clbits)
    assert sum(unpacked) == 2 * 37 and max(unpacked) == min(step, 37)


def test_counts_of_hex_counts_are_per_register() -> None:
    decoder = OutcomeDecoder(3, [RegisterSpec("a", (0,)), RegisterSpec("b", (1, 2))])
    a, b = decoder.hex_counts({"0x0": 3, "0x7": 5, "0x6": 2})
    assert dict(a) == {"0": 5, "1": 5}
    assert dict(b) == {"00": 3, "11": 7}
    assert a.outcomes.tolist() == [[0], [1]] and b.counts.tolist() == [3, 7]


def test_zero_bit_register_counts_every_shot_as_the_empty_outcome() -> None:
    decoder = OutcomeDecoder(2, [RegisterSpec("empty", ()), RegisterSpec("c", (0, 1))])
    empty, c = decoder.int_samples([1, 2, 3])
    assert empty.shape == (3, 0)
    assert c.tolist() == [[1], [2], [3]]
    (zero, _) = decoder.counts_of_rows([empty, c])
    assert dict(zero) == {"": 3}


@pytest.mark.parametrize(
    "counts",
    [
        Counts.from_dict({"100000001": 2, "000000011": 1}, 9),
        Counts.from_dict({"1" * 70: 3}, 70),
        Counts.from_rows(np.zeros((7, 0), dtype=np.uint8), 0),
        Counts(3, np.zeros((0, 1), dtype=np.uint8), np.zeros(0, dtype=np.int64)),
    ],
)
def test_counts_pickle_as_bytes_not_arrays(counts: Counts) -> None:
    # A worker's reply holds one Counts per binding and register; arrays in it made unpickling
    # hold the interpreter lock away from the event loop for ~0.2 s at a time.
    data = pickle.dumps(counts, pickle.HIGHEST_PROTOCOL)
    globals_named = [
        str(arg)
        for op, arg, _ in pickletools.genops(data)
        if op.name in ("GLOBAL", "SHORT_BINUNICODE")
    ]
    assert not any("numpy" in name for name in globals_named)
    restored = pickle.loads(data)
    assert restored == counts and restored.num_bits == counts.num_bits
    assert restored.outcomes.shape == counts.outcomes.shape
    assert restored.counts.dtype == np.int64 and restored.outcomes.dtype == np.uint8


def test_helpers_pinned() -> None:
    assert bits_from_ints([5], 4).tolist() == [[1, 0, 1, 0]]
    assert bits_from_bitstrings(["0101"], 4).tolist() == [[1, 0, 1, 0]]
    assert pack_bits(np.array([[1, 0, 0, 0, 0, 0, 0, 0, 1]], dtype=np.uint8)).tolist() == [
        [0x01, 0x01]
    ]


def test_bad_input_is_refused() -> None:
    with pytest.raises(ValueError, match="outside the circuit"):
        OutcomeDecoder(2, [RegisterSpec("c", (0, 2))])
    decoder = OutcomeDecoder(2, [RegisterSpec("c", (0, 1))])
    with pytest.raises(ValueError, match="only 0, 1"):
        decoder.bitstring_samples(["0x"])
    with pytest.raises(ValueError, match="expected"):
        decoder.bit_samples([[1, 0, 1]])


def test_builder_with_samples_and_counts_pinned() -> None:
    # Shape (2,), 3 shots, one 2-bit register on clbits (1, 0) (reversed).
    builder = SamplerResultBuilder(
        2, [RegisterSpec("c", (1, 0))], (2,), 3, samples=True, counts=True
    )
    builder.add_samples(0, builder.decoder.int_samples([0b01, 0b01, 0b10]))
    builder.add_samples(1, builder.decoder.bitstring_samples(["11", "00", "11"]))
    result = builder.build()
    (register,) = result.registers
    assert (result.shape, result.shots, register.name, register.num_bits) == ((2,), 3, "c", 2)
    assert register.samples is not None
    # clbit 0 set -> c[1] set -> "10"; clbit 1 set -> "01".
    assert register.samples.tolist() == [[[0b10], [0b10], [0b01]], [[0b11], [0b00], [0b11]]]
    assert [dict(c) for c in register.counts] == [{"01": 1, "10": 2}, {"00": 1, "11": 2}]


def test_builder_counts_only_and_missing_bindings() -> None:
    builder = SamplerResultBuilder(
        1, [RegisterSpec("c", (0,))], (2, 1), 4, samples=False, counts=True
    )
    builder.add_counts(0, builder.decoder.hex_counts({"0x1": 4}))
    with pytest.raises(ValueError, match="binding 1 has no outcomes"):
        builder.build()
    with pytest.raises(ValueError, match="shots counted"):
        builder.add_counts(1, builder.decoder.hex_counts({"0x1": 3}))
    builder.add_samples(1, builder.decoder.int_samples([0, 0, 1, 0]))
    result = builder.build()
    assert result.registers[0].samples is None
    assert [dict(c) for c in result.registers[0].counts] == [{"1": 4}, {"0": 3, "1": 1}]
    with pytest.raises(IndexError):
        builder.add_samples(2, builder.decoder.int_samples([0, 0, 0, 0]))


def test_builder_samples_only() -> None:
    builder = SamplerResultBuilder(
        3, [RegisterSpec("c", (0, 1, 2))], (), 2, samples=True, counts=False
    )
    with pytest.raises(ValueError, match="asked for samples"):
        builder.add_counts(0, builder.decoder.hex_counts({"0x1": 2}))
    builder.add_samples(0, builder.decoder.hex_samples(["0x6", "0x1"]))
    register = builder.build().registers[0]
    assert register.counts == ()
    assert register.samples is not None and register.samples.tolist() == [[0b110], [0b001]]


# -------------------------------------------------------------------------- the reference


def reference_bitstring(value: int, clbits: tuple[int, ...]) -> str:
    """A register's bitstring, one character per bit: character 0 = register bit k-1."""
    return "".join("1" if value >> clbit & 1 else "0" for clbit in reversed(clbits))


def reference_row(value: int, clbits: tuple[int, ...]) -> list[int]:
    bits = reference_bitstring(value, clbits)
    width = (len(clbits) + 7) // 8
    return list((int(bits, 2) if bits else 0).to_bytes(width, "big"))


@st.composite
def circuits(draw: st.DrawFn) -> tuple[int, list[RegisterSpec], list[int]]:
    """A circuit's clbit count, registers covering some of its clbits in any order, and
    per-shot outcomes."""
    num_clbits = draw(st.one_of(st.integers(0, 12), st.integers(13, 70), st.integers(120, 140)))
    order = draw(st.permutations(list(range(num_clbits))))
    cuts = sorted(draw(st.lists(st.integers(0, num_clbits), max_size=4)))
    bounds = [0, *cuts, num_clbits]
    registers = [
        RegisterSpec(f"r{i}", tuple(order[a:b])) for i, (a, b) in enumerate(pairwise(bounds))
    ]
    shots = draw(st.integers(0, 24))
    values = draw(st.lists(st.integers(0, (1 << num_clbits) - 1), min_size=shots, max_size=shots))
    return num_clbits, registers, values


@PROPERTY
@given(circuits())
def test_every_format_matches_the_reference(
    circuit: tuple[int, list[RegisterSpec], list[int]],
) -> None:
    num_clbits, registers, values = circuit
    decoder = OutcomeDecoder(num_clbits, registers)
    expected = [[reference_row(v, r.clbits) for v in values] for r in registers]
    hexes = [hex(v) for v in values]
    strings = [format(v, f"0{num_clbits}b") if num_clbits else "" for v in values]
    matrix = np.array(
        [[v >> j & 1 for j in range(num_clbits)] for v in values], dtype=np.uint8
    ).reshape(len(values), num_clbits)
    for rows in (
        decoder.hex_samples(hexes),
        decoder.int_samples(values),
        decoder.bitstring_samples(strings),
        decoder.bit_samples(matrix),
    ):
        assert [r.tolist() for r in rows] == expected
        assert all(r.dtype == np.uint8 for r in rows)
        assert [r.shape for r in rows] == [
            (len(values), packed_width(len(reg.clbits))) for reg in registers
        ]
    if num_clbits <= 64:
        as_array = decoder.int_samples(np.array(values, dtype=np.uint64))
        assert [r.tolist() for r in as_array] == expected


@PROPERTY
@given(circuits(), st.data())
def test_counts_match_the_reference(
    circuit: tuple[int, list[RegisterSpec], list[int]], data: st.DataObject
) -> None:
    num_clbits, registers, values = circuit
    decoder = OutcomeDecoder(num_clbits, registers)
    per_shot = decoder.counts_of_rows(decoder.int_samples(values))
    # Whole-circuit counts with weights, as an SDK that counted for us reports them.
    raw = Counter(values)
    weights = {v: n * data.draw(st.integers(1, 3), label="weight") for v, n in raw.items()}
    from_hex = decoder.hex_counts({hex(v): n for v, n in weights.items()})
    from_ints = decoder.int_counts(weights)
    width = num_clbits
    from_strings = decoder.bitstring_counts(
        {(format(v, f"0{width}b") if width else ""): n for v, n in weights.items()}
    )
    for register, shot_counts, hex_counts, int_counts, string_counts in zip(
        registers, per_shot, from_hex, from_ints, from_strings, strict=True
    ):
        expected = Counter(reference_bitstring(v, register.clbits) for v in values)
        assert dict(shot_counts) == dict(expected)
        weighted: Counter[str] = Counter()
        for v, n in weights.items():
            weighted[reference_bitstring(v, register.clbits)] += n
        for counts in (hex_counts, int_counts, string_counts):
            assert dict(counts) == dict(weighted)
            assert counts.total == sum(weights.values())
        # Outcomes ascending by value, counts all positive.
        for counts in (shot_counts, hex_counts):
            keys = list(counts)
            assert keys == sorted(keys, key=lambda s: int(s, 2) if s else 0)
            assert all(n > 0 for n in counts.counts.tolist())


@PROPERTY
@given(
    st.integers(1, 20),
    st.lists(st.integers(1, 3), max_size=3).map(tuple),
    st.integers(1, 8),
    st.sampled_from([(True, True), (True, False), (False, True)]),
    st.data(),
)
def test_builder_matches_the_reference(
    num_clbits: int,
    shape: tuple[int, ...],
    shots: int,
    output: tuple[bool, bool],
    data: st.DataObject,
) -> None:
    samples, counts = output
    half = num_clbits // 2
    registers = [
        RegisterSpec("lo", tuple(range(half))),
        RegisterSpec("hi", tuple(range(half, num_clbits))),
    ]
    size = int(np.prod(shape, dtype=np.int64))
    outcomes = [
        data.draw(st.lists(st.integers(0, (1 << num_clbits) - 1), min_size=shots, max_size=shots))
        for _ in range(size)
    ]
    builder = SamplerResultBuilder(
        num_clbits, registers, shape, shots, samples=samples, counts=counts
    )
    for b in data.draw(st.permutations(list(range(size))), label="binding order"):
        if samples or data.draw(st.booleans(), label="per-shot"):
            strings = [format(v, f"0{num_clbits}b") for v in outcomes[b]]
            builder.add_samples(b, builder.decoder.bitstring_samples(strings))
        else:
            builder.add_counts(b, builder.decoder.int_counts(Counter(outcomes[b])))
    result = builder.build()
    assert (result.shape, result.shots) == (shape, shots)
    for register, got in zip(registers, result.registers, strict=True):
        assert got.name == register.name and got.num_bits == len(register.clbits)
        if samples:
            assert got.samples is not None
            assert got.samples.shape == (*shape, shots, packed_width(len(register.clbits)))
            flat = got.samples.reshape(size, shots, -1).tolist()
            assert flat == [[reference_row(v, register.clbits) for v in o] for o in outcomes]
        else:
            assert got.samples is None
        if counts:
            assert [dict(c) for c in got.counts] == [
                dict(Counter(reference_bitstring(v, register.clbits) for v in o)) for o in outcomes
            ]
        else:
            assert got.counts == ()


@PROPERTY
@given(st.integers(0, 80), st.lists(st.integers(min_value=0), max_size=30))
def test_counts_round_trip_through_their_mapping(num_bits: int, raw: list[int]) -> None:
    values = [v % (1 << num_bits) if num_bits else 0 for v in raw]
    strings = [format(v, f"0{num_bits}b") if num_bits else "" for v in values]
    counts = Counts.from_dict(Counter(strings), num_bits)
    assert dict(counts) == dict(Counter(strings))
    rows = np.array(
        [list(v.to_bytes(packed_width(num_bits), "big")) for v in values], dtype=np.uint8
    ).reshape(len(values), packed_width(num_bits))
    assert dict(Counts.from_rows(rows, num_bits)) == dict(Counter(strings))
