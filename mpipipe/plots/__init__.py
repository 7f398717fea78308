"""Figures of a training run, from the metrics.jsonl and trace.json in its folder.

    paths = plot_run("runs/x")   # runs/x/loss.png, timeline.png, time_breakdown.png, memory.png

Matplotlib is an optional extra (`pip install 'mpipipe[plot]'`), imported
only when a figure is drawn.
"""

from __future__ import annotations

import os

from mpipipe.errors import UsageError
from mpipipe.plots.breakdown import draw_breakdown
from mpipipe.plots.loss import draw_loss
from mpipipe.plots.memory import draw_memory
from mpipipe.plots.records import RunRecord, read_run
from mpipipe.plots.style import load_pyplot, save
from mpipipe.plots.timeline import draw_timeline, step_intervals, traced_steps

LOSS_FIGURE = "loss.png"
TIMELINE_FIGURE = "timeline.png"
BREAKDOWN_FIGURE = "time_breakdown.png"
MEMORY_FIGURE = "memory.png"

__all__ = [
    "BREAKDOWN_FIGURE",
    "LOSS_FIGURE",
    "MEMORY_FIGURE",
    "TIMELINE_FIGURE",
    "draw_breakdown",
    "draw_loss",
    "draw_memory",
    "draw_step_timeline",
    "plot_run",
    "read_run",
]


def plot_run(run_dir: str, out_dir: str | None = None, step: int | None = None) -> list[str]:
    """Write the run's figures into `out_dir` (default: the run folder); return their paths.

    `step`: the traced step the timeline shows (default: the last one traced, past
    the first step's one-off costs). A run without trace.json gets no timeline.
    """
    record = read_run(run_dir)
    load_pyplot()
    if not record.trace_events and step is not None:
        raise UsageError(f"--step {step}: {run_dir!r} has no trace.json (runtime.trace = false)")
    out_dir = run_dir if out_dir is None else out_dir
    try:
        os.makedirs(out_dir, exist_ok=True)
    except OSError as error:
        raise UsageError(f"--out: cannot create folder {out_dir!r} ({error.strerror})") from None
    timeline = draw_step_timeline(record, step) if record.trace_events else None
    figures = {LOSS_FIGURE: draw_loss(record.rows, record.name), TIMELINE_FIGURE: timeline,
               BREAKDOWN_FIGURE: draw_breakdown(record.rows, record.name),
               MEMORY_FIGURE: draw_memory(record.rows, record.name)}
    paths = []
    for name, figure in figures.items():
        if figure is None:
            continue
        paths.append(os.path.join(out_dir, name))
        try:
            save(figure, paths[-1])
        except OSError as error:
            raise UsageError(f"--out: cannot write {paths[-1]!r} ({error.strerror})") from None
    return paths


def draw_step_timeline(record: RunRecord, step: int | None = None):
    """The timeline figure of traced `step` (default: the last traced step) of a run."""
    if step is None:
        step = traced_steps(record.trace_events)[-1]
    intervals = step_intervals(record.trace_events, step)
    row = next((row for row in record.rows if row["step"] == step), None)
    microbatches = len({interval.op.microbatch for interval in intervals if interval.op})
    title = f"{record.name}: measured timeline of step {step}, {microbatches} micro-batches"
    if row is not None:
        title += f", window {row['window_s'] * 1e3:.1f} ms, mean bubble {row['bubble_mean']:.0%}"
    return draw_timeline(intervals, title, row["bubble"] if row else None)
