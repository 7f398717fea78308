"""Every generator: complete, well placed, eagerly synced, deadlock-free; bad sizes rejected."""

from collections import Counter

import pytest

from mpipipe.errors import UsageError
from mpipipe.schedules import (
    SCHEDULE_KINDS,
    build_schedule,
    check_constraints,
    simulate,
    stage_count,
)
from mpipipe.schedules.ops import Op, OpType

SIZES = [(ranks, ranks * factor) for ranks in (2, 4, 8, 16) for factor in (1, 2, 4)]
AT_LEAST_TWO_PER_RANK = [(ranks, ranks * factor) for ranks in (2, 4, 8, 16) for factor in (2, 3, 4)]
CASES = [
    (kind, ranks, microbatches)
    for kind in SCHEDULE_KINDS
    for ranks, microbatches in (AT_LEAST_TWO_PER_RANK if kind == "dualpipev" else SIZES)
]


def expected_placement(kind: str, ranks: int, chunks: int) -> dict[tuple[int, int], int]:
    """The placements the issue spells out, written independently of the generators."""
    if kind in ("gpipe", "1f1b", "zb-h1"):
        return {(0, stage): stage for stage in range(ranks)}
    if kind == "interleaved":
        return {(0, rank + chunk * ranks): rank for rank in range(ranks) for chunk in range(chunks)}
    if kind == "chimera":
        down = {(0, stage): stage for stage in range(ranks)}
        return down | {(1, stage): ranks - 1 - stage for stage in range(ranks)}
    if kind in ("zb-v", "dualpipev"):
        first = {(0, rank): rank for rank in range(ranks)}
        return first | {(0, 2 * ranks - 1 - rank): rank for rank in range(ranks)}
    placement = {}
    for rank in range(ranks):  # bitpipe and bitpipe-zb: mpipipe/DESIGN.md, "BitPipe, precisely"
        placement |= {(0, rank): rank, (1, ranks - 1 - rank): rank}
        placement |= {(0, 2 * ranks - 1 - rank): rank, (1, ranks + rank): rank}
    return placement


def check_complete(schedule) -> None:
    ranks, microbatches = schedule.ranks, schedule.microbatches
    placement = expected_placement(schedule.kind, ranks, schedule.options.get("chunks", 2))
    assert schedule.placement.rank_of_chunk == placement
    stages = 1 + max(stage for _, stage in placement)
    pipes = 1 + max(pipe for pipe, _ in placement)
    # A backward is one B, or an I and a W; DualPipeV uses both kinds, on one stage even.
    if schedule.kind == "dualpipev":
        backward_kinds = [{OpType.BACKWARD}, {OpType.BACKWARD_INPUT, OpType.BACKWARD_WEIGHT}]
    elif schedule.kind in ("zb-h1", "zb-v", "bitpipe-zb"):
        backward_kinds = [{OpType.BACKWARD_INPUT, OpType.BACKWARD_WEIGHT}]
    else:
        backward_kinds = [{OpType.BACKWARD}]
    counts = Counter(op for rank_ops in schedule.ops for op in rank_ops)
    assert all(count == 1 for count in counts.values())
    # Micro-batches split evenly between the pipes, D/2 of each unit of D per pipe; a
    # shorter last unit of u splits as ceil(u/2) down, the rest up.
    pipe_of = {}
    for m in range(microbatches):
        unit = min(ranks, microbatches - m + m % ranks)
        pipe_of[m] = 0 if pipes == 1 or m % ranks < (unit + 1) // 2 else 1
    types: dict[tuple[int, int, int], set] = {
        (pipe_of[m], stage, m): set() for m in range(microbatches) for stage in range(stages)
    }
    for op in counts:
        if op.type is not OpType.SYNC:
            types[(op.pipe, op.stage, op.microbatch)].add(op.type)
    for key, present in types.items():
        assert OpType.FORWARD in present, key
        assert present - {OpType.FORWARD} in backward_kinds, (key, present)
    finishing = (OpType.BACKWARD, OpType.BACKWARD_WEIGHT)
    for rank, rank_ops in enumerate(schedule.ops):
        for op in rank_ops:
            assert placement[op.chunk] == rank, f"{op} on rank {rank}"
        held = sorted(chunk for chunk, owner in placement.items() if owner == rank)
        syncs = [(index, op) for index, op in enumerate(rank_ops) if op.type is OpType.SYNC]
        assert sorted(op.chunk for _, op in syncs) == held
        for index, sync in syncs:
            last = max(
                i
                for i, op in enumerate(rank_ops)
                if op.chunk == sync.chunk and op.type in finishing
            )
            assert index == last + 1, f"{sync} on rank {rank} not right after {rank_ops[last]}"


@pytest.mark.parametrize("kind,ranks,microbatches", CASES)
def test_generator_is_complete_and_runs(kind, ranks, microbatches):
    schedule = build_schedule(kind, ranks, microbatches)
    assert schedule.stages == stage_count(kind, ranks)
    check_complete(schedule)
    simulation = simulate(schedule)
    if kind == "bitpipe-zb":  # no more memory than plain BitPipe: D micro-batches of L/D layers
        assert max(simulation.peak_activations) <= ranks
    busy_ops = sum(op.type is not OpType.SYNC for rank_ops in schedule.ops for op in rank_ops)
    assert sum(len(rank_ops) for rank_ops in simulation.timeline) == busy_ops + sum(
        len(schedule.placement.chunks_on(rank)) for rank in range(ranks)
    )


@pytest.mark.parametrize("chunks", [3, 4])
def test_interleaved_more_chunks(chunks):
    schedule = build_schedule("interleaved", 4, 8, chunks=chunks)
    assert schedule.stages == 4 * chunks
    check_complete(schedule)


@pytest.mark.parametrize("kind", ["gpipe", "1f1b", "zb-h1"])
@pytest.mark.parametrize("microbatches", [1, 3])
def test_single_rank_holds_the_whole_model(kind, microbatches):
    schedule = build_schedule(kind, 1, microbatches)
    assert schedule.stages == 1
    check_complete(schedule)
    assert simulate(schedule).bubble == [0.0]


@pytest.mark.parametrize("kind", ["gpipe", "1f1b", "zb-h1", "zb-v", "bitpipe-zb"])
def test_fewer_microbatches_than_ranks(kind):
    check_complete(build_schedule(kind, 4, 3 if kind != "zb-v" else 2))


@pytest.mark.parametrize("ranks", [1, 3, 5])
@pytest.mark.parametrize("extra", [0, 1])
def test_dualpipev_needs_no_even_rank_count(ranks, extra):
    check_complete(build_schedule("dualpipev", ranks, 2 * ranks + extra))


@pytest.mark.parametrize("ranks,microbatches", [(1, 2), (2, 4), (4, 8), (4, 13), (8, 16)])
def test_dualpipev_phases(ranks, microbatches):
    """The phase counts of the DualPipe repository's dualpipev.py, checked from the outside."""
    schedule = build_schedule("dualpipev", ranks, microbatches)
    for rank, rank_ops in enumerate(schedule.ops):
        down, up = rank, 2 * ranks - 1 - rank
        rest = ranks - 1 - rank
        # Phases 1 and 2: 2(D-1-r) forwards down, then r+1 pairs of forwards down and up.
        start = [Op(OpType.FORWARD, down, m) for m in range(2 * rest)]
        for m in range(rank + 1):
            start += [Op(OpType.FORWARD, down, 2 * rest + m), Op(OpType.FORWARD, up, m)]
        assert rank_ops[: len(start)] == start
        # Phase 3 (D-1-r), phase 6 (r+1) and phase 7 (D-1-r) split their backwards.
        splits = [op for op in rank_ops if op.type is OpType.BACKWARD_INPUT]
        assert len(splits) == 2 * rest + rank + 1
        # Phase 8: r+1 weight gradients close the step (then the two syncs).
        compute = [op for op in rank_ops if op.type is not OpType.SYNC]
        assert [op.type for op in compute[-(rank + 1):]] == [OpType.BACKWARD_WEIGHT] * (rank + 1)


@pytest.mark.parametrize("ranks,microbatches", [(2, 2), (2, 3), (4, 2), (4, 5), (4, 6), (8, 12)])
def test_bitpipe_zb_needs_no_multiple_of_the_pipeline_degree(ranks, microbatches):
    schedule = build_schedule("bitpipe-zb", ranks, microbatches)
    check_complete(schedule)
    assert max(simulate(schedule).peak_activations) <= ranks


@pytest.mark.parametrize(
    "kind,ranks,microbatches,chunks,words",
    [
        ("dualpipev", 4, 7, 2, ["parallel.microbatches", "at least twice the pipeline degree 4",
                                "got 7", "use 8 or more"]),
        ("bitpipe", 3, 6, 2, ["parallel.pipeline", "even", "got 3", "2, 4, 6"]),
        ("chimera", 1, 4, 2, ["parallel.pipeline", "even", "got 1"]),
        ("zb-v", 5, 10, 2, ["parallel.pipeline", "even", "got 5"]),
        ("bitpipe-zb", 3, 6, 2, ["parallel.pipeline", "even", "got 3"]),
        ("bitpipe-zb", 4, 1, 2, ["parallel.microbatches", "at least 2", "one per pipe", "got 1"]),
        ("bitpipe", 4, 6, 2, ["parallel.microbatches", "multiple of the pipeline degree 4", "got 6",
                              "4, 8, 12"]),
        ("chimera", 4, 2, 2, ["parallel.microbatches", "got 2"]),
        ("interleaved", 4, 6, 2, ["parallel.microbatches", "got 6"]),
        ("interleaved", 4, 8, 1, ["parallel.chunks", "at least 2", "got 1"]),
        ("1f1b", 0, 4, 2, ["parallel.pipeline", "got 0"]),
        ("gpipe", 2, -1, 2, ["parallel.microbatches", "got -1"]),
        ("1f1b", 2, 4, 0, ["parallel.chunks", "got 0"]),
        ("bitpip", 4, 4, 2, ["parallel.schedule", "'bitpipe'"]),
    ],
)
def test_bad_parameters_name_the_constraint(kind, ranks, microbatches, chunks, words):
    with pytest.raises(UsageError) as caught:
        check_constraints(kind, ranks, microbatches, chunks)
    message = str(caught.value)
    assert "\n" not in message
    for word in words:
        assert word in message
    with pytest.raises(UsageError):
        build_schedule(kind, ranks, microbatches, chunks)
