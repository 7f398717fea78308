"""Megatron's interleaved 1F1B (Narayanan et al. 2021), v chunks per rank.

The model is cut into S = v*D stages; rank r holds stages r, r+D, r+2D, ...
Micro-batches move in groups of D: a rank runs the forwards of one group
on its chunk 0, then on its chunk 1, ..., then the next group; backwards
visit the chunks in reverse. Rank r warms up with 2(D-1-r) + (v-1)D
forwards, then alternates. N must be a multiple of D.
"""

from __future__ import annotations

from mpipipe.schedules.building import make_schedule, one_forward_one_backward
from mpipipe.schedules.ops import B, F, Op
from mpipipe.schedules.schedule import Schedule


def interleaved_schedule(ranks: int, microbatches: int, chunks: int) -> Schedule:
    def virtual(op_type, rank: int, index: int, reverse: bool) -> Op:
        chunk = (index // ranks) % chunks
        if reverse:
            chunk = chunks - 1 - chunk
        microbatch = (index // (ranks * chunks)) * ranks + index % ranks
        return Op(op_type, rank + chunk * ranks, microbatch)

    total = chunks * microbatches
    ops = [
        one_forward_one_backward(
            [virtual(F, rank, index, reverse=False) for index in range(total)],
            [virtual(B, rank, index, reverse=True) for index in range(total)],
            warmup=2 * (ranks - 1 - rank) + (chunks - 1) * ranks,
        )
        for rank in range(ranks)
    ]
    return make_schedule(
        "interleaved", ranks, microbatches, interleaved_placement(ranks, chunks), ops,
        options={"chunks": chunks},
    )


def interleaved_placement(ranks: int, chunks: int) -> dict[tuple[int, int], int]:
    return {(0, stage): stage % ranks for stage in range(chunks * ranks)}
