"""Interceptors that wrap method handlers (so they see requests, context and final status)."""
