"""The statistical bounds the conformance suite holds backends to.

Exact backends: a sampled outcome's count is Binomial(shots, p); it must lie within Z standard
deviations of shots * p, and an outcome of probability 0 must never appear. With Z = 5.5 the
two-sided tail of one count is 3.8e-8; a check looks at no more than 32 outcomes, so a correct
backend fails one check with probability below 1.2e-6 (Bonferroni), and the whole suite (under
300 such checks) below 4e-4 per run, with unseeded draws. The suite fixes its seeds, so a run
repeats exactly.

Noisy backends are held to a stated fidelity: the total variation distance between what they
return and the ideal distribution stays within the backend's noise budget.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

Z = 5.5


def assert_counts_follow(counts: Mapping[str, int], probabilities: Mapping[str, float]) -> None:
    """Counts of an exact backend against the ideal probabilities (keys: bitstrings)."""
    shots = sum(counts.values())
    assert shots > 0, "no shots returned"
    assert len(probabilities) <= 32, "the bound is stated for at most 32 outcomes"
    assert math.isclose(sum(probabilities.values()), 1.0, abs_tol=1e-9)
    impossible = {k: v for k, v in counts.items() if probabilities.get(k, 0.0) == 0.0 and v}
    assert not impossible, f"outcomes of probability 0 were returned: {impossible}"
    for outcome, p in probabilities.items():
        expected = shots * p
        sigma = math.sqrt(shots * p * (1 - p))
        seen = counts.get(outcome, 0)
        assert abs(seen - expected) <= Z * sigma + 1e-9, (
            f"{outcome}: {seen} of {shots} shots, expected {expected:.1f} +- {Z * sigma:.1f} "
            f"(counts {dict(counts)})"
        )


def total_variation(counts: Mapping[str, int], probabilities: Mapping[str, float]) -> float:
    shots = sum(counts.values())
    keys = set(counts) | set(probabilities)
    return 0.5 * sum(abs(counts.get(k, 0) / shots - probabilities.get(k, 0.0)) for k in keys)


def assert_within_noise(
    counts: Mapping[str, int], probabilities: Mapping[str, float], budget: float
) -> None:
    """Counts of a noisy backend: within `budget` of the ideal distribution (total variation),
    which also bounds the sampling error (at 4000 shots and 32 outcomes, under 0.05)."""
    distance = total_variation(counts, probabilities)
    assert distance <= budget, (
        f"total variation {distance:.3f} from the ideal distribution exceeds the noise budget "
        f"{budget} (counts {dict(counts)})"
    )
