"""PyTorch's schedule files: torch 2.13's own, read; mpipipe's, written for torch's loader.

The fixtures in tests/fixtures/torch_schedules were written by torch's seven
schedule classes (tests/torch_fixtures.py regenerates them, with torch's
verdict on each). Tests marked by `needs_torch` also run torch itself.
"""

import argparse
import json
import re

import pytest

from mpipipe.commands import schedule as schedule_command
from mpipipe.errors import UsageError
from mpipipe.schedules import SCHEDULE_KINDS, ScheduleError, build_schedule
from mpipipe.schedules.csv_io import from_csv
from mpipipe.schedules.ops import OpType
from mpipipe.schedules.torch_csv import implied_messages, to_torch_csv

from torch_fixtures import (
    FIXTURES,
    SIZES,
    VERDICTS,
    StageStub,
    fixture_name,
    torch_dry_run,
    torch_schedule,
    write_fixtures,
)

try:
    from torch.distributed.pipelining import schedules as torch_schedules
except ImportError:
    torch_schedules = None
needs_torch = pytest.mark.skipif(
    torch_schedules is None, reason="needs torch 2.13 (pip install mpipipe[bench])"
)

VERDICT = json.loads((FIXTURES / VERDICTS).read_text())
ACCEPTED = sorted(name for name, verdict in VERDICT.items() if verdict["torch_accepts"])
REJECTED = sorted(name for name, verdict in VERDICT.items() if not verdict["torch_accepts"])
BOTH_FORMS = sorted(
    (verdict["class"], verdict["ranks"], verdict["microbatches"])
    for verdict in VERDICT.values()
    if verdict["format"] == "compute_comms"
)
ONE_PIPE_KINDS = [kind for kind in SCHEDULE_KINDS if build_schedule(kind, 2, 4).pipes == 1]
TWO_PIPE_KINDS = [kind for kind in SCHEDULE_KINDS if kind not in ONE_PIPE_KINDS]
COMPUTE_CELL = re.compile(r"^\d+[FBIW]\d+$")


def run_schedule_command(*argv: str) -> int:
    parser = argparse.ArgumentParser(prog="mpipipe")
    schedule_command.register(parser.add_subparsers())
    args = parser.parse_args(["schedule", *argv])
    return args.func(args)


def fixture(name: str) -> str:
    return (FIXTURES / name).read_text()


def compute_cells(text: str, syncs: bool = False) -> list[list[str]]:
    """Each row's compute actions in order, an OVERLAP_F_B's in its own order; with `syncs`,
    each REDUCE_GRAD as a SYNC in its place."""
    rows = []
    for line in text.splitlines():
        cells = []
        for cell in line.split(","):
            overlap = re.match(r"^\((.*)\)OVERLAP_F_B$", cell)
            cells += overlap[1].split(";") if overlap else [cell]
        if syncs:
            cells = [re.sub(r"^(\d+)REDUCE_GRAD$", r"\1SYNC", cell) for cell in cells]
        rows.append([cell for cell in cells if COMPUTE_CELL.match(cell)
                     or (syncs and cell.endswith("SYNC"))])
    return rows


def torch_placement(name: str, ranks: int) -> dict[tuple[int, int], int]:
    """Where torch's classes put each stage: one per rank, looped (r, r + D), or a V."""
    if name in ("ScheduleGPipe", "Schedule1F1B"):
        return {(0, stage): stage for stage in range(ranks)}
    if name in ("ScheduleZBVZeroBubble", "ScheduleDualPipeV"):
        return {(0, stage): min(stage, 2 * ranks - 1 - stage) for stage in range(2 * ranks)}
    return {(0, stage): stage % ranks for stage in range(2 * ranks)}


def without_syncs(schedule) -> list[list[str]]:
    return [[str(op) for op in rank_ops if op.type is not OpType.SYNC] for rank_ops in schedule.ops]


def test_the_fixtures_cover_every_class_in_both_forms():
    assert {"chimera", "bitpipe"} <= set(TWO_PIPE_KINDS)
    classes = {verdict["class"] for verdict in VERDICT.values()}
    assert len(classes) == 7 and len(BOTH_FORMS) == 5 * len(SIZES)
    assert len(VERDICT) == 7 * len(SIZES) + len(BOTH_FORMS)


@pytest.mark.parametrize("name", ACCEPTED)
def test_what_torch_accepts_validates_with_torchs_op_order(name):
    verdict = VERDICT[name]
    text = fixture(name)
    schedule = from_csv(text, source=name)
    assert (schedule.ranks, schedule.microbatches) == (verdict["ranks"], verdict["microbatches"])
    assert schedule.placement.rank_of_chunk == torch_placement(verdict["class"], verdict["ranks"])
    assert without_syncs(schedule) == compute_cells(text)
    if "REDUCE_GRAD" in text:  # each REDUCE_GRAD is a SYNC, where torch has it
        assert [[str(op) for op in rank_ops] for rank_ops in schedule.ops] == compute_cells(
            text, syncs=True
        )


@pytest.mark.parametrize("name", REJECTED)
def test_what_torch_rejects_is_named_op_by_op(name):
    # torch 2.13's Schedule1F1B gives its last rank forwards 1..N instead of 0..N-1.
    verdict = VERDICT[name]
    assert verdict["class"] == "Schedule1F1B"
    last, microbatches = verdict["ranks"] - 1, verdict["microbatches"]
    with pytest.raises(ScheduleError) as caught:
        from_csv(fixture(name), source=name)
    message = str(caught.value)
    assert "\n" not in message and message.startswith(f"{name}: ")
    assert f"{last}F{microbatches} on rank {last}: micro-batch {microbatches} is outside " \
           f"0..{microbatches - 1}" in message
    assert f"{last}F0 (forward of micro-batch 0 at stage {last} of the down pipe) is missing " \
           f"from rank {last}" in message
    assert f"{last}F{microbatches} on rank {last} is at line {last + 1} cell " in message


@pytest.mark.parametrize("name,ranks,microbatches", BOTH_FORMS)
def test_both_forms_read_as_one_schedule(name, ranks, microbatches):
    only = from_csv(fixture(fixture_name(name, ranks, microbatches, "compute_only")))
    comms = from_csv(fixture(fixture_name(name, ranks, microbatches, "compute_comms")))
    assert comms.ops == only.ops  # torch's REDUCE_GRAD stands where mpipipe's eager SYNC does
    assert comms.placement == only.placement


@pytest.mark.parametrize("ranks,microbatches", SIZES)
def test_dualpipev_is_torchs_order(ranks, microbatches):
    name = fixture_name("ScheduleDualPipeV", ranks, microbatches, "compute_only")
    assert from_csv(fixture(name)).ops == build_schedule("dualpipev", ranks, microbatches).ops


ZBV = fixture_name("ScheduleZBVZeroBubble", 2, 4, "compute_comms")


def edited(row: int, change) -> str:
    lines = fixture(ZBV).splitlines()
    cells = lines[row].split(",")
    change(cells)
    lines[row] = ",".join(cells)
    return "\n".join(lines) + "\n"


def insert_after(cell: str, new: str):
    return lambda cells: cells.insert(cells.index(cell) + 1, new)


def move_before(cell: str, anchor: str):
    return lambda cells: (cells.remove(cell), cells.insert(cells.index(anchor), cell))


@pytest.mark.parametrize(
    "row,change,words",
    [
        (1, insert_after("1F0", "1SEND_F0"),
         ["line 2 cell", "1SEND_F0 on rank 1 is not a message of this schedule",
          "stage 2 is on rank 1 too, so 1F0 hands over in memory"]),
        (0, insert_after("0F0", "0RECV_F0"), ["0RECV_F0 on rank 0", "0F0 is at the first stage"]),
        (0, insert_after("0F0", "0SEND_F9"), ["0SEND_F9 on rank 0", "rank 0 runs no 0F9"]),
        (0, insert_after("3F0", "3SEND_B7"), ["3SEND_B7 on rank 0", "rank 0 runs no 3B7 or 3I7"]),
        (0, lambda cells: cells.remove("3RECV_F0"),
         ["lists sends and receives but not 3RECV_F0 on rank 0", "or none"]),
        (0, move_before("0SEND_F0", "0F0"),
         ["line 1 cell 3", "0SEND_F0 on rank 0 comes before 0F0, which produces"]),
        (0, move_before("3RECV_F0", "0UNSHARD"), []),  # earlier is fine
        (0, move_before("3RECV_F0", "3RECV_F1"),
         ["3RECV_F0 on rank 0 comes after 3F0, which needs"]),
        (0, insert_after("0SEND_F0", "0SEND_F0"), ["0SEND_F0 on rank 0 is listed twice"]),
        (0, insert_after("0F0", "0SEND_X1"), ["line 1 cell 4", "cannot read op '0SEND_X1'"]),
        (0, insert_after("0F0", "(3I0;0SYNC)OVERLAP_F_B"), ["OVERLAP_F_B joins compute ops"]),
    ],
)
def test_listed_messages_must_be_the_lowerings(row, change, words):
    text = edited(row, change)
    if not words:
        assert from_csv(text).ops == from_csv(fixture(ZBV)).ops
        return
    with pytest.raises(UsageError) as caught:
        from_csv(text, source="zbv.csv")
    message = str(caught.value)
    assert "\n" not in message and message.startswith("zbv.csv")
    for word in words:
        assert word in message


def test_from_csv_command_reads_torchs_file(capsys):
    name = fixture_name("ScheduleDualPipeV", 4, 8, "compute_comms")
    assert run_schedule_command("--from-csv", str(FIXTURES / name), "--format", "json") == 0
    record = json.loads(capsys.readouterr().out)
    assert (record["kind"], record["ranks"], record["microbatches"], record["stages"]) == (
        "custom", 4, 8, 8
    )


def test_torch_csv_is_the_compute_ops_one_row_per_rank():
    schedule = build_schedule("zb-v", 2, 4)
    rows = [",".join(str(op) for op in rank_ops if op.type is not OpType.SYNC)
            for rank_ops in schedule.ops]
    assert to_torch_csv(schedule).splitlines() == rows


@pytest.mark.parametrize("kind", ONE_PIPE_KINDS)
@pytest.mark.parametrize("ranks,microbatches", SIZES)
def test_torch_csv_reads_back_as_the_same_schedule(kind, ranks, microbatches):
    schedule = build_schedule(kind, ranks, microbatches)
    again = from_csv(to_torch_csv(schedule))
    assert again.ops == schedule.ops and again.placement == schedule.placement


@pytest.mark.parametrize("kind", TWO_PIPE_KINDS)
def test_torch_csv_refuses_two_pipes_in_one_line(kind, tmp_path):
    with pytest.raises(UsageError) as caught:
        run_schedule_command(kind, "-D", "2", "-N", "4", "--format", "torch-csv",
                             "--out", str(tmp_path / "x.csv"))
    message = str(caught.value)
    assert "\n" not in message and "--format torch-csv" in message and kind in message
    assert "two pipes" in message and "one rank" in message
    assert not (tmp_path / "x.csv").exists()


def test_torch_csv_command_writes_the_file(tmp_path):
    path = tmp_path / "zbv.csv"
    assert run_schedule_command("zb-v", "-D", "4", "-N", "8", "--format", "torch-csv",
                                "--out", str(path)) == 0
    assert path.read_text() == to_torch_csv(build_schedule("zb-v", 4, 8))


# ----- against torch itself ----------------------------------------------------------------


@needs_torch
def test_fixtures_are_what_torch_writes(tmp_path):
    verdicts = write_fixtures(tmp_path)
    assert verdicts == VERDICT
    for name in VERDICT:
        assert (tmp_path / name).read_text() == fixture(name), name


@needs_torch
@pytest.mark.parametrize("ranks", [1, 2, 3, 4, 8])
def test_dualpipev_is_torchs_order_at_every_size(ranks):
    for microbatches in range(2 * ranks, 4 * ranks + 2):
        order = torch_schedule("ScheduleDualPipeV", ranks, microbatches).pipeline_order
        expected = [
            [str(part) for action in order[rank] if action is not None
             for part in (action.sub_actions or (action,))]
            for rank in range(ranks)
        ]
        assert without_syncs(build_schedule("dualpipev", ranks, microbatches)) == expected


@needs_torch
@pytest.mark.parametrize("kind", ONE_PIPE_KINDS)
@pytest.mark.parametrize("ranks,microbatches", SIZES)
def test_torch_loads_and_runs_mpipipes_file(kind, ranks, microbatches, tmp_path):
    """torch's `_load_csv` validates and lowers the file; its dry run finishes; its sends and
    receives are mpipipe's."""
    schedule = build_schedule(kind, ranks, microbatches)
    path = tmp_path / f"{kind}.csv"
    path.write_text(to_torch_csv(schedule))
    stages = [StageStub(0, schedule.stages, ranks)]
    runtime = torch_schedules._PipelineScheduleRuntime(stages, microbatches)
    runtime._load_csv(str(path))
    assert {rank: [str(a) for a in actions] for rank, actions in runtime.pipeline_order.items()} \
        == dict(enumerate(without_syncs(schedule)))
    torch_dry_run(runtime.pipeline_order_with_comms, runtime.stage_index_to_group_rank,
                  schedule.stages)
    kinds = ("SEND_F", "RECV_F", "SEND_B", "RECV_B")
    for rank, actions in runtime.pipeline_order_with_comms.items():
        torch_messages = {str(a) for a in actions if a.computation_type.value in kinds}
        assert torch_messages == {str(message) for message in implied_messages(schedule, rank)}
