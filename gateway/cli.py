"""The `qgateway` command: run the server, or talk to one.

    qgateway serve [--config FILE]
    qgateway keys create --tenant T [--role R] [--expires-in-days N] | keys list | keys revoke NAME
    qgateway keys toml --tenant T      (offline: a key and its [[auth.api_keys]] entry)
    qgateway backends
    qgateway run FILE --backend aer --shots 1024 [--seed S] [--sampler-output counts] [--json]
    qgateway jobs list [--filter F] [--state S ...] [--backend B] [--limit N]
    qgateway jobs get NAME [--result] [--json] | jobs watch NAME | jobs cancel NAME

Errors are one line on stderr (`error: CODE REASON: message`, field violations indented below)
and exit status 1; a traceback would only bury the message.
"""

from __future__ import annotations

import argparse
import itertools
import json
import math
import os
import re
import signal
import sys
import uuid
from collections.abc import Callable, Mapping, Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, TextIO

from qgateway import (
    AbortedError,
    Backend,
    Client,
    DeadlineExceededError,
    EstimatorPubResult,
    Job,
    JobFailedError,
    JobResult,
    JobState,
    PubLike,
    QGatewayError,
    RegisterData,
    RetryPolicy,
    UnavailableError,
    estimator_pub,
    sampler_pub,
    tls_credentials,
)

from gateway import audit_tool, store_tool
from gateway.security.peers import is_loopback_host

ENV_TARGET = "QGATEWAY_TARGET"
ENV_API_KEY = "QGATEWAY_API_KEY"
DEFAULT_TARGET = "127.0.0.1:50051"
#: Retries of UNAVAILABLE for CLI calls (tests shorten it).
CLI_RETRY = RetryPolicy()
# `run` and `jobs watch`: the job ended FAILED or CANCELLED (1 is a call that failed: bad input,
# an unreachable gateway), so a script can tell the two apart.
JOB_NOT_SUCCEEDED = 3
#: Outcomes shown per counts table unless --top says otherwise.
DEFAULT_TOP = 64


class CliError(Exception):
    """A user-facing failure reported as one `error: ...` line."""


# --- Formatting (pure functions, unit-tested) -------------------------------------------------


def format_table(
    headers: Sequence[str], rows: Sequence[Sequence[str]], *, right: Sequence[int] = ()
) -> str:
    """Aligned columns separated by two spaces; columns listed in `right` are right-aligned."""
    widths = [len(h) for h in headers]
    for row in rows:
        for i, cell in enumerate(row):
            widths[i] = max(widths[i], len(cell))

    def line(cells: Sequence[str]) -> str:
        out = [
            cell.rjust(widths[i]) if i in right else cell.ljust(widths[i])
            for i, cell in enumerate(cells)
        ]
        return "  ".join(out).rstrip()

    return "\n".join([line(headers), *(line(row) for row in rows)])


def format_counts(
    counts: Mapping[str, int],
    *,
    title: str = "",
    width: int = 40,
    bar: str = "#",
    top: int = 0,
) -> str:
    """A counts table sorted by count (then outcome) with a text histogram.

    Args:
        counts: Outcome -> shots.
        title: A line printed above the table.
        width: Characters of the longest bar.
        bar: The bar character.
        top: Show at most this many outcomes (0: all), then a line saying what was left out.
    """
    total = sum(counts.values())
    ordered = sorted(counts.items(), key=lambda item: (-item[1], item[0]))
    shown = ordered[:top] if top > 0 else ordered
    peak = ordered[0][1] if ordered else 0
    rows = []
    for outcome, n in shown:
        length = round(width * n / peak) if peak else 0
        # Every observed outcome gets a visible bar, however rare.
        length = max(length, 1) if n > 0 else 0
        share = n / total if total else 0.0
        rows.append([outcome, str(n), f"{share:.4f}", bar * length])
    lines = [title] if title else []
    lines.append(format_table(["outcome", "count", "prob", "histogram"], rows, right=(1, 2)))
    if len(shown) < len(ordered):
        rest = ordered[len(shown) :]
        lines.append(
            f"... {len(rest)} more outcomes ({sum(n for _, n in rest)} shots) not shown; "
            "use --top 0 or --json"
        )
    return "\n".join(lines)


def format_register(
    register: RegisterData, *, index: int = 0, bar: str = "#", top: int = 0, label: str = ""
) -> str:
    """A register's counts table for one binding, titled with its name, width and shots."""
    counts = register.counts(index)
    title = (
        f"{label}register {register.name} ({_plural(register.num_bits, 'bit')}): "
        f"{_plural(sum(counts.values()), 'shot')}, {_plural(len(counts), 'outcome')}"
    )
    return format_counts(counts, title=title, bar=bar, top=top)


def _plural(n: int, word: str) -> str:
    return f"{n} {word}" if n == 1 else f"{n} {word}s"


def _utc(when: datetime | None) -> str:
    return when.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%SZ") if when else "-"


def _seconds(delta: timedelta | None) -> str:
    return f"{delta.total_seconds():.3f}s" if delta is not None else "-"


def format_backends(backends: Sequence[Backend]) -> str:
    """The `backends` table: name, kind, qubits, status, queue depth."""
    rows = [
        [b.id, b.kind.lower(), str(b.num_qubits), b.status.lower(), str(b.queue_length)]
        for b in backends
    ]
    return format_table(["NAME", "KIND", "QUBITS", "STATUS", "QUEUED"], rows, right=(2, 4))


def state_text(job: Job) -> str:
    """The state, with the queue position while QUEUED: "QUEUED (next)", "QUEUED (3 ahead)"."""
    if job.state is JobState.QUEUED and job.queue_position is not None:
        ahead = "next" if job.queue_position == 0 else f"{job.queue_position} ahead"
        return f"{job.state.value} ({ahead})"
    return job.state.value


def format_jobs(jobs: Sequence[Job]) -> str:
    """The `jobs list` table."""
    rows = [
        [
            j.name,
            state_text(j),
            j.backend.removeprefix("backends/"),
            str(j.num_pubs),
            _utc(j.create_time),
        ]
        for j in jobs
    ]
    return format_table(["NAME", "STATE", "BACKEND", "PUBS", "CREATED"], rows, right=(3,))


def format_job(job: Job) -> str:
    """`jobs get`: one `key: value` line per field that is set."""
    fields: list[tuple[str, str]] = [
        ("name", job.name),
        ("state", state_text(job)),
        ("tenant", job.tenant or "-"),
        ("backend", job.backend or "-"),
        ("pubs", str(job.num_pubs)),
        ("created", _utc(job.create_time)),
        ("started", _utc(job.start_time)),
        ("ended", _utc(job.end_time)),
    ]
    if job.state_history:
        steps = ", ".join(f"{t.state.value} {_utc(t.time)}" for t in job.state_history)
        fields.append(("history", steps))
    if job.result_expired:
        fields.append(("result", f"expired at {_utc(job.expire_time)}, no longer kept"))
    elif job.expire_time is not None:
        fields.append(("result expires", _utc(job.expire_time)))
    if job.error_reason or job.error_message:
        fields.append(("error", f"{job.error_reason}: {_one_line(job.error_message)}"))
    if job.execution is not None:
        ex = job.execution
        seed = "-" if ex.seed is None else str(ex.seed)
        fields.append(("ran on", f"{ex.backend or '-'}, seed {seed}, attempts {ex.attempts}"))
        if ex.sdk_versions:
            versions = ", ".join(f"{k} {v}" for k, v in sorted(ex.sdk_versions.items()))
            fields.append(("sdk", versions))
    if job.timings is not None:
        t = job.timings
        fields.append(
            (
                "timings",
                f"queued {_seconds(t.queued)}, transpile {_seconds(t.transpile)}, "
                f"execute {_seconds(t.execute)}",
            )
        )
    width = max(len(key) for key, _ in fields) + 1
    return "\n".join(f"{key + ':':<{width}} {value}" for key, value in fields)


def format_event(job: Job, when: datetime) -> str:
    """One `jobs watch` line: time received (UTC), job, state, and the error when FAILED."""
    text = f"{_utc(when)} {job.name} {state_text(job)}"
    if job.state is JobState.FAILED and (job.error_reason or job.error_message):
        text += f" {job.error_reason}: {_one_line(job.error_message)}"
    return text


def format_result(result: JobResult, *, bar: str = "#", top: int = 0) -> str:
    """Counts tables for sampler PUBs (one per register and binding), values for estimator PUBs."""
    blocks: list[str] = []
    for p, pub in enumerate(result):
        pub_label = [f"pub {p}"] if len(result) > 1 else []
        if isinstance(pub, EstimatorPubResult):
            errors = pub.standard_errors
            rows = [
                [str(i), f"{ev:.6g}", f"{errors[i]:.3g}" if i < len(errors) else "-"]
                for i, ev in enumerate(pub.expectation_values)
            ]
            title = f"expectation values (shape {pub.shape}, precision {pub.precision:g})"
            table = format_table(["index", "value", "std error"], rows, right=(0, 1, 2))
            blocks.append(": ".join([*pub_label, title]) + "\n" + table)
            continue
        for b in range(pub.num_bindings):
            parts = pub_label + ([f"binding {b}"] if pub.num_bindings > 1 else [])
            label = ", ".join(parts) + ": " if parts else ""
            for reg in pub.registers.values():
                blocks.append(format_register(reg, index=b, bar=bar, top=top, label=label))
    return "\n\n".join(blocks)


def _one_line(text: str) -> str:
    return " ".join(text.split())


def format_error(err: BaseException, *, target: str | None = None) -> str:
    """The error report: one line, then indented field and quota violations if any.

    `error: INVALID_ARGUMENT INVALID_QASM: <message>` for gateway errors; the target is named
    when the gateway could not be reached at all.
    """
    if isinstance(err, QGatewayError):
        head = f"error: {err.code_name}"
        if err.reason:
            head += f" {err.reason}"
        head += f": {_one_line(err.message)}" if err.message else ""
        if isinstance(err, DeadlineExceededError) and err.job and err.job not in err.message:
            head += f" (job {err.job} keeps running)"
        if isinstance(err, DeadlineExceededError | UnavailableError | AbortedError) and (
            err.request_id
        ):
            # What repeating the call needs to get the same job back instead of a new one.
            head += f" (request_id {err.request_id}: repeat with --request-id to get this job)"
        if err.retry_delay is not None:
            head += f" (retry after {err.retry_delay:g}s)"
        if err.code_name == "UNAVAILABLE" and not err.reason and target:
            head += f" (gateway {target})"
        lines = [head]
        lines += [f"  {field}: {_one_line(desc)}" for field, desc in err.field_violations]
        lines += [f"  quota {subject}: {_one_line(desc)}" for subject, desc in err.quota_violations]
        return "\n".join(lines)
    return f"error: {_one_line(str(err))}"


def _bar_for(stream: TextIO) -> str:
    # A block character reads better, but not every terminal encoding can print it.
    encoding = (getattr(stream, "encoding", None) or "").lower().replace("-", "")
    return "\u2588" if encoding in ("utf8", "utf_8") else "#"


# --- Commands ---------------------------------------------------------------------------------


def _auth_metadata() -> list[tuple[str, str]]:
    key = os.environ.get(ENV_API_KEY)
    return [("authorization", f"Bearer {key}")] if key else []


def _is_local(target: str) -> bool:
    """Whether a gRPC target is this host (a plaintext key cannot be read on the way)."""
    if target.startswith(("unix:", "unix-abstract:")):
        return True
    addresses = target.removeprefix("dns:///").removeprefix("ipv4:").removeprefix("ipv6:")
    # Every address of a list: gRPC goes on to the next when one fails to connect.
    return all(is_loopback_host(_host(address)) for address in addresses.split(","))


def _host(address: str) -> str:
    return address.rsplit(":", 1)[0] if not address.startswith("[") else address[1:].split("]")[0]


def _client(args: argparse.Namespace) -> Client:
    metadata = _auth_metadata()
    ca, cert, tls_key = (getattr(args, n, None) for n in ("ca", "cert", "key"))
    credentials = None
    if ca or cert or tls_key or getattr(args, "tls", False):
        try:
            credentials = tls_credentials(ca, cert=cert, key=tls_key)
        except OSError as exc:
            raise CliError(f"cannot read a TLS file: {exc.strerror or exc}") from None
    elif metadata and not getattr(args, "plaintext", False) and not _is_local(args.target):
        raise CliError(
            f"refusing to send {ENV_API_KEY} in plaintext to {args.target}: use --tls (the "
            "system's CA roots) or --ca FILE, or --plaintext if the network is trusted"
        )
    return Client(args.target, retry=CLI_RETRY, metadata=metadata, credentials=credentials)


_ROLES = ["user", "tenant-admin", "admin"]


def _key_name(text: str, tenant: str | None) -> str:
    if text.startswith("tenants/"):
        return text
    if tenant is None:
        raise CliError("give the key's full name (tenants/T/apiKeys/P) or --tenant")
    return f"tenants/{tenant}/apiKeys/{text}"


def _cmd_keys_create(args: argparse.Namespace) -> int:
    expires = None
    if args.expires_in_days is not None:
        expires = datetime.now(UTC) + timedelta(days=args.expires_in_days)
    with _client(args) as client:
        api_key, key = client.create_api_key(
            args.tenant,
            display_name=args.name,
            role=args.role,
            expire_time=expires,
            timeout=args.timeout,
        )
    print(f"API key {api_key.name} (role {args.role}):")
    print(f"  {key}")
    print(
        f"Shown once: give it to the tenant's clients as {ENV_API_KEY}; the gateway keeps a hash."
    )
    return 0


def _cmd_keys_list(args: argparse.Namespace) -> int:
    with _client(args) as client:
        keys = list(
            client.list_api_keys(
                args.tenant or "-", show_inactive=args.inactive, timeout=args.timeout
            )
        )
    if not keys:
        print("no keys")
        return 0
    rows = [
        [
            key.name,
            key.role,
            key.state,
            _utc(key.create_time),
            _utc(key.expire_time),
            _utc(key.last_use_time),
            key.display_name,
        ]
        for key in keys
    ]
    header = ["NAME", "ROLE", "STATE", "CREATED", "EXPIRES", "LAST USED", "DISPLAY NAME"]
    print(format_table(header, rows))
    return 0


def _cmd_keys_revoke(args: argparse.Namespace) -> int:
    with _client(args) as client:
        api_key = client.revoke_api_key(_key_name(args.name, args.tenant), timeout=args.timeout)
    print(f"revoked {api_key.name}")
    return 0


def _cmd_keys_toml(args: argparse.Namespace) -> int:
    from gateway.security.api_keys import generate_key
    from gateway.security.principals import Role

    new = generate_key(args.tenant, args.name, role=Role(args.role))
    entry = new.config
    print(f"API key (shown once; give it to the tenant's clients as {ENV_API_KEY}):")
    print(f"  {new.key}")
    print("Add this to the gateway configuration (only the hash is stored):")
    print("[[auth.api_keys]]")
    print(f'prefix = "{entry.prefix}"')
    print(f'sha256 = "{entry.sha256}"')
    print(f'tenant = "{entry.tenant}"')
    if entry.name:
        print(f'name = "{entry.name}"')
    if entry.role is not Role.USER:
        print(f'role = "{entry.role}"')
    return 0


def _policy_arg(text: str | None) -> dict[str, Any] | None:
    """--policy: JSON text, or @FILE holding it (the proto's JSON form of TenantPolicy)."""
    if text is None:
        return None
    if text.startswith("@"):
        text = _read_source(text[1:])
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        raise CliError(f"--policy is not valid JSON: {exc}") from None
    if not isinstance(value, dict):
        raise CliError("--policy must be a JSON object, e.g. '{\"max_qubits\": 20}'")
    return value


def _print_tenant(tenant: Any) -> None:
    print(
        json.dumps(
            {
                "name": tenant.name,
                "display_name": tenant.display_name,
                "etag": tenant.etag,
                "create_time": _utc(tenant.create_time),
                "update_time": _utc(tenant.update_time),
                "policy": dict(tenant.policy),
            },
            indent=2,
        )
    )


def _cmd_tenants_create(args: argparse.Namespace) -> int:
    with _client(args) as client:
        tenant = client.create_tenant(
            args.tenant_id,
            display_name=args.display_name,
            policy=_policy_arg(args.policy),
            timeout=args.timeout,
        )
    _print_tenant(tenant)
    return 0


def _cmd_tenants_get(args: argparse.Namespace) -> int:
    with _client(args) as client:
        _print_tenant(client.get_tenant(args.name, timeout=args.timeout))
    return 0


def _cmd_tenants_list(args: argparse.Namespace) -> int:
    with _client(args) as client:
        rows = [
            [t.name, t.display_name or "-", json.dumps(dict(t.policy), sort_keys=True)]
            for t in client.list_tenants(timeout=args.timeout)
        ]
    if not rows:
        print("no tenants")
        return 0
    print(format_table(["NAME", "DISPLAY NAME", "POLICY"], rows))
    return 0


def _cmd_tenants_update(args: argparse.Namespace) -> int:
    policy = _policy_arg(args.policy)
    if args.display_name is None and policy is None:
        raise CliError("give --display-name and/or --policy")
    with _client(args) as client:
        tenant = client.update_tenant(
            args.name,
            display_name=args.display_name,
            policy=policy,
            etag=args.etag,
            replace_policy=args.replace_policy,
            timeout=args.timeout,
        )
    _print_tenant(tenant)
    return 0


def _cmd_usage(args: argparse.Namespace) -> int:
    with _client(args) as client:
        usage = client.get_tenant_usage(args.tenant, timeout=args.timeout)
    quota = usage.policy.get("quota", {})
    print(f"{usage.name}: period {_utc(usage.period_start)} - {_utc(usage.period_end)}")
    shots_quota = quota.get("shots")
    limit = f" of {shots_quota}" if shots_quota is not None else " (no shot quota)"
    print(f"  shots      {usage.shots_used} used, {usage.shots_reserved} reserved{limit}")
    if usage.cost_used is not None and usage.cost_reserved is not None:
        unit = usage.cost_used.unit
        print(
            f"  cost       {usage.cost_used.amount:g} {unit} used, "
            f"{usage.cost_reserved.amount:g} {unit} reserved of {quota.get('cost', '-')}"
        )
    print(
        f"  queued     {usage.queued_jobs} jobs (limit {usage.policy.get('max_queued_jobs', '-')})"
    )
    # A policy without max_sessions has the server's cap, which the API does not report.
    sessions_limit = usage.policy.get("max_sessions", "server.max_sessions_per_tenant")
    print(f"  sessions   {usage.open_sessions} open (limit {sessions_limit})")
    print(f"  policy     {json.dumps(dict(usage.policy), sort_keys=True)}")
    return 0


def _read_source(path: str) -> str:
    try:
        if path == "-":
            return sys.stdin.read()
        return Path(path).read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise CliError(f"cannot read {path}: not UTF-8 text") from None
    except OSError as exc:
        raise CliError(f"cannot read {path}: {exc.strerror or exc}") from None


def _cmd_serve(args: argparse.Namespace) -> int:
    from gateway import stop_signals

    # Before the seconds of imports and start-up: a stop signal meanwhile is a clean stop.
    stop_signals.remember_until_served()
    # Imported here: the server pulls in qiskit and friends, which client commands never need.
    from gateway.server import serve_forever

    return serve_forever(args.config)


def _cmd_backends(args: argparse.Namespace) -> int:
    with _client(args) as client:
        backends = client.list_backends(timeout=args.timeout)
    print(format_backends(backends))
    return 0


def _pubs_json(result: JobResult) -> list[dict[str, Any]]:
    pubs: list[dict[str, Any]] = []
    for pub in result:
        if isinstance(pub, EstimatorPubResult):
            pubs.append(
                {
                    "shape": list(pub.shape),
                    "expectation_values": pub.expectation_values,
                    "standard_errors": pub.standard_errors,
                }
            )
            continue
        pubs.append(
            {
                "shape": list(pub.shape),
                "shots": pub.shots,
                "registers": {
                    reg.name: {
                        "num_bits": reg.num_bits,
                        "counts": [reg.counts(b) for b in range(reg.num_bindings)],
                    }
                    for reg in pub.registers.values()
                },
            }
        )
    return pubs


def _job_head_json(job: Job) -> dict[str, Any]:
    seed = job.execution.seed if job.execution is not None else None
    return {
        "job": job.name,
        "state": job.state.value,
        "backend": job.execution.backend if job.execution else job.backend,
        # A 64-bit value as a string, as protobuf's JSON mapping writes one: readers that take
        # JSON numbers as doubles (JavaScript, jq before 1.7) would round it.
        "seed": None if seed is None else str(seed),
    }


def _run_json(job: Job) -> dict[str, Any]:
    assert job.result is not None
    return {**_job_head_json(job), "pubs": _pubs_json(job.result)}


def _when(when: datetime | None) -> str | None:
    return None if when is None else when.isoformat()


def _job_json(job: Job) -> dict[str, Any]:
    """`jobs get --json`: the keys of `run --json` ("pubs" only with --result and a result),
    then what `jobs get` shows beside them, times as ISO 8601 UTC."""
    shown = _job_head_json(job)
    if job.result is not None:
        shown["pubs"] = _pubs_json(job.result)
    shown.update(
        {
            "tenant": job.tenant,
            "num_pubs": job.num_pubs,
            "create_time": _when(job.create_time),
            "start_time": _when(job.start_time),
            "end_time": _when(job.end_time),
            "error": (
                {"reason": job.error_reason, "message": job.error_message}
                if job.error_reason or job.error_message
                else None
            ),
            "result_expired": job.result_expired,
        }
    )
    return shown


def _cmd_run(args: argparse.Namespace) -> int:
    pub = sampler_pub(_read_source(args.file), shots=args.shots)
    return _run_pub(args, pub, counts_only=args.counts_only, sampler_output=args.sampler_output)


def _cmd_estimate(args: argparse.Namespace) -> int:
    observables: list[dict[str, float]] = args.observable
    pub = estimator_pub(
        _read_source(args.file),
        observables[0] if len(observables) == 1 else observables,
        precision=args.precision,
    )
    return _run_pub(args, pub)


def _run_pub(args: argparse.Namespace, pub: PubLike, **options: Any) -> int:
    """`run` and `estimate`: runs one PUB and prints its result."""
    # Named here, not left to the client: an interrupted run must still say how to get its
    # job back (it keeps running at the gateway).
    request_id = args.request_id or str(uuid.uuid4())
    try:
        with _client(args) as client:
            job = client.run_pubs(
                [pub],
                backend=args.backend,
                seed=args.seed,
                timeout=args.timeout,
                request_id=request_id,
                **options,
            )
    except KeyboardInterrupt:
        print(
            f"interrupted: a job it submitted keeps running (request_id {request_id}: repeat "
            "with --request-id to get this job, or see `qgateway jobs list`)",
            file=sys.stderr,
        )
        raise
    if job.state is not JobState.SUCCEEDED or job.result is None:
        raise JobFailedError(
            job.name, job.state.value, job.error_reason, job.error_message, error=job.error
        )
    if args.json:
        print(json.dumps(_run_json(job), indent=2, sort_keys=False))
        return 0
    seed = job.execution.seed if job.execution is not None else None
    ran_on = job.execution.backend if job.execution and job.execution.backend else job.backend
    head = f"{job.name} {job.state.value} on {ran_on}"
    if seed is not None:
        head += f" (seed {seed})"
    print(head)
    print()
    print(format_result(job.result, bar=_bar_for(sys.stdout), top=args.top))
    return 0


def _cmd_jobs_list(args: argparse.Namespace) -> int:
    limit = max(args.limit, 0)
    with _client(args) as client:
        jobs = client.list_jobs(
            filter=args.filter or "",
            states=args.state or (),
            backend=args.backend or "",
            page_size=min(limit, 1000) if limit else 0,
            timeout=args.timeout,
        )
        shown = list(itertools.islice(jobs, limit) if limit else jobs)
    print(format_jobs(shown) if shown else "no jobs")
    return 0


def _cmd_jobs_get(args: argparse.Namespace) -> int:
    with _client(args) as client:
        job = client.get_job(args.name, view_basic=not args.result, timeout=args.timeout)
    if args.json:
        print(json.dumps(_job_json(job), indent=2, sort_keys=False))
        return 0
    print(format_job(job))
    if args.result and job.result is not None:
        print()
        print(format_result(job.result, bar=_bar_for(sys.stdout), top=args.top))
    return 0


def _cmd_jobs_watch(args: argparse.Namespace) -> int:
    last: Job | None = None
    with _client(args) as client:
        for job in client.watch(args.name, timeout=args.timeout):
            print(format_event(job, datetime.now(UTC)), flush=True)
            last = job
    # As `run`: a script waiting on `jobs watch` learns the outcome from the exit code.
    return 0 if last is not None and last.state is JobState.SUCCEEDED else JOB_NOT_SUCCEEDED


def _cmd_jobs_cancel(args: argparse.Namespace) -> int:
    with _client(args) as client:
        job = client.cancel(args.name, timeout=args.timeout)
    print(f"{job.name} {state_text(job)}")
    return 0


# --- Parser -----------------------------------------------------------------------------------


def _state(text: str) -> str:
    try:
        return JobState.parse(text).value
    except ValueError:
        names = ", ".join(s.value for s in JobState if s is not JobState.UNSPECIFIED)
        raise argparse.ArgumentTypeError(f"unknown state {text!r} (one of {names})") from None


def _positive(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not 0 < value < 1e9:  # NaN too: every call with it failed DEADLINE_EXCEEDED
        raise argparse.ArgumentTypeError("must be a number above 0")
    return value


def _target(text: str) -> str:
    if not text.strip():  # gRPC answered an empty target with pages of its own log
        raise argparse.ArgumentTypeError("must name the gateway (host:port)")
    return text


# One term of an observable: a sign (needed between terms), an optional coefficient and `*`,
# then a Pauli string.
_TERM = re.compile(
    r"\s*(?P<sign>[+-])?\s*(?:(?P<coefficient>(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?)\s*\*\s*)?"
    r"(?P<pauli>[IXYZ]+)\s*"
)


def parse_observable(text: str) -> dict[str, float]:
    """An observable written as a sum of Pauli terms, "ZZ" or "0.5*XX - 0.25*ZI + YY"
    (character 0 of a Pauli string acts on the highest-index qubit, as in Qiskit), as
    {pauli: coefficient}; a Pauli string written twice adds up.

    Raises:
        argparse.ArgumentTypeError: For anything else.
    """
    terms: dict[str, float] = {}
    position = 0
    while position < len(text):
        match = _TERM.match(text, position)
        if match is None or match.end() == position or (terms and not match["sign"]):
            raise argparse.ArgumentTypeError(
                f'{text!r} is not a sum of Pauli terms such as "0.5*XX - 0.25*ZI + YY"'
                f" (at character {position})"
            )
        coefficient = float(match["coefficient"] or 1.0)
        if not math.isfinite(coefficient):  # "1e999" reads as inf: not what was typed
            raise argparse.ArgumentTypeError(
                f"{match['coefficient']!r} is past a float's range (at character {position})"
            )
        if match["sign"] == "-":
            coefficient = -coefficient
        terms[match["pauli"]] = terms.get(match["pauli"], 0.0) + coefficient
        position = match.end()
    if not terms:
        raise argparse.ArgumentTypeError("an observable needs at least one Pauli term")
    return terms


def _non_negative(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError("must not be negative")
    return value


# What follows `-o` when it is an observable with a leading minus sign ("-ZZ", "-0.5*XX + YY"),
# not an option: options are lower-case words or letters, Pauli strings upper-case.
_MINUS_OBSERVABLE = re.compile(r"-\s*[IXYZ0-9.]")
_OBSERVABLE_FLAGS = frozenset({"-o", "--observable"})


class _Parser(argparse.ArgumentParser):
    """`qgateway`'s parser: `-o -ZZ` reads as the observable -ZZ. argparse itself takes any
    word after `-o` that starts with '-' (other than a number) for an option and answers
    "expected one argument"."""

    def parse_known_args(  # type: ignore[override]
        self, args: Sequence[str] | None = None, namespace: argparse.Namespace | None = None
    ) -> tuple[argparse.Namespace, list[str]]:
        words = list(sys.argv[1:] if args is None else args)
        joined: list[str] = []
        for at, word in enumerate(words):
            if word == "--":
                # Past `--` every word is an operand as written (`-- -o -ZZ`: two file names),
                # not an option to join.
                joined.extend(words[at:])
                break
            if joined and joined[-1] in _OBSERVABLE_FLAGS and _MINUS_OBSERVABLE.match(word):
                joined[-1] = f"{joined[-1]}={word}"
            else:
                joined.append(word)
        return super().parse_known_args(joined, namespace)


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of `qgateway`."""
    default_target = os.environ.get(ENV_TARGET) or DEFAULT_TARGET
    parser: argparse.ArgumentParser = _Parser(
        prog="qgateway", description="Run a qgateway server, or talk to one."
    )
    parser.add_argument(
        "--target",
        type=_target,
        default=default_target,
        help=f"gateway host:port (default: ${ENV_TARGET} or {DEFAULT_TARGET}; now "
        f"{default_target})",
    )
    tls_help = {
        "--ca": "PEM file of the CA that signed the gateway's certificate (turns TLS on)",
        "--cert": "client certificate PEM file (mTLS)",
        "--key": "client private key PEM file (mTLS)",
    }
    switches = {
        "--tls": "TLS with the system's CA roots",
        "--plaintext": f"send ${ENV_API_KEY} without TLS to another host (a trusted network)",
    }
    for flag, text in tls_help.items():
        parser.add_argument(flag, default=None, help=text)
    for flag, text in switches.items():
        parser.add_argument(flag, action="store_true", help=text)
    timeout_help = "seconds for the call (default: none)"
    parser.add_argument("--timeout", type=_positive, default=None, help=timeout_help)
    # Also accepted after the subcommand; SUPPRESS keeps the global value when absent there.
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--target", type=_target, default=argparse.SUPPRESS, help="gateway host:port"
    )
    for flag, text in tls_help.items():
        common.add_argument(flag, default=argparse.SUPPRESS, help=text)
    for flag, text in switches.items():
        common.add_argument(flag, action="store_true", default=argparse.SUPPRESS, help=text)
    common.add_argument("--timeout", type=_positive, default=argparse.SUPPRESS, help=timeout_help)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    serve = sub.add_parser("serve", help="run the gateway")
    serve.add_argument("--config", type=Path, default=None, help="TOML configuration file")
    serve.set_defaults(handler=_cmd_serve)

    keys = sub.add_parser(
        "keys", help=f"manage API keys (AdminService, with an admin's key in ${ENV_API_KEY})"
    )
    keys_sub = keys.add_subparsers(dest="keys_command", metavar="ACTION")
    keys.set_defaults(parser=keys)
    role_help = "admin: an operator's key (every tenant; backends' FULL view)"
    create = keys_sub.add_parser(
        "create", parents=[common], help="create a stored API key for a tenant (shown once)"
    )
    create.add_argument("--tenant", required=True, help="tenant the key belongs to")
    create.add_argument("--name", default="", help="a label for the key")
    create.add_argument("--role", choices=_ROLES, default="user", help=role_help)
    create.add_argument(
        "--expires-in-days", type=_positive, default=None, help="the key expires after this long"
    )
    create.set_defaults(handler=_cmd_keys_create)
    key_list = keys_sub.add_parser("list", parents=[common], help="list API keys")
    key_list.add_argument(
        "--tenant", default=None, help="one tenant's keys (default: every tenant's; admins only)"
    )
    key_list.add_argument("--inactive", action="store_true", help="also revoked and expired keys")
    key_list.set_defaults(handler=_cmd_keys_list)
    revoke = keys_sub.add_parser("revoke", parents=[common], help="revoke an API key at once")
    revoke.add_argument("name", help="tenants/T/apiKeys/PREFIX (or PREFIX with --tenant)")
    revoke.add_argument("--tenant", default=None, help="the key's tenant")
    revoke.set_defaults(handler=_cmd_keys_revoke)
    toml = keys_sub.add_parser(
        "toml", help="offline: make a key and print its [[auth.api_keys]] configuration entry"
    )
    toml.add_argument("--tenant", required=True, help="tenant the key belongs to")
    toml.add_argument("--name", default="", help="a label for the key")
    toml.add_argument("--role", choices=_ROLES, default="user", help=role_help)
    toml.set_defaults(handler=_cmd_keys_toml)

    tenants = sub.add_parser("tenants", help="manage tenants and their policies (AdminService)")
    tenants_sub = tenants.add_subparsers(dest="tenants_command", metavar="ACTION")
    tenants.set_defaults(parser=tenants)
    policy_help = (
        "the policy as JSON (or @FILE), TenantPolicy's JSON form, e.g. "
        '\'{"allowed_simulators": ["aer*"], "max_qubits": 20, "quota": {"shots": 100000}}\''
    )
    t_create = tenants_sub.add_parser("create", parents=[common], help="create a tenant")
    t_create.add_argument("tenant_id", help="the tenant's id (1-64 of A-Z a-z 0-9 _ . -)")
    t_create.add_argument("--display-name", default="", help="free text")
    t_create.add_argument("--policy", default=None, help=policy_help + " (default: the gateway's)")
    t_create.set_defaults(handler=_cmd_tenants_create)
    t_get = tenants_sub.add_parser("get", parents=[common], help="show a tenant and its policy")
    t_get.add_argument("name", help="tenant id or tenants/ID")
    t_get.set_defaults(handler=_cmd_tenants_get)
    t_list = tenants_sub.add_parser("list", parents=[common], help="list tenants")
    t_list.set_defaults(handler=_cmd_tenants_list)
    t_update = tenants_sub.add_parser(
        "update", parents=[common], help="change a tenant's display name or policy fields"
    )
    t_update.add_argument("name", help="tenant id or tenants/ID")
    t_update.add_argument("--display-name", default=None, help="the new display name")
    t_update.add_argument(
        "--policy", default=None, help=policy_help + "; only the fields given change"
    )
    t_update.add_argument(
        "--replace-policy", action="store_true", help="replace the whole policy with --policy"
    )
    t_update.add_argument(
        "--etag", default="", help="only if the tenant still has this etag (from get)"
    )
    t_update.set_defaults(handler=_cmd_tenants_update)

    usage = sub.add_parser(
        "usage", parents=[common], help="a tenant's usage and limits in the current period"
    )
    usage.add_argument("tenant", help="tenant id (your own, or any with an admin key)")
    usage.set_defaults(handler=_cmd_usage)

    backends = sub.add_parser("backends", parents=[common], help="list backends")
    backends.set_defaults(handler=_cmd_backends)

    # What `run` and `estimate` share: one PUB's job, printed.
    one_pub = argparse.ArgumentParser(add_help=False)
    one_pub.add_argument("--backend", default="aer", help="backend name (default: aer)")
    one_pub.add_argument("--seed", type=int, default=None, help="sampling seed")
    one_pub.add_argument(
        "--request-id",
        default=None,
        help="the call's idempotency key: repeating a call with the same id returns the same "
        "job, never a second one (default: a new id; an error that leaves the job running "
        "prints it)",
    )
    one_pub.add_argument("--json", action="store_true", help="print the result as JSON")

    run = sub.add_parser(
        "run", parents=[common, one_pub], help="run an OpenQASM file and show counts"
    )
    run.add_argument("file", help="OpenQASM 3 or 2 file ('-' for stdin)")
    run.add_argument("--shots", type=int, default=None, help="shots (default: the backend's)")
    run.add_argument(
        "--counts-only", action="store_true", help="return counts only (--sampler-output counts)"
    )
    run.add_argument(
        "--sampler-output",
        choices=("samples_and_counts", "samples", "counts"),
        default=None,
        help="what the job returns (default: samples and counts)",
    )
    run.add_argument(
        "--top",
        type=_non_negative,
        default=DEFAULT_TOP,
        help=f"outcomes per table (default: {DEFAULT_TOP}; 0: all)",
    )
    run.set_defaults(handler=_cmd_run)

    estimate = sub.add_parser(
        "estimate",
        parents=[common, one_pub],
        help="estimate observables' expectation values on an OpenQASM file's state",
    )
    estimate.add_argument(
        "file", help="OpenQASM 3 or 2 file without final measurements ('-' for stdin)"
    )
    estimate.add_argument(
        "--observable",
        "-o",
        action="append",
        required=True,
        type=parse_observable,
        metavar="TERMS",
        help='a sum of Pauli terms, e.g. "0.5*XX - 0.25*ZI + YY" (character 0 acts on the '
        "highest-index qubit, as in Qiskit; -o -ZZ for a leading minus sign); repeat for "
        "more observables",
    )
    estimate.add_argument(
        "--precision",
        type=float,
        default=None,
        help="target standard error; 0 asks for exact values (default: the backend's)",
    )
    estimate.set_defaults(handler=_cmd_estimate, top=DEFAULT_TOP)

    jobs = sub.add_parser("jobs", help="list, inspect, watch and cancel jobs")
    jobs_sub = jobs.add_subparsers(dest="jobs_command", metavar="ACTION")
    jobs.set_defaults(handler=None, parser=jobs)

    listing = jobs_sub.add_parser("list", parents=[common], help="list jobs, newest first")
    listing.add_argument(
        "--state",
        type=_state,
        nargs="+",
        action="extend",
        metavar="STATE",
        help="only jobs in these states (repeatable)",
    )
    listing.add_argument("--backend", default=None, help="only jobs of this backend")
    listing.add_argument(
        "--filter",
        default=None,
        metavar="FILTER",
        help='AIP-160 filter, AND-ed with --state/--backend, e.g. \'labels.team = "qml" AND '
        'create_time >= "2026-12-01T00:00:00Z"\' (fields: state, backend, session, labels, '
        "create_time)",
    )
    listing.add_argument(
        "--limit", type=_non_negative, default=50, help="at most N jobs (default: 50; 0: all)"
    )
    listing.set_defaults(handler=_cmd_jobs_list)

    get = jobs_sub.add_parser("get", parents=[common], help="show a job")
    get.add_argument("name", help="job name, with or without 'jobs/'")
    get.add_argument("--result", action="store_true", help="also show the result")
    get.add_argument(
        "--json", action="store_true", help="print the job (and, with --result, its result) as JSON"
    )
    get.add_argument("--top", type=_non_negative, default=DEFAULT_TOP, help="outcomes per table")
    get.set_defaults(handler=_cmd_jobs_get)

    watch = jobs_sub.add_parser("watch", parents=[common], help="follow a job's state changes")
    watch.add_argument("name", help="job name")
    watch.set_defaults(handler=_cmd_jobs_watch)

    cancel = jobs_sub.add_parser("cancel", parents=[common], help="cancel a job")
    cancel.add_argument("name", help="job name")
    cancel.set_defaults(handler=_cmd_jobs_cancel)

    audit_tool.add_parser(sub)
    store_tool.add_parser(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Runs the `qgateway` command and returns its exit status."""
    parser = build_parser()
    args = parser.parse_args(argv)
    handler: Callable[[argparse.Namespace], int] | None = getattr(args, "handler", None)
    if handler is None:
        (getattr(args, "parser", None) or parser).print_help(sys.stderr)
        return 2
    try:
        return handler(args)
    except JobFailedError as err:
        print(format_error(err), file=sys.stderr)
        return JOB_NOT_SUCCEEDED
    except (QGatewayError, CliError) as err:
        print(format_error(err, target=getattr(args, "target", None)), file=sys.stderr)
        return 1
    except ValueError as err:
        # Client-side checks (a bad job name, a malformed result stream): still one line.
        print(format_error(err), file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        # The reader went away (`qgateway run ... | head`): stop quietly, as a command killed by
        # SIGPIPE does, and point stdout at /dev/null so the interpreter's final flush does not
        # print a second traceback.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 128 + signal.SIGPIPE
