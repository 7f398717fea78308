"""The smaller tools given bad input: one `mpipipe: error` line, exit 2, never a traceback.

Every case runs `mpipipe ...` in this process through `mpipipe.cli.main`, so
an exception that is not a UsageError fails the test with its traceback.
Paths of every wrong kind (missing, a folder, /dev/null, a named pipe, a
loop of symbolic links, a broken link) get a message that says what the
path is, never "no such file" of something that exists; every command
names the same thing with the same exit code.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path

import pytest

from mpipipe.cli import main

EXIT_USAGE = 2

# Each maker prepares a path of one kind in a test's folder; (path, what the message says).
PATH_KINDS: dict[str, Callable[[Path], tuple[str, str]]] = {
    "missing": lambda folder: (str(folder / "nothing.x"), "does not exist"),
    "under-a-file": lambda folder: (
        (folder / "file").write_text("x") and str(folder / "file" / "inside.x"), "does not exist"
    ),
    "folder": lambda folder: (str(folder), "is a folder"),
    "dev-null": lambda folder: ("/dev/null", "is a character device, not a regular file"),
    "fifo": lambda folder: (os.mkfifo(folder / "pipe") or str(folder / "pipe"),
                            "is a named pipe (FIFO), not a regular file"),
    "link-loop": lambda folder: (
        os.symlink(folder / "b", folder / "a") or os.symlink(folder / "a", folder / "b")
        or str(folder / "a"), "is a loop of symbolic links"
    ),
    "broken-link": lambda folder: (os.symlink(folder / "gone", folder / "link")
                                   or str(folder / "link"), "which does not exist"),
}

# Each command reading one input file: argv with {} for the path.
FILE_COMMANDS = {
    "config-show": ["config", "show", "{}"],
    "ckpt-inspect": ["ckpt", "inspect", "{}"],
    "ckpt-verify": ["ckpt", "verify", "{}"],
    "schedule-from-csv": ["schedule", "--from-csv", "{}"],
}


def run(argv: list[str], capsys) -> tuple[int, list[str]]:
    code = main(argv)
    captured = capsys.readouterr()
    lines = [line for line in captured.err.splitlines() if line.strip()]
    assert "Traceback" not in captured.out + captured.err
    return code, lines


def one_error(argv: list[str], capsys, *fragments: str) -> str:
    code, lines = run(argv, capsys)
    assert code == EXIT_USAGE, (code, lines)
    assert len(lines) == 1 and lines[0].startswith("mpipipe: error: "), lines
    for fragment in fragments:
        assert fragment in lines[0], (fragment, lines[0])
    return lines[0]


@pytest.mark.parametrize("kind", PATH_KINDS)
@pytest.mark.parametrize("command", FILE_COMMANDS)
def test_every_command_says_what_a_wrong_path_is_with_exit_2(tmp_path, capsys, kind, command):
    path, says = PATH_KINDS[kind](tmp_path)
    argv = [part.replace("{}", path) for part in FILE_COMMANDS[command]]
    missing = kind in ("missing", "under-a-file")
    if missing and command == "schedule-from-csv":
        says = "no such file"  # the schedule file's reader says it so; of a missing file only
    line = one_error(argv, capsys, path, says)
    if not missing:
        assert "no such file" not in line
        assert "does not exist" not in line or kind == "broken-link"


@pytest.mark.parametrize("kind", ["missing", "dev-null", "fifo", "link-loop"])
def test_plot_says_what_a_wrong_run_folder_is(tmp_path, capsys, kind):
    path, says = PATH_KINDS[kind](tmp_path)
    says = says.replace("regular file", "folder")
    one_error(["plot", path], capsys, "run folder", says)


# --cost and --latency values that used to trace back or report a bubble of nan as 0.
BAD_COSTS = [
    ["--cost", "0,0"], ["--cost", "0,2"], ["--cost", "1,0"], ["--cost", "nan,2"],
    ["--cost", "inf,2"], ["--cost", "1,inf"], ["--cost=-1,2"], ["--cost", "1,2,2"],
    ["--cost", "1,2,0"], ["--cost", "1,2,nan"], ["--cost", "1e7,1"], ["--cost", "1e-9,1"],
    ["--cost", "1,2,3,4"], ["--cost", ","], ["--latency", "nan"], ["--latency", "inf"],
    ["--latency", "-0.5"], ["--latency", "1e9"],
]


@pytest.mark.parametrize("option", BAD_COSTS, ids=[" ".join(option) for option in BAD_COSTS])
def test_schedule_costs_must_be_positive_finite_numbers(capsys, option):
    one_error(["schedule", "zb-h1", "-D", "2", "-N", "2", *option], capsys,
              option[0].split("=")[0])


@pytest.mark.parametrize("kind", ["1f1b", "zb-v", "interleaved", "bitpipe"])
def test_schedule_refuses_sizes_past_the_op_bound_at_once(capsys, kind):
    one_error(["schedule", kind, "-D", "4", "-N", "1000000"], capsys,
              "more than the 200000 a schedule may hold", "use at most")


def test_schedule_refuses_more_stages_than_the_bound_however_few_micro_batches(capsys):
    one_error(["schedule", "interleaved", "-D", "4", "-N", "4", "--chunks", "1000000"], capsys,
              "4000000 stages", "use fewer than 4000000 stages")


def test_the_largest_schedule_within_the_bound_is_built(capsys, tmp_path):
    code, lines = run(["schedule", "1f1b", "-D", "2", "-N", "50000", "--format", "csv",
                       "--out", str(tmp_path / "big.csv")], capsys)
    assert (code, lines) == (0, [])
    ops = sum(len(row.split(",")) - 1 for row in (tmp_path / "big.csv").read_text().splitlines()
              if row[0].isdigit())
    assert ops == 2 * 2 * 50000 + 2  # F and B per micro-batch and stage, one SYNC per rank
    one_error(["schedule", "1f1b", "-D", "2", "-N", "50001"], capsys, "200004 ops")


@pytest.mark.parametrize(("make", "fragment"), [
    (lambda folder: str(folder), "is a folder"),
    (lambda folder: str(folder / "no" / "s.txt"), "its folder"),
], ids=["folder", "missing-folder"])
@pytest.mark.parametrize("output", ["text", "json", "png"])
def test_schedule_out_must_be_a_file_it_can_create(tmp_path, capsys, make, fragment, output):
    one_error(["schedule", "1f1b", "-D", "2", "-N", "2", "--format", output, "--out",
               make(tmp_path)], capsys, "--out", fragment)


@pytest.mark.parametrize(("content", "fragment"), [
    ("rank,ops\n0,0F0,0B0\n".encode("utf-16"), "is UTF-16 text"),
    ("rank,ops\n0,0F0,0B0\n".encode("utf-16-be"), "byte 0 is NUL"),
    (bytes(range(1, 256)), "is not UTF-8 text (byte 127)"),
    (b"rank,ops\n0,0F0\x00", "byte 14 is NUL"),
], ids=["utf-16", "utf-16-no-mark", "binary", "nul-bytes"])
def test_schedule_csv_that_is_not_utf8_text(tmp_path, capsys, content, fragment):
    path = tmp_path / "s.csv"
    path.write_bytes(content)
    one_error(["schedule", "--from-csv", str(path)], capsys, fragment)


def test_a_utf8_csv_with_a_byte_order_mark_is_read(tmp_path, capsys):
    path = tmp_path / "s.csv"
    path.write_bytes(b"\xef\xbb\xbfrank,ops\n0,0F0,0B0\n")
    code, lines = run(["schedule", "--from-csv", str(path), "--format", "json"], capsys)
    assert (code, lines) == (0, [])


GOOD_ROW = {"step": 0, "loss": 5.5, "lr": 1e-3, "bubble": [0.1, 0.2], "bubble_mean": 0.15,
            "compute_s": [1.0, 1.0], "wait_s": [0.1, 0.2], "window_s": 1.2}


@pytest.mark.parametrize(("change", "fragment"), [
    ({"loss": "abc"}, 'loss is "abc", not a number'),
    ({"loss": None}, "loss is null, not a number"),
    ({"lr": True}, "lr is true, not a number"),
    ({"step": "0"}, 'step is "0", not a step number'),
    ({"step": -1}, "step is -1, not a step number"),
    ({"step": 1.5}, "step is 1.5, not a step number"),
    ({"bubble": 0.1}, "bubble is 0.1, not a list of numbers"),
    ({"compute_s": [1, "x"]}, "compute_s is"),
    ({"wait_s": []}, "wait_s is [], not a list"),
], ids=["loss-string", "loss-null", "lr-bool", "step-string", "step-negative", "step-float",
        "bubble-scalar", "compute-with-string", "wait-empty"])
def test_plot_names_a_metrics_value_it_cannot_draw(tmp_path, capsys, change, fragment):
    (tmp_path / "metrics.jsonl").write_text(json.dumps(GOOD_ROW) + "\n"
                                            + json.dumps({**GOOD_ROW, "step": 1, **change}) + "\n")
    one_error(["plot", str(tmp_path)], capsys, "line 2", fragment)


def test_plot_takes_a_nan_loss_that_a_skipped_step_leaves(tmp_path, capsys):
    pytest.importorskip("matplotlib")
    rows = [GOOD_ROW, {**GOOD_ROW, "step": 1, "loss": float("nan")}]
    (tmp_path / "metrics.jsonl").write_text("".join(json.dumps(row) + "\n" for row in rows))
    code, lines = run(["plot", str(tmp_path)], capsys)
    assert (code, lines) == (0, [])


def test_plot_of_binary_metrics_says_so(tmp_path, capsys):
    (tmp_path / "metrics.jsonl").write_bytes(b"\xff\xfe{\x00}\x00\n")
    one_error(["plot", str(tmp_path)], capsys, "metrics file", "UTF-16")


def test_a_text_folder_skips_pipes_and_devices_in_it(tmp_path):
    from mpipipe.data.corpus import text_corpus

    (tmp_path / "a.txt").write_bytes(b"hello ")
    os.mkfifo(tmp_path / "b.pipe")  # opening it would block until a writer came
    os.symlink("/dev/zero", tmp_path / "c.zero")  # reading it would never end
    (tmp_path / "d.txt").write_bytes(b"world")
    assert text_corpus(str(tmp_path)).tobytes() == b"hello world"
