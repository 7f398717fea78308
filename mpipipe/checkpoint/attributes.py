"""The root attributes of a checkpoint: format, training position, config and schedule.

    format, format_version   "mpipipe-checkpoint", 1
    mpipipe_version          the version that wrote the file
    step                     optimizer steps done; the next step to run
    seed                     train.seed
    samples_per_step         global batch in samples (micro-batches x replicas x size)
    next_sample              the data position: step x samples_per_step
    data                     identity of the data order (source, path, seed, shapes)
    config                   the resolved config, as TOML (`mpipipe config show` form)
    schedule                 kind, pipeline ranks, micro-batches, data-parallel replicas
    schedule_source          parallel.schedule: a generator, or a schedule file's path
    schedule_digest          the ops' digest (Schedule.digest); see schedule_identity.py
    schedule_costs, schedule_memory_cap, schedule_costs_measured
                             the costs and cap the order was planned for (plan_record.py)
    stage_layers             (stages, 2) array: each stage's [first, last + 1) layer
    dtype, model, parameters float type, model kind, logical parameter count
    precision                runtime.precision (the master weights are `dtype`)
    eval_split               the held-out split (data.eval_fraction, blocks, ranges, windows)

/optim carries fp16's loss scale (`loss_scale`, `loss_scale_good_steps`)
beside the optimizer's step count.

There is no RNG state beyond the seed: initial values and every batch are
pure functions of (seed, global layer index) and (seed, global sample id),
so seed and step resume the data order exactly.
"""

from __future__ import annotations

import numpy as np

from mpipipe import __version__
from mpipipe.checkpoint.layout import FORMAT_NAME, FORMAT_VERSION
from mpipipe.checkpoint.plan_record import plan_attributes
from mpipipe.checkpoint.schedule_identity import schedule_attributes
from mpipipe.config.schema import Config
from mpipipe.config.show import format_config, toml_value
from mpipipe.plan import RunPlan


def samples_per_step(config: Config) -> int:
    parallel = config.parallel
    return parallel.microbatches * parallel.data_parallel * config.data.microbatch_size


def data_identity(config: Config) -> str:
    """The settings that decide which samples step s trains on; equal strings, same data."""
    settings = {
        "model.kind": config.model.kind,
        "model.seq_len": config.model.seq_len,
        "model.vocab_size": config.model.vocab_size,
        "data.source": config.data.source,
        "data.path": config.data.path,
        "data.dataset": config.data.dataset,
        "data.mask_prob": config.data.mask_prob,
        "data.min_fill": config.data.min_fill,
        "data.eval_fraction": config.data.eval_fraction,
        "train.seed": config.train.seed,
        "samples_per_step": samples_per_step(config),
    }
    return " ".join(f"{name}={toml_value(value)}" for name, value in settings.items())


def schedule_summary(plan: RunPlan) -> str:
    schedule, parallel = plan.schedule, plan.config.parallel
    options = "".join(f" {name}={value}" for name, value in sorted(schedule.options.items()))
    return (
        f"kind={schedule.kind} ranks={schedule.ranks} microbatches={schedule.microbatches} "
        f"data_parallel={parallel.data_parallel}{options}"
    )


def split_description(plan: RunPlan) -> str:
    """The held-out split of the run's data, or 'none'."""
    split = getattr(plan.batcher, "split", None)
    return "none" if split is None or not split.eval_runs else split.describe()


def root_attributes(plan: RunPlan, step: int, dtype) -> dict[str, object]:
    """The same values on every rank: attribute creation in parallel HDF5 is collective."""
    config = plan.config
    spans = [(layers.start, layers.stop) for layers in plan.stage_layers]
    parameters = sum(int(np.prod(shape)) for shape in plan.model.param_shapes().values())
    return {
        "format": FORMAT_NAME,
        "format_version": np.int64(FORMAT_VERSION),
        "mpipipe_version": __version__,
        "step": np.int64(step),
        "seed": np.int64(config.train.seed),
        "samples_per_step": np.int64(samples_per_step(config)),
        "next_sample": np.int64(step * samples_per_step(config)),
        "data": data_identity(config),
        "config": format_config(config),
        "schedule": schedule_summary(plan),
        **schedule_attributes(plan),
        **plan_attributes(plan.schedule),
        "stage_layers": np.asarray(spans, dtype=np.int64).reshape(-1, 2),
        "dtype": np.dtype(dtype).name,
        "precision": config.runtime.precision,
        "eval_split": split_description(plan),
        "model": plan.model.kind,
        "parameters": np.int64(parameters),
    }
