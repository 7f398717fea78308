"""Fail loudly, on every rank, never hang.

Two phases: during set-up every rank validates the same inputs and the
ranks agree (one allreduce) before any pipeline message, so bad input ends
every rank cleanly with exit code 2 and the message printed once; after
set-up, an exception on any rank prints its message and aborts the whole job.
"""

from __future__ import annotations

import contextlib
import sys
import traceback

from mpi4py import MPI

from mpipipe.errors import EXIT_ERROR, UsageError


class SetupFailed(Exception):
    """Some rank rejected the input; the message has been printed once."""


def agree_on_setup(comm, build):
    """Run `build()` on every rank; if it raised UsageError anywhere, every rank raises SetupFailed.

    The message of the lowest failing rank is printed, once.
    """
    error: UsageError | None = None
    result = None
    try:
        result = build()
    except UsageError as raised:
        error = raised
    rank, size = comm.Get_rank(), comm.Get_size()
    first_failing = comm.allreduce(rank if error is not None else size, op=MPI.MIN)
    if first_failing < size:
        if rank == first_failing:
            print(f"mpipipe: error: {error}", file=sys.stderr, flush=True)
        raise SetupFailed() from error
    return result


@contextlib.contextmanager
def abort_on_exception(comm=None):
    """Turn an exception on this rank into a message and an abort of `comm` (default: the job)."""
    comm = MPI.COMM_WORLD if comm is None else comm
    try:
        yield
    except (SystemExit, KeyboardInterrupt, SetupFailed, CollectiveStop):
        raise
    except BaseException as error:  # noqa: BLE001 - any failure must end every rank
        rank = comm.Get_rank()
        if isinstance(error, UsageError):
            message = f"mpipipe: error on rank {rank}: {error}"
        else:
            message = (
                f"mpipipe: error on rank {rank}: {type(error).__name__}: {error}\n"
                + "".join(traceback.format_exception(error))
            )
        print(message, file=sys.stderr, flush=True)
        comm.Abort(EXIT_ERROR)


class CollectiveStop(Exception):
    """Every rank reached the same verdict (e.g. a non-finite loss); rank 0 prints it once."""

    exit_code = EXIT_ERROR
