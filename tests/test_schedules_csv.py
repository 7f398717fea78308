"""CSV export and import, and the validator's complaints about hand-written schedules."""

import pytest

from mpipipe.errors import UsageError
from mpipipe.schedules import SCHEDULE_KINDS, ScheduleError, build_schedule, simulate, validate
from mpipipe.schedules.csv_io import from_csv, to_csv
from mpipipe.schedules.ops import Op


@pytest.mark.parametrize("kind", SCHEDULE_KINDS)
def test_round_trip(kind):
    schedule = build_schedule(kind, 4, 8)
    again = from_csv(to_csv(schedule))
    assert again.ops == schedule.ops
    assert again.placement == schedule.placement
    assert (again.kind, again.ranks, again.microbatches, again.options) == (
        kind,
        4,
        8,
        schedule.options,
    )


def test_exported_rows_are_the_ranks_op_strings():
    schedule = build_schedule("chimera", 2, 2)
    lines = to_csv(schedule).splitlines()
    assert lines[0].startswith("#") and "kind=chimera" in lines[0]
    rows = [",".join([str(rank)] + [str(op) for op in schedule.ops[rank]]) for rank in (0, 1)]
    assert lines[2:] == rows


HAND_WRITTEN = """\
rank 1, 1F0, 1B0, 1F1, 1B1
rank 0, 0F0, 0F1, 0B0, , 0B1
"""


def test_user_csv_infers_placement_and_adds_syncs():
    schedule = from_csv(HAND_WRITTEN, source="mine.csv")
    assert schedule.kind == "custom"
    assert (schedule.ranks, schedule.microbatches, schedule.stages) == (2, 2, 2)
    assert schedule.placement.rank_of_chunk == {(0, 0): 0, (0, 1): 1}
    assert [str(op) for op in schedule.ops[0]] == ["0F0", "0F1", "0B0", "0B1", "0SYNC"]
    assert simulate(schedule).makespan == simulate(build_schedule("1f1b", 2, 2)).makespan


def test_user_csv_without_rank_column_and_with_up_pipe():
    text = "u1F0,u1B0\nu0F0,u0B0\n"  # the up pipe enters on rank 1 here
    schedule = from_csv(text)
    assert schedule.placement.rank_of_chunk == {(1, 0): 1, (1, 1): 0}
    assert schedule.pipe_of_microbatch() == {0: 1}


def test_missing_backward_is_named():
    text = HAND_WRITTEN.replace(" 1B1", "")
    with pytest.raises(ScheduleError) as caught:
        from_csv(text, source="mine.csv")
    message = str(caught.value)
    assert "\n" not in message
    missing = "1B1 (backward of micro-batch 1 at stage 1 of the down pipe) is missing from rank 1"
    assert missing in message


@pytest.mark.parametrize(
    "text,words",
    [
        ("0F0,0B0,0F0\n", ["0F0 runs twice"]),
        ("0F0,0B0\n1F0,1B0,0B0\n", ["line 2 cell 3",
                                    "stage 0 of the down pipe has ops on ranks 0 and 1"]),
        ("0UNSHARD,0RESHARD\n", ["no ops found"]),
        ("# mpipipe schedule kind=1f1b ranks=3\n0F0,0B0\n", ["ranks=3", "rows give 1"]),
        ("rank 0,0F0,0B0\n0F1,0B1\n", ["label every row"]),
        ("", ["no ops found"]),
        ("0F0,0B0,0I0,0W0\n", ["0B0 and 0I0 both run", "one B, or one I and one W",
                                "0I0 on rank 0 is at line 1 cell 3"]),
        ("0F0,0I0\n", ["0W0 (weight-gradient backward of micro-batch 0 at stage 0 of the down "
                      "pipe) is missing from rank 0"]),
        (
            "0F0,0F1,0B0\n1F0,1F1,1I0,1W0,1B1\n",
            ["the backward of micro-batch 1 at stage 0 of the down pipe (0B1, or 0I1 and 0W1) "
             "is missing from rank 0"],
        ),
        ("0F0,0X0\n", ["line 1 cell 2", "cannot read op '0X0'", "PyTorch's"]),
        ("rank 0, 0F0, 0B0, 0F0\n", ["0F0 runs twice", "0F0 on rank 0 is at line 1 cell 4"]),
        (
            "0F0,0F1,0B0,0B1\n1F0,1B0,1B1,1F1\n",
            ["rank 1 is stuck at step 2, 1B1", "1B1 on rank 1 is at line 2 cell 3"],
        ),
        (
            "0F0,0F1,0B0,0B1,0SYNC\n1F0,1B0,1F1,1B1\n",
            ["rank 1 never starts the gradient sync of stage 1"],
        ),
        (
            "0F0,0SYNC,0B0\n1F0,1B0,1SYNC\n",
            ["0SYNC on rank 0 comes before that chunk's last backward 0B0"],
        ),
        # A row cut short: the op it lacks and where the row is.
        ("rank,ops\n0,0F0,0F1,0B0,0B1\n1,1F0,1B0,1F1\n",
         ["1B1 (backward of micro-batch 1 at stage 1 of the down pipe) is missing from rank 1",
          "rank 1's row is line 3"]),
        # A stage no rank holds: the first op beyond the gap.
        ("0F0,0B0\n2F0,2B0\n", ["line 2 cell 1: 2F0 is of stage 2, but no row has ops of stage "
                                "1 of the down pipe"]),
        # A repeated op is named where it stands, not taken for another micro-batch count.
        ("# mpipipe schedule kind=1f1b ranks=2 microbatches=2\n0,0F0,0F1,0F1,0B0,0B1\n"
         "1,1F0,1B0,1F1,1B1\n",
         ["0F1 runs twice (rank 0 step 1, rank 0 step 2) (0F1 on rank 0 is at line 2 cell 4)"]),
    ],
)
def test_bad_csv_is_rejected_in_one_line(text, words):
    with pytest.raises(UsageError) as caught:
        from_csv(text)
    message = str(caught.value)
    assert "\n" not in message
    for word in words:
        assert word in message


def test_mixed_backwards_load():
    schedule = from_csv("0F0,0F1,0B0,0I1,0W1\n1F0,1I0,1W0,1F1,1B1\n")
    assert [str(op) for op in schedule.ops[0]] == ["0F0", "0F1", "0B0", "0I1", "0W1", "0SYNC"]
    assert [str(op) for op in schedule.ops[1]] == ["1F0", "1I0", "1W0", "1F1", "1B1", "1SYNC"]


def test_microbatches_are_what_most_stages_run():
    # A stray micro-batch number on one stage is named, not taken for the count.
    with pytest.raises(ScheduleError) as caught:
        from_csv("0F0,0F1,0B0,0B1\n1F0,1B0,1F9,1B1\n", source="mine.csv")
    message = str(caught.value)
    assert message.startswith("mine.csv: ")
    assert "1F9 on rank 1: micro-batch 9 is outside 0..1" in message
    assert "1F1 (forward of micro-batch 1 at stage 1 of the down pipe) is missing" in message
    assert "1F9 on rank 1 is at line 2 cell 3" in message


def test_validator_marks_the_cell():
    schedule = build_schedule("1f1b", 2, 2)
    schedule.ops[0][1] = Op.parse("1F1")  # rank 0 runs a stage that lives on rank 1
    with pytest.raises(ScheduleError) as caught:
        validate(schedule)
    assert "1F1 runs on rank 0, but stage 1 of the down pipe is on rank 1" in str(caught.value)
    assert "[1F1]" in caught.value.report and "<-- ERROR HERE" in caught.value.report


def test_validator_names_wrong_pipe_and_unknown_microbatch():
    schedule = build_schedule("chimera", 2, 2)
    rank_ops = schedule.ops[1]
    rank_ops[rank_ops.index(Op.parse("1F0"))] = Op.parse("u0F0")  # micro-batch 0 goes down
    rank_ops[rank_ops.index(Op.parse("u0B1"))] = Op.parse("u0B5")
    with pytest.raises(ScheduleError) as caught:
        validate(schedule)
    message = str(caught.value)
    assert "u0F0 on rank 1: micro-batch 0 entered the down pipe" in message
    assert "u0B5 on rank 1: micro-batch 5 is outside 0..1" in message
    assert "1F0 (forward of micro-batch 0 at stage 1 of the down pipe) is missing" in message
