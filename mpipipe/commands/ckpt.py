"""`mpipipe ckpt inspect FILE` and `mpipipe ckpt verify FILE`: look into a checkpoint.

Neither needs MPI or the run's config. Both exit 2 when the path is not a
readable file (missing, a folder, a device, a loop of links), like every
command given a bad path. `verify` exits 0 when the metadata agrees with
itself and every dataset matches its checksum, 1 when anything does not
(each problem named) or the file is not a readable checkpoint.
"""

from __future__ import annotations

import sys

from mpipipe.errors import EXIT_ERROR, UsageError
from mpipipe.paths import require_file


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "ckpt", help="inspect and verify checkpoint files",
        description="Inspect and verify checkpoint files written by mpipipe train.",
    )
    parser.set_defaults(func=lambda args: _print_help(parser))
    actions = parser.add_subparsers(dest="ckpt_command", metavar="ACTION")
    inspect = actions.add_parser(
        "inspect", help="print step, config, schedule and datasets (shapes, sizes, checksums)",
        description="Print a checkpoint's step, data position, resolved config, schedule, and "
        "every dataset with its shape, size and stored checksum.",
    )
    inspect.add_argument("file", help="checkpoint file (step_*.h5)")
    inspect.set_defaults(func=inspect_checkpoint)
    verify = actions.add_parser(
        "verify", help="check the metadata and every dataset's checksum; exit 1 naming any "
        "problem",
        description="Check that the metadata (step, data position, model kind, float type, "
        "optimizer, shapes against the stored config) agrees with itself, then read every "
        "dataset and compare its CRC-32 with the stored one. Exit 0 when all agree, 1 when "
        "anything differs or the file cannot be read as a checkpoint, 2 when the path is not a "
        "readable file.",
    )
    verify.add_argument("file", help="checkpoint file (step_*.h5)")
    verify.set_defaults(func=verify_checkpoint)


def _print_help(parser) -> int:
    parser.print_help()
    return 2


def inspect_checkpoint(args) -> int:
    from mpipipe.checkpoint.report import describe

    print(describe(args.file))
    return 0


def verify_checkpoint(args) -> int:
    from mpipipe.checkpoint.report import verify

    require_file(args.file, "checkpoint", "give the path of a step_*.h5 file")  # else exit 2
    try:
        result = verify(args.file)
    except UsageError as error:
        print(f"mpipipe: error: {error}", file=sys.stderr)
        return EXIT_ERROR
    for problem in result.metadata + result.problems:
        print(f"mpipipe: error: checkpoint {args.file}: {problem}", file=sys.stderr)
    if result.metadata or result.problems:
        print(
            f"{args.file}: DAMAGED: {len(result.metadata)} metadata problem(s), "
            f"{len(result.problems)} dataset(s) fail and {result.checked} match their checksums; "
            "resume from an earlier checkpoint", file=sys.stderr,
        )
        return EXIT_ERROR
    print(f"{args.file}: ok: {result.checked} datasets, {result.nbytes / 1e6:.1f} MB, every "
          "checksum matches and the metadata agrees with the datasets")
    return 0
