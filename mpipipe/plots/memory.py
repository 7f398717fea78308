"""Measured memory per step: each rank's peak (solid) and its activation caches' peak (dashed)."""

from __future__ import annotations

from mpipipe.plots.style import load_pyplot, tidy

GIB = 2**30


def draw_memory(rows: list[dict], title: str):
    """One line per rank of memory_bytes and of activation_bytes over the steps, in GiB; None
    for a run whose rows have no memory fields (written before they were measured)."""
    rows = [row for row in rows if "memory_bytes" in row]
    if not rows:
        return None
    pyplot = load_pyplot()
    steps = [row["step"] for row in rows]
    figure, axes = pyplot.subplots(figsize=(8, 4))
    colours = pyplot.rcParams["axes.prop_cycle"].by_key()["color"]
    for rank in range(len(rows[0]["memory_bytes"])):
        colour = colours[rank % len(colours)]
        axes.plot(steps, [row["memory_bytes"][rank] / GIB for row in rows], color=colour,
                  linewidth=1.5, label=f"rank {rank}")
        axes.plot(steps, [row["activation_bytes"][rank] / GIB for row in rows], color=colour,
                  linewidth=1, linestyle="--")
    last = rows[-1]
    axes.set_title(f"{title}: peak memory per step, most {last['memory_peak_bytes'] / GIB:.3g} "
                   f"GiB on rank {last['memory_peak_rank']} (dashed: activation caches)")
    axes.set_xlabel("step")
    axes.set_ylabel("GiB")
    axes.set_ylim(bottom=0)
    axes.legend(frameon=False, fontsize="small", ncol=4)
    axes.grid(alpha=0.3)
    tidy(axes)
    figure.tight_layout()
    return figure
