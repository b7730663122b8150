"""The packed BitArray layout every adapter produces, and the code that builds it.

A sampler PUB's result holds, per classical register, Qiskit's BitArray layout: uint8 samples of
shape (*pub_shape, shots, ceil(bits/8)), big-endian within each row (row value = sum of
bit_k * 2**k, register bit k being `clbits[k]`; padding in the first byte's high bits), and
per binding the Counts of those rows. As a bitstring, character 0 is the register's highest bit.

Adapters get their SDK's outcomes for the whole circuit, one per shot (Aer's hex strings,
integers, bitstrings, 0/1 matrices) or already counted; `OutcomeDecoder` splits them into the
registers' packed rows and `SamplerResultBuilder` assembles the PUB's result. Up to 64 clbits
(the usual case) they work on uint64 values; wider circuits go through a bit matrix. SDK-free.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import numpy.typing as npt

if TYPE_CHECKING:
    from gateway.domain.jobs import SamplerResult

__all__ = [
    "Counts",
    "Int64Array",
    "OutcomeDecoder",
    "RegisterSpec",
    "SamplerResultBuilder",
    "UInt8Array",
    "bits_from_bitstrings",
    "bits_from_ints",
    "pack_bits",
    "packed_width",
    "unpack_rows",
]

UInt8Array = npt.NDArray[np.uint8]
Int64Array = npt.NDArray[np.int64]

# The widest circuit whose outcomes fit one uint64 value.
_NARROW_BITS = 64
# Wider circuits' outcomes are unpacked to one byte per clbit only this many bytes at a time
# (whole shots): 8000 shots of a 100,000-bit circuit held 2.2 GB at once (for a result of 100 MB)
# and took 16 s.
_UNPACK_BYTES = 16 << 20

_ZERO_CHAR = ord("0")


def packed_width(num_bits: int) -> int:
    """Bytes per packed outcome row of a `num_bits`-bit register."""
    return (num_bits + 7) // 8


@dataclass(frozen=True)
class RegisterSpec:
    """A classical register: `clbits[k]` is the circuit-wide index of register bit k."""

    name: str
    clbits: tuple[int, ...]


class Counts(Mapping[str, int]):
    """One binding's outcome counts as parallel arrays.

    `outcomes` holds the distinct outcomes as packed rows (uint8, shape (k, ceil(num_bits/8)),
    big-endian within a row, as in the samples) in ascending order of value; `counts[i]` (int64,
    shape (k,)) is the number of shots with outcome i, every entry > 0. Memory and encoding are
    linear in k however wide the register: a wide register's bitstrings never exist unless the
    Mapping view ({bitstring: n}, character 0 = highest bit) is used, which is for convenience
    and tests.
    """

    __slots__ = ("_dict", "counts", "num_bits", "outcomes")

    def __init__(self, num_bits: int, outcomes: UInt8Array, counts: Int64Array) -> None:
        width = packed_width(num_bits)
        self.num_bits = num_bits
        self.counts: Int64Array = np.ascontiguousarray(counts, dtype=np.int64).reshape(-1)
        rows = np.ascontiguousarray(outcomes, dtype=np.uint8)
        # A zero-bit register's rows are empty: their number comes from the counts.
        k = rows.size // width if width else self.counts.shape[0]
        if k * width != rows.size or k != self.counts.shape[0]:
            raise ValueError(
                f"{rows.size} outcome bytes for {self.counts.shape[0]} counts of {width} bytes"
            )
        self.outcomes: UInt8Array = rows.reshape(k, width)
        self._dict: dict[str, int] | None = None

    @classmethod
    def from_rows(
        cls, rows: UInt8Array, num_bits: int, weights: Int64Array | None = None
    ) -> Counts:
        """Counts packed rows of shape (n, ceil(num_bits/8)): one per shot, or with `weights`
        one per outcome observed `weights[i]` times (rows may repeat).

        Sorting is O(n log n) in the rows and needs O(n) extra memory, whatever the width.
        """
        width = packed_width(num_bits)
        data = np.ascontiguousarray(rows, dtype=np.uint8)
        if data.ndim != 2 or data.shape[1] != width:
            raise ValueError(f"rows of shape {data.shape}; expected (n, {width})")
        n = data.shape[0]
        w = None if weights is None else np.asarray(weights, dtype=np.int64).reshape(-1)
        if w is not None and w.shape[0] != n:
            raise ValueError(f"{n} rows but {w.shape[0]} weights")
        if n == 0:
            return cls(num_bits, np.zeros((0, width), np.uint8), np.zeros(0, np.int64))
        if width == 0:  # a zero-bit register: every shot is the empty outcome
            total = n if w is None else int(w.sum())
            return cls(num_bits, np.zeros((1, 0), np.uint8), np.array([total], np.int64))
        # Rows as big-endian 64-bit words (left-padded), sorted as integers: ascending value.
        words = (width + 7) // 8
        padded = np.zeros((n, words * 8), dtype=np.uint8)
        padded[:, words * 8 - width :] = data
        keys = padded.view(">u8").reshape(n, words).astype(np.uint64)
        del padded
        if words == 1 and w is None:  # the usual case: an in-place sort of integers
            unique, totals = np.unique(keys[:, 0], return_counts=True)
            as_bytes = unique.astype(">u8").view(np.uint8).reshape(-1, 8)
            outcomes = np.ascontiguousarray(as_bytes[:, 8 - width :])
            return cls(num_bits, outcomes, totals.astype(np.int64, copy=False))
        # lexsort's last key is the primary one: the first (most significant) word.
        order = np.argsort(keys[:, 0]) if words == 1 else np.lexsort(keys.T[::-1])
        ordered = keys[order]
        first = np.ones(n, dtype=bool)
        first[1:] = np.any(ordered[1:] != ordered[:-1], axis=1)
        del ordered, keys
        starts = np.flatnonzero(first)
        totals = np.diff(np.append(starts, n)) if w is None else np.add.reduceat(w[order], starts)
        outcomes = data[order[starts]]
        return cls(num_bits, outcomes, totals.astype(np.int64, copy=False))

    @classmethod
    def from_dict(cls, counts: Mapping[str, int], num_bits: int) -> Counts:
        """From {bitstring: n} (character 0 = highest bit); for tests and small results."""
        width = packed_width(num_bits)
        items = sorted((int(key, 2) if key else 0, int(n)) for key, n in counts.items() if n)
        outcomes = np.frombuffer(
            b"".join(value.to_bytes(width, "big") for value, _ in items), dtype=np.uint8
        )
        return cls(num_bits, outcomes, np.array([n for _, n in items], dtype=np.int64))

    @property
    def total(self) -> int:
        """The number of shots counted."""
        return int(self.counts.sum())

    def _mapping(self) -> dict[str, int]:
        if self._dict is None:
            bits = self.num_bits
            self._dict = {
                (format(int.from_bytes(row.tobytes(), "big"), f"0{bits}b") if bits else ""): int(n)
                for row, n in zip(self.outcomes, self.counts, strict=True)
            }
        return self._dict

    def __getitem__(self, key: str) -> int:
        return self._mapping()[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self._mapping())

    def __len__(self) -> int:
        return int(self.counts.shape[0])

    def __repr__(self) -> str:
        return f"Counts(num_bits={self.num_bits}, distinct={len(self)}, total={self.total})"

    def __reduce__(self) -> tuple[Callable[[int, bytes, bytes], Counts], tuple[int, bytes, bytes]]:
        # Pickled as bytes, not arrays: a worker's result holds one Counts per binding and
        # register, and unpickling 100,000 of them as arrays took ~1 s in numpy's C code, which
        # kept the interpreter lock from the event loop for ~0.2 s at a time, even in a thread.
        return (_counts_from_bytes, (self.num_bits, self.outcomes.tobytes(), self.counts.tobytes()))


def _counts_from_bytes(num_bits: int, outcomes: bytes, counts: bytes) -> Counts:
    """A pickled Counts (Counts.__reduce__): its arrays read-only views of the bytes."""
    restored = Counts.__new__(Counts)
    restored.num_bits = num_bits
    restored.counts = np.frombuffer(counts, dtype=np.int64)
    width = packed_width(num_bits)
    k = restored.counts.shape[0]
    restored.outcomes = np.frombuffer(outcomes, dtype=np.uint8).reshape(k, width)
    restored._dict = None
    return restored


# ------------------------------------------------------------------ outcomes as bit matrices


def bits_from_ints(values: Sequence[int], num_bits: int) -> UInt8Array:
    """Integer outcomes (bit j = clbit j, any size) as a (len(values), num_bits) 0/1 array;
    column j is clbit j. Bits at or above `num_bits` are dropped."""
    nbytes = max(1, packed_width(num_bits))
    mask = (1 << (nbytes * 8)) - 1
    data = b"".join([(int(v) & mask).to_bytes(nbytes, "little") for v in values])
    rows = np.frombuffer(data, dtype=np.uint8).reshape(len(values), nbytes)
    bits: UInt8Array = np.unpackbits(rows, axis=1, bitorder="little")[:, :num_bits]
    return bits


def bits_from_bitstrings(values: Sequence[str], num_bits: int) -> UInt8Array:
    """Bitstring outcomes (character 0 = the highest clbit; spaces between registers, as in
    Qiskit's counts keys, are ignored) as a (len(values), num_bits) 0/1 array; column j is
    clbit j. Shorter strings are left-padded with 0."""
    count = len(values)
    if count == 0 or num_bits == 0:
        return np.zeros((count, num_bits), dtype=np.uint8)
    joined = "".join([v.replace(" ", "").rjust(num_bits, "0")[-num_bits:] for v in values])
    chars = np.frombuffer(joined.encode("ascii"), dtype=np.uint8).reshape(count, num_bits)
    if np.any((chars != _ZERO_CHAR) & (chars != _ZERO_CHAR + 1)):
        raise ValueError("bitstrings may hold only 0, 1 and spaces")
    bits: UInt8Array = (chars[:, ::-1] - _ZERO_CHAR).astype(np.uint8, copy=False)
    return bits


def unpack_rows(packed: UInt8Array, num_bits: int) -> UInt8Array:
    """Packed big-endian rows (pack_bits' and Qiskit's BitArray layout) as a
    (rows, num_bits) 0/1 matrix whose column j is bit j."""
    if num_bits == 0:
        return np.zeros((packed.shape[0], 0), dtype=np.uint8)
    bits: UInt8Array = np.unpackbits(packed, axis=1)[:, -num_bits:][:, ::-1]
    return bits


def pack_bits(rows: UInt8Array) -> UInt8Array:
    """Packs big-endian 0/1 rows (column 0 = the highest bit) into bytes; padding goes into
    the first byte's high bits."""
    pad = (-rows.shape[1]) % 8
    if pad:
        padding = np.zeros((rows.shape[0], pad), dtype=np.uint8)
        packed: UInt8Array = np.packbits(np.hstack([padding, rows]), axis=1)
    else:
        packed = np.packbits(rows, axis=1)
    return packed


# ----------------------------------------------------------------------- splitting registers


class OutcomeDecoder:
    """Splits whole-circuit outcomes into each register's packed rows and counts.

    Every `*_samples` method takes one outcome per shot and returns, per register, packed rows
    of shape (shots, ceil(bits/8)); every `counts_*` method takes distinct outcomes with their
    numbers (linear in the distinct outcomes, not the shots) and returns Counts per register.

    Args:
        num_clbits: Classical bits of the whole circuit.
        registers: Per register, `clbits[k]` = the circuit-wide index of register bit k.
    """

    def __init__(self, num_clbits: int, registers: Sequence[RegisterSpec]) -> None:
        for register in registers:
            if any(not 0 <= c < num_clbits for c in register.clbits):
                raise ValueError(f"register {register.name} names a clbit outside the circuit")
        self.num_clbits = num_clbits
        self.registers = tuple(registers)
        self.widths = tuple(len(r.clbits) for r in registers)
        self.nbytes = tuple(packed_width(w) for w in self.widths)
        self.narrow = num_clbits <= _NARROW_BITS
        # Register k's bits as (start, mask) when they are consecutive clbits, else None.
        self._slices: tuple[tuple[int, int] | None, ...] = tuple(
            (r.clbits[0], (1 << len(r.clbits)) - 1)
            if r.clbits and r.clbits == tuple(range(r.clbits[0], r.clbits[0] + len(r.clbits)))
            else None
            for r in registers
        )
        # Register k's columns of a bit matrix, highest bit first (for pack_bits).
        self._columns = tuple(np.array(r.clbits[::-1], dtype=np.intp) for r in registers)

    # -------------------------------------------------------------------- one row per shot

    def hex_samples(self, memory: Sequence[str]) -> list[UInt8Array]:
        """From hex outcomes ("0x..", the integer whose bit j is clbit j: Aer's memory)."""
        if not self.narrow:
            return self._wide([int(h, 16) for h in memory])
        wholes = np.fromiter(map(int, memory, itertools.repeat(16)), np.uint64, len(memory))
        return self._split(wholes)

    def int_samples(self, values: Sequence[int] | npt.NDArray[np.integer]) -> list[UInt8Array]:
        """From integer outcomes (bit j = clbit j)."""
        if not self.narrow:
            return self._wide([int(v) for v in values])
        if isinstance(values, np.ndarray):
            return self._split(values.astype(np.uint64).reshape(-1))
        return self._split(np.fromiter(values, np.uint64, len(values)))

    def bitstring_samples(self, values: Sequence[str]) -> list[UInt8Array]:
        """From bitstrings (character 0 = the highest clbit)."""
        return self.matrix_samples(
            len(values), lambda a, b: bits_from_bitstrings(values[a:b], self.num_clbits)
        )

    def bit_samples(self, bits: npt.ArrayLike) -> list[UInt8Array]:
        """From a (shots, num_clbits) 0/1 matrix whose column j is clbit j."""
        matrix = np.asarray(bits, dtype=np.uint8)
        if matrix.ndim != 2 or matrix.shape[1] != self.num_clbits:
            raise ValueError(f"bits of shape {matrix.shape}; expected (n, {self.num_clbits})")
        return self.matrix_samples(matrix.shape[0], lambda a, b: matrix[a:b])

    def _wide(self, wholes: Sequence[int]) -> list[UInt8Array]:
        """`_split` for outcomes past 64 bits, as Python ints: a register of consecutive clbits
        takes its bytes straight from each int (0.13 s for 8000 shots of 100,000 bits, where
        unpacking every bit took 16 s); any other is gathered from bit matrices of a bounded
        number of shots."""
        out: list[UInt8Array | None] = [None] * len(self.registers)
        scattered = []
        for r, sl in enumerate(self._slices):
            if sl is None:
                scattered.append(r)
                continue
            start, mask = sl
            width = self.nbytes[r]
            data = b"".join([((v >> start) & mask).to_bytes(width, "big") for v in wholes])
            out[r] = np.frombuffer(data, dtype=np.uint8).reshape(len(wholes), width).copy()
        if scattered:
            gathered = self.matrix_samples(
                len(wholes),
                lambda a, b: bits_from_ints(wholes[a:b], self.num_clbits),
                only=scattered,
            )
            for r, rows in zip(scattered, gathered, strict=True):
                out[r] = rows
        return [rows for rows in out if rows is not None]

    def matrix_samples(
        self,
        shots: int,
        unpack: Callable[[int, int], UInt8Array],
        only: Sequence[int] | None = None,
    ) -> list[UInt8Array]:
        """Per register (those in `only`, or all), packed rows of `shots` shots, from
        `unpack(a, b)`: shots a..b as a (b - a, num_clbits) 0/1 matrix whose column j is
        clbit j, asked for a bounded number of shots at a time (so a wide circuit's shots
        are never all unpacked at once)."""
        registers = range(len(self.registers)) if only is None else only
        step = max(1, _UNPACK_BYTES // max(1, self.num_clbits))
        parts: list[list[UInt8Array]] = [[] for _ in registers]
        for a in range(0, shots, step):
            matrix = unpack(a, min(shots, a + step))
            for part, r in zip(parts, registers, strict=True):
                part.append(pack_bits(matrix[:, self._columns[r]]))
        return [
            np.concatenate(part) if part else np.zeros((0, self.nbytes[r]), dtype=np.uint8)
            for part, r in zip(parts, registers, strict=True)
        ]

    def _split(self, wholes: npt.NDArray[np.uint64]) -> list[UInt8Array]:
        count = wholes.shape[0]
        out: list[UInt8Array] = []
        for r, register in enumerate(self.registers):
            sl = self._slices[r]
            if sl is not None:
                values = (wholes >> np.uint64(sl[0])) & np.uint64(sl[1])
            else:
                values = np.zeros(count, dtype=np.uint64)
                for k, clbit in enumerate(register.clbits):
                    values |= ((wholes >> np.uint64(clbit)) & np.uint64(1)) << np.uint64(k)
            # Big-endian bytes of the value; keep the register's low-order bytes.
            as_bytes = values.astype(">u8").view(np.uint8).reshape(count, 8)
            out.append(np.ascontiguousarray(as_bytes[:, 8 - self.nbytes[r] :]))
        return out

    # ---------------------------------------------------------------- outcomes already counted

    def counts_of_rows(self, rows: Sequence[UInt8Array]) -> list[Counts]:
        """Counts of per-register packed rows (as the `*_samples` methods return them)."""
        return [Counts.from_rows(r, w) for r, w in zip(rows, self.widths, strict=True)]

    def hex_counts(self, raw: Mapping[str, int]) -> list[Counts]:
        """From {hex outcome: shots} (Aer's counts)."""
        return self._weighted(self.hex_samples(list(raw)), raw.values())

    def int_counts(self, raw: Mapping[int, int]) -> list[Counts]:
        """From {integer outcome (bit j = clbit j): shots}."""
        return self._weighted(self.int_samples(list(raw)), raw.values())

    def bitstring_counts(self, raw: Mapping[str, int]) -> list[Counts]:
        """From {bitstring (character 0 = the highest clbit): shots}."""
        return self._weighted(self.bitstring_samples(list(raw)), raw.values())

    def _weighted(self, rows: list[UInt8Array], numbers: Iterable[int]) -> list[Counts]:
        weights = np.fromiter(numbers, dtype=np.int64)
        return [Counts.from_rows(r, w, weights) for r, w in zip(rows, self.widths, strict=True)]


class SamplerResultBuilder:
    """Assembles a sampler PUB's result, binding by binding (row-major over `shape`).

    Give each binding either its per-shot rows (`add_samples`: the samples are kept if the job
    asked for them, and counted if it asked for counts) or, when the SDK only counted and the
    job asked for counts only, its counts (`add_counts`).

    Args:
        num_clbits: Classical bits of the whole circuit.
        registers: The registers, in the order the result lists them.
        shape: The PUB's shape (its bindings).
        shots: Shots per binding.
        samples: Whether the job asked for samples.
        counts: Whether the job asked for counts.
    """

    def __init__(
        self,
        num_clbits: int,
        registers: Sequence[RegisterSpec],
        shape: tuple[int, ...],
        shots: int,
        *,
        samples: bool,
        counts: bool,
    ) -> None:
        self.decoder = OutcomeDecoder(num_clbits, registers)
        self.shape = shape
        self.shots = shots
        self.size = int(np.prod(shape, dtype=np.int64))
        self._want_samples = samples
        self._want_counts = counts
        self._samples: list[UInt8Array] = (
            [np.empty((self.size, shots, n), dtype=np.uint8) for n in self.decoder.nbytes]
            if samples
            else []
        )
        self._counts: list[list[Counts | None]] = [
            [None] * self.size for _ in self.decoder.registers
        ]
        self._filled = np.zeros(self.size, dtype=bool)

    def add_samples(self, binding: int, rows: Sequence[UInt8Array]) -> None:
        """One binding's per-register packed rows, each of shape (shots, ceil(bits/8))."""
        self._check(binding, len(rows))
        for r, packed in enumerate(rows):
            if packed.shape != (self.shots, self.decoder.nbytes[r]):
                raise ValueError(
                    f"register {r}: rows of shape {packed.shape}; expected "
                    f"({self.shots}, {self.decoder.nbytes[r]})"
                )
            if self._want_samples:
                self._samples[r][binding] = packed
            if self._want_counts:
                # Counted from the stored copy: contiguous, and no second decode.
                source = self._samples[r][binding] if self._want_samples else packed
                self._counts[r][binding] = Counts.from_rows(source, self.decoder.widths[r])
        self._filled[binding] = True

    def add_counts(self, binding: int, counts: Sequence[Counts]) -> None:
        """One binding's per-register counts, for a job that asked for counts only."""
        if self._want_samples:
            raise ValueError("the job asked for samples: add them with add_samples")
        self._check(binding, len(counts))
        for r, register_counts in enumerate(counts):
            if register_counts.num_bits != self.decoder.widths[r]:
                raise ValueError(f"register {r}: counts of {register_counts.num_bits} bits")
            if register_counts.total != self.shots:
                raise ValueError(f"register {r}: {register_counts.total} shots counted")
            self._counts[r][binding] = register_counts
        self._filled[binding] = True

    def _check(self, binding: int, registers: int) -> None:
        if not 0 <= binding < self.size:
            raise IndexError(f"binding {binding} outside a PUB of {self.size}")
        if registers != len(self.decoder.registers):
            raise ValueError(f"{registers} registers; expected {len(self.decoder.registers)}")

    def build(self) -> SamplerResult:
        """The PUB's result; every binding must have been added."""
        # Imported here: gateway.domain.jobs re-exports Counts from this module.
        from gateway.domain.jobs import RegisterResult, SamplerResult

        if not self._filled.all():
            missing = int(np.flatnonzero(~self._filled)[0])
            raise ValueError(f"binding {missing} has no outcomes")
        registers = tuple(
            RegisterResult(
                name=register.name,
                num_bits=self.decoder.widths[r],
                samples=(
                    self._samples[r].reshape((*self.shape, self.shots, self.decoder.nbytes[r]))
                    if self._want_samples
                    else None
                ),
                counts=(
                    tuple(c for c in self._counts[r] if c is not None) if self._want_counts else ()
                ),
            )
            for r, register in enumerate(self.decoder.registers)
        )
        return SamplerResult(shape=self.shape, shots=self.shots, registers=registers)
