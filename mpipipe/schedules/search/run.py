"""Run one search: the hint, the model, the solver, and the order it found as a Schedule."""

from __future__ import annotations

from dataclasses import dataclass

from mpipipe.errors import UsageError
from mpipipe.schedules import build_schedule
from mpipipe.schedules.building import make_schedule
from mpipipe.schedules.candidates import cap_in_chunks
from mpipipe.schedules.layouts import layout_of
from mpipipe.schedules.ops import Op
from mpipipe.schedules.planning import replay
from mpipipe.schedules.schedule import Schedule
from mpipipe.schedules.search.hint import hint_order
from mpipipe.schedules.search.timescale import time_scale
from mpipipe.schedules.simulate import OpCosts, simulate
from mpipipe.schedules.validate import validate

MISSING = "mpipipe schedule search needs OR-Tools: pip install mpipipe[search]"


@dataclass(frozen=True)
class SearchResult:
    schedule: Schedule  # the best order found, validated
    makespan: float  # its simulated makespan at the costs
    bound: float  # the solver's proven lower bound on any order's makespan
    optimal: bool
    hint_label: str  # which planner's order the solver started from
    hint_makespan: float
    memory_cap: float  # micro-batches of L/D layers per rank
    exact_time: bool  # False where durations were rounded to the solver's time step
    wall_s: float

    @property
    def gap(self) -> float:
        """(best - bound) / best: how far the best found may be from the optimum."""
        return (self.makespan - self.bound) / self.makespan if self.makespan else 0.0


def default_memory_cap(placement: str, ranks: int, microbatches: int, chunks: int = 2) -> float:
    """The peak of the kind the placement is named after (micro-batches of L/D layers on its
    busiest rank); D where that kind does not build this size."""
    try:
        schedule = build_schedule(placement, ranks, microbatches, chunks)
    except UsageError:
        return float(ranks)
    return max(simulate(schedule).peak_activations)


def search(
    placement: str,
    ranks: int,
    microbatches: int,
    costs: OpCosts,
    split_backward: bool,
    memory_cap: float | None = None,
    time_limit: float = 10.0,
    workers: int = 2,
    chunks: int = 2,
) -> SearchResult:
    """The best order of `placement`'s ops CP-SAT finds within `time_limit` seconds."""
    try:
        from ortools.sat.python import cp_model
    except ImportError:
        raise UsageError(MISSING) from None

    from mpipipe.schedules.search.model import build_model

    layout = layout_of(placement, ranks, microbatches, split_backward, chunks)
    costs.check_stages(layout.stages)
    if memory_cap is None:
        memory_cap = default_memory_cap(placement, ranks, microbatches, chunks)
    cap = cap_in_chunks(layout, memory_cap)
    hint = hint_order(placement, layout, costs, cap, chunks)
    graph = layout.graph
    durations = graph.durations(costs)
    scale = time_scale([*durations, costs.latency])
    ticks = [scale.ticks(duration) for duration in durations]
    latency = scale.ticks(costs.latency)
    index = {op: number for number, op in enumerate(graph.ops)}
    hint_order_numbers = [[index[op] for op in rank_ops] for rank_ops in hint.ops]
    hint_starts = replay(graph, hint_order_numbers, ticks, latency)
    horizon = max(start + tick for start, tick in zip(hint_starts, ticks, strict=True))
    built = build_model(graph, ticks, latency, cap, hint_starts, horizon)
    solver = cp_model.CpSolver()
    solver.parameters.max_time_in_seconds = float(time_limit)
    solver.parameters.num_workers = workers
    solver.parameters.random_seed = 0
    status = solver.solve(built.model)
    if status in (cp_model.OPTIMAL, cp_model.FEASIBLE):
        found = [solver.value(start) for start in built.starts]
        bound_ticks = max(solver.best_objective_bound, built.static_bound)
    else:
        found, bound_ticks = hint_starts, built.static_bound
    options = {"costs": costs.to_text(), "memory_cap": memory_cap}
    if placement == "interleaved":
        options = {"chunks": chunks, **options}
    schedule = _schedule(f"search-{placement}", layout, _order_by_start(graph, found, ticks),
                         options)
    makespan = simulate(schedule, costs).makespan
    if makespan > hint.makespan:  # only where durations were rounded for the solver
        schedule = _schedule(f"search-{placement}", layout, hint.ops, options)
        makespan = simulate(schedule, costs).makespan
    bound = min(scale.time(bound_ticks), makespan)
    return SearchResult(
        schedule=schedule,
        makespan=makespan,
        bound=bound,
        optimal=scale.exact and bound == makespan,
        hint_label=hint.label,
        hint_makespan=hint.makespan,
        memory_cap=memory_cap,
        exact_time=scale.exact,
        wall_s=solver.wall_time,
    )


def _order_by_start(graph, starts: list[int], ticks: list[int]) -> list[list[Op]]:
    """Each rank's ops by start (zero-length ops before what starts when they end)."""
    position = {op: place for place, op in enumerate(graph.topological_order)}
    key = {op: (starts[op], starts[op] + ticks[op], position[op]) for op in range(len(graph.ops))}
    ops: list[list[Op]] = [[] for _ in range(graph.ranks)]
    for number in sorted(range(len(graph.ops)), key=key.__getitem__):
        ops[graph.rank[number]].append(graph.ops[number])
    return ops


def _schedule(kind: str, layout, ops: list[list[Op]], options: dict) -> Schedule:
    return validate(
        make_schedule(kind, layout.ranks, len(layout.pipe_of_microbatch), layout.rank_of_chunk,
                      ops, options)
    )
