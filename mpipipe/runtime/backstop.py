"""The last resort of the watchdog: end this process with one line, even while C holds the GIL.

h5py keeps Python's global lock for the whole of an HDF5 call, and mpi4py's
pickle-based collectives keep it while they block; a collective HDF5 write
whose peer stopped, or a hung file system under it, never returns to
Python, so no Python thread or signal handler can run. A POSIX timer needs
no Python: on expiry glibc starts a thread of its own that calls the C
function given at creation with the one argument given. Two such timers end
the process: the first calls `warnx`, which prints "mpipipe: LINE" on
standard error, the second `_exit(EXIT_HANG)` a moment later. mpirun sees a
rank exit non-zero and ends the job.

Where libc has no such timers (not Linux and glibc), `faulthandler`'s own C
thread is the fallback: it dumps the Python stacks and exits with code 1.
"""

from __future__ import annotations

import ctypes
import faulthandler
import functools
import sys

from mpipipe.errors import EXIT_HANG

_SIGEV_THREAD = 2  # <signal.h>: notify by calling a function in a new thread
_CLOCK_MONOTONIC = 1
_LINE_BYTES = 4096
_EXIT_AFTER_LINE_S = 0.3  # the line is printed, then the process ends


class _Sigevent(ctypes.Structure):
    """struct sigevent on 64-bit Linux: value, signo, notify, then the thread's function."""

    _fields_ = [
        ("value", ctypes.c_void_p),
        ("signo", ctypes.c_int),
        ("notify", ctypes.c_int),
        ("function", ctypes.c_void_p),
        ("attributes", ctypes.c_void_p),
        ("padding", ctypes.c_int * 8),
    ]


class _Timespec(ctypes.Structure):
    _fields_ = [("seconds", ctypes.c_long), ("nanoseconds", ctypes.c_long)]


class _Itimerspec(ctypes.Structure):
    _fields_ = [("interval", _Timespec), ("value", _Timespec)]


def _libc_timers():
    """(libc, line buffer, say timer, exit timer), or None where libc cannot do this."""
    if not sys.platform.startswith("linux") or ctypes.sizeof(_Sigevent) != 64:
        return None
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        functions = (libc.timer_create, libc.timer_settime, libc.warnx, libc._exit)
    except (OSError, AttributeError):
        return None
    functions[0].argtypes = [ctypes.c_int, ctypes.c_void_p, ctypes.c_void_p]
    functions[1].argtypes = [ctypes.c_void_p, ctypes.c_int, ctypes.c_void_p, ctypes.c_void_p]
    line = ctypes.create_string_buffer(_LINE_BYTES)
    timers = []
    for function, argument in ((libc.warnx, ctypes.addressof(line)), (libc._exit, EXIT_HANG)):
        event = _Sigevent(value=argument, notify=_SIGEV_THREAD,
                          function=ctypes.cast(function, ctypes.c_void_p).value)
        timer = ctypes.c_void_p()
        if libc.timer_create(_CLOCK_MONOTONIC, ctypes.byref(event), ctypes.byref(timer)):
            return None
        timers.append(timer)
    return libc, line, timers[0], timers[1]


class Backstop:
    """One armed deadline at a time; `arm` replaces it, `disarm` cancels it."""

    def __init__(self):
        found = _libc_timers()
        self.gil_free = found is not None
        if found is not None:
            self._libc, self._line, self._say, self._end = found
            # warnx prefixes the program's short name: make it read "mpipipe: LINE".
            self._name = ctypes.create_string_buffer(b"mpipipe")
            name = ctypes.c_void_p.in_dll(self._libc, "program_invocation_short_name")
            name.value = ctypes.addressof(self._name)

    def arm(self, seconds: float, line: str) -> None:
        """In `seconds`, print `line` (after "mpipipe: ") and exit with EXIT_HANG."""
        if not self.gil_free:
            faulthandler.dump_traceback_later(seconds + _EXIT_AFTER_LINE_S, exit=True)
            return
        self.disarm()
        text = line.replace("%", "%%").encode(errors="replace")[: _LINE_BYTES - 1]
        ctypes.memmove(self._line, text + b"\0", len(text) + 1)
        self._set(self._say, seconds)
        self._set(self._end, seconds + _EXIT_AFTER_LINE_S)

    def arm_exit_only(self, seconds: float) -> None:
        """In `seconds`, exit with EXIT_HANG without a word (the line was printed already)."""
        self.disarm()
        if self.gil_free:
            self._set(self._end, seconds)
        else:
            faulthandler.dump_traceback_later(seconds, exit=True)

    def disarm(self) -> None:
        if self.gil_free:
            self._set(self._say, 0.0)
            self._set(self._end, 0.0)
        else:
            faulthandler.cancel_dump_traceback_later()

    def _set(self, timer, seconds: float) -> None:
        """Start `timer` to fire once in `seconds`; 0 stops it."""
        whole = int(seconds)
        spec = _Itimerspec(value=_Timespec(whole, int((seconds - whole) * 1e9)))
        if seconds > 0 and spec.value.seconds == spec.value.nanoseconds == 0:
            spec.value.nanoseconds = 1
        if self._libc.timer_settime(timer, 0, ctypes.byref(spec), None):
            raise OSError(ctypes.get_errno(), "timer_settime failed")


@functools.cache
def shared_backstop() -> Backstop:
    """The process's one backstop: its timers live as long as the process."""
    return Backstop()
