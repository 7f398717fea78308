"""Draw a simulated schedule: a text grid, a Chrome/Perfetto trace, a PNG figure."""

from __future__ import annotations

import math
from fractions import Fraction

from mpipipe.errors import UsageError
from mpipipe.plots.style import OP_COLOURS, OP_NAMES, load_pyplot, save, tidy
from mpipipe.schedules.ops import OpType
from mpipipe.schedules.schedule import Schedule
from mpipipe.schedules.simulate import OpCosts, Simulation

_MAX_SLOTS = 20000


def timeline_text(simulation: Simulation) -> str:
    """One row per rank and one column per time slot, as in DESIGN.md's BitPipe grid.

    A slot is the largest time unit that divides every start and end; an op
    fills its first slot with its name and the rest with '=', '.' is idle.
    SYNC ops take no time; their start times follow the grid.
    """
    timed_ops = [
        timed
        for rank_ops in simulation.timeline
        for timed in rank_ops
        if timed.op.type is not OpType.SYNC
    ]
    times = [_exact(time) for timed in timed_ops for time in (timed.start, timed.end)]
    unit = _common_divisor([time for time in times if time > 0]) or Fraction(1)
    slots = math.ceil(_exact(simulation.makespan) / unit)
    if slots > _MAX_SLOTS:
        raise UsageError(
            f"--format text: these costs need {slots} time slots of {float(unit):g} per row "
            f"(at most {_MAX_SLOTS}); use rounder costs, or --format png or json"
        )
    width = max([len(str(timed.op)) for timed in timed_ops] + [len(str(slots - 1))])
    rows = []
    for rank, rank_ops in enumerate(simulation.timeline):
        cells = ["."] * slots
        for timed in rank_ops:
            if timed.op.type is OpType.SYNC:
                continue
            first = round(_exact(timed.start) / unit)
            last = round(_exact(timed.end) / unit)
            cells[first] = str(timed.op)
            for slot in range(first + 1, last):
                cells[slot] = "="
        rows.append(f"r{rank:<4} " + " ".join(f"{cell:<{width}}" for cell in cells).rstrip())
    header = "slot  " + " ".join(f"{slot:<{width}}" for slot in range(slots)).rstrip()
    unit_note = f"one slot = {float(unit):g} time units" if unit != 1 else "one slot = 1 time unit"
    return "\n".join([header, *rows, "", unit_note, *_summary_lines(simulation)]) + "\n"


def _planned_for(schedule: Schedule) -> str:
    """Which costs the order was planned for: computed orders keep them in their options."""
    if "costs" not in schedule.options:
        return "order planned for any costs (it does not depend on them)"
    planned = OpCosts.from_text(schedule.options["costs"]).describe(schedule.split_backward)
    cap = schedule.options.get("memory_cap")
    held = f", at most {cap:g} micro-batches of L/D layers per rank" if cap is not None else ""
    return f"order planned for costs per stage {planned}{held}"


def _summary_lines(simulation: Simulation) -> list[str]:
    def numbers(values: list[float], digits: int) -> str:
        return " ".join(f"{value:.{digits}f}" for value in values)

    costs = simulation.costs
    schedule = simulation.schedule
    backward = (
        f"I={costs.backward_input:g} W={costs.backward_weight:g}"
        if schedule.split_backward
        else f"B={costs.backward:g}"
    )
    lines = [
        f"{schedule.kind}: D={schedule.ranks} N={schedule.microbatches} S={schedule.stages} "
        f"costs per stage F={costs.forward:g} {backward} latency={costs.latency:g}",
        _planned_for(schedule),
        f"makespan          {simulation.makespan:g}",
        f"bubble per rank   {numbers(simulation.bubble, 3)}",
        f"peak activations  {numbers(simulation.peak_activations, 2)} "
        "(micro-batches of L/D layers)",
        f"messages          {simulation.messages}",
    ]
    for rank, starts in enumerate(simulation.sync_starts):
        syncs = " ".join(f"{name}@{start:g}" for name, start in starts.items())
        lines.append(f"sync starts r{rank:<4}{syncs}")
    return lines


def chrome_trace(simulation: Simulation) -> dict:
    """Trace Event Format for chrome://tracing or ui.perfetto.dev: one track per rank.

    One time unit of the simulation is shown as one millisecond.
    """
    schedule = simulation.schedule
    events: list[dict] = [
        {"name": "process_name", "ph": "M", "pid": 0, "args": {"name": f"{schedule.kind} schedule"}}
    ]
    for rank, rank_ops in enumerate(simulation.timeline):
        name = {"name": f"rank {rank}"}
        events.append({"name": "thread_name", "ph": "M", "pid": 0, "tid": rank, "args": name})
        for timed in rank_ops:
            op = timed.op
            event = {
                "name": str(op),
                "cat": op.type.value,
                "pid": 0,
                "tid": rank,
                "ts": timed.start * 1000.0,
                "args": {"pipe": op.pipe, "stage": op.stage, "microbatch": op.microbatch},
            }
            if op.type is OpType.SYNC:
                event.update(ph="i", s="t")
            else:
                event.update(ph="X", dur=(timed.end - timed.start) * 1000.0)
            events.append(event)
    return {"traceEvents": events, "displayTimeUnit": "ms"}


def write_png(simulation: Simulation, path: str) -> None:
    """A figure like the papers': one row per rank, time across, micro-batch numbers in boxes."""
    plt = load_pyplot("--format png needs matplotlib: pip install mpipipe[plot]")
    from matplotlib.patches import Patch

    schedule = simulation.schedule
    makespan = simulation.makespan or 1.0
    width = min(4 + 0.3 * makespan, 24)
    figure, axes = plt.subplots(figsize=(width, 1.2 + 0.45 * schedule.ranks))
    used = set()
    for rank, rank_ops in enumerate(simulation.timeline):
        for timed in rank_ops:
            op = timed.op
            if op.type is OpType.SYNC:
                axes.plot([timed.start], [rank - 0.45], marker="v", color="black", markersize=5)
                continue
            colour = OP_COLOURS[op.type][op.pipe]
            used.add((op.type, op.pipe))
            axes.broken_barh(
                [(timed.start, timed.end - timed.start)], (rank - 0.4, 0.8),
                facecolors=colour, edgecolors="white", linewidth=0.8,
            )
            axes.text(
                (timed.start + timed.end) / 2, rank, str(op.microbatch),
                ha="center", va="center", fontsize=7, color="white" if op.pipe == 0 else "black",
            )
    axes.set_ylim(schedule.ranks - 0.5, -0.6)
    axes.set_xlim(0, makespan)
    axes.set_yticks(range(schedule.ranks), [f"rank {rank}" for rank in range(schedule.ranks)])
    axes.set_xlabel("time")
    bubble = sum(simulation.bubble) / len(simulation.bubble)
    axes.set_title(
        f"{schedule.kind}: D={schedule.ranks}, N={schedule.microbatches}, "
        f"makespan {simulation.makespan:g}, mean bubble {bubble:.1%}  (▼ gradient sync starts)",
        fontsize=10,
    )
    pipe_names = ([" (down pipe)", " (up pipe)"] if schedule.pipes > 1 else ["", ""])
    handles = [
        Patch(facecolor=OP_COLOURS[op_type][pipe], label=OP_NAMES[op_type] + pipe_names[pipe])
        for op_type in OP_COLOURS
        for pipe in (0, 1)
        if (op_type, pipe) in used
    ]
    axes.legend(
        handles=handles, loc="upper left", bbox_to_anchor=(1.0, 1.0), fontsize=8, frameon=False
    )
    tidy(axes)
    figure.tight_layout()
    save(figure, path)


def _exact(time: float) -> Fraction:
    return Fraction(time).limit_denominator(10**6)


def _common_divisor(values: list[Fraction]) -> Fraction | None:
    if not values:
        return None
    numerator = 0
    denominator = 1
    for value in values:
        denominator = denominator * value.denominator // math.gcd(denominator, value.denominator)
    for value in values:
        numerator = math.gcd(numerator, int(value * denominator))
    return Fraction(numerator, denominator)
