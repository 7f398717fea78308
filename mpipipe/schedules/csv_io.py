"""Schedules as CSV: one row per rank, the rank's ops in order.

    # mpipipe schedule kind=bitpipe ranks=4 microbatches=4
    rank,ops
    0,0F0,0F1,u3F2,u4F2,...
    1,1F0,u2F2,1F1,...

Reading accepts what a person writes by hand and what PyTorch's pipelining
writes (both its compute_only and compute_comms files; torch_csv.py says how
their cells translate): the comment line and the header row are optional,
the first column may hold the rank ("0", "rank 0", "r0") or be left out
(rows are then ranks 0, 1, ... in order), empty cells are ignored. The
placement is read from which rank runs each (pipe, stage), the number of
micro-batches from how many forwards most stages run, and the kind from the
comment ("custom" without one). A file without any SYNC op gets one per
chunk after the chunk's last backward (eager sync). The result is
validated; errors name the file, and the line and cell where there is one.
"""

from __future__ import annotations

import csv
import io
import re
from collections import Counter
from dataclasses import dataclass, field

from mpipipe.errors import UsageError
from mpipipe.schedules.building import with_eager_syncs
from mpipipe.schedules.grid import ScheduleError
from mpipipe.schedules.ops import Op, OpType, chunk_name, pipe_name
from mpipipe.schedules.schedule import MAX_OPS, Placement, Schedule
from mpipipe.schedules.torch_csv import Message, check_messages, read_cell
from mpipipe.schedules.validate import validate

_COMMENT = "# mpipipe schedule"
_RANK_LABEL = re.compile(r"^(?:rank\s*|r)?(\d+)$", re.IGNORECASE)
_OPTION_KEYS = ("chunks", "costs", "memory_cap")  # generator options kept in Schedule.options
_INTEGER_OPTIONS = ("ranks", "microbatches", "chunks")
_LOCATED_CELLS = 3  # marked ops whose place in the file an error names


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


@dataclass
class _Row:
    label: int | None  # the rank in the first column, if the row has one
    line: int  # where the row is in the file
    ops: list[Op] = field(default_factory=list)
    places: list[str] = field(default_factory=list)  # per op: "line 3 cell 5"
    messages: list[tuple[Message, Op | None, str]] = field(default_factory=list)


def from_csv(text: str, source: str = "schedule CSV") -> Schedule:
    """Rebuild and validate a Schedule from mpipipe's or PyTorch's CSV.

    `source` names the file in error messages, which are one line naming
    the line and cell where there is one.
    """
    header, rows = _read_rows(text, source)
    if not any(row.ops for row in rows):
        raise UsageError(f"{source}: no ops found; write one row of ops per rank such as 0,0F0,0B0")
    rows = _order_rows(rows, source)
    ops = [row.ops for row in rows]
    count = sum(len(rank_ops) for rank_ops in ops)
    if count > MAX_OPS:
        raise UsageError(f"{source}: {count} ops, more than the {MAX_OPS} a schedule may hold "
                         "(schedules.MAX_OPS)")
    places: list[list[str | None]] = [list(row.places) for row in rows]
    ranks = len(ops)
    placement = _infer_placement(rows, source)
    microbatches = _infer_microbatches(ops)
    for key, inferred in (("ranks", ranks), ("microbatches", microbatches)):
        if key in header and int(header[key]) != inferred:
            raise UsageError(
                f"{source}: the comment says {key}={header[key]}, but the rows give {inferred}"
            )
    if not any(op.type is OpType.SYNC for rank_ops in ops for op in rank_ops):
        ops = [with_eager_syncs(rank_ops) for rank_ops in ops]
        places = [
            _realign(rank_places, rank_ops)
            for rank_places, rank_ops in zip(places, ops, strict=True)
        ]
    options = {key: _option(key, value, source) for key, value in header.items()
               if key in _OPTION_KEYS}
    schedule = Schedule(
        kind=header.get("kind", "custom"),
        ranks=ranks,
        microbatches=microbatches,
        placement=placement,
        ops=ops,
        options=options,
    )
    try:
        validate(schedule)
    except ScheduleError as error:
        message = _located(error, ops, places, [row.line for row in rows], source)
        raise ScheduleError(message, error.report, error.cells) from None
    check_messages(schedule, [row.messages for row in rows], source)
    return schedule


def _read_rows(text: str, source: str) -> tuple[dict[str, str], list[_Row]]:
    header: dict[str, str] = {}
    rows = []
    for line_number, cells in enumerate(csv.reader(io.StringIO(text)), start=1):
        cells = [cell.strip() for cell in cells]
        if not any(cells):
            continue
        if cells[0].startswith("#"):
            header.update(_read_comment(",".join(cells), source, line_number))
            continue
        if cells[0].lower() == "rank":
            continue
        match = _RANK_LABEL.match(cells[0])
        row = _Row(int(match[1]) if match else None, line_number)
        for column, cell in enumerate(cells[1:] if match else cells, start=2 if match else 1):
            if not cell:
                continue
            place = f"line {line_number} cell {column}"
            try:
                items = read_cell(cell)
            except UsageError as error:
                raise UsageError(f"{source} {place}: {error}") from None
            for item in items:
                if isinstance(item, Message):
                    row.messages.append((item, row.ops[-1] if row.ops else None, place))
                else:
                    row.ops.append(item)
                    row.places.append(place)
        rows.append(row)
    return header, rows


def _infer_microbatches(ops: list[list[Op]]) -> int:
    """How many micro-batches most stages run a forward of (so a stray op stands out)."""
    forwards = {
        (op.stage, op.microbatch) for rank_ops in ops for op in rank_ops
        if op.type is OpType.FORWARD
    }
    if not forwards:
        return 1 + max((op.microbatch for rank_ops in ops for op in rank_ops), default=-1)
    stages_with = Counter(Counter(stage for stage, _ in forwards).values())
    return max(stages_with, key=lambda count: (stages_with[count], count))


def _realign(places: list[str], ops: list[Op]) -> list[str | None]:
    """`places` of the ops read, spread over `ops` with the SYNCs the reader added (None)."""
    remaining = iter(places)
    return [None if op.type is OpType.SYNC else next(remaining) for op in ops]


def _located(
    error: ScheduleError,
    ops: list[list[Op]],
    places: list[list[str | None]],
    lines: list[int],
    source: str,
) -> str:
    """The validator's message, naming the file and where its marked ops and rows stand in it."""
    notes = []
    for rank, step in error.cells[:_LOCATED_CELLS]:
        place = places[rank][step]
        op = ops[rank][step]
        notes.append(f"{op} on rank {rank} is at {place}" if place
                     else f"{op} on rank {rank} was added by the reader")
    notes += [f"rank {rank}'s row is line {lines[rank]}" for rank in error.rows]
    return f"{source}: {error}" + (f" ({'; '.join(notes)})" if notes else "")


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


def _order_rows(rows: list[_Row], source: str) -> list[_Row]:
    labels = [row.label for row in rows]
    if all(label is None for label in labels):
        return rows
    if sorted(labels, key=lambda label: -1 if label is None else label) != list(range(len(rows))):
        raise UsageError(
            f"{source}: rows are labelled with ranks {labels}; label every row, "
            f"with each of 0..{len(rows) - 1} once (or label none)"
        )
    return sorted(rows, key=lambda row: row.label)


def _infer_placement(rows: list[_Row], source: str) -> Placement:
    rank_of_chunk: dict[tuple[int, int], int] = {}
    for rank, row in enumerate(rows):
        for op, place in zip(row.ops, row.places, strict=True):
            owner = rank_of_chunk.setdefault(op.chunk, rank)
            if owner != rank:
                raise UsageError(
                    f"{source} {place}: {chunk_name(op)} has ops on ranks {owner} and "
                    f"{rank} ({op} on rank {rank}); each (pipe, stage) must live on one rank"
                )
    placement = Placement.from_chunks(len(rows), rank_of_chunk)
    _check_every_stage_held(rows, placement, source)
    return placement


def _check_every_stage_held(rows: list[_Row], placement: Placement, source: str) -> None:
    """Stages are 0..S-1: an op of a stage beyond one that no row has ops of is named."""
    first_unheld = {
        pipe: next(stage for stage in range(placement.stages + 1)
                   if (pipe, stage) not in placement.rank_of_chunk)
        for pipe in range(placement.pipes)
    }
    for row in rows:
        for op, place in zip(row.ops, row.places, strict=True):
            if op.stage > first_unheld[op.pipe]:
                raise UsageError(
                    f"{source} {place}: {op} is of stage {op.stage}, but no row has ops of "
                    f"stage {first_unheld[op.pipe]} of the {pipe_name(op.pipe)} pipe; a "
                    "schedule's stages are 0..S-1, each held by the rank whose row has its ops"
                )
