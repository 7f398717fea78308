"""Never a silent hang: bounded waits, a flight recorder and its dump.

Every blocking wait of the engine goes through `Watchdog.wait`, which tests
the MPI request and, past `runtime.timeout_s`, prints what this rank waits
for (op, peer, tag, bytes) and the last ops it ran, then aborts the whole
job. SIGUSR1 prints (and writes) the same dump without stopping.

How it waits: no MPI call takes a timeout, so the request is tested in a
loop. For the first `SPIN_S` the loop only tests (yielding the core between
tests, so an oversubscribed node's other ranks run): a message that arrives
then is seen within microseconds, and the receiver's MPI moves it at once
(Open MPI's shared-memory transport copies a large message inside the
receiver's MPI call). After that it sleeps `SLEEP_S` between tests, leaving
the core to others through long waits such as a pipeline's bubble.
"""

from __future__ import annotations

import collections
import contextlib
import ctypes
import os
import signal
import sys
import time
from dataclasses import dataclass

from mpipipe.errors import EXIT_HANG

_PR_SET_TIMERSLACK = 29  # prctl option (Linux)
_TIMER_SLACK_NS = 1000
_yield_core = getattr(os, "sched_yield", lambda: None)


def precise_sleeps() -> None:
    """Let this thread's short sleeps end on time: Linux otherwise adds up to 50 µs of timer
    slack to each one, more than a slice of the waits here. Elsewhere it does nothing."""
    if not sys.platform.startswith("linux"):
        return
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None).prctl(_PR_SET_TIMERSLACK, _TIMER_SLACK_NS, 0, 0, 0)


@dataclass
class WaitInfo:
    """What a blocked rank is waiting for, in words a person can act on."""

    what: str  # "activation", "gradient", "send completion", "gradient allreduce"
    op: str  # the op that needs it, e.g. "u3F1", or "end of step"
    peer: int | None  # rank on the other side; None for collectives and sends
    tag: int | None
    nbytes: int

    def __str__(self) -> str:
        source = f" from rank {self.peer}" if self.peer is not None else ""
        tag = f", tag {self.tag}" if self.tag is not None else ""
        return f"{self.what} for op {self.op}{source} ({self.nbytes} bytes{tag})"


class Watchdog:
    SPIN_S = 1e-3  # test without sleeping this long: most waits of a busy pipeline end within
    SLEEP_S = 5e-5  # then sleep this long between tests

    def __init__(self, rank: int, timeout_s: float, dump_dir: str | None = None, history: int = 32):
        self.rank = rank
        self.timeout_s = timeout_s
        self.dump_dir = dump_dir
        self.recent: collections.deque[tuple[int, str]] = collections.deque(maxlen=history)
        self.current: WaitInfo | None = None
        self.waiting_since = 0.0
        self.step = -1
        precise_sleeps()

    def record(self, text: str) -> None:
        """Remember an op this rank ran (the flight recorder); formatted only in a dump."""
        self.recent.append((self.step, text))

    def wait(self, request, info: WaitInfo) -> None:
        """Wait for one MPI request; abort the job past the timeout."""
        test = request.Test
        if test():
            return
        self.current = info
        start = self.waiting_since = time.monotonic()
        spin_until = start + self.SPIN_S
        deadline = start + self.timeout_s if self.timeout_s else None
        while not test():
            now = time.monotonic()
            if now < spin_until:
                _yield_core()
                continue
            if deadline is not None and now > deadline:
                self.fire()
            time.sleep(self.SLEEP_S)
        self.current = None

    def dump_text(self) -> str:
        lines = [f"mpipipe flight recorder, rank {self.rank}, pid {os.getpid()}:"]
        if self.current is not None:
            waited = time.monotonic() - self.waiting_since
            lines.append(f"  waiting {waited:.1f} s for {self.current}")
        else:
            lines.append("  not waiting on MPI")
        lines.append(f"  last {len(self.recent)} ops, oldest first:")
        lines.extend(f"    step {step} {text}" for step, text in self.recent)
        return "\n".join(lines)

    def write_dump(self) -> str:
        text = self.dump_text()
        print(text, file=sys.stderr, flush=True)
        if self.dump_dir:
            path = os.path.join(self.dump_dir, f"flight_rank{self.rank}.txt")
            try:
                with open(path, "w") as handle:
                    handle.write(text + "\n")
            except OSError as error:
                print(f"mpipipe: could not write {path}: {error}", file=sys.stderr, flush=True)
        return text

    def fire(self) -> None:
        """The timeout passed: say what we wait for, then end the whole job."""
        print(
            f"mpipipe: error: watchdog on rank {self.rank}: no progress for "
            f"{self.timeout_s:g} s (runtime.timeout_s) while waiting for {self.current}",
            file=sys.stderr,
            flush=True,
        )
        self.write_dump()
        from mpi4py import MPI

        MPI.COMM_WORLD.Abort(EXIT_HANG)

    def install_signal_handler(self) -> None:
        """SIGUSR1 dumps the flight recorder without stopping the run."""
        if hasattr(signal, "SIGUSR1"):
            signal.signal(signal.SIGUSR1, lambda signum, frame: self.write_dump())
