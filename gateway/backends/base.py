"""The adapter contract every backend implements.

An adapter lives in three kinds of process. In compile workers (killable processes with CPU,
wall-time and memory limits), `compile_circuit` parses, validates, transpiles and estimates one
client circuit: untrusted text never reaches the gateway's serving process. In the gateway,
`prepare` assembles a job from the compiled circuits and the request's bindings, observables and
shots: linear-time, bounded work. In simulator workers, `execute` runs the prepared payload.
What the gateway sends a worker is pickled; what a worker sends back (a compiled circuit, an
outcome) is data that `gateway.runtime.reply_codec` can carry: dataclasses it has registered.
"""

from __future__ import annotations

import hashlib
import json
import re
from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar

from pydantic import BaseModel, ConfigDict, ValidationError

from gateway.domain.backends import BackendInfo, BackendLimits
from gateway.domain.circuits import Bindings, CircuitLanguage, CircuitSource, SamplerPub
from gateway.domain.errors import FieldViolation, InvalidArgument
from gateway.domain.jobs import JobResult, JobSpec
from gateway.domain.targets import BackendTarget

if TYPE_CHECKING:
    # runner.py imports this module: only the annotation needs it.
    from gateway.backends.runner import Runner


class TargetUnavailable(Exception):
    """A backend whose description (its target) lives at its provider could not fetch it now:
    the network, the provider or the key failed. `info()`, `target()` and `compile_circuit`
    raise it until a fetch succeeds; its message names the cause without secrets (callers
    may see it)."""


@dataclass(frozen=True)
class CircuitLimits:
    """Limits on one circuit, checked from its text and parsed structure before it is built or
    transpiled. Time and memory are the compile worker's limits (CompileLimits)."""

    max_source_bytes: int = 1 << 20
    # Gate applications after unrolling every gate definition; counted without unrolling.
    max_operations: int = 250_000
    # Declared classical bits: the importer allocates every one before anything else can refuse.
    max_clbits: int = 100_000
    # Operations that exist only inside user gate definitions, once unrolled. Transpiling pays
    # ~150 us and ~15 KB for each (the pass manager deep-copies every definition instance), so
    # this bounds compile cost where max_operations alone allows minutes.
    max_definition_operations: int = 20_000


@dataclass(frozen=True)
class AdapterContext:
    """Everything an adapter instance is built from (picklable, sent to workers)."""

    name: str
    limits: BackendLimits
    default_shots: int
    circuit_limits: CircuitLimits
    options: Mapping[str, Any] = field(default_factory=dict)
    # OS memory limit (RLIMIT_DATA) for each worker process running this adapter.
    worker_memory_bytes: int | None = None
    # The backend's target as the gateway fetched it from the provider (pickled by the
    # adapter): compile workers use it instead of asking the provider again.
    target_data: bytes | None = None


@dataclass(frozen=True, eq=False)
class PreparedJob:
    """A validated job, ready for `execute`.

    Attributes:
        payload: Picklable input for `execute`.
        memory_bytes: Estimated peak simulation memory.
        layouts: Per PUB, the physical qubit of each virtual qubit.
        prepare_seconds: Time the gateway spent compiling (in compile workers; cache hits are
            near zero) and preparing; the gateway sets it, adapters leave it 0.
        max_run_time_s: The job's own run-time limit (JobOptions.max_execution_time), which
            the backend's max_run_time_s caps; the gateway sets it, adapters leave it None.
        shots: Shots the job runs (bindings x shots over its sampler PUBs), for its usage.
        tasks: Provider tasks the job runs as, each billed the price's per_task (Braket: one
            per PUB binding); the adapter sets it.
        has_while_loop: A circuit has a `while` loop, whose iterations are unknown until it
            runs: the backend's max_loop_run_time_s bounds it on a simulator.
        qubits: The most qubits one PUB's circuit acts on, as submitted (a tenant's
            max_qubits counts these): an ISA circuit is as wide as its device, however few of
            its qubits it uses.
    """

    payload: object
    memory_bytes: int
    layouts: tuple[tuple[int, ...], ...]
    shots: int = 0
    tasks: int = 1
    prepare_seconds: float = 0.0
    max_run_time_s: float | None = None
    has_while_loop: bool = False
    qubits: int = 0


@dataclass(frozen=True, eq=False)
class ExecutionOutcome:
    """A finished run. `provider_cost`/`provider_unit`: what a provider billed for it, where it
    reports that; `execution_seconds`: its own measure of execution (QPU) time, if any."""

    result: JobResult
    sdk_versions: Mapping[str, str]
    # False when the job's seed could not be applied (its shots are not reproducible): the
    # job then reports no seed.
    seeded: bool = True
    provider_cost: float | None = None
    provider_unit: str = ""
    execution_seconds: float | None = None
    # Provider tasks it ran as, where the runner knows (a re-attached job has no prepared job).
    tasks: int | None = None


# The field a compile error names; the compiler rewrites it to the PUB's circuit field (the same
# compiled circuit, and so the same cached error, can serve any PUB of any request).
CIRCUIT_FIELD = "circuit"

# A compiled circuit is built in a compile worker, which ran client input, and read back in the
# gateway, where admission trusts its sizes; a worker taken over could send anything (a 94-byte
# reply declaring 2^33 qubits held the event loop for 16 s and 4.4 GB, and negative costs
# cancelled other PUBs' against the limits). So compiled circuits check what they hold when
# they are built, on both sides. The bounds are far above any backend's.
MAX_COMPILED_QUBITS = 1 << 16
MAX_COMPILED_CLBITS = 1 << 20


def check_compiled_sizes(
    num_qubits: int, layout: tuple[int, ...], *, active_qubits: int, **counts: int
) -> None:
    """Raises ValueError unless num_qubits, active_qubits and every count are non-negative
    ints (num_qubits at most MAX_COMPILED_QUBITS, active_qubits at most num_qubits) and layout
    is one distinct qubit index per circuit qubit."""
    for name, value in {"num_qubits": num_qubits, "active_qubits": active_qubits, **counts}.items():
        if type(value) is not int or value < 0:
            raise ValueError(f"a compiled circuit with {name} = {value!r}")
    if num_qubits > MAX_COMPILED_QUBITS:
        raise ValueError(f"a compiled circuit of {num_qubits} qubits")
    if active_qubits > num_qubits:
        raise ValueError(f"a compiled circuit using {active_qubits} of its {num_qubits} qubits")
    if (
        type(layout) is not tuple
        or len(layout) != num_qubits
        or not all(type(q) is int and 0 <= q < MAX_COMPILED_QUBITS for q in layout)
        or len(set(layout)) != num_qubits
    ):
        raise ValueError("a compiled circuit's layout is not one distinct qubit per qubit")


def check_types(what: str, values: Sequence[object], kind: type | tuple[type, ...]) -> None:
    """Raises ValueError unless `values` is a tuple of `kind`."""
    if type(values) is not tuple or not all(isinstance(v, kind) for v in values):
        raise ValueError(f"a compiled circuit's {what} are not all {kind}")


class AdapterOptions(BaseModel):
    """Base of adapter-specific options: a typo in the config is an error."""

    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)


class ProviderOptions(BaseModel):
    """Base of a backend's JobOptions.provider_options schema: unknown keys are refused.

    The base declares no option, so a backend that does not override `provider_options_model`
    refuses every key. Values arrive as JSON values (numbers as floats).
    """

    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)


_OPTION_KEY = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,62}")
# Field violations reported for one job's provider_options (the rest are like them).
_MAX_OPTION_VIOLATIONS = 16


def _option_path(field: str, loc: Sequence[int | str]) -> str:
    path = field
    for part in loc:
        if isinstance(part, int):
            path += f"[{part}]"
        elif _OPTION_KEY.fullmatch(part):
            path += f".{part}"
        else:
            path += "[" + json.dumps(part[:64] + ("..." if len(part) > 64 else "")) + "]"
    return path


class BackendAdapter(ABC):
    """One backend. Subclasses are registered under the "qgateway.backends" entry-point group."""

    options_model: ClassVar[type[AdapterOptions]] = AdapterOptions
    # What compile_circuit returns: a compile worker's answer of any other type is refused.
    compiled_type: ClassVar[type] = object
    # The schema of JobOptions.provider_options on this backend (default: no option at all).
    provider_options_model: ClassVar[type[ProviderOptions]] = ProviderOptions

    def __init__(self, context: AdapterContext) -> None:
        self.context = context
        self.options = self.options_model.model_validate(dict(context.options))

    def validate_provider_options(
        self, options: Mapping[str, object], field: str
    ) -> ProviderOptions:
        """A job's provider_options checked against `provider_options_model`.

        Runs in the gateway process on options already bounded in size and depth at the API
        edge. Raises InvalidArgument INVALID_PROVIDER_OPTIONS with one field violation per
        problem (an unknown key names the key).
        """
        try:
            return self.provider_options_model.model_validate(dict(options))
        except ValidationError as exc:
            errors = exc.errors(include_url=False, include_input=False)
        violations = []
        for error in errors[:_MAX_OPTION_VIOLATIONS]:
            path = _option_path(field, error["loc"])
            if error["type"] == "extra_forbidden":
                description = f"backends/{self.context.name} has no provider option here"
            else:
                description = str(error["msg"])
            violations.append(FieldViolation(path, description))
        first = violations[0]
        raise InvalidArgument(
            "INVALID_PROVIDER_OPTIONS",
            f"{first.field}: {first.description}",
            metadata={"backend": f"backends/{self.context.name}", "field": first.field},
            field_violations=violations,
        )

    @abstractmethod
    def info(self) -> BackendInfo:
        """Static description of the backend.

        Raises:
            TargetUnavailable: the description must be fetched from the provider and that
                failed (the gateway serves without the backend and fetches again).
        """

    def compile_context(self) -> AdapterContext:
        """The context compile workers build this backend's adapter from: its own, plus
        whatever it fetched that they would otherwise fetch each (`target_data`)."""
        return self.context

    def info_without_target(self) -> BackendInfo:
        """What is known before the provider describes the backend (its name, provider, kind
        and limits): shown while `info()` raises TargetUnavailable. Only adapters whose
        target is fetched need it."""
        raise NotImplementedError(f"{type(self).__name__} fetches no target")

    @abstractmethod
    def target(self) -> BackendTarget:
        """What a transpiler needs to build circuits for this backend (GetBackendTarget).

        Filled from the backend's own data, listing only instructions the gateway accepts on
        it. Runs in the gateway process, off the event loop; the gateway asks once and keeps
        the answer, so an adapter may take its time (import its SDK, ask its provider).
        """

    def circuit_key(self, source: CircuitSource) -> str:
        """The compile cache key: the source's digest and everything compiling depends on.

        Linear in the source size; runs in the gateway process.
        """
        # The client's bytes: QPY as sent, text as UTF-8 (the language prefix keeps them apart).
        digest = hashlib.sha256(source.payload).hexdigest()
        return f"{source.language.value}:{digest}:{self._fingerprint}"

    @property
    def _fingerprint(self) -> str:
        fingerprint: str | None = self.__dict__.get("_compile_fingerprint")
        if fingerprint is None:
            context = self.context
            basis = repr(
                (
                    type(self).__qualname__,
                    self.options.model_dump_json(),
                    context.limits,
                    context.circuit_limits,
                )
            )
            fingerprint = hashlib.sha256(basis.encode()).hexdigest()[:16]
            self.__dict__["_compile_fingerprint"] = fingerprint
        return fingerprint

    @abstractmethod
    def compile_circuit(self, source: CircuitSource) -> object:
        """Parses, validates, transpiles and estimates one circuit; returns a dataclass
        registered with `reply_codec`, which checks what it holds when it is built (it is
        rebuilt in the gateway from what the worker sent: check_compiled_sizes).

        Runs in a compile worker, on untrusted text: the worker's limits bound it. Client errors
        are InvalidArgument whose field violations name CIRCUIT_FIELD.
        """

    @abstractmethod
    def prepare(self, spec: JobSpec, seed: int, circuits: Sequence[object]) -> PreparedJob:
        """Assembles a job from `circuits[i]`, the compiled circuit of `spec.pubs[i]`.

        Runs in the gateway process (in a thread unless `prepare_is_cheap`): only bounded,
        linear-time checks of bindings, observables, shots and sizes. Raises GatewayError
        subclasses.
        """

    def prepare_is_cheap(self, spec: JobSpec) -> bool:
        """True when `prepare(spec)` takes microseconds, so the gateway may call it on the
        event loop instead of paying for a thread hand-off."""
        return False

    @abstractmethod
    def execute(self, payload: object) -> ExecutionOutcome:
        """Runs a prepared payload; raises ExecutionError on a backend failure.

        For simulators this runs inside a worker process.
        """

    def create_runner(self) -> Runner | None:
        """The backend's own runner, built in the gateway process by the composition root.

        None (the default): a LOCAL backend whose `execute` runs on the gateway's supervised
        worker pool. A backend that runs jobs elsewhere (a provider: ExecutionModel.REMOTE)
        returns its runner, and `execute` is never called.
        """
        return None

    def warm_up(self) -> None:  # noqa: B027 - optional hook with a no-op default
        """Imports and builds what execute needs, so the first job is not slow."""

    def warm_up_compiler(self) -> None:
        """Imports and builds what compile_circuit needs (both OpenQASM readers, the
        transpiler), so a compile worker's first client circuit is not the one that pays."""
        self.compile_circuit(self.probe_spec().pubs[0].circuit)
        self.compile_circuit(
            CircuitSource(
                CircuitLanguage.QASM3,
                'OPENQASM 3.0;\ninclude "stdgates.inc";\nqubit[1] q;\nbit[1] c;\nx q[0];\n'
                "c = measure q;\n",
            )
        )

    def probe_spec(self) -> JobSpec:
        """A tiny job: compiled when compile workers start (so the first client does not pay
        for transpiler set-up) and run by health probes."""
        circuit = CircuitSource(
            CircuitLanguage.QASM2,
            'OPENQASM 2.0;\ninclude "qelib1.inc";\nqreg q[1];\ncreg c[1];\nx q[0];\n'
            "measure q -> c;\n",
        )
        return JobSpec(backend=self.context.name, pubs=(SamplerPub(circuit, Bindings(), shots=1),))
