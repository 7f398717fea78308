"""Everything a run needs that can be decided without any MPI traffic.

`plan_run` is deterministic: every rank computes the same plan from the
same config and world size, so a bad input fails on every rank alike,
before the first message.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from mpipipe.config.schema import Config
from mpipipe.config.validate import pipeline_degree, validate_config
from mpipipe.data import build_batcher
from mpipipe.models.model import Model, build_model
from mpipipe.runtime.batch_source import MicroBatchSource
from mpipipe.runtime.grid import ProcessGrid, make_grid
from mpipipe.schedules import build_schedule, stages_reason
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
) -> RunPlan:
    """The plan of `config` on `world_size` ranks; `model` and `batcher` replace the config's."""
    if batcher is not None and not isinstance(batcher, MicroBatchSource):
        raise TypeError(
            f"plan_run(batcher=...): {type(batcher).__name__} is not a MicroBatchSource "
            "(it needs microbatch(step, replica, index) and vocab_size)"
        )
    validate_config(config, world_size=world_size)
    parallel = config.parallel
    parallel.pipeline = pipeline_degree(parallel.pipeline, parallel.data_parallel, world_size)
    grid = make_grid(parallel.pipeline, parallel.data_parallel, world_size, world_rank)
    if batcher is None:
        batcher = build_batcher(config)
    if model is None:
        model = build_model(
            config.model, data_vocab=batcher.vocab_size, recompute=config.runtime.recompute
        )
    schedule = build_schedule(
        parallel.schedule, parallel.pipeline, parallel.microbatches, chunks=parallel.chunks
    )
    itemsize = np.dtype(config.runtime.dtype).itemsize
    costs = model.costs(config.data.microbatch_size, itemsize)
    stage_layers = partition_layers(
        [cost.forward_flops + cost.backward_flops for cost in costs],
        [layer.is_body for layer in model.layers],
        schedule.stages,
        parallel.partition,
        describe=model.kind,
        why_stages=stages_reason(parallel.schedule, parallel.pipeline, parallel.chunks),
    )
    return RunPlan(config, grid, model, schedule, stage_layers, batcher)
