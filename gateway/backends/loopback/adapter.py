"""The loopback backend (entry point "loopback"): a provider-like backend in one module.

It shows that the runner contract fits providers: jobs go to the loopback job service
(`gateway.backends.loopback.service`), a process of its own that outlives the gateway, over a
provider-style REST API, and `LoopbackRunner` is a REMOTE runner:

- `submit` creates the job with the gateway job id as the service's idempotency token
  (`client_token`) and returns the service's id at once, before the job has run;
- `wait` follows the job with long polls (the service answers when the job is final);
- `cancel` cancels at the service;
- `reattach` finds the job after a gateway restart by its stored id, or by the token when the
  gateway died between the create call and storing the id. Creating is idempotent on the
  token, so even a retried create never makes a second job.

The compiler is the Qiskit front end, as for Aer: `compile_circuit` (in compile workers) parses,
validates and transpiles to the service's basis and writes the circuit as OpenQASM 3 (read back
once, so a circuit the service could not read is refused at submission, not failed later);
`prepare` (in the gateway) resolves bindings and shots. The service simulates with Qiskit Aer
and answers per-register bitstrings or counts, which `wait` turns into the gateway's JobResult.
Sampler PUBs only: an estimator PUB is refused with UNSUPPORTED_FEATURE.

Configuration, one block:

    [backends.remote]
    adapter = "loopback"
    options = { url = "http://127.0.0.1:8765" }
"""

from __future__ import annotations

import http.client
import json
import math
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar
from urllib.parse import quote, urlsplit

import anyio
import anyio.to_thread
import numpy as np
import numpy.typing as npt
from pydantic import Field, field_validator
from qiskit import QuantumCircuit, qasm3
from qiskit.transpiler import PassManager, Target, generate_preset_pass_manager

from gateway.backends.base import (
    CIRCUIT_FIELD,
    MAX_COMPILED_CLBITS,
    AdapterContext,
    AdapterOptions,
    BackendAdapter,
    ExecutionOutcome,
    PreparedJob,
    check_compiled_sizes,
    check_types,
)
from gateway.backends.qiskit import frontend as fe
from gateway.backends.qiskit import idle
from gateway.backends.qiskit.qpy_reader import qpy_versions
from gateway.backends.qiskit.target import from_qiskit_target
from gateway.backends.runner import ExecutionModel, RunHandle, Runner, cancelled_error
from gateway.domain import costs
from gateway.domain.backends import BackendInfo, BackendKind, Primitive
from gateway.domain.bitarray import Counts, bits_from_bitstrings, pack_bits, packed_width
from gateway.domain.circuits import CircuitFeature, CircuitSource, SamplerPub
from gateway.domain.costs import JobCost
from gateway.domain.errors import ExecutionError
from gateway.domain.failures import FailureKind
from gateway.domain.jobs import (
    Job,
    JobResult,
    JobSpec,
    RegisterResult,
    SamplerOutput,
    SamplerResult,
)
from gateway.domain.targets import BackendTarget
from gateway.runtime import reply_codec
from gateway.runtime.blocking import run_blocking
from gateway.runtime.retry import RetryPolicy, call_with_retries, is_transient

__all__ = [
    "LoopbackAdapter",
    "LoopbackCircuit",
    "LoopbackHandle",
    "LoopbackOptions",
    "LoopbackPayload",
    "LoopbackRunner",
    "ServiceError",
]

T = TypeVar("T")

# The service's instruction set, like a device's: everything is transpiled to these.
_BASIS = ("x", "sx", "rz", "cx")
_SUPPORTED_FEATURES = frozenset({CircuitFeature.MID_CIRCUIT_MEASUREMENT, CircuitFeature.RESET})
# Jobs up to this many bindings are cheap enough to prepare on the event loop.
_CHEAP_BINDINGS = 1024
# Bumped when the metadata the runner stores with a job changes shape.
_PLAN_VERSION = 1


class LoopbackOptions(AdapterOptions):
    """Options of a loopback backend (its config block's `options`).

    Attributes:
        url: The service, http://127.0.0.1:PORT.
        num_qubits: Qubits the service offers.
        optimization_level: Transpiler optimisation level for the service's basis.
        seed_transpiler: Transpiler seed (compiled circuits are cached per options).
        max_concurrent_jobs: Jobs the gateway keeps at the service at once (the runner's
            capacity).
        max_connections: HTTP calls other than long polls (submit, cancel, reattach, probe)
            in flight at once.
        long_poll_s: How long one wait call lets the service hold the answer.
        request_timeout_s: Socket timeout of a call (a long poll gets its wait on top).
        retry_attempts: Attempts of a call that failed transiently (refused connection, 5xx).
        retry_backoff_s: First backoff between attempts (doubling, jittered).
        max_retry_backoff_s: Longest backoff.
    """

    url: str
    num_qubits: int = Field(default=24, ge=1, le=40)
    optimization_level: int = Field(default=1, ge=0, le=3)
    seed_transpiler: int = Field(default=0, ge=0)
    max_concurrent_jobs: int = Field(default=16, ge=1)
    max_connections: int = Field(default=8, ge=1)
    long_poll_s: float = Field(default=10.0, gt=0, le=60, allow_inf_nan=False)
    request_timeout_s: float = Field(default=10.0, gt=0, allow_inf_nan=False)
    retry_attempts: int = Field(default=4, ge=1)
    retry_backoff_s: float = Field(default=0.2, gt=0, allow_inf_nan=False)
    max_retry_backoff_s: float = Field(default=5.0, gt=0, allow_inf_nan=False)

    @field_validator("url")
    @classmethod
    def _http_url(cls, value: str) -> str:
        parts = urlsplit(value)
        if parts.scheme != "http" or not parts.hostname or parts.port is None:
            raise ValueError("url must be http://HOST:PORT")
        if parts.path not in ("", "/") or parts.query or parts.fragment:
            raise ValueError("url must have no path, query or fragment")
        return value


# --------------------------------------------------------------------------------------------
# Compiled circuits and the prepared payload (picklable, module-level classes).
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True, eq=False)
class LoopbackCircuit:
    """A compiled circuit: the OpenQASM 3 program the service runs, and what `prepare` needs.

    Attributes:
        program: The transpiled circuit as OpenQASM 3.
        parameters: The client circuit's parameter names (Qiskit's order): the columns of
            resolved bindings. The program may have dropped some.
        registers: (name, width) of each classical register, in the program's declaration
            order: the order of the service's answer.
    """

    program: str
    num_qubits: int
    parameters: tuple[str, ...]
    registers: tuple[tuple[str, int], ...]
    layout: tuple[int, ...]
    # Qubits of the circuit as submitted that something acts on (PreparedJob.qubits).
    active_qubits: int
    memory_bytes: int
    operations: int
    shot_by_shot: bool

    def __post_init__(self) -> None:
        # It may come from a compile worker taken over by hostile input (check_compiled_sizes).
        check_compiled_sizes(
            self.num_qubits,
            self.layout,
            active_qubits=self.active_qubits,
            memory_bytes=self.memory_bytes,
            operations=self.operations,
        )
        check_types("program", (self.program,), str)
        check_types("parameters", self.parameters, str)
        check_types("flags", (self.shot_by_shot,), bool)
        check_types("registers", self.registers, tuple)
        for register in self.registers:
            name, width = register
            if (
                type(name) is not str
                or type(width) is not int
                or not 0 <= width <= MAX_COMPILED_CLBITS
            ):
                raise ValueError(f"a compiled circuit's register {register!r}")

    @property
    def nbytes(self) -> int:
        """Its weight in the gateway's compile cache."""
        return len(self.program) + 1024


reply_codec.register(LoopbackCircuit)  # what a compile worker answers


@dataclass(frozen=True, eq=False)
class LoopbackPayload:
    """What `prepare` hands to the runner: the create request, all but its client token.

    `request["metadata"]` is the runner's plan for reading the answer (per PUB its shape, shots
    and registers; the sampler output): the service stores it with the job and returns it, so
    a runner that re-attached after a restart decodes the result without the prepared job.
    """

    request: Mapping[str, Any]


class LoopbackAdapter(BackendAdapter):
    """A backend whose jobs run at the loopback job service (see the module docstring)."""

    options_model = LoopbackOptions
    compiled_type = LoopbackCircuit

    def __init__(self, context: AdapterContext) -> None:
        super().__init__(context)
        if not isinstance(self.options, LoopbackOptions):
            raise TypeError("LoopbackAdapter needs LoopbackOptions")
        self.loopback_options: LoopbackOptions = self.options
        self._lock = threading.Lock()
        self._qiskit_target: Target | None = None
        self._pm: PassManager | None = None
        self._info: BackendInfo | None = None
        self._backend_target: BackendTarget | None = None

    # ---------------------------------------------------------------------------- runner

    def create_runner(self) -> LoopbackRunner:
        return LoopbackRunner(self.context.name, self.loopback_options)

    # ---------------------------------------------------------------------------- info

    def info(self) -> BackendInfo:
        if self._info is None:
            self._info = BackendInfo(
                name=self.context.name,
                provider="loopback",
                kind=BackendKind.SIMULATOR,
                num_qubits=self.loopback_options.num_qubits,
                basis_gates=tuple(sorted(_BASIS)),
                primitives=frozenset({Primitive.SAMPLER}),
                features=_SUPPORTED_FEATURES,
                limits=self.context.limits,
                properties={"execution_model": "remote", "qpy_versions": qpy_versions()},
            )
        return self._info

    def target(self) -> BackendTarget:
        if self._backend_target is None:
            self._backend_target = from_qiskit_target(self._target())
        return self._backend_target

    def _target(self) -> Target:
        if self._qiskit_target is None:
            with self._lock:
                if self._qiskit_target is None:
                    self._qiskit_target = Target.from_configuration(
                        basis_gates=[*_BASIS, "measure", "reset", "delay"],
                        num_qubits=self.loopback_options.num_qubits,
                    )
        return self._qiskit_target

    def _pass_manager(self) -> PassManager:
        if self._pm is None:
            target = self._target()
            with self._lock:
                if self._pm is None:
                    self._pm = generate_preset_pass_manager(
                        optimization_level=self.loopback_options.optimization_level,
                        target=target,
                        seed_transpiler=self.loopback_options.seed_transpiler,
                    )
        return self._pm

    # ---------------------------------------------------------------------------- compile

    def compile_circuit(self, source: CircuitSource) -> LoopbackCircuit:
        field = CIRCUIT_FIELD
        opts = self.loopback_options
        circuit = fe.parse_circuit(
            source,
            self.context.circuit_limits,
            field,
            max_qubits=opts.num_qubits,
            native=self._target().operation_names,
        )
        # The circuit is compiled again for the service's basis: a verbatim box is refused.
        circuit = fe.open_verbatim_boxes(circuit, False, field)
        features = fe.detect_features(circuit)
        fe.check_features(features, _SUPPORTED_FEATURES, field)
        circuit = fe.rename_shadowing_gates(circuit, self._target().operation_names, field)
        memory = fe.statevector_bytes(circuit.num_qubits)
        fe.check_memory(memory, self.context.limits.memory_budget_bytes, "statevector", field)
        # A compile worker compiles one circuit at a time: no lock around the pass manager.
        transpiled: QuantumCircuit = self._pass_manager().run(circuit)
        fe.check_finite_parameters(transpiled, field)
        registers = tuple((name, len(clbits)) for name, clbits in fe.result_registers(transpiled))
        parameters = tuple(p.name for p in circuit.parameters)
        program = qasm3.dumps(transpiled)
        _check_round_trip(program, registers, parameters, field)
        layout = transpiled.layout
        return LoopbackCircuit(
            program=program,
            num_qubits=circuit.num_qubits,
            parameters=parameters,
            registers=registers,
            layout=(
                tuple(range(transpiled.num_qubits))
                if layout is None
                else tuple(int(q) for q in layout.final_index_layout())
            ),
            active_qubits=len(idle.used_qubits(circuit)),
            memory_bytes=memory,
            operations=fe.count_operations(transpiled),
            shot_by_shot=bool(features),
        )

    # ---------------------------------------------------------------------------- prepare

    def prepare(self, spec: JobSpec, seed: int, circuits: Sequence[object]) -> PreparedJob:
        limits = self.context.limits
        output = spec.options.sampler_output
        cost = JobCost(limits.max_job_shots, limits.max_estimator_work, limits.max_execution_work)
        pubs: list[dict[str, Any]] = []
        plans: list[dict[str, Any]] = []
        layouts: list[tuple[int, ...]] = []
        qubits = 0
        peak_memory = 0
        result_bytes = 0
        for index, pub in enumerate(spec.pubs):
            if not isinstance(pub, SamplerPub):
                raise fe.invalid(
                    "UNSUPPORTED_FEATURE",
                    f"backends/{self.context.name} runs sampler PUBs only; it has no estimator",
                    f"spec.pubs[{index}].estimator",
                    feature="estimator",
                )
            base = f"spec.pubs[{index}].sampler"
            circuit_field = f"{base}.circuit.{pub.circuit.language.value}"
            entry = circuits[index]
            if not isinstance(entry, LoopbackCircuit):
                raise TypeError(f"not a loopback circuit: {type(entry).__name__}")
            if not entry.registers:
                raise fe.invalid(
                    "NO_MEASUREMENTS",
                    "the circuit has no classical bits, so a sampler has nothing to return",
                    circuit_field,
                )
            shape = tuple(int(d) for d in pub.bindings.shape)
            costs.bindings_count(shape, limits.max_bindings, f"{base}.parameter_values")
            values = fe.resolve_bindings(pub.bindings, entry.parameters, f"{base}.parameter_values")
            shots, shots_field = costs.pub_shots(
                pub.shots,
                spec.options.default_shots,
                self.context.default_shots,
                limits.max_shots,
                base,
            )
            bindings = math.prod(shape)
            cost.add_shots(bindings, shots, shots_field)
            cost.add_execution(
                costs.simulation_work(
                    entry.operations, 1 << entry.num_qubits, bindings, shots, entry.shot_by_shot
                ),
                base,
            )
            size = fe.sampler_result_bytes(
                [width for _, width in entry.registers],
                bindings,
                shots,
                output,
                name_bytes=sum(len(name.encode()) for name, _ in entry.registers),
            )
            fe.check_result_size(size, limits.max_result_bytes, f"spec.pubs[{index}]")
            result_bytes += size
            rows = values.reshape(bindings, len(entry.parameters)).tolist()
            pubs.append(
                {
                    "program": entry.program,
                    "shots": shots,
                    "seed": costs.derive_seed(seed, index, "sampler"),
                    "parameters": list(entry.parameters),
                    "parameter_values": rows,
                }
            )
            plans.append(
                {
                    "shape": list(shape),
                    "shots": shots,
                    "registers": [[name, width] for name, width in entry.registers],
                }
            )
            layouts.append(entry.layout)
            qubits = max(qubits, entry.active_qubits)
            peak_memory = max(peak_memory, entry.memory_bytes)
        fe.check_result_size(result_bytes, limits.max_result_bytes, "spec.pubs")
        request = {
            "pubs": pubs,
            # Per-shot bitstrings only when the job wants samples; counts are counted remotely.
            "memory": output.samples,
            "metadata": {"v": _PLAN_VERSION, "sampler_output": output.value, "pubs": plans},
        }
        return PreparedJob(
            payload=LoopbackPayload(request),
            memory_bytes=peak_memory,
            layouts=tuple(layouts),
            shots=cost.shots,
            qubits=qubits,
        )

    def prepare_is_cheap(self, spec: JobSpec) -> bool:
        return sum(math.prod(p.bindings.shape) for p in spec.pubs) <= _CHEAP_BINDINGS

    def execute(self, payload: object) -> ExecutionOutcome:
        """Not used: loopback jobs run at the service, through `create_runner`'s runner."""
        raise NotImplementedError("loopback jobs run at the loopback service (LoopbackRunner)")


def _check_round_trip(
    program: str, registers: Sequence[tuple[str, int]], parameters: Sequence[str], field: str
) -> None:
    """UNSUPPORTED_FEATURE unless the service will read `program` back as the same circuit:
    its registers in the same order and widths (the answer is read by position), and only
    parameters the client's circuit has."""
    try:
        loaded = qasm3.loads(program)
    except Exception as exc:
        raise fe.invalid(
            "UNSUPPORTED_FEATURE",
            "this circuit cannot be sent to the backend as OpenQASM 3 "
            f"({type(exc).__name__}: {str(exc)[:200]})",
            field,
            feature="openqasm3_export",
        ) from None
    widths = [len(register) for register in loaded.cregs]
    if widths != [width for _, width in registers] or loaded.num_clbits != sum(widths):
        raise fe.invalid(
            "UNSUPPORTED_FEATURE",
            "this circuit's classical registers (overlapping or aliased bits) cannot be sent to "
            "the backend as OpenQASM 3",
            field,
            feature="openqasm3_export",
        )
    unknown = sorted({p.name for p in loaded.parameters} - set(parameters))
    if unknown:
        raise fe.invalid(
            "UNSUPPORTED_FEATURE",
            f"parameter names {unknown[:5]} do not survive OpenQASM 3 export to the backend",
            field,
            feature="openqasm3_export",
        )


# --------------------------------------------------------------------------------------------
# The runner: HTTP calls to the service, off the event loop.
# --------------------------------------------------------------------------------------------


class ServiceError(Exception):
    """An HTTP error answer of the service. `status_code` lets the retry policy judge it
    (429 and 5xx are transient, any other status is a definite answer)."""

    def __init__(self, status_code: int, message: str) -> None:
        super().__init__(f"HTTP {status_code}: {message}")
        self.status_code = status_code


class _Http:
    """One HTTP/1.0-style call per connection: nothing to pool against a local service, and a
    call abandoned by a cancelled wait leaves no half-used connection behind."""

    def __init__(self, url: str) -> None:
        parts = urlsplit(url)
        assert parts.hostname is not None and parts.port is not None  # checked by the options
        self.host = parts.hostname
        self.port = parts.port

    def call(
        self, method: str, path: str, body: object = None, *, timeout: float
    ) -> tuple[int, Any]:
        """(status, decoded JSON) for 2xx and 4xx answers.

        Raises:
            ServiceError: a 5xx or 429 answer.
            OSError: the connection failed (refused, reset, timed out).
        """
        connection = http.client.HTTPConnection(self.host, self.port, timeout=timeout)
        try:
            data = None if body is None else json.dumps(body, separators=(",", ":")).encode()
            headers = {"Content-Type": "application/json"} if data is not None else {}
            connection.request(method, path, body=data, headers=headers)
            response = connection.getresponse()
            raw = response.read()
        finally:
            connection.close()
        status = response.status
        try:
            payload = json.loads(raw) if raw else None
        except ValueError:
            payload = None
        if status == 429 or status >= 500:
            message = payload.get("error", "") if isinstance(payload, dict) else ""
            raise ServiceError(status, str(message)[:200])
        return status, payload


class LoopbackHandle(RunHandle):
    """A job at the service: `remote_id` is the service's job id (never None)."""

    def __init__(self, job_id: str, remote_id: str) -> None:
        super().__init__(job_id, remote_id)


class LoopbackRunner(Runner):
    """The REMOTE runner of a loopback backend (see the module docstring).

    Every call to the service runs in a thread (anyio, with limiters: long polls take
    `max_concurrent_jobs` threads at most, other calls `max_connections`) and is retried under
    the backend's RetryPolicy while it fails transiently. Retrying a create is safe: the
    service answers a repeated client token with the job it already has.

    Failures, as ExecutionError kinds: the service unreachable or answering 5xx after the
    retries, TRANSIENT (PROVIDER_ERROR); a job FAILED at the service, or an answer the runner
    cannot read, BACKEND_FAULT (EXECUTION_FAILED); a job CANCELLED at the service, CANCELLED.
    Errors about a job carry its service id as metadata "providerJobId".
    """

    model = ExecutionModel.REMOTE

    def __init__(
        self,
        name: str,
        options: LoopbackOptions,
        *,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.name = name
        self.options = options
        self._http = _Http(options.url)
        self._policy = RetryPolicy(
            max_attempts=options.retry_attempts,
            initial_backoff_s=min(options.retry_backoff_s, options.max_retry_backoff_s),
            max_backoff_s=options.max_retry_backoff_s,
        )
        self._sleep = sleep
        self._calls = anyio.CapacityLimiter(options.max_connections)
        self._waits = anyio.CapacityLimiter(options.max_concurrent_jobs)

    @property
    def capacity(self) -> int:
        return self.options.max_concurrent_jobs

    # ------------------------------------------------------------------------- contract

    async def submit(self, prepared: PreparedJob, job: Job) -> LoopbackHandle:
        payload = prepared.payload
        if not isinstance(payload, LoopbackPayload):
            raise TypeError(f"not a loopback payload: {type(payload).__name__}")
        body = {"client_token": job.id, **payload.request}
        status, view = await self._run(lambda: self._call("POST", "/v1/jobs", body), self._calls)
        if status not in (200, 201) or not isinstance(view, dict):
            raise self._fault(f"the service refused the job (HTTP {status}): {_error(view)}")
        return LoopbackHandle(job.id, self._remote_id(view))

    async def wait(self, handle: RunHandle) -> ExecutionOutcome:
        remote_id = self._handle_id(handle)
        while True:
            outcome = await self._run(lambda: self._poll(remote_id), self._waits)
            if outcome is not None:
                return outcome

    async def cancel(self, handle: RunHandle) -> None:
        remote_id = self._handle_id(handle)
        status, view = await self._run(
            lambda: self._call("POST", f"/v1/jobs/{quote(remote_id)}/cancel", None, remote_id),
            self._calls,
        )
        if status not in (200, 404):  # 404: nothing there to cancel
            raise self._fault(f"cancel answered HTTP {status}: {_error(view)}", remote_id)

    async def reattach(self, job: Job, remote_id: str | None) -> LoopbackHandle | None:
        if remote_id is not None:
            path = f"/v1/jobs/{quote(remote_id)}"
        else:
            # The gateway died between the create call and storing the id: the token finds it.
            path = f"/v1/jobs?client_token={quote(job.id)}"
        status, view = await self._run(
            lambda: self._call("GET", path, None, remote_id), self._calls
        )
        if status == 404:
            return None
        if status != 200 or not isinstance(view, dict):
            raise self._fault(f"looking up job {job.id} answered HTTP {status}", remote_id)
        if view.get("client_token") != job.id:
            raise self._fault(
                f"service job {view.get('id')!r} belongs to {view.get('client_token')!r}, "
                f"not to {job.id!r}",
                remote_id,
            )
        return LoopbackHandle(job.id, self._remote_id(view))

    async def probe(self, prepared: PreparedJob, timeout: float) -> None:
        """Asks the service for its stats (free, unlike running a job); one attempt."""

        def ask() -> None:
            try:
                status, _ = self._http.call("GET", "/v1/stats", timeout=timeout)
            except Exception as exc:
                raise self._provider_error(exc, None) from exc
            if status != 200:
                raise self._fault(f"GET /v1/stats answered HTTP {status}")

        with anyio.fail_after(timeout):
            await run_blocking(ask, self._calls)

    # ------------------------------------------------------------------------- plumbing

    async def _run(self, fn: Callable[[], T], limiter: anyio.CapacityLimiter) -> T:
        # A cancelled wait returns at once; its long poll ends by itself, holding its slot.
        return await run_blocking(fn, limiter)

    def _call(
        self,
        method: str,
        path: str,
        body: object = None,
        remote_id: str | None = None,
        *,
        timeout: float | None = None,
    ) -> tuple[int, Any]:
        """One call with retries, blocking; failures as ExecutionError."""
        seconds = self.options.request_timeout_s if timeout is None else timeout
        try:
            return call_with_retries(
                lambda: self._http.call(method, path, body, timeout=seconds),
                policy=self._policy,
                sleep=self._sleep,
            )
        except Exception as exc:
            raise self._provider_error(exc, remote_id) from exc

    def _poll(self, remote_id: str) -> ExecutionOutcome | None:
        """One long poll: the outcome once the job is final, None while it is not."""
        wait_s = self.options.long_poll_s
        status, view = self._call(
            "GET",
            f"/v1/jobs/{quote(remote_id)}?wait={wait_s:g}",
            None,
            remote_id,
            timeout=wait_s + self.options.request_timeout_s,
        )
        if status == 404:
            raise self._fault(f"the service no longer has job {remote_id}", remote_id)
        if status != 200 or not isinstance(view, dict):
            raise self._fault(f"GET job answered HTTP {status}: {_error(view)}", remote_id)
        state = view.get("status")
        if state == "DONE":
            try:
                return _outcome(view)
            except (KeyError, TypeError, ValueError) as exc:
                message = f"unreadable result: {type(exc).__name__}: {exc}"
                raise self._fault(message, remote_id) from None
        if state == "FAILED":
            raise self._fault(f"the job failed at the service: {_error(view)}", remote_id)
        if state == "CANCELLED":
            cancelled = cancelled_error(f"the job was cancelled at backends/{self.name}")
            cancelled.metadata["providerJobId"] = remote_id
            raise cancelled
        return None

    def _provider_error(self, exc: BaseException, remote_id: str | None) -> ExecutionError:
        if isinstance(exc, ExecutionError):
            return exc
        metadata = {"providerJobId": remote_id} if remote_id else {}
        if is_transient(exc):
            return ExecutionError(
                "PROVIDER_ERROR",
                f"backends/{self.name}: the job service did not answer "
                f"({type(exc).__name__}: {exc})"[:500],
                kind=FailureKind.TRANSIENT,
                metadata=metadata,
            )
        return ExecutionError(
            "EXECUTION_FAILED",
            f"backends/{self.name}: {type(exc).__name__}: {exc}"[:500],
            kind=FailureKind.BACKEND_FAULT,
            metadata=metadata,
        )

    def _fault(self, message: str, remote_id: str | None = None) -> ExecutionError:
        return ExecutionError(
            "EXECUTION_FAILED",
            f"backends/{self.name}: {message}"[:500],
            kind=FailureKind.BACKEND_FAULT,
            metadata={"providerJobId": remote_id} if remote_id else {},
        )

    def _remote_id(self, view: Mapping[str, Any]) -> str:
        remote_id = view.get("id")
        if not isinstance(remote_id, str) or not remote_id:
            raise self._fault("the service answered without a job id")
        return remote_id

    def _handle_id(self, handle: RunHandle) -> str:
        if handle.remote_id is None:
            raise TypeError(f"{handle!r} has no service id")
        return handle.remote_id


def _error(view: object) -> str:
    if isinstance(view, dict):
        error = view.get("error")
        if isinstance(error, dict):
            return str(error.get("message", error))[:300]
        if error is not None:
            return str(error)[:300]
    return "no detail"


# --------------------------------------------------------------------------------------------
# Reading the service's answer.
# --------------------------------------------------------------------------------------------


def _bits(strings: Sequence[str], width: int) -> npt.NDArray[np.uint8]:
    """One register's bitstrings (character 0 = its highest bit) as packed rows."""
    if any(len(s) != width for s in strings):
        raise ValueError(f"a bitstring is not {width} bits long")
    # Columns come out bit 0 first; pack_bits wants the highest bit first.
    bits = bits_from_bitstrings(strings, width)[:, ::-1]
    return pack_bits(np.ascontiguousarray(bits)).reshape(len(strings), packed_width(width))


def _outcome(view: Mapping[str, Any]) -> ExecutionOutcome:
    """The JobResult of a DONE job, read with the plan stored in its metadata."""
    plan = view["metadata"]
    result = view["result"]
    if plan.get("v") != _PLAN_VERSION:
        raise ValueError(f"metadata version {plan.get('v')!r}")
    output = SamplerOutput(plan["sampler_output"])
    pubs = []
    for pub_plan, pub_result in zip(plan["pubs"], result["pubs"], strict=True):
        shape = tuple(int(d) for d in pub_plan["shape"])
        shots = int(pub_plan["shots"])
        size = math.prod(shape)
        registers = []
        for (name, width), answer in zip(
            pub_plan["registers"], pub_result["registers"], strict=True
        ):
            if int(answer["num_bits"]) != width:
                raise ValueError(f"register {name!r}: {answer['num_bits']} bits, expected {width}")
            samples = None
            counts: tuple[Counts, ...] = ()
            if output.samples:
                memory = answer["memory"]
                if len(memory) != size or any(len(m) != shots for m in memory):
                    raise ValueError(f"register {name!r}: memory of the wrong shape")
                per_binding = [_bits(m, width) for m in memory]
                nbytes = packed_width(width)
                stacked = np.stack(per_binding) if per_binding else np.zeros((0, shots, nbytes))
                samples = stacked.astype(np.uint8).reshape((*shape, shots, nbytes))
                if output.counts:
                    counts = tuple(Counts.from_rows(rows, width) for rows in per_binding)
            else:
                listed = answer["counts"]
                if len(listed) != size:
                    raise ValueError(f"register {name!r}: counts of {len(listed)} bindings")
                if any(len(key) != width for c in listed for key in c):
                    raise ValueError(f"register {name!r}: a counted bitstring is not {width} bits")
                counts = tuple(Counts.from_dict(c, width) for c in listed)
            registers.append(RegisterResult(name, width, samples, counts))
        pubs.append(SamplerResult(shape=shape, shots=shots, registers=tuple(registers)))
    versions = {str(k): str(v) for k, v in dict(result.get("versions", {})).items()}
    return ExecutionOutcome(
        result=JobResult(pubs=tuple(pubs)), sdk_versions={"loopback-service": "1", **versions}
    )
