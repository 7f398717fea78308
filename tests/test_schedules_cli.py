"""`mpipipe schedule`, driven through its own argparse registration."""

import argparse
import json
import sys
from collections import Counter

import numpy as np
import pytest

from mpipipe.commands import schedule as schedule_command
from mpipipe.errors import UsageError
from mpipipe.schedules import SCHEDULE_KINDS, build_schedule, simulate
from mpipipe.schedules.csv_io import from_csv
from mpipipe.schedules.ops import OpType
from mpipipe.schedules.simulate import OpCosts


def run(*argv: str) -> int:
    parser = argparse.ArgumentParser(prog="mpipipe")
    schedule_command.register(parser.add_subparsers())
    args = parser.parse_args(["schedule", *argv])
    return args.func(args)


def test_text_is_the_grid(capsys):
    assert run("bitpipe", "--ranks", "4", "--microbatches", "4", "--cost", "1,2") == 0
    out = capsys.readouterr().out
    rows = [line.split() for line in out.splitlines() if line.startswith("r")]
    assert rows[0][:5] == ["r0", "0F0", "0F1", ".", "u3F2"]
    assert all(len(row) == 1 + 28 for row in rows[:4])
    assert "makespan          28" in out


def test_json_holds_ops_placement_and_metrics(tmp_path):
    out = tmp_path / "s.json"
    run("zb-h1", "-D", "4", "-N", "8", "--cost", "1,2,1", "--format", "json", "--out", str(out))
    record = json.loads(out.read_text())
    expected = simulate(build_schedule("zb-h1", 4, 8), OpCosts(1, 2, backward_weight=1))
    assert record["ops"] == [[str(op) for op in rank_ops] for rank_ops in expected.schedule.ops]
    assert record["makespan"] == expected.makespan
    assert record["bubble"] == expected.bubble
    assert record["peak_activations"] == expected.peak_activations
    assert {"pipe": 0, "stage": 3, "rank": 3} in record["placement"]


def test_csv_round_trips_through_from_csv(tmp_path, capsys):
    path = tmp_path / "chimera.csv"
    run("chimera", "-D", "4", "-N", "8", "--format", "csv", "--out", str(path))
    original = build_schedule("chimera", 4, 8)
    again = from_csv(path.read_text())
    assert again.ops == original.ops and again.placement == original.placement
    run("--from-csv", str(path), "--format", "json")
    assert json.loads(capsys.readouterr().out)["kind"] == "chimera"


def test_from_csv_of_a_user_file(tmp_path, capsys):
    path = tmp_path / "mine.csv"
    path.write_text("rank,ops\n0,0F0,0F1,0B0,0B1\n1,1F0,1B0,1F1,1B1\n")
    run("--from-csv", str(path), "--cost", "1,1", "--format", "json")
    record = json.loads(capsys.readouterr().out)
    assert record["kind"] == "custom"
    assert record["bubble"] == pytest.approx([1 / 3, 1 / 3])  # 1F1B, (D-1)/(N+D-1)


def test_from_csv_reports_a_deadlock_with_the_grid(tmp_path, capsys):
    path = tmp_path / "broken.csv"
    path.write_text("0,0F0,0F1,0B0,0B1\n1,1F0,1B0,1B1,1F1\n")
    with pytest.raises(UsageError, match="rank 1 is stuck at step 2, 1B1"):
        run("--from-csv", str(path))
    assert "<-- ERROR HERE" in capsys.readouterr().err


def test_chrome_trace_has_one_track_per_rank(capsys):
    run("interleaved", "-D", "4", "-N", "4", "--chunks", "2", "--format", "chrome")
    trace = json.loads(capsys.readouterr().out)
    events = trace["traceEvents"]
    names = {event["args"]["name"] for event in events if event["name"] == "thread_name"}
    assert names == {"rank 0", "rank 1", "rank 2", "rank 3"}
    spans = [event for event in events if event["ph"] == "X"]
    assert len(spans) == 4 * 2 * 4 * 2  # ranks x chunks x micro-batches x (F, B)
    assert {event["tid"] for event in spans} == {0, 1, 2, 3}


def colour_areas(path, least_share: float = 0.02) -> list[int]:
    """Pixels of each saturated colour that covers at least `least_share` of the image."""
    image = pytest.importorskip("matplotlib.image").imread(path)
    pixels = np.round(image[..., :3] * 255).astype(int).reshape(-1, 3)
    saturated = pixels[pixels.max(axis=1) - pixels.min(axis=1) > 40]  # no white, grey or black
    _, counts = np.unique(saturated, axis=0, return_counts=True)
    return sorted(int(count) for count in counts if count >= least_share * len(pixels))


@pytest.mark.parametrize(("kind", "cost"),
                         [("bitpipe", "1,2"), ("1f1b", "1,2"), ("zb-h1", "1,2,1")])
def test_png_draws_each_kind_of_op_in_its_colour_as_wide_as_its_time(tmp_path, kind, cost):
    path = tmp_path / f"{kind}.png"
    run(kind, "-D", "4", "-N", "8", "--cost", cost, "--format", "png", "--out", str(path))
    # Time spent on each (op type, pipe), from the simulator, against the area of each colour.
    time_by_kind = Counter()
    for rank_ops in simulate(build_schedule(kind, 4, 8), OpCosts.parse(cost)).timeline:
        for timed in rank_ops:
            if timed.op.type is not OpType.SYNC:
                time_by_kind[timed.op.type, timed.op.pipe] += timed.end - timed.start
    areas = colour_areas(path)
    assert len(areas) == len(time_by_kind), areas
    pixels_per_unit = [area / time for area, time in zip(areas, sorted(time_by_kind.values()),
                                                         strict=True)]
    assert max(pixels_per_unit) < 1.15 * min(pixels_per_unit), pixels_per_unit


def test_png_without_matplotlib_says_what_to_install(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    with pytest.raises(UsageError, match=r"pip install mpipipe\[plot\]"):
        run("1f1b", "-D", "2", "-N", "2", "--format", "png", "--out", str(tmp_path / "x.png"))


def test_all_prints_a_bubble_table(capsys):
    run("all", "-D", "4", "-N", "4", "8", "--cost", "1,1")
    out = capsys.readouterr().out.splitlines()
    table = {line.split()[0]: line.split()[1:] for line in out[2:] if line and line[0] != "s"}
    assert float(table["1f1b"][0]) == pytest.approx(3 / 7, abs=1e-4)
    assert float(table["chimera"][1]) == pytest.approx(2 / 18, abs=1e-4)
    assert len(table) == len(SCHEDULE_KINDS)


@pytest.mark.parametrize(
    "argv,words",
    [
        (["bitpipe", "-D", "3", "-N", "6"], ["parallel.pipeline", "even", "got 3"]),
        (["bitpipe", "-D", "4"], ["--microbatches"]),
        (["1f1b", "-N", "4"], ["--ranks"]),
        ([], ["KIND", "--from-csv"]),
        (["1f1b", "-D", "2", "-N", "2", "4"], ["one value"]),
        (["1f1b", "-D", "2", "-N", "2", "--cost", "1"], ["--cost"]),
        (["1f1b", "-D", "2", "-N", "2", "--format", "png"], ["--out"]),
        (["all", "-D", "2", "-N", "2", "--format", "csv"], ["table"]),
        (["--from-csv", "/nonexistent/s.csv"], ["/nonexistent/s.csv: no such file"]),
    ],
)
def test_bad_command_lines(argv, words):
    with pytest.raises(UsageError) as caught:
        run(*argv)
    for word in words:
        assert word in str(caught.value)


def test_text_slots_follow_the_smallest_time_step(capsys):
    run("1f1b", "-D", "2", "-N", "2", "--cost", "1,2", "--latency", "0.5")
    out = capsys.readouterr().out
    assert "one slot = 0.5 time units" in out
    assert out.splitlines()[2].split()[:6] == ["r1", ".", ".", ".", "1F0", "="]


def test_text_says_which_costs_the_order_was_planned_for(capsys):
    run("zb-v", "-D", "4", "-N", "8", "--cost", "1,2,0.5", "--latency", "0.25")
    out = capsys.readouterr().out
    assert ("order planned for costs per stage F=1 I=1.5 W=0.5 latency=0.25, at most 4 "
            "micro-batches of L/D layers per rank") in out
    makespan = float(out.split("makespan")[1].split()[0])
    costs = OpCosts(1, 2, backward_weight=0.5, latency=0.25)
    assert makespan < simulate(build_schedule("zb-v", 4, 8), costs).makespan
    run("1f1b", "-D", "4", "-N", "8", "--cost", "1,2,0.5")
    assert "order planned for any costs (it does not depend on them)" in capsys.readouterr().out


def test_same_model_plans_for_the_scaled_costs(tmp_path):
    out = tmp_path / "s.json"
    run("bitpipe-zb", "-D", "4", "-N", "6", "--cost", "1,2,1", "--same-model", "--cap", "3",
        "--format", "json", "--out", str(out))
    record = json.loads(out.read_text())
    assert record["options"] == {"costs": OpCosts(0.5, 1.0).to_text(), "memory_cap": 3.0}
    assert max(record["peak_activations"]) <= 3


@pytest.mark.parametrize(
    "argv,words",
    [
        (["zb-v", "-D", "4", "-N", "8", "--cost", "nan,2"], ["--cost", "finite"]),
        (["zb-v", "-D", "4", "-N", "8", "--cost", "1,inf"], ["--cost", "finite"]),
        (["zb-v", "-D", "4", "-N", "8", "--cost", "0,0"], ["--cost", "from 1e-06 to 1e+06"]),
        (["zb-v", "-D", "4", "-N", "8", "--cost", "one,two"], ["--cost", "got 'one,two'"]),
        (["zb-v", "-D", "4", "-N", "8", "--cap", "0.25"], ["--cap", "smallest cap is 1"]),
        (["zb-v", "-D", "4", "-N", "8", "--placement", "bitpipe"], ["--placement", "search"]),
        (["search", "-D", "4", "-N", "8", "--placement", "pipedream"],
         ["--placement", "'pipedream'", "bitpipe, zb-v, 1f1b, interleaved, chimera"]),
        (["search", "-D", "4", "-N", "8", "--time-limit", "0"], ["--time-limit", "positive"]),
        (["search", "-D", "4", "-N", "8", "--format", "csv"], ["--format", "--out"]),
    ],
)
def test_bad_planning_and_search_input(argv, words):
    with pytest.raises(UsageError) as caught:
        run(*argv)
    message = str(caught.value)
    assert "\n" not in message
    for word in words:
        assert word in message


def test_search_without_ortools_names_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "ortools", None)
    monkeypatch.setitem(sys.modules, "ortools.sat.python", None)
    with pytest.raises(UsageError, match=r"needs OR-Tools: pip install mpipipe\[search\]"):
        run("search", "--placement", "bitpipe", "--split", "-D", "2", "-N", "2")
