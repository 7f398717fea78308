"""Ctrl-C that is never lost.

Python's own SIGINT handler raises KeyboardInterrupt wherever the main
thread happens to be; inside a weakref callback or a `__del__` (NumPy and
h5py run many) the exception is printed as "Exception ignored" and dropped,
and the run trains on as if the key had not been pressed. This handler
raises it the same way and also remembers it, so that the trainer raises it
again at the end of the step when the first one was swallowed; the
swallowed one is not printed (Python reports it through sys.unraisablehook).
"""

from __future__ import annotations

import signal
import sys


class CtrlC:
    def __init__(self):
        self.pressed = False

    def install(self) -> None:
        signal.signal(signal.SIGINT, self._on_sigint)
        report_others = sys.unraisablehook

        def quiet_about_ctrl_c(unraisable) -> None:
            if not isinstance(unraisable.exc_value, KeyboardInterrupt):
                report_others(unraisable)

        sys.unraisablehook = quiet_about_ctrl_c

    def _on_sigint(self, signum, frame) -> None:
        self.pressed = True
        raise KeyboardInterrupt

    def raise_if_pressed(self) -> None:
        """Where the interrupt raised in the handler was swallowed: raise it here."""
        if self.pressed:
            raise KeyboardInterrupt


CTRL_C = CtrlC()
