"""A training run on an MPI job: parameters, engine, optimizer, metrics, trace.

    plan = plan_run(config, comm.Get_size(), comm.Get_rank())
    trainer = Trainer(plan, comm=comm, backend=backend, out_dir="runs/x")
    trainer.run()

The same object serves the `mpipipe train` command, the Python API and the
tests (which run several layouts side by side on sub-communicators).
"""

from __future__ import annotations

import os
import time

from mpipipe.engine import Engine, StepStats
from mpipipe.metrics import MetricsWriter
from mpipipe.optim import ParamGroup, build_optimizer, clip_coefficient, learning_rate
from mpipipe.plan import RunPlan
from mpipipe.progress import Progress
from mpipipe.runtime.failure import CollectiveStop
from mpipipe.runtime.faults import FaultInjector
from mpipipe.runtime.params import ParamStore
from mpipipe.runtime.timeline import Timeline, rank0_clock_offset, write_chrome_trace
from mpipipe.runtime.watchdog import Watchdog


def optimizer_groups(store: ParamStore, weight_decay: float) -> list[ParamGroup]:
    """Two groups per bucket: the decayed matrices first, then the undecayed vectors."""
    groups = []
    for bucket in store.buckets:
        split = bucket.decay_size
        if split:
            groups.append(ParamGroup(bucket.param[:split], bucket.grad[:split], weight_decay))
        if split < bucket.size:
            groups.append(ParamGroup(bucket.param[split:], bucket.grad[split:], 0.0))
    return groups


class Trainer:
    def __init__(
        self,
        plan: RunPlan,
        *,
        comm,
        backend,
        out_dir: str | None = None,
        cuda_aware: bool = False,
        compute_factory=None,
        verbose: bool = True,
    ):
        self.plan = plan
        self.config = plan.config
        self.comm = comm
        self.backend = backend
        self.out_dir = out_dir
        self.rank = comm.Get_rank()
        runtime = self.config.runtime
        self.watchdog = Watchdog(self.rank, runtime.timeout_s, dump_dir=out_dir)
        traced_steps = runtime.trace_steps if runtime.trace else 0
        self.timeline = Timeline(self.rank, rank0_clock_offset(comm), max_steps=traced_steps)
        self.store = ParamStore.create(
            plan.model, plan.stage_layers, plan.schedule.placement, plan.grid, backend,
            self.config.train.seed,
        )
        self.optimizer = build_optimizer(
            optimizer_groups(self.store, self.config.optim.weight_decay), self.config.optim
        )
        self.engine = Engine(
            comm=comm,
            grid=plan.grid,
            schedule=plan.schedule,
            model=plan.model,
            stage_layers=plan.stage_layers,
            store=self.store,
            backend=backend,
            batcher=plan.batcher,
            microbatch_size=self.config.data.microbatch_size,
            watchdog=self.watchdog,
            timeline=self.timeline,
            cuda_aware=cuda_aware,
            recv_window=runtime.recv_window,
            compute_factory=compute_factory,
            faults=FaultInjector(self.rank),
        )
        self.step = 0
        writes = out_dir is not None and self.rank == 0
        self.metrics = MetricsWriter(os.path.join(out_dir, "metrics.jsonl") if writes else None)
        self.verbose = verbose and self.rank == 0

    def train_step(self) -> dict:
        """One optimizer step; returns its metrics row (the same on every rank)."""
        optim = self.config.optim
        learning = learning_rate(self.step, optim, self.config.train.steps)
        started = time.perf_counter()
        stats = self.engine.forward_backward(self.step)
        applied = stats.finite
        if not stats.finite:
            self._on_non_finite(stats)
        else:
            scale = clip_coefficient(stats.grad_norm, optim.grad_clip)
            self.optimizer.step(learning, grad_scale=scale)
        self.backend.synchronize()
        step_time = time.perf_counter() - started
        row = self._row(stats, learning, step_time, applied)
        self.metrics.write(row)
        self.step += 1
        return row

    def _on_non_finite(self, stats: StepStats) -> None:
        what = f"step {self.step}: loss {stats.loss} and gradient norm {stats.grad_norm}"
        if self.config.train.on_nan == "stop":
            raise CollectiveStop(
                f"{what} are not finite; stopping (train.on_nan = 'stop'; use 'skip' to skip "
                "such steps)"
            )
        if self.verbose:
            print(
                f"mpipipe: warning: {what} are not finite; skipping the optimizer step "
                "(train.on_nan = 'skip')",
                flush=True,
            )

    def _row(self, stats: StepStats, learning: float, step_time: float, applied: bool) -> dict:
        bubble = stats.bubble
        return {
            "step": self.step,
            "loss": stats.loss,
            "lr": learning,
            "grad_norm": stats.grad_norm,
            "step_time_s": step_time,
            "tokens_per_s": self.plan.tokens_per_step / step_time if step_time > 0 else 0.0,
            "bubble": bubble,
            "bubble_mean": sum(bubble) / len(bubble),
            "compute_s": stats.compute_s,
            "wait_s": stats.wait_s,
            "window_s": stats.window_s,
            "peak_activations": stats.peak_activations,
            "applied": applied,
        }

    def run(self, steps: int | None = None, progress: Progress | None = None) -> list[dict]:
        """Train until config.train.steps (or `steps` more); returns the metrics rows."""
        last = self.config.train.steps if steps is None else self.step + steps
        rows = []
        while self.step < last:
            row = self.train_step()
            rows.append(row)
            if progress is not None:
                progress.update(row, last=self.step == last)
        return rows

    def finish(self) -> None:
        """Write the trace and close files (collective: every rank calls it)."""
        if self.out_dir is not None and self.config.runtime.trace:
            write_chrome_trace(self.comm, self.timeline, os.path.join(self.out_dir, "trace.json"))
        self.metrics.close()
