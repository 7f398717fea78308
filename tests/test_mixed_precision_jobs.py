"""fp16 jobs: a run killed mid-way and resumed from its checkpoint is bitwise the run that
was never interrupted, its loss scale included; bf16 and fp16 runs write what they trained.

The loss scale grows after every good step here (runtime.loss_scale_window = 1), so it
changes, overflows and halves within a few steps, and a resume that lost it would
diverge at once.
"""

from __future__ import annotations

import h5py

from mpipipe.checkpoint.folder import checkpoint_name
from mpipipe.metrics import read_metrics

from mpirun import mpipipe_args, run_ranks
from test_faults import bitwise_equal, datasets

FP16 = [
    "examples/gpt_tiny.toml",
    "--set", "model.n_layer=8", "--set", "model.d_model=32", "--set", "model.seq_len=16",
    "--set", "data.source=random", "--set", "parallel.schedule=bitpipe",
    "--set", "runtime.trace=false", "--set", "runtime.precision=fp16",
    "--set", "runtime.loss_scale_window=1", "--set", "data.eval_fraction=0.1",
    "--set", "train.eval_every=2", "--set", "train.eval_batches=1",
    "--set", "checkpoint.every=2", "--set", "train.steps=6",
]


def train(run_dir, *extra: str) -> list[str]:
    return mpipipe_args("train", *FP16, "--out", str(run_dir), *extra)


def loss_scale_of(path) -> tuple[float, int]:
    with h5py.File(path, "r") as file:
        attributes = file["optim"].attrs
        return float(attributes["loss_scale"]), int(attributes["loss_scale_good_steps"])


def test_an_fp16_resume_is_bitwise_the_uninterrupted_run(tmp_path):
    reference = tmp_path / "uninterrupted"
    result = run_ranks(2, train(reference), timeout=240)
    assert result.returncode == 0, result.stderr[-2000:]
    rows = read_metrics(reference)
    scales = [row["loss_scale"] for row in rows]
    assert len(set(scales)) > 2, f"the loss scale should move: {scales}"

    run_dir = tmp_path / "killed"
    killed = run_ranks(2, train(run_dir), timeout=240,
                       env={"MPIPIPE_FAULT": "kill,rank=1,step=3"})
    assert killed.returncode != 0
    saved = run_dir / "checkpoints" / checkpoint_name(2)
    assert loss_scale_of(saved) == loss_scale_of(reference / "checkpoints" / checkpoint_name(2))
    resumed = run_ranks(2, [*train(run_dir), "--resume", "latest"], timeout=240)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert "at step 2" in resumed.stdout

    final = checkpoint_name(6)
    assert bitwise_equal(datasets(run_dir / "checkpoints" / final),
                         datasets(reference / "checkpoints" / final))
    assert loss_scale_of(run_dir / "checkpoints" / final) == \
        loss_scale_of(reference / "checkpoints" / final)
    kept = ("loss", "loss_scale", "overflow", "applied", "eval_loss")
    assert [{key: row.get(key) for key in kept} for row in read_metrics(run_dir)] == \
        [{key: row.get(key) for key in kept} for row in rows]
    with h5py.File(run_dir / "checkpoints" / final, "r") as file:
        assert file.attrs["precision"] == "fp16"
        assert file.attrs["eval_split"].startswith("data.eval_fraction=0.1 ")
        assert file["model/1/attn.qkv.weight"].dtype == "float32"  # the master weights
