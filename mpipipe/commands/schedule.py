"""`mpipipe schedule`: generate, check, simulate and draw a pipeline schedule.

    mpipipe schedule bitpipe --ranks 4 --microbatches 8 --cost 1,2
    mpipipe schedule zb-v -D 8 -N 32 --cost 1,2,1 --format png --out zbv.png
    mpipipe schedule --from-csv mine.csv --format json
    mpipipe schedule zb-v -D 4 -N 8 --format torch-csv --out zbv.csv  # for PyTorch's _load_csv
    mpipipe schedule all -D 8 -N 8 16 32 --cost 1,1          # bubble table of every kind
    mpipipe schedule search --placement bitpipe --split -D 4 -N 8 --cost 1,2,1 --out best.csv

A kind whose order is computed (bitpipe-zb, zb-v, zb-h1, bitpipe)
is planned for the --cost and --latency given, and then simulated with them.
"""

from __future__ import annotations

import argparse
import json
import sys

from mpipipe.commands import schedule_search
from mpipipe.errors import UsageError
from mpipipe.paths import require_output_file
from mpipipe.plots.schedule import draw_schedule
from mpipipe.schedules import SCHEDULE_KINDS, check_constraints, plan, stage_count
from mpipipe.schedules.csv_io import to_csv
from mpipipe.schedules.grid import ScheduleError
from mpipipe.schedules.render import chrome_trace, timeline_text
from mpipipe.schedules.schedule import Schedule
from mpipipe.schedules.schedule_file import read_schedule_file
from mpipipe.schedules.simulate import OpCosts, Simulation, simulate
from mpipipe.schedules.torch_csv import to_torch_csv

FORMATS = ("text", "json", "csv", "torch-csv", "chrome", "png")
ALL = "all"
SEARCH = "search"


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "schedule",
        help="generate, check, simulate and draw a pipeline schedule",
        description="Generate, check, simulate and draw a pipeline schedule.",
        epilog="Costs are per op of the schedule's own stage; --same-model rescales them by "
        "D/S so that schedules with more, smaller stages are compared on the same model.",
    )
    parser.add_argument(
        "kind", nargs="?", metavar="KIND",
        help=f"one of {', '.join(SCHEDULE_KINDS)}; '{ALL}' for a table comparing them; "
        f"'{SEARCH}' for the best order of a placement that CP-SAT finds",
    )
    parser.add_argument(
        "--from-csv", metavar="FILE",
        help="read the schedule from a CSV file: mpipipe's, or PyTorch's compute_only or "
        "compute_comms file",
    )
    parser.add_argument("-D", "--ranks", type=int, help="pipeline ranks D")
    parser.add_argument(
        "-N", "--microbatches", type=int, nargs="+",
        help="micro-batches N per step (several only with KIND 'all')",
    )
    parser.add_argument("--chunks", type=int, default=2, help="interleaved: chunks v per rank")
    parser.add_argument(
        "--cost", default="1,2", metavar="F,B[,W]",
        help="forward and backward time per stage; a split backward uses I = W = B/2, "
        "or I = B - W when W is given (default 1,2)",
    )
    parser.add_argument("--latency", type=float, default=0.0, help="time of one message")
    parser.add_argument(
        "--same-model", action="store_true",
        help="scale compute costs by D/S (bitpipe, bitpipe-zb, zb-v, interleaved have smaller "
        "stages)",
    )
    parser.add_argument(
        "--cap", type=float, default=None, metavar="M",
        help="memory cap: micro-batches of L/D layers a rank may hold, for planned orders "
        "(default D) and the search (default the placement's own kind's peak)",
    )
    schedule_search.add_arguments(parser)
    parser.add_argument(
        "--format", choices=FORMATS, default="text",
        help="torch-csv: the compute_only file PyTorch's pipelining loads (_load_csv); "
        "one-pipe schedules only, since PyTorch holds each stage on one rank (not chimera, "
        "bitpipe or bitpipe-zb); SYNCs are left out, PyTorch adds its own REDUCE_GRAD",
    )
    parser.add_argument("--out", metavar="FILE", help="write here instead of standard output")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    costs = OpCosts.parse(args.cost, args.latency)
    if args.out:
        _check_out(args.out)
    if args.kind == SEARCH and not args.from_csv:
        ranks, microbatches = _sizes(args)
        return schedule_search.run(args, costs, ranks, _one(microbatches))
    schedule_search.refuse_search_options(args)
    if args.kind == ALL and not args.from_csv:
        return _compare(args, costs)
    try:
        schedule = _load(args, costs)
        simulation = simulate(schedule, costs, scale_by_stage_size=args.same_model)
    except ScheduleError as error:
        if error.report:
            print(error.report, file=sys.stderr)
        raise
    if args.format == "png":
        if not args.out:
            raise UsageError("--format png writes a file: add --out FILE (such as schedule.png)")
        draw_schedule(simulation, args.out)
        return 0
    _emit(args.out, _render(simulation, args.format))
    return 0


def _load(args: argparse.Namespace, costs: OpCosts) -> Schedule:
    if args.from_csv:
        if args.kind or args.ranks is not None or args.microbatches is not None:
            raise UsageError(
                "--from-csv: the CSV gives the kind, ranks and micro-batches; leave out KIND, "
                "--ranks and --microbatches"
            )
        return read_schedule_file(args.from_csv, source=args.from_csv)
    if not args.kind:
        raise UsageError(
            f"schedule: give a KIND ({', '.join(SCHEDULE_KINDS)}, {ALL} or {SEARCH}) or "
            "--from-csv FILE"
        )
    ranks, microbatches = _sizes(args)
    return _planned(args, args.kind, ranks, _one(microbatches), costs)


def _planned(
    args: argparse.Namespace, kind: str, ranks: int, microbatches: int, costs: OpCosts
) -> Schedule:
    """`kind` ordered for the costs it will be simulated with (rescaled by --same-model)."""
    check_constraints(kind, ranks, microbatches, args.chunks)
    if args.same_model:
        costs = costs.scaled(ranks / stage_count(kind, ranks, args.chunks))
    return plan(kind, ranks, microbatches, costs, args.cap, args.chunks)


def _one(microbatches: list[int]) -> int:
    if len(microbatches) != 1:
        raise UsageError(
            f"--microbatches: one value for a single schedule, got {len(microbatches)} "
            f"(several are for KIND '{ALL}')"
        )
    return microbatches[0]


def _sizes(args: argparse.Namespace) -> tuple[int, list[int]]:
    if args.ranks is None:
        raise UsageError("--ranks: give the number of pipeline ranks D, such as --ranks 4")
    if args.microbatches is None:
        raise UsageError(
            "--microbatches: give the micro-batches per step N, such as --microbatches 8"
        )
    return args.ranks, args.microbatches


def _render(simulation: Simulation, output_format: str) -> str:
    schedule = simulation.schedule
    if output_format == "csv":
        return to_csv(schedule)
    if output_format == "torch-csv":
        return to_torch_csv(schedule)
    if output_format == "chrome":
        return json.dumps(chrome_trace(simulation)) + "\n"
    if output_format == "json":
        return json.dumps(_record(simulation), indent=1) + "\n"
    return timeline_text(simulation)


def _record(simulation: Simulation) -> dict:
    schedule = simulation.schedule
    costs = simulation.costs
    return {
        "kind": schedule.kind,
        "ranks": schedule.ranks,
        "microbatches": schedule.microbatches,
        "stages": schedule.stages,
        "pipes": schedule.pipes,
        "options": schedule.options,
        "costs": {
            "forward": costs.forward,
            "backward": costs.backward,
            "backward_input": costs.backward_input,
            "backward_weight": costs.backward_weight,
            "latency": costs.latency,
        },
        "placement": [
            {"pipe": pipe, "stage": stage, "rank": rank}
            for (pipe, stage), rank in sorted(schedule.placement.rank_of_chunk.items())
        ],
        "ops": [[str(op) for op in rank_ops] for rank_ops in schedule.ops],
        "makespan": simulation.makespan,
        "bubble": simulation.bubble,
        "peak_activations": simulation.peak_activations,
        "messages": simulation.messages,
        "sync_start": simulation.sync_starts,
    }


def _compare(args: argparse.Namespace, costs: OpCosts) -> int:
    """Every kind at every N: the mean bubble (text) or the full records (json)."""
    if args.format not in ("text", "json"):
        raise UsageError(f"--format: KIND '{ALL}' prints a table (text) or json, not {args.format}")
    ranks, microbatch_counts = _sizes(args)
    records = []
    skipped = []
    for kind in SCHEDULE_KINDS:
        for microbatches in microbatch_counts:
            try:
                check_constraints(kind, ranks, microbatches, args.chunks)
            except UsageError as error:
                skipped.append(f"{kind} N={microbatches}: {error}")
                continue
            schedule = _planned(args, kind, ranks, microbatches, costs)
            records.append(simulate(schedule, costs, scale_by_stage_size=args.same_model))
    if args.format == "json":
        _emit(args.out, json.dumps([_record(record) for record in records], indent=1) + "\n")
        return 0
    bubbles = {
        (record.schedule.kind, record.schedule.microbatches): sum(record.bubble) / ranks
        for record in records
    }
    backward = f"{costs.backward:g} (I={costs.backward_input:g}, W={costs.backward_weight:g})"
    scaled = ", costs scaled by D/S (--same-model)" if args.same_model else ""
    lines = [
        f"mean bubble (idle / makespan), D={ranks}, F={costs.forward:g}, B={backward}, "
        f"latency={costs.latency:g}{scaled}; computed orders planned for these costs",
        f"{'kind':<12}" + "".join(f"{f'N={count}':>9}" for count in microbatch_counts),
    ]
    for kind in SCHEDULE_KINDS:
        cells = [
            f"{bubbles[(kind, count)]:>9.4f}" if (kind, count) in bubbles else f"{'-':>9}"
            for count in microbatch_counts
        ]
        lines.append(f"{kind:<12}" + "".join(cells))
    lines += [f"skipped {reason}" for reason in skipped]
    _emit(args.out, "\n".join(lines) + "\n")
    return 0


def _check_out(path: str) -> None:
    require_output_file(path, "--out", "give the name of a file to write, such as schedule.txt")


def _emit(path: str | None, text: str) -> None:
    if not path:
        sys.stdout.write(text)
        return
    _check_out(path)
    try:
        with open(path, "w", encoding="utf-8") as file:
            file.write(text)
    except OSError as error:
        raise UsageError(f"--out {path!r} cannot be written: {error.strerror}") from None
