"""What a job costs: a backend's price table, a job's usage, and the cost of one from the other.

A price is per task (a provider task: one per job, but Braket runs each binding of a PUB as a
task of its own and bills each), per shot and per second of execution (QPU time for hardware,
wall time in the worker for simulators), in one unit (a currency or a credit). Before a job
runs only its shots are known, so an estimate leaves per-second charges out and says so; after
it ran, a provider's own bill, when it reports one, is the job's cost. A job that failed or was
cancelled after it ran is charged its time only (`charge_time`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

__all__ = [
    "Cost",
    "CostEstimate",
    "Price",
    "Totals",
    "Usage",
    "charge",
    "charge_time",
    "estimate",
    "reported",
]


@dataclass(frozen=True)
class Price:
    per_task: float = 0.0
    per_shot: float = 0.0
    per_second: float = 0.0
    unit: str = "USD"


@dataclass(frozen=True)
class Cost:
    amount: float
    unit: str


@dataclass(frozen=True)
class Usage:
    """What a job used.

    Attributes:
        shots: Shots run, summed over PUBs and bindings (an exact estimator PUB runs none).
        execution_seconds: Execution time (QPU seconds from a provider, else wall time).
        provider_cost: What the provider billed for it, in `provider_unit`, if it said.
        tasks: Provider tasks it ran as, each billed `per_task`.
    """

    shots: int
    execution_seconds: float
    provider_cost: float | None = None
    provider_unit: str = ""
    tasks: int = 1

    def __post_init__(self) -> None:
        # Stored, summed into session totals and quotas, and written as a Duration: a
        # provider's Infinity or NaN would poison every one (runner steps drop such values).
        if reported(self.execution_seconds) is None:
            raise ValueError(f"execution_seconds {self.execution_seconds!r}")
        if self.provider_cost is not None and reported(self.provider_cost) is None:
            raise ValueError(f"provider_cost {self.provider_cost!r}")


def reported(value: float | None) -> float | None:
    """A provider's reported seconds or cost, or None when it is not a finite amount >= 0."""
    if value is None or not (math.isfinite(value) and value >= 0):
        return None
    return value


@dataclass(frozen=True)
class Totals:
    """What a group of finished jobs (a session) used and cost: costs summed per unit."""

    shots: int = 0
    execution_seconds: float = 0.0
    costs: tuple[Cost, ...] = ()


@dataclass(frozen=True)
class CostEstimate:
    """A job's cost before it runs.

    Attributes:
        shots: The shots it will run.
        cost: per_task + per_shot x shots; None without a price table.
        per_second_excluded: The price charges per second, which only the run will tell.
    """

    shots: int
    cost: Cost | None
    per_second_excluded: bool


def estimate(price: Price | None, shots: int, tasks: int) -> CostEstimate:
    if price is None:
        return CostEstimate(shots, None, per_second_excluded=False)
    amount = price.per_task * tasks + price.per_shot * shots
    return CostEstimate(shots, Cost(amount, price.unit), per_second_excluded=price.per_second > 0)


def charge(price: Price | None, usage: Usage) -> Cost | None:
    """The job's cost: the provider's bill when it reported one in the price's unit (or there
    is no price table), else the price table applied to the usage; None with neither."""
    if usage.provider_cost is not None and (price is None or usage.provider_unit == price.unit):
        return Cost(usage.provider_cost, usage.provider_unit)
    if price is None:
        return None
    amount = (
        price.per_task * usage.tasks
        + price.per_shot * usage.shots
        + price.per_second * usage.execution_seconds
    )
    return Cost(amount, price.unit)


def charge_time(price: Price | None, usage: Usage) -> Cost | None:
    """The cost of a job that failed or was cancelled after it ran: the provider's bill when it
    reported one (as in `charge`), else its execution time at the per-second price. The
    per-task and per-shot charges are for a job that delivered its result."""
    if usage.provider_cost is not None and (price is None or usage.provider_unit == price.unit):
        return Cost(usage.provider_cost, usage.provider_unit)
    if price is None:
        return None
    return Cost(price.per_second * usage.execution_seconds, price.unit)
