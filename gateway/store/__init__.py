"""Durable job state: one Store protocol, SQLite by default."""
