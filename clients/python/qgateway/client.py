"""Client and AsyncClient: typed, friendly access to a qgateway server.

    with Client("127.0.0.1:50051") as client:
        counts = client.run(qasm, backend="aer", shots=1024).counts()

Every RPC error is raised as a typed :class:`qgateway.errors.QGatewayError`. UNAVAILABLE, which
the gateway answers only before it accepts anything, is retried for SubmitJob, Run and the
read-only calls, with the same request_id on every attempt so a retry can never start a second
job; nothing else is retried.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import json
import numbers
import os
import random
import re
import sys
import time
import uuid
from collections.abc import (
    AsyncGenerator,
    AsyncIterator,
    Generator,
    Iterable,
    Iterator,
    Mapping,
    Sequence,
)
from dataclasses import dataclass, replace
from pathlib import Path
from types import TracebackType
from typing import Any, TypeAlias, TypeGuard, cast

# grpc ships no type information; the unused-ignore code keeps these lines clean once stubs exist.
import grpc  # type: ignore[import-untyped, unused-ignore]
import grpc.aio  # type: ignore[import-untyped, unused-ignore]

from qgateway import telemetry
from qgateway._calls import JobStubs
from qgateway._calls import deadline as _deadline
from qgateway.errors import (
    ERROR_DOMAIN,
    DeadlineExceededError,
    FailedPreconditionError,
    JobFailedError,
    NotFoundError,
    QGatewayError,
    UnavailableError,
    from_rpc_error,
)
from qgateway.errors import (
    CancelledError as CallCancelledError,
)
from qgateway.results import (
    Backend,
    CostEstimate,
    EstimatorPubResult,
    Job,
    JobResult,
    JobState,
    ResultAssembler,
)
from qgateway.sessions import AsyncSessionCalls, SessionCalls, session_name
from qgateway.tenants import AsyncTenantCalls, TenantCalls
from qgateway.v1 import (
    backend_pb2,
    backend_service_pb2,
    backend_service_pb2_grpc,
    circuit_pb2,
    job_pb2,
    job_service_pb2,
    job_service_pb2_grpc,
)

__all__ = [
    "DEFAULT_RETRY",
    "DEFAULT_TARGET",
    "AsyncClient",
    "BackendViewLike",
    "CircuitLike",
    "Client",
    "ObservableLike",
    "ObservablesLike",
    "ParameterNames",
    "ParameterValues",
    "PubLike",
    "RetryPolicy",
    "SamplerOutputLike",
    "bindings_array",
    "circuit_from_source",
    "estimator_pub",
    "observables_from",
    "sampler_pub",
]

DEFAULT_TARGET = "127.0.0.1:50051"

#: Nested lists/tuples of numbers of shape (*sweep, n_params), a flat list for one binding, a
#: single number for one parameter, or anything with a `tolist()` method (a numpy array); or
#: Qiskit's keyed forms, a {Parameter or name: values} dict or a BindingsArray.
ParameterValues: TypeAlias = float | Sequence[Any] | Mapping[Any, Any] | Any
#: Names of the binding columns: strings, or Qiskit Parameter objects (anything with a string
#: `name`: `circuit.parameters`, a ParameterVector), named as the gateway names a QPY circuit's.
ParameterNames: TypeAlias = Sequence[Any]
#: A circuit: OpenQASM 3 or 2 text, QPY bytes, a Circuit message, or a qiskit QuantumCircuit
#: (sent as QPY; qiskit stays an optional dependency of the client).
CircuitLike: TypeAlias = str | bytes | circuit_pb2.Circuit | Any
#: One observable: a Pauli string, a (pauli, coefficient) term, a list of those, a
#: {pauli: coefficient} mapping, an Observable message, or anything with `to_list()`
#: returning (pauli, coefficient) pairs (Qiskit's SparsePauliOp).
ObservableLike: TypeAlias = (
    str | tuple[str, float] | Sequence[str | tuple[str, float]] | Mapping[str, float] | Any
)
#: One observable, or a list of them.
# One observable, or an array of them as nested lists (Qiskit's ObservablesArray forms).
ObservablesLike: TypeAlias = ObservableLike | Sequence["ObservablesLike"]


@dataclass(frozen=True)
class RetryPolicy:
    """How UNAVAILABLE answers (and Runs and watches cut by a gateway's shutdown) are retried:
    exponential backoff with jitter, within the call's timeout.

    Attributes:
        initial_backoff: Delay after the first failed attempt, in seconds.
        max_backoff: Largest delay between attempts, in seconds.
        multiplier: Growth of the delay per attempt.
        max_attempts: Attempts in all, the first included; 1 disables retries. The default
            waits ~21 s in all between its attempts: a gateway restarting (a few seconds to
            start, more on a loaded machine) is waited out, not raised.
        jitter: Relative spread of each delay (0.2: +-20%), so clients that failed together do
            not come back together. A delay the gateway asks for (RetryInfo) is only
            lengthened, by up to this share.
        max_retry_delay: The longest delay asked by the gateway that is waited out; past it
            the UNAVAILABLE error is raised at once (its `retry_delay` says how long).
    """

    initial_backoff: float = 0.1
    max_backoff: float = 5.0
    multiplier: float = 2.0
    max_attempts: int = 10
    jitter: float = 0.2
    max_retry_delay: float = 60.0

    def __post_init__(self) -> None:
        if self.max_attempts < 1:
            raise ValueError("max_attempts must be at least 1")
        if self.initial_backoff < 0 or self.max_backoff < self.initial_backoff:
            raise ValueError("need 0 <= initial_backoff <= max_backoff")
        if self.multiplier < 1:
            raise ValueError("multiplier must be at least 1")
        if not 0 <= self.jitter <= 1:
            raise ValueError("jitter must be between 0 and 1")
        if not self.max_retry_delay >= 0:
            raise ValueError("max_retry_delay must not be negative")

    def backoff(self, attempt: int) -> float:
        """Delay after failed attempt number `attempt` (1 for the first), jitter included."""
        base = min(self.max_backoff, self.initial_backoff * self.multiplier ** (attempt - 1))
        spread = base * self.jitter
        return max(0.0, min(self.max_backoff, base - spread + 2 * spread * random.random()))


DEFAULT_RETRY = RetryPolicy()

# Indirections so tests can observe retries without waiting.
_sleep = time.sleep
_async_sleep = asyncio.sleep


def _pem(value: bytes | str | os.PathLike[str] | None) -> bytes | None:
    if value is None or isinstance(value, bytes):
        return value
    return Path(value).read_bytes()


def tls_credentials(
    root_ca: bytes | str | os.PathLike[str] | None = None,
    *,
    cert: bytes | str | os.PathLike[str] | None = None,
    key: bytes | str | os.PathLike[str] | None = None,
) -> grpc.ChannelCredentials:
    """Channel credentials for a gateway with TLS (and, with `cert` and `key`, mTLS).

    Args:
        root_ca: PEM bytes or a file of the CA that signed the gateway's certificate; None:
            the system's roots.
        cert: The client's certificate chain (PEM bytes or a file), for mTLS.
        key: Its private key (PEM bytes or a file).

    Returns:
        Credentials for `Client(target, credentials=...)` or `AsyncClient`.
    """
    if (cert is None) != (key is None):
        raise ValueError("a client certificate needs its key, and a key its certificate")
    return grpc.ssl_channel_credentials(
        root_certificates=_pem(root_ca), private_key=_pem(key), certificate_chain=_pem(cert)
    )


def _remaining(deadline: float | None) -> float | None:
    return None if deadline is None else max(0.0, deadline - time.monotonic())


def _draining(error: QGatewayError) -> bool:
    """A gateway shutting down: ABORTED GATEWAY_DRAINING, a Run or WatchJob cut by it, whose
    job is safe, or UNAVAILABLE DRAINING, a call it refused meanwhile (nothing accepted); it
    asks for the call to be repeated (a replica, or the restarted gateway, answers)."""
    return (error.code, error.reason) in (
        (grpc.StatusCode.ABORTED, "GATEWAY_DRAINING"),
        (grpc.StatusCode.UNAVAILABLE, "DRAINING"),
    )


def _attempts_spent(error: QGatewayError) -> int:
    """A draining gateway's answers spend no attempt: its RetryInfo paces them and the call's
    deadline bounds them (the grace period can outlast the attempts' whole back-off: its
    running jobs may take all of it, and callers gave up while it still drained)."""
    return 0 if _draining(error) else 1


def _resume_delay(
    policy: RetryPolicy, last: job_pb2.Job | None, attempt: int, deadline: float | None, name: str
) -> float | None:
    """After a WatchJob stream ended with OK: None when it had shown the final state (or a
    state this client does not know, a newer gateway's), else the delay before it is resumed
    (a proxy closing streams cleanly; the gateway never ends one early). Raises
    UnavailableError when the retries are spent."""
    if _shown_final(last):
        return None
    ended = _watch_ended(name)
    delay = _attempt_delay(policy, ended, attempt, deadline)
    if delay is None:
        raise ended
    return delay


def _shown_final(last: job_pb2.Job | None) -> bool:
    """Whether a watch has shown the job's final state (or a state this client does not know,
    a newer gateway's): nothing more to follow, however its stream then ends."""
    if last is None:
        return False
    state = JobState.from_proto(last.state)
    return state.is_final or state is JobState.UNSPECIFIED


def _watch_ended(name: str) -> UnavailableError:
    return UnavailableError(f"the watch of {name} ended before the job's final state")


def _retry_delay(
    policy: RetryPolicy, error: QGatewayError, attempt: int, deadline: float | None
) -> float | None:
    """Seconds to wait before failed attempt number `attempt` is repeated (`_attempts_spent`
    counts them), or None to give up and raise `error`. UNAVAILABLE: the gateway did nothing
    (or, for SubmitJob and Run, the same request_id finds what it did); GATEWAY_DRAINING; a
    CANCELLED the gateway's stop sent."""
    if _draining(error):
        return _attempt_delay(policy, error, max(attempt, 1), deadline)
    if _cancelled_by_server(error):
        # A call that reached the gateway as its drain ended (gRPC's server stop cancels it):
        # as repeatable as UNAVAILABLE, which the same moment gives a call a little later.
        return _attempt_delay(policy, error, attempt, deadline)
    if error.code != grpc.StatusCode.UNAVAILABLE or _untrusted(error):
        return None
    return _attempt_delay(policy, error, attempt, deadline)


# gRPC's own words for a call cancelled on this side (the application, garbage collection, a
# channel closed under it): nothing to repeat.
_LOCAL_CANCELS = frozenset(
    {"Locally cancelled by application!", "Cancelled upon garbage collection!", "Channel closed!"}
)


def _cancelled_by_server(error: QGatewayError) -> bool:
    return error.code == grpc.StatusCode.CANCELLED and error.message not in _LOCAL_CANCELS


def _untrusted(error: QGatewayError) -> bool:
    """The connection failed because one side refused the other's certificate: a wrong CA or
    client certificate, which ten more attempts over twenty seconds cannot fix."""
    return "CERTIFICATE_VERIFY_FAILED" in error.message


def _attempt_delay(
    policy: RetryPolicy, error: QGatewayError, attempt: int, deadline: float | None
) -> float | None:
    """As `_retry_delay`, for an `error` the caller already judged worth another attempt."""
    if attempt >= policy.max_attempts:
        return None
    if error.retry_delay is None:
        delay = policy.backoff(attempt)
    elif error.retry_delay > policy.max_retry_delay:
        return None  # not slept through silently: the error says how long the gateway asked
    else:
        # The gateway's RetryInfo (breaker open, draining) knows better than our backoff curve:
        # waited at least that long, spread upwards so clients refused together do not all
        # come back at the same instant.
        delay = max(0.0, error.retry_delay) * (1 + policy.jitter * random.random())
    remaining = _remaining(deadline)
    if remaining is not None and delay >= remaining:
        return None  # the next attempt could not finish in time: UNAVAILABLE says more
    return delay


# --- Requests ---------------------------------------------------------------------------------


def _is_qasm2(source: str) -> bool:
    """Whether the first statement, after blanks and comments, is an OPENQASM 2 header."""
    i, n = 0, len(source)
    if source.startswith("\ufeff"):
        i = 1
    # A hand-written scan, not a regex: nested quantifiers over whitespace and comments can
    # backtrack badly on adversarial input.
    while i < n:
        if source[i].isspace():
            i += 1
        elif source.startswith("//", i):
            end = source.find("\n", i)
            i = n if end < 0 else end + 1
        elif source.startswith("/*", i):
            end = source.find("*/", i + 2)
            i = n if end < 0 else end + 2
        else:
            break
    return re.match(r"OPENQASM\s+2(?![0-9])", source[i : i + 64]) is not None


def _qiskit_circuit_qpy(circuit: object) -> bytes | None:
    """QPY bytes of a qiskit QuantumCircuit, or None for anything else. qiskit is an optional
    dependency: a program that never imported it holds no QuantumCircuit, so it is imported
    only once it is loaded, and the client runs without it."""
    if sys.modules.get("qiskit") is None:
        # Not loaded, or blocked (`sys.modules["qiskit"] = None`): importing it would raise.
        return None
    from qiskit import QuantumCircuit, qpy

    if not isinstance(circuit, QuantumCircuit):
        return None
    buffer = io.BytesIO()
    # The gateway names a QPY circuit's parameters as Qiskit does (ParameterVector elements
    # "x[0]") and binds unnamed columns in `circuit.parameters` order, as Qiskit's primitives.
    qpy.dump(circuit, buffer, metadata_serializer=_MetadataEncoder)
    return buffer.getvalue()


class _MetadataEncoder(json.JSONEncoder):
    """A circuit's metadata as QPY writes it, whatever it holds: Qiskit's primitives run a
    circuit whose metadata JSON cannot write (np.int64, an array), and the gateway never reads
    it, so numpy's values are written as numbers and anything else as its repr."""

    def default(self, o: Any) -> Any:
        return o.tolist() if hasattr(o, "tolist") else repr(o)


def circuit_from_source(circuit: CircuitLike) -> circuit_pb2.Circuit:
    """A Circuit message from OpenQASM text (OpenQASM 2 when it says so, else OpenQASM 3), QPY
    bytes (qiskit.qpy.dump of one circuit) or a qiskit QuantumCircuit (sent as QPY).

    Args:
        circuit: Source text, QPY bytes, a QuantumCircuit, or a ready Circuit message
            (returned as is).
    """
    if isinstance(circuit, circuit_pb2.Circuit):
        return circuit
    if isinstance(circuit, bytes | bytearray | memoryview):
        return circuit_pb2.Circuit(qpy=bytes(circuit))
    qpy = _qiskit_circuit_qpy(circuit)
    if qpy is not None:
        return circuit_pb2.Circuit(qpy=qpy)
    if not isinstance(circuit, str):
        raise TypeError(
            "circuit must be OpenQASM text, QPY bytes, a qiskit QuantumCircuit or a Circuit "
            f"message, not {type(circuit).__name__}"
        )
    if _is_qasm2(circuit):
        return circuit_pb2.Circuit(qasm2=circuit)
    return circuit_pb2.Circuit(qasm3=circuit)


def _is_number(value: object) -> bool:
    # numbers.Real takes numpy's scalars too (np.float32, np.int64: not float/int subclasses),
    # as found in lists built from an array's elements.
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


def _is_sequence(value: object) -> TypeGuard[Sequence[Any]]:
    return isinstance(value, Sequence) and not isinstance(value, str | bytes | bytearray)


def bindings_array(
    parameter_values: ParameterValues | None, parameters: ParameterNames | None = None
) -> circuit_pb2.BindingsArray | None:
    """A BindingsArray from nested sequences of numbers.

    Args:
        parameter_values: Shape (*sweep, n_params); a flat list is one binding, a number is one
            binding of one parameter. Objects with `tolist()` (numpy arrays) are accepted. Or
            Qiskit's keyed form, which names the columns itself: a {Parameter or name: values}
            dict (a tuple of them or a ParameterVector as one key, values of shape
            (*sweep, len(key))) or a qiskit BindingsArray.
        parameters: Names of the columns, or Qiskit Parameter objects (`circuit.parameters`,
            a ParameterVector); None for the circuit's parameters in Qiskit's order.

    Returns:
        The message, or None when neither values nor names were given.

    Raises:
        ValueError: For ragged nesting, a names/columns mismatch, or an array of no bindings
            (a sweep dimension of 0).
        TypeError: For values that are not numbers.
    """
    if parameter_values is None:
        if parameters:
            raise ValueError("parameters were named but no parameter_values given")
        return None
    keyed = _keyed_bindings(parameter_values)
    if keyed is not None:
        if parameters:
            raise ValueError(
                "parameters were named twice: by the keys of parameter_values and by parameters"
            )
        return _bindings_from_keys(*keyed)
    values: Any = parameter_values
    if hasattr(values, "tolist"):
        array_shape = tuple(getattr(values, "shape", ()))
        if 0 in array_shape[:-1]:
            # tolist() drops the shape of an empty sweep: [] read as "no parameters", and the
            # gateway answered UNBOUND_PARAMETERS for a circuit that has them.
            raise ValueError(f"parameter_values of shape {array_shape} hold no bindings to run")
        values = values.tolist()
    if _is_number(values):
        values = [values]
    if not _is_sequence(values):
        raise TypeError("parameter_values must be a number or nested lists of numbers")
    dims, flat = _nested(values)
    shape, n_params = dims[:-1], dims[-1]
    names = _parameter_names(parameters)
    if names and len(names) != n_params:
        raise ValueError(f"{len(names)} parameter names for {n_params} values per binding")
    return circuit_pb2.BindingsArray(parameters=names, shape=shape, values=flat)


def _keyed_bindings(values: object) -> tuple[Mapping[Any, Any], tuple[int, ...] | None] | None:
    """The {key: values} mapping of a {Parameter or name: values} dict, or of a qiskit
    BindingsArray (duck-typed: a `data` mapping and a `shape`) with its shape; None for plain
    values."""
    if isinstance(values, Mapping):
        return values, None
    data, shape = getattr(values, "data", None), getattr(values, "shape", None)
    if isinstance(data, Mapping) and hasattr(values, "num_parameters") and shape is not None:
        return data, tuple(int(n) for n in shape)
    return None


def _nested(value: Any) -> tuple[tuple[int, ...], list[float]]:
    """The shape and row-major numbers of a number, nested sequences or an array."""
    if hasattr(value, "tolist"):
        value = value.tolist()
    dims: list[int] = []
    probe: Any = value
    while _is_sequence(probe):
        dims.append(len(probe))
        if not probe:
            break
        probe = probe[0]
    flat: list[float] = []

    def walk(node: Any, level: int) -> None:
        if level == len(dims):
            if not _is_number(node):
                raise TypeError(f"parameter value {node!r} is not a number")
            flat.append(float(node))
            return
        if not _is_sequence(node) or len(node) != dims[level]:
            raise ValueError(f"parameter_values are ragged: expected shape {tuple(dims)}")
        for item in node:
            walk(item, level + 1)

    walk(value, 0)
    return tuple(dims), flat


def _bindings_from_keys(
    data: Mapping[Any, Any], shape: tuple[int, ...] | None
) -> circuit_pb2.BindingsArray | None:
    """The columns and values the wire takes from Qiskit's keyed form: each key a Parameter or
    name (values of shape (*shape,) or (*shape, 1)) or a tuple of them, a ParameterVector
    included (values of shape (*shape, len(key))); every key shares one shape."""
    keys: list[list[str]] = []
    arrays: list[tuple[tuple[int, ...], list[float]]] = []
    for key, value in data.items():
        # A ParameterVector (or tuple) names several columns; a Parameter or a string one.
        many = not isinstance(key, str) and hasattr(key, "__iter__")
        keys.append(_parameter_names(list(key) if many else [key]))
        arrays.append(_nested(value))
    # Each key's candidate sweep shapes: its values without the parameters' axis, or, for one
    # parameter, all of them (one number per binding); the shape all keys agree on wins,
    # the parameters' axis first, as qiskit's BindingsArray reads {a: [[1], [2]]} as shape (2,).
    options: list[list[tuple[int, ...]]] = []
    for names, (dims, _) in zip(keys, arrays, strict=True):
        ways = [dims[:-1]] if dims and dims[-1] == len(names) else []
        if len(names) == 1:
            ways.append(dims)
        if not ways:
            raise ValueError(
                f"values of shape {dims} for {len(names)} parameters {names}: the last axis "
                "must hold one value per parameter"
            )
        options.append(ways)
    if not options:
        agreed = [shape or ()]  # a BindingsArray of no parameters: its shape alone
    else:
        agreed = [way for way in options[0] if all(way in ways for ways in options[1:])]
        if shape is not None:
            agreed = [way for way in agreed if way == shape]
    if not agreed:
        raise ValueError(
            "the parameter values of every key need one sweep shape: got "
            + ", ".join(f"{names} {dims}" for names, (dims, _) in zip(keys, arrays, strict=True))
        )
    sweep = agreed[0]
    count = 1
    for n in sweep:
        count *= n
    if count == 0:
        raise ValueError(f"parameter values of shape {sweep} hold no bindings to run")
    if not keys and not sweep:
        return None  # no parameters, one binding: as if no values were given
    flat: list[float] = []
    for i in range(count):
        for names, (_, numbers_) in zip(keys, arrays, strict=True):
            flat.extend(numbers_[i * len(names) : (i + 1) * len(names)])
    columns = [name for names in keys for name in names]
    return circuit_pb2.BindingsArray(parameters=columns, shape=sweep, values=flat)


def _parameter_names(parameters: ParameterNames | None) -> list[str]:
    """Column names from strings or Qiskit Parameter objects (their `name`, "x[0]" for a
    ParameterVector's element: the name the gateway gives a QPY circuit's parameter)."""
    if parameters is None:
        return []
    if isinstance(parameters, str | bytes):
        # A string is a sequence of letters: "theta" named five columns "t", "h", "e", ...
        raise TypeError(f"parameters must be a list of parameter names, not {parameters!r}")
    names: list[str] = []
    for parameter in parameters:
        name = parameter if isinstance(parameter, str) else getattr(parameter, "name", None)
        if not isinstance(name, str):
            # Before, protobuf's "bad argument type for built-in operation" said no more.
            raise TypeError(f"parameter {parameter!r} is neither a name nor a Qiskit Parameter")
        names.append(name)
    return names


def _is_term(value: object) -> bool:
    return (
        isinstance(value, tuple)
        and len(value) == 2
        and isinstance(value[0], str)
        and _is_number_or_complex(value[1])
    ) or _is_sparse_term(value)


def _is_sparse_term(value: object) -> bool:
    # (paulis, qubits, coefficient), as in SparsePauliOp.from_sparse_list.
    return (
        isinstance(value, tuple)
        and len(value) == 3
        and isinstance(value[0], str)
        and _is_sequence(value[1])
        and _is_number_or_complex(value[2])
    )


def _is_number_or_complex(value: object) -> bool:
    return isinstance(value, numbers.Complex) and not isinstance(value, bool)


# An imaginary part this small is rounding (numpy's real_if_close, which Qiskit's estimator
# applies to coefficients): 100 machine epsilons.
_IMAGINARY_ROUNDING = 100 * sys.float_info.epsilon


def _coefficient(value: Any) -> float:
    if isinstance(value, numbers.Complex) and not isinstance(value, numbers.Real | bool):
        number = complex(value)
        if abs(number.imag) > _IMAGINARY_ROUNDING:
            raise ValueError(f"coefficient {number} is not real: observables must be Hermitian")
        return number.real
    if not _is_number(value):
        # numpy scalars are not int/float subclasses in every case; float() takes them.
        try:
            return float(value)
        except (TypeError, ValueError):
            raise TypeError(f"coefficient {value!r} is not a number") from None
    return float(value)


def _term(item: Any) -> circuit_pb2.PauliTerm:
    if isinstance(item, str):
        return circuit_pb2.PauliTerm(pauli=item, coefficient=1.0)
    if isinstance(item, tuple) and len(item) == 2 and isinstance(item[0], str):
        return circuit_pb2.PauliTerm(pauli=item[0], coefficient=_coefficient(item[1]))
    if _is_sparse_term(item):
        # Sparse: pauli[i] acts on qubits[i]; the other qubits are I.
        if not item[0] and not item[1]:
            # The identity ("", [], c), as from_sparse_list writes it: no qubits reads as a
            # dense term on the wire, where "" is no Pauli string; I on qubit 0 is the same.
            return circuit_pb2.PauliTerm(pauli="I", qubits=[0], coefficient=_coefficient(item[2]))
        return circuit_pb2.PauliTerm(
            pauli=item[0], qubits=[int(q) for q in item[1]], coefficient=_coefficient(item[2])
        )
    raise TypeError(
        f"{item!r} is not a Pauli string, a (pauli, coefficient) term or a sparse "
        "(paulis, qubits, coefficient) term"
    )


def _pauli_term(pauli: Any) -> tuple[str, complex]:
    """A qiskit Pauli (duck-typed: to_label()) as a (letters, coefficient) term: its label
    may start with a phase, "-", "i" or "-i"."""
    label = str(pauli.to_label())
    letters = label.lstrip("-i")
    phase = {"": 1, "-": -1, "i": 1j, "-i": -1j}[label[: len(label) - len(letters)]]
    return letters, phase


def _sparse_observable_terms(observable: Any) -> list[tuple[str, complex]]:
    """A qiskit SparseObservable (duck-typed: to_sparse_list(), num_qubits) as dense
    (letters, coefficient) terms: its full width on the wire, as a SparsePauliOp's, so the
    gateway checks it against the circuit's (a 2-qubit observable on a transpiled 5-qubit
    circuit is refused, as Qiskit refuses it, not read as acting on qubits 0 and 1)."""
    if hasattr(observable, "simplify") and hasattr(observable, "coeffs"):
        # As for a SparsePauliOp: like terms summed (iY and -iY of a product cancel) with a
        # tolerance relative to the operator's scale.
        scale = max((abs(complex(c)) for c in observable.coeffs), default=0.0)
        observable = observable.simplify(1e-8 * scale)
    width = int(observable.num_qubits)
    terms: list[tuple[str, complex]] = []
    for letters, qubits, coefficient in observable.to_sparse_list():
        label = ["I"] * width
        for letter, qubit in zip(letters, qubits, strict=True):
            if letter not in "XYZ":
                raise ValueError(
                    f"SparseObservable term {letters!r} on qubits {list(qubits)} holds the "
                    f"projector {letter!r}: only Pauli terms can be sent "
                    "(SparsePauliOp.from_sparse_observable expands projectors into Paulis)"
                )
            label[width - 1 - int(qubit)] = letter  # character 0 acts on the highest qubit
        terms.append(("".join(label), coefficient))
    return terms


def _observable(item: Any) -> circuit_pb2.Observable:
    if isinstance(item, circuit_pb2.Observable):
        return item
    if hasattr(item, "to_label") and not isinstance(item, str | Sequence | Mapping):
        item = _pauli_term(item)  # a qiskit Pauli
    elif hasattr(item, "to_list") and not isinstance(item, Sequence | Mapping):
        # SparsePauliOp-like. Simplified first, as Qiskit's estimator does: a product such as
        # (Z+X)@(Z+X) holds iY and -iY terms that cancel, each refused as not Hermitian alone.
        # The tolerance is relative: simplify's default (an absolute 1e-8) dropped every term
        # of an operator in SI units (coefficients ~1e-22), whose value then read as 0.
        if hasattr(item, "simplify") and hasattr(item, "coeffs"):
            scale = max((abs(complex(c)) for c in item.coeffs), default=0.0)
            item = item.simplify(atol=1e-8 * scale)
        item = list(item.to_list())
    elif hasattr(item, "to_sparse_list") and not isinstance(item, Sequence | Mapping):
        item = _sparse_observable_terms(item)  # a qiskit SparseObservable
    if isinstance(item, str) or _is_term(item):
        terms = [_term(item)]
    elif isinstance(item, Mapping):
        terms = [_term((pauli, coeff)) for pauli, coeff in item.items()]
    else:  # a list of terms (_is_terms)
        terms = [_term(t) for t in item]
    if not terms:
        raise ValueError("an observable needs at least one term")
    return circuit_pb2.Observable(terms=terms)


def _is_one_observable(value: object) -> bool:
    """A Pauli string, a term, a mapping, an Observable message, a SparsePauliOp, a Pauli or a
    SparseObservable."""
    return (
        isinstance(value, str | Mapping | circuit_pb2.Observable)
        or _is_term(value)
        or (
            not _is_sequence(value)
            and any(hasattr(value, a) for a in ("to_list", "to_label", "to_sparse_list"))
        )
    )


def _is_terms(value: object) -> bool:
    """A list of (pauli, coefficient) or sparse terms: one observable. Qiskit takes no tuple as
    an observable, so this never hides one of its arrays ([["ZZ", "XX"]] is 1x2 there)."""
    return _is_sequence(value) and bool(value) and all(_is_term(t) for t in value)


def observables_from(
    observables: ObservablesLike,
) -> tuple[list[circuit_pb2.Observable], tuple[int, ...]]:
    """Observable messages from friendly forms, row-major, and the array's shape.

    "ZZ" is one observable (shape ()); ["ZZ", "XX"] two (shape (2,)); ("ZZ", 0.5) one term;
    [("ZZ", 0.5), ("XX", 0.5)] inside a list is one observable of two terms; {"ZZ": 0.5,
    "XX": 0.5} one observable of two terms. A sparse term ("ZX", [3, 0], 0.5) puts Z on qubit 3
    and X on qubit 0 (SparsePauliOp.from_sparse_list). Qiskit's SparsePauliOp (simplified
    first, as its estimator does), Pauli and SparseObservable (of Pauli terms) are observables
    too; coefficients must be real up to rounding. Nested lists (or a numpy array) of
    observables are an array of that shape, as in Qiskit: [["ZZ", "XX"]] is 1x2, broadcast
    against the parameter sweep.

    Raises:
        ValueError: For an empty list or observable, and nested lists that are not rectangular.
        TypeError: For anything else.
    """
    if hasattr(observables, "tolist") and (
        type(observables).__module__ == "numpy" or type(observables).__name__ == "ObservablesArray"
    ):
        # Pauli strings, as Qiskit takes; qiskit's ObservablesArray: {pauli: coefficient}s.
        observables = cast(Any, observables).tolist()
    if _is_one_observable(observables):
        return [_observable(observables)], ()
    if not _is_sequence(observables):
        raise TypeError(f"{observables!r} is not an observable or a list of observables")
    flat: list[circuit_pb2.Observable] = []
    return flat, _observables_dimension(observables, flat)


def _observables_dimension(
    items: Sequence[Any], flat: list[circuit_pb2.Observable]
) -> tuple[int, ...]:
    """Appends the observables of one dimension to `flat`; returns its shape."""
    if not items:
        raise ValueError("at least one observable is needed in every dimension")
    shapes: set[tuple[int, ...]] = set()
    for item in items:
        if _is_one_observable(item) or _is_terms(item):
            flat.append(_observable(item))
            shapes.add(())
        elif _is_sequence(item):
            shapes.add(_observables_dimension(item, flat))
        else:
            raise TypeError(f"{item!r} is not an observable")
    if len(shapes) > 1:
        raise ValueError(f"nested observables are not rectangular: rows of shapes {sorted(shapes)}")
    return (len(items), *shapes.pop())


def sampler_pub(
    circuit: CircuitLike,
    *,
    shots: int | None = None,
    parameter_values: ParameterValues | None = None,
    parameters: ParameterNames | None = None,
) -> circuit_pb2.Pub:
    """A sampler PUB (see `Client.run` for the arguments)."""
    pub = circuit_pb2.SamplerPub(circuit=circuit_from_source(circuit))
    bindings = bindings_array(parameter_values, parameters)
    if bindings is not None:
        pub.parameter_values.CopyFrom(bindings)
    if shots is not None:
        pub.shots = shots
    return circuit_pb2.Pub(sampler=pub)


def estimator_pub(
    circuit: CircuitLike,
    observables: ObservablesLike,
    *,
    parameter_values: ParameterValues | None = None,
    parameters: ParameterNames | None = None,
    precision: float | None = None,
) -> circuit_pb2.Pub:
    """An estimator PUB (see `Client.estimate` for the arguments)."""
    flat, shape = observables_from(observables)
    pub = circuit_pb2.EstimatorPub(
        circuit=circuit_from_source(circuit),
        observables=flat,
        # Empty on the wire: one dimension of len(observables), or () for a single one.
        observables_shape=shape if len(shape) > 1 else (),
        single_observable=not shape,
    )
    bindings = bindings_array(parameter_values, parameters)
    if bindings is not None:
        pub.parameter_values.CopyFrom(bindings)
    if precision is not None:
        pub.precision = precision
    return circuit_pb2.Pub(estimator=pub)


#: One PUB of `run_pubs`, `submit_pubs` or `validate`: a Pub message (`sampler_pub`,
#: `estimator_pub`), a qiskit SamplerPub or EstimatorPub, a QuantumCircuit (a sampler PUB), or a
#: tuple as Qiskit's primitives take one: (circuit, parameter_values, shots) for a sampler,
#: (circuit, observables, parameter_values, precision) for an estimator, trailing items optional.
PubLike: TypeAlias = circuit_pb2.Pub | tuple[Any, ...] | Any

_PUB_FORMS = (
    "a Pub message (sampler_pub, estimator_pub), a qiskit SamplerPub or EstimatorPub, a "
    "QuantumCircuit, or a tuple: (circuit, parameter_values, shots) with primitive='sampler', "
    "(circuit, observables, parameter_values, precision) with primitive='estimator'"
)


def _pub(item: PubLike, primitive: str | None) -> circuit_pb2.Pub:
    """A Pub message from any PubLike form; `primitive` says what a tuple is for."""
    if isinstance(item, circuit_pb2.Pub):
        return item
    if isinstance(item, circuit_pb2.SamplerPub):
        return circuit_pb2.Pub(sampler=item)
    if isinstance(item, circuit_pb2.EstimatorPub):
        return circuit_pb2.Pub(estimator=item)
    if hasattr(item, "circuit") and hasattr(item, "parameter_values"):
        # qiskit's SamplerPub / EstimatorPub (duck-typed: qiskit stays optional).
        if hasattr(item, "observables"):
            return estimator_pub(
                item.circuit,
                item.observables,
                parameter_values=item.parameter_values,
                precision=getattr(item, "precision", None),
            )
        if hasattr(item, "shots"):
            return sampler_pub(
                item.circuit, shots=item.shots, parameter_values=item.parameter_values
            )
    if not isinstance(item, tuple):
        qpy = _qiskit_circuit_qpy(item)
        if qpy is not None and primitive != "estimator":
            # A bare circuit, as Qiskit's SamplerV2 takes one (dumped once, not again here).
            return sampler_pub(circuit_pb2.Circuit(qpy=qpy))
        if qpy is not None:
            # Not "a PUB is ... a QuantumCircuit ...; not QuantumCircuit": what is missing.
            raise TypeError(
                "a bare QuantumCircuit is a sampler's PUB: an estimator PUB needs observables, "
                f"(circuit, observables); a PUB is {_PUB_FORMS}"
            )
        raise TypeError(f"a PUB is {_PUB_FORMS}; not {type(item).__name__}")
    if not item or len(item) > 4:
        raise ValueError(f"a PUB tuple holds 1 to 4 items, not {len(item)}: {_PUB_FORMS}")
    if primitive is None:
        if len(item) > 1:
            # (circuit, X) is a sampler's parameter values or an estimator's observables, as
            # (circuit, X, Y) is: the caller says which rather than the client guessing.
            raise ValueError(
                f"a PUB tuple of {len(item)} items can be a sampler's or an estimator's: pass "
                "primitive='sampler' or primitive='estimator'"
            )
        primitive = "sampler"  # (circuit,): only a sampler PUB has no observables
    if primitive == "sampler":
        if len(item) > 3:
            raise ValueError("a sampler PUB tuple is (circuit, parameter_values, shots)")
        circuit, values, shots = (*item, None, None)[:3]
        if shots is not None and (
            isinstance(shots, bool) or not isinstance(shots, numbers.Integral)
        ):
            raise TypeError(f"a sampler PUB's shots must be an integer, not {shots!r}")
        return sampler_pub(
            circuit, shots=None if shots is None else int(shots), parameter_values=values
        )
    if len(item) < 2:
        raise ValueError(
            "an estimator PUB tuple is (circuit, observables, parameter_values, precision): "
            "observables are needed"
        )
    circuit, observables, values, precision = (*item, None, None)[:4]
    if precision is not None and not _is_number(precision):
        raise TypeError(f"an estimator PUB's precision must be a number, not {precision!r}")
    return estimator_pub(
        circuit,
        observables,
        parameter_values=values,
        precision=None if precision is None else float(precision),
    )


def _pubs(pubs: Sequence[PubLike], primitive: str | None) -> list[circuit_pb2.Pub]:
    if primitive not in (None, "sampler", "estimator"):
        raise ValueError(f"primitive must be 'sampler' or 'estimator', not {primitive!r}")
    if not _is_sequence(pubs):
        raise TypeError(f"pubs must be a list of PUBs, each {_PUB_FORMS}")
    return [_pub(item, primitive) for item in pubs]


def _job_spec(
    pubs: Sequence[PubLike],
    backend: str,
    default_shots: int | None,
    seed: int | None,
    sampler_output: job_pb2.SamplerOutput,
    default_precision: float | None,
    fallback_backend: str | None = None,
    labels: Mapping[str, str] | None = None,
    max_execution_time: float | None = None,
    provider_options: Mapping[str, Any] | None = None,
    session: str | None = None,
    primitive: str | None = None,
) -> job_pb2.JobSpec:
    converted = _pubs(pubs, primitive)
    if not converted:
        raise ValueError("a job needs at least one PUB")
    options = job_pb2.JobOptions(sampler_output=sampler_output)
    if default_shots is not None:
        options.default_shots = default_shots
    if seed is not None:
        options.seed = seed
    if default_precision is not None:
        options.default_precision = default_precision
    if fallback_backend:
        # Used only when the backend's circuit breaker is open at submission.
        options.fallback_backend = _backend_name(fallback_backend)
    if max_execution_time is not None:
        # Seconds, > 0; the backend's own limit still applies (the smaller wins).
        options.max_execution_time.FromNanoseconds(round(max_execution_time * 1e9))
    if provider_options is not None:
        # JSON-like values, checked by the backend's own schema (unknown keys refused).
        options.provider_options.update(provider_options)
    spec = job_pb2.JobSpec(backend=_backend_name(backend), pubs=converted, options=options)
    if labels:
        # Keys [a-z][a-z0-9_-]{0,62}, values [a-z0-9_-]{0,63}, at most 64: checked by the gateway.
        spec.labels.update(labels)
    if session:
        # The job runs in this session, on its backend, after the session's earlier jobs.
        spec.session = session_name(session)
    return spec


def _validate_request(
    pubs: Sequence[PubLike],
    backend: str,
    default_shots: int | None,
    seed: int | None,
    default_precision: float | None,
    provider_options: Mapping[str, Any] | None,
    session: str | None,
    primitive: str | None = None,
) -> job_service_pb2.SubmitJobRequest:
    """SubmitJob with validate_only, as `Client.validate` and `AsyncClient.validate` send it."""
    spec = _job_spec(
        pubs,
        backend,
        default_shots,
        seed,
        _sampler_output(None, False),
        default_precision,
        provider_options=provider_options,
        session=session,
        primitive=primitive,
    )
    # No request_id: nothing is created, so there is nothing a retry could duplicate.
    return job_service_pb2.SubmitJobRequest(spec=spec, validate_only=True)


#: What sampler PUBs return: "samples_and_counts", "samples" or "counts" (any case, with or
#: without the "SAMPLER_OUTPUT_" prefix), or a `job_pb2.SamplerOutput` number.
SamplerOutputLike: TypeAlias = str | int


def _sampler_output(value: SamplerOutputLike | None, counts_only: bool) -> job_pb2.SamplerOutput:
    counts = job_pb2.SAMPLER_OUTPUT_COUNTS
    if value is None:
        return counts if counts_only else job_pb2.SAMPLER_OUTPUT_UNSPECIFIED
    if isinstance(value, int):
        if value not in job_pb2.SamplerOutput.values():
            raise ValueError(f"unknown sampler output {value}")
        number = cast("job_pb2.SamplerOutput", value)
    else:
        name = value.strip().upper().removeprefix("SAMPLER_OUTPUT_")
        try:
            number = cast(
                "job_pb2.SamplerOutput", job_pb2.SamplerOutput.Value(f"SAMPLER_OUTPUT_{name}")
            )
        except ValueError:
            raise ValueError(
                f"unknown sampler output {value!r}: samples_and_counts, samples or counts"
            ) from None
    if counts_only and number != counts:
        raise ValueError(f"counts_only=True contradicts sampler_output={value!r}")
    return number


def _prefixed(name: str, prefix: str, what: str) -> str:
    name = name.strip()
    if not name or name == prefix:
        raise ValueError(f"empty {what} name")
    return name if name.startswith(prefix) else prefix + name


def _job_name(name: str) -> str:
    return _prefixed(name, "jobs/", "job")


def _backend_name(name: str) -> str:
    return _prefixed(name, "backends/", "backend")


#: How much of a backend to return: "BASIC" (everyone) or "FULL" (admin callers: health,
#: breaker, pool), or a `backend_pb2.BackendView` number.
BackendViewLike: TypeAlias = str | int


def _backend_view(view: BackendViewLike) -> backend_pb2.BackendView:
    if isinstance(view, int):
        return cast("backend_pb2.BackendView", view)
    name = view.strip().upper().removeprefix("BACKEND_VIEW_")
    try:
        number = backend_pb2.BackendView.Value(f"BACKEND_VIEW_{name}")
    except ValueError:
        raise ValueError(f"unknown backend view {view!r}: BASIC or FULL") from None
    return cast("backend_pb2.BackendView", number)


def _target_name(name: str) -> str:
    """'aer', 'backends/aer' or 'backends/aer/target' -> 'backends/aer/target'."""
    name = name.strip()
    return name if name.endswith("/target") else _backend_name(name) + "/target"


def _list_filter(filter: str, states: Iterable[JobState | str | int], backend: str) -> str:
    """An AIP-160 filter from the typed arguments, AND-ed with `filter`.

    The gateway's subset is a plain AND of clauses (OR only inside parentheses, on one field),
    so the parts are joined as they are: parentheses around an AND are not in the subset.
    """
    clauses = [filter] if filter.strip() else []
    names = sorted({JobState.parse(s).value for s in states})
    if names:
        clauses.append("(" + " OR ".join(f"state = {n}" for n in names) + ")")
    if backend:
        quoted = _backend_name(backend).replace("\\", "\\\\").replace('"', '\\"')
        clauses.append(f'backend = "{quoted}"')
    return " AND ".join(clauses)


def _new_request_id(request_id: str | None) -> str:
    # Chosen once per logical call, before the first attempt, so every retry is the same request.
    return request_id if request_id else str(uuid.uuid4())


def _result_of(job: Job) -> JobResult:
    """The result of a finished job, or the job's failure as an exception."""
    if job.state in (JobState.FAILED, JobState.CANCELLED):
        raise JobFailedError(
            job.name, job.state.value, job.error_reason, job.error_message, error=job.error
        )
    if job.result_expired:
        # What GetJobResult answers for it: a QGatewayError like every other refusal, so
        # callers handling the gateway's errors handle this one too.
        metadata = {"job": job.name}
        if job.expire_time is not None:
            metadata["expireTime"] = job.expire_time.isoformat().replace("+00:00", "Z")
        raise NotFoundError(
            f"the result of job {job.name} expired before it was fetched",
            reason="RESULT_EXPIRED",
            domain=ERROR_DOMAIN,
            metadata=metadata,
        )
    if job.state is not JobState.SUCCEEDED or job.result is None:
        raise RuntimeError(f"job {job.name} is {job.state.value} without a result")
    return job.result


def _created(answered: bool, request_id: str | None) -> bool:
    """Whether the call created its job: as the gateway answered its last attempt, or True
    when the client drew the request_id (no other call used it: a retry whose earlier attempt
    created the job, its answer lost, gets it back with created=False)."""
    return answered or not request_id


def _run_job(response: job_service_pb2.RunResponse, request_id: str | None) -> Job:
    created = _created(response.created, request_id)
    if response.HasField("result"):
        result = JobResult.from_proto(response.result)
        return Job.from_proto(response.job, created=created, result=result)
    return Job.from_proto(response.job, created=created, result_too_large=response.result_too_large)


def _watched(response: job_service_pb2.WatchJobResponse) -> Job:
    job = Job.from_proto(response.job)
    return replace(job, heartbeat=True) if response.heartbeat else job


# Run answers just before the caller's deadline (at most 50 ms before it): an answer that
# leaves less than this of the caller's time came from its own deadline, not the server's cap.
_RUN_CAP_MIN_REMAINING_S = 0.1


def _capped_run(err: DeadlineExceededError, deadline: float | None) -> str | None:
    """The job a Run left running because the gateway's Run wait limit passed while the
    caller's own timeout still allows waiting; None when the caller's time is up."""
    if err.reason != "RUN_DEADLINE_EXCEEDED" or err.job is None:
        return None
    remaining = _remaining(deadline)
    if remaining is not None and remaining < _RUN_CAP_MIN_REMAINING_S:
        return None
    return err.job


def _created_as(err: DeadlineExceededError, job: Job, request_id: str | None) -> Job:
    """The followed job, with `created` as the capped Run said (the wait cannot know it)."""
    created = err.metadata.get("created")
    if created is None:
        return job
    return replace(job, created=_created(created == "true", request_id))


def _running_loop() -> asyncio.AbstractEventLoop | None:
    try:
        return asyncio.get_running_loop()
    except RuntimeError:
        return None


def _raise_if_closed_under(
    exc: asyncio.CancelledError, request_id: str | None = None, job: str | None = None
) -> None:
    """grpc.aio ends a call whose channel was closed under it (AsyncClient.close while it
    waited) with asyncio.CancelledError although nobody cancelled the caller's task: that is
    raised as the sync client's typed CANCELLED, with the request_id or job of a job that may
    go on. Returns for a real cancellation of the task (the caller re-raises it), with a note
    of the request_id: the job, if created, goes on (only CancelJob cancels it), and the
    request_id is how the caller finds it again."""
    task = asyncio.current_task()
    if task is not None and task.cancelling():
        if request_id is not None:
            exc.add_note(
                f"request_id {request_id}: a job it created goes on (only cancel() stops it);"
                " repeat the call with this request_id to get it"
            )
        return
    closed = CallCancelledError("the client was closed while the call was in flight")
    raise _tag(closed, request_id, job) from exc


def _tag(err: QGatewayError, request_id: str | None, job: str | None = None) -> QGatewayError:
    """Adds what the caller needs to get back to the job (request_id, job name) to an error."""
    if request_id is not None:
        err.request_id = request_id
    if job is not None:
        err.metadata.setdefault("job", job)
    return err


class _ResultFetch:
    """Fetching one result with StreamJobResult, without I/O: each attempt's request (resuming
    from where the previous stream broke) and whether to make another attempt.

    A stream that breaks with UNAVAILABLE, or with INTERNAL after it delivered something (a
    connection reset mid-stream), is resumed from the binding it was in; the attempts that
    bring no further progress are bounded by the retry policy's max_attempts.
    """

    def __init__(
        self, name: str, chunk_bytes: int, policy: RetryPolicy, deadline: float | None
    ) -> None:
        self.job = _job_name(name)
        self.chunk_bytes = chunk_bytes
        self.policy = policy
        self.deadline = deadline
        self.assembler = ResultAssembler(self.job)
        self.start: tuple[int, int] | None = None
        self.received = 0
        self.stalled = 0  # failed attempts in a row that made no progress

    def request(self) -> job_service_pb2.StreamJobResultRequest:
        self.start = (0, 0) if self.start is None else self.assembler.resume_position()
        self.received = 0
        return job_service_pb2.StreamJobResultRequest(
            name=f"{self.job}/result",
            chunk_bytes=self.chunk_bytes,
            start_pub_index=self.start[0],
            start_binding_index=self.start[1],
        )

    def add(self, response: job_service_pb2.StreamJobResultResponse) -> None:
        self.assembler.add(response)
        self.received += 1

    def result(self) -> JobResult:
        return self.assembler.result()

    def retry_delay(self, error: QGatewayError) -> float | None:
        """Seconds to wait before resuming an incomplete stream, or None to raise `error`."""
        broken = error.code == grpc.StatusCode.UNAVAILABLE or (
            error.code == grpc.StatusCode.INTERNAL and self.received > 0
        )
        if not broken:
            return None
        progressed = self.start is not None and self.assembler.position > self.start
        self.stalled = 1 if progressed else self.stalled + 1
        # Not `_retry_delay`: a stream reset mid-way (INTERNAL) is resumed too. The limits on
        # the delay (attempts, the gateway's RetryInfo, the deadline) are the same.
        return _attempt_delay(self.policy, error, self.stalled, self.deadline)


_RECEIVE_LIMIT = "grpc.max_receive_message_length"


def _channel_options(options: Sequence[tuple[str, Any]]) -> list[tuple[str, Any]]:
    """The caller's options, with no receive limit unless they set one: the gateway bounds
    what it sends (`server.max_response_bytes`, which an operator may raise above gRPC's 4 MiB
    default), and a result refused by the client's own limit is lost to a bare
    RESOURCE_EXHAUSTED, where the gateway's RESULT_TOO_LARGE would have led to the stream."""
    chosen = list(options)
    if all(name != _RECEIVE_LIMIT for name, _ in chosen):
        chosen.append((_RECEIVE_LIMIT, -1))
    return chosen


def _is_too_large(error: QGatewayError) -> bool:
    return isinstance(error, FailedPreconditionError) and error.reason == "RESULT_TOO_LARGE"


def _is_expired(error: QGatewayError) -> bool:
    return isinstance(error, NotFoundError) and error.reason == "RESULT_EXPIRED"


# Stubs are built through Any: the generated *_grpc modules are untyped.
_JobStub: Any = job_service_pb2_grpc.JobServiceStub
_BackendStub: Any = backend_service_pb2_grpc.BackendServiceStub


class Client(JobStubs, SessionCalls, TenantCalls):
    """Synchronous client.

    Args:
        target: host:port of the gateway.
        credentials: Channel credentials for TLS/mTLS; None for a plaintext channel.
        metadata: Metadata sent with every call (e.g. an API key header).
        retry: How UNAVAILABLE is retried.
        options: gRPC channel options, e.g. [("grpc.keepalive_time_ms", 60_000)]. The
            receive limit is off unless set here: the gateway bounds what it sends.
        client_spans: Record a CLIENT span per call (needs `qgateway[otel]`). With
            opentelemetry installed, calls carry the current trace context either way.
    """

    def __init__(
        self,
        target: str = DEFAULT_TARGET,
        *,
        credentials: grpc.ChannelCredentials | None = None,
        metadata: Sequence[tuple[str, str]] = (),
        retry: RetryPolicy = DEFAULT_RETRY,
        options: Sequence[tuple[str, Any]] = (),
        client_spans: bool = False,
    ) -> None:
        self.target = target
        self.retry = retry
        self._metadata = tuple((key, value) for key, value in metadata)
        opts = _channel_options(options)
        if credentials is None:
            self._channel: Any = grpc.insecure_channel(target, options=opts)
        else:
            self._channel = grpc.secure_channel(target, credentials, options=opts)
        interceptors = telemetry.sync_interceptors(client_spans)
        if interceptors:
            self._channel = grpc.intercept_channel(self._channel, *interceptors)
        self._closed = False
        self._jobs_stub: Any = _JobStub(self._channel)
        self._backends_stub: Any = _BackendStub(self._channel)

    @property
    def channel(self) -> Any:
        """The underlying grpc.Channel (e.g. for health checks)."""
        if self._closed:
            # grpcio crashes the process (SIGSEGV) on a call through an intercepted channel
            # whose method was first used after the close: refused here, with a clear error.
            raise RuntimeError("this Client is closed")
        return self._channel

    def __enter__(self) -> Client:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def close(self) -> None:
        """Closes the channel; calls in flight are cancelled. The client cannot be used again."""
        self._closed = True
        self._channel.close()

    # -- plumbing ------------------------------------------------------------------------------

    def _unary(
        self,
        method: Any,
        request: Any,
        *,
        deadline: float | None,
        retry: bool,
        request_id: str | None = None,
    ) -> Any:
        attempt = 0
        while True:
            try:
                return method(request, timeout=_remaining(deadline), metadata=self._metadata)
            except grpc.RpcError as exc:
                err = _tag(from_rpc_error(exc), request_id)
                attempt += _attempts_spent(err)
                delay = _retry_delay(self.retry, err, attempt, deadline) if retry else None
                if delay is None:
                    raise err from exc
            _sleep(delay)

    def _complete(self, job: Job, deadline: float | None) -> Job:
        """Adds the result of a SUCCEEDED job that came without it, or marks it expired."""
        if job.result is None and job.state is JobState.SUCCEEDED:
            try:
                if job.result_too_large:  # Run said so: straight to the stream
                    result = self._stream_result(job.name, deadline, 0)
                else:
                    result = self._fetch_result(job.name, deadline)
            except QGatewayError as err:
                if not _is_expired(err):
                    raise
                # The job exists, only its result is gone: the caller asked for the job.
                return replace(job, result_expired=True)
            return replace(job, result=result)
        return job

    def _fetch_result(self, name: str, deadline: float | None) -> JobResult:
        """GetJobResult, or StreamJobResult when the result does not fit one message."""
        try:
            response: job_service_pb2.GetJobResultResponse = self._unary(
                self._jobs.GetJobResult,
                job_service_pb2.GetJobResultRequest(name=f"{_job_name(name)}/result"),
                deadline=deadline,
                retry=True,
            )
        except QGatewayError as err:
            if not _is_too_large(err):
                raise
            return self._stream_result(name, deadline, 0)
        return JobResult.from_proto(response.result)

    def _stream_result(self, name: str, deadline: float | None, chunk_bytes: int) -> JobResult:
        fetch = _ResultFetch(name, chunk_bytes, self.retry, deadline)
        while True:
            delay: float | None = None
            call = self._jobs.StreamJobResult(
                fetch.request(), timeout=_remaining(deadline), metadata=self._metadata
            )
            try:
                for response in call:
                    fetch.add(response)
                return fetch.result()
            except grpc.RpcError as exc:
                # Broken after the digest: every message arrived, nothing is left to fetch.
                if fetch.assembler.complete:
                    return fetch.result()
                err = _tag(from_rpc_error(exc), None, fetch.job)
                delay = fetch.retry_delay(err)
                if delay is None:
                    raise err from exc
            finally:
                call.cancel()
            _sleep(delay)

    # -- jobs ----------------------------------------------------------------------------------

    def run(
        self,
        circuit: CircuitLike,
        *,
        backend: str = "aer",
        shots: int | None = None,
        seed: int | None = None,
        parameter_values: ParameterValues | None = None,
        parameters: ParameterNames | None = None,
        counts_only: bool = False,
        sampler_output: SamplerOutputLike | None = None,
        request_id: str | None = None,
        timeout: float | None = None,
    ) -> JobResult:
        """Runs one circuit on a backend and waits for its result.

        Args:
            circuit: OpenQASM 3 or 2 text (2 when it starts with an "OPENQASM 2" header), QPY
                bytes (qiskit.qpy.dump of one circuit) or a qiskit QuantumCircuit (sent as QPY;
                unnamed parameter columns follow `circuit.parameters`, as in Qiskit).
            backend: Backend name, with or without "backends/".
            shots: Shots per binding; None for the backend's default.
            seed: Sampling seed; None lets the gateway pick (and report) one.
            parameter_values: Shape (*sweep, n_params), or a flat list for one binding; or a
                {Parameter or name: values} dict as Qiskit takes it (a tuple of parameters or
                a ParameterVector as one key: values of shape (*sweep, len(key))), or a qiskit
                BindingsArray.
            parameters: Parameter names (or Qiskit Parameter objects) per column; None for the
                circuit's order.
            counts_only: Shorthand for sampler_output="counts".
            sampler_output: What the job returns per register: "samples_and_counts" (None, the
                default), "samples" (no counts) or "counts" (no per-shot samples); admission
                sizes the result by what is asked for.
            request_id: Idempotency key; a fresh one is generated when None.
            timeout: Seconds for the whole call (None: no limit). When it passes the job keeps
                running: the DeadlineExceededError carries `job` (when the gateway named it)
                and `request_id`; calling run again with that request_id gets the same job.
                The gateway's own Run wait limit (60 s by default) does not end the call: the
                client then follows the job with WatchJob for the rest of `timeout`.

        Returns:
            The result; `.counts()` gives the counts of the first binding.

        Raises:
            QGatewayError: A typed RPC error.
            JobFailedError: The job failed or was cancelled.
        """
        job = self.run_pubs(
            [
                sampler_pub(
                    circuit, shots=shots, parameter_values=parameter_values, parameters=parameters
                )
            ],
            backend=backend,
            seed=seed,
            counts_only=counts_only,
            sampler_output=sampler_output,
            request_id=request_id,
            timeout=timeout,
        )
        return _result_of(job)

    def estimate(
        self,
        circuit: CircuitLike,
        observables: ObservablesLike,
        *,
        backend: str = "aer",
        parameter_values: ParameterValues | None = None,
        parameters: ParameterNames | None = None,
        precision: float | None = None,
        seed: int | None = None,
        request_id: str | None = None,
        timeout: float | None = None,
    ) -> EstimatorPubResult:
        """Estimates expectation values of observables and waits for the result.

        Args:
            circuit: As for `run`, without final measurements.
            observables: A Pauli string, a list of them, nested lists of them (an array, as
                in Qiskit, broadcast against `parameter_values`), or lists of (pauli,
                coefficient) terms (see `observables_from`). Character 0 of a Pauli string acts
                on the highest-index qubit.
            backend: Backend name.
            parameter_values: As for `run`.
            parameters: As for `run`.
            precision: Target standard error; 0 asks for exact values (simulators only).
            seed: Sampling seed.
            request_id: Idempotency key.
            timeout: As for `run`.

        Raises:
            QGatewayError: A typed RPC error.
            JobFailedError: The job failed or was cancelled.
        """
        pub = estimator_pub(
            circuit,
            observables,
            parameter_values=parameter_values,
            parameters=parameters,
            precision=precision,
        )
        job = self.run_pubs(
            [pub], backend=backend, seed=seed, request_id=request_id, timeout=timeout
        )
        return _result_of(job).estimator(0)

    def run_pubs(
        self,
        pubs: Sequence[PubLike],
        *,
        backend: str = "aer",
        default_shots: int | None = None,
        seed: int | None = None,
        counts_only: bool = False,
        sampler_output: SamplerOutputLike | None = None,
        fallback_backend: str | None = None,
        default_precision: float | None = None,
        labels: Mapping[str, str] | None = None,
        max_execution_time: float | None = None,
        provider_options: Mapping[str, Any] | None = None,
        session: str | None = None,
        primitive: str | None = None,
        request_id: str | None = None,
        timeout: float | None = None,
    ) -> Job:
        """Runs PUBs as one job (the Run RPC) and returns the finished job with its result.

        A failed or cancelled job is returned, not raised; check `job.state`. Results too large
        for one message are fetched with StreamJobResult within the same timeout. When the
        gateway's Run wait limit passes before `timeout` (or with no timeout), the job is
        followed with WatchJob until it ends or `timeout` passes.

        `pubs` are Pub messages (`sampler_pub`, `estimator_pub`), qiskit SamplerPub or
        EstimatorPub objects, QuantumCircuits, or tuples as Qiskit's primitives take them:
        `primitive="sampler"` reads (circuit, parameter_values, shots), `primitive="estimator"`
        (circuit, observables, parameter_values, precision), trailing items optional (None
        leaves one unset); a (circuit,) tuple needs no `primitive`.
        """
        spec = _job_spec(
            pubs,
            backend,
            default_shots,
            seed,
            _sampler_output(sampler_output, counts_only),
            default_precision,
            fallback_backend,
            labels,
            max_execution_time,
            provider_options,
            session,
            primitive,
        )
        rid = _new_request_id(request_id)
        deadline = _deadline(timeout)
        try:
            response: job_service_pb2.RunResponse = self._unary(
                self._jobs.Run,
                job_service_pb2.RunRequest(request_id=rid, spec=spec),
                deadline=deadline,
                retry=True,
                request_id=rid,
            )
        except DeadlineExceededError as err:
            name = _capped_run(err, deadline)
            if name is None:
                raise
            # The gateway's Run wait limit passed, not our timeout: follow the job instead.
            try:
                return _created_as(err, self.wait(name, timeout=_remaining(deadline)), request_id)
            except QGatewayError as late:
                _tag(late, rid, name)
                raise
        job = _run_job(response, request_id)
        try:
            return self._complete(job, deadline)
        except QGatewayError as err:
            _tag(err, rid, job.name)
            raise

    def submit(
        self,
        circuit: CircuitLike,
        *,
        backend: str = "aer",
        shots: int | None = None,
        seed: int | None = None,
        parameter_values: ParameterValues | None = None,
        parameters: ParameterNames | None = None,
        counts_only: bool = False,
        sampler_output: SamplerOutputLike | None = None,
        labels: Mapping[str, str] | None = None,
        session: str | None = None,
        request_id: str | None = None,
        timeout: float | None = None,
    ) -> Job:
        """Submits one circuit (arguments as for `run`) and returns the queued job at once.

        `labels` are stored with the job (ListJobs filters on them); `session` ("sessions/{id}"
        or the bare id) runs it in that session, after the session's earlier jobs. The returned
        job's
        `created` is False when the gateway returned the job of an earlier call with the same
        `request_id` instead of creating one.
        """
        return self.submit_pubs(
            [
                sampler_pub(
                    circuit, shots=shots, parameter_values=parameter_values, parameters=parameters
                )
            ],
            backend=backend,
            seed=seed,
            counts_only=counts_only,
            sampler_output=sampler_output,
            labels=labels,
            session=session,
            request_id=request_id,
            timeout=timeout,
        )

    def submit_pubs(
        self,
        pubs: Sequence[PubLike],
        *,
        backend: str = "aer",
        default_shots: int | None = None,
        seed: int | None = None,
        counts_only: bool = False,
        sampler_output: SamplerOutputLike | None = None,
        fallback_backend: str | None = None,
        default_precision: float | None = None,
        labels: Mapping[str, str] | None = None,
        max_execution_time: float | None = None,
        provider_options: Mapping[str, Any] | None = None,
        session: str | None = None,
        primitive: str | None = None,
        request_id: str | None = None,
        timeout: float | None = None,
    ) -> Job:
        """Submits PUBs as one job (SubmitJob) and returns it without waiting.

        The job's `created` is True when this call created it, False when the gateway returned
        the job of an earlier request with the same `request_id` (a retry; the same request in
        any spelling, e.g. "aer" or "backends/aer"). `labels` are stored with the job. `pubs`
        and `primitive` as for `run_pubs`.
        """
        spec = _job_spec(
            pubs,
            backend,
            default_shots,
            seed,
            _sampler_output(sampler_output, counts_only),
            default_precision,
            fallback_backend,
            labels,
            max_execution_time,
            provider_options,
            session,
            primitive,
        )
        rid = _new_request_id(request_id)
        response: job_service_pb2.SubmitJobResponse = self._unary(
            self._jobs.SubmitJob,
            job_service_pb2.SubmitJobRequest(request_id=rid, spec=spec),
            deadline=_deadline(timeout),
            retry=True,
            request_id=rid,
        )
        # Whether this call created the job or got an earlier request's (same request_id).
        return Job.from_proto(response.job, created=_created(response.created, request_id))

    def validate(
        self,
        pubs: Sequence[PubLike],
        *,
        backend: str = "aer",
        default_shots: int | None = None,
        seed: int | None = None,
        default_precision: float | None = None,
        provider_options: Mapping[str, Any] | None = None,
        session: str | None = None,
        primitive: str | None = None,
        timeout: float | None = None,
    ) -> CostEstimate:
        """Checks PUBs as a submission would be checked (SubmitJob with validate_only: the
        backend, every circuit compiled, every limit) and estimates their cost; no job is
        created. Raises what submit_pubs would raise for an invalid request. `pubs` and
        `primitive` as for `run_pubs`."""
        response: job_service_pb2.SubmitJobResponse = self._unary(
            self._jobs.SubmitJob,
            _validate_request(
                pubs,
                backend,
                default_shots,
                seed,
                default_precision,
                provider_options,
                session,
                primitive,
            ),
            deadline=_deadline(timeout),
            retry=True,
        )
        return CostEstimate.from_proto(response.cost_estimate)

    def get_job(self, name: str, *, view_basic: bool = False, timeout: float | None = None) -> Job:
        """Gets a job; with its result (streamed when too large) unless view_basic.

        A SUCCEEDED job whose result is past its `expire_time` is returned without it:
        `job.result` is None and `job.result_expired` True.

        Args:
            name: "jobs/{job}" or just the id.
            view_basic: State and metadata only.
            timeout: Seconds for the whole call.
        """
        deadline = _deadline(timeout)
        response: job_service_pb2.GetJobResponse = self._unary(
            self._jobs.GetJob,
            job_service_pb2.GetJobRequest(name=_job_name(name)),
            deadline=deadline,
            retry=True,
        )
        job = Job.from_proto(response.job)
        return job if view_basic else self._complete(job, deadline)

    def wait(self, name: str, *, timeout: float | None = None) -> Job:
        """Waits until a job is final (by watching it) and returns it with its result (None,
        with `job.result_expired` set, when the result is past its `expire_time`)."""
        deadline = _deadline(timeout)
        final: Job | None = None
        with contextlib.closing(self.watch(name, timeout=timeout)) as events:
            for job in events:
                final = job
                if job.done:
                    break
        if final is None or not final.done:
            raise _watch_ended(_job_name(name))
        remaining = _remaining(deadline)
        return self.get_job(final.name, timeout=remaining)

    def watch(
        self, name: str, *, timeout: float | None = None, heartbeats: bool = False
    ) -> Generator[Job, None, None]:
        """Follows a job: its current state, then every change, ending after a final state.

        While the job is QUEUED, `job.queue_position` says how many jobs are ahead of it; the
        gateway's heartbeats (sent when nothing changed for its heartbeat interval) carry the
        current position, and one that moved is yielded like a change. Heartbeats with nothing
        new are skipped unless `heartbeats` is True; then they are yielded too, with
        `job.heartbeat` set (to tell a quiet stream from a dead one).

        Leaving the loop early stops watching; it never cancels the job. A stream dropped with
        UNAVAILABLE is resumed (the repeated current state is not yielded twice).
        """
        request = job_service_pb2.WatchJobRequest(name=_job_name(name))
        deadline = _deadline(timeout)
        attempt = quiet_ends = 0
        last: job_pb2.Job | None = None
        while True:
            delay: float | None = None
            call = self._jobs.WatchJob(
                request, timeout=_remaining(deadline), metadata=self._metadata
            )
            try:
                for response in call:
                    # Any message shows the stream works: a proxy that cuts every stream after
                    # a while must not use up the retries of a long job's watch.
                    attempt = 0
                    # A repeat (a resumed stream, or a heartbeat with nothing new) is skipped.
                    repeat = last is not None and response.job == last
                    if not repeat:
                        quiet_ends = 0
                    if repeat and not (heartbeats and response.heartbeat):
                        continue
                    last = response.job
                    yield _watched(response)
                # Ended with OK: streams that end so without news count as failed attempts.
                quiet_ends += 1
                delay = _resume_delay(self.retry, last, quiet_ends, deadline, request.name)
                if delay is None:
                    return
            except grpc.RpcError as exc:
                if _shown_final(last):
                    return  # the stream broke after the end it was for (a restart, a proxy)
                err = from_rpc_error(exc)
                attempt += _attempts_spent(err)
                delay = _retry_delay(self.retry, err, attempt, deadline)
                if delay is None:
                    raise err from exc
            finally:
                call.cancel()
            _sleep(delay)

    def cancel(self, name: str, *, timeout: float | None = None) -> Job:
        """Asks for a queued or running job to be cancelled (never retried) and returns it at
        once: CANCELLING while its backend is being stopped, or already CANCELLED (a queued
        job). `wait` or `watch` shows it end: CANCELLED, or SUCCEEDED/FAILED if it finished
        first. Cancelling a cancelling or cancelled job is a no-op; a finished one raises
        FailedPreconditionError (reason JOB_ALREADY_FINISHED)."""
        response: job_service_pb2.CancelJobResponse = self._unary(
            self._jobs.CancelJob,
            job_service_pb2.CancelJobRequest(name=_job_name(name)),
            deadline=_deadline(timeout),
            retry=False,
        )
        return Job.from_proto(response.job)

    def list_jobs(
        self,
        *,
        filter: str = "",
        states: Iterable[JobState | str | int] = (),
        backend: str = "",
        page_size: int = 0,
        timeout: float | None = None,
    ) -> Iterator[Job]:
        """The tenant's jobs, newest first, following page tokens lazily.

        Args:
            filter: An AIP-160 filter (see ListJobsRequest.filter), AND-ed with the others.
            states: Only jobs in these states (names like "RUNNING" or JobState).
            backend: Only jobs of this backend.
            page_size: Jobs per page; 0 for the server's default.
            timeout: Seconds per page request.
        """
        request = job_service_pb2.ListJobsRequest(
            page_size=page_size,
            filter=_list_filter(filter, states, backend),
        )
        while True:
            response: job_service_pb2.ListJobsResponse = self._unary(
                self._jobs.ListJobs, request, deadline=_deadline(timeout), retry=True
            )
            for job in response.jobs:
                yield Job.from_proto(job)
            if not response.next_page_token:
                return
            request.page_token = response.next_page_token

    def get_result(self, name: str, *, timeout: float | None = None) -> JobResult:
        """The result of a SUCCEEDED job: GetJobResult, or StreamJobResult when it is larger
        than one message.

        Args:
            name: "jobs/{job}", "jobs/{job}/result" or just the id.
            timeout: Seconds for the whole call, streaming included.

        Raises:
            FailedPreconditionError: RESULT_NOT_READY when the job has not succeeded.
        """
        return self._fetch_result(_job_name(name.removesuffix("/result")), _deadline(timeout))

    def stream_result(
        self, name: str, *, chunk_bytes: int = 0, timeout: float | None = None
    ) -> JobResult:
        """Fetches a job's result with StreamJobResult (for results of any size).

        A stream that breaks (UNAVAILABLE, or INTERNAL mid-way) is resumed from the binding it
        was in; the result is checked against the SHA-256 the gateway sends last.

        Args:
            name: "jobs/{job}", "jobs/{job}/result" or just the id.
            chunk_bytes: Payload bytes per message; 0 for the server's default (1 MiB).
            timeout: Seconds for the whole call, resumptions included.

        Raises:
            ResultDigestError: The reassembled result does not match the gateway's digest.
        """
        return self._stream_result(
            _job_name(name.removesuffix("/result")), _deadline(timeout), chunk_bytes
        )

    # -- backends ------------------------------------------------------------------------------

    def list_backends(
        self, *, view: BackendViewLike = "BASIC", timeout: float | None = None
    ) -> list[Backend]:
        """The backends this caller may use, in name order (FULL view: admin callers only,
        else PermissionDeniedError with reason ADMIN_VIEW_DENIED)."""
        request = backend_service_pb2.ListBackendsRequest(view=_backend_view(view))
        backends: list[Backend] = []
        while True:
            response: backend_service_pb2.ListBackendsResponse = self._unary(
                self._backends.ListBackends, request, deadline=_deadline(timeout), retry=True
            )
            backends.extend(Backend.from_proto(b) for b in response.backends)
            if not response.next_page_token:
                return backends
            request.page_token = response.next_page_token

    def get_backend(
        self, name: str, *, view: BackendViewLike = "BASIC", timeout: float | None = None
    ) -> Backend:
        """One backend, by name with or without "backends/" (FULL view: admin callers only,
        else PermissionDeniedError with reason ADMIN_VIEW_DENIED)."""
        response: backend_service_pb2.GetBackendResponse = self._unary(
            self._backends.GetBackend,
            backend_service_pb2.GetBackendRequest(
                name=_backend_name(name), view=_backend_view(view)
            ),
            deadline=_deadline(timeout),
            retry=True,
        )
        return Backend.from_proto(response.backend)

    def get_backend_target(
        self, name: str, *, timeout: float | None = None
    ) -> backend_pb2.BackendTarget:
        """What Qiskit needs to build a Target for a backend ("aer", "backends/aer" or
        "backends/aer/target"); `qgateway.qiskit_target.to_target` turns it into one."""
        response: backend_service_pb2.GetBackendTargetResponse = self._unary(
            self._backends.GetBackendTarget,
            backend_service_pb2.GetBackendTargetRequest(name=_target_name(name)),
            deadline=_deadline(timeout),
            retry=True,
        )
        return response.target


class AsyncClient(JobStubs, AsyncSessionCalls, AsyncTenantCalls):
    """asyncio client (grpc.aio); the same methods as `Client`, as coroutines and async iterators.

    The channel is opened on first use, inside the running event loop.

    Args:
        target: host:port of the gateway.
        credentials: Channel credentials for TLS/mTLS; None for a plaintext channel.
        metadata: Metadata sent with every call.
        retry: How UNAVAILABLE is retried.
        options: gRPC channel options.
        client_spans: Record a CLIENT span per call (needs `qgateway[otel]`).
    """

    def __init__(
        self,
        target: str = DEFAULT_TARGET,
        *,
        credentials: grpc.ChannelCredentials | None = None,
        metadata: Sequence[tuple[str, str]] = (),
        retry: RetryPolicy = DEFAULT_RETRY,
        options: Sequence[tuple[str, Any]] = (),
        client_spans: bool = False,
    ) -> None:
        self.target = target
        self.retry = retry
        self._credentials = credentials
        self._options = _channel_options(options)
        # Trace-context propagation (and client spans): gateway.telemetry docs, `otel` extra.
        self._interceptors = list(telemetry.async_interceptors(client_spans))
        self._metadata = tuple((key, value) for key, value in metadata)
        self._channel: Any = None
        self._loop: asyncio.AbstractEventLoop | None = None  # the channel's
        self._closed = False
        self._jobs_stub: Any = None
        self._backends_stub: Any = None

    @property
    def channel(self) -> Any:
        """The underlying grpc.aio.Channel, opened on first access."""
        if self._closed:
            # Reopening would leave a channel nobody closes.
            raise RuntimeError("this AsyncClient is closed")
        loop = _running_loop()
        if self._channel is not None and loop is not None and loop is not self._loop:
            if self._loop is not None and not self._loop.is_closed():
                raise RuntimeError(
                    "this AsyncClient's channel belongs to another event loop, still running; "
                    "use one client per event loop"
                )
            # Its loop has ended (a second asyncio.run, a notebook cell, a test's own loop):
            # an aio channel cannot move to another loop, and its resources went with it.
            self._channel = None
        if self._channel is None:
            self._loop = loop
            # Opened lazily: an aio channel binds to the event loop current at creation, and a
            # client is often constructed before asyncio.run starts the loop it will be used in.
            if self._credentials is None:
                self._channel = grpc.aio.insecure_channel(
                    self.target, options=self._options, interceptors=self._interceptors or None
                )
            else:
                self._channel = grpc.aio.secure_channel(
                    self.target,
                    self._credentials,
                    options=self._options,
                    interceptors=self._interceptors or None,
                )
            self._jobs_stub = _JobStub(self._channel)
            self._backends_stub = _BackendStub(self._channel)
        return self._channel

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    async def close(self) -> None:
        """Closes the channel; calls in flight are cancelled. The client cannot be used again."""
        self._closed = True
        if self._channel is not None:
            channel, self._channel = self._channel, None
            await channel.close()

    # -- plumbing ------------------------------------------------------------------------------

    async def _unary(
        self,
        method: Any,
        request: Any,
        *,
        deadline: float | None,
        retry: bool,
        request_id: str | None = None,
    ) -> Any:
        attempt = 0
        while True:
            try:
                return await method(request, timeout=_remaining(deadline), metadata=self._metadata)
            except grpc.RpcError as exc:
                err = _tag(from_rpc_error(exc), request_id)
                attempt += _attempts_spent(err)
                delay = _retry_delay(self.retry, err, attempt, deadline) if retry else None
                if delay is None:
                    raise err from exc
            except asyncio.CancelledError as exc:
                _raise_if_closed_under(exc, request_id)
                raise
            await _async_sleep(delay)

    async def _complete(self, job: Job, deadline: float | None) -> Job:
        if job.result is None and job.state is JobState.SUCCEEDED:
            try:
                if job.result_too_large:
                    result = await self._stream_result(job.name, deadline, 0)
                else:
                    result = await self._fetch_result(job.name, deadline)
            except QGatewayError as err:
                if not _is_expired(err):
                    raise
                return replace(job, result_expired=True)
            return replace(job, result=result)
        return job

    async def _fetch_result(self, name: str, deadline: float | None) -> JobResult:
        try:
            response: job_service_pb2.GetJobResultResponse = await self._unary(
                self._jobs.GetJobResult,
                job_service_pb2.GetJobResultRequest(name=f"{_job_name(name)}/result"),
                deadline=deadline,
                retry=True,
            )
        except QGatewayError as err:
            if not _is_too_large(err):
                raise
            return await self._stream_result(name, deadline, 0)
        return JobResult.from_proto(response.result)

    async def _stream_result(
        self, name: str, deadline: float | None, chunk_bytes: int
    ) -> JobResult:
        fetch = _ResultFetch(name, chunk_bytes, self.retry, deadline)
        while True:
            delay: float | None = None
            call = self._jobs.StreamJobResult(
                fetch.request(), timeout=_remaining(deadline), metadata=self._metadata
            )
            try:
                async for response in call:
                    fetch.add(response)
                return fetch.result()
            except grpc.RpcError as exc:
                # Broken after the digest: every message arrived, nothing is left to fetch.
                if fetch.assembler.complete:
                    return fetch.result()
                err = _tag(from_rpc_error(exc), None, fetch.job)
                delay = fetch.retry_delay(err)
                if delay is None:
                    raise err from exc
            except asyncio.CancelledError as exc:
                _raise_if_closed_under(exc, job=fetch.job)
                raise
            finally:
                call.cancel()
            await _async_sleep(delay)

    # -- jobs ----------------------------------------------------------------------------------

    async def run(
        self,
        circuit: CircuitLike,
        *,
        backend: str = "aer",
        shots: int | None = None,
        seed: int | None = None,
        parameter_values: ParameterValues | None = None,
        parameters: ParameterNames | None = None,
        counts_only: bool = False,
        sampler_output: SamplerOutputLike | None = None,
        request_id: str | None = None,
        timeout: float | None = None,
    ) -> JobResult:
        """Runs one circuit and waits for its result; see `Client.run`."""
        job = await self.run_pubs(
            [
                sampler_pub(
                    circuit, shots=shots, parameter_values=parameter_values, parameters=parameters
                )
            ],
            backend=backend,
            seed=seed,
            counts_only=counts_only,
            sampler_output=sampler_output,
            request_id=request_id,
            timeout=timeout,
        )
        return _result_of(job)

    async def estimate(
        self,
        circuit: CircuitLike,
        observables: ObservablesLike,
        *,
        backend: str = "aer",
        parameter_values: ParameterValues | None = None,
        parameters: ParameterNames | None = None,
        precision: float | None = None,
        seed: int | None = None,
        request_id: str | None = None,
        timeout: float | None = None,
    ) -> EstimatorPubResult:
        """Estimates expectation values and waits for the result; see `Client.estimate`."""
        pub = estimator_pub(
            circuit,
            observables,
            parameter_values=parameter_values,
            parameters=parameters,
            precision=precision,
        )
        job = await self.run_pubs(
            [pub], backend=backend, seed=seed, request_id=request_id, timeout=timeout
        )
        return _result_of(job).estimator(0)

    async def run_pubs(
        self,
        pubs: Sequence[PubLike],
        *,
        backend: str = "aer",
        default_shots: int | None = None,
        seed: int | None = None,
        counts_only: bool = False,
        sampler_output: SamplerOutputLike | None = None,
        fallback_backend: str | None = None,
        default_precision: float | None = None,
        labels: Mapping[str, str] | None = None,
        max_execution_time: float | None = None,
        provider_options: Mapping[str, Any] | None = None,
        session: str | None = None,
        primitive: str | None = None,
        request_id: str | None = None,
        timeout: float | None = None,
    ) -> Job:
        """Runs PUBs as one job and returns the finished job; see `Client.run_pubs`."""
        spec = _job_spec(
            pubs,
            backend,
            default_shots,
            seed,
            _sampler_output(sampler_output, counts_only),
            default_precision,
            fallback_backend,
            labels,
            max_execution_time,
            provider_options,
            session,
            primitive,
        )
        rid = _new_request_id(request_id)
        deadline = _deadline(timeout)
        try:
            response: job_service_pb2.RunResponse = await self._unary(
                self._jobs.Run,
                job_service_pb2.RunRequest(request_id=rid, spec=spec),
                deadline=deadline,
                retry=True,
                request_id=rid,
            )
        except DeadlineExceededError as err:
            name = _capped_run(err, deadline)
            if name is None:
                raise
            # The gateway's Run wait limit passed, not our timeout: follow the job instead.
            try:
                return _created_as(
                    err, await self.wait(name, timeout=_remaining(deadline)), request_id
                )
            except QGatewayError as late:
                _tag(late, rid, name)
                raise
        job = _run_job(response, request_id)
        try:
            return await self._complete(job, deadline)
        except QGatewayError as err:
            _tag(err, rid, job.name)
            raise

    async def submit(
        self,
        circuit: CircuitLike,
        *,
        backend: str = "aer",
        shots: int | None = None,
        seed: int | None = None,
        parameter_values: ParameterValues | None = None,
        parameters: ParameterNames | None = None,
        counts_only: bool = False,
        sampler_output: SamplerOutputLike | None = None,
        labels: Mapping[str, str] | None = None,
        session: str | None = None,
        request_id: str | None = None,
        timeout: float | None = None,
    ) -> Job:
        """Submits one circuit and returns the queued job; see `Client.submit`."""
        return await self.submit_pubs(
            [
                sampler_pub(
                    circuit, shots=shots, parameter_values=parameter_values, parameters=parameters
                )
            ],
            backend=backend,
            seed=seed,
            counts_only=counts_only,
            sampler_output=sampler_output,
            labels=labels,
            session=session,
            request_id=request_id,
            timeout=timeout,
        )

    async def submit_pubs(
        self,
        pubs: Sequence[PubLike],
        *,
        backend: str = "aer",
        default_shots: int | None = None,
        seed: int | None = None,
        counts_only: bool = False,
        sampler_output: SamplerOutputLike | None = None,
        fallback_backend: str | None = None,
        default_precision: float | None = None,
        labels: Mapping[str, str] | None = None,
        max_execution_time: float | None = None,
        provider_options: Mapping[str, Any] | None = None,
        session: str | None = None,
        primitive: str | None = None,
        request_id: str | None = None,
        timeout: float | None = None,
    ) -> Job:
        """Submits PUBs as one job without waiting; see `Client.submit_pubs`."""
        spec = _job_spec(
            pubs,
            backend,
            default_shots,
            seed,
            _sampler_output(sampler_output, counts_only),
            default_precision,
            fallback_backend,
            labels,
            max_execution_time,
            provider_options,
            session,
            primitive,
        )
        rid = _new_request_id(request_id)
        response: job_service_pb2.SubmitJobResponse = await self._unary(
            self._jobs.SubmitJob,
            job_service_pb2.SubmitJobRequest(request_id=rid, spec=spec),
            deadline=_deadline(timeout),
            retry=True,
            request_id=rid,
        )
        # Whether this call created the job or got an earlier request's (same request_id).
        return Job.from_proto(response.job, created=_created(response.created, request_id))

    async def validate(
        self,
        pubs: Sequence[PubLike],
        *,
        backend: str = "aer",
        default_shots: int | None = None,
        seed: int | None = None,
        default_precision: float | None = None,
        provider_options: Mapping[str, Any] | None = None,
        session: str | None = None,
        primitive: str | None = None,
        timeout: float | None = None,
    ) -> CostEstimate:
        """Checks PUBs as a submission would and estimates their cost; see `Client.validate`."""
        response: job_service_pb2.SubmitJobResponse = await self._unary(
            self._jobs.SubmitJob,
            _validate_request(
                pubs,
                backend,
                default_shots,
                seed,
                default_precision,
                provider_options,
                session,
                primitive,
            ),
            deadline=_deadline(timeout),
            retry=True,
        )
        return CostEstimate.from_proto(response.cost_estimate)

    async def get_job(
        self, name: str, *, view_basic: bool = False, timeout: float | None = None
    ) -> Job:
        """Gets a job, with its result unless view_basic; see `Client.get_job`."""
        deadline = _deadline(timeout)
        response: job_service_pb2.GetJobResponse = await self._unary(
            self._jobs.GetJob,
            job_service_pb2.GetJobRequest(name=_job_name(name)),
            deadline=deadline,
            retry=True,
        )
        job = Job.from_proto(response.job)
        return job if view_basic else await self._complete(job, deadline)

    async def wait(self, name: str, *, timeout: float | None = None) -> Job:
        """Waits until a job is final and returns it with its result; see `Client.wait`."""
        deadline = _deadline(timeout)
        final: Job | None = None
        # aclosing: leaving an async generator early does not close it (and its call) otherwise.
        async with contextlib.aclosing(self.watch(name, timeout=timeout)) as events:
            async for job in events:
                final = job
                if job.done:
                    break
        if final is None or not final.done:
            raise _watch_ended(_job_name(name))
        return await self.get_job(final.name, timeout=_remaining(deadline))

    async def watch(
        self, name: str, *, timeout: float | None = None, heartbeats: bool = False
    ) -> AsyncGenerator[Job, None]:
        """Follows a job until a final state; see `Client.watch`."""
        request = job_service_pb2.WatchJobRequest(name=_job_name(name))
        deadline = _deadline(timeout)
        attempt = quiet_ends = 0
        last: job_pb2.Job | None = None
        while True:
            delay: float | None = None
            call = self._jobs.WatchJob(
                request, timeout=_remaining(deadline), metadata=self._metadata
            )
            try:
                async for response in call:
                    # Any message shows the stream works: a proxy that cuts every stream after
                    # a while must not use up the retries of a long job's watch.
                    attempt = 0
                    # A repeat (a resumed stream, or a heartbeat with nothing new) is skipped.
                    repeat = last is not None and response.job == last
                    if not repeat:
                        quiet_ends = 0
                    if repeat and not (heartbeats and response.heartbeat):
                        continue
                    last = response.job
                    yield _watched(response)
                # Ended with OK: streams that end so without news count as failed attempts.
                quiet_ends += 1
                delay = _resume_delay(self.retry, last, quiet_ends, deadline, request.name)
                if delay is None:
                    return
            except grpc.RpcError as exc:
                if _shown_final(last):
                    return  # the stream broke after the end it was for (a restart, a proxy)
                err = from_rpc_error(exc)
                attempt += _attempts_spent(err)
                delay = _retry_delay(self.retry, err, attempt, deadline)
                if delay is None:
                    raise err from exc
            except asyncio.CancelledError as exc:
                _raise_if_closed_under(exc, job=request.name)
                raise
            finally:
                call.cancel()
            await _async_sleep(delay)

    async def cancel(self, name: str, *, timeout: float | None = None) -> Job:
        """Asks for a job to be cancelled and returns it at once; see `Client.cancel`."""
        response: job_service_pb2.CancelJobResponse = await self._unary(
            self._jobs.CancelJob,
            job_service_pb2.CancelJobRequest(name=_job_name(name)),
            deadline=_deadline(timeout),
            retry=False,
        )
        return Job.from_proto(response.job)

    async def list_jobs(
        self,
        *,
        filter: str = "",
        states: Iterable[JobState | str | int] = (),
        backend: str = "",
        page_size: int = 0,
        timeout: float | None = None,
    ) -> AsyncIterator[Job]:
        """The tenant's jobs, newest first; see `Client.list_jobs`."""
        request = job_service_pb2.ListJobsRequest(
            page_size=page_size,
            filter=_list_filter(filter, states, backend),
        )
        while True:
            response: job_service_pb2.ListJobsResponse = await self._unary(
                self._jobs.ListJobs, request, deadline=_deadline(timeout), retry=True
            )
            for job in response.jobs:
                yield Job.from_proto(job)
            if not response.next_page_token:
                return
            request.page_token = response.next_page_token

    async def get_result(self, name: str, *, timeout: float | None = None) -> JobResult:
        """The result of a SUCCEEDED job; see `Client.get_result`."""
        return await self._fetch_result(_job_name(name.removesuffix("/result")), _deadline(timeout))

    async def stream_result(
        self, name: str, *, chunk_bytes: int = 0, timeout: float | None = None
    ) -> JobResult:
        """Fetches a job's result with StreamJobResult; see `Client.stream_result`."""
        return await self._stream_result(
            _job_name(name.removesuffix("/result")), _deadline(timeout), chunk_bytes
        )

    # -- backends ------------------------------------------------------------------------------

    async def list_backends(
        self, *, view: BackendViewLike = "BASIC", timeout: float | None = None
    ) -> list[Backend]:
        """The backends this caller may use, in name order (FULL view: admin callers only)."""
        request = backend_service_pb2.ListBackendsRequest(view=_backend_view(view))
        backends: list[Backend] = []
        while True:
            response: backend_service_pb2.ListBackendsResponse = await self._unary(
                self._backends.ListBackends, request, deadline=_deadline(timeout), retry=True
            )
            backends.extend(Backend.from_proto(b) for b in response.backends)
            if not response.next_page_token:
                return backends
            request.page_token = response.next_page_token

    async def get_backend(
        self, name: str, *, view: BackendViewLike = "BASIC", timeout: float | None = None
    ) -> Backend:
        """One backend, by name with or without "backends/" (FULL view: admin callers only)."""
        response: backend_service_pb2.GetBackendResponse = await self._unary(
            self._backends.GetBackend,
            backend_service_pb2.GetBackendRequest(
                name=_backend_name(name), view=_backend_view(view)
            ),
            deadline=_deadline(timeout),
            retry=True,
        )
        return Backend.from_proto(response.backend)

    async def get_backend_target(
        self, name: str, *, timeout: float | None = None
    ) -> backend_pb2.BackendTarget:
        """What Qiskit needs to build a Target for a backend (see `Client.get_backend_target`)."""
        response: backend_service_pb2.GetBackendTargetResponse = await self._unary(
            self._backends.GetBackendTarget,
            backend_service_pb2.GetBackendTargetRequest(name=_target_name(name)),
            deadline=_deadline(timeout),
            retry=True,
        )
        return response.target
