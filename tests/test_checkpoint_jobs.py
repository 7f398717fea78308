"""Whole `mpipipe train` jobs on 4 ranks: crashes, preemption and bad checkpoint files.

- SIGKILL of every rank in the middle of a save (held there by the test-only
  MPIPIPE_FAULT=pause-in-save switch): `--resume latest` loads the previous
  complete checkpoint, removes the partial file, and repeats the lost steps
  with the same losses.
- SIGTERM to one rank: every rank saves at the end of that step and exits 75.

Bad checkpoint files given to --resume are in the bad-input catalogue
(test_bad_input.py).
"""

import os
import signal
import subprocess
import time
import uuid

from mpipipe.checkpoint.folder import PARTIAL_SUFFIX, checkpoint_name

from mpirun import (
    EVERY_RANK_EXITS_ITSELF,
    HANG_GUARD_S,
    JobResult,
    end_job,
    mpipipe_args,
    rank_pids,
    run_ranks,
    start_ranks,
    wait_until,
    written_rows,
)

TINY = [
    "examples/gpt_tiny.toml",
    "--set", "model.n_layer=8", "--set", "model.d_model=32", "--set", "model.seq_len=16",
    "--set", "data.source=random", "--set", "parallel.schedule=bitpipe",
    "--set", "runtime.trace=false",
]
JOB_MARKER = "MPIPIPE_TEST_JOB"


def train(run_dir, *extra) -> list[str]:
    return mpipipe_args("train", *TINY, "--out", str(run_dir), *extra)


def start_job(args: list[str], env: dict[str, str]) -> tuple[subprocess.Popen, str]:
    """Start a 4-rank job in the background; returns it and the marker its ranks carry."""
    marker = uuid.uuid4().hex
    job = start_ranks(4, args, env={**EVERY_RANK_EXITS_ITSELF, JOB_MARKER: marker, **env})
    return job, marker


def test_sigkill_in_the_middle_of_a_save_resumes_from_the_previous_checkpoint(tmp_path):
    run_dir = tmp_path / "run"
    folder = run_dir / "checkpoints"
    args = train(run_dir, "--set", "checkpoint.every=2", "--set", "train.steps=6")
    partial = folder / (checkpoint_name(4) + PARTIAL_SUFFIX)
    job, marker = start_job(args, {"MPIPIPE_FAULT": "pause-in-save,rank=1,step=4"})
    try:
        wait_until(partial.exists, job, "the save of step 4")
        time.sleep(0.5)  # rank 1 is held in the save; the others wait for it
        pids = rank_pids(marker)
        assert sorted(pids) == [0, 1, 2, 3]
        for pid in pids.values():
            os.kill(pid, signal.SIGKILL)
        job.communicate(timeout=HANG_GUARD_S)
    finally:
        end_job(job)
    assert sorted(os.listdir(folder)) == [checkpoint_name(2), partial.name]
    before_crash = written_rows(run_dir)
    assert [row["step"] for row in before_crash] == [0, 1, 2, 3]

    result = run_ranks(4, [*args, "--resume", "latest"])
    assert result.returncode == 0, result.stderr[-2000:]
    assert f"resumed from {folder / checkpoint_name(2)} at step 2" in result.stdout
    assert f"removed {partial}" in result.stdout
    assert sorted(os.listdir(folder)) == [checkpoint_name(step) for step in (2, 4, 6)]
    after = written_rows(run_dir)
    assert [row["step"] for row in after] == list(range(6))
    assert [row["loss"] for row in after[:4]] == [row["loss"] for row in before_crash]


def test_sigterm_on_one_rank_saves_and_every_rank_exits_75_then_resumes(tmp_path):
    run_dir = tmp_path / "run"
    args = train(run_dir, "--set", "train.steps=100000")
    job, marker = start_job(args, {})
    try:
        wait_until(lambda: len(written_rows(run_dir)) >= 2, job, "two training steps")
        os.kill(rank_pids(marker)[2], signal.SIGTERM)
        stdout, stderr = job.communicate(timeout=HANG_GUARD_S)
    finally:
        end_job(job)
    exits = JobResult(job.returncode, stdout, stderr, 0.0).rank_exits
    assert exits == {0: 75, 1: 75, 2: 75, 3: 75}, stderr[-2000:]
    step = len(written_rows(run_dir))
    assert os.listdir(run_dir / "checkpoints") == [checkpoint_name(step)]
    assert "stopped on request (SIGTERM)" in stdout

    result = run_ranks(4, [*args, "--set", f"train.steps={step + 2}", "--resume", "latest"])
    assert result.returncode == 0, result.stderr[-2000:]
    assert f"at step {step}" in result.stdout
    assert [row["step"] for row in written_rows(run_dir)] == list(range(step + 2))
