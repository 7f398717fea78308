"""BitPipe against mpipipe/DESIGN.md's D = 4, N = 4 reference grid and placement example.

Both are read from the design document itself, so the document and the generator cannot drift.
"""

import re
from importlib.resources import files

import pytest

from mpipipe.schedules import build_schedule, partition_layers, simulate
from mpipipe.schedules.ops import OpType
from mpipipe.schedules.simulate import OpCosts

DESIGN = files("mpipipe").joinpath("DESIGN.md").read_text(encoding="utf-8")


def design_section(title: str) -> str:
    """The text of the section `### {title}`, up to the next heading."""
    text = DESIGN.split(f"\n### {title}\n", 1)[1]
    return re.split(r"\n#{2,3} ", text, maxsplit=1)[0]


def design_rows(title: str, label: str) -> list[str]:
    """The lines of that section that start with `label` followed by a rank number."""
    lines = [line.strip() for line in design_section(title).splitlines()]
    return [line for line in lines if re.match(rf"{label}\d", line)]


# "The reference grid": micro-batches 1, 2 down and 3, 4 up (1-based), `a` first arm,
# `b` second arm; a backward takes two slots, `=` its second; `.` idle.
DESIGN_GRID = design_rows("The reference grid", "r")
RANKS = 4



def design_placement() -> dict[tuple[int, str], str]:
    """The placement table of "BitPipe, precisely": (pipe, arm) -> the stage formula in r, D."""
    rows = re.findall(r"^\| v\d \| S\(([^)]*)\) \| (down|up) pipe, (first|second) arm",
                      design_section("BitPipe, precisely"), re.M)
    assert len(rows) == 4
    return {(0 if pipe == "down" else 1, "a" if arm == "first" else "b"): formula
            for formula, pipe, arm in rows}


PLACEMENT = design_placement()


def design_stage(pipe: int, arm: str, rank: int) -> int:
    """The stage the design's placement table gives chunk (pipe, arm) of `rank`."""
    formula = re.sub(r"(\d)D", r"\1*D", PLACEMENT[(pipe, arm)])  # "2D-1-r" -> "2*D-1-r"
    return eval(formula, {"__builtins__": {}}, {"r": rank, "D": RANKS})


def design_ops() -> list[list[tuple[str, int, int, int, int]]]:
    """Per rank, in order: (type, pipe, stage, 0-based micro-batch, slot)."""
    ranks = []
    assert len(DESIGN_GRID) == RANKS
    for rank, line in enumerate(DESIGN_GRID):
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
    """The grid's slots meet every dependency; the dry run starts no op later than they do.

    (The grid draws rank 0's and rank 3's first idle slot at 1 and a second at 11,
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
    # "BitPipe, precisely": 16 blocks, rank 0 holds L0-1 L6-7 L14-15 L8-9 as chunks v0..v3.
    stages = partition_layers([1.0] * 16, [True] * 16, 2 * RANKS, "uniform")
    design = {}
    for line in design_rows("BitPipe, precisely", "rank"):
        rank, spans = line.split(":")
        design[int(rank.removeprefix("rank"))] = [
            tuple(int(layer) for layer in span.removeprefix("L").split("-"))
            for span in spans.split()
        ]
    assert sorted(design) == list(range(RANKS))
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
