"""Real mpiexec jobs that fail: the whole job ends, loudly, on every rank.

Faults come from the test-only MPIPIPE_FAULT switch (mpipipe/runtime/faults.py).
Bad layouts are in the bad-input catalogue (test_bad_input.py), the other
faults in test_faults.py.
"""

import json
import os
import signal
import subprocess
import sys

from mpipipe.checkpoint.folder import checkpoint_name
from mpipipe.metrics import read_metrics

from mpirun import (
    HANG_GUARD_S,
    MPIRUN,
    REPO,
    end_job,
    mpipipe_args,
    rank_environment,
    rank_pids,
    run_ranks,
    wait_until,
    written_rows,
)

TINY = [
    "examples/gpt_tiny.toml",
    "--set", "model.n_layer=8", "--set", "model.d_model=32", "--set", "model.seq_len=16",
    "--set", "data.source=random", "--set", "parallel.schedule=bitpipe",
]


def train(tmp_path, *extra):
    return mpipipe_args("train", *TINY, "--out", str(tmp_path / "run"), *extra)


def test_exception_on_one_rank_ends_the_whole_job(tmp_path):
    result = run_ranks(
        4, train(tmp_path, "--set", "train.steps=50"),
        env={"MPIPIPE_FAULT": "raise,rank=2,step=1"},
    )
    assert result.returncode != 0
    assert "error on rank 2: InjectedFault: injected fault on rank 2 at step 1" in result.stderr
    # The abort ended the other ranks, not their watchdogs (runtime.timeout_s = 300 s, longer
    # than run_ranks waits): none of them gave up waiting.
    assert "watchdog" not in result.stderr, result.stderr[-2000:]


def test_withheld_message_fires_the_watchdog_naming_op_and_peer(tmp_path):
    result = run_ranks(
        4, train(tmp_path, "--set", "train.steps=50", "--set", "runtime.timeout_s=3"),
        env={"MPIPIPE_FAULT": "withhold,rank=1,step=1"},
    )
    assert result.returncode == 3, result.stderr[-2000:]  # EXIT_HANG
    watchdog = [line for line in result.stderr.splitlines() if "watchdog on rank" in line]
    assert watchdog, result.stderr[-2000:]
    # Rank 1 withheld its first send of step 1, the activation of stage 1 for micro-batch 0:
    # rank 2 waits for it at op 2F0, and rank 3 waits at 3F0 for what rank 2 cannot send;
    # in BitPipe's up pipe rank 1 then waits at u2F3 for stuck rank 2, and rank 0 at u3F3
    # for rank 1. Every rank ends up waiting; whichever times out first (the machine's load
    # decides) names its op and the peer it waits on.
    blocked_chain = (
        "activation for op 2F0 from rank 1", "activation for op 3F0 from rank 2",
        "activation for op u2F3 from rank 2", "activation for op u3F3 from rank 1",
    )
    assert any(link in watchdog[0] for link in blocked_chain), watchdog[0]
    assert "flight recorder" in result.stderr and "step 1 " in result.stderr


def test_sigusr1_dumps_every_rank_without_stopping(tmp_path):
    run_dir = tmp_path / "run"
    dumps = [run_dir / f"flight_rank{rank}.txt" for rank in range(4)]

    def dumped(path) -> bool:
        return path.exists() and path.read_text().endswith("\n")

    command = ["bash", str(MPIRUN), "-n", "4", sys.executable,
               *train(tmp_path, "--set", "train.steps=100000")]
    job = subprocess.Popen(command, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                           text=True, env=rank_environment())
    try:
        wait_until(lambda: written_rows(run_dir), job, "the first training step")
        job.send_signal(signal.SIGUSR1)  # mpirun forwards SIGUSR1 to every rank
        wait_until(lambda: all(dumped(path) for path in dumps), job, "a dump from every rank")
        steps_at_dump = len(written_rows(run_dir))
        wait_until(lambda: len(written_rows(run_dir)) > steps_at_dump + 1, job,
                   "training going on after the dump")
        os.kill(rank_pids(str(run_dir))[1], signal.SIGTERM)  # now stop it: save, exit 75
        _, stderr = job.communicate(timeout=HANG_GUARD_S)
    finally:
        end_job(job)
    assert job.returncode == 75, stderr[-2000:]
    # It trained on until the SIGTERM, then saved that step (checkpoint.every = 0).
    assert os.listdir(run_dir / "checkpoints") == [checkpoint_name(len(written_rows(run_dir)))]
    for rank, path in enumerate(dumps):
        text = path.read_text()
        assert text.startswith(f"mpipipe flight recorder, rank {rank},"), text
        assert "last" in text and "oldest first" in text, text


def test_bitpipe_run_writes_metrics_with_bubble_and_a_trace(tmp_path):
    result = run_ranks(4, train(tmp_path, "--set", "train.steps=40",
                                "--set", "data.source=stdlib", "--set", "model.vocab_size=256"),
                       timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    run_dir = tmp_path / "run"
    rows = read_metrics(run_dir)
    assert [row["step"] for row in rows] == list(range(40))
    for row in rows:
        assert len(row["bubble"]) == 4 and all(0 <= value < 1 for value in row["bubble"])
        assert {"loss", "lr", "grad_norm", "step_time_s", "tokens_per_s"} <= set(row)
    first, last = rows[:5], rows[-5:]
    assert sum(r["loss"] for r in last) < 0.9 * sum(r["loss"] for r in first)
    events = json.loads((run_dir / "trace.json").read_text())["traceEvents"]
    ops = {(event["tid"], event["name"]) for event in events if event.get("cat") == "compute"}
    assert {tid for tid, _ in ops} == {0, 1, 2, 3}
    # BitPipe's V turn: rank 3 runs stage 3 (down) and stage 4 of the up pipe's mirror.
    assert (0, "0F0") in ops and (3, "u0F2") in ops
