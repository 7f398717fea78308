"""Where each rank's step time goes: compute, communication (MPI waits), idle.

Per step, the window runs from the first op's start to the last op's end
over all ranks. Within it a rank computes (F, B, I, W ops), waits in MPI
(receives, the end-of-step sends and gradient syncs), or neither: idle, the
pipeline bubble outside message waits plus the engine's own overhead.
"""

from __future__ import annotations

from dataclasses import dataclass

from mpipipe.plots.style import (
    COMPUTE_COLOUR,
    IDLE_COLOUR,
    LEGEND_INCHES,
    WAIT_COLOUR,
    load_pyplot,
    tidy,
)


@dataclass(frozen=True)
class RankTimes:
    """Mean seconds per step of one rank."""

    compute_s: float
    wait_s: float
    idle_s: float

    @property
    def window_s(self) -> float:
        return self.compute_s + self.wait_s + self.idle_s


def measured_rows(rows: list[dict]) -> list[dict]:
    """The steps to average: all but the first, whose time includes one-off set-up work."""
    return rows[1:] if len(rows) > 1 else rows


def rank_times(rows: list[dict]) -> list[RankTimes]:
    """Per rank, the mean over `rows` of compute, wait and idle seconds."""
    ranks = len(rows[0]["compute_s"])
    sums = [[0.0, 0.0, 0.0] for _ in range(ranks)]
    for row in rows:
        for rank in range(ranks):
            compute = row["compute_s"][rank]
            # The step's last waits (sends, syncs) can outlast the window, which ends with the
            # last op: only the part inside it is drawn, so the three parts fill the window.
            wait = min(row["wait_s"][rank], max(0.0, row["window_s"] - compute))
            totals = sums[rank]
            totals[0] += compute
            totals[1] += wait
            totals[2] += max(0.0, row["window_s"] - compute - wait)
    return [RankTimes(*(total / len(rows) for total in totals)) for totals in sums]


def draw_breakdown(rows: list[dict], title: str):
    """Stacked bars of each rank's mean compute, wait and idle time; returns the figure."""
    pyplot = load_pyplot()
    measured = measured_rows(rows)
    times = rank_times(measured)
    ranks = len(times)
    height = max(2.6, 1.6 + 0.45 * ranks)
    figure, axes = pyplot.subplots(figsize=(8, height))
    parts = (
        ("compute", COMPUTE_COLOUR, "white", [t.compute_s for t in times]),
        ("communication (blocked in MPI waits)", WAIT_COLOUR, "white", [t.wait_s for t in times]),
        ("idle", IDLE_COLOUR, "black", [t.idle_s for t in times]),
    )
    longest = max(t.window_s for t in times) * 1e3 or 1.0
    left = [0.0] * ranks
    for label, colour, text_colour, seconds in parts:
        widths = [value * 1e3 for value in seconds]
        axes.barh(range(ranks), widths, left=left, height=0.7, color=colour, label=label)
        for rank, value in enumerate(widths):
            share = value / (times[rank].window_s * 1e3 or 1.0)
            if value > 0.07 * longest:
                axes.text(
                    left[rank] + value / 2, rank, f"{share:.0%}", ha="center", va="center",
                    fontsize=8, color=text_colour,
                )
        left = [start + value for start, value in zip(left, widths, strict=True)]
    axes.set_ylim(ranks - 0.5, -0.5)
    axes.set_yticks(range(ranks), [f"rank {rank}" for rank in range(ranks)])
    axes.set_xlabel("milliseconds per step")
    first, last = measured[0]["step"], measured[-1]["step"]
    steps = f"step {first}" if first == last else f"steps {first}–{last}"
    axes.set_title(f"{title}: time per step by rank, mean over {steps}", fontsize=10)
    figure.legend(loc="lower center", ncol=3, fontsize=8, frameon=False)
    tidy(axes)
    figure.tight_layout(rect=(0, LEGEND_INCHES / height, 1, 1))
    return figure
