"""1F1B, also called PipeDream-Flush (Narayanan et al. 2021).

Rank r holds stage r, runs D-1-r warm-up forwards, then alternates one
forward with one backward, then drains. Rank 0 holds D micro-batches at
its peak, rank D-1 one.
"""

from __future__ import annotations

from mpipipe.schedules.building import make_schedule, one_forward_one_backward
from mpipipe.schedules.ops import B, F, Op
from mpipipe.schedules.schedule import Schedule


def one_f_one_b_schedule(ranks: int, microbatches: int) -> Schedule:
    ops = [
        one_forward_one_backward(
            [Op(F, rank, microbatch) for microbatch in range(microbatches)],
            [Op(B, rank, microbatch) for microbatch in range(microbatches)],
            warmup=ranks - 1 - rank,
        )
        for rank in range(ranks)
    ]
    return make_schedule("1f1b", ranks, microbatches, one_stage_per_rank(ranks), ops)


def one_stage_per_rank(ranks: int) -> dict[tuple[int, int], int]:
    """GPipe's, 1F1B's and ZB-H1's placement: stage r on rank r."""
    return {(0, rank): rank for rank in range(ranks)}
