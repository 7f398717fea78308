"""Chimera: two pipelines in opposite directions (Li and Hoefler 2021).

The model is cut into D stages held twice: the down pipe has stage s on
rank s, the up pipe stage s on rank D-1-s. In every unit of D micro-batches
the first D/2 take the down pipe and the rest the up pipe.

Each rank merges the two pipes' forwards in arrival order: with
a = min(r, D-1-r), its own pipe (the one entering nearer) brings D/2 - a
micro-batches before the other pipe's first, then the two alternate.
Backwards merge the same way with the other pipe first, since its
gradients return first. Units follow one another in these lists.

Which of the two lists a rank serves next is decided by a unit-cost dry
run: a rank runs a backward whenever one is ready, else a forward. This
lets the next unit's forwards fill the previous unit's drain, where plain
concatenation of units would leave a gap each time; every rank then idles
exactly D-2 time units at F = B, the bubble (D-2)/(2N+D-2), and holds at
most D micro-batches.
"""

from __future__ import annotations

from mpipipe.schedules.building import make_schedule, merge_arrivals
from mpipipe.schedules.ops import B, F, Op
from mpipipe.schedules.planning import plan_by_priority
from mpipipe.schedules.schedule import Schedule

DOWN, UP = 0, 1


def chimera_placement(ranks: int) -> dict[tuple[int, int], int]:
    return {
        **{(DOWN, stage): stage for stage in range(ranks)},
        **{(UP, stage): ranks - 1 - stage for stage in range(ranks)},
    }


def chimera_schedule(ranks: int, microbatches: int) -> Schedule:
    half = ranks // 2
    placement = chimera_placement(ranks)
    position: dict[Op, int] = {}
    for rank in range(ranks):
        own = DOWN if rank < half else UP
        other = 1 - own
        early = half - min(rank, ranks - 1 - rank)
        stage = {DOWN: rank, UP: ranks - 1 - rank}
        forwards, backwards = [], []
        for unit in range(microbatches // ranks):
            first = {DOWN: unit * ranks, UP: unit * ranks + half}
            forwards += [
                Op(F, stage[pipe], first[pipe] + index, pipe)
                for pipe, index in merge_arrivals(own, other, half, early)
            ]
            backwards += [
                Op(B, stage[pipe], first[pipe] + index, pipe)
                for pipe, index in merge_arrivals(other, own, half, early)
            ]
        position.update({op: index for index, op in enumerate(forwards)})
        position.update({op: index for index, op in enumerate(backwards)})
    pipe_of_microbatch = {
        microbatch: DOWN if microbatch % ranks < half else UP for microbatch in range(microbatches)
    }
    ops = plan_by_priority(
        ranks,
        placement,
        pipe_of_microbatch,
        split_backward=False,
        priority=lambda op: (op.type is not B, position[op]),
    )
    return make_schedule("chimera", ranks, microbatches, placement, ops)
