"""The CP-SAT search: proven optima against the planners, its CSV, its memory cap."""

import sys

import pytest

from mpipipe.errors import UsageError
from mpipipe.schedules import plan, simulate
from mpipipe.schedules.csv_io import from_csv, to_csv
from mpipipe.schedules.simulate import OpCosts

pytest.importorskip("ortools", reason="the search needs OR-Tools (pip install mpipipe[search])")

from mpipipe.schedules.search import search  # noqa: E402


def run_search(placement, ranks, microbatches, profile, split, **options):
    costs = OpCosts.parse(profile).scaled(0.5 if placement in ("bitpipe", "zb-v") else 1.0)
    options.setdefault("time_limit", 30)
    options.setdefault("workers", 1)
    return costs, search(placement, ranks, microbatches, costs, split, **options)


@pytest.mark.parametrize(
    "kind,placement,ranks,microbatches,profile",
    [
        ("bitpipe-zb", "bitpipe", 2, 4, "1,2,1"),
        ("bitpipe-zb", "bitpipe", 4, 4, "1,2,0.5"),
        ("bitpipe-zb", "bitpipe", 4, 8, "1,1,0.5"),
        ("zb-v", "zb-v", 2, 4, "1,3,1.5"),
        ("zb-v", "zb-v", 4, 4, "1,2,0.5"),
    ],
)
def test_planned_orders_are_within_3_percent_of_the_proven_optimum(
    kind, placement, ranks, microbatches, profile
):
    costs, result = run_search(placement, ranks, microbatches, profile, split=True)
    assert result.optimal, f"not proven in the time limit: gap {result.gap:.2%}"
    planned = simulate(plan(kind, ranks, microbatches, costs), costs).makespan
    assert result.makespan <= planned <= 1.03 * result.makespan
    # The written order reads back, validates, and simulates to the reported makespan.
    again = from_csv(to_csv(result.schedule))
    assert again.ops == result.schedule.ops
    assert simulate(again, costs).makespan == result.makespan
    assert max(simulate(again, costs).peak_activations) <= result.memory_cap


def test_memory_cap_by_hand():
    # 1F1B's placement, D = N = 2, F = 1, B = 2. Holding one micro-batch per rank runs them
    # one after the other: 2 x (2F + 2B) = 12. With two, rank 0's second F overlaps: 9.
    _, sequential = run_search("1f1b", 2, 2, "1,2", split=False, memory_cap=1)
    assert (sequential.makespan, sequential.bound) == (12, 12)
    _, overlapped = run_search("1f1b", 2, 2, "1,2", split=False, memory_cap=2)
    assert (overlapped.makespan, overlapped.bound) == (9, 9)


def test_latency_counts_only_across_ranks():
    # Same case with a message time of 0.5 on each of the 2 crossings per micro-batch.
    costs = OpCosts(1, 2, latency=0.5)
    result = search("1f1b", 2, 2, costs, False, memory_cap=1, time_limit=30, workers=1)
    assert result.optimal and result.makespan == 12 + 2 * 2 * 0.5


def test_a_cap_below_any_order_names_the_smallest():
    with pytest.raises(UsageError, match="smallest cap is 1 "):
        run_search("bitpipe", 4, 4, "1,2,1", split=True, memory_cap=0.5)


def test_without_ortools_says_which_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "ortools", None)
    monkeypatch.setitem(sys.modules, "ortools.sat.python", None)
    with pytest.raises(UsageError, match=r"pip install mpipipe\[search\]"):
        run_search("bitpipe", 2, 2, "1,2,1", split=True)


def test_search_command_writes_a_csv_that_reads_back(tmp_path, capsys):
    from test_schedules_cli import run as run_command

    path = tmp_path / "best.csv"
    run_command("search", "--placement", "bitpipe", "--split", "-D", "2", "-N", "4",
                "--cost", "1,2,1", "--same-model", "--workers", "1", "--out", str(path))
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith("search of the bitpipe placement, split backward: D=2 N=4 S=4")
    best = float(lines[2].split()[-1])
    assert lines[3].split()[-1] == lines[2].split()[-1]  # proven: the bound is the best
    assert lines[4].endswith("(optimal)")
    run_command("--from-csv", str(path), "--cost", "1,2,1", "--same-model")
    out = capsys.readouterr().out
    assert f"makespan          {best:g}" in out
    assert "order planned for costs per stage F=0.5 I=0.5 W=0.5" in out
