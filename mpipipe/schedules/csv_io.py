"""Schedules as CSV: one row per rank, the rank's ops in order.

    # mpipipe schedule kind=bitpipe ranks=4 microbatches=4
    rank,ops
    0,0F0,0F1,u3F2,u4F2,...
    1,1F0,u2F2,1F1,...

Reading accepts what a person writes by hand: the comment line and the
header row are optional, the first column may hold the rank ("0", "rank 0",
"r0") or be left out (rows are then ranks 0, 1, ... in order), empty cells
are ignored. The placement is read from which rank runs each (pipe, stage),
the number of micro-batches from the highest micro-batch number, and the
kind from the comment ("custom" without one). A file without any SYNC op
gets one per chunk after the chunk's last backward (eager sync). The result
is validated.
"""

from __future__ import annotations

import csv
import io
import re

from mpipipe.errors import UsageError
from mpipipe.schedules.building import with_eager_syncs
from mpipipe.schedules.ops import Op, OpType, chunk_name
from mpipipe.schedules.schedule import Placement, Schedule
from mpipipe.schedules.validate import validate

_COMMENT = "# mpipipe schedule"
_RANK_LABEL = re.compile(r"^(?:rank\s*|r)?(\d+)$", re.IGNORECASE)
_OPTION_KEYS = ("chunks", "costs", "memory_cap")  # generator options kept in Schedule.options
_INTEGER_OPTIONS = ("ranks", "microbatches", "chunks")


def to_csv(schedule: Schedule) -> str:
    fields = {"kind": schedule.kind, "ranks": schedule.ranks, "microbatches": schedule.microbatches}
    fields.update(schedule.options)
    out = io.StringIO()
    out.write(_COMMENT + " " + " ".join(f"{key}={value}" for key, value in fields.items()) + "\n")
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(["rank", "ops"])
    for rank, rank_ops in enumerate(schedule.ops):
        writer.writerow([rank, *(str(op) for op in rank_ops)])
    return out.getvalue()


def from_csv(text: str, source: str = "schedule CSV") -> Schedule:
    """Rebuild and validate a Schedule; `source` names the file in error messages."""
    header: dict[str, str] = {}
    rows: list[tuple[int, int | None, list[Op]]] = []  # (line, rank label, ops)
    for line_number, cells in enumerate(csv.reader(io.StringIO(text)), start=1):
        cells = [cell.strip() for cell in cells]
        if not any(cells):
            continue
        if cells[0].startswith("#"):
            header.update(_read_comment(",".join(cells), source, line_number))
            continue
        if cells[0].lower() == "rank":
            continue
        label = None
        match = _RANK_LABEL.match(cells[0])
        if match:
            label, cells = int(match[1]), cells[1:]
        try:
            ops = [Op.parse(cell) for cell in cells if cell]
        except UsageError as error:
            raise UsageError(f"{source} line {line_number}: {error}") from None
        rows.append((line_number, label, ops))
    if not rows:
        raise UsageError(f"{source}: no ops found; write one row of ops per rank such as 0,0F0,0B0")
    ops = _order_rows(rows, source)
    ranks = len(ops)
    placement = _infer_placement(ops, source)
    microbatches = 1 + max(op.microbatch for rank_ops in ops for op in rank_ops)
    for key, inferred in (("ranks", ranks), ("microbatches", microbatches)):
        if key in header and int(header[key]) != inferred:
            raise UsageError(
                f"{source}: the comment says {key}={header[key]}, but the rows give {inferred}"
            )
    if not any(op.type is OpType.SYNC for rank_ops in ops for op in rank_ops):
        ops = [with_eager_syncs(rank_ops) for rank_ops in ops]
    options = {key: _option(key, value, source) for key, value in header.items()
               if key in _OPTION_KEYS}
    return validate(
        Schedule(
            kind=header.get("kind", "custom"),
            ranks=ranks,
            microbatches=microbatches,
            placement=placement,
            ops=ops,
            options=options,
        )
    )


def _read_comment(text: str, source: str, line_number: int) -> dict[str, str]:
    if not text.startswith(_COMMENT):
        return {}
    fields = {}
    for item in text[len(_COMMENT) :].replace(",", " ").split():
        key, _, value = item.partition("=")
        if key in _INTEGER_OPTIONS and not value.isdigit():
            raise UsageError(
                f"{source} line {line_number}: {key} must be a whole number, got {value!r}"
            )
        fields[key] = value
    return fields


def _option(key: str, value: str, source: str) -> int | float | str:
    """An option as the generators keep it: chunks a whole number, the memory cap a number,
    the planning costs their text (OpCosts.to_text)."""
    if key == "chunks":
        return int(value)
    if key == "memory_cap":
        try:
            return float(value)
        except ValueError:
            raise UsageError(f"{source}: memory_cap must be a number, got {value!r}") from None
    return value


def _order_rows(rows: list[tuple[int, int | None, list[Op]]], source: str) -> list[list[Op]]:
    labels = [label for _, label, _ in rows]
    if all(label is None for label in labels):
        return [ops for _, _, ops in rows]
    if sorted(labels, key=lambda label: -1 if label is None else label) != list(range(len(rows))):
        raise UsageError(
            f"{source}: rows are labelled with ranks {labels}; label every row, "
            f"with each of 0..{len(rows) - 1} once (or label none)"
        )
    return [ops for _, _, ops in sorted(rows, key=lambda row: row[1])]


def _infer_placement(ops: list[list[Op]], source: str) -> Placement:
    rank_of_chunk: dict[tuple[int, int], int] = {}
    for rank, rank_ops in enumerate(ops):
        for op in rank_ops:
            owner = rank_of_chunk.setdefault(op.chunk, rank)
            if owner != rank:
                raise UsageError(
                    f"{source}: {chunk_name(op)} has ops on ranks {owner} and "
                    f"{rank} ({op} on rank {rank}); each (pipe, stage) must live on one rank"
                )
    return Placement.from_chunks(len(ops), rank_of_chunk)
