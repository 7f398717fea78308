"""Ctrl-C of a single-process run: one line, exit 130, no traceback, no partial file left.

The run is `python -m mpipipe train` without mpirun (a world of one rank),
interrupted with SIGINT as a terminal's Ctrl-C would: once in the middle of
a step, once in the middle of a save (held there by the test-only
MPIPIPE_FAULT=pause-in-save switch, after the partial file exists).
"""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path

from mpipipe.checkpoint.folder import PARTIAL_SUFFIX, checkpoint_name
from mpipipe.checkpoint.report import verify

from mpirun import REPO, rank_environment

EXIT_INTERRUPTED = 130
GUARD_S = 60
TINY = [
    "examples/gpt_tiny.toml", "--set", "model.n_layer=2", "--set", "model.d_model=16",
    "--set", "model.n_head=2", "--set", "model.seq_len=8", "--set", "data.source=random",
    "--set", "runtime.trace=false", "--set", "checkpoint.every=1",
]


def interrupt_when(run_dir: Path, ready, env: dict[str, str]) -> subprocess.CompletedProcess:
    """Start the run, send SIGINT once `ready()` is true, and collect how it ended."""
    command = [sys.executable, "-m", "mpipipe", "train", *TINY, "--set", "train.steps=100000",
               "--out", str(run_dir)]
    job = subprocess.Popen(command, cwd=REPO, env=rank_environment(env), text=True,
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                           preexec_fn=_hear_ctrl_c)
    try:
        deadline = time.monotonic() + GUARD_S
        while not ready():
            assert job.poll() is None and time.monotonic() < deadline, "the run never got there"
            time.sleep(0.05)
        job.send_signal(signal.SIGINT)
        stdout, stderr = job.communicate(timeout=GUARD_S)
    finally:
        if job.poll() is None:
            job.kill()
            job.communicate()
    return subprocess.CompletedProcess(command, job.returncode, stdout, stderr)


def _hear_ctrl_c() -> None:
    """A background job inherits SIGINT ignored; a terminal's foreground run does not."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def check_one_line(done: subprocess.CompletedProcess) -> None:
    assert done.returncode == EXIT_INTERRUPTED, done.stderr[-2000:]
    assert "Traceback" not in done.stderr and "KeyboardInterrupt" not in done.stderr
    errors = [line for line in done.stderr.splitlines() if line.startswith("mpipipe: error")]
    assert len(errors) == 1 and "interrupted (Ctrl-C)" in errors[0], done.stderr[-2000:]


def test_ctrl_c_in_the_middle_of_a_save_leaves_no_partial_file(tmp_path):
    run_dir = tmp_path / "run"
    partial = run_dir / "checkpoints" / (checkpoint_name(3) + PARTIAL_SUFFIX)
    done = interrupt_when(run_dir, partial.exists, {"MPIPIPE_FAULT": "pause-in-save,rank=0,step=3"})
    check_one_line(done)
    assert not partial.exists()
    kept = sorted((run_dir / "checkpoints").iterdir())
    assert [path.name for path in kept] == [checkpoint_name(step) for step in (1, 2)]
    assert all(verify(str(path)).problems == [] for path in kept)


def test_ctrl_c_in_the_middle_of_training_ends_with_one_line(tmp_path):
    run_dir = tmp_path / "run"
    metrics = run_dir / "metrics.jsonl"
    done = interrupt_when(run_dir, lambda: metrics.exists() and metrics.stat().st_size > 2000, {})
    check_one_line(done)
    assert not list((run_dir / "checkpoints").glob(f"*{PARTIAL_SUFFIX}"))
