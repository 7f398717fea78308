"""`mpipipe schedule --format png`: a simulated schedule drawn as in the papers."""

from __future__ import annotations

from mpipipe.plots.style import OP_COLOURS, OP_NAMES, load_pyplot, save, tidy
from mpipipe.schedules.ops import OpType
from mpipipe.schedules.simulate import Simulation


def draw_schedule(simulation: Simulation, path: str) -> None:
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
