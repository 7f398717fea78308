"""BitPipe against DESIGN.md's D = 4, N = 4 grid, transcribed here as the specification."""

import pytest

from mpipipe.schedules import build_schedule, partition_layers, simulate
from mpipipe.schedules.ops import OpType
from mpipipe.schedules.simulate import OpCosts

# DESIGN.md, "BitPipe, precisely": micro-batches 1, 2 down and 3, 4 up (1-based),
# `a` first arm, `b` second arm; a backward takes two slots, `=` its second; `.` idle.
DESIGN_GRID = """
r0   F1a .   F2a F3a F3b F4a F4b F1b B1b =   F2b .   B2b =   B3b =   B3a =   B4b =   B4a =   B1a =   .   .   B2a =
r1   .   F1a F3a F2a F4a F3b F1b F4b F2b .   B1b =   B3b =   B2b =   B4b =   B3a =   B1a =   B4a =   B2a =   .   .
r2   .   F3a F1a F4a F2a F1b F3b F2b F4b .   B3b =   B1b =   B4b =   B2b =   B1a =   B3a =   B2a =   B4a =   .   .
r3   F3a .   F4a F1a F1b F2a F2b F3b B3b =   F4b .   B4b =   B1b =   B1a =   B2b =   B2a =   B3a =   .   .   B4a =
"""  # noqa: E501
RANKS = 4


def design_stage(pipe: int, arm: str, rank: int) -> int:
    """DESIGN.md's placement table: chunk v0..v3 of rank r."""
    if pipe == 0:
        return rank if arm == "a" else 2 * RANKS - 1 - rank
    return RANKS - 1 - rank if arm == "a" else RANKS + rank


def design_ops() -> list[list[tuple[str, int, int, int, int]]]:
    """Per rank, in order: (type, pipe, stage, 0-based micro-batch, slot)."""
    ranks = []
    for rank, line in enumerate(DESIGN_GRID.strip().splitlines()):
        cells = line.split()[1:]
        assert len(cells) == 28
        ops = []
        for slot, cell in enumerate(cells):
            if cell in (".", "="):
                continue
            microbatch = int(cell[1]) - 1
            pipe = 0 if microbatch < 2 else 1
            ops.append((cell[0], pipe, design_stage(pipe, cell[2], rank), microbatch, slot))
        ranks.append(ops)
    return ranks


def test_reproduces_design_grid_op_for_op():
    schedule = build_schedule("bitpipe", RANKS, 4)
    simulation = simulate(schedule, OpCosts(forward=1, backward=2))
    expected = design_ops()
    for rank in range(RANKS):
        ours = [
            (timed.op.type.value, timed.op.pipe, timed.op.stage, timed.op.microbatch)
            for timed in simulation.timeline[rank]
            if timed.op.type is not OpType.SYNC
        ]
        assert ours == [op[:4] for op in expected[rank]], f"rank {rank}"
    assert simulation.makespan == 28
    assert simulation.busy == [24.0] * RANKS  # 28 slots, 4 idle on every rank
    assert simulation.bubble == pytest.approx([1 / 7] * RANKS)


def test_design_timing_is_feasible_and_ours_is_earliest():
    """DESIGN's slots meet every dependency; the dry run starts no op later than they do.

    (DESIGN draws rank 0's and rank 3's first idle slot at 1 and a second at 11,
    where the earliest start puts them at 2 and 13: the order and the makespan agree.)
    """
    expected = design_ops()
    cost = {"F": 1, "B": 2}
    end = {op[:4]: op[4] + cost[op[0]] for rank_ops in expected for op in rank_ops}
    stages = 2 * RANKS
    for rank_ops in expected:
        for op_type, pipe, stage, microbatch, slot in rank_ops:
            needs = []
            if op_type == "F" and stage > 0:
                needs.append(("F", pipe, stage - 1, microbatch))
            if op_type == "B":
                needs.append(("F", pipe, stage, microbatch))
                if stage < stages - 1:
                    needs.append(("B", pipe, stage + 1, microbatch))
            assert all(end[need] <= slot for need in needs)
    simulation = simulate(build_schedule("bitpipe", RANKS, 4), OpCosts(forward=1, backward=2))
    for rank in range(RANKS):
        timeline = simulation.timeline[rank]
        starts = [timed.start for timed in timeline if timed.op.type is not OpType.SYNC]
        assert all(ours <= theirs[4] for ours, theirs in zip(starts, expected[rank], strict=True))


def test_eager_sync_starts_second_arm_first_on_the_end_ranks():
    schedule = build_schedule("bitpipe", RANKS, 4)
    simulation = simulate(schedule, OpCosts(forward=1, backward=2))
    for rank in (0, RANKS - 1):
        timeline = simulation.timeline[rank]
        syncs = [timed for timed in timeline if timed.op.type is OpType.SYNC]
        second_arm = [t for t in syncs if t.op.stage >= RANKS]
        first_arm_backwards = [
            t for t in timeline if t.op.type is OpType.BACKWARD and t.op.stage < RANKS
        ]
        assert len(syncs) == 4
        assert max(t.start for t in second_arm) < max(t.start for t in first_arm_backwards)


def test_mirror_pairs_and_design_layer_example():
    schedule = build_schedule("bitpipe", RANKS, 4)
    for stage in range(2 * RANKS):
        holders = schedule.placement.holders(stage)
        assert len(holders) == 2 and sum(holders) == RANKS - 1  # ranks r and D-1-r
    # DESIGN.md: 16 layers, rank 0 holds L0-1 L6-7 L14-15 L8-9 as chunks v0..v3.
    stages = partition_layers([1.0] * 16, [True] * 16, 2 * RANKS, "uniform")
    design = {
        0: [(0, 1), (6, 7), (14, 15), (8, 9)],
        1: [(2, 3), (4, 5), (12, 13), (10, 11)],
        2: [(4, 5), (2, 3), (10, 11), (12, 13)],
        3: [(6, 7), (0, 1), (8, 9), (14, 15)],
    }
    chunk_order = [(0, "a"), (1, "a"), (0, "b"), (1, "b")]
    for rank, layers in design.items():
        for (pipe, arm), (first, last) in zip(chunk_order, layers, strict=True):
            stage = design_stage(pipe, arm, rank)
            assert schedule.placement.rank(pipe, stage) == rank
            assert stages[stage] == range(first, last + 1)


@pytest.mark.parametrize("ranks", [2, 4, 8, 16])
def test_peak_activations_between_design_bounds(ranks):
    for microbatches in (ranks, 2 * ranks, 4 * ranks):
        peaks = simulate(build_schedule("bitpipe", ranks, microbatches)).peak_activations
        assert max(peaks) <= ranks
        assert min(peaks) >= (3 * ranks + 2) / 4
        assert peaks[0] == pytest.approx((3 * ranks + 2) / 4)
