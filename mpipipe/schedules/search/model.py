"""The CP-SAT model of one layout's ops (OR-Tools; imported only by a search).

Integer time (timescale.py). Per op a start and a fixed-size interval;
a dependency is start(after) >= end(before), plus the latency across ranks;
per rank one no-overlap over its ops and one cumulative over its
chunk-micro-batches (F's start to its B's or W's end, one unit each, at
most the cap); the makespan is at least every op's end and at least each
rank's earliest start + its work + its shortest tail (a bound the solver
gets for free). Micro-batches of one pipe are interchangeable, so they
enter in number order.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from ortools.sat.python import cp_model

from mpipipe.schedules.ops import OpType
from mpipipe.schedules.planning import OpGraph


@dataclass
class OpModel:
    model: cp_model.CpModel
    starts: list[cp_model.IntVar]
    makespan: cp_model.IntVar
    static_bound: int


def build_model(
    graph: OpGraph,
    durations: Sequence[int],
    latency: int,
    cap: int,
    hint_starts: Sequence[int],
    horizon: int,
) -> OpModel:
    model = cp_model.CpModel()
    count = len(graph.ops)
    starts = [
        model.new_int_var(0, max(horizon - durations[op], 0), f"s{op}") for op in range(count)
    ]
    intervals = [
        model.new_fixed_size_interval_var(starts[op], durations[op], f"i{op}")
        for op in range(count)
    ]

    def gap(before: int, after: int) -> int:
        return durations[before] + (latency if graph.rank[before] != graph.rank[after] else 0)

    for op, needs in enumerate(graph.needs):
        for need in needs:
            model.add(starts[op] >= starts[need] + gap(need, op))
    for rank in range(graph.ranks):
        model.add_no_overlap([intervals[op] for op in range(count) if graph.rank[op] == rank])
    _add_memory_cap(model, graph, starts, durations, cap, horizon)
    _add_entry_order(model, graph, starts, durations)
    static_bound = _static_bound(graph, durations, gap)
    makespan = model.new_int_var(min(static_bound, horizon), horizon, "makespan")
    for op in range(count):
        if not graph.dependents[op]:
            model.add(makespan >= starts[op] + durations[op])
    model.minimize(makespan)
    for op in range(count):
        model.add_hint(starts[op], hint_starts[op])
    model.add_hint(makespan, horizon)
    return OpModel(model, starts, makespan, static_bound)


def _add_memory_cap(model, graph: OpGraph, starts, durations, cap: int, horizon: int) -> None:
    forward_of = {
        (op.pipe, op.stage, op.microbatch): number
        for number, op in enumerate(graph.ops)
        if op.type is OpType.FORWARD
    }
    spans: dict[int, list] = {}
    for number, op in enumerate(graph.ops):
        if not graph.releases[number]:
            continue
        forward = forward_of[(op.pipe, op.stage, op.microbatch)]
        size = model.new_int_var(0, horizon, f"held{number}")
        end = starts[number] + durations[number]
        span = model.new_interval_var(starts[forward], size, end, f"h{number}")
        spans.setdefault(graph.rank[number], []).append(span)
    for rank_spans in spans.values():
        if len(rank_spans) > cap:
            model.add_cumulative(rank_spans, [1] * len(rank_spans), cap)


def _add_entry_order(model, graph: OpGraph, starts, durations) -> None:
    entries: dict[int, list[tuple[int, int]]] = {}
    for number, op in enumerate(graph.ops):
        if op.type is OpType.FORWARD and op.stage == 0:
            entries.setdefault(op.pipe, []).append((op.microbatch, number))
    for pipe_entries in entries.values():
        ordered = [number for _, number in sorted(pipe_entries)]
        for first, second in zip(ordered, ordered[1:], strict=False):
            model.add(starts[second] >= starts[first] + durations[first])


def _static_bound(graph: OpGraph, durations: Sequence[int], gap) -> int:
    """max over ranks of (earliest start + work + shortest tail), and the longest path."""
    order = graph.topological_order
    head = [0] * len(graph.ops)
    for op in order:
        for need in graph.needs[op]:
            head[op] = max(head[op], head[need] + gap(need, op))
    tail = [0] * len(graph.ops)  # from the op's end to the makespan
    for op in reversed(order):
        for dependent in graph.dependents[op]:
            tail[op] = max(tail[op], gap(op, dependent) - durations[op] + durations[dependent]
                           + tail[dependent])
    bound = max((head[op] + durations[op] + tail[op] for op in order), default=0)
    for rank in range(graph.ranks):
        mine = [op for op in range(len(graph.ops)) if graph.rank[op] == rank]
        if mine:
            work = sum(durations[op] for op in mine)
            bound = max(bound, min(head[op] for op in mine) + work + min(tail[op] for op in mine))
    return bound
