"""Memory plans: blocks of positions under a budget, refused with numbers when impossible."""

from __future__ import annotations

import itertools
import math

import numpy as np
import psutil
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import lazyusid
from lazyusid.core.plan import BlockPlan, parse_budget, parse_cores, plan_blocks

# ---------------------------------------------------------------------------
# parse_budget


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("512MiB", 512 * 2**20),
        ("2 GB", 2 * 10**9),
        ("1.5GiB", int(1.5 * 2**30)),
        ("100kB", 100_000),
        (4096, 4096),
        (1.5e9, 1_500_000_000),
    ],
)
def test_parse_budget(text, expected):
    assert parse_budget(text) == expected
    assert lazyusid.parse_budget is parse_budget


def test_parse_budget_default_is_a_share_of_available_memory():
    budget = parse_budget(None)
    assert isinstance(budget, int)
    assert 0 < budget <= psutil.virtual_memory().total


@pytest.mark.parametrize("text", ["tiny", "12 parsecs", "", "   "])
def test_parse_budget_rejects_unreadable_strings(text):
    with pytest.raises(ValueError, match="cannot read memory budget"):
        parse_budget(text)


@pytest.mark.parametrize("value", [0, -5, "-1MB", "0B"])
def test_parse_budget_rejects_non_positive(value):
    with pytest.raises(ValueError, match="must be positive"):
        parse_budget(value)


@pytest.mark.parametrize("value", [True, [1024], {"budget": 1}])
def test_parse_budget_rejects_other_types(value):
    with pytest.raises(TypeError, match="budget must be bytes"):
        parse_budget(value)


@pytest.mark.parametrize("value", [float("nan"), float("inf"), -float("inf"), np.float64("nan"), "1e400"])
def test_parse_budget_refuses_non_finite_numbers_clearly(value):
    with pytest.raises(
        ValueError, match=r"memory budget must be a finite number of bytes, got .*; give"
    ) as info:
        parse_budget(value)
    assert not isinstance(info.value, OverflowError)
    assert "'512MiB'" in str(info.value)


def test_parse_budget_accepts_numpy_numbers():
    assert parse_budget(np.int64(4096)) == 4096
    assert parse_budget(np.float32(2048.0)) == 2048


# ---------------------------------------------------------------------------
# parse_cores


@pytest.mark.parametrize(("value", "expected"), [(None, None), (1, 1), (3, 3), (np.int64(2), 2)])
def test_parse_cores(value, expected):
    cores = parse_cores(value)
    assert cores == expected
    assert cores is None or type(cores) is int


@pytest.mark.parametrize("value", [1.5, 2.0, "2", True, [2]])
def test_parse_cores_refuses_non_integers(value):
    with pytest.raises(TypeError, match=r"cores must be a whole number of worker processes \(an int\), got"):
        parse_cores(value)


@pytest.mark.parametrize("value", [0, -1, np.int32(0)])
def test_parse_cores_refuses_fewer_than_one(value):
    with pytest.raises(ValueError, match=r"cores must be at least 1, got 0|cores must be at least 1, got -1"):
        parse_cores(value)


# ---------------------------------------------------------------------------
# plan_blocks: the invariants


@settings(max_examples=200, deadline=None)
@given(
    n_positions=st.integers(1, 5000),
    input_bytes=st.integers(0, 10**6),
    output_bytes=st.integers(0, 10**5),
    mem_multiplier=st.floats(0, 8, allow_nan=False),
    blocks_in_flight=st.integers(1, 16),
    workers=st.integers(1, 16),
    budget=st.integers(1, 2**34),
    positions_per_block=st.none() | st.integers(1, 6000),
)
def test_plan_never_exceeds_budget_and_covers_every_position_once(
    n_positions,
    input_bytes,
    output_bytes,
    mem_multiplier,
    blocks_in_flight,
    workers,
    budget,
    positions_per_block,
):
    per_position = input_bytes + output_bytes + math.ceil(input_bytes * mem_multiplier)
    fits = budget // max(1, per_position * blocks_in_flight)
    try:
        plan = plan_blocks(
            n_positions,
            input_bytes,
            output_bytes,
            budget=budget,
            mem_multiplier=mem_multiplier,
            blocks_in_flight=blocks_in_flight,
            positions_per_block=positions_per_block,
            workers=workers,
        )
    except lazyusid.BudgetError:
        # refused only when the block it would have to run really does not fit
        wanted = 1 if positions_per_block is None else min(positions_per_block, n_positions)
        assert wanted > fits
        return

    assert plan.projected_bytes <= plan.budget_bytes == budget
    assert plan.bytes_per_position == per_position
    assert 1 <= plan.positions_per_block <= n_positions
    if positions_per_block is not None:
        assert plan.positions_per_block == min(positions_per_block, n_positions)

    blocks = plan.blocks()
    assert len(blocks) == plan.n_blocks
    assert blocks[0][0] == 0
    assert blocks[-1][1] == n_positions
    for (_, stop), (next_start, _) in itertools.pairwise(blocks):
        assert stop == next_start  # contiguous: no gap, no overlap
    covered = np.concatenate([np.arange(start, stop) for start, stop in blocks])
    np.testing.assert_array_equal(covered, np.arange(n_positions))
    assert all(0 < stop - start <= plan.positions_per_block for start, stop in blocks)


@settings(max_examples=50, deadline=None)
@given(n_positions=st.integers(1, 10_000), workers=st.integers(2, 8))
def test_default_plan_gives_every_worker_several_blocks(n_positions, workers):
    plan = plan_blocks(n_positions, 400, 8, budget="1GiB", workers=workers)
    assert plan.n_blocks >= min(n_positions, 2 * workers)


@settings(max_examples=50, deadline=None)
@given(n_positions=st.integers(1_000, 10**7), workers=st.integers(2, 8), per_position=st.integers(8, 8192))
def test_default_blocks_come_in_whole_rounds_of_the_workers(n_positions, workers, per_position):
    # 15 blocks on 2 workers leave one idle for the whole last block (peers benchmark B: 16 MiB blocks of
    # a 248 MiB file); the blocks come in whole rounds of `workers`, or are so many that the last round's
    # idle workers cost under 1 % of the run
    plan = plan_blocks(n_positions, per_position, 8, budget="8GiB", workers=workers)
    assert plan.n_blocks % workers == 0 or plan.n_blocks >= 100 * workers
    assert plan_blocks(512 * 512, 952, 8, budget="8GiB", workers=2, blocks_in_flight=4).n_blocks == 16


def test_one_worker_gets_blocks_bounded_by_time_and_bytes_only():
    # a short job in one thread: one block (every block costs a task and a write; nothing to balance)
    assert plan_blocks(1024, 952, 8, budget="1GiB", workers=1, seconds_per_position=1e-5).n_blocks == 1
    # a long one still checkpoints every MAX_BLOCK_SECONDS, and no block reads more than 16 MiB
    slow = plan_blocks(1024, 952, 8, budget="1GiB", workers=1, seconds_per_position=0.01)
    assert slow.positions_per_block == int(lazyusid.core.plan.MAX_BLOCK_SECONDS / 0.01)
    big = plan_blocks(100_000, 2**10, 8, budget="8GiB", workers=1)
    assert big.positions_per_block * 2**10 <= lazyusid.core.plan.MAX_BLOCK_INPUT_BYTES


def test_budget_that_cannot_hold_one_position_is_refused_with_both_figures():
    # one position: 1000 B in + 8 B out + 1000 B working = 2008 B = 1.96 kiB
    with pytest.raises(
        lazyusid.BudgetError, match=r"budget of 0\.98 kiB cannot hold one position: each needs 1\.96 kiB"
    ) as info:
        plan_blocks(10, 1000, 8, budget=1000)
    assert isinstance(info.value, ValueError)
    assert isinstance(info.value, lazyusid.LazyUSIDError)
    message = str(info.value)
    assert "Raise the budget" in message


def test_blocks_in_flight_count_against_the_budget():
    # 4 blocks of one 1.96 kiB position each need 7.84 kiB
    with pytest.raises(lazyusid.BudgetError, match=r"4 blocks are in flight, so at least 7\.84 kiB"):
        plan_blocks(10, 1000, 8, budget="4kiB", blocks_in_flight=4)
    plan = plan_blocks(10, 1000, 8, budget="8kiB", blocks_in_flight=4)
    assert plan.positions_per_block == 1


def test_forced_block_size_over_budget_is_refused():
    with pytest.raises(
        lazyusid.BudgetError, match=r"100 positions per block need .* at most 4 positions per block fit"
    ):
        plan_blocks(1000, 1000, 8, budget=4 * 2008, positions_per_block=100)


def test_forced_block_size_larger_than_the_data_is_clipped():
    plan = plan_blocks(5, 100, 8, budget=10_000, positions_per_block=100)
    assert plan.positions_per_block == 5
    assert plan.n_blocks == 1


@pytest.mark.parametrize("positions_per_block", [0, -3])
def test_forced_block_size_must_be_positive(positions_per_block):
    with pytest.raises(ValueError, match="positions_per_block must be at least 1"):
        plan_blocks(5, 100, 8, budget="1MiB", positions_per_block=positions_per_block)


def test_no_positions_is_an_error():
    with pytest.raises(ValueError, match="nothing to compute"):
        plan_blocks(0, 100, 8, budget="1MiB")


def test_plan_repr_states_the_figures():
    plan = plan_blocks(384, 36, 8, budget="1MiB", positions_per_block=7)
    assert isinstance(plan, BlockPlan)
    text = repr(plan)
    assert "55 blocks of 7 positions (384 in all)" in text
    assert "1.00 MiB budget" in text
    assert plan.blocks()[-1] == (378, 384)


# ---------------------------------------------------------------------------
# plan_spectra / map_spectra with a budget


def peak(spectrum):
    return np.abs(spectrum).max()


def test_plan_spectra_obeys_the_budget():
    data = np.ones((40, 30, 100), dtype="f8")  # 800 B per spectrum
    plan = lazyusid.plan_spectra(data, peak, budget="64kiB", cores=1)
    assert isinstance(plan, BlockPlan)
    assert plan.n_positions == 1200
    assert plan.input_bytes_per_position == 800
    assert plan.output_bytes_per_position == 8
    assert plan.projected_bytes <= 64 * 2**10
    assert plan.positions_per_block == 64 * 2**10 // (800 + 8 + 800)


def test_map_spectra_refuses_a_budget_that_cannot_hold_one_position():
    data = np.ones((4, 5, 100), dtype="f8")
    with pytest.raises(lazyusid.BudgetError, match=r"16 B cannot hold one position: each needs 1\.57 kiB"):
        lazyusid.map_spectra(data, peak, budget="16B")
    with pytest.raises(ValueError, match="cannot read memory budget 'tiny'"):
        lazyusid.map_spectra(data, peak, budget="tiny")


def test_a_fast_functions_estimate_does_not_cut_blocks_into_pieces():
    # one call of a ~20 us function measures 30-200 us (first touches of its memory and code): capping
    # blocks at MAX_BLOCK_SECONDS by that estimate gave 100 blocks of ~650 positions, each ~5 ms of task
    # cost for ~11 ms of work; below SLOW_SPECTRUM_SECONDS blocks are bounded by balance and bytes only
    fast = plan_blocks(262_144, 952, 8, budget="8GiB", workers=2, seconds_per_position=2e-4)
    balanced = plan_blocks(262_144, 952, 8, budget="8GiB", workers=2)
    assert fast.positions_per_block == balanced.positions_per_block
    slow = plan_blocks(262_144, 952, 8, budget="8GiB", workers=2, seconds_per_position=1.5e-3)
    assert slow.positions_per_block == int(lazyusid.core.plan.MAX_BLOCK_SECONDS / 1.5e-3)
