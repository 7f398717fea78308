"""`mpipipe eval CONFIG --resume PATH`: a checkpoint's held-out loss at another layout equals
the loss the training run measured at the same step (float64)."""

from __future__ import annotations

import re

from mpipipe.checkpoint.folder import checkpoint_name
from mpipipe.metrics import read_metrics

from mpirun import mpipipe_args, run_ranks

SMALL = [
    "examples/gpt_tiny.toml",
    "--set", "model.n_layer=8", "--set", "model.d_model=32", "--set", "model.seq_len=16",
    "--set", "data.source=random", "--set", "runtime.dtype=float64",
    "--set", "runtime.trace=false", "--set", "data.eval_fraction=0.1",
    "--set", "train.eval_batches=2",
]
REPORT = re.compile(r"^eval_loss (\S+): checkpoint .* \(step 3\)", re.M)


def test_eval_of_a_checkpoint_at_other_layouts_equals_the_training_runs_eval(tmp_path):
    run_dir = tmp_path / "run"
    trained = run_ranks(2, mpipipe_args(
        "train", *SMALL, "--set", "parallel.schedule=bitpipe", "--set", "train.steps=3",
        "--set", "train.eval_every=3", "--out", str(run_dir),
    ), timeout=180)
    assert trained.returncode == 0, trained.stderr[-2000:]
    expected = read_metrics(run_dir)[-1]["eval_loss"]
    checkpoint = run_dir / "checkpoints" / checkpoint_name(3)
    for ranks, schedule in ((1, "gpipe"), (4, "zb-v")):
        result = run_ranks(ranks, mpipipe_args(
            "eval", *SMALL, "--set", f"parallel.schedule={schedule}",
            "--resume", str(checkpoint),
        ), timeout=180)
        assert result.returncode == 0, result.stderr[-2000:]
        [reported] = REPORT.findall(result.stdout)
        assert abs(float(reported) - expected) <= 1e-10 * expected, (ranks, schedule)
