"""Type of a servicer context: grpc ships no type information, so it is Any to mypy."""

from __future__ import annotations

from typing import Any, TypeAlias

Context: TypeAlias = Any
