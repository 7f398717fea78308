"""Pieces the generators share: the schedule object, 1F1B ordering, merges, eager syncs."""

from __future__ import annotations

from collections.abc import Hashable

from mpipipe.schedules.ops import SYNC, Op, OpType
from mpipipe.schedules.schedule import Placement, Schedule

BACKWARD_TYPES = (OpType.BACKWARD, OpType.BACKWARD_WEIGHT)  # ops that finish a chunk's gradient


def one_forward_one_backward(forwards: list[Op], backwards: list[Op], warmup: int) -> list[Op]:
    """`warmup` forwards, then forward-backward pairs, then the remaining backwards."""
    warmup = min(warmup, len(forwards))
    ops = list(forwards[:warmup])
    steady = len(forwards) - warmup
    for index in range(steady):
        ops += [forwards[warmup + index], backwards[index]]
    return ops + backwards[steady:]


def merge_arrivals(
    first: Hashable, second: Hashable, count: int, early: int
) -> list[tuple[Hashable, int]]:
    """Visit `count` micro-batches (0, 1, ...) of two streams in the order they arrive.

    The `first` stream's micro-batches arrive `early` ops ahead of the
    `second`'s: `early` of first, then the two alternate, then second's last `early`.
    """
    order = [(first, index) for index in range(early)]
    for index in range(count - early):
        order += [(second, index), (first, early + index)]
    return order + [(second, count - early + index) for index in range(early)]


def with_eager_syncs(ops: list[Op]) -> list[Op]:
    """Insert one SYNC per chunk right after that chunk's last B (or W) in `ops`."""
    last = {op.chunk: index for index, op in enumerate(ops) if op.type in BACKWARD_TYPES}
    after = {index: chunk for chunk, index in last.items()}
    result = []
    for index, op in enumerate(ops):
        result.append(op)
        if index in after:
            pipe, stage = after[index]
            result.append(Op(SYNC, stage, pipe=pipe))
    return result


def make_schedule(
    kind: str,
    ranks: int,
    microbatches: int,
    rank_of_chunk: dict[tuple[int, int], int],
    ops: list[list[Op]],
    options: dict | None = None,
) -> Schedule:
    """Wrap per-rank op lists (without SYNCs) into a Schedule with eager syncs added."""
    return Schedule(
        kind=kind,
        ranks=ranks,
        microbatches=microbatches,
        placement=Placement.from_chunks(ranks, rank_of_chunk),
        ops=[with_eager_syncs(rank_ops) for rank_ops in ops],
        options=options or {},
    )


def pipes_by_unit(ranks: int, microbatches: int) -> dict[int, int]:
    """Micro-batch -> pipe for two pipes: of every unit of D micro-batches the first D/2 take
    the down pipe (0), the rest the up pipe (1); a last, shorter unit splits the same way,
    the down pipe taking the odd one."""
    pipes = {}
    for microbatch in range(microbatches):
        unit_start = microbatch - microbatch % ranks
        unit_size = min(ranks, microbatches - unit_start)
        pipes[microbatch] = 0 if microbatch - unit_start < (unit_size + 1) // 2 else 1
    return pipes
