from __future__ import annotations

import re
from pathlib import Path

import pytest

from gateway.config import ConfigError, load_config


def test_embedded_default_needs_no_file(monkeypatch: pytest.MonkeyPatch) -> None:
    for var in [v for v in __import__("os").environ if v.startswith("QGATEWAY_")]:
        monkeypatch.delenv(var)
    config = load_config(None)
    assert config.server.listen == "127.0.0.1:50051"
    assert config.backends["aer-mps"].options["method"] == "matrix_product_state"
    assert config.data_dir == Path("data")


def test_the_embedded_default_is_the_local_fleet_under_the_conformance_suite() -> None:
    from gateway.backends.registry import load_adapter
    from tests.conformance.conftest import PROFILES

    backends = load_config(None).backends
    assert set(backends) == {
        "aer",
        "aer-mps",
        "aer-noisy-manila",
        "braket-sv",
        "braket-dm",
        "pennylane-lightning",
        "pennylane-default",
        "ibm-fake-manila",
    }
    # Every default backend but the MPS method is held to the conformance suite (MPS is
    # Aer's own code with another method; its own tests are in test_aer_adapter).
    assert set(backends) - {"aer-mps"} <= set(PROFILES)
    for name, backend in backends.items():
        # What a worker would build: a typo in an embedded option fails here, not at start.
        assert load_adapter(backend.adapter).options_model.model_validate(backend.options), name


def test_file_then_environment_override(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "g.toml"
    path.write_text(
        'data_dir = "/srv/q"\n[server]\nlisten = "127.0.0.1:7000"\n'
        '[backends.sim]\nadapter = "aer"\nmax_shots = 10\ndefault_shots = 10\n'
    )
    monkeypatch.setenv("QGATEWAY_SERVER__LISTEN", "127.0.0.1:7001")
    config = load_config(path)
    assert config.server.listen == "127.0.0.1:7001"
    assert config.data_dir == Path("/srv/q")
    assert config.backends["sim"].max_shots == 10
    assert set(config.backends) == {"sim"}


def test_relative_paths_in_the_file_are_next_to_the_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A service manager starts the gateway from its own directory: the file's relative paths
    still name what sits next to the file; absolute ones are kept."""
    etc = tmp_path / "etc"
    etc.mkdir()
    path = etc / "g.toml"
    path.write_text(
        'data_dir = "state"\n'
        '[server.tls]\ncert_file = "tls/server.crt"\nkey_file = "tls/server.key"\n'
        'client_ca_file = "/pki/ca.crt"\nclient_auth = "require"\n'
        '[audit]\nkey_file = "../secrets/audit.key"\n'
    )
    elsewhere = tmp_path / "cwd"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    # The file named relatively, from the directory the gateway runs in.
    config = load_config(Path("../etc/g.toml"))
    assert config.data_dir == etc / "state"
    tls = config.server.tls
    assert tls is not None
    assert tls.cert_file == etc / "tls/server.crt"
    assert tls.key_file == etc / "tls/server.key"
    assert tls.client_ca_file == Path("/pki/ca.crt")
    assert config.audit.key_file == etc / "../secrets/audit.key"
    assert config.audit.head_file is None  # unset: <data_dir>/audit-head.json, next to the file
    assert config.audit.head_path(config.data_dir) == etc / "state/audit-head.json"


def test_relative_paths_from_the_environment_stay_relative_to_the_working_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "g.toml"
    path.write_text('data_dir = "state"\n')
    monkeypatch.setenv("QGATEWAY_DATA_DIR", "elsewhere")
    assert load_config(path).data_dir == Path("elsewhere")


@pytest.mark.parametrize(
    ("toml", "needle"),
    [
        ('[server]\nlistn = "x"\n', "server.listn"),
        ('[backends.a]\nadapter = "aer"\nmax_shotz = 1\n', "backends.a.max_shotz"),
        ("[backends.a]\nmax_shots = 1\n", "backends.a.adapter"),
        ('[backends.a]\nadapter = "aer"\nmax_shots = 0\n', "backends.a.max_shots"),
        ('[backends."a/b"]\nadapter = "aer"\n', "backends"),
        ("data_dir = [\n", "not valid TOML"),
        # Before, each of these was accepted, then crashed `serve` at start (OverflowError)
        # or failed every finished job (a date out of range).
        ("[server]\nlease_s = inf\n", "server.lease_s"),
        ("[server]\nresult_retention_days = 1e7\n", "server.result_retention_days"),
        ("[server]\nmax_streamed_result_mb = nan\n", "server.max_streamed_result_mb"),
        # A job deleted before its result expired, or before its request_id may be reused.
        ("[server]\nresult_retention_days = 100\n", "job_retention_days"),
        ("[server]\njob_retention_days = 3\nresult_retention_days = 1\n", "7 days"),
        ("[server]\nmax_request_bytes = 1100000000\n", "server.max_request_bytes"),
        ("[server]\nmax_response_bytes = 2147483647\n", "server.max_response_bytes"),
        ("[audit]\nretention_days = inf\n", "audit.retention_days"),
        (
            '[backends.a]\nadapter = "aer"\nmax_execution_work = inf\n',
            "backends.a.max_execution_work",
        ),
        ("[telemetry.tracing]\nexport_interval_s = inf\n", "telemetry.tracing.export_interval_s"),
        # Accepted before, then ListBackends, GetBackend or GetTenantUsage answered INTERNAL
        # (a value past its int32 field), or the first worker's setrlimit crashed the start.
        ('[backends.a]\nadapter = "aer"\nmax_queued_jobs = 2147483648\n', "max_queued_jobs"),
        ('[backends.a]\nadapter = "aer"\nmemory_budget_mb = 1099511627777\n', "memory_budget"),
        (
            '[backends.a]\nadapter = "aer"\nworker_memory_limit_mb = 1099511627777\n',
            "worker_memory_limit_mb",
        ),
        ("[compiler]\nmemory_headroom_mb = 1125899906842624\n", "compiler.memory_headroom_mb"),
        ("[compiler]\nworkers = 1025\n", "compiler.workers"),
        (
            '[backends.a]\nadapter = "aer"\npool = { max_instances = 100000 }\n',
            "pool.max_instances",
        ),
        ("[tenants.t.policy]\nmax_qubits = 2147483648\n", "max_qubits: must be 1 to 2147483647"),
        ("[tenants.t.policy]\nmax_sessions = 2147483648\n", "max_sessions"),
        ("[tenants.t.policy]\nmax_queued_jobs = 2147483648\n", "max_queued_jobs"),
        (
            "[tenants.t.policy]\nrequest_rate = { per_second = 1, burst = 2147483648 }\n",
            "request_rate.burst",
        ),
        # gRPC served on the port modulo 65536, on 443 without one: ports nobody asked for.
        ('[server]\nlisten = "127.0.0.1:99999"\n', "server.listen"),
        ('[server]\nlisten = "127.0.0.1:65536"\n', "server.listen"),
        ('[server]\nlisten = "127.0.0.1"\n', "server.listen"),
        ('[server]\nlisten = "127.0.0.1:-5"\n', "server.listen"),
        # Arabic-Indic digits are digits to str.isdigit and int(), not to gRPC.
        ('[server]\nlisten = "127.0.0.1:\u0668\u0660"\n', "server.listen"),
        ('[server]\nhealth_listen = ":8080"\n', "server.health_listen"),
        # Every job naming no shots would be refused, for a field it never set.
        ('[backends.a]\nadapter = "aer"\nmax_shots = 100\n', "default_shots"),
        (
            '[backends.a]\nadapter = "aer"\npool = { min_instances = 3, max_instances = 2 }\n',
            "min_instances",
        ),
        # Each bound at the first value past it (the accepted side is in
        # test_limits_at_their_boundaries_load).
        ('[backends.a]\nadapter = "aer"\nmax_shots = 100\ndefault_shots = 101\n', "default_shots"),
        ("[server]\nrequest_read_timeout_s = 1.0\n", "server.request_read_timeout_s"),
        ("[compiler]\nworkers = 0\n", "compiler.workers"),
        ("[compiler]\nmemory_headroom_mb = 63\n", "compiler.memory_headroom_mb"),
        (
            '[backends.a]\nadapter = "aer"\npool = { min_instances = 0, max_instances = 0 }\n',
            "max_instances",
        ),
        (
            '[backends.a]\nadapter = "aer"\nbreaker = { failure_threshold = 0 }\n',
            "failure_threshold",
        ),
        ('[backends.a]\nadapter = "aer"\nprice = { per_shot = -0.01 }\n', "price.per_shot"),
        ('[backends.a]\nadapter = "aer"\nprice = { unit = "' + "U" * 33 + '" }\n', "price.unit"),
        ('[backends."a.b"]\nadapter = "aer"\n', "backends"),
        ('[tenants."a b"]\n', "tenant id"),
        # "tenants/-" names every tenant (AIP-159).
        ('[tenants."-"]\n', "not '-' alone"),
        ("[server]\nresult_retention_days = 36501\n", "server.result_retention_days"),
        # A CA file without client_auth = "require" would look like mTLS and check nothing.
        ('[server.tls]\ncert_file = "c"\nkey_file = "k"\nclient_ca_file = "ca"\n', "go together"),
        (
            '[server.tls]\ncert_file = "c"\nkey_file = "k"\n'
            '[[auth.mtls]]\nsubject = "CN=ci"\ntenant = "acme"\n',
            "client_auth = 'require'",
        ),
        # A copy-pasted key entry gave the key the last entry's tenant.
        (
            "[[auth.api_keys]]\nprefix = 'aaaaaaaa'\nsha256 = '"
            + "0" * 64
            + "'\ntenant = 'alpha'\n"
            "[[auth.api_keys]]\nprefix = 'aaaaaaaa'\nsha256 = '"
            + "1" * 64
            + "'\ntenant = 'beta'\n",
            "prefix 'aaaaaaaa' twice",
        ),
    ],
)
def test_typos_and_bad_values_name_the_key(tmp_path: Path, toml: str, needle: str) -> None:
    path = tmp_path / "g.toml"
    path.write_text(toml)
    with pytest.raises(ConfigError, match=needle.replace(".", r"\.")):
        load_config(path)


def test_unknown_environment_variable_is_an_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("QGATEWAY_SERVR__LISTEN", "x")
    with pytest.raises(ConfigError, match="QGATEWAY_SERVR__LISTEN"):
        load_config(None)


def test_unknown_lowercase_environment_variable_is_an_error(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # pydantic-settings reads environment names case-blind, so the check must too.
    monkeypatch.setenv("qgateway_bogus", "1")
    with pytest.raises(ConfigError, match="qgateway_bogus"):
        load_config(None)


def test_missing_file_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read config file"):
        load_config(tmp_path / "absent.toml")


def test_an_environment_value_that_is_not_json_is_a_config_error(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # A ConfigError is what `serve` reports with its configuration exit code (2), not 1.
    monkeypatch.setenv("QGATEWAY_SERVER", "not json")
    with pytest.raises(ConfigError, match='field "server"'):
        load_config(None)


def test_connection_limits_become_grpc_server_options(tmp_path: Path) -> None:
    path = tmp_path / "g.toml"
    path.write_text("[server]\nmax_connection_idle_s = 1.5\nmin_client_ping_interval_s = 10\n")
    options = dict(load_config(path).server.connection_options())
    assert options["grpc.max_connection_idle_ms"] == 1500
    assert options["grpc.http2.min_ping_interval_without_data_ms"] == 10_000
    assert options["grpc.max_connection_age_grace_ms"] == 300_000
    assert options["grpc.max_concurrent_streams"] == 1000
    path.write_text("[server]\nrun_max_wait_s = 600\n")
    with pytest.raises(ConfigError, match="max_connection_age_grace_s"):
        load_config(path)


def test_limits_at_their_widest_are_reported(tmp_path: Path) -> None:
    """The widest value each setting takes is one the API can report: a backend's limits
    and a tenant's policy at their bounds encode as ListBackends and GetTenant send them."""
    from gateway.api import backend_codec, tenant_codec
    from gateway.config import MIB, STORED_VALUE_MAX_BYTES
    from gateway.setting_bounds import MAX_MB

    path = tmp_path / "g.toml"
    path.write_text(
        f"""
[backends.a]
adapter = "aer"
max_queued_jobs = {2**31 - 1}
max_shots = {2**63 - 1}
default_shots = {2**63 - 1}
max_job_shots = {2**63 - 1}
memory_budget_mb = {MAX_MB}
worker_memory_limit_mb = {MAX_MB}
max_result_mb = {STORED_VALUE_MAX_BYTES // MIB}
[compiler]
memory_headroom_mb = {MAX_MB}
[tenants.t.policy]
max_qubits = {2**31 - 1}
max_shots_per_job = {2**63 - 1}
max_queued_jobs = {2**31 - 1}
max_sessions = {2**31 - 1}
request_rate = {{ per_second = 1, burst = {2**31 - 1} }}
quota = {{ shots = {2**63 - 1} }}
"""
    )
    config = load_config(path)
    context = config.backends["a"].context("a", config.circuits)
    limits = backend_codec.encode_limits(context.limits, 60.0)
    assert limits.max_queued_jobs == 2**31 - 1
    assert limits.memory_budget_bytes == MAX_MB << 20
    assert context.worker_memory_bytes == MAX_MB << 20
    policy = config.tenants["t"].tenant("t").policy
    assert tenant_codec.decode_policy(tenant_codec.encode_policy(policy)) == policy


def test_every_configuration_the_readme_shows_loads(tmp_path: Path) -> None:
    """A README block a reader copies must load: two wrote inline tables across lines, which
    TOML 1.0 (Python's tomllib) refuses."""
    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    blocks = re.findall(r"```toml\n(.*?)```", readme, re.S)
    assert len(blocks) >= 10
    for i, block in enumerate(blocks):
        path = tmp_path / f"readme-{i}.toml"
        path.write_text(block)
        load_config(path)


@pytest.mark.parametrize("listen", ["127.0.0.1:0", "[::]:50051", "0.0.0.0:443", "unix:/tmp/q.sock"])
def test_listen_addresses_gRPC_serves_as_written_load(tmp_path: Path, listen: str) -> None:
    path = tmp_path / "g.toml"
    path.write_text(f'[server]\nlisten = "{listen}"\n')
    assert load_config(path).server.listen == listen


def test_limits_at_their_boundaries_load(tmp_path: Path) -> None:
    """The last accepted value of each bound (and the zeros that mean "at once" or "none")."""
    path = tmp_path / "g.toml"
    path.write_text(
        "[server]\nrequest_read_timeout_s = 1.001\ngrace_period_s = 0\n"
        "run_max_wait_s = 300\nmax_connection_age_grace_s = 300\n"
        '[server.tls]\ncert_file = "c"\nkey_file = "k"\nreload_check_s = 0\n'
        "[auth]\nkey_cache_s = 0\n"
        "[compiler]\nworkers = 1\nmemory_headroom_mb = 64\n"
        '[backends.a]\nadapter = "aer"\nmax_shots = 100\ndefault_shots = 100\n'
        "pool = { min_instances = 0, max_instances = 1 }\nbreaker = { failure_threshold = 1 }\n"
        'price = { per_shot = 0, unit = "' + "U" * 32 + '" }\n'
        "[tenants.t.policy]\nquota = { shots = 0 }\n"
    )
    config = load_config(path)
    assert config.server.grace_period_s == 0
    assert config.server.max_connection_age_grace_s == config.server.run_max_wait_s
    assert config.backends["a"].default_shots == 100
    policy = config.tenants["t"].tenant("t").policy
    assert policy.quota is not None and policy.quota.shots == 0


def test_derived_limits_and_defaults(tmp_path: Path) -> None:
    from gateway.config import MIB, GatewayConfig

    server = GatewayConfig().server
    # The README's documented default.
    assert GatewayConfig().backends["aer"].max_queued_jobs == 10_000
    # gRPC clients' default receive limit is 4 MiB: every answer, with its framing, fits.
    assert server.max_response_bytes == 4 * MIB - 64 * 1024
    # The transport lets through twice the gateway's own limit, so an oversize request gets
    # the detailed REQUEST_TOO_LARGE instead of gRPC's bare refusal.
    assert server.transport_max_receive_bytes == 2 * server.max_request_bytes + MIB
    path = tmp_path / "g.toml"
    path.write_text(
        "[server]\nmax_streamed_result_mb_per_tenant = 1\nmax_streamed_result_mb = 3\n"
        '[backends.a]\nadapter = "aer"\nmemory_budget_mb = 100\n'
        '[backends.b]\nadapter = "aer"\nmemory_budget_mb = 100\nworker_memory_limit_mb = 500\n'
    )
    config = load_config(path)
    assert config.server.stream_budget_bytes() == (MIB, 3 * MIB)
    a = config.backends["a"].context("a", config.circuits)
    assert a.worker_memory_bytes == (100 + 2048) * MIB
    b = config.backends["b"].context("b", config.circuits)
    assert b.worker_memory_bytes == 500 * MIB


def test_certificate_rules_alone_require_authentication(tmp_path: Path) -> None:
    """[[auth.mtls]] without keys still turns authentication on: a certificate no rule maps is
    refused, not served as the anonymous tenant."""
    path = tmp_path / "g.toml"
    path.write_text(
        '[server.tls]\ncert_file = "c"\nkey_file = "k"\nclient_ca_file = "ca"\n'
        'client_auth = "require"\n'
        '[[auth.mtls]]\nsubject = "CN=ci"\ntenant = "acme"\n'
    )
    assert load_config(path).auth.enabled


def test_the_client_cli_s_variables_are_not_server_settings(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # `qgateway serve` in a shell that also runs the client CLI.
    monkeypatch.setenv("QGATEWAY_TARGET", "gw:443")
    monkeypatch.setenv("QGATEWAY_API_KEY", "qgw_x_y")
    assert load_config(None).server.listen


def test_a_price_past_its_bound_is_refused_and_one_at_it_keeps_costs_finite(
    tmp_path: Path,
) -> None:
    """A price near float max made a job's cost infinite (no Duration, total or quota takes
    it): prices are bounded, and at the bound the widest job's cost is finite."""
    import math

    from gateway.domain.pricing import Usage, charge, estimate
    from gateway.setting_bounds import MAX_PRICE, MAX_SECONDS

    path = tmp_path / "g.toml"
    for field in ("per_task", "per_shot", "per_second"):
        path.write_text(f'[backends.a]\nadapter = "aer"\nprice = {{ {field} = 1e300 }}\n')
        with pytest.raises(ConfigError, match=field):
            load_config(path)
    path.write_text(
        '[backends.a]\nadapter = "aer"\n'
        f"price = {{ per_task = {MAX_PRICE}, per_shot = {MAX_PRICE}, per_second = {MAX_PRICE} }}\n"
    )
    price = load_config(path).backends["a"].price
    assert price is not None
    widest = charge(price.price(), Usage(2**63 - 1, MAX_SECONDS, tasks=2**63 - 1))
    assert widest is not None and math.isfinite(widest.amount)
    estimated = estimate(price.price(), 2**63 - 1, 2**63 - 1).cost
    assert estimated is not None and math.isfinite(estimated.amount * 2**20)  # summed, too
