"""Run the benchmark parts and write their Markdown and JSON.

    part       where it runs                          what it writes in --out
    emulated   under mpiexec, max(--ranks) ranks      emulated.md, emulated.json
               (then rank 0 runs the searches of its column, the others asleep)
    cpu        under mpiexec, 2 ranks, 1 core each    cpu.md, cpu.json
    layers     one process                            layers.md, layers.json
    gpu        one process, skipped without a GPU     gpu.md, gpu.json
    schedules  one process                            schedules.md, schedules.json
               (the schedule table, its searches, and the bubble table)
    all        one process that launches the MPI parts with mpiexec, runs the
               others itself, then joins everything into README.md and bench.json

Searches (OR-Tools; without it the tables leave their columns out) are kept
in --out/searches.json (search_cache.py): the schedule table finds the ones
the emulated part ran. With the defaults `all` runs about 115 searches of at
most --time-limit seconds each.
"""

from __future__ import annotations

import json
import os
import shlex
import subprocess
import sys
from dataclasses import asdict, dataclass, field, replace

from mpipipe.bench import report
from mpipipe.bench.cost_profiles import EMULATED_PROFILES
from mpipipe.bench.launcher import Launcher, find_launcher
from mpipipe.bench.search_cache import DEFAULT_TIME_LIMIT_S, QUICK_TIME_LIMIT_S
from mpipipe.commands.train import prepare_out_dir
from mpipipe.errors import EXIT_USAGE, UsageError
from mpipipe.schedules import SCHEDULE_KINDS
from mpipipe.schedules.simulate import OpCosts

PARTS = ("emulated", "cpu", "layers", "gpu", "schedules")
MPI_PARTS = {"emulated", "cpu"}
CPU_RANKS = 2
# The exact command `mpipipe bench all` launched a part with, handed to the part.
COMMAND_VARIABLE = "MPIPIPE_BENCH_COMMAND"


@dataclass
class BenchOptions:
    out: str = "runs/bench"
    quick: bool = False
    schedules: list[str] = field(default_factory=lambda: list(SCHEDULE_KINDS))
    ranks: list[int] = field(default_factory=lambda: [4, 8])
    microbatch_multiples: list[int] = field(default_factory=lambda: [1, 2, 4])
    f0_ms: list[float] = field(default_factory=lambda: [1.0, 2.0, 20.0, 40.0])
    small_message_f0_ms: list[float] = field(default_factory=lambda: [1.0, 2.0])
    steps: int | None = None  # timed steps; None: each part's default
    mpiexec: str | None = None  # launcher command for `all`; None: see launcher.find_launcher
    timeout_s: float = 7200.0
    command: str | None = None  # how the part was started, for the tables; None: from sys.argv
    parts: list[str] = field(default_factory=lambda: list(PARTS))  # what `all` runs
    time_limit_s: float | None = None  # per search; None: DEFAULT_TIME_LIMIT_S (quick: 2)
    workers: int = 2  # solver threads per search
    search: bool = True  # emulated: the column of the search's best
    profiles: list[str] = field(default_factory=lambda: list(EMULATED_PROFILES))
    profile_f0_ms: list[float] = field(default_factory=lambda: [20.0])

    def passthrough(self, part: str) -> list[str]:
        """The options `part` uses, as command-line arguments."""
        arguments = ["--out", self.out]
        if part in MPI_PARTS:
            arguments += ["--schedules", ",".join(self.schedules)]
        if part == "emulated":
            arguments += [
                "--ranks", ",".join(map(str, self.ranks)),
                "--microbatch-multiples", ",".join(map(str, self.microbatch_multiples)),
                "--f0-ms", ",".join(f"{value:g}" for value in self.f0_ms),
                "--small-message-f0-ms",
                ",".join(f"{value:g}" for value in self.small_message_f0_ms),
                "--profiles", ";".join(self.profiles),
                "--profile-f0-ms", ",".join(f"{value:g}" for value in self.profile_f0_ms),
                "--workers", str(self.workers),
            ]
            if self.time_limit_s is not None:
                arguments += ["--time-limit", f"{self.time_limit_s:g}"]
            if not self.search:
                arguments.append("--no-search")
        if self.steps is not None and part in MPI_PARTS:
            arguments += ["--steps", str(self.steps)]
        if part == "schedules":
            arguments += [
                "--ranks", ",".join(map(str, self.ranks)),
                "--microbatch-multiples", ",".join(map(str, self.microbatch_multiples)),
                "--workers", str(self.workers),
            ]
            if self.time_limit_s is not None:
                arguments += ["--time-limit", f"{self.time_limit_s:g}"]
        return arguments + (["--quick"] if self.quick else [])


def check_options(options: BenchOptions) -> None:
    for part in options.parts:
        if part not in PARTS:
            raise UsageError(f"--parts: unknown part {part!r} (choose from {', '.join(PARTS)})")
    for profile in options.profiles:
        OpCosts.parse(profile, name="--profiles")
    if not options.profiles:
        raise UsageError("--profiles: expected at least one cost profile F,B,W, such as 1,2,1")
    for kind in options.schedules:
        if kind not in SCHEDULE_KINDS:
            raise UsageError(
                f"--schedules: unknown schedule {kind!r} (choose from {', '.join(SCHEDULE_KINDS)})"
            )
    for name, values in (("--ranks", options.ranks),
                         ("--microbatch-multiples", options.microbatch_multiples),
                         ("--f0-ms", options.f0_ms), ("--profile-f0-ms", options.profile_f0_ms)):
        if not values or min(values) <= 0:
            raise UsageError(f"{name}: expected positive numbers separated by commas, got {values}")
    if options.time_limit_s is not None and not options.time_limit_s > 0:
        raise UsageError(f"--time-limit: expected a positive number of seconds, got "
                         f"{options.time_limit_s}")
    if options.workers < 1:
        raise UsageError(f"--workers: expected at least 1 solver thread, got {options.workers}")
    if any(value <= 0 for value in options.small_message_f0_ms):
        raise UsageError(
            "--small-message-f0-ms: expected positive numbers separated by commas (or nothing), "
            f"got {options.small_message_f0_ms}"
        )
    if options.steps is not None and options.steps < 1:
        raise UsageError(f"--steps: expected at least 1 timed step, got {options.steps}")


# ----- the parts ------------------------------------------------------------------


def emulated_settings(options: BenchOptions):
    from mpipipe.bench.emulated import EmulatedSettings

    settings = EmulatedSettings(
        ranks=options.ranks, microbatch_multiples=options.microbatch_multiples,
        schedules=options.schedules, f0_ms=options.f0_ms,
        small_message_f0_ms=options.small_message_f0_ms, profiles=options.profiles,
        profile_f0_ms=options.profile_f0_ms, search=options.search,
        search_time_limit_s=time_limit(options), search_workers=options.workers,
    )
    if options.quick:
        settings.d_model, settings.seq_len, settings.steps = 256, 256, 2
    if options.steps is not None:
        settings.steps = options.steps
    return settings


def run_emulated_part(options: BenchOptions) -> int:
    from mpi4py import MPI

    from mpipipe.bench.emulated import (
        add_searches,
        check_cases,
        flagship_ratios,
        run_emulated,
        search_cache,
    )
    from mpipipe.bench.mpi_tools import idle_barrier
    from mpipipe.bench.search_cache import SKIPPED, available
    from mpipipe.bench.tables import emulated_markdown
    from mpipipe.runtime.failure import abort_on_exception

    comm = MPI.COMM_WORLD
    needed = max(options.ranks)
    if comm.Get_size() < needed:
        raise UsageError(
            f"mpipipe bench emulated: --ranks {','.join(map(str, options.ranks))} needs {needed} "
            f"MPI ranks but the job has {comm.Get_size()}: run it under mpiexec -n {needed}, or "
            "run `mpipipe bench all`, which launches it"
        )
    settings = emulated_settings(options)
    rank0 = comm.Get_rank() == 0
    if not _agree(comm, lambda: check_cases(settings), options.out):
        return EXIT_USAGE
    header = _header(options, comm.Get_size())
    with abort_on_exception(comm):
        results = run_emulated(comm, settings, report=_printer(rank0))
        cache = search_cache(settings, options.out) if rank0 else None
        if cache is not None:
            add_searches(results, cache, report=_printer(rank0))
        idle_barrier(comm)  # the other ranks sleep while rank 0 searches
    if not rank0:
        return 0
    ratios = flagship_ratios(results)
    data = {
        **header,
        "settings": asdict(settings),
        "results": [result.to_json() for result in results],
        "flagship_ratios": [asdict(ratio) for ratio in ratios],
    }
    note = ""
    if not settings.search:
        note = "No search column (--no-search). "
    elif not available():
        note = f"No search column: {SKIPPED}. "
    markdown = emulated_markdown(results, ratios, settings, note)
    _finish("emulated", options.out, markdown, data)
    return 0


def cpu_settings(options: BenchOptions):
    from mpipipe.bench.cpu_settings import CpuPipelineSettings

    settings = CpuPipelineSettings(schedules=options.schedules)
    if options.quick:
        settings.d_model, settings.n_layer, settings.seq_len = 64, 4, 64
        settings.microbatch_size, settings.microbatches_per_rank, settings.steps = 2, 2, 1
    if options.steps is not None:
        settings.steps = options.steps
    return settings


def run_cpu_part(options: BenchOptions) -> int:
    from mpi4py import MPI

    from mpipipe.bench.cpu_pipeline import check_cases, run_cpu_pipelines
    from mpipipe.bench.tables import cpu_markdown
    from mpipipe.runtime.failure import abort_on_exception

    comm = MPI.COMM_WORLD
    if comm.Get_size() < 2:
        raise UsageError(
            f"mpipipe bench cpu runs a pipeline and needs at least 2 MPI ranks, got "
            f"{comm.Get_size()}: run it under mpiexec -n {CPU_RANKS}, or run `mpipipe bench all`"
        )
    settings = cpu_settings(options)
    rank0 = comm.Get_rank() == 0
    if not _agree(comm, lambda: check_cases(comm.Get_size(), settings), options.out):
        return EXIT_USAGE
    header = _header(options, comm.Get_size())
    with abort_on_exception(comm):
        results = run_cpu_pipelines(comm, settings, report=_printer(rank0))
    if not rank0:
        return 0
    data = {
        **header,
        "threads_per_rank": os.environ.get("OMP_NUM_THREADS", "unset"),
        "settings": asdict(settings),
        "results": [result.to_json() for result in results],
    }
    _finish("cpu", options.out, cpu_markdown(results, settings), data)
    return 0


def run_layers_part(options: BenchOptions) -> int:
    from mpipipe.bench import gpt_step
    from mpipipe.bench.layers import LayerSettings, blas_threads, run_layers
    from mpipipe.bench.tables import layers_markdown

    prepare_out_dir(options.out)
    settings = LayerSettings(repeats=2 if options.quick else 5)
    if options.quick:
        settings.n_layer = 1
    header = _header(options, 1)
    results, matmul = run_layers(settings)
    threads = blas_threads()
    data = {
        **header,
        "settings": asdict(settings),
        "hidden": gpt_step.HIDDEN,
        "seq_len": gpt_step.SEQ_LEN,
        "threads": threads,
        "matmul_gflops": matmul,
        "results": [result.to_json() for result in results],
    }
    markdown = layers_markdown(
        results, matmul, settings, threads, gpt_step.HIDDEN, gpt_step.SEQ_LEN
    )
    _finish("layers", options.out, markdown, data)
    return 0


def run_gpu_part(options: BenchOptions) -> int:
    from mpipipe.bench.gpu import GpuSettings, gpu_name, gpu_skip_reason, run_fused, run_gpu_models
    from mpipipe.bench.tables import gpu_markdown

    prepare_out_dir(options.out)
    settings = GpuSettings()
    if options.quick:
        settings.n_layer, settings.seq_len, settings.repeats = 2, 256, 2
    reason = gpu_skip_reason()
    header = _header(options, 1)
    models, fused, device = [], [], ""
    if reason is None:
        device = gpu_name()
        models, fused = run_gpu_models(settings), run_fused(settings)
    else:
        print(reason, flush=True)
    data = {
        **header,
        "skipped": reason,
        "device": device,
        "settings": asdict(settings),
        "models": [model.to_json() for model in models],
        "fused": [result.to_json() for result in fused],
    }
    _finish("gpu", options.out, gpu_markdown(reason, device, settings, models, fused), data)
    return 0


def run_schedules_part(options: BenchOptions) -> int:
    from mpipipe.bench.schedule_table import (
        ScheduleTableSettings,
        bubble_table,
        run_schedule_table,
    )
    from mpipipe.bench.search_cache import SearchCache, available
    from mpipipe.bench.tables import schedules_markdown

    prepare_out_dir(options.out)
    settings = ScheduleTableSettings(
        ranks=options.ranks,
        microbatch_multiples=options.microbatch_multiples,
        workers=options.workers,
        time_limit_s=time_limit(options),
    )
    if options.quick:
        settings.profiles = settings.profiles[:2]
        settings.bubble_ranks, settings.bubble_multiples = 4, [1, 2]
    header = _header(options, 1)
    cache = SearchCache(options.out, settings.time_limit_s, settings.workers)
    if not available():
        print("mpipipe bench: no search columns: the search needs OR-Tools "
              "(pip install mpipipe[search])", flush=True)
    points = run_schedule_table(settings, cache, report=_printer(True))
    bubbles = bubble_table(settings)
    data = {**header, "settings": asdict(settings), "points": [p.to_json() for p in points],
            "bubbles": {kind: {str(n): value for n, value in by_n.items()}
                        for kind, by_n in bubbles.items()}}
    markdown = schedules_markdown(points, bubbles, settings, available())
    _finish("schedules", options.out, markdown, data)
    return 0


def time_limit(options: BenchOptions) -> float:
    """Seconds per search: --time-limit, else DEFAULT_TIME_LIMIT_S (quick: QUICK_TIME_LIMIT_S)."""
    if options.time_limit_s is not None:
        return options.time_limit_s
    return QUICK_TIME_LIMIT_S if options.quick else DEFAULT_TIME_LIMIT_S


RUNNERS = {
    "emulated": run_emulated_part,
    "cpu": run_cpu_part,
    "layers": run_layers_part,
    "gpu": run_gpu_part,
    "schedules": run_schedules_part,
}


# ----- all parts from one command -------------------------------------------------------


def part_command(options: BenchOptions, launcher: Launcher, part: str) -> list[str]:
    ranks = max(options.ranks) if part == "emulated" else CPU_RANKS
    binding = ["--bind-to", "core"] if part == "cpu" and launcher.chosen_here else []
    return [
        *launcher.command, *binding, "-n", str(ranks), sys.executable, "-m", "mpipipe",
        "bench", part, *options.passthrough(part),
    ]


def readable(command: list[str]) -> str:
    """The command as a person would type it: `python`, paths relative to the current folder."""
    words = []
    for word in command:
        if word == sys.executable:
            word = "python"
        elif os.path.isabs(word) and os.path.exists(word):
            relative = os.path.relpath(word)
            word = word if relative.startswith("..") else relative
        words.append(word)
    return shlex.join(words)


def run_all(options: BenchOptions) -> int:
    """The parts asked for (MPI ones as mpiexec jobs), then README.md and bench.json from every
    part whose results are in --out."""
    launcher = find_launcher(options.mpiexec) if MPI_PARTS.intersection(options.parts) else None
    prepare_out_dir(options.out)
    for part in options.parts:
        if part not in MPI_PARTS:
            command = ["python", "-m", "mpipipe", "bench", part, *options.passthrough(part)]
            RUNNERS[part](replace(options, command=shlex.join(command)))
            continue
        command = part_command(options, launcher, part)
        shown = readable(["OMP_NUM_THREADS=1", *command])
        print(f"mpipipe bench: running {shown}", flush=True)
        environment = {
            **os.environ, **launcher.environment, "OMP_NUM_THREADS": "1", COMMAND_VARIABLE: shown
        }
        completed = subprocess.run(command, env=environment, timeout=options.timeout_s)
        if completed.returncode != 0:
            print(f"mpipipe bench: the {part} part failed (exit {completed.returncode})",
                  file=sys.stderr, flush=True)
            return completed.returncode
    _join(options.out)
    print(f"mpipipe bench: tables in {os.path.join(options.out, 'README.md')}", flush=True)
    return 0


def _join(out_dir: str) -> None:
    sections, combined = ["## Benchmarks", ""], {}
    for part in PARTS:
        if not os.path.exists(os.path.join(out_dir, f"{part}.json")):
            continue
        with open(os.path.join(out_dir, f"{part}.json")) as handle:
            combined[part] = json.load(handle)
        with open(os.path.join(out_dir, f"{part}.md")) as handle:
            sections += [handle.read().rstrip(), ""]
    with open(os.path.join(out_dir, "README.md"), "w") as handle:
        handle.write("\n".join(sections))
    with open(os.path.join(out_dir, "bench.json"), "w") as handle:
        json.dump(combined, handle, indent=1)
        handle.write("\n")


def _agree(comm, check, out_dir: str) -> bool:
    """Run `check` on every rank and test --out on rank 0; False everywhere if any failed.

    The first failing rank's message is printed, once, before any rank starts measuring.
    """
    from mpipipe.runtime.failure import SetupFailed, agree_on_setup

    def setup() -> None:
        check()
        if comm.Get_rank() == 0:
            prepare_out_dir(out_dir)

    try:
        agree_on_setup(comm, setup)
    except SetupFailed:
        return False
    return True


def _header(options: BenchOptions, ranks: int) -> dict:
    return {
        "command": options.command or report.command_line(ranks),
        "machine": report.machine_info(),
        "date": report.today(),
    }


def _finish(part: str, out_dir: str, markdown: str, data: dict) -> None:
    footer = report.provenance(data["command"], data["machine"], data["date"])
    markdown_path, _ = report.write_part(out_dir, part, f"{markdown}\n\n{footer}", data)
    print(f"mpipipe bench: {part} tables in {markdown_path}", flush=True)


def _printer(enabled: bool):
    def show(line: str) -> None:
        if enabled:
            print(line, flush=True)

    return show
