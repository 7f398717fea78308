"""`mpipipe plan CONFIG [--set ...] [--ranks R] [--memory 80GiB] [--format text|json]`.

Predicts, without MPI and without allocating, every pipeline rank's memory
(parameters, gradients, optimizer state, working copies, peak activations,
message buffers) and the schedule's simulated bubble (mpipipe/memory_plan/).
With --memory, a rank over the budget ends it with one line naming the
smallest change that fits, exit 2, after the table: job scripts run it
before srun/mpiexec and stop there.
"""

from __future__ import annotations

import argparse
import json

from mpipipe.commands.config import add_config_arguments
from mpipipe.config.load import load_config
from mpipipe.errors import UsageError
from mpipipe.memory_plan import parse_memory, predict_memory, smallest_fix
from mpipipe.memory_plan.report import json_report, text_report, verdict

FORMATS = ("text", "json")


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "plan", help="predict each rank's memory and say whether the run fits",
        description="Predict every pipeline rank's memory (parameters, gradients, optimizer "
                    "state, peak activations, message buffers) and the simulated bubble; with "
                    "--memory, say whether the run fits and, if not, the smallest change that "
                    "does (exit 2).",
    )
    add_config_arguments(parser)
    parser.add_argument("--ranks", type=int, metavar="R",
                        help="MPI ranks of the job (needed when parallel.pipeline = 0)")
    parser.add_argument("--memory", metavar="SIZE",
                        help="memory per rank, e.g. 80GiB or 40GB (a GPU's, or a CPU rank's share)")
    parser.add_argument("--format", choices=FORMATS, default="text")
    parser.set_defaults(func=plan_command, explain_unexpected=explain_unexpected)


def explain_unexpected(args: argparse.Namespace, unexpected: list[str]) -> str:
    """`--memory 80 GB` leaves "GB" over: say how to write the size."""
    if args.memory is not None and args.memory.replace(".", "", 1).isdigit():
        return (f" (--memory {args.memory} {unexpected[0]}: write the size without a space, "
                f"e.g. --memory {args.memory}{unexpected[0]})")
    return ""


def plan_command(args: argparse.Namespace) -> int:
    budget = None if args.memory is None else parse_memory(args.memory)
    if args.ranks is not None and args.ranks < 1:
        raise UsageError(f"--ranks {args.ranks}: give the job's MPI ranks, 1 or more")
    plan = predict_memory(load_config(args.config, args.overrides), args.ranks)
    fix = smallest_fix(plan, budget) if budget is not None and not plan.fits(budget) else None
    if args.format == "json":
        print(json.dumps(json_report(plan, budget, fix), indent=2))
    else:
        print(text_report(plan, budget, fix))
    if budget is not None and not plan.fits(budget):
        raise UsageError(verdict(plan, budget, fix))
    return 0
