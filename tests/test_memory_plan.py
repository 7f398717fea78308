"""`mpipipe plan` and the planner without MPI: sizes that parse and sizes that do not, the
suggestion logic (a change the planner offers is one it then predicts fits), ZeRO-1's shards,
the JSON for scripts, and the progress line's memory. tests/mpi/test_memory_plan.py holds the
prediction to what the ranks measure."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from mpipipe.cli import main
from mpipipe.config.load import load_config
from mpipipe.errors import UsageError
from mpipipe.memory_plan import parse_memory, predict_memory, smallest_fix
from mpipipe.progress import format_row

from mpirun import REPO
from oneline import one_line_error

BIG = "examples/gpt_1b_bitpipe.toml"
GIB = 2**30
SMALL = ["model.n_layer=8", "model.d_model=64", "model.seq_len=64", "data.source=random",
         "parallel.pipeline=4", "parallel.schedule=bitpipe", "parallel.microbatches=8",
         "data.microbatch_size=8"]


@pytest.mark.parametrize(("text", "expected"), [
    ("80GiB", 80 * GIB), ("40GB", 40 * 10**9), ("1.5GiB", int(1.5 * GIB)), ("512MiB", 2**29),
])
def test_memory_sizes_parse(text, expected):
    assert parse_memory(text) == expected


@pytest.mark.parametrize("text", ["lots", "80", "80 GB", "80gib", "-1GiB", "0GB", ""])
def test_a_size_that_does_not_parse_is_one_line(text):
    one_line_error(lambda: parse_memory(text), ["--memory", "80GiB", "GiB"])


@pytest.mark.parametrize(("arguments", "fragment"), [
    (["--memory", "80", "GB"], "--memory 80GB"),
    (["--memory", "lots"], "'lots' is not a memory size"),
])
def test_the_command_refuses_a_bad_budget_in_one_line_with_exit_2(arguments, fragment, capsys):
    assert main(["plan", BIG, *arguments]) == 2
    captured = capsys.readouterr()
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("mpipipe: error: ") and fragment in lines[0]
    assert captured.out == ""


def test_every_rank_every_column_and_the_verdict(capsys):
    assert main(["plan", BIG, "--memory", "80GiB"]) == 0
    out = capsys.readouterr().out
    assert "bitpipe on 8 pipeline ranks" in out
    assert "simulated bubble at F=1 B=2 latency=0: 13.5%" in out
    assert [line.split()[0] for line in out.splitlines() if line[:4].strip().isdigit()] == \
        [str(rank) for rank in range(8)]
    assert "fits: the most any rank needs is" in out.splitlines()[-1]


def test_a_config_that_does_not_fit_gets_a_change_that_the_planner_then_predicts_fits(capsys):
    plan = predict_memory(load_config(BIG))
    budget = int(plan.peak.total * 0.8)
    assert main(["plan", BIG, "--memory", f"{budget}B", "--format", "json"]) == 2
    report = json.loads(capsys.readouterr().out)
    assert report["fits"] is False and report["peak_bytes"] == plan.peak.total
    assert report["fix"]["set"] == ["runtime.recompute=attention"]
    fixed = predict_memory(load_config(BIG, report["fix"]["set"]))
    assert fixed.fits(budget) and fixed.peak.total == report["fix"]["peak_bytes"]


@pytest.mark.parametrize(("overrides", "expected"), [
    # Optimizer state dominates, two replicas: sharding it is the answer.
    (["runtime.recompute=block", "parallel.data_parallel=2", "data.microbatch_size=1",
      "parallel.microbatches=4"], ["parallel.zero=1"]),
    # Activations dominate and recompute is spent: smaller micro-batches, more of them.
    (["runtime.recompute=block", "model.seq_len=256"],
     ["data.microbatch_size=4", "parallel.microbatches=16"]),
])
def test_the_smallest_change_is_the_first_that_fits(overrides, expected):
    config = load_config(None, [*SMALL, *overrides])
    plan = predict_memory(config)
    changes = {}
    for values in (["parallel.zero=1"] if "parallel.data_parallel=2" in overrides else [],
                   ["data.microbatch_size=4", "parallel.microbatches=16"]):
        if values:
            changes[tuple(values)] = predict_memory(load_config(None, [*SMALL, *overrides,
                                                                       *values])).peak.total
    budget = min(changes.values()) + 1
    assert not plan.fits(budget)
    fix = smallest_fix(plan, budget)
    assert fix is not None and fix.overrides() == expected
    assert predict_memory(load_config(None, [*SMALL, *overrides, *expected])).fits(budget)


def test_zero_1_divides_optimizer_state_by_the_holders_of_each_stage():
    whole = predict_memory(load_config(None, [*SMALL, "parallel.data_parallel=2"]))
    sharded = predict_memory(load_config(None, [*SMALL, "parallel.data_parallel=2",
                                                "parallel.zero=1"]))
    for before, after in zip(whole.ranks, sharded.ranks, strict=True):
        # BitPipe: every stage is held by a mirror pair, times 2 replicas.
        assert after.optimizer == pytest.approx(before.optimizer / 4, rel=1e-3)
        assert after.parameters == before.parameters  # fp32: the layers read the master
        # and beside the whole gradient, the shard's reduce-scattered sum
        assert after.gradients == pytest.approx(before.gradients * (1 + 1 / 4), rel=1e-3)


def test_mixed_precision_keeps_working_copies_and_shards_masters_under_zero():
    fp32 = predict_memory(load_config(None, [*SMALL, "parallel.data_parallel=2"])).ranks[1]
    bf16 = predict_memory(load_config(None, [*SMALL, "parallel.data_parallel=2",
                                             "runtime.precision=bf16", "parallel.zero=1"]))
    rank = bf16.ranks[1]
    assert rank.working == fp32.parameters // 2
    assert rank.parameters == pytest.approx(fp32.parameters / 4, rel=1e-3)
    assert rank.activations < fp32.activations


def test_parallel_pipeline_0_needs_the_world_size():
    config = load_config("examples/gpt_tiny.toml")
    one_line_error(lambda: predict_memory(config), ["--ranks R"])
    assert len(predict_memory(config, 4).ranks) == 4


def test_a_layout_the_run_refuses_is_refused_by_the_planner_too():
    one_line_error(lambda: predict_memory(load_config(None, [*SMALL, "parallel.microbatches=6"])),
                   ["multiple"], error=UsageError)


def test_the_progress_line_shows_the_most_memory_and_its_rank():
    row = {"step": 4, "loss": 2.5, "lr": 1e-3, "grad_norm": 0.5, "tokens_per_s": 1000.0,
           "bubble_mean": 0.1, "step_time_s": 0.25, "memory_peak_bytes": 3 * GIB // 2,
           "memory_peak_rank": 3}
    assert format_row(row).endswith("mem 1.50 GiB (rank 3)")
    del row["memory_peak_bytes"]
    assert "mem" not in format_row(row)  # a row of a run from before memory was measured


def test_the_plan_command_loads_no_mpi():
    code = ("import sys; from mpipipe.cli import main; main(['plan', 'examples/gpt_tiny.toml', "
            "'--ranks', '4']); print('mpi4py' in sys.modules)")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=60, cwd=REPO)
    assert done.returncode == 0 and done.stdout.splitlines()[-1] == "False", done.stderr


def test_readme_shows_the_plans_real_output(capsys):
    readme = (REPO / "README.md").read_text()
    section = readme.split("## Will it fit?", 1)[1].split("\n## ", 1)[0]
    command = "$ mpipipe plan examples/gpt_1b_bitpipe.toml --memory 80GiB"
    shown = section.split(command, 1)[1].split("\n\n", 1)[0].strip("\n")
    assert main(["plan", BIG, "--memory", "80GiB"]) == 0
    assert [line[4:] for line in shown.splitlines()] == capsys.readouterr().out.splitlines()
    assert main(["plan", BIG, "--memory", "40GiB"]) == 0
    last = capsys.readouterr().out.splitlines()[-1]
    assert " ".join(last.split()) in " ".join(section.split())
    assert main(["plan", BIG, "--memory", "16GiB"]) == 2
    assert capsys.readouterr().err.strip() in section
