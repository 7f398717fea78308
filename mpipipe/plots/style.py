"""Matplotlib, loaded on demand (an optional extra), and the colours every figure shares."""

from __future__ import annotations

from mpipipe.errors import UsageError
from mpipipe.schedules.ops import OpType

INSTALL_HINT = "pip install 'mpipipe[plot]'"

# (down pipe, up pipe), as in `mpipipe schedule --format png` and the BitPipe and Chimera figures.
OP_COLOURS = {
    OpType.FORWARD: ("#4c72b0", "#8fb3e0"),
    OpType.BACKWARD: ("#55a868", "#9ed3a8"),
    OpType.BACKWARD_INPUT: ("#dd8452", "#f2bf9b"),
    OpType.BACKWARD_WEIGHT: ("#8172b3", "#c0b6e3"),
}
OP_NAMES = {
    OpType.FORWARD: "forward (F)",
    OpType.BACKWARD: "backward (B)",
    OpType.BACKWARD_INPUT: "input gradient (I)",
    OpType.BACKWARD_WEIGHT: "weight gradient (W)",
}
COMPUTE_COLOUR = "#4c72b0"
WAIT_COLOUR = "#8c8c8c"  # blocked in MPI: dark grey, apart from every op colour
IDLE_COLOUR = "#e3e3e3"
DPI = 120
LEGEND_INCHES = 0.35  # room under the axes for a one-row legend


def load_pyplot(missing: str = f"plot: matplotlib is not installed; {INSTALL_HINT}"):
    """matplotlib.pyplot on the file-only Agg backend, or a UsageError saying `missing`."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as pyplot
    except ImportError:
        raise UsageError(missing) from None
    return pyplot


def tidy(axes) -> None:
    """Drop the top and right frame lines."""
    for side in ("top", "right"):
        axes.spines[side].set_visible(False)


def save(figure, path: str) -> None:
    """Write `figure` as a PNG and free it."""
    figure.savefig(path, dpi=DPI)
    load_pyplot().close(figure)
