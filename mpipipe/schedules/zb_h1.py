"""ZB-H1: 1F1B with the backward split in two (Qi et al. 2024, "Zero Bubble").

Rank r holds stage r. The input-gradient half I stays where 1F1B has its
backward; the weight-gradient half W, which nothing waits for, is
deferred: rank r runs W of micro-batch i after I of micro-batch i + r, and
its last r W's after its last I, in the tail where 1F1B idles. A rank then
holds at most D micro-batches (1F1B's peak, on rank 0) and idles (D-1)
time units at F = I = W instead of 1F1B's 3(D-1).
"""

from __future__ import annotations

from mpipipe.schedules.building import make_schedule
from mpipipe.schedules.one_f_one_b import one_stage_per_rank
from mpipipe.schedules.ops import F, I, Op, W
from mpipipe.schedules.schedule import Schedule


def zb_h1_schedule(ranks: int, microbatches: int) -> Schedule:
    ops = []
    for rank in range(ranks):
        warmup = min(ranks - 1 - rank, microbatches)
        rank_ops = [Op(F, rank, microbatch) for microbatch in range(warmup)]
        for microbatch in range(microbatches):
            if warmup + microbatch < microbatches:
                rank_ops.append(Op(F, rank, warmup + microbatch))
            rank_ops.append(Op(I, rank, microbatch))
            if microbatch >= rank:
                rank_ops.append(Op(W, rank, microbatch - rank))
        deferred = range(max(microbatches - rank, 0), microbatches)
        ops.append(rank_ops + [Op(W, rank, microbatch) for microbatch in deferred])
    return make_schedule("zb-h1", ranks, microbatches, one_stage_per_rank(ranks), ops)
