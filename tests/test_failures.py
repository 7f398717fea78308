"""Real mpiexec jobs that fail: the whole job ends, loudly, on every rank.

Faults come from the test-only MPIPIPE_FAULT switch (mpipipe/runtime/faults.py).
Bad layouts are in the bad-input catalogue (test_bad_input.py), the other
faults in test_faults.py.
"""

import json
import signal
import subprocess
import sys
import time

from mpipipe.metrics import read_metrics

from mpirun import MPIRUN, REPO, mpipipe_args, run_ranks

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
        env={"MPIPIPE_FAULT": "raise,rank=2,step=1"}, timeout=60,
    )
    assert result.returncode != 0
    assert result.seconds < 30
    assert "error on rank 2: InjectedFault: injected fault on rank 2 at step 1" in result.stderr


def test_withheld_message_fires_the_watchdog_naming_op_and_peer(tmp_path):
    result = run_ranks(
        4, train(tmp_path, "--set", "train.steps=50", "--set", "runtime.timeout_s=3"),
        env={"MPIPIPE_FAULT": "withhold,rank=1,step=1"}, timeout=60,
    )
    assert result.returncode == 3, result.stderr[-2000:]  # EXIT_HANG
    assert result.seconds < 30
    watchdog = [line for line in result.stderr.splitlines() if "watchdog on rank" in line]
    assert watchdog, result.stderr[-2000:]
    # Rank 1 withheld its first send of step 1, the activation of stage 1 for micro-batch 0:
    # rank 2 waits for it at op 2F0, and rank 3 waits at 3F0 for what rank 2 cannot send.
    # Whichever of the two times out first names its op and the peer it waits on.
    blocked_chain = ("activation for op 2F0 from rank 1", "activation for op 3F0 from rank 2")
    assert any(link in watchdog[0] for link in blocked_chain), watchdog[0]
    assert "flight recorder" in result.stderr and "step 1 " in result.stderr


def test_sigusr1_dumps_every_rank_without_stopping(tmp_path):
    run_dir = tmp_path / "run"
    command = ["bash", str(MPIRUN), "-n", "4", sys.executable,
               *train(tmp_path, "--set", "train.steps=400")]
    job = subprocess.Popen(command, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                           text=True, env={**_env(), "MPIPIPE_PROGRESS": "log"})
    try:
        metrics = run_dir / "metrics.jsonl"
        deadline = time.monotonic() + 60
        while not (metrics.exists() and metrics.stat().st_size > 0):
            assert time.monotonic() < deadline and job.poll() is None, "training did not start"
            time.sleep(0.2)
        job.send_signal(signal.SIGUSR1)  # mpirun forwards SIGUSR1 to every rank
        stdout, stderr = job.communicate(timeout=120)
    finally:
        if job.poll() is None:
            job.kill()
    assert job.returncode == 0, stderr[-2000:]
    dumps = sorted(path.name for path in run_dir.glob("flight_rank*.txt"))
    assert dumps == [f"flight_rank{rank}.txt" for rank in range(4)]
    assert "last" in (run_dir / "flight_rank0.txt").read_text()


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


def _env():
    import os

    return {**os.environ, "OMP_NUM_THREADS": "1"}
