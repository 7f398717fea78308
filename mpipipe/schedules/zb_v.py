"""ZB-V: zero-bubble schedule on a V placement (Qi et al. 2024).

The model is cut into 2D stages; rank r holds S(r) and S(2D-1-r), so a
micro-batch runs down the ranks and back up, and rank 0 computes the loss.
Backwards are split into I (input gradient) and W (weight gradient).

The order comes from a unit-cost dry run (F = I = W): each rank starts the
ready op that is first by (forward, then I, then W; earliest micro-batch;
later stage), forwards only while it holds fewer than 2D chunk-micro-batches
(D micro-batches of L/D layers, 1F1B's peak). Deferred W's fill what would
be idle time; at F = I = W only rank D-1's start-up wait remains, a bubble
of (D-1)/(6N+D-1).
"""

from __future__ import annotations

from mpipipe.schedules.building import make_schedule
from mpipipe.schedules.ops import F, I, W
from mpipipe.schedules.planning import plan_by_priority
from mpipipe.schedules.schedule import Schedule

_TYPE_ORDER = {F: 0, I: 1, W: 2}


def zb_v_placement(ranks: int) -> dict[tuple[int, int], int]:
    placement = {}
    for rank in range(ranks):
        placement[(0, rank)] = rank
        placement[(0, 2 * ranks - 1 - rank)] = rank
    return placement


def zb_v_schedule(ranks: int, microbatches: int) -> Schedule:
    placement = zb_v_placement(ranks)
    ops = plan_by_priority(
        ranks,
        placement,
        {microbatch: 0 for microbatch in range(microbatches)},
        split_backward=True,
        priority=lambda op: (_TYPE_ORDER[op.type], op.microbatch, -op.stage),
        in_flight_cap=2 * ranks,
    )
    return make_schedule("zb-v", ranks, microbatches, placement, ops)
