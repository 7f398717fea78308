"""Order ops by a list-scheduling dry run, for generators without a closed-form order.

Every op takes one time unit. At each step every rank starts the ready op
(its inputs finished in an earlier step) that sorts first by `priority`; a
forward is only eligible while the rank has fewer than `in_flight_cap`
chunk-micro-batches in flight (F started, B or W not yet finished). The
order in which each rank started its ops is the schedule.
"""

from __future__ import annotations

import heapq
from collections.abc import Callable

from mpipipe.schedules.ops import Op, OpType
from mpipipe.schedules.schedule import Placement
from mpipipe.schedules.simulate import dependencies


def plan_by_priority(
    ranks: int,
    rank_of_chunk: dict[tuple[int, int], int],
    pipe_of_microbatch: dict[int, int],
    split_backward: bool,
    priority: Callable[[Op], tuple],
    in_flight_cap: int | None = None,
) -> list[list[Op]]:
    stages = Placement.from_chunks(ranks, rank_of_chunk).stages
    if split_backward:
        types = (OpType.FORWARD, OpType.BACKWARD_INPUT, OpType.BACKWARD_WEIGHT)
        releasing = OpType.BACKWARD_WEIGHT
    else:
        types = (OpType.FORWARD, OpType.BACKWARD)
        releasing = OpType.BACKWARD
    ops = [
        Op(op_type, stage, microbatch, pipe)
        for microbatch, pipe in pipe_of_microbatch.items()
        for stage in range(stages)
        for op_type in types
    ]
    missing = {}
    dependents: dict[Op, list[Op]] = {}
    for op in ops:
        needs = dependencies(op, stages, split_backward)
        missing[op] = len(needs)
        for need in needs:
            dependents.setdefault(need, []).append(op)
    # Per rank two heaps: forwards (held back by the cap) and everything else.
    ready: list[tuple[list, list]] = [([], []) for _ in range(ranks)]

    def make_ready(op: Op) -> None:
        forwards, others = ready[rank_of_chunk[op.chunk]]
        key = (priority(op), op.type.value, op.pipe, op.stage, op.microbatch)
        heapq.heappush(forwards if op.type is OpType.FORWARD else others, (key, op))

    for op in ops:
        if missing[op] == 0:
            make_ready(op)
    order: list[list[Op]] = [[] for _ in range(ranks)]
    in_flight = [0] * ranks
    remaining = len(ops)
    while remaining:
        started = []
        for rank in range(ranks):
            forwards, others = ready[rank]
            may_forward = forwards and (in_flight_cap is None or in_flight[rank] < in_flight_cap)
            if may_forward and (not others or forwards[0][0] < others[0][0]):
                _, op = heapq.heappop(forwards)
                in_flight[rank] += 1
            elif others:
                _, op = heapq.heappop(others)
            else:
                continue
            order[rank].append(op)
            started.append((rank, op))
        if not started:
            raise RuntimeError("list scheduling stalled: the in-flight cap is too tight")
        for rank, op in started:
            remaining -= 1
            in_flight[rank] -= op.type is releasing
            for dependent in dependents.get(op, []):
                missing[dependent] -= 1
                if missing[dependent] == 0:
                    make_ready(dependent)
    return order
