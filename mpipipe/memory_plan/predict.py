"""What every pipeline rank of a run will hold, predicted from the config alone.

No MPI and no arrays: the model's layers give parameter shapes and their
per-micro-batch activation estimates (`Layer.cost(...).activation_bytes`,
which a recomputed block and an attention layer that drops its
probabilities lower themselves), the schedule gives the order of each
rank's ops, and the parameter layout and receive-slot plan are the ones the
runtime builds (`runtime/params.py`, `runtime/receive_slots.py`), played
through without allocating.

Per pipeline rank (every data-parallel replica of it holds the same):

- parameters, gradients, optimizer state: every bucket of the stages it
  holds, in the master type (runtime.dtype); with fp16/bf16 a working copy
  in the compute type beside them. With parallel.zero = 1 the optimizer
  state (and, under fp16/bf16, the master weights) of a bucket is split over
  its R holders: data_parallel x the pipeline ranks holding its stages.
- activations: the rank's ops in list order (the order it runs them, and the
  simulator's), a chunk's forward cache held from its F until its B or I, an
  I's weight cache until its W: the most bytes held at once.
- messages: the persistent receive buffers the slot plan chooses, and one
  output in flight per direction the rank sends.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from math import ceil, prod

from mpipipe.checkpoint.verify_metadata import OPTIMIZER_STATES
from mpipipe.config.schema import Config
from mpipipe.config.validate import pipeline_degree, validate_config
from mpipipe.cost_modes import COST_MODES
from mpipipe.errors import UsageError
from mpipipe.models.model import Model, build_model
from mpipipe.plan import choose_schedule
from mpipipe.precision import Precision
from mpipipe.runtime.params import ParamLayout
from mpipipe.runtime.receive_slots import ReceiveNeed, assign_slots
from mpipipe.schedules import OpCosts, simulate
from mpipipe.schedules.lowering import lower
from mpipipe.schedules.ops import OpType
from mpipipe.schedules.partition import partition_layers
from mpipipe.schedules.schedule import Schedule

# The engine starts a receive while the op before the one needing it computes.
RECEIVE_LOOKAHEAD = 1


@dataclass(frozen=True)
class RankMemory:
    """Predicted bytes of one pipeline rank at its peak."""

    pipe_rank: int
    stages: tuple[int, ...]
    parameters: int  # master weights (the layers' weights too in fp32/fp64)
    gradients: int
    optimizer: int
    working: int  # fp16/bf16 working copies; 0 when the master is what layers read
    activations: int  # most cache bytes held at once
    peak_chunks: float  # the simulator's peak in-flight micro-batches (of L/D layers)
    receives: int  # persistent receive buffers
    sends: int  # outputs kept until MPI has sent them

    @property
    def state(self) -> int:
        return self.parameters + self.gradients + self.optimizer + self.working

    @property
    def messages(self) -> int:
        return self.receives + self.sends

    @property
    def total(self) -> int:
        return self.state + self.activations + self.messages


@dataclass(frozen=True)
class MemoryPlan:
    """The prediction for every pipeline rank of one layout, and its simulated bubble."""

    config: Config  # with parallel.pipeline resolved
    world_size: int
    ranks: list[RankMemory]
    bubble: list[float]  # per pipeline rank, simulated at the schedule's op costs
    costs: OpCosts
    split_backward: bool  # the schedule splits backwards into I and W

    @property
    def peak(self) -> RankMemory:
        """The rank that needs the most."""
        return max(self.ranks, key=lambda rank: rank.total)

    def fits(self, budget: int) -> bool:
        return self.peak.total <= budget


def predict_memory(config: Config, world_size: int | None = None) -> MemoryPlan:
    """The memory plan of `config` on `world_size` MPI ranks (None: pipeline x data_parallel).

    Raises UsageError for a config the run would refuse, as training would.
    """
    config = copy.deepcopy(config)
    parallel = config.parallel
    if world_size is None:
        if parallel.pipeline == 0:
            raise UsageError(
                "parallel.pipeline = 0 makes every MPI rank a pipeline rank, so the plan needs "
                "the job's size: give --ranks R (R MPI ranks), or set parallel.pipeline"
            )
        world_size = parallel.pipeline * parallel.data_parallel
    validate_config(config, world_size=world_size)
    parallel.pipeline = pipeline_degree(parallel.pipeline, parallel.data_parallel, world_size)
    model = build_model(config.model, recompute=config.runtime.recompute)
    schedule, why_stages = choose_schedule(parallel, world_size)
    itemsize = Precision.of(config.runtime.precision, config.runtime.dtype).master.itemsize
    stage_layers = partition_layers(
        [cost.forward_flops + cost.backward_flops
         for cost in model.costs(config.data.microbatch_size, itemsize)],
        [layer.is_body for layer in model.layers],
        schedule.stages,
        parallel.partition,
        describe=model.kind,
        why_stages=why_stages,
    )
    return predict_layout(config, world_size, model, schedule, stage_layers)


def predict_layout(config: Config, world_size: int, model: Model, schedule: Schedule,
                   stage_layers: list[range]) -> MemoryPlan:
    """The memory plan of a layout already decided (a RunPlan's): `config` with
    parallel.pipeline resolved, the model, its schedule and partition."""
    costs = _op_costs(config.parallel.costs)
    simulation = simulate(schedule, costs)
    precision = Precision.of(config.runtime.precision, config.runtime.dtype)
    activation_bytes = _stage_activation_bytes(model, stage_layers, config, precision)
    boundary_shapes = model.boundary_shapes(stage_layers, config.data.microbatch_size)
    ranks = [
        RankMemory(
            pipe_rank=rank,
            stages=tuple(sorted({stage for _, stage in schedule.placement.chunks_on(rank)})),
            **_state_bytes(model, stage_layers, schedule, rank, config, precision),
            activations=_peak_activation_bytes(schedule, rank, activation_bytes),
            peak_chunks=simulation.peak_activations[rank],
            **_message_bytes(schedule, rank, boundary_shapes, config, precision),
        )
        for rank in range(schedule.ranks)
    ]
    split = any(op.type is OpType.BACKWARD_INPUT for rank_ops in schedule.ops for op in rank_ops)
    return MemoryPlan(config, world_size, ranks, simulation.bubble, costs, split)


def _op_costs(costs: str) -> OpCosts:
    """The op costs the bubble is simulated at: parallel.costs' ratios, else F = 1, B = 2."""
    if costs in COST_MODES:
        return OpCosts()
    return OpCosts.parse(costs, name="parallel.costs")


def _state_bytes(model: Model, stage_layers: list[range], schedule: Schedule, rank: int,
                 config: Config, precision: Precision) -> dict[str, int]:
    """Parameters, gradients, optimizer state and working copies of the buckets `rank` holds."""
    layout = ParamLayout.build(model.layers, stage_layers)
    held = {stage for _, stage in schedule.placement.chunks_on(rank)}
    master, compute = precision.master.itemsize, precision.compute.itemsize
    states = len(OPTIMIZER_STATES[config.optim.name])
    sharded = config.parallel.zero == 1
    totals = {"parameters": 0, "gradients": 0, "optimizer": 0, "working": 0}
    for stages, keys in layout.bucket_plan().items():
        if not held.intersection(stages):
            continue
        size = sum(prod(layout.shapes[key]) for key in keys)
        holders = config.parallel.data_parallel * len(
            {pipe_rank for stage in stages for pipe_rank in schedule.placement.holders(stage)}
        )
        sharded_here = sharded and holders > 1
        shard = ceil(size / holders) if sharded_here else size
        totals["parameters"] += (shard if precision.low else size) * master
        # ZeRO-1 keeps the shard's reduce-scattered sum beside the whole gradient.
        totals["gradients"] += (size + (shard if sharded_here else 0)) * master
        totals["optimizer"] += states * shard * master
        totals["working"] += size * compute if precision.low else 0
    return totals


@dataclass(frozen=True)
class ChunkBytes:
    """What one micro-batch of a stage keeps: its forward cache, then (split) its I half's."""

    forward: int
    weight: int


def _stage_activation_bytes(model: Model, stage_layers: list[range], config: Config,
                            precision: Precision) -> list[ChunkBytes]:
    """Each stage's cache bytes per micro-batch, from its layers' estimates."""
    costs = model.costs(config.data.microbatch_size, precision.compute.itemsize)
    return [
        ChunkBytes(sum(costs[index].activation_bytes for index in layers),
                   sum(costs[index].weight_cache_bytes for index in layers))
        for layers in stage_layers
    ]


def _peak_activation_bytes(schedule: Schedule, rank: int, stage_bytes: list[ChunkBytes]) -> int:
    """Most cache bytes `rank` holds at once, running its ops in list order: a forward keeps
    its cache, an I swaps it for its weight cache, a B or W frees what is left."""
    level = peak = 0
    for op in schedule.ops[rank]:
        held = stage_bytes[op.stage] if op.type is not OpType.SYNC else None
        if op.type is OpType.FORWARD:
            level += held.forward
        elif op.type is OpType.BACKWARD_INPUT:
            level += held.weight - held.forward
        elif op.type is OpType.BACKWARD:
            level -= held.forward
        elif op.type is OpType.BACKWARD_WEIGHT:
            level -= held.weight
        peak = max(peak, level)
    return peak


def _message_bytes(schedule: Schedule, rank: int, boundary_shapes: list, config: Config,
                   precision: Precision) -> dict[str, int]:
    """The receive buffers the engine's slot plan allocates for `rank`, and its sends."""
    lowered = lower(schedule, rank)
    needs = [
        ReceiveNeed(position, boundary_shapes[item.receive.boundary],
                    (item.op.pipe, item.op.stage, item.op.microbatch))
        for position, item in enumerate(lowered)
        if item.receive is not None and item.receive.peer is not None
    ]
    releases = {
        position: (item.op.pipe, item.op.stage, item.op.microbatch)
        for position, item in enumerate(lowered)
        if item.op.type in (OpType.BACKWARD, OpType.BACKWARD_WEIGHT)
    }
    slots = assign_slots(needs, releases, config.runtime.recv_window, RECEIVE_LOOKAHEAD)
    itemsize = precision.compute.itemsize
    largest_send: dict[str, int] = {}
    for item in lowered:
        send = item.send
        if send is not None and send.peer is not None:
            nbytes = prod(boundary_shapes[send.boundary]) * itemsize
            largest_send[send.direction] = max(largest_send.get(send.direction, 0), nbytes)
    return {
        "receives": sum(prod(kind) for kind in slots.buffer_kinds) * itemsize,
        "sends": sum(largest_send.values()),
    }
