"""`mpipipe plot`: figures from a real short run, checked against the run's own numbers."""

import json
import sys

import matplotlib.image
import pytest

from mpipipe.cli import main
from mpipipe.plots import (
    BREAKDOWN_FIGURE,
    LOSS_FIGURE,
    MEMORY_FIGURE,
    TIMELINE_FIGURE,
    draw_step_timeline,
    read_run,
)
from mpipipe.plots.breakdown import measured_rows, rank_times
from mpipipe.plots.loss import draw_loss, running_mean
from mpipipe.plots.memory import GIB, draw_memory
from mpipipe.plots.timeline import seconds_by_rank, step_intervals, traced_steps
from mpipipe.schedules import build_schedule
from mpipipe.schedules.ops import OpType

from mpirun import mpipipe_args, run_ranks

RANKS, MICROBATCHES, STEPS = 4, 8, 4
SMALL_BITPIPE = [
    "examples/gpt_tiny.toml",
    "--set", "model.n_layer=8", "--set", "model.d_model=32", "--set", "model.seq_len=16",
    "--set", "data.source=random", "--set", "parallel.schedule=bitpipe",
    "--set", f"parallel.microbatches={MICROBATCHES}", "--set", f"train.steps={STEPS}",
    "--set", "data.eval_fraction=0.1", "--set", "train.eval_every=2",
    "--set", "train.eval_batches=1",
]


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    folder = tmp_path_factory.mktemp("plot") / "bitpipe_run"
    result = run_ranks(RANKS, mpipipe_args("train", *SMALL_BITPIPE, "--out", str(folder)),
                       timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    return folder


def test_trace_intervals_add_up_to_the_engines_compute_and_wait_times(run_dir):
    record = read_run(str(run_dir))
    steps = traced_steps(record.trace_events)
    assert steps == [0, 1, 2]  # runtime.trace_steps = 3
    for step in steps:
        compute, wait = seconds_by_rank(step_intervals(record.trace_events, step), RANKS)
        row = record.rows[step]
        assert compute == pytest.approx(row["compute_s"], rel=1e-6, abs=1e-7)
        assert wait == pytest.approx(row["wait_s"], rel=1e-6, abs=1e-7)


def test_timeline_shows_every_rank_running_its_schedule_in_order(run_dir):
    record = read_run(str(run_dir))
    intervals = step_intervals(record.trace_events, 2)
    schedule = build_schedule("bitpipe", RANKS, MICROBATCHES)
    for rank in range(RANKS):
        measured = [i.op for i in intervals if i.rank == rank and i.op is not None]
        planned = [op for op in schedule.ops[rank] if op.type is not OpType.SYNC]
        assert measured == planned
    assert {i.op.pipe for i in intervals if i.op is not None} == {0, 1}
    for earlier, later in zip(intervals, intervals[1:], strict=False):
        if earlier.rank == later.rank:
            assert later.start_ms >= earlier.end_ms - 1e-6  # one rank runs one thing at a time


def test_timeline_figure_has_one_box_per_op_and_wait(run_dir):
    record = read_run(str(run_dir))
    figure = draw_step_timeline(record, 1)
    axes = figure.axes[0]
    intervals = step_intervals(record.trace_events, 1)
    assert len(axes.collections) == len(intervals)
    labels = [text.get_text() for text in axes.texts]
    assert set(labels) <= {str(m) for m in range(MICROBATCHES)}
    # Boxes too narrow for a digit go unlabelled; a tenth of the step always has room.
    window = max(interval.end_ms for interval in intervals)
    wide = [i for i in intervals if i.op is not None and i.duration_ms >= 0.1 * window]
    assert len(labels) >= len(wide)
    assert [tick.get_text() for tick in axes.get_yticklabels()] == [
        f"rank {rank}" for rank in range(RANKS)
    ]


def test_breakdown_idle_and_wait_make_up_the_engines_bubble(run_dir):
    rows = read_run(str(run_dir)).rows
    for row in rows:
        for rank, times in enumerate(rank_times([row])):
            not_computing = (times.wait_s + times.idle_s) / times.window_s
            assert not_computing == pytest.approx(row["bubble"][rank], abs=1e-9)
            assert times.window_s == pytest.approx(row["window_s"])
    assert [row["step"] for row in measured_rows(rows)] == list(range(1, STEPS))


def test_plot_command_writes_four_readable_pngs(run_dir, tmp_path, capsys):
    out = tmp_path / "figures"
    assert main(["plot", str(run_dir), "--out", str(out)]) == 0
    written = sorted(path.name for path in out.iterdir())
    assert written == sorted([LOSS_FIGURE, TIMELINE_FIGURE, BREAKDOWN_FIGURE, MEMORY_FIGURE])
    for name in written:
        image = matplotlib.image.imread(out / name)
        height, width, _ = image.shape
        assert width >= 600 and height >= 250
        pixels = image[..., :3].reshape(-1, 3)
        colourful = pixels.max(axis=1) - pixels.min(axis=1) > 0.15
        assert 0.002 < colourful.mean() < 0.9, (name, colourful.mean())  # drawn, not blank
    assert capsys.readouterr().out.count("wrote ") == 4


def test_every_row_has_each_ranks_memory_and_the_figure_draws_it(run_dir):
    rows = read_run(str(run_dir)).rows
    for row in rows:
        assert len(row["memory_bytes"]) == len(row["activation_bytes"]) == RANKS
        assert row["memory_peak_bytes"] == max(row["memory_bytes"])
        assert row["memory_bytes"][row["memory_peak_rank"]] == row["memory_peak_bytes"]
        for rank in range(RANKS):
            assert 0 < row["activation_bytes"][rank] < row["memory_bytes"][rank]
            assert row["rss_bytes"][rank] > row["memory_bytes"][rank]  # the arrays are resident
    lines = draw_memory(rows, "run").axes[0].get_lines()
    assert len(lines) == 2 * RANKS  # per rank: its peak, and its caches' peak
    for rank in range(RANKS):
        assert list(lines[2 * rank].get_ydata()) == [row["memory_bytes"][rank] / GIB
                                                     for row in rows]
        assert list(lines[2 * rank + 1].get_ydata()) == [row["activation_bytes"][rank] / GIB
                                                         for row in rows]


def test_eval_loss_is_in_the_metrics_and_drawn_beside_the_training_loss(run_dir):
    rows = read_run(str(run_dir)).rows
    evaluated = [(row["step"], row["eval_loss"]) for row in rows if "eval_loss" in row]
    assert [step for step, _ in evaluated] == [1, 3]  # after steps 2 and 4
    assert all(loss > 0 for _, loss in evaluated)
    figure = draw_loss(rows, "run")
    loss_axes = figure.axes[0]
    drawn = [line for line in loss_axes.get_lines() if "held-out" in str(line.get_label())]
    assert len(drawn) == 1
    assert list(drawn[0].get_xdata()) == [1, 3]
    assert list(drawn[0].get_ydata()) == [loss for _, loss in evaluated]
    assert f"held-out {evaluated[-1][1]:.3f}" in loss_axes.get_title()


def test_run_without_trace_gets_no_timeline(run_dir, tmp_path):
    copy = tmp_path / "untraced"
    copy.mkdir()
    (copy / "metrics.jsonl").write_text((run_dir / "metrics.jsonl").read_text())
    assert main(["plot", str(copy)]) == 0
    assert sorted(p.name for p in copy.glob("*.png")) == sorted([LOSS_FIGURE, BREAKDOWN_FIGURE,
                                                                 MEMORY_FIGURE])


def test_a_resumed_runs_rows_replace_the_earlier_ones(tmp_path, run_dir):
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    resumed = [dict(row, loss=row["loss"] + 100) for row in rows[2:]]
    (tmp_path / "metrics.jsonl").write_text(
        "".join(json.dumps(row) + "\n" for row in rows + resumed)
    )
    merged = read_run(str(tmp_path)).rows
    assert [row["step"] for row in merged] == [row["step"] for row in rows]
    assert [row["loss"] for row in merged] == [r["loss"] for r in rows[:2]] + [
        r["loss"] for r in resumed
    ]


def test_a_half_written_last_line_is_left_out(tmp_path, run_dir):
    text = (run_dir / "metrics.jsonl").read_text()
    (tmp_path / "metrics.jsonl").write_text(text + text.splitlines()[0][:40])
    assert len(read_run(str(tmp_path)).rows) == STEPS


def test_running_mean_matches_direct_averages():
    values = [3.0, 1.0, 4.0, 1.0, 5.0, 9.0, 2.0, 6.0]
    window = 3
    direct = []
    for index in range(len(values)):
        recent = values[max(0, index - window + 1): index + 1]
        direct.append(sum(recent) / len(recent))
    assert running_mean(values, window) == pytest.approx(direct)


def _error_lines(capsys) -> list[str]:
    return [line for line in capsys.readouterr().err.splitlines() if line.strip()]


def test_missing_matplotlib_names_the_extra_to_install(run_dir, monkeypatch, capsys):
    for name in [name for name in sys.modules if name.startswith("matplotlib")]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    assert main(["plot", str(run_dir)]) == 2
    lines = _error_lines(capsys)
    assert len(lines) == 1 and "pip install 'mpipipe[plot]'" in lines[0], lines


@pytest.mark.parametrize(("prepare", "fragment"), [
    (lambda folder: None, "does not exist"),
    (lambda folder: folder.mkdir(), "has no metrics.jsonl"),
    (lambda folder: (folder.mkdir(), (folder / "metrics.jsonl").write_text("")), "is empty"),
    (lambda folder: folder.write_text("x"), "is a file, not a folder"),
    (lambda folder: (folder.mkdir(), (folder / "metrics.jsonl").write_text("{oops\n")),
     "line 1 is not JSON"),
], ids=["missing", "empty-folder", "empty-metrics", "a-file", "not-json"])
def test_bad_run_folder_gives_one_line(tmp_path, capsys, prepare, fragment):
    folder = tmp_path / "run"
    prepare(folder)
    assert main(["plot", str(folder)]) == 2
    lines = _error_lines(capsys)
    assert len(lines) == 1 and lines[0].startswith("mpipipe: error:") and fragment in lines[0]


def test_untraced_step_names_the_traced_ones(run_dir, capsys):
    assert main(["plot", str(run_dir), "--step", "3"]) == 2
    lines = _error_lines(capsys)
    assert len(lines) == 1 and "holds 0, 1, 2" in lines[0], lines
