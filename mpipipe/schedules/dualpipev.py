"""DualPipeV: DeepSeek's DualPipe cut in half (DeepSeek-V3 report; Sea AI Lab's "cut-in-half").

The model is cut into 2D stages on a V, as in ZB-V: rank r holds chunk 0,
stage r (the way down), and chunk 1, stage 2D-1-r (the way back), so rank 0
computes the loss. Each chunk counts its own micro-batches 0, 1, ... in
order. Rank r of D runs eight phases (N >= 2D micro-batches):

    1  2(D-1-r) x  F0
    2  r+1      x  F0 F1
    3  D-1-r    x  I1 W F1                   (zero bubble)
    4  N-2D+r+1 x  F0 B1, F1 B0              (two overlapped F&B pairs)
    5  D-1-r    x  B1, F1 B0
    6  r+1      x  B1 B0, the later half as I1 I0
    7  D-1-r    x  W I0
    8  r+1      x  W

F0 is a forward of chunk 0, B1 a full backward of chunk 1, and so on; a W
runs the weight gradient of the oldest I still waiting for one. Phase 6
switches from B to I at its middle iteration, (r+1) // 2: before chunk 1's
backward on odd ranks, before chunk 0's on even ones. DualPipe overlaps the
forward and backward of each pair (one's compute with the other's
messages); mpipipe has no overlap of compute, so a pair is two
consecutive ops, forward first. So one stage runs B on some micro-batches
and I and W on others.
"""

from __future__ import annotations

from collections import deque

from mpipipe.schedules.building import make_schedule
from mpipipe.schedules.ops import B, F, I, Op, OpType, W
from mpipipe.schedules.schedule import Schedule
from mpipipe.schedules.zb_v import zb_v_placement


def dualpipev_schedule(ranks: int, microbatches: int) -> Schedule:
    ops = [_rank_ops(rank, ranks, microbatches) for rank in range(ranks)]
    return make_schedule("dualpipev", ranks, microbatches, zb_v_placement(ranks), ops)


def _rank_ops(rank: int, ranks: int, microbatches: int) -> list[Op]:
    stages = (rank, 2 * ranks - 1 - rank)  # chunk 0, chunk 1
    issued: dict[tuple[int, OpType], int] = {}  # (chunk, F or backward) -> micro-batches so far
    waiting_weight: deque[Op] = deque()  # I ops whose W has not run yet, oldest first
    ops: list[Op] = []

    def run(op_type: OpType, chunk: int) -> None:
        counter = (chunk, F if op_type is F else B)
        microbatch = issued.get(counter, 0)
        issued[counter] = microbatch + 1
        ops.append(Op(op_type, stages[chunk], microbatch))
        if op_type is I:
            waiting_weight.append(ops[-1])

    def weight() -> None:
        if waiting_weight:
            done = waiting_weight.popleft()
            ops.append(Op(W, done.stage, done.microbatch))

    rest = ranks - 1 - rank  # how far this rank is from the tip of the V
    for _ in range(2 * rest):
        run(F, 0)
    for _ in range(rank + 1):
        run(F, 0)
        run(F, 1)
    for _ in range(rest):
        run(I, 1)
        weight()
        run(F, 1)
    for _ in range(microbatches - 2 * ranks + rank + 1):
        run(F, 0)
        run(B, 1)
        run(F, 1)
        run(B, 0)
    for _ in range(rest):
        run(B, 1)
        run(F, 1)
        run(B, 0)
    split = False
    for index in range(rank + 1):
        middle = index == (rank + 1) // 2
        split = split or (middle and rank % 2 == 1)
        run(I if split else B, 1)
        split = split or (middle and rank % 2 == 0)
        run(I if split else B, 0)
    for _ in range(rest):
        weight()
        run(I, 0)
    for _ in range(rank + 1):
        weight()
    return ops
