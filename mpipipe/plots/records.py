"""Read what `mpipipe train` left in a run folder: metrics.jsonl and trace.json."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass

from mpipipe.errors import UsageError
from mpipipe.paths import read_text, require_folder

METRICS_FILE = "metrics.jsonl"
TRACE_FILE = "trace.json"

# Keys of a metrics row that the figures read: a step, numbers, and one number per rank.
NUMBER_KEYS = ("loss", "lr", "bubble_mean", "window_s")
PER_RANK_KEYS = ("bubble", "compute_s", "wait_s")
REQUIRED_KEYS = ("step", *NUMBER_KEYS, *PER_RANK_KEYS)

WHAT_A_RUN_FOLDER_IS = (
    "give the --out folder of an `mpipipe train` run (default runs/<config name>)"
)


@dataclass
class RunRecord:
    run_dir: str
    rows: list[dict]  # one per step, sorted by step; a resumed run's rows replace earlier ones
    trace_events: list[dict] | None  # the Chrome trace's op intervals; None without trace.json

    @property
    def name(self) -> str:
        return os.path.basename(os.path.normpath(self.run_dir)) or self.run_dir


def read_run(run_dir: str) -> RunRecord:
    """The metrics and trace of `run_dir`; a missing or empty folder raises one-line UsageError."""
    require_folder(run_dir, "run folder", WHAT_A_RUN_FOLDER_IS)
    metrics_path = os.path.join(run_dir, METRICS_FILE)
    if not os.path.lexists(metrics_path):
        raise UsageError(
            f"run folder {run_dir!r} has no {METRICS_FILE} (a run writes it from its first "
            f"step on): {WHAT_A_RUN_FOLDER_IS}"
        )
    rows = read_metrics_rows(metrics_path)
    trace_path = os.path.join(run_dir, TRACE_FILE)
    events = read_trace_events(trace_path) if os.path.isfile(trace_path) else None
    return RunRecord(run_dir, rows, events)


def read_metrics_rows(path: str) -> list[dict]:
    text = read_text(path, "metrics file", "give the metrics.jsonl that `mpipipe train` wrote")
    # A run still writing may have left its last line half done: plot the steps before it.
    lines = text.split("\n")[:-1]
    by_step: dict[int, dict] = {}
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            raise UsageError(
                f"{path}: line {number} is not JSON; each line must be one step's metrics "
                "object as `mpipipe train` writes it"
            ) from None
        missing = [key for key in REQUIRED_KEYS if not isinstance(row, dict) or key not in row]
        if missing:
            raise UsageError(
                f"{path}: line {number} lacks {', '.join(missing)}; was it written by "
                "`mpipipe train`?"
            )
        problem = _row_problem(row)
        if problem:
            raise UsageError(f"{path}: line {number}: {problem}; each line must be one step's "
                             "metrics as `mpipipe train` writes them")
        by_step[row["step"]] = row
    if not by_step:
        raise UsageError(f"{path} is empty: the run has not finished a step yet; plot it later")
    return [by_step[step] for step in sorted(by_step)]


def _row_problem(row: dict) -> str | None:
    """What in a row the figures cannot draw: a step that is no count, a value that is no number."""
    if not _is_integer(row["step"]) or row["step"] < 0:
        return f"step is {json.dumps(row['step'])}, not a step number (0 or more)"
    for key in NUMBER_KEYS:
        if not _is_number(row[key]):
            return f"{key} is {json.dumps(row[key])}, not a number"
    for key in PER_RANK_KEYS:
        values = row[key]
        if not isinstance(values, list) or not values or not all(map(_is_number, values)):
            return f"{key} is {json.dumps(values)}, not a list of numbers (one per rank)"
    return None


def _is_integer(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def read_trace_events(path: str) -> list[dict]:
    """The complete-interval events ("ph": "X") of a Chrome trace."""
    try:
        trace = json.loads(read_text(path, "trace", "rerun, or delete it to plot without the "
                                     "timeline"))
    except json.JSONDecodeError:
        raise UsageError(
            f"{path} is not a JSON Chrome trace (was the run stopped while writing it?); "
            "rerun, or delete it to plot without the timeline"
        ) from None
    events = trace.get("traceEvents", []) if isinstance(trace, dict) else []
    return [event for event in events if isinstance(event, dict) and event.get("ph") == "X"]
