"""`mpipipe bench schedules`: every schedule against the search, as a table."""

import json
import subprocess
import sys

import pytest

from mpipipe.schedules import SCHEDULE_KINDS

from mpirun import REPO, mpipipe_args

pytest.importorskip("ortools", reason="the table's searches need OR-Tools (mpipipe[search])")


def test_quick_table_has_every_kind_and_the_searches(tmp_path):
    completed = subprocess.run(
        [sys.executable, *mpipipe_args("bench", "schedules", "--quick", "--ranks", "2",
                                       "--microbatch-multiples", "1,2", "--workers", "1",
                                       "--out", str(tmp_path))],
        capture_output=True, text=True, timeout=300, cwd=REPO,
    )
    assert completed.returncode == 0, completed.stderr
    points = json.loads((tmp_path / "schedules.json").read_text())["points"]
    assert [(p["ranks"], p["microbatches"]) for p in points] == [(2, 2)] * 2 + [(2, 4)] * 2
    for point in points:
        runs_here = {kind for kind in SCHEDULE_KINDS
                     if kind != "dualpipev" or point["microbatches"] >= 2 * point["ranks"]}
        assert set(point["makespans"]) == runs_here
        for search in (point["split"], point["whole"]):
            assert search["bound"] <= search["best"]
        # The searches start from the planners' orders, so never end above them.
        assert point["split"]["best"] <= point["makespans"]["bitpipe-zb"]
        assert point["whole"]["best"] <= point["makespans"]["bitpipe"]
    markdown = (tmp_path / "schedules.md").read_text()
    rows = [line for line in markdown.splitlines() if line.startswith("| 2 |")]
    assert len(rows) == len(points)
    assert all(row.count("|") == len(SCHEDULE_KINDS) + 10 for row in rows)
    assert "bitpipe-zb is the fastest schedule at" in markdown
    # The bubble table (D = 4 when quick) against the closed forms that hold at B = 2F.
    bubbles = json.loads((tmp_path / "schedules.json").read_text())["bubbles"]
    ranks = 4
    for microbatches in (4, 8):
        n = str(microbatches)
        assert bubbles["gpipe"][n] == pytest.approx((ranks - 1) / (microbatches + ranks - 1))
        assert bubbles["1f1b"][n] == pytest.approx((ranks - 1) / (microbatches + ranks - 1))
    assert bubbles["bitpipe"]["4"] == pytest.approx((ranks - 2) / (3 * 4 + ranks - 2))
    assert "4" not in bubbles["dualpipev"] and "8" in bubbles["dualpipev"]
    assert "### Every schedule's bubble (simulated)" in markdown
    assert f"| bitpipe | {bubbles['bitpipe']['4']:.3f} |" in markdown
