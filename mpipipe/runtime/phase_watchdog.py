"""Every wait outside the training step bounded: set-up, agreement, saves, loads, the end.

The engine's `Watchdog` polls the requests of a step. Everything else a rank
does with other ranks or with the file system happens inside a named phase:

    with phases.phase("checkpoint save: writing", partial_path):
        ...                                   # C calls: MPI, HDF5, fsync, rename
        phases.wait(request.Test, "rank 0's answer")   # polled on this thread

Two bounds hold in a phase. A wait polled with `wait` that sees no progress
for runtime.timeout_s prints one line naming this rank, the phase, its file
and what it waits for, writes flight_rank<R>.txt and aborts the job from
this thread (exit 3); MPI_Abort from the main thread ends every rank, even
one that is stopped. A call that never returns to Python (a collective HDF5
call, which holds the GIL, or a hung file system) is ended by the backstop
(runtime/backstop.py) runtime.timeout_s + GRACE_S after the phase last made
progress: the same line, then exit 3.

So that one rank reports a hang that several see, rank 0 reports first,
rank 1 a few seconds later and every other rank after that (`report_delay`):
the first report ends the job before the others speak. The slowest report,
rank 1's backstop when rank 0 is the one stuck, comes timeout_s + 7 s after
the last progress.
"""

from __future__ import annotations

import contextlib
import os
import sys
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass

from mpipipe.errors import EXIT_HANG
from mpipipe.runtime.backstop import Backstop, shared_backstop

GRACE_S = 3.0  # the backstop leaves a polled wait this long to report first
MAX_SLEEP_S = 2e-3


def report_delay(rank: int, backstop: bool = False) -> float:
    """Seconds past the timeout before this rank reports: rank 0 first, then 1, then the rest.

    The backstop's steps are wider: a rank that mpirun is killing may go on for a
    second or two (it ignores the SIGTERM while C holds it), and must not speak then.
    """
    steps = (0.0, 4.0, 8.0) if backstop else (0.0, 2.0, 4.0)
    return steps[min(rank, 2)]


@dataclass
class _Phase:
    name: str
    path: str | None
    since: float  # last progress, time.monotonic()

    def __str__(self) -> str:
        return f"{self.name} of {self.path}" if self.path else self.name


class PhaseWatchdog:
    def __init__(self, rank: int, timeout_s: float, dump_dir: str | None = None,
                 backstop: Backstop | None = None):
        self.rank = rank
        self.timeout_s = timeout_s
        self.dump_dir = dump_dir
        self.backstop = backstop or shared_backstop()
        self.phases: list[_Phase] = []

    @contextlib.contextmanager
    def phase(self, name: str, path: str | None = None):
        """Bound everything inside to runtime.timeout_s without progress (nests)."""
        self.phases.append(_Phase(name, path, time.monotonic()))
        self._arm()
        try:
            yield
        finally:
            self.phases.pop()
            if self.phases:
                self.progress()
            else:
                self.backstop.disarm()

    def progress(self) -> None:
        """The current phase moved on (a dataset written, a message in): its bound restarts."""
        if self.phases:
            self.phases[-1].since = time.monotonic()
            self._arm()

    def wait(self, test: Callable[[], bool], waiting_for: str | Callable[[], str]) -> None:
        """Poll `test` until it is true; past the timeout report `waiting_for` and end the job."""
        if test():
            return
        started = time.monotonic()
        limit = self.timeout_s + report_delay(self.rank)
        delay = 1e-5
        while not test():
            if time.monotonic() - started > limit:
                self.fire(waiting_for() if callable(waiting_for) else waiting_for)
            time.sleep(delay)
            delay = min(2 * delay, MAX_SLEEP_S)

    def line(self, what: str) -> str:
        """The one line this rank prints when a phase makes no progress."""
        where = f" in {self.phases[-1]}" if self.phases else ""
        return (f"error: watchdog on rank {self.rank}: no progress for {self.timeout_s:g} s "
                f"(runtime.timeout_s){where}: {what}; ending the job (exit 3)")

    def fire(self, what: str) -> None:
        """Say what this rank waits for, leave a flight record, and end the whole job."""
        line = self.line(what)
        self.backstop.arm_exit_only(GRACE_S)  # should MPI_Abort itself not return
        print(f"mpipipe: {line}", file=sys.stderr, flush=True)
        self._write_flight_record(line)
        from mpi4py import MPI

        MPI.COMM_WORLD.Abort(EXIT_HANG)

    def _arm(self) -> None:
        delay = self.timeout_s + GRACE_S + report_delay(self.rank, backstop=True)
        self.backstop.arm(delay, self.line("stuck in a call that cannot be polled (MPI, HDF5 "
                                           "or the file system)"))

    def _write_flight_record(self, line: str) -> None:
        if not self.dump_dir:
            return
        path = os.path.join(self.dump_dir, f"flight_rank{self.rank}.txt")
        stack = "".join(traceback.format_stack())
        try:
            with open(path, "w") as handle:
                handle.write(f"mpipipe flight recorder, rank {self.rank}, pid {os.getpid()}:\n"
                             f"  {line}\n  where this rank waits:\n{stack}")
        except OSError:
            pass  # the one line has been printed; a full disk must not hide it
