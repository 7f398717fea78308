"""`mpipipe schedule search`: the best order of one placement's ops that CP-SAT finds.

    mpipipe schedule search --placement bitpipe --split -D 4 -N 8 --cost 1,2,1 --out best.csv
    mpipipe schedule --from-csv best.csv --cost 1,2,1          # check and simulate it again
"""

from __future__ import annotations

import argparse
import json
import math
import sys

from mpipipe.errors import UsageError
from mpipipe.schedules import stage_count
from mpipipe.schedules.csv_io import to_csv
from mpipipe.schedules.layouts import PLACEMENTS
from mpipipe.schedules.simulate import OpCosts

DEFAULT_TIME_LIMIT_S = 10.0
DEFAULT_WORKERS = 2


def add_arguments(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("search (KIND 'search')")
    group.add_argument(
        "--placement", default=None,
        help=f"whose placement to order: {', '.join(PLACEMENTS)} (default bitpipe)",
    )
    group.add_argument("--split", action="store_true", default=None,
                       help="split every backward into I and W")
    group.add_argument(
        "--time-limit", type=float, default=None, metavar="SECONDS",
        help=f"stop the solver after this long (default {DEFAULT_TIME_LIMIT_S:g})",
    )
    group.add_argument(
        "--workers", type=int, default=None,
        help=f"solver threads (default {DEFAULT_WORKERS}); with one, a run that ends "
        "before its time limit is reproducible",
    )


def refuse_search_options(args: argparse.Namespace) -> None:
    """Search options given without KIND 'search' are a mistake, not something to ignore."""
    for name in ("placement", "split", "time_limit", "workers"):
        if getattr(args, name) is not None:
            flag = "--" + name.replace("_", "-")
            raise UsageError(f"{flag}: only for KIND 'search' (mpipipe schedule search {flag} ...)")


def run(args: argparse.Namespace, costs: OpCosts, ranks: int, microbatches: int) -> int:
    from mpipipe.schedules.search import search

    placement = args.placement or "bitpipe"
    if placement not in PLACEMENTS:
        raise UsageError(
            f"--placement: unknown placement {placement!r} (choose from {', '.join(PLACEMENTS)})"
        )
    time_limit = DEFAULT_TIME_LIMIT_S if args.time_limit is None else args.time_limit
    if not (math.isfinite(time_limit) and time_limit > 0):
        raise UsageError(f"--time-limit: expected a positive number of seconds, got {time_limit}")
    workers = DEFAULT_WORKERS if args.workers is None else args.workers
    if workers < 1:
        raise UsageError(f"--workers: expected at least 1 solver thread, got {workers}")
    if args.format not in ("text", "json"):
        raise UsageError(
            f"--format: search prints a summary (text) or json, not {args.format}; the order "
            "itself goes to --out FILE as CSV"
        )
    if args.same_model:
        # Each placement is named after the kind it comes from.
        costs = costs.scaled(ranks / stage_count(placement, ranks, args.chunks))
    result = search(
        placement, ranks, microbatches, costs, bool(args.split), args.cap, time_limit, workers,
        args.chunks,
    )
    if args.out:
        with open(args.out, "w", encoding="utf-8") as file:
            file.write(to_csv(result.schedule))
    if args.format == "json":
        record = {
            "placement": placement,
            "split_backward": bool(args.split),
            "ranks": ranks,
            "microbatches": microbatches,
            "memory_cap": result.memory_cap,
            "costs": costs.to_text(),
            "makespan": result.makespan,
            "bound": result.bound,
            "gap": result.gap,
            "optimal": result.optimal,
            "hint": result.hint_label,
            "hint_makespan": result.hint_makespan,
            "ops": [[str(op) for op in rank_ops] for rank_ops in result.schedule.ops],
        }
        sys.stdout.write(json.dumps(record, indent=1) + "\n")
        return 0
    split = "split backward" if args.split else "whole backward"
    verdict = "optimal" if result.optimal else f"time limit {time_limit:g} s reached"
    lines = [
        f"search of the {placement} placement, {split}: D={ranks} N={microbatches} "
        f"S={result.schedule.stages}, costs per stage {costs.describe(bool(args.split))}, "
        f"cap {result.memory_cap:g} micro-batches of L/D layers per rank",
        f"started from      {result.hint_makespan:g} ({result.hint_label})",
        f"best makespan     {result.makespan:g}",
        f"lower bound       {result.bound:g}",
        f"gap               {result.gap:.2%} ({verdict})",
    ]
    if not result.exact_time:
        lines.append("durations were rounded to 1/1000 of a time unit for the solver")
    lines.append(
        f"order written to  {args.out}" if args.out else "order: add --out FILE to keep it as CSV"
    )
    sys.stdout.write("\n".join(lines) + "\n")
    return 0
