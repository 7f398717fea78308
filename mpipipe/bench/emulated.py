"""Emulated-accelerator benchmark: the real engine and real messages, compute emulated.

For every (D, N, schedule, f0, message size, cost profile) case the first D
ranks of the job train a few steps of the emulated model (see
emulated_model.py); the others sleep. The same op costs and a measured
one-way message time go into the simulator, so `measured / simulated - 1`
is the runtime's own overhead: what the engine, MPI and the host add to a
pipeline that a perfect runtime would run in exactly the simulated makespan.
Divided by the ops of the busiest rank, the same gap is the runtime's cost
per op. Every case runs with the real model's message size; the short-op
cases (small_message_f0_ms) also run with small messages, where the cost per
op is the runtime's alone and not MPI's copy of a large message.

A cost profile F,B,W sets every op's cost (I = B − W) and is the run's
parallel.costs, so each schedule trains its order planned for the profile.
The first profile runs at every f0; the others at profile_f0_ms. Beside
each case, the search's best makespan for the schedule's placement at the
profile (no latency; search_cache.py), where OR-Tools is installed.
"""

from __future__ import annotations

import statistics
from dataclasses import asdict, dataclass, field, replace

import numpy as np

from mpipipe.bench.bare_pipeline import BarePipeline
from mpipipe.bench.cost_profiles import EMULATED_PROFILES
from mpipipe.bench.emulated_device import emulated_accelerator
from mpipipe.bench.emulated_model import (
    ZeroBatcher,
    emulated_model,
    emulated_stage_factory,
    stage_costs,
)
from mpipipe.bench.mpi_tools import idle_barrier, one_way_seconds
from mpipipe.bench.search_cache import (
    DEFAULT_TIME_LIMIT_S,
    SearchCache,
    available,
    same_model_costs,
)
from mpipipe.config.schema import Config
from mpipipe.plan import plan_run
from mpipipe.runtime.mpi_helpers import first_ranks
from mpipipe.schedules import SCHEDULE_KINDS, build_schedule, can_run
from mpipipe.schedules.ops import OpType
from mpipipe.schedules.search.hint import GENERATOR_OF
from mpipipe.schedules.simulate import simulate
from mpipipe.trainer import Trainer

FLAGSHIPS = ("bitpipe-zb", "bitpipe")  # whose throughput over every other schedule is shown
PAPER_RATIOS = (1.05, 1.28)  # BitPipe's reported speed-up over the best synchronous schedules
# The placement (and whether backwards are split) whose search each kind is set against;
# gpipe has 1F1B's placement, dualpipev's mix of whole and split backwards has no search.
SEARCH_PLACEMENT = {kind: key for key, kind in GENERATOR_OF.items()} | {"gpipe": ("1f1b", False)}


@dataclass
class EmulatedSettings:
    ranks: list[int] = field(default_factory=lambda: [4, 8])
    microbatch_multiples: list[int] = field(default_factory=lambda: [1, 2, 4])  # N = k * D
    schedules: list[str] = field(default_factory=lambda: list(SCHEDULE_KINDS))
    f0_ms: list[float] = field(default_factory=lambda: [1.0, 2.0, 20.0, 40.0])
    # f0 values whose cases run once more with messages of small_message_bytes
    small_message_f0_ms: list[float] = field(default_factory=lambda: [1.0, 2.0])
    small_message_bytes: int = 64 * 1024
    profiles: list[str] = field(default_factory=lambda: list(EMULATED_PROFILES))
    profile_f0_ms: list[float] = field(default_factory=lambda: [20.0])  # profiles after the first
    search: bool = True  # the column of the search's best (needs OR-Tools)
    search_time_limit_s: float = DEFAULT_TIME_LIMIT_S
    search_workers: int = 2
    d_model: int = 1024
    seq_len: int = 1024
    microbatch_size: int = 1
    warmup_steps: int = 1
    steps: int = 4

    @property
    def message_bytes(self) -> int:
        """The real model's message: one micro-batch of hidden states."""
        return self.microbatch_size * self.seq_len * self.d_model * np.dtype(np.float32).itemsize

    def channels(self, message_bytes: int) -> int:
        """The emulated model's width that makes its messages `message_bytes` long."""
        per_channel = self.microbatch_size * self.seq_len * np.dtype(np.float32).itemsize
        return max(1, message_bytes // per_channel)

    def message_sizes(self) -> list[int]:
        sizes = [self.message_bytes]
        if self.small_message_f0_ms and self.small_message_bytes != self.message_bytes:
            sizes.append(self.small_message_bytes)
        return sizes

    def cases(self, ranks: int) -> list[tuple[int, str, float, int, str]]:
        """(N, schedule, f0 in seconds, message bytes, profile) of every case on `ranks`
        pipeline ranks that the schedule can run (dualpipev, for one, needs N >= 2D)."""
        first, *others = self.profiles
        sized = [(first, f0_ms, self.message_bytes) for f0_ms in self.f0_ms]
        if self.small_message_bytes != self.message_bytes:
            sized += [(first, f0_ms, self.small_message_bytes)
                      for f0_ms in self.small_message_f0_ms]
        sized += [(profile, f0_ms, self.message_bytes)
                  for profile in others for f0_ms in self.profile_f0_ms]
        return [
            (multiple * ranks, kind, f0_ms / 1e3, message_bytes, profile)
            for profile, f0_ms, message_bytes in sized
            for multiple in self.microbatch_multiples
            for kind in self.schedules
            if can_run(kind, ranks, multiple * ranks)
        ]


@dataclass
class EmulatedResult:
    schedule: str
    ranks: int
    microbatches: int
    stages: int
    f0_s: float
    latency_s: float  # measured one-way time of one message, fed to the simulator
    step_s: float  # median trainer step: forward-backward, syncs, optimizer, statistics
    window_s: float  # median first-op-start to last-op-end over ranks
    simulated_s: float  # the simulator's makespan with the same costs and latency
    bubble: float  # measured, mean over ranks: 1 - compute / window
    simulated_bubble: float  # mean over ranks: idle / makespan
    compute_excess: float  # measured compute time / the device time asked for - 1
    wait_fraction: float  # mean over ranks: time blocked on messages and syncs / window
    step_samples_s: list[float]
    window_samples_s: list[float]
    message_bytes: int = 0  # of each activation and gradient message
    busiest_ops: int = 0  # F, B, I and W ops of the rank that runs the most of them
    profile: str = EMULATED_PROFILES[0]  # F,B,W of the op costs and of the planned order
    search_s: float | None = None  # the search's best for the placement, no latency
    # Median window of the same schedule run by the smallest MPI loop (bare_pipeline.py)
    bare_window_s: float | None = None

    @property
    def overhead(self) -> float:
        return self.step_s / self.simulated_s - 1.0

    @property
    def per_op_overhead_s(self) -> float:
        """(step - simulated) / the ops of the busiest rank: the runtime's cost per op."""
        return (self.step_s - self.simulated_s) / max(1, self.busiest_ops)

    @property
    def engine_per_op_s(self) -> float | None:
        """(window - the bare loop's window) / the ops of the busiest rank: what the engine
        adds per op over the smallest MPI loop running the same schedule."""
        if self.bare_window_s is None:
            return None
        return (self.window_s - self.bare_window_s) / max(1, self.busiest_ops)

    @property
    def window_overhead(self) -> float:
        return self.window_s / self.simulated_s - 1.0

    def to_json(self) -> dict:
        return {
            **asdict(self),
            "overhead": self.overhead,
            "window_overhead": self.window_overhead,
            "per_op_overhead_s": self.per_op_overhead_s,
            "engine_per_op_s": self.engine_per_op_s,
        }


def bench_config(
    kind: str, ranks: int, microbatches: int, settings: EmulatedSettings,
    profile: str = EMULATED_PROFILES[0],
) -> Config:
    config = Config()
    config.data.source = "random"
    config.data.microbatch_size = settings.microbatch_size
    config.model.seq_len = settings.seq_len
    config.parallel.schedule = kind
    config.parallel.pipeline = ranks
    config.parallel.microbatches = microbatches
    config.parallel.costs = profile  # each computed order planned for the costs it runs
    config.runtime.device = "cpu"
    config.runtime.trace = False
    config.runtime.timeout_s = 120.0
    config.train.steps = settings.warmup_steps + settings.steps
    return config


def run_case(
    comm, kind: str, microbatches: int, f0_s: float, settings: EmulatedSettings,
    message_bytes: int | None = None, profile: str = EMULATED_PROFILES[0],
) -> EmulatedResult:
    """Train the emulated model on every rank of `comm` with messages of `message_bytes` (by
    default the real model's) and op costs of `profile`; the result is the same on every
    rank.

    The one-way message time is measured just before the case and again just after, and the
    simulator gets the faster of the two: on a shared machine a copy between two processes
    slows down by several times for seconds at a time, so one measurement for a whole run
    can fall in a slow stretch."""
    ranks = comm.Get_size()
    message_bytes = message_bytes or settings.message_bytes
    latency_before_s = one_way_seconds(comm, message_bytes)
    config = bench_config(kind, ranks, microbatches, settings, profile)
    model = emulated_model(
        settings.channels(message_bytes), settings.seq_len, body_layers=2 * ranks
    )
    batcher = ZeroBatcher(settings.microbatch_size, settings.seq_len)
    plan = plan_run(config, ranks, comm.Get_rank(), model=model, batcher=batcher)
    costs = stage_costs(f0_s, ranks, plan.schedule.stages, profile)
    device = emulated_accelerator()
    factory = emulated_stage_factory(
        model, plan.stage_layers, settings.microbatch_size, costs, device
    )
    trainer = Trainer(plan, comm=comm, backend=device, stage_factory=factory, verbose=False)
    rows = [trainer.train_step() for _ in range(settings.warmup_steps + settings.steps)]
    trainer.finish()
    timed = rows[settings.warmup_steps :]
    bare_window_s = BarePipeline(comm, plan, costs, device).window_seconds(
        settings.warmup_steps, settings.steps
    )
    latency_s = min(latency_before_s, one_way_seconds(comm, message_bytes))
    simulation = simulate(
        plan.schedule, replace(stage_costs(f0_s, ranks, ranks, profile), latency=latency_s),
        scale_by_stage_size=True,
    )
    asked = simulation.busy
    return EmulatedResult(
        schedule=kind,
        ranks=ranks,
        microbatches=microbatches,
        stages=plan.schedule.stages,
        f0_s=f0_s,
        latency_s=latency_s,
        step_s=statistics.median(row["step_time_s"] for row in timed),
        window_s=statistics.median(row["window_s"] for row in timed),
        simulated_s=simulation.makespan,
        bubble=statistics.median(row["bubble_mean"] for row in timed),
        simulated_bubble=statistics.mean(simulation.bubble),
        compute_excess=statistics.median(
            statistics.mean(row["compute_s"]) / statistics.mean(asked) - 1.0 for row in timed
        ),
        wait_fraction=statistics.median(
            statistics.mean(row["wait_s"]) / row["window_s"] for row in timed
        ),
        step_samples_s=[row["step_time_s"] for row in timed],
        window_samples_s=[row["window_s"] for row in timed],
        message_bytes=message_bytes,
        busiest_ops=max(
            sum(op.type is not OpType.SYNC for op in rank_ops) for rank_ops in plan.schedule.ops
        ),
        profile=profile,
        bare_window_s=bare_window_s,
    )


def check_cases(settings: EmulatedSettings) -> None:
    """Raise UsageError for the first (schedule, D, N) of `settings` that cannot be built."""
    for ranks in settings.ranks:
        for microbatches, kind, _, _, _ in settings.cases(ranks):
            build_schedule(kind, ranks, microbatches)


def run_emulated(comm, settings: EmulatedSettings, report=print) -> list[EmulatedResult]:
    """Every case of `settings`; ranks beyond a case's D sleep. Results on rank 0, [] elsewhere."""
    results = []
    for ranks in settings.ranks:
        sub = first_ranks(comm, ranks)
        if sub is not None:
            for microbatches, kind, f0_s, size, profile in settings.cases(ranks):
                result = run_case(
                    sub, kind, microbatches, f0_s, settings, message_bytes=size, profile=profile
                )
                if comm.Get_rank() == 0:
                    results.append(result)
                    report(progress_line(result))
            sub.Free()
        idle_barrier(comm)
    return results


def message_text(nbytes: int) -> str:
    return f"{nbytes / 2**20:g} MiB" if nbytes >= 2**20 else f"{nbytes / 2**10:g} KiB"


def progress_line(result: EmulatedResult) -> str:
    return (
        f"emulated D={result.ranks} N={result.microbatches} {result.schedule} "
        f"F,B,W={result.profile} f0={result.f0_s * 1e3:g} ms {message_text(result.message_bytes)}: "
        f"step {result.step_s * 1e3:.1f} ms, simulated {result.simulated_s * 1e3:.1f} ms, "
        f"overhead {100 * result.overhead:+.1f}% ({result.per_op_overhead_s * 1e6:+.0f} us per op)"
        + ("" if result.bare_window_s is None else
           f"; window {result.window_s * 1e3:.1f} ms, bare MPI loop "
           f"{result.bare_window_s * 1e3:.1f} ms ({result.engine_per_op_s * 1e6:+.0f} us per op)")
    )


def add_searches(results: list[EmulatedResult], cache: SearchCache,
                 report=print) -> None:
    """Set each result's search_s: the search's best for its schedule's placement, at its
    profile on the same model (in f0 units, so times f0), without latency."""
    for result in results:
        placement = SEARCH_PLACEMENT.get(result.schedule)
        if placement is None:
            continue
        name, split = placement
        costs = same_model_costs(result.profile, name, result.ranks)
        figures = cache.figures(name, result.ranks, result.microbatches, costs, split)
        result.search_s = figures.best * result.f0_s
    if results:
        report(f"emulated: search figures for {len(results)} cases in {cache.path}")


def search_cache(settings: EmulatedSettings, out_dir: str) -> SearchCache | None:
    """The search cache the emulated part reads and fills, or None when it does not search."""
    if not (settings.search and available()):
        return None
    return SearchCache(out_dir, settings.search_time_limit_s, settings.search_workers)


@dataclass
class FlagshipRatio:
    flagship: str  # bitpipe-zb or bitpipe
    profile: str
    ranks: int
    microbatches: int
    f0_s: float
    rival: str
    measured: float  # rival's step time / the flagship's
    simulated: float


def flagship_ratios(results: list[EmulatedResult]) -> list[FlagshipRatio]:
    """Each flagship's throughput over every other schedule at the same profile, D, N and f0,
    measured and simulated (with the real model's messages, the largest of the run)."""
    largest = max((r.message_bytes for r in results), default=0)
    by_case = {
        (r.profile, r.ranks, r.microbatches, r.f0_s, r.schedule): r
        for r in results
        if r.message_bytes == largest
    }
    ratios = []
    for flagship in FLAGSHIPS:
        for (profile, ranks, microbatches, f0_s, kind), ours in by_case.items():
            if kind != flagship:
                continue
            for rival in SCHEDULE_KINDS:
                other = by_case.get((profile, ranks, microbatches, f0_s, rival))
                if rival != flagship and other is not None:
                    ratios.append(FlagshipRatio(
                        flagship, profile, ranks, microbatches, f0_s, rival,
                        measured=other.step_s / ours.step_s,
                        simulated=other.simulated_s / ours.simulated_s,
                    ))
    return ratios
