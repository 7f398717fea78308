"""GPipe: every forward, then every backward (Huang et al. 2019).

Rank r holds stage r. Peak activations: all N micro-batches on every rank.
"""

from __future__ import annotations

from mpipipe.schedules.building import make_schedule
from mpipipe.schedules.one_f_one_b import one_stage_per_rank
from mpipipe.schedules.ops import B, F, Op
from mpipipe.schedules.schedule import Schedule


def gpipe_schedule(ranks: int, microbatches: int) -> Schedule:
    ops = [
        [Op(F, rank, microbatch) for microbatch in range(microbatches)]
        + [Op(B, rank, microbatch) for microbatch in range(microbatches)]
        for rank in range(ranks)
    ]
    return make_schedule("gpipe", ranks, microbatches, one_stage_per_rank(ranks), ops)
