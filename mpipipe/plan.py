"""Everything a run needs that can be decided without any MPI traffic.

`plan_run` is deterministic: every rank computes the same plan from the
same config and world size, so a bad input fails on every rank alike,
before the first message.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from mpipipe.config.schema import Config, ParallelConfig
from mpipipe.config.validate import pipeline_degree, validate_config
from mpipipe.cost_modes import COST_MODES
from mpipipe.data import build_batcher
from mpipipe.errors import UsageError
from mpipipe.models.model import Model, build_model
from mpipipe.runtime.batch_source import MicroBatchSource
from mpipipe.runtime.grid import ProcessGrid, make_grid
from mpipipe.schedules import (
    SCHEDULE_KINDS,
    OpCosts,
    ScheduleError,
    build_schedule,
    max_tag,
    order_depends_on_costs,
    plan,
    read_schedule_file,
    stages_reason,
)
from mpipipe.schedules.partition import partition_layers
from mpipipe.schedules.schedule import Schedule


@dataclass
class RunPlan:
    config: Config
    grid: ProcessGrid
    model: Model
    schedule: Schedule
    stage_layers: list[range]
    batcher: MicroBatchSource
    # The evaluation's micro-batches (data.eval_fraction > 0 with the config's data), else None.
    held_out: MicroBatchSource | None = None

    @property
    def tokens_per_step(self) -> int:
        parallel, data = self.config.parallel, self.config.data
        return (
            parallel.microbatches * parallel.data_parallel * data.microbatch_size
            * self.model.seq_len
        )


def plan_run(
    config: Config,
    world_size: int,
    world_rank: int,
    model: Model | None = None,
    batcher: MicroBatchSource | None = None,
    tag_limit: int | None = None,
) -> RunPlan:
    """The plan of `config` on `world_size` ranks; `model` and `batcher` replace the config's;
    `tag_limit`, the MPI library's largest message tag (MPI.TAG_UB), where it is known."""
    if batcher is not None and not isinstance(batcher, MicroBatchSource):
        raise TypeError(
            f"plan_run(batcher=...): {type(batcher).__name__} is not a MicroBatchSource "
            "(it needs microbatch(step, replica, index) and vocab_size)"
        )
    validate_config(config, world_size=world_size)
    parallel = config.parallel
    parallel.pipeline = pipeline_degree(parallel.pipeline, parallel.data_parallel, world_size)
    grid = make_grid(parallel.pipeline, parallel.data_parallel, world_size, world_rank)
    held_out = None
    if batcher is None:
        batcher = build_batcher(config)
        if config.data.eval_fraction > 0:
            held_out = batcher.held_out(config.train.eval_batches)
    if model is None:
        model = build_model(
            config.model, data_vocab=batcher.vocab_size, recompute=config.runtime.recompute
        )
    schedule, why_stages = choose_schedule(parallel, world_size)
    if tag_limit is not None:
        check_tag_limit(schedule, tag_limit)
    itemsize = np.dtype(config.runtime.dtype).itemsize
    costs = model.costs(config.data.microbatch_size, itemsize)
    stage_layers = partition_layers(
        [cost.forward_flops + cost.backward_flops for cost in costs],
        [layer.is_body for layer in model.layers],
        schedule.stages,
        parallel.partition,
        describe=model.kind,
        why_stages=why_stages,
    )
    return RunPlan(config, grid, model, schedule, stage_layers, batcher, held_out)


def check_tag_limit(schedule: Schedule, tag_limit: int) -> None:
    """Every message tag of `schedule` within what the MPI library allows."""
    needed = max_tag(schedule)
    if needed > tag_limit:
        raise UsageError(
            f"this schedule needs MPI message tags up to {needed} but the MPI library allows "
            f"{tag_limit}: use fewer parallel.microbatches or pipeline stages"
        )


def choose_schedule(parallel: ParallelConfig, world_size: int) -> tuple[Schedule, str]:
    """The schedule this run uses, and where its stage count comes from (for the partitioner).

    parallel.schedule names a generator, or a CSV file that every rank reads, validates
    and dry-runs, and that must fit the layout: one row per pipeline rank, and
    parallel.microbatches micro-batches. A generator gives its reference order, or with
    parallel.costs = F,B[,W] its order planned for those ratios on every stage (what
    `mpipipe schedule KIND --cost F,B,W` shows); a file's order is the file's. Measured
    costs re-plan later, in training (replanning.py).
    """
    name = parallel.schedule
    if name in SCHEDULE_KINDS:
        ranks, microbatches, chunks = parallel.pipeline, parallel.microbatches, parallel.chunks
        if parallel.costs in COST_MODES or not order_depends_on_costs(name, ranks, microbatches):
            schedule = build_schedule(name, ranks, microbatches, chunks)
        else:
            costs = OpCosts.parse(parallel.costs, name="parallel.costs")
            schedule = plan(name, ranks, microbatches, costs, chunks=chunks)
        return schedule, stages_reason(name, ranks, chunks)
    source = f"parallel.schedule {name!r}"
    try:
        schedule = read_schedule_file(name, source)
    except ScheduleError as error:
        if not error.report:
            raise
        raise UsageError(f"{error}; mpipipe schedule --from-csv {name} draws it") from None
    if schedule.ranks != parallel.pipeline:
        raise UsageError(
            f"{source} has {schedule.ranks} rows, one per pipeline rank, but this run has "
            f"{parallel.pipeline} pipeline ranks ({world_size} MPI ranks, parallel.data_parallel "
            f"= {parallel.data_parallel}): launch {schedule.ranks * parallel.data_parallel} MPI "
            f"ranks, or give a schedule of {parallel.pipeline} rows"
        )
    if schedule.microbatches != parallel.microbatches:
        raise UsageError(
            f"{source} runs {schedule.microbatches} micro-batches per step, but "
            f"parallel.microbatches = {parallel.microbatches}: set parallel.microbatches = "
            f"{schedule.microbatches}, or give a schedule with {parallel.microbatches}"
        )
    stages = f"{schedule.stages} stage" + ("s" if schedule.stages != 1 else "")
    return schedule, f"the schedule in {name} has {stages}"
