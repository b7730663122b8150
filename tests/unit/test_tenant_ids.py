"""Tenant ids: one rule everywhere a tenant is named, and never '-' (which 'tenants/-' uses
to name every tenant)."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from gateway.security.api_keys import ApiKeyConfig
from gateway.security.mtls import CertRule
from gateway.security.principals import EVERY_TENANT, is_tenant_id


@pytest.mark.parametrize(
    ("value", "ok"),
    [
        ("-", False),
        ("--", True),
        ("-a", True),
        ("a", True),
        ("", False),
        ("a" * 64, True),
        ("a" * 65, False),
        ("a\n", False),
        ("tenants", True),
    ],
)
def test_is_tenant_id(value: str, ok: bool) -> None:
    assert is_tenant_id(value) is ok
    assert EVERY_TENANT == "-"


def test_no_configured_key_or_certificate_rule_belongs_to_tenant_dash() -> None:
    # Its tenant admin would meet ListApiKeys(parent="tenants/-") as "every tenant", refused.
    with pytest.raises(ValidationError):
        ApiKeyConfig(prefix="abcdefgh", sha256="0" * 64, tenant="-")
    with pytest.raises(ValidationError):
        CertRule(subject="CN=ci", tenant="-")
    assert ApiKeyConfig(prefix="abcdefgh", sha256="0" * 64, tenant="-a").tenant == "-a"
