"""The CLI's argument handling: bounds, defaults and refusals that need no gateway."""

from __future__ import annotations

import argparse
from collections.abc import Iterator
from typing import Any

import pytest

from gateway import cli


class ListingClient:
    """Records list_jobs/update_tenant/watch calls; answers with nothing."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, dict[str, Any]]] = []

    def __enter__(self) -> ListingClient:
        return self

    def __exit__(self, *exc: object) -> None:
        pass

    def list_jobs(self, **kwargs: Any) -> Iterator[Any]:
        self.calls.append(("list_jobs", kwargs))
        return iter(())

    def watch(self, name: str, **kwargs: Any) -> Iterator[Any]:
        self.calls.append(("watch", {"name": name, **kwargs}))
        return iter(())

    def update_tenant(self, name: str, **kwargs: Any) -> Any:
        self.calls.append(("update_tenant", {"name": name, **kwargs}))
        raise cli.CliError("recorded")


@pytest.fixture
def fake(monkeypatch: pytest.MonkeyPatch) -> ListingClient:
    client = ListingClient()
    monkeypatch.setattr(cli, "_client", lambda args: client)
    return client


@pytest.mark.parametrize(
    "argv",
    [
        ["--timeout", "0", "backends"],
        ["backends", "--timeout", "-1"],
        ["backends", "--timeout", "nan"],
        ["jobs", "list", "--limit", "-1"],
        ["jobs", "get", "j1", "--top", "-1"],
    ],
)
def test_out_of_range_arguments_are_refused(argv: list[str]) -> None:
    with pytest.raises(SystemExit):
        cli.build_parser().parse_args(argv)


def test_jobs_list_shows_fifty_by_default_and_pages_at_most_a_thousand(
    fake: ListingClient, capsys: pytest.CaptureFixture[str]
) -> None:
    assert cli.build_parser().parse_args(["jobs", "list"]).limit == 50
    assert cli.main(["jobs", "list"]) == 0
    assert cli.main(["jobs", "list", "--limit", "5000"]) == 0
    assert cli.main(["jobs", "list", "--limit", "0"]) == 0
    sizes = [kwargs["page_size"] for _, kwargs in fake.calls]
    # ListJobs takes at most 1000 a page; 0 lets the gateway choose.
    assert sizes == [50, 1000, 0]
    assert capsys.readouterr().out.count("no jobs") == 3


def test_a_watch_that_ends_without_a_job_is_not_success(fake: ListingClient) -> None:
    assert cli.main(["jobs", "watch", "j1"]) == cli.JOB_NOT_SUCCEEDED


def test_tenants_update_needs_a_change_but_either_one_will_do(
    fake: ListingClient, capsys: pytest.CaptureFixture[str]
) -> None:
    assert cli.main(["tenants", "update", "t"]) == 1
    assert "give --display-name and/or --policy" in capsys.readouterr().err
    assert not fake.calls
    assert cli.main(["tenants", "update", "t", "--display-name", "T"]) == 1
    assert cli.main(["tenants", "update", "t", "--policy", '{"max_qubits": 2}']) == 1
    assert [kwargs["name"] for _, kwargs in fake.calls] == ["t", "t"]


@pytest.mark.parametrize("text", ["[1]", "3", "null", '"x"'])
def test_a_policy_must_be_a_json_object(text: str) -> None:
    with pytest.raises(cli.CliError, match="JSON object"):
        cli._policy_arg(text)


def test_a_key_may_go_in_plaintext_to_this_host(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(cli.ENV_API_KEY, "qgw_abcdef12_secret")
    args = argparse.Namespace(target="127.0.0.1:50051", plaintext=False)
    with cli._client(args) as client:
        assert client.target == "127.0.0.1:50051"


def test_plurals() -> None:
    assert cli._plural(1, "shot") == "1 shot"
    assert cli._plural(0, "shot") == "0 shots"
    assert cli._plural(2, "shot") == "2 shots"


@pytest.mark.parametrize(
    ("text", "terms"),
    [
        ("ZZ", {"ZZ": 1.0}),
        ("  -XY ", {"XY": -1.0}),
        ("0.5*XX - 0.25*ZI + YY", {"XX": 0.5, "ZI": -0.25, "YY": 1.0}),
        ("1e-3 * ZZ+2.5e+1*II", {"ZZ": 0.001, "II": 25.0}),
        (".5*ZZ + ZZ", {"ZZ": 1.5}),  # a Pauli string written twice adds up
    ],
)
def test_an_observable_is_a_sum_of_pauli_terms(text: str, terms: dict[str, float]) -> None:
    assert cli.parse_observable(text) == pytest.approx(terms)


@pytest.mark.parametrize(
    "text", ["", "   ", "ZZ XX", "0.5 ZZ", "zz", "ZZ +", "2*", "ZZ*0.5", "Z Z", "ZA", "+"]
)
def test_anything_else_is_not_an_observable(text: str) -> None:
    with pytest.raises(argparse.ArgumentTypeError):
        cli.parse_observable(text)


def test_estimate_needs_an_observable(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        cli.build_parser().parse_args(["estimate", "bell.qasm"])
    assert exited.value.code == 2
    assert "--observable" in capsys.readouterr().err
