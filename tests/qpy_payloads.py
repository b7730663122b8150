"""QPY payloads for tests: honest ones and hostile ones (shared by unit and end-to-end tests)."""

from __future__ import annotations

import io
import struct

import numpy as np
from qiskit import QuantumCircuit, qpy
from qiskit.circuit.library import PauliEvolutionGate
from qiskit.qpy import binary_io
from qiskit.quantum_info import SparsePauliOp

# CIRCUIT_HEADER_V12: name size, global phase type and size, qubits, clbits, metadata size,
# registers, instructions, variables.
CIRCUIT_HEADER = struct.Struct("!H1cHIIQIQI")
HEADER_FIELDS = (
    "name_size",
    "phase_type",
    "phase_size",
    "num_qubits",
    "num_clbits",
    "metadata_size",
    "num_registers",
    "num_instructions",
    "num_vars",
)


def dump(circuit: QuantumCircuit | list[QuantumCircuit], version: int | None = None) -> bytes:
    buffer = io.BytesIO()
    if version is None:
        qpy.dump(circuit, buffer)
    else:
        qpy.dump(circuit, buffer, version=version)
    return buffer.getvalue()


def x_on(qubits: list[int], width: int) -> QuantumCircuit:
    """X on `qubits`, then every qubit measured into c[i]."""
    circuit = QuantumCircuit(width, width)
    for qubit in qubits:
        circuit.x(qubit)
    circuit.measure(range(width), range(width))
    return circuit


def patch_header(header: bytes, field: str, value: int) -> bytes:
    """A circuit header (at the start of `header`) with one field replaced."""
    values = list(CIRCUIT_HEADER.unpack_from(header))
    values[HEADER_FIELDS.index(field)] = value
    return CIRCUIT_HEADER.pack(*values) + header[CIRCUIT_HEADER.size :]


def top_header_offset(version: int) -> int:
    """File header (19 bytes), program type key, and from version 16 an 8-byte offset table."""
    return 20 + (8 if version >= 16 else 0)


def nested_block_declaring(clbits: int, version: int = 13) -> bytes:
    """A valid one-qubit circuit whose if-block's own header is patched to declare `clbits`
    classical bits: the reader allocates for every one before reading any, and no check of the
    top-level header sees it (the compile worker's memory limit is what stops 2**26)."""
    circuit = QuantumCircuit(1, 1)
    with circuit.if_test((circuit.clbits[0], 1)):
        circuit.x(0)
    circuit.measure(0, 0)
    data = dump(circuit, version)
    block = circuit.data[0].operation.blocks[0]
    inner = io.BytesIO()
    binary_io.write_circuit(inner, block, version=version, use_rust=False)
    at = data.find(inner.getvalue())
    assert at > 0 and data.count(inner.getvalue()) == 1
    return data[:at] + patch_header(data[at:], "num_clbits", clbits)


def nested_ifs(depth: int) -> QuantumCircuit:
    """If-blocks nested `depth` deep around an X; c[0] stays 0, so nothing inside runs."""
    inner = QuantumCircuit(1, 1)
    inner.x(0)
    for _ in range(depth):
        outer = QuantumCircuit(1, 1)
        outer.if_test((outer.clbits[0], 1), inner, [0], [0])
        inner = outer
    inner.measure(0, 0)
    return inner


def heavy_evolution(qubits: int = 20, terms: int = 2600, seed: int = 0) -> bytes:
    """About 310 KB of QPY that the transpiler spent about five seconds of CPU on: one
    PauliEvolutionGate (a single operation before synthesis) of thousands of random terms,
    which the front end now counts as its synthesis (158,620 operations) and refuses at once.

    Qiskit 2.6 cannot round-trip much larger ones: at 20 qubits and 3000 terms its Python
    writer (format 13) fails on a 16-bit field, and its Rust writer (17+) writes a payload its
    own reader refuses (the gateway answers INVALID_QPY).
    """
    rng = np.random.default_rng(seed)
    labels = ["".join(rng.choice(list("IXYZ"), qubits)) for _ in range(terms)]
    circuit = QuantumCircuit(qubits, qubits)
    circuit.append(PauliEvolutionGate(SparsePauliOp(labels), time=0.1), range(qubits))
    circuit.measure(range(qubits), range(qubits))
    return dump(circuit)
