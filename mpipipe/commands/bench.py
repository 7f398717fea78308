"""`mpipipe bench`: measure mpipipe and write Markdown tables and JSON.

    mpipipe bench --out runs/bench                 # every CPU table, one command
    mpipipe bench all --quick --out /tmp/bench     # the same, small and fast
    mpiexec -n 8 python -m mpipipe bench emulated  # one part (emulated, cpu, layers, gpu)
    mpipipe bench schedules --time-limit 120       # every schedule against CP-SAT (2 hours)
    mpipipe bench all --profiles "1,2,1;1,2,0.5"   # the emulated part at two cost profiles
"""

from __future__ import annotations

import os
import sys

from mpipipe.bench.cost_profiles import EMULATED_PROFILES
from mpipipe.bench.search_cache import DEFAULT_TIME_LIMIT_S, QUICK_TIME_LIMIT_S
from mpipipe.errors import EXIT_USAGE, UsageError

PART_CHOICES = ("all", "emulated", "cpu", "layers", "gpu", "schedules")


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "bench",
        help="benchmark the runtime: emulated accelerator, CPU pipelines, layers, GPU",
        description="Measure mpipipe and write <part>.md and <part>.json into --out. 'all' "
        "(the default) launches the MPI parts with mpiexec itself and joins every table into "
        "README.md and bench.json. The emulated part emulates compute (each op keeps an emulated "
        "device busy for its cost; real engine, real messages) and compares each step with the "
        "schedule simulator.",
    )
    parser.add_argument("part", nargs="?", default="all", choices=PART_CHOICES,
                        help="which benchmark to run (default: all)")
    parser.add_argument("--out", default="runs/bench", help="folder for the Markdown and JSON")
    parser.add_argument("--quick", action="store_true",
                        help="small shapes, few steps: a check that everything runs (a minute)")
    parser.add_argument("--schedules", default=None, metavar="LIST",
                        help="comma-separated schedules (default: every schedule)")
    parser.add_argument("--ranks", default=None, metavar="LIST",
                        help="emulated, schedules: pipeline degrees D (default 4,8; quick: 4)")
    parser.add_argument("--microbatch-multiples", default=None, metavar="LIST",
                        help="emulated, schedules: N as multiples of D (default 1,2,4; quick: 1)")
    parser.add_argument("--f0-ms", default=None, metavar="LIST",
                        help="emulated: forward time of one 1F1B stage in ms (default 1,2,20,40; "
                        "quick: 5)")
    parser.add_argument("--small-message-f0-ms", default=None, metavar="LIST",
                        help="emulated: f0 values in ms whose cases also run with 64 KiB "
                        "messages (default 1,2; quick: none; '' for none)")
    parser.add_argument("--steps", type=int, default=None,
                        help="timed steps per case (default: each part's own)")
    parser.add_argument("--profiles", default=None, metavar="LIST",
                        help="emulated: cost profiles F,B,W separated by ';' (default "
                        f"{';'.join(EMULATED_PROFILES)}; quick: 1,2,1;1,2,0.5); the first runs "
                        "at every --f0-ms, the others at --profile-f0-ms")
    parser.add_argument("--profile-f0-ms", default=None, metavar="LIST",
                        help="emulated: f0 values in ms of the profiles after the first "
                        "(default 20; quick: 5)")
    parser.add_argument("--time-limit", type=float, default=None, metavar="SECONDS",
                        help="emulated, schedules: seconds per search (default "
                        f"{DEFAULT_TIME_LIMIT_S:g}; quick: {QUICK_TIME_LIMIT_S:g}); each search "
                        "is kept in --out/searches.json and not run again there")
    parser.add_argument("--workers", type=int, default=2,
                        help="emulated, schedules: solver threads per search (default 2)")
    parser.add_argument("--no-search", action="store_true",
                        help="emulated: leave out the column of the search's best")
    parser.add_argument("--parts", default=None, metavar="LIST",
                        help="all: the parts to run (default emulated,cpu,layers,gpu,schedules); "
                        "README.md joins every part found in --out")
    parser.add_argument("--mpiexec", default=None, metavar="COMMAND",
                        help="all: launcher command for the MPI parts, used as given (default: "
                        "$MPIEXEC or mpiexec from PATH, with --oversubscribe under Open MPI)")
    parser.add_argument("--timeout", type=float, default=7200.0,
                        help="all: seconds each launched part may take")
    parser.set_defaults(func=run)


def parse_list(text: str | None, name: str, convert, default: list) -> list:
    if text is None:
        return default
    try:
        return [convert(item) for item in text.split(",") if item.strip()]
    except ValueError:
        raise UsageError(
            f"{name}: expected numbers separated by commas (such as 4,8), got {text!r}"
        ) from None


def profiles(text: str | None, default: list[str]) -> list[str]:
    """--profiles "1,2,1;1,2,0.5" as a list (each checked with the other options)."""
    if text is None:
        return default
    return [item.strip() for item in text.split(";") if item.strip()]


def options_from(args):
    from mpipipe.bench.driver import COMMAND_VARIABLE, PARTS, BenchOptions, check_options

    defaults = BenchOptions()
    quick = args.quick
    options = BenchOptions(
        out=args.out,
        quick=quick,
        schedules=parse_list(args.schedules, "--schedules", str.strip,
                             ["1f1b", "bitpipe", "bitpipe-zb"] if quick
                             else defaults.schedules),
        ranks=parse_list(args.ranks, "--ranks", int, [4] if quick else defaults.ranks),
        microbatch_multiples=parse_list(args.microbatch_multiples, "--microbatch-multiples", int,
                                        [1] if quick else defaults.microbatch_multiples),
        f0_ms=parse_list(args.f0_ms, "--f0-ms", float, [5.0] if quick else defaults.f0_ms),
        small_message_f0_ms=parse_list(args.small_message_f0_ms, "--small-message-f0-ms", float,
                                       [] if quick else defaults.small_message_f0_ms),
        steps=args.steps,
        mpiexec=args.mpiexec,
        timeout_s=args.timeout,
        command=os.environ.get(COMMAND_VARIABLE),
        parts=parse_list(args.parts, "--parts", str.strip, list(PARTS)),
        time_limit_s=args.time_limit,
        workers=args.workers,
        search=not args.no_search,
        profiles=profiles(args.profiles, ["1,2,1", "1,2,0.5"] if quick else defaults.profiles),
        profile_f0_ms=parse_list(args.profile_f0_ms, "--profile-f0-ms", float,
                                 [5.0] if quick else defaults.profile_f0_ms),
    )
    check_options(options)
    return options


def run(args) -> int:
    from mpipipe.bench.driver import MPI_PARTS, RUNNERS, run_all
    from mpipipe.commands.train import launcher_rank

    try:
        options = options_from(args)
        if args.part == "all":
            return run_all(options)
        return RUNNERS[args.part](options)
    except UsageError as error:
        # Every rank of an MPI part finds the same problem; one of them says so.
        if args.part not in MPI_PARTS or launcher_rank() == 0:
            print(f"mpipipe: error: {error}", file=sys.stderr, flush=True)
        return EXIT_USAGE
