"""Faults outside the training step, in real 2-rank jobs: set-up, and every phase of a save.

Each case makes one rank stop (a real SIGSTOP, from the test-only
MPIPIPE_FAULT switch) or the file system fail (a full tmpfs where the test
may mount one, an injected OSError otherwise) in one phase, under both
checkpoint writers. Every case must end the whole job (a bounded subprocess
timeout guards against a hang) with exactly one `mpipipe: error` line that
names the rank, the phase and the file, leave no process behind, keep every
complete checkpoint loadable, and a next start (`--resume latest`, in this
process on one rank) must remove the partial file and load the newest
complete checkpoint. How long each job took to end is recorded as the
case's property, not asserted.

The watchdog's own mechanisms (the polled wait, the GIL-free backstop) are
tested in test_phase_watchdog.py.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
from dataclasses import dataclass
from pathlib import Path

import pytest

from mpipipe.checkpoint.folder import PARTIAL_SUFFIX, checkpoint_name
from mpipipe.checkpoint.report import verify
from mpipipe.cli import main

from mpirun import job_processes, mpipipe_args, run_ranks

TIMEOUT_S = 2
JOB_LIMIT_S = 90  # a hang guard only: the watchdog ends these jobs in seconds
FAULT_STEP = 2  # checkpoint 1 is complete when the save of step 2 goes wrong
TINY = [
    "examples/gpt_tiny.toml",
    "--set", "model.n_layer=2", "--set", "model.d_model=16", "--set", "model.n_head=2",
    "--set", "model.seq_len=8", "--set", "data.source=random", "--set", "runtime.trace=false",
    "--set", "parallel.microbatches=2", "--set", "checkpoint.every=1",
    "--set", f"runtime.timeout_s={TIMEOUT_S}",
]
EXIT_ERROR, EXIT_HANG = 1, 3


@dataclass(frozen=True)
class Case:
    name: str
    fault: str  # MPIPIPE_FAULT
    writer: str  # checkpoint.parallel
    exit_code: int
    fragments: tuple[str, ...]  # what the one line says, beyond the file
    file: str = "partial"  # the file the line names: partial, config
    needs_full_disk: bool = False


def stopped_in(phase: str, rank: int, reporter: int, waits_for: str, writer: str) -> Case:
    return Case(f"{phase}-stopped-{writer}", f"stop-in-{phase},rank={rank},step={FAULT_STEP}",
                writer, EXIT_HANG, (f"watchdog on rank {reporter}", waits_for))


CASES = [
    Case("setup-stopped", "stop-in-setup,rank=1,step=0", "yes", EXIT_HANG,
         ("watchdog on rank 0", "in set-up agreement", "waiting for rank 1 (of 2) to arrive"),
         file="config"),
    # The collective open: rank 0 is stuck inside MPI-IO, where only the backstop reaches.
    stopped_in("save-open", 1, 0, "stuck in a call that cannot be polled", "yes"),
    # Without parallel HDF5 the writers' arrays are gathered to rank 0.
    stopped_in("save-write", 1, 0, "from rank 1", "no"),
    *(stopped_in("save-gather", 1, 0, "waiting for rank 1 (of 2) to arrive", writer)
      for writer in ("yes", "no")),
    *(stopped_in("rename", 0, 1, "waiting for rank 0's verdict", writer)
      for writer in ("yes", "no")),
    *(Case(f"disk-full-while-writing-{writer}", f"fill-in-save-write,rank=0,step={FAULT_STEP}",
           writer, EXIT_ERROR, ("failed on rank 0", "while writing", "has 0 B free",
                                "checkpoints saved before are intact"), needs_full_disk=True)
      for writer in ("yes", "no")),
    *(Case(f"write-fails-{writer}", f"fail-in-save-write,rank={rank},step={FAULT_STEP}", writer,
           EXIT_ERROR, (f"failed on rank {rank}", "while writing", "No space left on device"))
      for writer, rank in (("yes", 1), ("no", 0))),
    *(Case(f"rename-fails-{writer}", f"fail-in-rename,rank=0,step={FAULT_STEP}", writer,
           EXIT_ERROR, ("failed on rank 0", "while renaming", "No space left on device"))
      for writer in ("yes", "no")),
]


@pytest.fixture(scope="module")
def small_disk(tmp_path_factory):
    """A 4 MB tmpfs where the test may mount one (root), else None."""
    where = tmp_path_factory.mktemp("tmpfs")
    mounted = shutil.which("mount") and os.geteuid() == 0 and subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", str(where)],
        capture_output=True, timeout=30,
    ).returncode == 0
    try:
        yield where if mounted else None
    finally:
        if mounted:
            subprocess.run(["umount", "-l", str(where)], capture_output=True, timeout=30)


def error_lines(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if line.startswith("mpipipe: error")]


def resume_here(run_dir: Path, steps: int) -> int:
    """The next start: --resume latest on this process alone; returns its exit code."""
    handlers = {number: signal.getsignal(number) for number in (signal.SIGTERM, signal.SIGUSR1)}
    try:
        return main(["train", *TINY, "--set", f"train.steps={steps}", "--out", str(run_dir),
                     "--resume", "latest"])
    finally:
        for number, handler in handlers.items():
            signal.signal(number, handler)


@pytest.mark.parametrize("case", CASES, ids=[case.name for case in CASES])
def test_a_fault_outside_the_step_ends_the_job_with_one_line(case, tmp_path, small_disk,
                                                             record_property, capsys):
    fault = case.fault
    if case.needs_full_disk:
        if small_disk is None:  # no tmpfs here: the same failure, injected
            fault = fault.replace("fill-in-", "fail-in-")
            case = Case(case.name, fault, case.writer, case.exit_code, case.fragments[:2])
        else:
            tmp_path = small_disk / case.name
    run_dir = tmp_path / "run"
    try:
        result = run_ranks(
            2, mpipipe_args("train", *TINY, "--set", "train.steps=3",
                            "--set", f"checkpoint.parallel={case.writer}", "--out", str(run_dir)),
            env={"MPIPIPE_FAULT": fault}, timeout=JOB_LIMIT_S,
        )
    except subprocess.TimeoutExpired:
        for process in job_processes(str(run_dir)):
            os.kill(process.pid, signal.SIGKILL)
        pytest.fail(f"{case.name}: the job was still running after {JOB_LIMIT_S} s")
    record_property("seconds_to_end", round(result.seconds, 2))
    assert result.returncode == case.exit_code, result.stderr[-3000:]
    errors = error_lines(result.stderr)
    assert len(errors) == 1, result.stderr[-3000:]
    named = "examples/gpt_tiny.toml" if case.file == "config" else (
        str(run_dir / "checkpoints" / checkpoint_name(FAULT_STEP)) + PARTIAL_SUFFIX)
    for fragment in (*case.fragments, named):
        assert fragment in errors[0], errors[0]
    assert "Traceback" not in result.output
    assert job_processes(str(run_dir)) == []

    checkpoints = run_dir / "checkpoints"
    for complete in sorted(checkpoints.glob("step_*.h5")):
        assert verify(str(complete)).problems == [], complete
    if case.file == "config":
        assert not checkpoints.exists() or not any(checkpoints.iterdir())
        return
    (checkpoints / ".mpipipe-fill").unlink(missing_ok=True)  # the disk is freed again
    newest = max(int(path.name[5:13]) for path in checkpoints.glob("step_*.h5"))
    capsys.readouterr()
    assert resume_here(run_dir, steps=newest) == 0, capsys.readouterr().err
    assert f"resumed from {checkpoints / checkpoint_name(newest)}" in capsys.readouterr().out
    assert not list(checkpoints.glob(f"*{PARTIAL_SUFFIX}"))
