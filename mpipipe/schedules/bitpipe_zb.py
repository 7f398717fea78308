"""BitPipe-ZB: BitPipe's placement with every backward split into I and W.

The placement is BitPipe's exactly (bitpipe.py): 2D stages, four chunks
per rank, stage s on ranks r and D-1-r (one per pipe), the V turns as local
hand-overs, the two pipes carrying distinct micro-batches (per unit of D,
the first D/2 down, the rest up; a shorter last unit splits the same way).
Each backward is an I (input gradient), which the previous stage waits
for, and a W (weight gradient), which nothing waits for.

The order is planned for the costs (candidates.py): list schedules with
the real F, I, W costs and latency, W last by priority so that it fills
what would be idle time (or runs when the rank must free memory), and, when
N is a multiple of D, BitPipe's own order with each W right after its I.
The fastest wins. Every rank holds at most D micro-batches of L/D layers
(plain BitPipe's peak) unless a smaller cap is asked for; a chunk's SYNC
follows its last W. Needs an even D and N >= 2 (a micro-batch per pipe).
"""

from __future__ import annotations

from mpipipe.schedules.bitpipe import bitpipe_schedule
from mpipipe.schedules.candidates import planned_schedule
from mpipipe.schedules.layouts import layout_of
from mpipipe.schedules.ops import I, Op, OpType, W
from mpipipe.schedules.schedule import Schedule
from mpipipe.schedules.simulate import OpCosts


def bitpipe_zb_schedule(
    ranks: int, microbatches: int, costs: OpCosts | None = None, memory_cap: float | None = None
) -> Schedule:
    layout = layout_of("bitpipe", ranks, microbatches, split_backward=True)
    fixed = []
    if microbatches % ranks == 0:
        closed_form = bitpipe_schedule(ranks, microbatches).ops
        fixed.append(("bitpipe's order, each W after its I", split_each_backward(closed_form)))
    return planned_schedule("bitpipe-zb", layout, costs or OpCosts(), memory_cap, fixed)


def split_each_backward(ops: list[list[Op]]) -> list[list[Op]]:
    """Per-rank ops with every B replaced by its I and then its W (SYNC ops left out)."""
    split = []
    for rank_ops in ops:
        rank_split = []
        for op in rank_ops:
            if op.type is OpType.BACKWARD:
                rank_split += [Op(I, op.stage, op.microbatch, op.pipe),
                               Op(W, op.stage, op.microbatch, op.pipe)]
            elif op.type is not OpType.SYNC:
                rank_split.append(op)
        split.append(rank_split)
    return split
