"""The benchmarks measure and report; these tests check what they write, never a speed."""

from __future__ import annotations

import itertools
import json
import os
import subprocess
import sys
from dataclasses import replace

import numpy as np
import pytest

from mpipipe.bench import emulated_device, search_cache
from mpipipe.bench.driver import BenchOptions, part_command
from mpipipe.bench.emulated import EmulatedResult, EmulatedSettings, flagship_ratios
from mpipipe.bench.emulated_device import PROGRESS_POLL_S, Sleeper, emulated_accelerator
from mpipipe.bench.emulated_model import emulated_model, emulated_stage_factory, stage_costs
from mpipipe.bench.launcher import PROGRAM_VARIABLE, find_launcher
from mpipipe.bench.report import markdown_table
from mpipipe.bench.schedule_table import ScheduleTableSettings, run_schedule_table
from mpipipe.bench.search_cache import SearchCache, same_model_costs
from mpipipe.bench.tables import schedules_markdown
from mpipipe.schedules import SCHEDULE_KINDS, build_schedule, partition_layers, plan
from mpipipe.schedules.simulate import OpCosts, simulate

from mpirun import REPO, mpipipe_args, run_ranks

RESULT_KEYS = {"schedule", "ranks", "microbatches", "step_s", "window_s", "simulated_s",
               "overhead", "bubble", "simulated_bubble", "latency_s", "bare_window_s",
               "engine_per_op_s"}


@pytest.fixture(scope="module")
def quick_emulated(tmp_path_factory):
    """`mpipipe bench emulated --quick` on 4 ranks: 1F1B, BitPipe and BitPipe-ZB, D = N = 4,
    5 ms ops, F,B,W = 1,2,1 and 1,2,0.5."""
    out = tmp_path_factory.mktemp("bench")
    job = run_ranks(4, mpipipe_args("bench", "emulated", "--quick", "--out", str(out)),
                    timeout=120)
    assert job.returncode == 0, job.output
    return out, json.loads((out / "emulated.json").read_text()), (out / "emulated.md").read_text()


def test_quick_emulated_writes_one_result_per_case(quick_emulated):
    _, data, _ = quick_emulated
    assert {"command", "machine", "date", "settings", "results", "flagship_ratios"} <= set(data)
    cases = {(row["schedule"], row["ranks"], row["microbatches"], row["profile"])
             for row in data["results"]}
    assert cases == {(kind, 4, 4, profile) for kind in ("1f1b", "bitpipe", "bitpipe-zb")
                     for profile in ("1,2,1", "1,2,0.5")}
    for row in data["results"]:
        assert set(row) >= RESULT_KEYS
        assert row["overhead"] == pytest.approx(row["step_s"] / row["simulated_s"] - 1)
        # Each schedule ran its order planned for the profile, as simulated.
        costs = OpCosts.parse(row["profile"]).scaled(0.005 * 4 / row["stages"])
        planned = plan(row["schedule"], 4, 4, costs)
        expected = simulate(planned, replace(costs, latency=row["latency_s"])).makespan
        assert row["simulated_s"] == pytest.approx(expected, rel=1e-12)
        # The bare MPI loop ran the same order: it cannot beat its makespan without latency.
        assert row["bare_window_s"] >= simulate(planned, costs).makespan * (1 - 1e-6)
        if search_cache.available():  # below the simulated makespan only by the latency
            assert row["search_s"] <= row["simulated_s"] + 1e-12
    pairs = {(ratio["flagship"], ratio["rival"]) for ratio in data["flagship_ratios"]}
    assert pairs == {("bitpipe-zb", "1f1b"), ("bitpipe-zb", "bitpipe"), ("bitpipe", "1f1b"),
                     ("bitpipe", "bitpipe-zb")}


def test_quick_emulated_markdown_says_compute_is_emulated(quick_emulated):
    _, data, markdown = quick_emulated
    assert "This mode emulates compute" in markdown
    assert "| D | N | schedule |" in markdown
    assert data["command"] in markdown
    case_rows = [line for line in markdown.splitlines() if line.startswith("| 4 | 4 |")]
    assert len(case_rows) == len(data["results"])
    assert markdown.count("| 1,2,0.5 | 5.0 | 4 | 4 |") == 2  # a ratio row of each flagship
    assert "### bitpipe-zb's throughput over every other schedule" in markdown


class FakeClock:
    """Stands for the `time` module of the emulated device: only sleeps move it forward
    (and each reading, by a microsecond), and a sleep may wake early or late."""

    TICK_S = 1e-6

    def __init__(self, wake_error_s: float = 0.0):
        self.now = 100.0
        self.wake_error_s = wake_error_s

    def perf_counter(self) -> float:
        self.now += self.TICK_S
        return self.now

    def sleep(self, seconds: float) -> None:
        self.now += max(0.0, seconds + self.wake_error_s)


@pytest.fixture(params=[-3e-4, 0.0, 5e-4], ids=["wakes-early", "wakes-on-time", "wakes-late"])
def clock(request, monkeypatch) -> FakeClock:
    fake = FakeClock(request.param)
    monkeypatch.setattr(emulated_device, "time", fake)
    return fake


def test_sleeper_ends_at_the_deadline_never_before(clock):
    sleeper = Sleeper()
    for seconds in (0.0, 1e-5, 2e-3, 0.25):
        deadline = clock.now + seconds
        sleeper.sleep_until(deadline)
        assert deadline <= clock.now < deadline + 50 * FakeClock.TICK_S, (seconds, clock.now)


def test_emulated_device_queues_work_back_to_back_and_the_host_waits_for_it(clock):
    device = emulated_accelerator()
    start = clock.now
    device.enqueue(0.01)
    device.enqueue(0.02)
    assert clock.now < start + 1e-3  # queuing returns at once
    device.synchronize()
    assert start + 0.03 <= clock.now < start + 0.03 + 1e-4

    clock.now += 1.0  # the device idles meanwhile: later work starts when it is queued
    polls = []
    queued = clock.now
    device.enqueue(0.005)
    device.synchronize(while_waiting=lambda: polls.append(clock.now))
    assert queued + 0.005 <= clock.now < queued + 0.005 + 1e-4
    # The host polls MPI while it waits, every PROGRESS_POLL_S (and the few clock readings of
    # each slice).
    assert len(polls) >= 0.005 / (PROGRESS_POLL_S + 10 * FakeClock.TICK_S) - 1
    gaps = [later - earlier for earlier, later in itertools.pairwise([queued, *polls, clock.now])]
    assert max(gaps) < 2 * PROGRESS_POLL_S


@pytest.mark.parametrize(("profile", "per_microbatch"), [("1,2,1", 3), ("1,1,0.5", 2),
                                                        ("1,2,0.5", 3)])
@pytest.mark.parametrize("kind", ["1f1b", "interleaved", "bitpipe", "zb-v", "bitpipe-zb"])
def test_stage_costs_give_every_schedule_the_same_work(kind, profile, per_microbatch):
    """Sleeps per rank from stage_costs equal the simulator's busy time, scaled by D/S."""
    ranks, microbatches, f0 = 4, 8, 0.02
    schedule = build_schedule(kind, ranks, microbatches)
    costs = stage_costs(f0, ranks, schedule.stages, profile)
    slept = [sum(costs.cost(op.type) for op in rank_ops) for rank_ops in schedule.ops]
    forward, backward, weight = (float(part) for part in profile.split(","))
    asked = OpCosts(forward * f0, backward * f0, backward_weight=weight * f0)
    simulated = simulate(schedule, asked, scale_by_stage_size=True).busy
    np.testing.assert_allclose(slept, simulated, rtol=1e-12)
    # The same model on every layout: every rank does (F + B) * f0 of work per micro-batch.
    np.testing.assert_allclose(slept, [per_microbatch * f0 * microbatches] * ranks, rtol=1e-12)
    if schedule.split_backward:
        assert costs.backward_input == pytest.approx((backward - weight) * f0 * ranks
                                                     / schedule.stages)


def test_emulated_messages_have_the_real_models_size():
    channels, seq_len, ranks = 32, 16, 4
    schedule = build_schedule("bitpipe", ranks, ranks)
    model = emulated_model(channels, seq_len, body_layers=2 * ranks)
    stage_layers = partition_layers(
        [0.0] * len(model.layers), [layer.is_body for layer in model.layers], schedule.stages,
        "uniform",
    )
    costs = stage_costs(0.0, ranks, schedule.stages)
    make = emulated_stage_factory(model, stage_layers, 2, costs, emulated_accelerator())
    for stage in range(schedule.stages):
        compute = make(stage, stage_layers[stage], None)
        if stage < schedule.stages - 1:
            assert compute.output.shape == (2, seq_len, channels)
        if stage > 0:
            assert compute.input_gradient.shape == (2, seq_len, channels)
    assert make(schedule.stages - 1, stage_layers[-1], None).output.shape == ()


def _result(schedule: str, step_s: float, simulated_s: float,
            profile: str = "1,2,1") -> EmulatedResult:
    return EmulatedResult(
        schedule=schedule, ranks=4, microbatches=4, stages=4, f0_s=0.02, latency_s=0.0,
        step_s=step_s, window_s=step_s, simulated_s=simulated_s, bubble=0.0,
        simulated_bubble=0.0, compute_excess=0.0, wait_fraction=0.0, step_samples_s=[step_s],
        window_samples_s=[step_s], profile=profile,
    )


def test_flagship_ratios_are_throughput_over_every_other_schedule_at_the_same_profile():
    results = [_result("bitpipe", 2.0, 1.0), _result("1f1b", 3.0, 1.5),
               _result("bitpipe-zb", 1.6, 0.8), _result("gpipe", 9, 9, profile="1,2,0.5")]
    ratios = {(ratio.flagship, ratio.rival): ratio for ratio in flagship_ratios(results)}
    assert set(ratios) == {("bitpipe-zb", "bitpipe"), ("bitpipe-zb", "1f1b"),
                           ("bitpipe", "1f1b"), ("bitpipe", "bitpipe-zb")}
    tokens = 100.0  # the same global batch for both
    assert ratios[("bitpipe", "1f1b")].measured == pytest.approx(
        (tokens / 2.0) / (tokens / 3.0))
    assert ratios[("bitpipe", "1f1b")].simulated == pytest.approx(1.5 / 1.0)
    assert ratios[("bitpipe-zb", "bitpipe")].measured == pytest.approx(2.0 / 1.6)
    assert ratios[("bitpipe", "bitpipe-zb")].simulated == pytest.approx(0.8 / 1.0)


def test_emulated_cases_are_the_ones_each_schedule_can_run():
    cases = EmulatedSettings(ranks=[4], microbatch_multiples=[1, 2], f0_ms=[1.0]).cases(4)
    kinds_at = {microbatches: {kind for n, kind, *_ in cases if n == microbatches}
                for microbatches in (4, 8)}
    assert kinds_at[8] == set(SCHEDULE_KINDS)
    assert kinds_at[4] == set(SCHEDULE_KINDS) - {"dualpipev"}  # it needs N >= 2D
    for microbatches, kind, *_ in cases:
        build_schedule(kind, 4, microbatches)


def test_short_op_cases_run_again_with_small_messages_of_that_size():
    settings = EmulatedSettings(ranks=[2], microbatch_multiples=[4], schedules=["1f1b"],
                                f0_ms=[1.0, 20.0], small_message_f0_ms=[1.0], profiles=["1,2,1"])
    assert sorted(settings.cases(2)) == [
        (8, "1f1b", 0.001, 64 * 1024, "1,2,1"), (8, "1f1b", 0.001, 4 * 2**20, "1,2,1"),
        (8, "1f1b", 0.02, 4 * 2**20, "1,2,1"),
    ]
    assert settings.message_sizes() == [4 * 2**20, 64 * 1024]
    model = emulated_model(settings.channels(64 * 1024), settings.seq_len, body_layers=4)
    assert np.prod(model.layers[0].output_shape((1, settings.seq_len))) * 4 == 64 * 1024
    assert EmulatedSettings(small_message_f0_ms=[]).message_sizes() == [4 * 2**20]


def test_profiles_after_the_first_run_at_their_own_f0_with_the_large_messages_only():
    settings = EmulatedSettings(ranks=[2], microbatch_multiples=[4], schedules=["1f1b"],
                                f0_ms=[1.0, 20.0], small_message_f0_ms=[1.0],
                                profiles=["1,2,1", "1,2,0.5"], profile_f0_ms=[20.0])
    later = [case for case in settings.cases(2) if case[4] != "1,2,1"]
    assert later == [(8, "1f1b", 0.02, 4 * 2**20, "1,2,0.5")]


def test_the_search_cache_runs_each_search_once_and_reads_it_back(tmp_path, monkeypatch):
    pytest.importorskip("ortools", reason="the search needs OR-Tools (mpipipe[search])")
    from mpipipe.schedules.search import search

    cache = SearchCache(str(tmp_path), time_limit_s=5.0, workers=1)
    costs = same_model_costs("1,2,1", "bitpipe", 2)
    assert costs == OpCosts(0.5, 1.0, backward_weight=0.5)
    split = cache.figures("bitpipe", 2, 2, costs, True)
    whole = cache.figures("bitpipe", 2, 2, costs, False)
    direct = search("bitpipe", 2, 2, costs, True, 2.0, 5.0, 1)
    assert (split.best, split.bound, split.optimal) == (direct.makespan, direct.bound,
                                                        direct.optimal)
    assert whole.best >= split.best  # the split can only help
    monkeypatch.setattr("mpipipe.schedules.search.search", lambda *a, **k: pytest.fail("again"))
    again = SearchCache(str(tmp_path), time_limit_s=5.0, workers=1)
    assert again.figures("bitpipe", 2, 2, costs, True) == split
    # A whole backward does not care how B divides into I and W.
    other_weight = same_model_costs("1,2,0.5", "bitpipe", 2)
    assert again.figures("bitpipe", 2, 2, other_weight, False) == whole
    assert len(json.loads((tmp_path / search_cache.CACHE_FILE).read_text())) == 2


def test_the_schedule_table_without_or_tools_has_makespans_and_says_why(monkeypatch, tmp_path):
    monkeypatch.setattr("mpipipe.bench.schedule_table.available", lambda: False)
    settings = ScheduleTableSettings(ranks=[2], microbatch_multiples=[1], profiles=["1,2,1"],
                                     bubble_ranks=2, bubble_multiples=[1])
    points = run_schedule_table(settings, SearchCache(str(tmp_path), 1.0, 1), report=print)
    assert [point.split for point in points] == [None] and points[0].whole is None
    assert points[0].makespans["bitpipe"] == simulate(
        build_schedule("bitpipe", 2, 2), OpCosts(0.5, 1.0)).makespan
    markdown = schedules_markdown(points, {"1f1b": {2: 0.25}}, settings, searched=False)
    assert "No search columns: the search needs OR-Tools" in markdown
    assert "| 2 | 2 | 1,2,1 |" in markdown and "| — | — | — |" in markdown
    assert not (tmp_path / search_cache.CACHE_FILE).exists()


def test_cost_per_op_is_the_gap_to_the_simulator_over_the_busiest_ranks_ops():
    result = _result("1f1b", step_s=0.034, simulated_s=0.030)
    result.busiest_ops = 16
    assert result.per_op_overhead_s == pytest.approx(0.004 / 16)
    assert result.to_json()["per_op_overhead_s"] == pytest.approx(0.004 / 16)


def test_engine_cost_per_op_is_its_window_over_the_bare_loops_by_the_busiest_ranks_ops():
    result = _result("1f1b", step_s=0.034, simulated_s=0.030)
    assert result.engine_per_op_s is None  # no bare loop measured
    result.busiest_ops, result.window_s, result.bare_window_s = 16, 0.033, 0.0322
    assert result.engine_per_op_s == pytest.approx(0.0008 / 16)
    assert result.to_json()["engine_per_op_s"] == pytest.approx(0.0008 / 16)


def test_markdown_table_has_a_row_per_entry_and_equal_columns():
    table = markdown_table(["a", "b"], [["1", "2"], ["3", "4"]])
    lines = table.splitlines()
    assert len(lines) == 4
    assert {line.count("|") for line in lines} == {3}


def _bench(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, *mpipipe_args("bench", *args)], capture_output=True, text=True,
        timeout=60, cwd=REPO,
    )


def test_unknown_schedule_is_one_usage_line():
    completed = _bench("layers", "--schedules", "1f1b,bitpip")
    assert completed.returncode == 2
    lines = completed.stderr.strip().splitlines()
    assert len(lines) == 1 and "--schedules" in lines[0] and "'bitpip'" in lines[0], lines


def test_emulated_without_enough_ranks_says_how_to_launch_it():
    completed = _bench("emulated", "--ranks", "4", "--out", "/nonexistent-never-written")
    assert completed.returncode == 2
    lines = completed.stderr.strip().splitlines()
    assert len(lines) == 1 and "mpiexec -n 4" in lines[0], lines


def test_all_joins_every_part_found_in_the_output_folder(tmp_path):
    (tmp_path / "stale.json").write_text("{}")  # not a part: left out
    completed = _bench("all", "--parts", "gpu", "--out", str(tmp_path))
    assert completed.returncode == 0, completed.stderr
    readme = (tmp_path / "README.md").read_text()
    gpu_markdown = (tmp_path / "gpu.md").read_text().strip()
    assert gpu_markdown in readme
    assert "Command: `python -m mpipipe bench gpu" in readme
    assert set(json.loads((tmp_path / "bench.json").read_text())) == {"gpu"}


def _fake_launcher(folder, version_line: str) -> None:
    script = folder / "mpiexec"
    script.write_text(f"#!/bin/sh\necho '{version_line}'\n")
    script.chmod(0o755)


def test_launcher_from_path_gets_the_local_settings_only_under_open_mpi(tmp_path, monkeypatch):
    monkeypatch.delenv(PROGRAM_VARIABLE, raising=False)
    monkeypatch.delenv("OMPI_MCA_btl_tcp_if_include", raising=False)
    monkeypatch.setenv("PATH", str(tmp_path))
    _fake_launcher(tmp_path, "mpiexec (OpenRTE) 4.1.4")
    open_mpi = find_launcher(None)
    assert open_mpi.command == ["mpiexec", "--oversubscribe"] and open_mpi.chosen_here
    assert open_mpi.environment["OMPI_MCA_btl_tcp_if_include"] == "lo"
    _fake_launcher(tmp_path, "HYDRA build details:")
    other = find_launcher(None)
    assert other.command == ["mpiexec"]
    assert "OMPI_MCA_btl_tcp_if_include" not in other.environment


def test_given_launcher_is_used_exactly_as_given():
    launcher = find_launcher("srun --mpi=pmix -c 1")
    assert launcher.command == ["srun", "--mpi=pmix", "-c", "1"] and not launcher.chosen_here
    command = part_command(BenchOptions(), launcher, "cpu")
    assert command[:5] == ["srun", "--mpi=pmix", "-c", "1", "-n"]


def test_all_without_a_launcher_says_how_to_give_one(tmp_path):
    out = tmp_path / "out"
    completed = subprocess.run(
        [sys.executable, *mpipipe_args("bench", "all", "--parts", "cpu", "--out", str(out))],
        capture_output=True, text=True, timeout=60, cwd=REPO,
        env={**os.environ, PROGRAM_VARIABLE: "mpiexec-that-is-not-installed"},
    )
    assert completed.returncode == 2
    lines = completed.stderr.strip().splitlines()
    assert len(lines) == 1 and "--mpiexec COMMAND" in lines[0], lines
    assert "'mpiexec-that-is-not-installed' is not on PATH" in lines[0]
    assert not out.exists()
