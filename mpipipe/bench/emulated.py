"""Emulated-accelerator benchmark: the real engine and real messages, compute emulated.

For every (D, N, schedule, f0, message size) case the first D ranks of the
job train a few steps of the emulated model (see emulated_model.py); the
others sleep. The same op costs and a measured one-way message time go into
the simulator, so `measured / simulated - 1` is the runtime's own overhead:
what the engine, MPI and the host add to a pipeline that a perfect runtime
would run in exactly the simulated makespan. Divided by the ops of the
busiest rank, the same gap is the runtime's cost per op. Every case runs
with the real model's message size; the short-op cases (small_message_f0_ms)
also run with small messages, where the cost per op is the runtime's alone
and not MPI's copy of a large message.
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
from mpipipe.schedules.ops import OpType
from mpipipe.schedules.simulate import OpCosts, simulate
from mpipipe.trainer import Trainer

BITPIPE_RIVALS = ("1f1b", "interleaved", "chimera", "zb-v")
PAPER_RATIOS = (1.05, 1.28)  # BitPipe's reported speed-up over the best synchronous schedules


@dataclass
class EmulatedSettings:
    ranks: list[int] = field(default_factory=lambda: [4, 8])
    microbatch_multiples: list[int] = field(default_factory=lambda: [1, 2, 4])  # N = k * D
    schedules: list[str] = field(default_factory=lambda: list(SCHEDULE_KINDS))
    f0_ms: list[float] = field(default_factory=lambda: [1.0, 2.0, 20.0, 40.0])
    # f0 values whose cases run once more with messages of small_message_bytes
    small_message_f0_ms: list[float] = field(default_factory=lambda: [1.0, 2.0])
    small_message_bytes: int = 64 * 1024
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

    def cases(self, ranks: int) -> list[tuple[int, str, float, int]]:
        """(N, schedule, f0 in seconds, message bytes) of every case on `ranks` pipeline ranks
        that the schedule can run (dualpipev, for one, needs N >= 2D)."""
        sized = [(f0_ms, self.message_bytes) for f0_ms in self.f0_ms]
        if self.small_message_bytes != self.message_bytes:
            sized += [(f0_ms, self.small_message_bytes) for f0_ms in self.small_message_f0_ms]
        return [
            (multiple * ranks, kind, f0_ms / 1e3, message_bytes)
            for f0_ms, message_bytes in sized
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

    @property
    def overhead(self) -> float:
        return self.step_s / self.simulated_s - 1.0

    @property
    def per_op_overhead_s(self) -> float:
        """(step - simulated) / the ops of the busiest rank: the runtime's cost per op."""
        return (self.step_s - self.simulated_s) / max(1, self.busiest_ops)

    @property
    def window_overhead(self) -> float:
        return self.window_s / self.simulated_s - 1.0

    def to_json(self) -> dict:
        return {
            **asdict(self),
            "overhead": self.overhead,
            "window_overhead": self.window_overhead,
            "per_op_overhead_s": self.per_op_overhead_s,
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
    comm, kind: str, microbatches: int, f0_s: float, latency_s: float, settings: EmulatedSettings,
    message_bytes: int | None = None,
) -> EmulatedResult:
    """Train the emulated model on every rank of `comm` with messages of `message_bytes` (by
    default the real model's); the result is the same on every rank."""
    ranks = comm.Get_size()
    message_bytes = message_bytes or settings.message_bytes
    config = bench_config(kind, ranks, microbatches, settings)
    model = emulated_model(
        settings.channels(message_bytes), settings.seq_len, body_layers=2 * ranks
    )
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
        message_bytes=message_bytes,
        busiest_ops=max(
            sum(op.type is not OpType.SYNC for op in rank_ops) for rank_ops in plan.schedule.ops
        ),
    )


def check_cases(settings: EmulatedSettings) -> None:
    """Raise UsageError for the first (schedule, D, N) of `settings` that cannot be built."""
    for ranks in settings.ranks:
        for microbatches, kind, _, _ in settings.cases(ranks):
            build_schedule(kind, ranks, microbatches)


def run_emulated(comm, settings: EmulatedSettings, report=print) -> list[EmulatedResult]:
    """Every case of `settings`; ranks beyond a case's D sleep. Results on rank 0, [] elsewhere."""
    results = []
    for ranks in settings.ranks:
        sub = first_ranks(comm, ranks)
        if sub is not None:
            latencies = {size: one_way_seconds(sub, size) for size in settings.message_sizes()}
            for microbatches, kind, f0_s, size in settings.cases(ranks):
                result = run_case(
                    sub, kind, microbatches, f0_s, latencies[size], settings, message_bytes=size
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
        f"f0={result.f0_s * 1e3:g} ms {message_text(result.message_bytes)}: step "
        f"{result.step_s * 1e3:.1f} ms, simulated {result.simulated_s * 1e3:.1f} ms, overhead "
        f"{100 * result.overhead:+.1f}% ({result.per_op_overhead_s * 1e6:+.0f} us per op)"
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
    """BitPipe's throughput over each rival at the same D, N and f0, measured and simulated
    (with the real model's messages, the largest of the run)."""
    largest = max((r.message_bytes for r in results), default=0)
    by_case = {
        (r.ranks, r.microbatches, r.f0_s, r.schedule): r
        for r in results
        if r.message_bytes == largest
    }
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
