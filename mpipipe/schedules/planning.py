"""Order one placement's ops by list scheduling with real op costs.

A `Layout` says which rank holds each (pipe, stage) chunk, which pipe each
micro-batch takes and whether backwards are split into I and W.
`list_schedule` runs it as an event-driven dry run: whenever a rank is free
it starts, of the ops whose inputs have arrived (their end, plus the
latency when they come from another rank), the one whose key sorts first.

Memory: a forward is only eligible while the rank holds fewer than `cap`
chunk-micro-batches (F started, its B or W not yet finished). With
`reserve`, only a micro-batch's first forward is held back, until every
rank has room for all of that micro-batch's chunks there, which it then
claims: such a plan never stalls (without, a tight cap can, and the dry run
says so). With `reserve` and `paced`, a first forward that waits for room
is tried again only when some other op reaches its rank: a slower entry of
micro-batches that sometimes pays off at the end of the step (it can stall).
With `soft_cap`, a rank holding that many prefers any backward to a
forward, so that it frees memory before the cap forces it to.

The order each rank started its ops in is the schedule, and the makespan
that comes with it is what `simulate` computes for that order. The peak
memory is a property of the order alone (a rank runs one op at a time),
whatever the costs.
"""

from __future__ import annotations

import heapq
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import cached_property

from mpipipe.schedules.ops import Op, OpType
from mpipipe.schedules.schedule import Placement
from mpipipe.schedules.simulate import OpCosts, dependencies


@dataclass(frozen=True)
class Layout:
    """What a planner orders: every op of one placement, micro-batch to pipe assignment given."""

    ranks: int
    rank_of_chunk: dict[tuple[int, int], int]
    pipe_of_microbatch: dict[int, int]
    split_backward: bool

    @cached_property
    def stages(self) -> int:
        return Placement.from_chunks(self.ranks, self.rank_of_chunk).stages

    @cached_property
    def graph(self) -> OpGraph:
        return OpGraph(self)


class OpGraph:
    """The layout's ops as integers: owner rank, inputs, dependents, what holds memory."""

    def __init__(self, layout: Layout):
        if layout.split_backward:
            types = (OpType.FORWARD, OpType.BACKWARD_INPUT, OpType.BACKWARD_WEIGHT)
            releasing = OpType.BACKWARD_WEIGHT
        else:
            types = (OpType.FORWARD, OpType.BACKWARD)
            releasing = OpType.BACKWARD
        stages = layout.stages
        self.ranks = layout.ranks
        self.ops = [
            Op(op_type, stage, microbatch, pipe)
            for microbatch, pipe in sorted(layout.pipe_of_microbatch.items())
            for stage in range(stages)
            for op_type in types
        ]
        index = {op: number for number, op in enumerate(self.ops)}
        self.rank = [layout.rank_of_chunk[op.chunk] for op in self.ops]
        self.needs = [
            [index[need] for need in dependencies(op, stages, layout.split_backward)]
            for op in self.ops
        ]
        self.dependents: list[list[int]] = [[] for _ in self.ops]
        for number, needs in enumerate(self.needs):
            for need in needs:
                self.dependents[need].append(number)
        self.is_forward = [op.type is OpType.FORWARD for op in self.ops]
        self.releases = [op.type is releasing for op in self.ops]
        # What a micro-batch holds on each rank at its busiest: all that rank's chunks of its
        # pipe. Its first forward claims that on every rank when a planner reserves memory.
        held_per_rank: dict[tuple[int, int], int] = {}
        for (pipe, _), rank in sorted(layout.rank_of_chunk.items()):
            held_per_rank[(pipe, rank)] = held_per_rank.get((pipe, rank), 0) + 1
        self.claims = [
            [(rank, count) for (pipe, rank), count in held_per_rank.items() if pipe == op.pipe]
            if op.type is OpType.FORWARD and op.stage == 0
            else []
            for op in self.ops
        ]

    def durations(self, costs: OpCosts) -> list[float]:
        return [costs.duration(op) for op in self.ops]

    @cached_property
    def topological_order(self) -> list[int]:
        """Every op after the ops it needs."""
        missing = [len(needs) for needs in self.needs]
        order = [op for op, count in enumerate(missing) if count == 0]
        for op in order:
            for dependent in self.dependents[op]:
                missing[dependent] -= 1
                if missing[dependent] == 0:
                    order.append(dependent)
        return order


@dataclass(frozen=True)
class PlannedOrder:
    order: list[list[int]]  # per rank, op numbers of the layout's graph in start order
    makespan: float

    def ops(self, graph: OpGraph) -> list[list[Op]]:
        return [[graph.ops[number] for number in rank_order] for rank_order in self.order]


def list_schedule(
    graph: OpGraph,
    durations: Sequence[float],
    latency: float,
    keys: Sequence[tuple],
    cap: int | None = None,
    reserve: bool = False,
    soft_cap: int | None = None,
    paced: bool = False,
) -> PlannedOrder | None:
    """The order of the module docstring, or None where the cap stalls it. `keys[op]` ranks
    the ops a free rank may start: smallest first; but while a rank holds `soft_cap` or more
    chunk-micro-batches, any backward goes before a forward."""
    ranks = graph.ranks
    rank_of = graph.rank
    count = len(graph.ops)
    # The forwards the cap may hold back: every forward, or with `reserve` each micro-batch's
    # first, which claims room for the whole micro-batch on every rank.
    if cap is None:
        capped = [False] * count
    elif reserve:
        capped = [bool(claims) for claims in graph.claims]
    else:
        capped = graph.is_forward
    # Per op: 0 capped forward, 1 other forward, 2 backward (the heap it waits in).
    heap_of = [0 if capped[op] else (1 if graph.is_forward[op] else 2) for op in range(count)]
    entry_ranks = sorted({rank_of[op] for op in range(count) if capped[op]})
    claims, is_forward, releases = graph.claims, graph.is_forward, graph.releases
    dependents, needs_count = graph.dependents, [len(needs) for needs in graph.needs]
    missing = list(needs_count)
    ready_at = [0.0] * count  # when the op's inputs are all there, once they all ran
    end = [0.0] * count
    pending: list[list[tuple[float, int]]] = [[] for _ in range(ranks)]  # (ready at, op)
    startable: list[tuple[list, list, list]] = [([], [], []) for _ in range(ranks)]
    free_at = [0.0] * ranks
    waking: list[float | None] = [None] * ranks  # the rank's queued wake-up, if any
    held = [0] * ranks  # what the cap counts: in flight (with `reserve`: claimed)
    in_flight = [0] * ranks
    events: list[tuple[float, int]] = []
    order: list[list[int]] = [[] for _ in range(ranks)]
    push, pop = heapq.heappush, heapq.heappop

    def wake(rank: int, time: float) -> None:
        if waking[rank] is None or time < waking[rank]:
            waking[rank] = time
            push(events, (time, rank))

    for op in range(count):
        if missing[op] == 0:
            push(pending[rank_of[op]], (0.0, op))
            wake(rank_of[op], 0.0)
    scheduled = 0
    held_up = False  # whether an op started later than its order needs
    while events:
        now, rank = pop(events)
        if waking[rank] != now:
            continue  # superseded by an earlier wake-up
        waking[rank] = None
        queue = pending[rank]
        heaps = startable[rank]
        while queue and queue[0][0] <= now:
            op = pop(queue)[1]
            push(heaps[heap_of[op]], (keys[op], op))
        capped_heap, forwards, backwards = heaps
        if soft_cap is not None and backwards and in_flight[rank] >= soft_cap:
            chosen = pop(backwards)[1]
        else:
            best = None
            if capped_heap:
                top = capped_heap[0][1]
                if reserve:
                    room = all(held[other] + need <= cap for other, need in claims[top])
                else:
                    room = held[rank] < cap
                if room:
                    best = capped_heap
            if forwards and (best is None or forwards[0][0] < best[0][0]):
                best = forwards
            if backwards and (best is None or backwards[0][0] < best[0][0]):
                best = backwards
            if best is None:
                if queue:  # nothing may start now: wait for the next arrival
                    wake(rank, queue[0][0])
                continue
            chosen = pop(best)[1]
        start = free_at[rank] if free_at[rank] > ready_at[chosen] else ready_at[chosen]
        held_up = held_up or now > start
        finish = now + durations[chosen]
        end[chosen] = finish
        free_at[rank] = finish
        if is_forward[chosen]:
            in_flight[rank] += 1
            if reserve:
                for other, need in claims[chosen]:
                    held[other] += need
            else:
                held[rank] += 1
        elif releases[chosen]:
            in_flight[rank] -= 1
            held[rank] -= 1
            if reserve and not paced:  # the room may let an entering forward in
                for other in entry_ranks:
                    if startable[other][0] and waking[other] is None:
                        wake(other, max(free_at[other], now))
        order[rank].append(chosen)
        scheduled += 1
        for dependent in dependents[chosen]:
            target = rank_of[dependent]
            arrive = finish + latency if target != rank else finish
            if arrive > ready_at[dependent]:
                ready_at[dependent] = arrive
            missing[dependent] -= 1
            if missing[dependent] == 0:
                push(pending[target], (ready_at[dependent], dependent))
                wake(target, max(free_at[target], ready_at[dependent]))
        if capped_heap or forwards or backwards:
            wake(rank, finish)
        elif queue:
            wake(rank, max(finish, queue[0][0]))
    if scheduled < count:
        return None
    if held_up:  # some op started later than its order needs: time it as `simulate` does
        end = [start + duration for start, duration in
               zip(replay(graph, order, durations, latency), durations, strict=True)]
    return PlannedOrder(order, max(end, default=0.0))


def replay(graph: OpGraph, order: list[list[int]], durations: Sequence, latency) -> list:
    """Each op's start when every rank runs its `order` as soon as it can (as `simulate`);
    in whatever number type the durations have."""
    starts: list = [None] * len(graph.ops)
    ends: list = [None] * len(graph.ops)
    position = [0] * graph.ranks
    free_at = [0 * latency] * graph.ranks
    progress = True
    while progress:
        progress = False
        for rank, rank_order in enumerate(order):
            while position[rank] < len(rank_order):
                op = rank_order[position[rank]]
                needs = graph.needs[op]
                if any(ends[need] is None for need in needs):
                    break
                start = free_at[rank]
                for need in needs:
                    start = max(start, ends[need] + (latency if graph.rank[need] != rank else 0))
                starts[op] = start
                ends[op] = free_at[rank] = start + durations[op]
                position[rank] += 1
                progress = True
    if any(start is None for start in starts):
        raise RuntimeError("the order deadlocks")
    return starts


def plan_by_priority(
    ranks: int,
    rank_of_chunk: dict[tuple[int, int], int],
    pipe_of_microbatch: dict[int, int],
    split_backward: bool,
    priority: Callable[[Op], tuple],
    in_flight_cap: int | None = None,
) -> list[list[Op]]:
    """A unit-cost order (every op takes one time unit, no latency) by `priority`."""
    graph = Layout(ranks, rank_of_chunk, pipe_of_microbatch, split_backward).graph
    keys = [
        (priority(op), op.type.value, op.pipe, op.stage, op.microbatch) for op in graph.ops
    ]
    planned = list_schedule(graph, [1.0] * len(graph.ops), 0.0, keys, in_flight_cap)
    if planned is None:
        raise RuntimeError("list scheduling stalled: the in-flight cap is too tight")
    return planned.ops(graph)
