"""The phase watchdog's parts on their own: the GIL-free backstop, the polled wait, the order.

Each process that the watchdog is meant to end runs as a subprocess with a
hang guard. The backstop must end a process whose only thread is inside a C
call that holds the GIL (a catastrophic regular expression) with its one
line and exit 3 — a Python thread in the same process is shown to have had
no turn in the meantime. A disarmed backstop must not fire, nested phases
must keep the outer one bounded, and a polled wait that sees no progress
must end the MPI job with its one line.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest

from mpipipe.runtime.backstop import shared_backstop
from mpipipe.runtime.phase_watchdog import GRACE_S, PhaseWatchdog, report_delay

from mpirun import REPO

GUARD_S = 60
EXIT_HANG = 3


def run_python(code: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True,
                          text=True, timeout=GUARD_S, cwd=REPO)


def error_lines(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if line.startswith("mpipipe: error")]


def test_the_backstop_ends_a_process_whose_thread_holds_the_gil_in_c():
    if not shared_backstop().gil_free:
        pytest.skip("libc has no POSIX timers here: the fallback is faulthandler's exit")
    done = run_python("""
        import re, sys, threading, time
        from mpipipe.runtime.backstop import shared_backstop

        def tick():
            while True:
                print("tick", flush=True)
                time.sleep(0.01)
        threading.Thread(target=tick, daemon=True).start()
        time.sleep(0.2)
        # The backstop allows room for a loaded machine.
        shared_backstop().arm(3.0, "error: stuck on purpose; 100% sure")
        print("started", flush=True)
        re.match(r"(a+)+$", "a" * 64 + "b")  # C backtracking for ages, GIL held throughout
        print("not reached", flush=True)
    """)
    assert done.returncode == EXIT_HANG, done.stderr
    assert error_lines(done.stderr) == ["mpipipe: error: stuck on purpose; 100% sure"]
    before, started, after = done.stdout.partition("started\n")
    assert started and before.count("tick") > 5  # the thread ran while Python did
    assert after.count("tick") <= 2  # and not while the regular expression held the GIL
    assert "not reached" not in after


def test_a_disarmed_or_rearmed_backstop_does_not_fire():
    done = run_python("""
        import time
        from mpipipe.runtime.backstop import shared_backstop

        backstop = shared_backstop()
        backstop.arm(0.4, "error: first")
        backstop.arm(0.6, "error: second")
        time.sleep(0.2)
        backstop.disarm()
        time.sleep(1.0)
        print("survived", flush=True)
    """)
    assert done.returncode == 0, done.stderr
    assert "survived" in done.stdout and error_lines(done.stderr) == []


def test_leaving_an_inner_phase_keeps_the_outer_one_bounded():
    done = run_python("""
        import time
        from mpipipe.runtime.phase_watchdog import PhaseWatchdog

        watchdog = PhaseWatchdog(rank=0, timeout_s=0.2)
        with watchdog.phase("outer", "a.h5"):
            with watchdog.phase("inner", "b.h5"):
                pass
            time.sleep(30)
    """)
    assert done.returncode == EXIT_HANG, done.stderr
    [line] = error_lines(done.stderr)
    assert "watchdog on rank 0" in line and "in outer of a.h5" in line
    assert "cannot be polled" in line


def test_a_polled_wait_without_progress_ends_the_mpi_job_naming_what_it_waits_for(tmp_path):
    done = run_python(f"""
        from mpi4py import MPI
        from mpipipe.runtime.phase_watchdog import PhaseWatchdog

        watchdog = PhaseWatchdog(rank=0, timeout_s=1, dump_dir={str(tmp_path)!r})
        with watchdog.phase("checkpoint save", "c.h5.partial"):
            watchdog.wait(lambda: False, "waiting for rank 5 (of 8) to arrive")
    """)
    assert done.returncode == EXIT_HANG, done.stderr
    [line] = error_lines(done.stderr)
    assert line == ("mpipipe: error: watchdog on rank 0: no progress for 1 s (runtime.timeout_s) "
                    "in checkpoint save of c.h5.partial: waiting for rank 5 (of 8) to arrive; "
                    "ending the job (exit 3)")
    record = (tmp_path / "flight_rank0.txt").read_text()
    assert line.removeprefix("mpipipe: ") in record and ", in wait\n" in record


def test_a_wait_that_progresses_in_time_returns():
    watchdog = PhaseWatchdog(rank=0, timeout_s=30)
    answers = iter([False] * 50 + [True])
    with watchdog.phase("test"):
        watchdog.wait(lambda: next(answers), "never said")
    assert next(answers, "drained") == "drained"


def test_reports_come_in_rank_order_and_the_backstop_waits_for_the_polled_ones():
    polled = [report_delay(rank) for rank in range(4)]
    backstop = [GRACE_S + report_delay(rank, backstop=True) for rank in range(4)]
    assert polled == sorted(polled) and polled[0] == 0 < polled[1] < polled[2] == polled[3]
    assert all(after > before for before, after in zip(polled, backstop, strict=True))
    assert backstop[1] - backstop[0] > 2  # mpirun takes about that long to kill a stuck rank
    assert backstop[1] < 10  # with rank 0 stuck, rank 1 reports within timeout + 10 s
