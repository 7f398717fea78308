"""The mpiexec command `mpipipe bench all` starts its MPI parts with.

--mpiexec COMMAND is used as given. Otherwise the program $MPIEXEC names
(default `mpiexec`) is looked up on PATH and given the settings for one
machine that jobs/local/mpirun.sh also gives it: under Open MPI,
--oversubscribe (the emulated part runs more ranks than there are cores),
TCP on the loopback only, and, for root, the two variables Open MPI insists on.
"""

from __future__ import annotations

import os
import shlex
import shutil
import subprocess
from dataclasses import dataclass, field

from mpipipe.errors import UsageError

PROGRAM_VARIABLE = "MPIEXEC"
OPEN_MPI_MARKS = ("Open MPI", "OpenRTE", "open-mpi.org")
ROOT_VARIABLES = {"OMPI_ALLOW_RUN_AS_ROOT": "1", "OMPI_ALLOW_RUN_AS_ROOT_CONFIRM": "1"}
LOOPBACK_VARIABLES = ("OMPI_MCA_btl_tcp_if_include", "OMPI_MCA_oob_tcp_if_include")


@dataclass(frozen=True)
class Launcher:
    command: list[str]  # the words before `-n RANKS`
    environment: dict[str, str] = field(default_factory=dict)  # added to the parts' environment
    chosen_here: bool = True  # False when the user gave the whole command


def find_launcher(given: str | None) -> Launcher:
    """The launcher for the MPI parts; UsageError in one line when there is none."""
    if given:
        return Launcher(shlex.split(given), chosen_here=False)
    program = os.environ.get(PROGRAM_VARIABLE, "mpiexec")
    if shutil.which(program) is None:
        raise UsageError(
            f"mpipipe bench all: {program!r} is not on PATH, so the MPI parts cannot be started: "
            f"install MPI, set {PROGRAM_VARIABLE} to your launcher, or pass --mpiexec COMMAND"
        )
    environment = dict(ROOT_VARIABLES) if os.geteuid() == 0 else {}
    if not _is_open_mpi(program, environment):
        return Launcher([program], environment)
    for name in LOOPBACK_VARIABLES:
        environment[name] = os.environ.get(name, "lo")
    return Launcher([program, "--oversubscribe"], environment)


def _is_open_mpi(program: str, environment: dict[str, str]) -> bool:
    try:
        version = subprocess.run(
            [program, "--version"], capture_output=True, text=True, timeout=30,
            env={**os.environ, **environment},
        )
    except (OSError, subprocess.TimeoutExpired):
        return False
    text = version.stdout + version.stderr
    return any(mark in text for mark in OPEN_MPI_MARKS)
