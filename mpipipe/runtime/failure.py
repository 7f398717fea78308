"""Fail loudly, on every rank, never hang.

Two phases: during set-up every rank validates the same inputs and the
ranks agree (one watched meeting, runtime/rendezvous.py) before any pipeline
message, so bad input ends
every rank cleanly with exit code 2 and the message printed once; after
set-up, an exception on any rank prints its message and aborts the whole job.
"""

from __future__ import annotations

import contextlib
import sys
import traceback

from mpi4py import MPI

from mpipipe.config.schema import RuntimeConfig
from mpipipe.errors import EXIT_ERROR, UsageError
from mpipipe.runtime.phase_watchdog import PhaseWatchdog
from mpipipe.runtime.rendezvous import Rendezvous

DEFAULT_TIMEOUT_S = RuntimeConfig().timeout_s  # where no config is at hand


class SetupFailed(Exception):
    """Some rank rejected the input; the message has been printed once."""


def agree_on_setup(comm, build, rendezvous: Rendezvous | None = None,
                   phase: str = "set-up agreement", path: str | None = None):
    """Run `build()` on every rank; if it raised UsageError anywhere, every rank raises SetupFailed.

    The message of the lowest failing rank is printed, once. The ranks meet at
    `rendezvous` (one made for the occasion when None), inside the watchdog's
    `phase`: a rank that never arrives is named within runtime.timeout_s.
    """
    error: UsageError | None = None
    result = None
    try:
        result = build()
    except UsageError as raised:
        error = raised
    watchdog = rendezvous.watchdog if rendezvous else PhaseWatchdog(comm.Get_rank(),
                                                                      DEFAULT_TIMEOUT_S)
    with watchdog.phase(phase, path):
        meeting = rendezvous or Rendezvous(comm, watchdog)
        first = meeting.agree(None if error is None else str(error), _first_error)
        if rendezvous is None:
            meeting.free()
    if first is not None:
        failing_rank, message = first
        if comm.Get_rank() == failing_rank:
            print(f"mpipipe: error: {message}", file=sys.stderr, flush=True)
        raise SetupFailed() from error
    return result


def _first_error(messages: list[str | None]) -> tuple[int, str] | None:
    """(lowest rank, its message) of the ranks that failed, or None."""
    return next(((rank, text) for rank, text in enumerate(messages) if text is not None), None)


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
        elif isinstance(error, MemoryError):
            message = (
                f"mpipipe: error on rank {rank}: out of memory (MemoryError: {error}): the run "
                "needs more memory than this machine gives the rank; use a smaller model, "
                "fewer or smaller micro-batches, or more ranks"
            )
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
