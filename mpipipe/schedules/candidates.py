"""Plan one layout for given costs: try several orders, keep the fastest that fits the cap.

The candidates are list schedules (planning.py) with the real op costs and
latency: every priority rule below, under each of three ways of keeping the
memory cap (count what is in flight; claim a micro-batch's room on every
rank when it enters; the same with paced entry) and several soft caps (no
soft cap, then from just under the cap down to a quarter of it, a rank
holding that much runs backwards first: a pipeline that fills up to the
cap often idles later). Orders the caller gives (a closed-form order) join
them, first. Each is dry-run with the costs; the fastest one whose peak
fits the cap wins, ties going to the earliest. Everything is a
deterministic function of the inputs.

The rules rank the ops a free rank may start, smallest key first. `k` is
a micro-batch's place in its own pipe (0, 1, ... in order of entry), so the
two pipes of a bidirectional layout are served alike.

    forward-first     F, then I (or B), then W; earliest k; later stage
    gradient-first    I (or B), then F, then W; earliest k; later stage
    gradient-breadth  I (or B), then F, then W; earliest k; earlier stage
    arrival           F and I (or B) by the time they would arrive at unit
                      costs with nothing waiting, gradients first on ties; W last
    timed arrival     the same at the real costs, micro-batches entering a
                      pipe every 1/2 or 3/4 of the time a rank spends on one
                      per pipe (an eager start that pays off for many units)
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from mpipipe.errors import UsageError
from mpipipe.schedules.building import make_schedule
from mpipipe.schedules.ops import Op, OpType
from mpipipe.schedules.planning import Layout, OpGraph, list_schedule, replay
from mpipipe.schedules.schedule import Schedule
from mpipipe.schedules.simulate import OpCosts

_FORWARD, _GRADIENT, _WEIGHT = 0, 1, 2


@dataclass(frozen=True)
class Candidate:
    label: str  # which rule and cap, for reports: 'gradient-first cap 16'
    ops: list[list[Op]]
    makespan: float


def planned_schedule(
    kind: str,
    layout: Layout,
    costs: OpCosts,
    memory_cap: float | None = None,
    fixed: Sequence[tuple[str, list[list[Op]]]] = (),
) -> Schedule:
    """The schedule `kind` of `layout` planned for `costs` (per op of one of its stages) and
    at most `memory_cap` micro-batches of L/D layers per rank (default D, 1F1B's peak). The
    costs and the cap are kept in the schedule's options."""
    costs.check_stages(layout.stages)
    memory_cap = float(layout.ranks) if memory_cap is None else memory_cap
    best = plan_layout(layout, costs, cap_in_chunks(layout, memory_cap), fixed)
    options = {"costs": costs.to_text(), "memory_cap": memory_cap}
    return make_schedule(
        kind, layout.ranks, len(layout.pipe_of_microbatch), layout.rank_of_chunk, best.ops,
        options,
    )


def cap_in_chunks(layout: Layout, memory_cap: float, name: str = "--cap") -> int:
    """`memory_cap` (micro-batches of L/D layers per rank) as chunk-micro-batches, or a
    UsageError naming the smallest cap any order of the layout runs with."""
    weight = layout.ranks / layout.stages  # one chunk-micro-batch in L/D layers
    smallest = min_held(layout) * weight
    if not (math.isfinite(memory_cap) and memory_cap >= smallest - 1e-9):
        raise UsageError(
            f"{name}: no order fits {memory_cap:g} micro-batches of L/D layers per rank; the "
            f"smallest cap is {smallest:g} (one micro-batch holds all of a rank's chunks of its "
            "pipe at once)"
        )
    return math.floor(memory_cap / weight + 1e-9)


def plan_layout(
    layout: Layout,
    costs: OpCosts,
    cap: int,
    fixed: Sequence[tuple[str, list[list[Op]]]] = (),
) -> Candidate:
    """The fastest candidate for `layout` at `costs` holding at most `cap` chunk-micro-batches
    per rank; `fixed` adds (label, per-rank ops) orders to the contest, first."""
    graph = layout.graph
    durations = graph.durations(costs)
    best: Candidate | None = None
    for label, ops in fixed:
        ops = [[op for op in rank_ops if op.type is not OpType.SYNC] for rank_ops in ops]
        makespan = fixed_makespan(graph, ops, durations, costs.latency)
        if peak_held(graph, ops) <= cap and (best is None or makespan < best.makespan):
            best = Candidate(label, ops, makespan)
    entry = _entry_index(layout)
    timing = _Timing.of(layout, costs)
    for rule_name, rule, memory_rules in _RULES:
        keys = [rule(op, entry[(op.pipe, op.microbatch)], timing) for op in graph.ops]
        for memory, reserve, paced in memory_rules:
            for soft_cap in _soft_caps(cap):
                planned = list_schedule(
                    graph, durations, costs.latency, keys, cap, reserve, soft_cap, paced
                )
                if planned is not None and (best is None or planned.makespan < best.makespan):
                    backwards = f", backwards first from {soft_cap}" if soft_cap else ""
                    label = f"{rule_name}, cap {cap} {memory}{backwards}"
                    best = Candidate(label, planned.ops(graph), planned.makespan)
    if best is None:
        raise RuntimeError(f"no order of this layout fits {cap} chunk-micro-batches per rank")
    return best


# How the cap is kept (list_schedule's reserve and paced): (name, reserve, paced).
_MEMORY_RULES = (
    ("in flight", False, False),
    ("claimed", True, False),
    ("claimed, paced", True, True),
)


def _soft_caps(cap: int) -> list[int | None]:
    """No soft cap, and the levels from which backwards go before forwards: just under the
    cap, down to a quarter of it (a pipeline that fills up to the cap often idles later)."""
    levels = (cap - 1, cap - 2, cap * 3 // 4, cap // 2, cap // 4)
    return [None, *sorted({level for level in levels if level >= 1}, reverse=True)]


def min_held(layout: Layout) -> int:
    """The fewest chunk-micro-batches per rank that any order can run with: one micro-batch
    holds all of a rank's chunks of its pipe at once, at the turn of its V."""
    counts: dict[tuple[int, int], int] = {}
    for (pipe, _), rank in layout.rank_of_chunk.items():
        counts[(rank, pipe)] = counts.get((rank, pipe), 0) + 1
    used = set(layout.pipe_of_microbatch.values())
    return max(count for (_, pipe), count in counts.items() if pipe in used)


def _entry_index(layout: Layout) -> dict[tuple[int, int], int]:
    """(pipe, microbatch) -> k, the micro-batch's place among its pipe's micro-batches."""
    seen: dict[int, int] = {}
    index = {}
    for microbatch, pipe in sorted(layout.pipe_of_microbatch.items()):
        index[(pipe, microbatch)] = seen.get(pipe, 0)
        seen[pipe] = index[(pipe, microbatch)] + 1
    return index


def _kind(op: Op) -> int:
    if op.type is OpType.FORWARD:
        return _FORWARD
    return _WEIGHT if op.type is OpType.BACKWARD_WEIGHT else _GRADIENT


@dataclass(frozen=True)
class _Timing:
    """When a micro-batch's ops would come due if nothing ever waited, at the real costs."""

    forward_before: list[float]  # per stage: the forwards of the stages before it
    forward_total: float
    gradient_after: list[float]  # per stage: the gradients (I or B) of the stages after it
    period: float  # between two micro-batches entering one pipe

    @classmethod
    def of(cls, layout: Layout, costs: OpCosts) -> _Timing:
        gradient_type = OpType.BACKWARD_INPUT if layout.split_backward else OpType.BACKWARD
        stages = range(layout.stages)
        forward = [costs.duration(Op(OpType.FORWARD, stage, 0)) for stage in stages]
        gradient = [costs.duration(Op(gradient_type, stage, 0)) for stage in stages]
        whole = sum(costs.duration(Op(OpType.BACKWARD, stage, 0)) for stage in stages)
        pipes = len(set(layout.pipe_of_microbatch.values()))
        return cls(
            forward_before=[sum(forward[:stage]) for stage in stages],
            forward_total=sum(forward),
            gradient_after=[sum(gradient[stage + 1 :]) for stage in stages],
            period=(sum(forward) + whole) * pipes / layout.ranks,
        )


def _forward_first(op: Op, k: int, timing: _Timing) -> tuple:
    return (_kind(op), k, -op.stage)


def _gradient_first(op: Op, k: int, timing: _Timing) -> tuple:
    return ((1, 0, 2)[_kind(op)], k, -op.stage)


def _gradient_breadth(op: Op, k: int, timing: _Timing) -> tuple:
    return ((1, 0, 2)[_kind(op)], k, op.stage)


def _arrival(op: Op, k: int, timing: _Timing) -> tuple:
    # Unit costs: micro-batch k enters at 2k (one F and one B per time unit pair), reaches
    # stage s at 2k + s, and its gradient is back at stage s at 2k + 2S - 1 - s.
    stages = len(timing.forward_before)
    kind = _kind(op)
    if kind == _FORWARD:
        return (0, 2 * k + op.stage, 1)
    if kind == _GRADIENT:
        return (0, 2 * k + 2 * stages - 1 - op.stage, 0)
    return (1, k, -op.stage)


def _timed_arrival(pace: float) -> Callable[[Op, int, _Timing], tuple]:
    """Like `_arrival` with the real costs, micro-batches entering every `pace` periods."""

    def key(op: Op, k: int, timing: _Timing) -> tuple:
        kind = _kind(op)
        enter = k * timing.period * pace
        if kind == _FORWARD:
            return (0, enter + timing.forward_before[op.stage], 1)
        if kind == _GRADIENT:
            return (0, enter + timing.forward_total + timing.gradient_after[op.stage], 0)
        return (1, k, -op.stage)

    return key


# (name, key, the ways of keeping the cap it is tried with)
_RULES: list[tuple[str, Callable[[Op, int, _Timing], tuple], tuple]] = [
    ("forward-first", _forward_first, _MEMORY_RULES),
    ("gradient-first", _gradient_first, _MEMORY_RULES),
    ("gradient-breadth", _gradient_breadth, _MEMORY_RULES),
    ("arrival", _arrival, _MEMORY_RULES),
    ("timed arrival, pace 1/2", _timed_arrival(0.5), _MEMORY_RULES[:1]),
    ("timed arrival, pace 3/4", _timed_arrival(0.75), _MEMORY_RULES[:1]),
]


def fixed_makespan(
    graph: OpGraph, ops: list[list[Op]], durations: Sequence[float], latency: float
) -> float:
    """The dry run of a given order on `graph` (what `simulate` gives, without SYNC ops)."""
    index = {op: number for number, op in enumerate(graph.ops)}
    order = [[index[op] for op in rank_ops if op in index] for rank_ops in ops]
    starts = replay(graph, order, durations, latency)
    return max((start + durations[op] for op, start in enumerate(starts)), default=0.0)


def peak_held(graph: OpGraph, ops: list[list[Op]]) -> int:
    """The most chunk-micro-batches any rank holds in `ops` (a function of the order alone:
    a rank runs one op at a time, so a release always ends before its next forward starts)."""
    releasing = {graph.ops[number].type for number, flag in enumerate(graph.releases) if flag}
    peak = 0
    for rank_ops in ops:
        level = 0
        for op in rank_ops:
            if op.type is OpType.FORWARD:
                level += 1
                peak = max(peak, level)
            elif op.type in releasing:
                level -= 1
    return peak
