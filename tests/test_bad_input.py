"""The bad-input catalogue: every case is a real `mpipipe train` job under mpirun.

Config, layout, data, checkpoint, run folder and device mistakes, values
that used to validate and then misbehave, sizes with no bound, inputs that
block (a named pipe) or never end (/dev/zero), checkpoints whose metadata
lies, and ranks started with different settings: each must give one
`mpipipe: error` line, printed once, a non-zero exit on every rank, the
whole job ending by itself, never a memory blow-up, and no process of
the job left behind.

Each case runs twice. As users run it: mpirun's own exit code is non-zero
and stderr holds the message exactly once, without a traceback. With Open
MPI's abort-on-failure turned off, so that mpirun kills no rank for the
others (and itself exits 0): every rank reports its own exit code 2, which
proves that each one stopped by itself and none hung (a watchdog's end would
be exit 3; a rank that hung would never report, and after HANG_GUARD_S, far
beyond any case's time on a loaded machine, the test ends it and fails).
The seconds of both runs are recorded as the case's properties (see them with
`pytest -o junit_family=legacy --junitxml=FILE`).
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import h5py
import numpy as np
import pytest

from mpipipe.checkpoint.folder import checkpoint_name
from mpipipe.schedules import SCHEDULE_KINDS, build_schedule
from mpipipe.schedules.csv_io import to_csv

from mpirun import (
    EVERY_RANK_EXITS_ITSELF,
    HANG_GUARD_S,
    MPIRUN,
    RANK_WRAPPER,
    REPO,
    JobResult,
    job_processes,
    mpipipe_args,
    processes_left,
    rank_environment,
    run_ranks,
)

EXIT_USAGE = 2
TINY = "examples/gpt_tiny.toml"
RANDOM_DATA = ["--set", "data.source=random"]
# The model the good checkpoint is trained with, and every checkpoint case starts from.
SMALL = [
    TINY, "--set", "model.n_layer=8", "--set", "model.d_model=32", "--set", "model.seq_len=16",
    *RANDOM_DATA, "--set", "parallel.schedule=bitpipe", "--set", "runtime.trace=false",
]


@dataclass(frozen=True)
class Case:
    name: str
    # Arguments after `mpipipe train`, given the case's own folder and a good checkpoint
    # (None unless needs_checkpoint); `--out FOLDER/run` is added unless they hold --out.
    arguments: Callable[[Path, Path | None], list[str]]
    fragment: str  # part of the one error line
    ranks: int = 4
    env: dict[str, str] = field(default_factory=dict)
    needs_checkpoint: bool = False
    live_numbers: bool = False  # the line quotes a measurement (free memory) that may change


def tiny(*overrides: str) -> Callable:
    return lambda folder, checkpoint: [TINY, *overrides]


def config_file(text: str) -> Callable:
    def arguments(folder: Path, checkpoint) -> list[str]:
        path = folder / "bad.toml"
        path.write_text(text)
        return [str(path)]

    return arguments


def text_corpus(content: bytes, *overrides: str) -> Callable:
    def arguments(folder: Path, checkpoint) -> list[str]:
        path = folder / "corpus.txt"
        path.write_bytes(content)
        return [TINY, "--set", "data.source=text", "--set", f"data.path={path}", *overrides]

    return arguments


def token_file(tokens: np.ndarray) -> Callable:
    def arguments(folder: Path, checkpoint) -> list[str]:
        path = folder / "tokens.npy"
        np.save(path, tokens)
        return [TINY, "--set", "data.source=npy", "--set", f"data.path={path}"]

    return arguments


ONE_F_ONE_B_ROWS = [row for row in to_csv(build_schedule("1f1b", 2, 4)).splitlines()
                    if row[:1].isdigit()]  # 2 ranks, 4 micro-batches: rank,op,op,...


def schedule_file(content: str | bytes | None, *overrides: str) -> Callable:
    """Train on 2 ranks with parallel.schedule = FOLDER/mine.csv holding `content`.

    None: no such file; "folder": a folder of that name.
    """

    def arguments(folder: Path, checkpoint) -> list[str]:
        path = folder / "mine.csv"
        if content == "folder":
            path.mkdir()
        elif isinstance(content, str):
            path.write_text(content)
        elif content is not None:
            path.write_bytes(content)
        return [TINY, *RANDOM_DATA, "--set", f"parallel.schedule={path}",
                "--set", "parallel.microbatches=4", *overrides]

    return arguments


def out_under_a_file(folder: Path, checkpoint) -> list[str]:
    (folder / "a-file").write_text("not a folder")
    return [TINY, *RANDOM_DATA, "--out", str(folder / "a-file" / "run")]


def resume_from(damage: Callable[[Path], None] | None, *overrides: str) -> Callable:
    """Resume from a copy of the good checkpoint, damaged by `damage`."""

    def arguments(folder: Path, checkpoint: Path) -> list[str]:
        path = folder / "given.h5"
        shutil.copy(checkpoint, path)
        if damage is not None:
            damage(path)
        return [*SMALL, *overrides, "--resume", str(path)]

    return arguments


def truncate(path: Path) -> None:
    with open(path, "r+b") as handle:
        handle.truncate(os.path.getsize(path) // 2)


def flip_a_parameter(path: Path) -> None:
    with h5py.File(path, "r") as file:
        dataset = file["model/3"][sorted(file["model/3"])[0]]
        offset = dataset.id.get_offset() + dataset.nbytes // 2
    with open(path, "r+b") as handle:
        handle.seek(offset)
        value = handle.read(1)[0]
        handle.seek(offset)
        handle.write(bytes([value ^ 0x5A]))


def bump_version(path: Path) -> None:
    with h5py.File(path, "r+") as file:
        file.attrs["format_version"] = 7


def set_step(value) -> Callable[[Path], None]:
    def damage(path: Path) -> None:
        with h5py.File(path, "r+") as file:
            file.attrs["step"] = value

    return damage


def drop_optimizer(path: Path) -> None:
    with h5py.File(path, "r+") as file:
        del file["optim"]


def fifo_config(folder: Path, checkpoint) -> list[str]:
    os.mkfifo(folder / "pipe.toml")  # opening it would block every rank until a writer came
    return [str(folder / "pipe.toml")]


def folder_holding_a_run(folder: Path, checkpoint) -> list[str]:
    (folder / "run").mkdir()
    (folder / "run" / "metrics.jsonl").write_text('{"step": 0, "loss": 5.5}\n')
    return [TINY, *RANDOM_DATA]


# Cheap jobs of two ranks for the cases that need no layout of four.
TWO = {"ranks": 2}

CASES = [
    # Config file and --set.
    Case("toml-syntax", config_file("[model]\nn_layer = = 8\n"),
         "line 2, column 11: TOML syntax"),
    Case("unknown-section", config_file("[modle]\nn_layer = 8\n"),
         "unknown section [modle] (did you mean 'model'?)"),
    Case("unknown-key", config_file("[model]\nn_layers = 8\n"),
         "unknown key model.n_layers (did you mean 'n_layer'?)"),
    Case("key-in-wrong-section", config_file("[model]\nmicrobatch_size = 4\n"),
         "model.microbatch_size is not a key of [model]; microbatch_size belongs in [data]"),
    Case("wrong-type", config_file('[model]\nn_layer = "8"\n'),
         'model.n_layer = "8" is a string, expected an integer (write n_layer = 8 without quotes)'),
    Case("missing-config-file", lambda folder, checkpoint: ["examples/no_such.toml"],
         "config file 'examples/no_such.toml' does not exist"),
    Case("misspelt-schedule", tiny("--set", "parallel.schedule=bitpip"),
         f"is not one of {', '.join(SCHEDULE_KINDS)}, nor a file name ending in .csv "
         "(did you mean 'bitpipe'?)"),
    Case("misspelt-recompute", tiny("--set", "runtime.recompute=blocks"),
         'runtime.recompute = "blocks" is not one of none, attention, block '
         "(did you mean 'block'?)"),
    Case("zero-stage-two", tiny("--set", "parallel.zero=2"),
         "parallel.zero = 2 is above the maximum 1 (use 1 or less)", **TWO),
    Case("zero-without-data-parallel", tiny(*RANDOM_DATA, "--set", "parallel.zero=1"),
         "parallel.zero = 1 shards the optimizer state over data-parallel replicas but "
         "parallel.data_parallel = 1: set parallel.data_parallel = 2 or more", **TWO),
    Case("below-minimum", tiny("--set", "train.steps=0"),
         "train.steps = 0 is below the minimum 1 (use 1 or more)"),
    Case("negative-learning-rate", tiny("--set", "optim.lr=-0.1"),
         "optim.lr = -0.1 is below the minimum 0.0 (use 0.0 or more)"),
    Case("not-finite", tiny("--set", "optim.lr=nan"), "optim.lr = nan is not a finite number"),
    Case("malformed-set", tiny("--set", "parallel.schedule"),
         "is not of the form section.key=value"),
    Case("heads-do-not-divide", tiny("--set", "model.d_model=30"),
         "model.d_model = 30 is not a multiple of model.n_head = 4"),
    Case("vocabulary-too-small", tiny("--set", "model.vocab_size=100"),
         "model.vocab_size = 100 is too small for data.source = 'stdlib'"),
    # Precision and evaluation.
    Case("misspelt-precision", tiny("--set", "runtime.precision=bfloat16"),
         'runtime.precision = "bfloat16" is not one of fp32, tf32, fp16, bf16 '
         "(did you mean 'bf16'?)"),
    Case("bf16-without-ml-dtypes", tiny(*RANDOM_DATA, "--set", "runtime.precision=bf16"),
         "runtime.precision = 'bf16' needs the package ml_dtypes",
         env={"PYTHONPATH": str(REPO / "tests" / "fixtures" / "without_ml_dtypes")}),
    Case("low-precision-over-float64", tiny(*RANDOM_DATA, "--set", "runtime.precision=fp16",
                                            "--set", "runtime.dtype=float64"),
         "runtime.precision = 'fp16' keeps float32 master weights but runtime.dtype = "
         "'float64'"),
    Case("eval-fraction-above-half", tiny("--set", "data.eval_fraction=0.7"),
         "data.eval_fraction = 0.7 is above the maximum 0.5 (use 0.5 or less)"),
    Case("eval-fraction-negative", tiny("--set", "data.eval_fraction=-0.1"),
         "data.eval_fraction = -0.1 is below the minimum 0.0 (use 0.0 or more)"),
    Case("eval-without-held-out-data", tiny(*RANDOM_DATA, "--set", "train.eval_every=10"),
         "train.eval_every = 10 evaluates on held-out data but data.eval_fraction = 0.0"),
    Case("eval-set-smaller-than-a-micro-batch",
         text_corpus(b"x" * 1000, "--set", "data.eval_fraction=0.5",
                     "--set", "data.microbatch_size=16"),
         "holds out 7 window(s) of 65 tokens of the 1000 of data.path"),
    # Layout: world size, schedule constraints, layers to stages.
    Case("world-size", tiny(*RANDOM_DATA, "--set", "parallel.pipeline=2"),
         "the job has 4 MPI ranks but parallel.pipeline=2 x parallel.data_parallel=1 needs 2"),
    Case("data-parallel-does-not-divide", tiny(*RANDOM_DATA, "--set", "parallel.data_parallel=3"),
         "the job has 4 MPI ranks, which parallel.data_parallel = 3 does not divide"),
    *(
        Case(f"{schedule}-odd-pipeline",
             tiny(*RANDOM_DATA, "--set", f"parallel.schedule={schedule}",
                  "--set", "parallel.microbatches=6"),
             f"{schedule} needs an even number of pipeline ranks, got 3", ranks=3)
        for schedule in ("bitpipe", "chimera", "zb-v")
    ),
    Case("bitpipe-odd-microbatches",
         tiny(*RANDOM_DATA, "--set", "parallel.schedule=bitpipe",
              "--set", "parallel.microbatches=6"),
         "bitpipe needs a multiple of the pipeline degree 4, got 6"),
    Case("too-few-blocks-for-stages",
         tiny(*RANDOM_DATA, "--set", "parallel.schedule=bitpipe", "--set", "model.n_layer=4"),
         "has 4 transformer blocks, which cannot be split evenly into 8 stages"),
    Case("blocks-do-not-split",
         tiny(*RANDOM_DATA, "--set", "parallel.schedule=bitpipe", "--set", "model.n_layer=12"),
         "has 12 transformer blocks, which cannot be split evenly into 8 stages"),
    Case("costs-not-numbers", tiny(*RANDOM_DATA, "--set", "parallel.costs=1,two,1"),
         "parallel.costs: expected 'unit' or 'measured' or F,B or F,B,W as finite numbers "
         "from", ranks=2),
    # A schedule file (parallel.schedule = "mine.csv").
    Case("schedule-ragged-row",
         schedule_file("\n".join([ONE_F_ONE_B_ROWS[0], ONE_F_ONE_B_ROWS[1].rsplit(",", 3)[0]])),
         "is missing from rank 1; 1B3 (backward of micro-batch 3 at stage 1 of the down pipe) "
         "is missing from rank 1; rank 1 never starts the gradient sync", ranks=2),
    Case("schedule-stage-no-rank-holds",
         schedule_file("\n".join([ONE_F_ONE_B_ROWS[0], "1," + ",".join(
             "2" + cell[1:] for cell in ONE_F_ONE_B_ROWS[1].split(",")[1:])])),
         "mine.csv' line 2 cell 2: 2F0 is of stage 2, but no row has ops of stage 1", ranks=2),
    Case("schedule-duplicated-op",
         schedule_file("\n".join([ONE_F_ONE_B_ROWS[0].replace(",0F1,", ",0F1,0F1,"),
                                  ONE_F_ONE_B_ROWS[1]])),
         "0F1 runs twice (rank 0 step 1, rank 0 step 2) (0F1 on rank 0 is at line 1 cell 4)",
         ranks=2),
    Case("schedule-microbatches-disagree",
         schedule_file("\n".join(ONE_F_ONE_B_ROWS), "--set", "parallel.microbatches=8"),
         "runs 4 micro-batches per step, but parallel.microbatches = 8", ranks=2),
    Case("schedule-rows-disagree", schedule_file("\n".join(ONE_F_ONE_B_ROWS)),
         "has 2 rows, one per pipeline rank, but this run has 4 pipeline ranks"),
    Case("schedule-file-with-measured-costs",
         schedule_file("\n".join(ONE_F_ONE_B_ROWS), "--set", "parallel.costs=measured"),
         "parallel.costs = 'measured' re-plans a generated schedule's order, but "
         "parallel.schedule is the file", ranks=2),
    Case("schedule-file-missing", schedule_file(None), "mine.csv': no such file", ranks=2),
    Case("schedule-file-is-a-folder", schedule_file("folder"), "mine.csv' is a folder",
         ranks=2),
    Case("schedule-file-binary", schedule_file(bytes(range(256))),
         "mine.csv' is not UTF-8 text (byte 0 is NUL", ranks=2),
    Case("schedule-file-utf16",
         schedule_file(b"\xff\xfe" + "\n".join(ONE_F_ONE_B_ROWS).encode("utf-16-le")),
         "mine.csv' is UTF-16 text; save it as UTF-8", ranks=2),
    # Data.
    Case("missing-token-file", tiny("--set", "data.source=npy", "--set", "data.path=none.npy"),
         "data.path 'none.npy'"),
    Case("no-data-path", tiny("--set", "data.source=text"),
         "data.path is empty but data.source = 'text' needs a file or folder"),
    Case("empty-corpus", text_corpus(b""), "is empty (0 bytes of text)"),
    Case("sequence-longer-than-data", text_corpus(b"hello"),
         "has 5 tokens, fewer than model.seq_len + 1 = 65"),
    Case("tokens-beyond-vocabulary", token_file(np.arange(300, dtype=np.uint16)),
         "token ids 0..299 (300 ids) need model.vocab_size = 300 or more"),
    # Checkpoints given to --resume.
    Case("truncated-checkpoint", resume_from(truncate), "cannot be read as HDF5",
         needs_checkpoint=True),
    Case("corrupted-checkpoint", resume_from(flip_a_parameter), "fails its checksum",
         needs_checkpoint=True),
    Case("unknown-checkpoint-version", resume_from(bump_version),
         "has format version 7, this mpipipe", needs_checkpoint=True),
    Case("checkpoint-of-another-model", resume_from(None, "--set", "model.d_model=64"),
         "was trained with model.d_model = 32, the run has model.d_model = 64",
         needs_checkpoint=True),
    Case("resume-latest-without-checkpoint",
         lambda folder, checkpoint: [*SMALL, "--resume", "latest"],
         "--resume latest: no complete checkpoint in"),
    Case("checkpoint-step-negative", resume_from(set_step(np.int64(-5))),
         "attribute step is -5, not an integer of 0 or more", needs_checkpoint=True),
    Case("checkpoint-without-optimizer-state", resume_from(drop_optimizer),
         "holds no optimizer state (/optim is missing)", needs_checkpoint=True),
    Case("resume-with-other-heads", resume_from(None, "--set", "model.n_head=8"),
         "was trained with model.n_head = 4, the run has model.n_head = 8",
         needs_checkpoint=True),
    # Values that used to validate and then misbehave.
    Case("watchdog-timeout-zero", tiny(*RANDOM_DATA, "--set", "runtime.timeout_s=0"),
         "runtime.timeout_s = 0 is below the minimum 1.0", **TWO),
    Case("decay-that-rises", tiny(*RANDOM_DATA, "--set", "optim.min_lr_ratio=5"),
         "optim.min_lr_ratio = 5 is above the maximum 1.0", **TWO),
    Case("adam-beta-one", tiny(*RANDOM_DATA, "--set", "optim.beta1=1.0"),
         "optim.beta1 = 1.0 must be below 1.0", **TWO),
    Case("adam-eps-zero", tiny(*RANDOM_DATA, "--set", "optim.eps=0"),
         "optim.eps = 0 must be above 0.0", **TWO),
    Case("seed-beyond-64-bits", tiny(*RANDOM_DATA, "--set", f"train.seed={2**70}"),
         f"train.seed = {2**70} is above the maximum {2**63 - 1}", **TWO),
    # Sizes with no bound.
    Case("a-billion-micro-batches", tiny(*RANDOM_DATA, "--set", "parallel.microbatches=1000000000"),
         "more than the 200000 a schedule may hold", **TWO),
    Case("a-billion-token-vocabulary",
         tiny(*RANDOM_DATA, "--set", "model.vocab_size=1000000000"),
         "would hold", live_numbers=True, **TWO),
    # Inputs that block or never end.
    Case("config-a-named-pipe", fifo_config, "is a named pipe (FIFO), not a regular file", **TWO),
    Case("config-dev-null", lambda folder, checkpoint: ["/dev/null"],
         "config file '/dev/null' is a character device, not a regular file", **TWO),
    Case("text-data-dev-zero", tiny("--set", "data.source=text", "--set", "data.path=/dev/zero"),
         "data.path '/dev/zero' is a character device", **TWO),
    # Run folder and device.
    Case("empty-out", lambda folder, checkpoint: [TINY, *RANDOM_DATA, "--out", ""],
         "--out '' is empty", **TWO),
    Case("folder-holding-a-run", folder_holding_a_run,
         "already holds a run (metrics.jsonl): continue it with --resume latest", **TWO),
    Case("resume-and-overwrite", tiny(*RANDOM_DATA, "--resume", "latest", "--overwrite"),
         "give one of them", **TWO),
    Case("checkpoint-dir-in-proc", tiny(*RANDOM_DATA, "--set", "checkpoint.dir=/proc/mpipipe"),
         "cannot write to the checkpoint folder '/proc/mpipipe'", **TWO),
    Case("checkpoint-dir-a-file",
         lambda folder, checkpoint: (folder / "file").write_text("x") and [
             TINY, *RANDOM_DATA, "--set", f"checkpoint.dir={folder / 'file'}"],
         "cannot write to the checkpoint folder", **TWO),
    Case("unwritable-run-folder", out_under_a_file, "cannot write to the run folder"),
    Case("gpu-where-none-exists", tiny(*RANDOM_DATA, "--set", "runtime.device=gpu"),
         "runtime.device: 'gpu' was requested but no CUDA GPU is usable here",
         env={"CUDA_VISIBLE_DEVICES": ""}),
]


@pytest.fixture(scope="module")
def good_checkpoint(tmp_path_factory) -> Path:
    run_dir = tmp_path_factory.mktemp("saved") / "run"
    result = run_ranks(4, mpipipe_args("train", *SMALL, "--set", "train.steps=1",
                                       "--out", str(run_dir)))
    assert result.returncode == 0, result.stderr[-2000:]
    return run_dir / "checkpoints" / checkpoint_name(1)


def error_lines(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if line.startswith("mpipipe: error")]


def without_numbers(line: str, case: Case) -> str:
    return re.sub(r"[\d.]+", "#", line) if case.live_numbers else line


def run_case(case: Case, args: list[str], marker: str, env: dict[str, str]):
    """Run the job; if it hangs, end what it left behind and fail."""
    try:
        return run_ranks(case.ranks, args, env={**case.env, **env})
    except subprocess.TimeoutExpired:
        for process in job_processes(marker):
            os.kill(process.pid, signal.SIGKILL)
        pytest.fail(f"{case.name}: the job hangs (still running after {HANG_GUARD_S} s)")


@pytest.mark.parametrize("case", CASES, ids=[case.name for case in CASES])
def test_bad_input_fails_once_on_every_rank(case, tmp_path, request, record_property):
    checkpoint = request.getfixturevalue("good_checkpoint") if case.needs_checkpoint else None
    arguments = case.arguments(tmp_path, checkpoint)
    if "--out" not in arguments:
        arguments += ["--out", str(tmp_path / "run")]
    args = mpipipe_args("train", *arguments)
    marker = str(tmp_path)
    metrics = tmp_path / "run" / "metrics.jsonl"
    metrics_before = metrics.read_text() if metrics.exists() else ""

    as_users_run_it = run_case(case, args, marker, {})
    record_property("seconds_to_fail", round(as_users_run_it.seconds, 2))
    assert as_users_run_it.returncode != 0, as_users_run_it.output[-2000:]
    errors = error_lines(as_users_run_it.stderr)
    assert len(errors) == 1, as_users_run_it.stderr[-2000:]
    assert case.fragment in errors[0], errors[0]
    assert "Traceback" not in as_users_run_it.output
    assert processes_left(marker) == []

    each_rank_alone = run_case(case, args, marker, EVERY_RANK_EXITS_ITSELF)
    record_property("seconds_to_fail_every_rank_itself", round(each_rank_alone.seconds, 2))
    assert each_rank_alone.rank_exits == dict.fromkeys(range(case.ranks), EXIT_USAGE), (
        each_rank_alone.stderr[-2000:]
    )
    again = error_lines(each_rank_alone.stderr)
    assert [without_numbers(line, case) for line in again] == [
        without_numbers(line, case) for line in errors]
    assert "Traceback" not in each_rank_alone.output
    assert processes_left(marker) == []
    assert (metrics.read_text() if metrics.exists() else "") == metrics_before  # no step ran


def test_the_catalogue_is_large_and_every_message_is_one_line():
    assert len(CASES) >= 50
    assert len({case.name for case in CASES}) == len(CASES)
    assert all("\n" not in case.fragment for case in CASES)


def test_ckpt_verify_names_the_damaged_dataset(good_checkpoint, tmp_path):
    path = tmp_path / "damaged.h5"
    shutil.copy(good_checkpoint, path)
    flip_a_parameter(path)
    verified = subprocess.run([sys.executable, *mpipipe_args("ckpt", "verify", str(path))],
                              capture_output=True, text=True, timeout=60, cwd=REPO)
    assert verified.returncode == 1
    assert "dataset /model/3/" in verified.stderr and "fails its checksum" in verified.stderr


def test_ranks_started_with_different_settings_are_named_before_any_message(tmp_path):
    """An MPMD launch whose two halves differ in the model width and the run folder."""
    common = mpipipe_args("train", TINY, *RANDOM_DATA)
    halves = [[*common, "--out", str(tmp_path / "a")],
              [*common, "--set", "model.d_model=32", "--out", str(tmp_path / "b")]]
    command = ["bash", str(MPIRUN)]
    for half in halves:
        command += [*([":"] if len(command) > 2 else []), "-n", "2", "bash", "-c", RANK_WRAPPER,
                    "rank", sys.executable, *half]
    done = subprocess.run(command, capture_output=True, text=True, timeout=HANG_GUARD_S, cwd=REPO,
                          env=rank_environment(EVERY_RANK_EXITS_ITSELF))
    assert JobResult(done.returncode, done.stdout, done.stderr, 0).rank_exits == dict.fromkeys(
        range(4), EXIT_USAGE), done.stderr[-2000:]
    errors = error_lines(done.stderr)
    assert len(errors) == 1, done.stderr[-2000:]
    assert "the ranks were started with different settings" in errors[0]
    assert f"--out is {tmp_path / 'a'} on ranks 0, 1 but {tmp_path / 'b'} on ranks 2, 3" in (
        errors[0])
    assert "model.d_model is 64 on ranks 0, 1 but 32 on ranks 2, 3" in errors[0]
    assert "Traceback" not in done.stderr
    assert processes_left(str(tmp_path)) == []
