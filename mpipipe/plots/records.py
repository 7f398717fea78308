"""Read what `mpipipe train` left in a run folder: metrics.jsonl and trace.json."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass

from mpipipe.errors import UsageError

METRICS_FILE = "metrics.jsonl"
TRACE_FILE = "trace.json"

# Keys of a metrics row that the figures read.
REQUIRED_KEYS = (
    "step", "loss", "lr", "bubble", "bubble_mean", "compute_s", "wait_s", "window_s",
)

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
    if not os.path.exists(run_dir):
        raise UsageError(f"run folder {run_dir!r} does not exist: {WHAT_A_RUN_FOLDER_IS}")
    if not os.path.isdir(run_dir):
        raise UsageError(f"run folder {run_dir!r} is a file, not a folder: {WHAT_A_RUN_FOLDER_IS}")
    metrics_path = os.path.join(run_dir, METRICS_FILE)
    if not os.path.isfile(metrics_path):
        raise UsageError(
            f"run folder {run_dir!r} has no {METRICS_FILE} (a run writes it from its first "
            f"step on): {WHAT_A_RUN_FOLDER_IS}"
        )
    rows = read_metrics_rows(metrics_path)
    trace_path = os.path.join(run_dir, TRACE_FILE)
    events = read_trace_events(trace_path) if os.path.isfile(trace_path) else None
    return RunRecord(run_dir, rows, events)


def read_metrics_rows(path: str) -> list[dict]:
    with open(path, encoding="utf-8") as handle:
        text = handle.read()
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
        by_step[row["step"]] = row
    if not by_step:
        raise UsageError(f"{path} is empty: the run has not finished a step yet; plot it later")
    return [by_step[step] for step in sorted(by_step)]


def read_trace_events(path: str) -> list[dict]:
    """The complete-interval events ("ph": "X") of a Chrome trace."""
    try:
        with open(path, encoding="utf-8") as handle:
            trace = json.load(handle)
    except json.JSONDecodeError:
        raise UsageError(
            f"{path} is not a JSON Chrome trace (was the run stopped while writing it?); "
            "rerun, or delete it to plot without the timeline"
        ) from None
    events = trace.get("traceEvents", []) if isinstance(trace, dict) else []
    return [event for event in events if isinstance(event, dict) and event.get("ph") == "X"]
