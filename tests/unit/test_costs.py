"""Job cost bounds: pure arithmetic on Python integers, refused with the limit named."""

from __future__ import annotations

import math

import pytest

from gateway.domain import costs
from gateway.domain.errors import Code, InvalidArgument
from gateway.domain.jobs import SamplerOutput


def test_bindings_are_counted_without_overflow() -> None:
    assert costs.bindings_count((), 10, "f") == 1
    assert costs.bindings_count((2, 5), 10, "f") == 10
    with pytest.raises(InvalidArgument) as info:
        # 2^96 bindings: numpy's int64 product would wrap around; Python's does not.
        costs.bindings_count((1 << 32, 1 << 32, 1 << 32), 10, "spec.pubs[0].sampler.x")
    err = info.value
    assert err.code is Code.INVALID_ARGUMENT and err.reason == "TOO_MANY_BINDINGS"
    assert err.metadata["limit"] == "max_bindings" and err.metadata["maximum"] == "10"
    assert err.field_violations[0].field == "spec.pubs[0].sampler.x"


def test_job_totals_accumulate_over_pubs() -> None:
    cost = costs.JobCost(max_job_shots=1000, max_estimator_work=100, max_execution_work=10**6)
    cost.add_shots(10, 50, "a")
    cost.add_shots(10, 50, "b")  # exactly at the limit
    with pytest.raises(InvalidArgument) as info:
        cost.add_shots(1, 1, "c")
    assert info.value.reason == "TOO_MANY_SHOTS" and info.value.metadata["value"] == "1001"
    cost.add_estimator(terms=5, qubits=4, bindings=5, field="d")
    with pytest.raises(InvalidArgument) as info:
        cost.add_estimator(terms=1, qubits=1, bindings=1, field="e")
    assert info.value.reason == "ESTIMATOR_TOO_LARGE"
    with pytest.raises(InvalidArgument) as info:
        cost.add_execution(10**6 + 1, "f")
    assert info.value.reason == "EXECUTION_TOO_EXPENSIVE"


def test_simulation_work_multiplies_by_shots_only_shot_by_shot() -> None:
    once = costs.simulation_work(100, 1 << 10, bindings=3, shots=1000, shot_by_shot=False)
    every = costs.simulation_work(100, 1 << 10, bindings=3, shots=1000, shot_by_shot=True)
    sampling = 3 * 1000 * costs.SAMPLE_WEIGHT
    assert once == 100 * 1024 * costs.AMPLITUDE_UPDATE_WEIGHT * 3 + sampling
    step = 1024 * costs.SHOT_BY_SHOT_AMPLITUDE_WEIGHT + costs.SHOT_BY_SHOT_OPERATION_WEIGHT
    assert every == 100 * step * 3 * 1000 + sampling


# -------------------------------------------------------------- shots and precision


def test_shots() -> None:
    assert costs.resolve_shots(None, 1024, 100_000, "f") == 1024
    assert costs.resolve_shots(7, 1024, 100_000, "f") == 7
    assert costs.resolve_shots(100_000, 1024, 100_000, "f") == 100_000  # the limit itself
    assert costs.resolve_shots(1, 1024, 100_000, "f") == 1
    for bad in (0, -1, 100_001):
        with pytest.raises(InvalidArgument) as info:
            costs.resolve_shots(bad, 1024, 100_000, "spec.pubs[0].sampler.shots")
        assert info.value.reason == "INVALID_SHOTS"
        assert info.value.metadata == {"maxShots": "100000"}
        assert info.value.field_violations[0].field == "spec.pubs[0].sampler.shots"


@pytest.mark.parametrize("bad", [-0.1, math.nan, math.inf, -math.inf])
def test_bad_precision(bad: float) -> None:
    with pytest.raises(InvalidArgument) as info:
        costs.check_precision(bad, "f")
    assert info.value.reason == "INVALID_PRECISION"


def test_precision_zero_is_exact_and_allowed() -> None:
    assert costs.check_precision(0.0, "f") == 0.0


def test_run_costs_are_paid_per_binding_or_per_shot_shot_by_shot() -> None:
    runs = costs.RunCosts(per_run=1000, per_operation_run=10)
    base = costs.simulation_work(100, 1 << 10, bindings=3, shots=5, shot_by_shot=False)
    assert costs.simulation_work(100, 1 << 10, 3, 5, False, runs) == base + 3 * (1000 + 100 * 10)
    every = costs.simulation_work(100, 1 << 10, bindings=3, shots=5, shot_by_shot=True)
    assert costs.simulation_work(100, 1 << 10, 3, 5, True, runs) == every + 15 * (1000 + 1000)


def test_state_passes_cost_amplitudes_per_binding_only() -> None:
    # An estimator's terms read the final state: ~500 passes each (300-750 measured), where one
    # was charged; not per-operation run costs, which are a simulator's per-gate set-up.
    runs = costs.RunCosts(per_run=1000, per_operation_run=10)
    base = costs.simulation_work(100, 1 << 10, 3, 1, False, runs)
    read = costs.simulation_work(100, 1 << 10, 3, 1, False, runs, state_passes=7)
    assert read - base == 7 * (1 << 10) * 3
    assert costs.TERM_STATE_PASSES >= 300


def test_precision_needing_exactly_max_shots_is_allowed() -> None:
    costs.check_precision_shots(100, 0.1, 100, "f")  # at the limit: admitted
    with pytest.raises(InvalidArgument) as info:
        costs.check_precision_shots(101, 0.1, 100, "f")
    assert info.value.metadata == {"maxShots": "100", "shots": "101"}


def test_sampler_result_bytes_count_a_byte_per_row_of_a_narrow_register() -> None:
    # 3 bits pack into 1 byte per shot: 32 framing + 2 bindings x 5 shots x 1 byte.
    assert costs.sampler_result_bytes([3], 2, 5, SamplerOutput.SAMPLES) == 32 + 10
    # Counts: at most 5 distinct outcomes per binding, each 1 byte and a 1-byte varint count.
    assert costs.sampler_result_bytes([3], 2, 5, SamplerOutput.COUNTS) == 32 + 2 * (18 + 5 * 2)
    # 9 bits: 2 bytes a row.
    assert costs.sampler_result_bytes([9], 1, 4, SamplerOutput.SAMPLES) == 32 + 8


def test_estimator_result_bytes_are_two_doubles_per_entry() -> None:
    assert costs.estimator_result_bytes((2, 3)) == 2 * 8 * 6
    assert costs.estimator_result_bytes(()) == 16


def test_derived_seeds_stay_below_two_to_the_62() -> None:
    # Aer adds the experiment index to a seed and takes it as a signed 64-bit integer.
    seeds = [costs.derive_seed(s, i, p) for s in range(100) for i in range(3) for p in "ab"]
    assert all(0 <= seed < 1 << 62 for seed in seeds)
    assert len(set(seeds)) == len(seeds)
