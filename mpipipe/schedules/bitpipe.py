"""BitPipe: bidirectional, interleaved, V-shaped (Wu et al. 2024).

The model is cut into 2D stages. Rank r holds four chunks:

    down pipe, first arm   S(r)          down pipe, second arm  S(2D-1-r)
    up pipe, first arm     S(D-1-r)      up pipe, second arm    S(D+r)

so each pipe runs down the ranks and back up (a V), turning around with a
local hand-over. In every unit of D micro-batches the first D/2 take the
down pipe and the rest the up pipe.

Order on rank r, with h = D/2. The rank's own pipe is the one entering
nearer to it (down for r < h, up otherwise); n = h - r (r < h) or r - h + 1
of its micro-batches reach r before the other pipe's first. Within a unit
the forwards follow arrival order: the two first arms merge (n own ones
ahead, then alternating), the two second arms merge the same way with the
other pipe ahead, and the last n visits of the first merge alternate with
the first n of the second. Backwards do the same with the arms in reverse:
own second arm, other second arm, other first arm, own first arm.

Rank r warms up with W = D + h + min(r, D-1-r) forwards, then alternates
forward and backward for U = 2D - W pairs. Between units, the drain of one
unit is filled with the next unit's warm-up: W - U + 1 backwards, U - 1
pairs, W - U + 1 forwards. Every rank then holds at most D micro-batches
(of L/D layers), rank 0 (3D+2)/4, and at F = B idles D-2 time units, the
bubble (D-2)/(4N+D-2). With D = N = 4, F = 1 and B = 2 this is the grid of
mpipipe/DESIGN.md, "The reference grid": 28 slots, 4 idle on every rank.
The rule is the one of the BitPipe reference implementation, read for its
op order.
"""

from __future__ import annotations

from collections.abc import Iterator

from mpipipe.schedules.building import make_schedule, merge_arrivals
from mpipipe.schedules.ops import B, F, Op, OpType
from mpipipe.schedules.schedule import Schedule

DOWN, UP = 0, 1
FIRST, SECOND = 0, 1  # arms of the V


def _arm_stages(rank: int, ranks: int) -> dict[tuple[int, int], int]:
    """The stage `rank` holds on each (pipe, arm) of the V."""
    return {
        (DOWN, FIRST): rank,
        (DOWN, SECOND): 2 * ranks - 1 - rank,
        (UP, FIRST): ranks - 1 - rank,
        (UP, SECOND): ranks + rank,
    }


def bitpipe_placement(ranks: int) -> dict[tuple[int, int], int]:
    return {
        (pipe, stage): rank
        for rank in range(ranks)
        for (pipe, _), stage in _arm_stages(rank, ranks).items()
    }


def bitpipe_schedule(ranks: int, microbatches: int) -> Schedule:
    ops = []
    for rank in range(ranks):
        own = DOWN if rank < ranks // 2 else UP
        other = 1 - own
        forward_arms = [(own, FIRST), (other, FIRST), (other, SECOND), (own, SECOND)]
        backward_arms = [(own, SECOND), (other, SECOND), (other, FIRST), (own, FIRST)]
        forwards = _visits(F, rank, ranks, microbatches, forward_arms)
        backwards = _visits(B, rank, ranks, microbatches, backward_arms)
        warmup = ranks + ranks // 2 + min(rank, ranks - 1 - rank)
        ops.append(_interleave(forwards, backwards, warmup, 2 * ranks))
    return make_schedule("bitpipe", ranks, microbatches, bitpipe_placement(ranks), ops)


def _visits(
    op_type: OpType, rank: int, ranks: int, microbatches: int, arms: list[tuple[int, int]]
) -> list[Op]:
    """All of `rank`'s ops of one type, unit after unit, each unit merged by `_merge`."""
    half = ranks // 2
    early = half - rank if rank < half else rank - half + 1
    stage = _arm_stages(rank, ranks)
    visits = []
    for first_microbatch in range(0, microbatches, ranks):
        offset = {DOWN: first_microbatch, UP: first_microbatch + half}
        visits += [
            Op(op_type, stage[(pipe, arm)], offset[pipe] + index, pipe)
            for (pipe, arm), index in _merge(arms, half, early)
        ]
    return visits


def _merge(arms: list[tuple[int, int]], half: int, early: int) -> list[tuple[tuple[int, int], int]]:
    """One unit's ((pipe, arm), micro-batch index) order on one rank.

    The first two arms merge in arrival order, and so do the last two; the
    `early` visits that end the first merge alternate with the `early` that
    begin the second.
    """
    first, second, third, fourth = arms
    head = merge_arrivals(first, second, half, early)
    tail = merge_arrivals(third, fourth, half, early)
    overlap = [visit for pair in zip(head[-early:], tail[:early], strict=True) for visit in pair]
    return head[:-early] + overlap + tail[early:]


def _interleave(forwards: list[Op], backwards: list[Op], warmup: int, per_unit: int) -> list[Op]:
    """Warm-up, then per unit: pairs, a partial drain, pairs, the next unit's warm-up."""
    pairs = per_unit - warmup
    drain = warmup - pairs + 1
    forward, backward = iter(forwards), iter(backwards)

    def take(ops: Iterator[Op], count: int) -> list[Op]:
        return [next(ops) for _ in range(count)]

    def alternate(count: int) -> list[Op]:
        return [op for _ in range(count) for op in (next(forward), next(backward))]

    ops = take(forward, warmup)
    for _ in range(len(forwards) // per_unit - 1):
        ops += alternate(pairs) + take(backward, drain)
        ops += alternate(pairs - 1) + take(forward, drain)
    return ops + alternate(pairs) + list(backward)
