"""Start real `mpiexec` jobs from tests, always bounded by a timeout.

`run_ranks` wraps every rank so it reports its own exit code on stderr
("mpipipe-test: rank R exit C"), which lets a test prove that EVERY rank
ended non-zero, not only that mpirun did.

The timeout only keeps a hung job from hanging the suite: no test reads
speed into it. How a job ended (each rank's exit code, the watchdog's line
or its absence) is what shows whether it stopped by itself.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
MPIRUN = REPO / "jobs" / "local" / "mpirun.sh"
EXIT_LINE = re.compile(r"mpipipe-test: rank (\d+) exit (\d+)")
# Far beyond any of the tests' jobs on a loaded 2-core machine (the slowest take seconds).
HANG_GUARD_S = 120

# Keeps Open MPI's mpirun from killing the other ranks when the first one exits
# non-zero, so a test sees each rank's own exit code.
EVERY_RANK_EXITS_ITSELF = {"OMPI_MCA_orte_abort_on_non_zero_status": "0"}

# Each rank runs the command, then reports how it ended.
RANK_WRAPPER = (
    '"$@"; code=$?; echo "mpipipe-test: rank ${OMPI_COMM_WORLD_RANK:-${PMI_RANK:-0}} exit $code"'
    " >&2; exit $code"
)


@dataclass
class JobResult:
    returncode: int
    stdout: str
    stderr: str
    seconds: float

    @property
    def rank_exits(self) -> dict[int, int]:
        return {int(rank): int(code) for rank, code in EXIT_LINE.findall(self.stderr)}

    @property
    def output(self) -> str:
        return self.stdout + self.stderr


# Open MPI's mpirun waits this long (1 s by default) between its SIGTERM and SIGKILL to the
# ranks of a job one of whose ranks exited non-zero, even when all have exited: a 2-rank
# job whose ranks exit 2 at once took 2.1 s with it, 0.13 s without.
NO_KILL_GRACE = {"OMPI_MCA_odls_base_sigkill_timeout": "0"}


def rank_environment(env: dict[str, str] | None = None) -> dict[str, str]:
    """This process's environment for a test job: one BLAS thread, progress as log lines, `env`."""
    return {**os.environ, "OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1",
            "MPIPIPE_PROGRESS": "log", **NO_KILL_GRACE, **(env or {})}


def rank_command(ranks: int, args: list[str]) -> list[str]:
    """mpirun of `python ARGS` on `ranks` ranks, each wrapped to report its own exit code."""
    return [
        "bash", str(MPIRUN), "-n", str(ranks),
        "bash", "-c", RANK_WRAPPER, "rank", sys.executable, *args,
    ]


def run_ranks(
    ranks: int,
    args: list[str],
    timeout: float = HANG_GUARD_S,
    env: dict[str, str] | None = None,
    cwd: Path | str = REPO,
) -> JobResult:
    """Run `python ARGS` on `ranks` ranks (see mpipipe_args for `python -m mpipipe ...`)."""
    started = time.monotonic()
    completed = subprocess.run(
        rank_command(ranks, args), capture_output=True, text=True, timeout=timeout,
        env=rank_environment(env), cwd=cwd,
    )
    return JobResult(
        completed.returncode, completed.stdout, completed.stderr, time.monotonic() - started
    )


def start_ranks(
    ranks: int, args: list[str], env: dict[str, str] | None = None, cwd: Path | str = REPO
) -> subprocess.Popen:
    """The job of run_ranks, started in the background; end it with `end_job` in a finally."""
    return subprocess.Popen(
        rank_command(ranks, args), cwd=cwd, env=rank_environment(env),
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )


def end_job(job: subprocess.Popen) -> None:
    """Kill a background job if it still runs, and reap it."""
    if job.poll() is None:
        job.kill()
        job.communicate()


def wait_until(condition: Callable[[], bool], job: subprocess.Popen, what: str,
               timeout: float = HANG_GUARD_S) -> None:
    """Poll `condition` while the background `job` runs; fail (ending the job) if it ends first
    or the condition never comes true."""
    deadline = time.monotonic() + timeout
    while not condition():
        if job.poll() is not None or time.monotonic() > deadline:
            job.kill()
            stdout, stderr = job.communicate()
            pytest.fail(f"{what} did not happen:\n{stdout[-1500:]}\n{stderr[-1500:]}")
        time.sleep(0.1)


def written_rows(run_dir: Path) -> list[dict]:
    """The rows of a running job's metrics.jsonl, without a line still being written."""
    path = run_dir / "metrics.jsonl"
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines(keepends=True)
            if line.endswith("\n")]


def mpipipe_args(*args: str) -> list[str]:
    return ["-m", "mpipipe", *args]


@dataclass
class LiveProcess:
    pid: int
    program: str  # base name of argv[0]
    command_line: str
    environment: dict[str, str]


def live_processes() -> list[LiveProcess]:
    """Every process this test can read in /proc, except itself."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) == os.getpid():
            continue
        try:
            with open(f"/proc/{entry}/cmdline", "rb") as handle:
                arguments = handle.read().decode(errors="replace").split("\0")
            with open(f"/proc/{entry}/environ", "rb") as handle:
                variables = handle.read().decode(errors="replace").split("\0")
        except OSError:
            continue
        environment = dict(item.split("=", 1) for item in variables if "=" in item)
        program = os.path.basename(arguments[0])
        found.append(LiveProcess(int(entry), program, " ".join(arguments), environment))
    return found


def job_processes(marker: str) -> list[LiveProcess]:
    """Live processes of a job: `marker` is in their command line or one of their variables."""
    return [
        process for process in live_processes()
        if marker in process.command_line or marker in process.environment.values()
    ]


def processes_left(marker: str, grace_s: float = 30.0) -> list[LiveProcess]:
    """The job's processes still alive after `grace_s`: a rank the launcher has just signalled
    may take a moment to exit on a loaded machine, an orphan never does."""
    deadline = time.monotonic() + grace_s
    while (left := job_processes(marker)) and time.monotonic() < deadline:
        time.sleep(0.2)
    return left


def rank_pids(marker: str) -> dict[int, int]:
    """World rank -> pid of the Python processes of the job carrying `marker`."""
    return {
        int(process.environment["OMPI_COMM_WORLD_RANK"]): process.pid
        for process in job_processes(marker)
        if process.program.startswith("python") and "OMPI_COMM_WORLD_RANK" in process.environment
    }
