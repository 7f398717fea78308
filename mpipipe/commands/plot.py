"""`mpipipe plot RUN_DIR`: loss curve, measured step timeline and per-rank time breakdown."""

from __future__ import annotations

import argparse


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "plot",
        help="draw a run's loss curve, step timeline and per-rank time breakdown (PNG)",
        description="Draw the figures of a training run from the metrics.jsonl and trace.json "
        "in its folder: loss.png (loss and learning rate per step), timeline.png (one traced "
        "step, one row per rank, op boxes with micro-batch numbers) and time_breakdown.png "
        "(compute, communication and idle time per rank) and memory.png (each rank's measured "
        "peak memory and activation caches per step). Needs matplotlib: "
        "pip install 'mpipipe[plot]'.",
    )
    parser.add_argument("run_dir", metavar="RUN_DIR", help="the --out folder of `mpipipe train`")
    parser.add_argument(
        "--out", metavar="DIR", default=None, help="write the PNGs here (default: RUN_DIR)"
    )
    parser.add_argument(
        "--step", type=int, default=None,
        help="traced step the timeline shows (default: the last one in trace.json)",
    )
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from mpipipe.plots import plot_run

    for path in plot_run(args.run_dir, args.out, args.step):
        print(f"wrote {path}")
    return 0
