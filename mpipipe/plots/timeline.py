"""The measured timeline of one step: one row per rank, op boxes as in the pipeline papers.

Boxes are coloured by op type (F, B, I, W), lighter for the up pipe of a
bidirectional schedule, and carry their micro-batch number; the thin grey
bars under them are the times a rank sat blocked in an MPI wait. White is
idle: the rank neither computed nor waited (the pipeline bubble outside
message waits, and the engine's own overhead).
"""

from __future__ import annotations

from dataclasses import dataclass

from mpipipe.errors import UsageError
from mpipipe.plots.style import (
    LEGEND_INCHES,
    OP_COLOURS,
    OP_NAMES,
    WAIT_COLOUR,
    load_pyplot,
    tidy,
)
from mpipipe.schedules.ops import Op

WAIT_BAR_HEIGHT = 0.2
BOX_HEIGHT = 0.8
POINTS_PER_INCH = 72
DIGIT_WIDTH_EM = 0.62  # width of one digit in units of the font size


@dataclass(frozen=True)
class Interval:
    """One traced op or wait of one rank, in milliseconds from the step's first event."""

    rank: int
    start_ms: float
    duration_ms: float
    name: str
    op: Op | None  # None for a wait

    @property
    def end_ms(self) -> float:
        return self.start_ms + self.duration_ms


def traced_steps(events: list[dict]) -> list[int]:
    return sorted({event["args"]["step"] for event in events if "step" in event.get("args", {})})


def step_intervals(events: list[dict], step: int) -> list[Interval]:
    """Every compute and wait interval of `step`, by rank, then start time."""
    chosen = [event for event in events if event.get("args", {}).get("step") == step]
    if not chosen:
        steps = traced_steps(events)
        held = ", ".join(map(str, steps)) if steps else "no step"
        raise UsageError(
            f"--step {step}: trace.json holds {held}; choose one of those (runtime.trace_steps "
            "sets how many steps a run records)"
        )
    origin = min(event["ts"] for event in chosen)
    intervals = [
        Interval(
            rank=event["tid"],
            start_ms=(event["ts"] - origin) / 1e3,
            duration_ms=event["dur"] / 1e3,
            name=event["name"],
            op=Op.parse(event["name"]) if event.get("cat") == "compute" else None,
        )
        for event in chosen
    ]
    return sorted(intervals, key=lambda interval: (interval.rank, interval.start_ms))


def seconds_by_rank(intervals: list[Interval], ranks: int) -> tuple[list[float], list[float]]:
    """Per rank: seconds computing and seconds waiting, summed over the intervals."""
    compute, wait = [0.0] * ranks, [0.0] * ranks
    for interval in intervals:
        totals = compute if interval.op is not None else wait
        totals[interval.rank] += interval.duration_ms / 1e3
    return compute, wait


def draw_timeline(intervals: list[Interval], title: str, bubble: list[float] | None = None):
    """The figure of one step's `intervals`; `bubble`: per-rank share not computing, if known."""
    pyplot = load_pyplot()
    ranks = max(len(bubble or []), 1 + max(interval.rank for interval in intervals))
    span = max(interval.end_ms for interval in intervals) or 1.0
    ops_per_rank = max(
        sum(1 for interval in intervals if interval.rank == rank and interval.op is not None)
        for rank in range(ranks)
    )
    width = min(max(9.0, 3.0 + 0.25 * ops_per_rank), 24.0)
    height = max(3.0, 1.6 + 0.5 * ranks)
    figure, axes = pyplot.subplots(figsize=(width, height))
    points_per_ms = 0.82 * width * POINTS_PER_INCH / span
    font_size = 7
    used = set()
    for interval in intervals:
        if interval.op is None:
            axes.broken_barh(
                [(interval.start_ms, interval.duration_ms)],
                (interval.rank + BOX_HEIGHT / 2 - WAIT_BAR_HEIGHT, WAIT_BAR_HEIGHT),
                facecolors=WAIT_COLOUR, edgecolors="none",
            )
            continue
        op = interval.op
        used.add((op.type, op.pipe))
        axes.broken_barh(
            [(interval.start_ms, interval.duration_ms)],
            (interval.rank - BOX_HEIGHT / 2, BOX_HEIGHT),
            facecolors=OP_COLOURS[op.type][op.pipe], edgecolors="white", linewidth=0.6,
        )
        label = str(op.microbatch)
        if interval.duration_ms * points_per_ms >= DIGIT_WIDTH_EM * font_size * len(label) + 2:
            axes.text(
                interval.start_ms + interval.duration_ms / 2, interval.rank, label,
                ha="center", va="center", fontsize=font_size,
                color="white" if op.pipe == 0 else "black",
            )
    axes.set_xlim(0, span)
    axes.set_ylim(ranks - 0.5, -0.5)
    axes.set_yticks(range(ranks), [f"rank {rank}" for rank in range(ranks)])
    axes.set_xlabel("milliseconds since the step's first op")
    if bubble:
        label_axes = axes.twinx()
        label_axes.set_ylim(axes.get_ylim())
        label_axes.set_yticks(range(ranks), [f"bubble {value:.0%}" for value in bubble])
        label_axes.tick_params(length=0, labelsize=8)
        label_axes.spines[:].set_visible(False)
    axes.set_title(title, fontsize=10)
    handles = _legend_handles(used)
    figure.legend(
        handles=handles, loc="lower center", ncol=min(len(handles), 5), fontsize=8, frameon=False
    )
    tidy(axes)
    figure.tight_layout(rect=(0, LEGEND_INCHES / height, 1, 1))
    return figure


def _legend_handles(used: set) -> list:
    """One entry per (op type, pipe) drawn, then the MPI waits."""
    from matplotlib.patches import Patch

    bidirectional = any(pipe == 1 for _, pipe in used)
    pipe_names = (" down", " up") if bidirectional else ("", "")
    handles = [
        Patch(facecolor=OP_COLOURS[op_type][pipe], label=OP_NAMES[op_type] + pipe_names[pipe])
        for op_type in OP_COLOURS
        for pipe in (0, 1)
        if (op_type, pipe) in used
    ]
    return [*handles, Patch(facecolor=WAIT_COLOUR, label="blocked in an MPI wait")]
