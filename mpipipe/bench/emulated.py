"""Emulated-accelerator benchmark: the real engine and real messages, compute emulated.

For every (D, N, schedule, f0) case the first D ranks of the job train a few
steps of the emulated model (see emulated_model.py); the others sleep. The
same op costs and a measured one-way message time go into the simulator,
so `measured / simulated - 1` is the runtime's own overhead: what the
engine, MPI and the host add to a pipeline that a perfect runtime would run
in exactly the simulated makespan.
"""

from __future__ import annotations

import statistics
from dataclasses import asdict, dataclass, field

import numpy as np

from mpipipe.bench.emulated_device import emulated_accelerator
from mpipipe.bench.emulated_model import (
    ZeroBatcher,
    emulated_model,
    emulated_stage_factory,
    stage_costs,
)
from mpipipe.bench.mpi_tools import idle_barrier, one_way_seconds
from mpipipe.config.schema import Config
from mpipipe.plan import plan_run
from mpipipe.runtime.mpi_helpers import first_ranks
from mpipipe.schedules import SCHEDULE_KINDS, build_schedule, can_run
from mpipipe.schedules.simulate import OpCosts, simulate
from mpipipe.trainer import Trainer

BITPIPE_RIVALS = ("1f1b", "interleaved", "chimera", "zb-v")
PAPER_RATIOS = (1.05, 1.28)  # BitPipe's reported speed-up over the best synchronous schedules


@dataclass
class EmulatedSettings:
    ranks: list[int] = field(default_factory=lambda: [4, 8])
    microbatch_multiples: list[int] = field(default_factory=lambda: [1, 2, 4])  # N = k * D
    schedules: list[str] = field(default_factory=lambda: list(SCHEDULE_KINDS))
    f0_ms: list[float] = field(default_factory=lambda: [20.0, 40.0])
    d_model: int = 1024
    seq_len: int = 1024
    microbatch_size: int = 1
    warmup_steps: int = 1
    steps: int = 4

    @property
    def message_bytes(self) -> int:
        return self.microbatch_size * self.seq_len * self.d_model * np.dtype(np.float32).itemsize

    def cases(self, ranks: int) -> list[tuple[int, str, float]]:
        """(N, schedule, f0 in seconds) of every case on `ranks` pipeline ranks that the
        schedule can run (dualpipev, for one, needs N >= 2D)."""
        return [
            (multiple * ranks, kind, f0_ms / 1e3)
            for f0_ms in self.f0_ms
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

    @property
    def overhead(self) -> float:
        return self.step_s / self.simulated_s - 1.0

    @property
    def window_overhead(self) -> float:
        return self.window_s / self.simulated_s - 1.0

    def to_json(self) -> dict:
        return {
            **asdict(self),
            "overhead": self.overhead,
            "window_overhead": self.window_overhead,
        }


def bench_config(kind: str, ranks: int, microbatches: int, settings: EmulatedSettings) -> Config:
    config = Config()
    config.data.source = "random"
    config.data.microbatch_size = settings.microbatch_size
    config.model.seq_len = settings.seq_len
    config.parallel.schedule = kind
    config.parallel.pipeline = ranks
    config.parallel.microbatches = microbatches
    config.runtime.device = "cpu"
    config.runtime.trace = False
    config.runtime.timeout_s = 120.0
    config.train.steps = settings.warmup_steps + settings.steps
    return config


def run_case(
    comm, kind: str, microbatches: int, f0_s: float, latency_s: float, settings: EmulatedSettings
) -> EmulatedResult:
    """Train the emulated model on every rank of `comm`; the result is the same on every rank."""
    ranks = comm.Get_size()
    config = bench_config(kind, ranks, microbatches, settings)
    model = emulated_model(settings.d_model, settings.seq_len, body_layers=2 * ranks)
    batcher = ZeroBatcher(settings.microbatch_size, settings.seq_len)
    plan = plan_run(config, ranks, comm.Get_rank(), model=model, batcher=batcher)
    costs = stage_costs(f0_s, ranks, plan.schedule.stages)
    device = emulated_accelerator()
    factory = emulated_stage_factory(
        model, plan.stage_layers, settings.microbatch_size, costs, device
    )
    trainer = Trainer(plan, comm=comm, backend=device, stage_factory=factory, verbose=False)
    rows = [trainer.train_step() for _ in range(settings.warmup_steps + settings.steps)]
    trainer.finish()
    timed = rows[settings.warmup_steps :]
    simulation = simulate(
        plan.schedule, OpCosts(forward=f0_s, backward=2 * f0_s, latency=latency_s),
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
    )


def check_cases(settings: EmulatedSettings) -> None:
    """Raise UsageError for the first (schedule, D, N) of `settings` that cannot be built."""
    for ranks in settings.ranks:
        for microbatches, kind, _ in settings.cases(ranks):
            build_schedule(kind, ranks, microbatches)


def run_emulated(comm, settings: EmulatedSettings, report=print) -> list[EmulatedResult]:
    """Every case of `settings`; ranks beyond a case's D sleep. Results on rank 0, [] elsewhere."""
    results = []
    for ranks in settings.ranks:
        sub = first_ranks(comm, ranks)
        if sub is not None:
            latency_s = one_way_seconds(sub, settings.message_bytes)
            for microbatches, kind, f0_s in settings.cases(ranks):
                result = run_case(sub, kind, microbatches, f0_s, latency_s, settings)
                if comm.Get_rank() == 0:
                    results.append(result)
                    report(progress_line(result))
            sub.Free()
        idle_barrier(comm)
    return results


def progress_line(result: EmulatedResult) -> str:
    return (
        f"emulated D={result.ranks} N={result.microbatches} {result.schedule} "
        f"f0={result.f0_s * 1e3:g} ms: step {result.step_s * 1e3:.1f} ms, simulated "
        f"{result.simulated_s * 1e3:.1f} ms, overhead {100 * result.overhead:+.1f}%"
    )


@dataclass
class BitpipeRatio:
    ranks: int
    microbatches: int
    f0_s: float
    rival: str
    measured: float  # rival's step time / BitPipe's
    simulated: float


def bitpipe_ratios(results: list[EmulatedResult]) -> list[BitpipeRatio]:
    """BitPipe's throughput over each rival at the same D, N and f0, measured and simulated."""
    by_case = {(r.ranks, r.microbatches, r.f0_s, r.schedule): r for r in results}
    ratios = []
    for (ranks, microbatches, f0_s, kind), bitpipe in by_case.items():
        if kind != "bitpipe":
            continue
        for rival in BITPIPE_RIVALS:
            other = by_case.get((ranks, microbatches, f0_s, rival))
            if other is not None:
                ratios.append(BitpipeRatio(
                    ranks, microbatches, f0_s, rival,
                    measured=other.step_s / bitpipe.step_s,
                    simulated=other.simulated_s / bitpipe.simulated_s,
                ))
    return ratios
