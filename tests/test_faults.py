"""Faults injected into real 4-rank BitPipe jobs: the job ends loudly, or recovers exactly.

The test-only MPIPIPE_FAULT switch (mpipipe/runtime/faults.py) makes one rank
misbehave in the middle of one step:

- kill: the rank SIGKILLs itself; mpirun ends the job (no neighbour's
  watchdog has to), and `--resume latest` reaches final parameters and
  optimizer state bitwise equal to those of a run that was never
  interrupted (float64).
- hang: the rank stops for good; a neighbour's watchdog names the op and
  the peer it waits for, writes its flight recorder and ends the job (exit 3).
- nan: a gradient becomes NaN; with train.on_nan = 'skip' the step is skipped
  with a warning and leaves parameters and optimizer state as they were, and
  later steps train on; with 'stop' every rank exits 1 with one message and
  the last checkpoint, the one before the NaN step, verifies.

The `raise` fault is tested in test_failures.py. A short soak
(mpipipe.bench.soak) checks that memory, open files and MPI requests stay
flat over many steps, and that its probes do see a leak.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from pathlib import Path

import h5py
import numpy as np

from mpipipe.bench.soak import Probe, broken_bounds, live_mpi_requests, unreceived_messages
from mpipipe.checkpoint.folder import checkpoint_name
from mpipipe.metrics import read_metrics

from mpirun import (
    EVERY_RANK_EXITS_ITSELF,
    HANG_GUARD_S,
    REPO,
    JobResult,
    end_job,
    mpipipe_args,
    processes_left,
    rank_pids,
    run_ranks,
    start_ranks,
)

TINY = [
    "examples/gpt_tiny.toml",
    "--set", "model.n_layer=8", "--set", "model.d_model=32", "--set", "model.seq_len=16",
    "--set", "data.source=random", "--set", "parallel.schedule=bitpipe",
    "--set", "runtime.dtype=float64", "--set", "runtime.trace=false",
]
# Lazy: two ranks' watchdog messages can arrive on one line of mpirun's stderr.
WATCHDOG_LINE = re.compile(
    r"watchdog on rank (\d+): .*? while waiting for (?:activation|gradient) for op (\S+) "
    r"from rank (\d+)"
)


def train(run_dir: Path, *extra: str) -> list[str]:
    return mpipipe_args("train", *TINY, "--out", str(run_dir), *extra)


def checkpoints(run_dir: Path) -> list[str]:
    return sorted(os.listdir(run_dir / "checkpoints"))


def datasets(path: Path) -> dict[str, np.ndarray]:
    """Every dataset of a checkpoint (parameters and optimizer state), by name."""
    found = {}
    with h5py.File(path, "r") as file:
        file.visititems(
            lambda name, item: found.update({name: item[()]}) if isinstance(item, h5py.Dataset)
            else None
        )
    return found


def bitwise_equal(first: dict[str, np.ndarray], second: dict[str, np.ndarray]) -> bool:
    return first.keys() == second.keys() and all(
        first[name].dtype == second[name].dtype and first[name].tobytes() == second[name].tobytes()
        for name in first
    )


def test_killed_rank_ends_the_job_and_resume_is_bitwise_exact(tmp_path, record_property):
    killed_step, every, steps = 3, 2, 6
    args = ["--set", f"checkpoint.every={every}", "--set", f"train.steps={steps}"]
    reference = tmp_path / "uninterrupted"
    result = run_ranks(4, train(reference, *args))
    assert result.returncode == 0, result.stderr[-2000:]

    run_dir = tmp_path / "killed"
    job = start_ranks(4, train(run_dir, *args),
                      env={"MPIPIPE_FAULT": f"kill,rank=2,step={killed_step}"})
    try:
        marker = str(run_dir)
        victim = None
        while victim is None and job.poll() is None:
            victim = rank_pids(marker).get(2)
            time.sleep(0.01)
        while victim is not None and os.path.exists(f"/proc/{victim}") and job.poll() is None:
            time.sleep(0.01)
        killed_at = time.monotonic()
        stdout, stderr = job.communicate(timeout=HANG_GUARD_S)
        seconds_after_kill = time.monotonic() - killed_at
    finally:
        end_job(job)
    record_property("seconds_from_kill_to_job_end", round(seconds_after_kill, 2))
    assert job.returncode != 0
    assert JobResult(job.returncode, stdout, stderr, 0.0).rank_exits.get(2) == 137, stderr[-2000:]
    # mpirun ended the others, not their watchdogs (runtime.timeout_s = 300 s, longer than
    # HANG_GUARD_S): none of them gave up waiting for the dead rank.
    assert "watchdog" not in stderr, stderr[-2000:]
    assert processes_left(marker) == []
    assert [row["step"] for row in read_metrics(run_dir)] == list(range(killed_step))
    last_saved = killed_step // every * every
    assert checkpoints(run_dir) == [checkpoint_name(last_saved)]
    record_property("steps_lost", killed_step - last_saved)

    resumed = run_ranks(4, [*train(run_dir, *args), "--resume", "latest"])
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert f"at step {last_saved}" in resumed.stdout
    final = checkpoint_name(steps)
    assert bitwise_equal(datasets(run_dir / "checkpoints" / final),
                         datasets(reference / "checkpoints" / final))
    assert [row["loss"] for row in read_metrics(run_dir)] == [row["loss"] for row in
                                                         read_metrics(reference)]


def test_hung_rank_fires_a_neighbours_watchdog_naming_op_and_peer(tmp_path, record_property):
    run_dir = tmp_path / "run"
    result = run_ranks(
        4, train(run_dir, "--set", "train.steps=50", "--set", "runtime.timeout_s=2"),
        env={"MPIPIPE_FAULT": "hang,rank=1,step=1"},
    )
    record_property("seconds_to_fail", round(result.seconds, 2))
    assert result.returncode == 3, result.stderr[-2000:]  # EXIT_HANG
    assert processes_left(str(run_dir)) == []
    fired = WATCHDOG_LINE.search(result.stderr)
    assert fired, result.stderr[-2000:]
    rank, op, peer = int(fired[1]), fired[2], int(fired[3])
    # Rank 1 stopped: ranks 0 and 2 wait for it, rank 3 waits for the stuck rank 2.
    assert (rank, peer) in {(0, 1), (2, 1), (3, 2)}, fired[0]
    dump = (run_dir / f"flight_rank{rank}.txt").read_text()
    assert f"for op {op} from rank {peer}" in dump
    assert "step 1 " in dump


def test_nan_with_skip_warns_and_leaves_the_state_untouched(tmp_path):
    nan_step, steps = 2, 4
    run_dir = tmp_path / "run"
    result = run_ranks(
        4, train(run_dir, "--set", "train.on_nan=skip", "--set", f"train.steps={steps}",
                 "--set", "checkpoint.every=1", "--set", f"checkpoint.keep={steps}"),
        env={"MPIPIPE_FAULT": f"nan,rank=1,step={nan_step}"},
    )
    assert result.returncode == 0, result.stderr[-2000:]
    warnings = [line for line in result.output.splitlines() if "mpipipe: warning" in line]
    assert len(warnings) == 1, warnings
    assert f"step {nan_step}: gradient norm nan is not finite" in warnings[0], warnings[0]
    assert "skipping the optimizer step" in warnings[0]
    rows = read_metrics(run_dir)
    assert [row["applied"] for row in rows] == [step != nan_step for step in range(steps)]
    state = {step: datasets(run_dir / "checkpoints" / checkpoint_name(step))
             for step in range(1, steps + 1)}
    assert bitwise_equal(state[nan_step], state[nan_step + 1])
    assert not bitwise_equal(state[nan_step - 1], state[nan_step])
    assert not bitwise_equal(state[nan_step + 1], state[nan_step + 2])
    assert np.isfinite(rows[-1]["loss"]) and np.isfinite(rows[-1]["grad_norm"])


def test_nan_with_stop_ends_every_rank_and_keeps_the_checkpoint_before_it(
    tmp_path, record_property
):
    nan_step = 2
    run_dir = tmp_path / "run"
    result = run_ranks(
        4, train(run_dir, "--set", "train.on_nan=stop", "--set", "train.steps=6",
                 "--set", "checkpoint.every=1"),
        env={"MPIPIPE_FAULT": f"nan,rank=1,step={nan_step}", **EVERY_RANK_EXITS_ITSELF},
    )
    record_property("seconds_to_fail", round(result.seconds, 2))
    assert result.rank_exits == dict.fromkeys(range(4), 1), result.stderr[-2000:]
    errors = [line for line in result.stderr.splitlines() if line.startswith("mpipipe: error")]
    assert len(errors) == 1, errors
    assert f"step {nan_step}: gradient norm nan is not finite" in errors[0], errors[0]
    assert "train.on_nan = 'stop'" in errors[0]
    assert checkpoints(run_dir) == [checkpoint_name(step) for step in range(1, nan_step + 1)]
    last = run_dir / "checkpoints" / checkpoint_name(nan_step)
    with h5py.File(last, "r") as file:
        assert int(file.attrs["step"]) == nan_step
    verified = subprocess.run([sys.executable, *mpipipe_args("ckpt", "verify", str(last))],
                              capture_output=True, text=True, timeout=60, cwd=REPO)
    assert verified.returncode == 0, verified.stderr


def test_short_soak_keeps_memory_files_and_requests_flat():
    result = run_ranks(4, ["-m", "mpipipe.bench.soak", "--steps", "60", "--first", "20",
                           "--set", "checkpoint.every=10", "--set", "model.d_model=32",
                           "--set", "model.seq_len=16", "--set", "data.source=random"])
    assert result.returncode == 0, result.output[-2000:]
    assert "soak: ok" in result.stdout
    assert len(re.findall(r"^ +\d +[\d.]+ -> [\d.]+ ", result.stdout, re.MULTILINE)) == 4


def test_soak_probes_see_an_unfinished_request_and_an_unreceived_message():
    from mpi4py import MPI

    comm = MPI.COMM_SELF.Dup()
    before = live_mpi_requests()
    receive = comm.Irecv(np.zeros(4), source=0, tag=7)
    send = comm.Isend(np.ones(4), dest=0, tag=8)
    assert live_mpi_requests() == before + 2
    assert unreceived_messages(comm) == 1
    comm.Recv(np.zeros(4), source=0, tag=8)
    send.Wait()
    receive.Cancel()
    receive.Wait()
    assert (live_mpi_requests(), unreceived_messages(comm)) == (before, 0)
    comm.Free()


def test_soak_bounds_flag_memory_growth_a_leaked_file_and_pending_work():
    def mark(step, rss_kib=100_000, open_files=20, pending_sends=0):
        return Probe(step, rss_kib, open_files, pending_sends, 0, 0, 0, 0)

    assert broken_bounds([mark(100)], [mark(1000, rss_kib=104_999)], 0.05) == []
    problems = broken_bounds(
        [mark(100), mark(100), mark(100)],
        [mark(1000, rss_kib=105_100), mark(1000, open_files=21), mark(1000, pending_sends=1)],
        0.05,
    )
    assert [problem.split(":")[0] for problem in problems] == ["rank 0", "rank 1", "rank 2"]
    assert "resident memory" in problems[0] and "open files 20" in problems[1]
    assert "pending MPI work after step 1000" in problems[2]
