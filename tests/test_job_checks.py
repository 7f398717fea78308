"""Set-up checks before the first step: the same job on every rank, memory, the run folder.

- The ranks' settings are compared key by key; a disagreement names every
  differing key with the ranks on each side.
- The memory check asks the planner what a rank will hold; its parameter
  state is checked against the arrays a parameter store and an optimizer
  really allocate, for every rank of a BitPipe layout, and a model that
  cannot fit is refused with its numbers (and the change that fits) before
  anything is allocated.
- The run folder: what counts as a run, what --overwrite removes (and what
  it leaves), what cannot be written, a disk too small for one checkpoint.
- A MemoryError anywhere ends in one line, not a traceback.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys

import pytest

from mpipipe.backend import select_backend
from mpipipe.checkpoint.folder import PARTIAL_SUFFIX, checkpoint_name
from mpipipe.config.load import load_config
from mpipipe.memory_fit import check_fits, rank_memory
from mpipipe.optim import build_optimizer
from mpipipe.plan import plan_run
from mpipipe.run_folder import (
    RunFolder,
    check_before_first_step,
    check_out_option,
    check_shared,
    checkpoint_bytes,
    describe_run,
    leave_token,
    remove_old_run,
)
from mpipipe.runtime.params import ParamStore
from mpipipe.runtime.same_settings import disagreement, job_settings, job_verdict
from mpipipe.trainer import optimizer_groups

from mpirun import REPO
from one_rank import tiny_trainer
from oneline import one_line_error

CPU = select_backend("cpu", "float32")
SMALL = ["model.n_layer=8", "model.d_model=32", "model.seq_len=16", "data.source=random"]


# ----- the same job on every rank ----------------------------------------------------


def test_agreeing_ranks_have_no_verdict():
    settings = job_settings(load_config(None, SMALL), out="/runs/x", resume="")
    assert disagreement([settings] * 4) is None
    assert job_verdict([(None, settings)] * 4) is None
    assert settings["model.d_model"] == "32" and settings["--out"] == "/runs/x"


def test_a_disagreement_names_each_key_and_the_ranks_on_each_side():
    base = load_config(None, SMALL)
    wide = load_config(None, [*SMALL, "model.d_model=64", "parallel.schedule=gpipe"])
    records = [job_settings(base, out="/a"), job_settings(base, out="/a"),
               job_settings(wide, out="/a"), job_settings(wide, out="/b")]
    message = disagreement(records)
    assert "\n" not in message
    assert "model.d_model is 32 on ranks 0, 1 but 64 on ranks 2, 3" in message
    assert 'parallel.schedule is "1f1b" on ranks 0, 1 but "gpipe" on ranks 2, 3' in message
    assert "--out is /a on ranks 0, 1, 2 but /b on rank 3" in message


def test_more_differences_than_shown_are_counted_and_listed():
    base = load_config(None, SMALL)
    other = load_config(None, [*SMALL, "train.steps=7", "train.seed=9", "optim.lr=0.1",
                               "model.n_head=8", "data.microbatch_size=2"])
    message = disagreement([job_settings(base), job_settings(other)])
    assert message.count(" is ") == 3 and "and 2 more: " in message


def test_a_rank_that_could_not_read_its_config_is_the_verdict():
    settings = job_settings(load_config(None, SMALL))
    records = [(None, settings), ("config file 'x' does not exist", {}), ("other", {})]
    assert job_verdict(records) == (1, "config file 'x' does not exist")


# ----- memory ------------------------------------------------------------------------


def allocated_bytes(plan) -> int:
    """What a parameter store and its optimizer really allocate for the plan's rank."""
    store = ParamStore.create(plan.model, plan.stage_layers, plan.schedule.placement, plan.grid,
                              CPU, seed=1)
    optimizer = build_optimizer(optimizer_groups(store, 0.0), plan.config.optim)
    arrays = [bucket.param for bucket in store.buckets] + [bucket.grad for bucket in store.buckets]
    arrays += [array for state in optimizer.state for array in state.values()]
    return sum(array.nbytes for array in arrays)


@pytest.mark.parametrize("overrides", [
    ["parallel.schedule=bitpipe"], ["parallel.schedule=1f1b", "optim.name=sgd"],
    ["parallel.schedule=1f1b", "model.tie_embeddings=false"],
], ids=["bitpipe-adamw", "1f1b-sgd", "untied"])
def test_the_estimate_is_what_the_store_and_optimizer_allocate_on_every_rank(overrides):
    for rank in range(4):
        plan = plan_run(load_config(None, [*SMALL, *overrides]), 4, rank)
        predicted = rank_memory(plan)
        assert predicted.parameters + predicted.gradients + predicted.optimizer == \
            allocated_bytes(plan), rank


def test_a_model_that_cannot_fit_is_refused_with_its_numbers_before_any_allocation(monkeypatch):
    plan = plan_run(load_config(None, [*SMALL, "model.vocab_size=1000000000"]), 1, 0)
    message = one_line_error(lambda: check_fits(plan, CPU),
                             ["would hold", "adamw state 476.84 GiB", "available memory",
                              "vocab_size", "mpipipe plan"])
    assert "rank(s)" not in message
    small = plan_run(load_config(None, SMALL), 1, 0)
    check_fits(small, CPU)
    monkeypatch.setattr("mpipipe.memory_fit.available_bytes",
                        lambda: rank_memory(small).total * 4)
    monkeypatch.setenv("OMPI_COMM_WORLD_LOCAL_SIZE", "8")  # eight ranks share the machine
    one_line_error(lambda: check_fits(small, CPU), ["for 8 rank(s)"])
    monkeypatch.setenv("OMPI_COMM_WORLD_LOCAL_SIZE", "2")
    check_fits(small, CPU)


def test_a_memory_error_ends_in_one_line_without_a_traceback():
    done = subprocess.run([sys.executable, "-c", (
        "from mpipipe.runtime.failure import abort_on_exception\n"
        "with abort_on_exception():\n"
        "    raise MemoryError('Unable to allocate 3.7 TiB for an array')\n"
    )], capture_output=True, text=True, timeout=60, cwd=REPO)
    assert done.returncode == 1
    lines = [line for line in done.stderr.splitlines() if line.startswith("mpipipe:")]
    assert len(lines) == 1 and "out of memory" in lines[0] and "3.7 TiB" in lines[0]
    assert "Traceback" not in done.stderr


# ----- the run folder ----------------------------------------------------------------


def folder_at(tmp_path) -> RunFolder:
    return RunFolder(str(tmp_path / "run"), str(tmp_path / "run" / "checkpoints"))


def test_what_counts_as_a_run(tmp_path):
    folder = folder_at(tmp_path)
    os.makedirs(folder.checkpoint_dir)
    assert describe_run(folder) is None
    (tmp_path / "run" / "metrics.jsonl").write_text("")  # a run that never finished a step
    assert describe_run(folder) is None
    (tmp_path / "run" / "metrics.jsonl").write_text('{"step": 0}\n')
    assert describe_run(folder) == "metrics.jsonl"
    for step in (3, 7):
        (tmp_path / "run" / "checkpoints" / checkpoint_name(step)).write_text("x")
    (tmp_path / "run" / "checkpoints" / (checkpoint_name(8) + PARTIAL_SUFFIX)).write_text("x")
    assert describe_run(folder) == ("metrics.jsonl, 2 checkpoint(s), the newest of step 7, the "
                                    "partial file of an unfinished save")


def test_a_folder_with_a_run_is_refused_unless_resumed_or_overwritten(tmp_path):
    folder = folder_at(tmp_path)
    os.makedirs(folder.checkpoint_dir)
    (tmp_path / "run" / "checkpoints" / checkpoint_name(5)).write_text("x")
    check = lambda **flags: check_before_first_step(folder, checkpoint_bytes=1, **flags)  # noqa: E731
    one_line_error(lambda: check(resume=False, overwrite=False),
                   ["already holds a run (1 checkpoint(s), the newest of step 5)",
                    "--resume latest", "--overwrite"])
    check(resume=True, overwrite=False)
    check(resume=False, overwrite=True)
    one_line_error(lambda: check(resume=True, overwrite=True), ["give one of them"])


def test_overwrite_removes_the_old_runs_files_and_nothing_else(tmp_path):
    folder = folder_at(tmp_path)
    run = tmp_path / "run"
    os.makedirs(folder.checkpoint_dir)
    written = ["metrics.jsonl", "trace.json", "flight_rank0.txt", "flight_rank12.txt",
               f"checkpoints/{checkpoint_name(4)}", f"checkpoints/{checkpoint_name(4)}.partial"]
    kept = ["notes.txt", "flight_rank0.png", "checkpoints/mine.h5", "data/tokens.npy"]
    for name in written + kept:
        (run / name).parent.mkdir(parents=True, exist_ok=True)
        (run / name).write_text("x")
    removed = remove_old_run(folder)
    assert sorted(removed) == sorted(str(run / name) for name in written)
    assert sorted(str(path.relative_to(run)) for path in run.rglob("*") if path.is_file()) == (
        sorted(kept))


@pytest.mark.parametrize(("make", "fragment"), [
    (lambda tmp: (tmp / "file").write_text("x") and RunFolder(str(tmp / "run"), str(tmp / "file")),
     "checkpoint.dir: cannot write to the checkpoint folder"),
    (lambda tmp: RunFolder(str(tmp / "run"), "/proc/mpipipe-checkpoints"),
     "checkpoint.dir: cannot write to the checkpoint folder '/proc/mpipipe-checkpoints'"),
    (lambda tmp: (tmp / "file").write_text("x") and RunFolder(str(tmp / "file"), str(tmp / "c")),
     "--out: cannot write to the run folder"),
], ids=["checkpoint-dir-a-file", "checkpoint-dir-in-proc", "out-a-file"])
def test_a_folder_the_run_cannot_write_is_refused_before_the_first_step(tmp_path, make, fragment):
    folder = make(tmp_path)
    one_line_error(lambda: check_before_first_step(folder, resume=False, overwrite=False,
                                                   checkpoint_bytes=1), [fragment])


def test_a_disk_without_room_for_one_checkpoint_is_refused(tmp_path, monkeypatch):
    folder = folder_at(tmp_path)
    usage = shutil.disk_usage(tmp_path)
    monkeypatch.setattr("mpipipe.run_folder.shutil.disk_usage",
                        lambda path: usage._replace(free=1_000_000))
    one_line_error(lambda: check_before_first_step(folder, resume=False, overwrite=False,
                                                   checkpoint_bytes=1_500_000),
                   ["has 1.0 MB free, less than the 1.5 MB one checkpoint"])
    check_before_first_step(folder, resume=False, overwrite=False, checkpoint_bytes=900_000)


def test_the_checkpoint_estimate_covers_the_file_a_save_writes(tmp_path):
    trainer = tiny_trainer()
    path = tmp_path / checkpoint_name(0)
    trainer.save_checkpoint(str(path))
    estimate, actual = checkpoint_bytes(trainer.plan), os.path.getsize(path)
    assert actual <= estimate <= 2 * actual


def test_every_rank_must_see_the_checkpoint_folder_rank0_made(tmp_path):
    folder = folder_at(tmp_path)
    os.makedirs(folder.checkpoint_dir)
    token = leave_token(folder)
    check_shared(folder, token, rank=3)
    elsewhere = RunFolder(folder.path, str(tmp_path / "node-local"))
    os.makedirs(elsewhere.checkpoint_dir)
    one_line_error(lambda: check_shared(elsewhere, token, rank=3),
                   ["on rank 3 is not the folder rank 0 created", "checkpoint.parallel = 'no'"])


@pytest.mark.parametrize("out", ["", "   "])
def test_an_empty_out_is_refused(out):
    one_line_error(lambda: check_out_option(out), [f"--out {out!r} is empty"])
