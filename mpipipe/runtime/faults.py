"""Fault injection for the failure tests, switched on by an environment variable.

    MPIPIPE_FAULT="KIND,rank=R,step=S"

makes world rank R misbehave during step S (0-based):

- raise:     raise an exception in the middle of the step
- kill:      SIGKILL itself in the middle of the step
- hang:      stop making progress in the middle of the step (sleeps forever)
- withhold:  silently drop its first outgoing message of the step
- nan:       poison a gradient with NaN in the middle of the step
- overflow:  make a gradient infinite in the middle of the step (what fp16 overflow does)
- pause-in-save: stop forever inside the checkpoint save of that step
- ACTION-in-PLACE, in a named phase outside the step (PLACES below; step=S
  is the save's step, 0 for set-up): pause (sleep forever) or stop (SIGSTOP
  itself, as a debugger or a stuck node would) or fill (grow FILLER beside
  the file until the file system is full, so that the writes that follow
  really fail) where the phase starts, or fail (raise OSError ENOSPC, as a
  full disk would) where it ends

It exists so the failure paths (abort, watchdog, recovery) are exercised by
real runs in the tests. With the variable unset, `faults_from_environment`
gives `NO_FAULTS`, whose hooks do nothing and parse nothing.
"""

from __future__ import annotations

import contextlib
import errno
import os
import signal
import time
from dataclasses import dataclass

from mpipipe.errors import UsageError
from mpipipe.runtime.ctrl_c import CTRL_C

ENVIRONMENT_VARIABLE = "MPIPIPE_FAULT"
# Named points outside the step: set-up, and the phases of a checkpoint save.
PLACES = ("setup", "save-open", "save-write", "save-gather", "save-close", "rename")
KINDS = ("raise", "kill", "hang", "withhold", "nan", "overflow", "pause-in-save",
         *(f"{action}-in-{place}" for action in ("pause", "stop", "fail", "fill")
           for place in PLACES))
FILLER = ".mpipipe-fill"  # the file a fill fault grows until the disk is full


class InjectedFault(RuntimeError):
    """The exception a `raise` fault throws."""


@dataclass(frozen=True)
class Fault:
    kind: str
    rank: int
    step: int

    @classmethod
    def parse(cls, text: str) -> Fault:
        kind, *fields = [part.strip() for part in text.split(",")]
        values = dict(field.split("=", 1) for field in fields if "=" in field)
        if kind not in KINDS or set(values) != {"rank", "step"} or len(fields) != 2:
            raise UsageError(
                f"{ENVIRONMENT_VARIABLE}={text!r}: expected 'KIND,rank=R,step=S' with KIND one "
                f"of {', '.join(KINDS)}"
            )
        try:
            return cls(kind, int(values["rank"]), int(values["step"]))
        except ValueError as error:
            message = f"{ENVIRONMENT_VARIABLE}={text!r}: rank and step are integers"
            raise UsageError(message) from error


class FaultHooks:
    """The points where the runtime lets a fault in; this base class lets none in."""

    def in_middle_of_step(self, step: int, store) -> None:
        """Called once per step, half-way through this rank's ops."""

    def withhold_send(self, step: int) -> bool:
        """True when the message about to be sent is to be dropped."""
        return False

    def pause_point(self, place: str, step: int) -> None:
        """A named point where a `pause-in-<place>` fault stops this rank for good."""

    def at(self, place: str, step: int, path: str | None = None) -> None:
        """The start of a phase of PLACES (`path`: the file it writes)."""

    def fail(self, place: str, step: int) -> None:
        """The end of a phase of PLACES, where the file system reports."""


NO_FAULTS = FaultHooks()


def faults_from_environment(rank: int) -> FaultHooks:
    """The fault MPIPIPE_FAULT names for world rank `rank`, or NO_FAULTS when it is unset."""
    text = os.environ.get(ENVIRONMENT_VARIABLE)
    if not text:
        return NO_FAULTS
    fault = Fault.parse(text)  # on every rank, so a bad value stops every rank alike
    return FaultInjector(fault, rank) if fault.rank == rank else NO_FAULTS


class FaultInjector(FaultHooks):
    """Makes `fault` happen when this rank (`rank`) reaches its step."""

    def __init__(self, fault: Fault, rank: int):
        self.fault = fault
        self.rank = rank
        self.withheld = False

    def _armed(self, kind: str, step: int) -> bool:
        fault = self.fault
        return fault.kind == kind and (fault.rank, fault.step) == (self.rank, step)

    def in_middle_of_step(self, step: int, store) -> None:
        if self._armed("raise", step):
            raise InjectedFault(f"injected fault on rank {self.rank} at step {step}")
        if self._armed("kill", step):
            os.kill(os.getpid(), signal.SIGKILL)
        if self._armed("hang", step):
            _sleep_forever()
        if self._armed("nan", step) and store.buckets:
            store.buckets[0].grad[0] = float("nan")
        if self._armed("overflow", step) and store.buckets:
            store.buckets[0].grad[0] = float("inf")

    def withhold_send(self, step: int) -> bool:
        """True once: the first message of the armed step is dropped."""
        if self._armed("withhold", step) and not self.withheld:
            self.withheld = True
            return True
        return False

    def pause_point(self, place: str, step: int) -> None:
        if self._armed(f"pause-in-{place}", step):
            _sleep_forever()

    def at(self, place: str, step: int, path: str | None = None) -> None:
        # pause, stop (SIGSTOP) or fill the disk, if asked
        self.pause_point(place, step)
        if self._armed(f"stop-in-{place}", step):
            os.kill(os.getpid(), signal.SIGSTOP)
        if self._armed(f"fill-in-{place}", step) and path is not None:
            _fill_file_system(os.path.join(os.path.dirname(os.path.abspath(path)), FILLER))

    def fail(self, place: str, step: int) -> None:
        if self._armed(f"fail-in-{place}", step):
            raise OSError(errno.ENOSPC, f"No space left on device (injected in {place})")


def _fill_file_system(path: str) -> None:
    descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND)
    try:
        for size in (2**16, 2**12, 2**9, 1):  # ever smaller, to the last byte
            with contextlib.suppress(OSError):
                while os.write(descriptor, bytes(size)):
                    pass
    finally:
        os.close(descriptor)


def _sleep_forever() -> None:
    # In short naps, each ending where a Ctrl-C that arrived before the pause (and was
    # swallowed inside h5py's clean-up) is raised again, as the trainer would after the step.
    while True:
        time.sleep(0.1)
        CTRL_C.raise_if_pressed()
