"""The step x rank grid of a schedule, and the error that points into it.

A broken schedule is reported PyTorch-style: one line that names every
rank's problem (the `UsageError` message), plus a grid of every rank's ops
in list order with the failing cells bracketed and "<-- ERROR HERE" at the
end of their rows (the `report`, printed before the line).
"""

from __future__ import annotations

from mpipipe.errors import UsageError
from mpipipe.schedules.ops import Op


class ScheduleError(UsageError):
    """A schedule that cannot run: wrong ops, wrong ranks, or a deadlock.

    `cells` are the (rank, step) positions the message is about, in its order;
    `rows` the ranks it names without a cell (an op missing from them).
    """

    def __init__(
        self,
        message: str,
        report: str = "",
        cells: tuple[tuple[int, int], ...] = (),
        rows: tuple[int, ...] = (),
    ):
        super().__init__(message)
        self.report = report
        self.cells = cells
        self.rows = rows


def step_grid(ops: list[list[Op]], marks: dict[tuple[int, int], str] | None = None) -> str:
    """Rows are steps (an op's index in its rank's list), columns are ranks.

    `marks` maps (rank, step) to a note; those cells are bracketed and their
    notes follow the row.
    """
    marks = marks or {}
    steps = max((len(rank_ops) for rank_ops in ops), default=0)
    cells = [
        [
            (f"[{rank_ops[step]}]" if (rank, step) in marks else str(rank_ops[step]))
            if step < len(rank_ops)
            else ""
            for rank, rank_ops in enumerate(ops)
        ]
        for step in range(steps)
    ]
    width = max([len(cell) for row in cells for cell in row] + [len(f"rank {len(ops) - 1}")])
    header = "step  " + " ".join(f"{f'rank {rank}':<{width}}" for rank in range(len(ops)))
    lines = [header.rstrip()]
    for step, row in enumerate(cells):
        line = f"{step:>4}  " + " ".join(f"{cell:<{width}}" for cell in row)
        notes = [marks[(rank, step)] for rank in range(len(ops)) if (rank, step) in marks]
        if notes:
            line = line.rstrip() + "  <-- ERROR HERE: " + "; ".join(notes)
        lines.append(line.rstrip())
    return "\n".join(lines)
