"""A training run on an MPI job: parameters, engine, optimizer, metrics, trace.

    plan = plan_run(config, comm.Get_size(), comm.Get_rank())
    trainer = Trainer(plan, comm=comm, backend=backend, out_dir="runs/x")
    trainer.run()

The same object serves the `mpipipe train` command, the Python API and the
tests (which run several layouts side by side on sub-communicators).

Precision (runtime.precision, mpipipe.precision): the store keeps float32
master weights beside the layers' working copies, the engine sends
activations in the compute type, and under fp16 a `LossScaler` scales the
backward; a step in which some rank's gradients overflowed is skipped on
every rank and halves the scale. Evaluation (train.eval_every) runs the
schedule's forwards on the held-out batches and adds `eval_loss` to the row.

Checkpoints (with a run folder): `run` saves every checkpoint.every steps,
at the end of training, and when a stop was requested (SIGTERM on any rank,
see `request_stop`), after which it returns with `preempted` set. `resume`
loads a checkpoint of any layout and continues exactly where it left off.
"""

from __future__ import annotations

import json
import math
import os
import time
from collections.abc import Callable

from mpipipe.checkpoint.folder import checkpoint_name, prune, remove_partials
from mpipipe.checkpoint.load import load_checkpoint, resolve_resume
from mpipipe.checkpoint.plan_record import read_plan_record
from mpipipe.checkpoint.save import (
    RunState,
    SavedCheckpoint,
    save_checkpoint,
    use_parallel_hdf5,
)
from mpipipe.engine import Engine, EngineOptions
from mpipipe.layers.memory import live_bytes
from mpipipe.metrics import MetricsWriter
from mpipipe.optim import (
    LossScaler,
    ParamGroup,
    build_optimizer,
    clip_coefficient,
    learning_rate,
)
from mpipipe.plan import RunPlan
from mpipipe.precision import Precision
from mpipipe.progress import Progress
from mpipipe.replanning import Replanning
from mpipipe.runtime.ctrl_c import CTRL_C
from mpipipe.runtime.failure import CollectiveStop
from mpipipe.runtime.faults import faults_from_environment
from mpipipe.runtime.params import ParamStore, Span
from mpipipe.runtime.phase_watchdog import PhaseWatchdog
from mpipipe.runtime.rendezvous import Rendezvous
from mpipipe.runtime.stage import StageFactory
from mpipipe.runtime.step_stats import StepStats
from mpipipe.runtime.timeline import Timeline, rank0_clock_offset, write_chrome_trace
from mpipipe.runtime.watchdog import Watchdog

# Assumed time of a save before the first one has been measured.
SAVE_ESTIMATE_S = 10.0


def optimizer_groups(store: ParamStore, weight_decay: float) -> list[ParamGroup]:
    """One group per span of each bucket, keyed by the span (checkpoints find its state so).

    Under ZeRO-1 a sharded bucket's groups are its spans' parts in this rank's shard, over
    the shard's master weights and summed gradient, keyed by those parts."""
    groups = []
    for bucket in store.buckets:
        for span in bucket.spans():
            decay = weight_decay if span.decayed else 0.0
            shard = bucket.shard
            if shard is None:
                groups.append(ParamGroup(bucket.param[span.start : span.end],
                                         bucket.grad[span.start : span.end], decay, key=span))
                continue
            part = shard.overlap(span.start, span.end)
            if part is None:
                continue
            low, high = part[0] - shard.start, part[1] - shard.start
            groups.append(ParamGroup(bucket.master_shard[low:high], bucket.grad_shard[low:high],
                                     decay, key=Span(bucket.index, *part, span.decayed)))
    return groups


def memory_fields(stats: StepStats) -> dict:
    """The step's measured memory per rank, and the most any rank held (and which)."""
    peak_rank = max(range(len(stats.memory_bytes)), key=stats.memory_bytes.__getitem__)
    return {
        "memory_bytes": stats.memory_bytes,
        "activation_bytes": stats.activation_bytes,
        "rss_bytes": stats.rss_bytes,
        "memory_peak_bytes": stats.memory_bytes[peak_rank],
        "memory_peak_rank": peak_rank,
    }


class Trainer:
    def __init__(
        self,
        plan: RunPlan,
        *,
        comm,
        backend,
        out_dir: str | None = None,
        cuda_aware: bool = False,
        stage_factory: StageFactory | None = None,
        verbose: bool = True,
        resuming: bool = False,
        phases: PhaseWatchdog | None = None,
        op_clock: Callable[[], float] | None = None,
    ):
        """`op_clock` times the ops' compute (default MPI.Wtime; a test gives its own)."""
        self.plan = plan
        self.config = plan.config
        self.comm = comm
        self.backend = backend
        self.out_dir = out_dir
        self.rank = comm.Get_rank()
        runtime = self.config.runtime
        self.watchdog = Watchdog(self.rank, runtime.timeout_s, dump_dir=out_dir)
        # Saves and resumes meet here, under the phase watchdog (runtime/rendezvous.py).
        self.phases = phases or PhaseWatchdog(self.rank, runtime.timeout_s, dump_dir=out_dir)
        self.rendezvous = Rendezvous(comm, self.phases)
        traced_steps = runtime.trace_steps if runtime.trace else 0
        self.timeline = Timeline(self.rank, rank0_clock_offset(comm), max_steps=traced_steps)
        self.precision = Precision.of(runtime.precision, backend.dtype)
        if backend.is_gpu:
            from mpipipe.fused.cublas import set_tf32

            set_tf32(self.precision.tf32)
        self.store = ParamStore.create(
            plan.model, plan.stage_layers, plan.schedule.placement, plan.grid, backend,
            self.config.train.seed, compute_dtype=self.precision.compute,
            zero=self.config.parallel.zero,
        )
        scaling = self.precision.loss_scaling
        self.scaler = LossScaler(
            scale=runtime.loss_scale if scaling else 1.0, window=runtime.loss_scale_window,
            enabled=scaling,
        )
        self.optimizer = build_optimizer(
            optimizer_groups(self.store, self.config.optim.weight_decay), self.config.optim
        )
        self.faults = faults_from_environment(self.rank)
        self.engine = Engine(
            plan,
            self.store,
            comm=comm,
            backend=backend,
            watchdog=self.watchdog,
            timeline=self.timeline,
            options=EngineOptions(
                recv_window=runtime.recv_window, cuda_aware=cuda_aware, clock=op_clock,
                message_dtype=self.precision.compute,
            ),
            faults=self.faults,
            stage_factory=stage_factory,
        )
        self.engine.held_elsewhere_bytes = live_bytes(self.optimizer.state)
        self.step = 0
        self.started = time.monotonic()
        self.slowest_save_s = 0.0
        self.skipped_steps = 0  # non-finite steps skipped since this process started
        # Some rank was asked to stop during the last step: every rank learns it at its end.
        self.stop_asked_on_some_rank = False
        self.preempted = False  # run() saved and returned early because of a stop request
        self.parallel_checkpoints = use_parallel_hdf5(self.config.checkpoint.parallel)
        self.checkpoint_dir = (
            os.path.join(out_dir, self.config.checkpoint.dir) if out_dir is not None else None
        )
        self._saved_step: int | None = None
        writes = out_dir is not None and self.rank == 0
        self.metrics_path = os.path.join(out_dir, "metrics.jsonl") if writes else None
        # A resumed run keeps the metrics of the steps before its checkpoint.
        self.metrics = MetricsWriter(self.metrics_path, append=resuming)
        self.verbose = verbose and self.rank == 0
        # Every metrics row names the schedule it ran: a generator or a file, and its ops.
        self.schedule_record = {
            "schedule": self.config.parallel.schedule,
            "schedule_digest": plan.schedule.digest(),
        }
        # parallel.costs = 'measured': the first steps are timed, then the order re-planned.
        self.replanning = Replanning(plan)
        self._engine_behind = False  # self.plan's schedule is not yet the engine's
        self._progress: Progress | None = None
        for note in self.replanning.notes:
            self._say(note)

    def train_step(self) -> dict:
        """One optimizer step; returns its metrics row (the same on every rank)."""
        optim = self.config.optim
        learning = learning_rate(self.step, optim, self.config.train.steps)
        if self._engine_behind:  # a resume chose another order: the engine takes it now
            with self.phases.phase("resume: the checkpoint's order"):
                self.engine.replan(self.plan)
            self._engine_behind = False
        started = time.perf_counter()
        loss_scale = self.scaler.scale
        stats = self.engine.forward_backward(self.step, loss_scale=loss_scale)
        stats.grad_norm /= loss_scale
        self.stop_asked_on_some_rank = stats.stop_asked_on_some_rank
        overflow = self.scaler.enabled and stats.overflow and not self.scaler.at_minimum
        applied = stats.finite and not overflow
        if overflow:
            self._say(f"mpipipe: step {self.step}: fp16 gradients overflowed at loss scale "
                      f"{loss_scale:g}; skipping the step and halving the scale")
        elif not stats.finite:
            self._on_non_finite(stats)
        else:
            clip = clip_coefficient(stats.grad_norm, optim.grad_clip)
            self.optimizer.step(learning, grad_scale=clip / loss_scale)
            self.store.refresh_working()
            # ZeRO-1: the updated shards go to the other holders while this rank writes its
            # row; whatever reads the weights next waits for them (Engine.finish_param_gathers).
            self.engine.start_param_gathers()
        if overflow or applied:
            self.scaler.update(overflow)
        self.backend.synchronize()
        step_time = time.perf_counter() - started
        row = self._row(stats, learning, step_time, applied)
        if self.scaler.enabled:
            row.update(loss_scale=loss_scale, overflow=overflow)
        self.step += 1
        self._replan_if_due()  # before an evaluation, whose forwards are no training op times
        if self._evaluation_due():
            row["eval_loss"] = self.evaluate()
        self.metrics.write(row)
        return row

    def _replan_if_due(self) -> None:
        """parallel.costs = 'measured': keep this step's op times; after the last measured
        step, switch every rank to the order planned for them (collective)."""
        if not self.replanning.measuring:
            return
        self.replanning.record(self.engine.op_times)
        if not self.replanning.due(self.step):
            return
        old_digest = self.plan.schedule.digest()
        with self.phases.phase("re-plan: the measured op costs"):
            self.plan, message = self.replanning.replan(self.rendezvous.agree, self.plan)
            if self.plan.schedule.digest() != old_digest:
                self.engine.replan(self.plan)
        self.schedule_record["schedule_digest"] = self.plan.schedule.digest()
        self._say(message, self._progress)

    def _evaluation_due(self) -> bool:
        every = self.config.train.eval_every
        if not every or self.plan.held_out is None:
            return False
        return self.step % every == 0 or self.step == self.config.train.steps

    def evaluate(self) -> float:
        """The mean loss over the held-out batches, the same on every rank (collective)."""
        held_out = self.plan.held_out
        if held_out is None:
            raise ValueError("this run has no held-out data (data.eval_fraction = 0)")
        batches = self.config.train.eval_batches
        return sum(self.engine.forward_only(batch, held_out).loss for batch in range(batches))

    def _on_non_finite(self, stats: StepStats) -> None:
        values = {"loss": stats.loss, "gradient norm": stats.grad_norm}
        bad = [f"{name} {value}" for name, value in values.items() if not math.isfinite(value)]
        what = f"step {self.step}: {' and '.join(bad)} {'is' if len(bad) == 1 else 'are'}"
        if self.config.train.on_nan == "stop":
            raise CollectiveStop(
                f"{what} not finite; stopping (train.on_nan = 'stop'; use 'skip' to skip "
                "such steps)"
            )
        self.skipped_steps += 1
        bound = self.config.train.max_skipped_steps
        if self.skipped_steps > bound:
            raise CollectiveStop(
                f"{what} not finite: {self.skipped_steps} steps skipped in this run, more than "
                f"train.max_skipped_steps = {bound} (train.on_nan = 'skip'); the run is not "
                "training: lower optim.lr, raise optim.warmup_steps or check the data"
            )
        if self.verbose:
            print(
                f"mpipipe: warning: {what} not finite; skipping the optimizer step "
                f"(train.on_nan = 'skip', {self.skipped_steps} of at most {bound} skipped)",
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
            **memory_fields(stats),
            "applied": applied,
            **self.schedule_record,
        }

    def run(self, steps: int | None = None, progress: Progress | None = None) -> list[dict]:
        """Train until config.train.steps (or `steps` more); returns the metrics rows.

        With a run folder it also saves checkpoints: every checkpoint.every steps, at the
        end of training, and after the step in which a stop was requested (then it
        returns early with `preempted` set).
        """
        last = self.config.train.steps if steps is None else self.step + steps
        every = self.config.checkpoint.every
        self._progress = progress
        rows = []
        while self.step < last:
            row = self.train_step()
            CTRL_C.raise_if_pressed()
            rows.append(row)
            if progress is not None:
                progress.update(row, last=self.step == last)
            self._stop_before_time_limit(row["step_time_s"])
            if self.stop_asked_on_some_rank:
                self._save_in_run_folder(progress, why="stop requested")
                self.preempted = True
                return rows
            if every and self.step % every == 0:
                self._save_in_run_folder(progress, why=f"every {every} steps")
        if self.step == self.config.train.steps:
            self._save_in_run_folder(progress, why="end of training")
        self.engine.finish_param_gathers()  # the weights are whole when run() returns
        return rows

    def _stop_before_time_limit(self, step_time_s: float) -> None:
        """Ask for a stop while one more step and a save still fit in train.time_limit_s.

        The request reaches every rank with the next step's statistics, so all ranks
        stop after the same step, save and exit 75, whatever the launcher does.
        """
        limit = self.config.train.time_limit_s
        if not limit or self.engine.stop_asked_on_this_rank:
            return
        save_estimate = self.slowest_save_s or SAVE_ESTIMATE_S
        remaining = limit - (time.monotonic() - self.started)
        if remaining < 3 * step_time_s + 2 * save_estimate:
            self.request_stop()

    def request_stop(self) -> None:
        """Save and stop at the end of the current step (safe to call from a signal handler)."""
        self.engine.ask_to_stop()

    def run_state(self) -> RunState:
        return RunState(self.comm, self.plan, self.store, self.optimizer, self.step, self.scaler,
                        bucket_comms=self.engine.bucket_comms())

    def save_checkpoint(self, path: str) -> SavedCheckpoint:
        """Write a checkpoint of this step to `path` (collective)."""
        self.engine.finish_param_gathers()
        saved = save_checkpoint(
            self.run_state(), path, parallel=self.parallel_checkpoints, faults=self.faults,
            rendezvous=self.rendezvous,
        )
        self._saved_step = self.step
        return saved

    def _save_in_run_folder(self, progress: Progress | None, why: str) -> None:
        folder = self.checkpoint_dir
        if folder is None or self._saved_step == self.step:
            return
        saved = self.save_checkpoint(os.path.join(folder, checkpoint_name(self.step)))
        self.slowest_save_s = max(self.slowest_save_s, saved.seconds)
        if self.rank == 0:
            prune(folder, self.config.checkpoint.keep)
            remove_partials(folder)
        megabytes = saved.nbytes / 1e6
        self._say(
            f"checkpoint ({why}): step {self.step} to {saved.path}, {megabytes:.1f} MB in "
            f"{saved.seconds:.2f} s ({megabytes / max(saved.seconds, 1e-9):.0f} MB/s)",
            progress,
        )

    def resume(self, spec: str) -> str:
        """Load the checkpoint `spec` names ('latest', a folder or a file); returns its path.

        Collective. Raises UsageError on every rank where something is wrong with the file;
        callers agree on the outcome (failure.agree_on_setup) so no rank is left waiting.
        """
        point = resolve_resume(spec, self.checkpoint_dir, self.comm, self.rendezvous)
        for removed in point.removed_partials:
            self._say(f"removed {removed}: the partial file of a save that did not finish")
        # The order the checkpoint's run chose; the engine takes it at the next step, after
        # every rank has loaded (its sync communicators are made collectively).
        old_digest = self.plan.schedule.digest()
        self.plan, plan_note = self.replanning.resume(read_plan_record(point.path), self.plan)
        if self.plan.schedule.digest() != old_digest:
            self._engine_behind = True
        self.schedule_record["schedule_digest"] = self.plan.schedule.digest()
        self.engine.finish_param_gathers()
        with self.phases.phase("resume: loading", point.path):
            loaded = load_checkpoint(self.run_state(), point.path)
        self.store.refresh_working()
        self.step = self._saved_step = loaded.step
        if self.metrics_path is not None:
            self._drop_metrics_from(loaded.step)
        self._say(f"resumed from {loaded.path} at step {loaded.step}")
        if plan_note:
            self._say(plan_note)
        if loaded.schedule_change:
            self._say(loaded.schedule_change)
        if not loaded.same_data:
            self._say(
                f"mpipipe: warning: the data settings differ from the checkpoint's, so the data "
                f"order does not continue exactly (checkpoint: {loaded.data})"
            )
        return loaded.path

    def _drop_metrics_from(self, step: int) -> None:
        """Forget metrics rows of steps at or after `step` (they are trained again)."""
        self.metrics.close()
        if os.path.exists(self.metrics_path):
            kept = []
            with open(self.metrics_path) as handle:
                for line in handle:
                    try:
                        row = json.loads(line)
                    except ValueError:
                        continue  # a line cut short by a crash
                    if row["step"] < step:
                        kept.append(line.rstrip("\n") + "\n")
            with open(self.metrics_path, "w") as handle:
                handle.writelines(kept)
        self.metrics = MetricsWriter(self.metrics_path, append=True)

    def _say(self, text: str, progress: Progress | None = None) -> None:
        if progress is not None:
            progress.message(text)
        elif self.verbose:
            print(text, flush=True)

    def finish(self) -> None:
        """Write the trace and close files (collective: every rank calls it)."""
        if self.out_dir is not None and self.config.runtime.trace:
            write_chrome_trace(self.comm, self.timeline, os.path.join(self.out_dir, "trace.json"))
        self.engine.close()
        self.metrics.close()
