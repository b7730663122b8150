"""Principals, tenants and (later) keys, policies and the audit chain."""
