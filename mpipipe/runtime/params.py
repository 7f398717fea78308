"""Parameters and gradients of the stages one rank holds, in flat sync buckets.

A logical parameter is named by (global layer index, name), the same on
every rank and in checkpoints. A weight shared by two layers (tied
embedding and LM head) is one logical parameter. Logical parameters used by
the same set of stages form a bucket: one flat parameter array and one flat
gradient array, so a chunk's gradient sync is a single `Iallreduce` and the
optimizer runs over a few long arrays. Within a bucket, weight matrices (which
get weight decay) come first, then vectors (which do not).

Every rank derives the same bucket list from the model, the partition and
the placement, so the communicators built for it match across ranks.

Mixed precision (mpipipe.precision): `param` is the master copy (float32)
the optimizer updates and checkpoints hold, `grad` its float32 gradient;
`working` is the copy in the compute type (float16, bfloat16) that the
layers read, cast from `param` after every change (`refresh_working`). When
the two types agree, `working` is `param` itself and nothing is copied.

ZeRO-1 (parallel.zero = 1, runtime/zero_shards.py): a bucket with several
holders gets a `Shard`; its flat arrays are padded to the shard cut, the
summed gradient of the shard lands in `grad_shard`, and the optimizer
updates `master_shard`: a view of `param` under fp32, under fp16/bf16 the
only float32 master this rank keeps of the bucket (`param` is then None and
the layers' `working` copy is whole).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from math import prod

import numpy as np

from mpipipe.backend import Backend
from mpipipe.layers.base import ParamKey
from mpipipe.runtime.grid import ProcessGrid
from mpipipe.runtime.zero_shards import Shard, shard_of
from mpipipe.schedules.schedule import Placement


def weight_decay_applies(shape: tuple[int, ...]) -> bool:
    """Weight decay acts on matrices (weights, embeddings), not on biases and norm gains."""
    return len(shape) >= 2


@dataclass(frozen=True)
class Span:
    """Elements [start, end) of bucket `bucket` (its index), all decayed or all not."""

    bucket: int
    start: int
    end: int
    decayed: bool


@dataclass
class Bucket:
    index: int  # position in the global bucket order (`ParamLayout.bucket_plan`)
    stages: tuple[int, ...]  # the stages whose layers use these parameters
    keys: list[ParamKey]
    shapes: dict[ParamKey, tuple[int, ...]]
    offsets: dict[ParamKey, int]
    decay_size: int  # elements [0, decay_size) get weight decay
    world_members: list[int]  # every world rank holding a copy
    shard: Shard | None = None  # ZeRO-1: this rank's share of the optimizer's work
    param: object = None  # master weights (None: ZeRO-1 under fp16/bf16 keeps only a shard)
    grad: object = None  # their gradient, in the master type
    working: object = None  # the compute-type copy the layers read (param itself in fp32)
    grad_padded: object = None  # ZeRO-1: `grad` and its padding, what is reduce-scattered
    grad_shard: object = None  # ZeRO-1: the shard's summed gradient
    master_shard: object = None  # ZeRO-1: the shard's master weights, what the optimizer updates
    gathered: object = None  # ZeRO-1: the padded copy the updated shards are all-gathered into

    @property
    def size(self) -> int:
        return sum(prod(shape) for shape in self.shapes.values())

    def spans(self) -> list[Span]:
        """The non-empty decayed and undecayed element ranges: the decayed matrices first."""
        split = self.decay_size
        ranges = ((0, split, True), (split, self.size, False))
        return [Span(self.index, *bounds) for bounds in ranges if bounds[0] < bounds[1]]

    def view(self, flat, key: ParamKey):
        start = self.offsets[key]
        return flat[start : start + prod(self.shapes[key])].reshape(self.shapes[key])


@dataclass
class ParamLayout:
    """Every logical parameter's shape and users, and each layer's names for them."""

    shapes: dict[ParamKey, tuple[int, ...]]
    users: dict[ParamKey, tuple[int, ...]]  # stages using each logical parameter
    layer_keys: list[dict[str, ParamKey]]  # per layer: local name -> logical key

    @classmethod
    def build(cls, layers, stage_layers: list[range]) -> ParamLayout:
        stage_of_layer = [0] * len(layers)
        for stage, layer_range in enumerate(stage_layers):
            for index in layer_range:
                stage_of_layer[index] = stage
        shapes: dict[ParamKey, tuple[int, ...]] = {}
        users: dict[ParamKey, set[int]] = {}
        layer_keys = []
        for index, layer in enumerate(layers):
            keys = {}
            for name, shape in layer.param_shapes().items():
                key = tuple(layer.tied[name]) if name in layer.tied else (index, name)
                keys[name] = key
                if key == (index, name):
                    shapes[key] = tuple(shape)
                users.setdefault(key, set()).add(stage_of_layer[index])
            layer_keys.append(keys)
        return cls(
            shapes=shapes,
            users={key: tuple(sorted(stages)) for key, stages in users.items()},
            layer_keys=layer_keys,
        )

    def bucket_plan(self) -> dict[tuple[int, ...], list[ParamKey]]:
        """Logical parameters grouped by the stages that use them, in a global order."""
        plan: dict[tuple[int, ...], list[ParamKey]] = {}
        for key in sorted(self.shapes):
            plan.setdefault(self.users[key], []).append(key)
        return dict(sorted(plan.items()))


@dataclass
class ParamStore:
    """This rank's copies of the parameters of its stages, with gradient buffers."""

    layout: ParamLayout
    buckets: list[Bucket]
    backend: Backend
    compute_dtype: np.dtype | None = None  # the layers' type; None: the backend's
    params: dict[ParamKey, object] = field(default_factory=dict)  # master views
    grads: dict[ParamKey, object] = field(default_factory=dict)
    working: dict[ParamKey, object] = field(default_factory=dict)  # compute-type views

    @classmethod
    def create(
        cls,
        model,
        stage_layers: list[range],
        placement: Placement,
        grid: ProcessGrid,
        backend: Backend,
        seed: int,
        compute_dtype=None,
        zero: int = 0,
    ) -> ParamStore:
        """This rank's buckets, initialised; `compute_dtype` is the working copies' type;
        `zero` = 1 shards each shared bucket's optimizer work over its holders."""
        layout = ParamLayout.build(model.layers, stage_layers)
        my_stages = {stage for _, stage in placement.chunks_on(grid.pipe_rank)}
        buckets = []
        for index, (stages, keys) in enumerate(layout.bucket_plan().items()):
            if not my_stages.intersection(stages):
                continue
            pipe_ranks = sorted({rank for stage in stages for rank in placement.holders(stage)})
            members = sorted(
                grid.world_rank_of(pipe_rank, replica)
                for replica in range(grid.data_parallel)
                for pipe_rank in pipe_ranks
            )
            bucket = _new_bucket(index, stages, keys, layout.shapes, members)
            if zero:
                bucket.shard = shard_of(bucket.size, members, grid.world_rank)
            buckets.append(bucket)
        compute = None if compute_dtype is None else np.dtype(compute_dtype)
        store = cls(layout=layout, buckets=buckets, backend=backend, compute_dtype=compute)
        store._allocate()
        store._initialise(model, seed)
        store.refresh_working()
        return store

    def _allocate(self) -> None:
        xp, dtype = self.backend.xp, self.backend.dtype
        compute = self.compute_dtype
        for bucket in self.buckets:
            separate = compute is not None and compute != np.dtype(dtype)
            shard = bucket.shard
            padded = bucket.size if shard is None else shard.padded_size
            param = None if shard is not None and separate else xp.zeros(padded, dtype=dtype)
            working = xp.zeros(padded, dtype=compute) if separate else param
            bucket.param = None if param is None else param[: bucket.size]
            bucket.working = working[: bucket.size] if separate else bucket.param
            bucket.grad_padded = xp.zeros(padded, dtype=dtype)
            bucket.grad = bucket.grad_padded[: bucket.size]
            if shard is not None:
                bucket.grad_shard = xp.zeros(shard.length, dtype=dtype)
                bucket.master_shard = (
                    xp.zeros(shard.length, dtype=dtype) if param is None
                    else param[shard.start : shard.start + shard.length]
                )
                bucket.gathered = working
            for key in bucket.keys:
                if bucket.param is not None:
                    self.params[key] = bucket.view(bucket.param, key)
                self.grads[key] = bucket.view(bucket.grad, key)
                self.working[key] = bucket.view(bucket.working, key)

    def _initialise(self, model, seed: int) -> None:
        owner_layers = sorted({index for bucket in self.buckets for index, _ in bucket.keys})
        initial = model.init_params(seed, layer_indices=owner_layers)
        for bucket in self.buckets:
            flat = np.zeros(bucket.size, dtype=self.backend.dtype)
            for key in bucket.keys:
                bucket.view(flat, key)[...] = initial[key]
            self.set_master(bucket, self.backend.asarray(flat))

    def held_keys(self) -> list[ParamKey]:
        """Every logical parameter this rank holds (whole, or under ZeRO-1 a shard of)."""
        return sorted(key for bucket in self.buckets for key in bucket.keys)

    def set_master(self, bucket: Bucket, flat) -> None:
        """Set the bucket's master weights (and working copy) from its whole flat values."""
        if bucket.param is not None:
            bucket.param[...] = flat
        else:
            shard = bucket.shard
            bucket.master_shard[: shard.end - shard.start] = flat[shard.start : shard.end]
        if bucket.working is not bucket.param:
            bucket.working[...] = flat

    def refresh_working(self) -> None:
        """Cast the master weights into the working copies (after an update or a load);
        under ZeRO-1 with fp16/bf16 only this rank's shard (the all-gather brings the rest)."""
        for bucket in self.buckets:
            if bucket.param is None:
                shard = bucket.shard
                bucket.gathered[shard.start : shard.start + shard.length] = bucket.master_shard
            elif bucket.working is not bucket.param:
                bucket.working[...] = bucket.param

    def layer_params(self, layer_index: int) -> dict[str, object]:
        """The weights layer `layer_index` computes with: the working (compute-type) views."""
        keys = self.layout.layer_keys[layer_index]
        return {name: self.working[key] for name, key in keys.items()}

    def layer_grads(self, layer_index: int) -> dict[str, object]:
        return {name: self.grads[key] for name, key in self.layout.layer_keys[layer_index].items()}

    def zero_grads(self) -> None:
        for bucket in self.buckets:
            bucket.grad.fill(0)

    def host_params(self) -> dict[ParamKey, np.ndarray]:
        """Host copies of every parameter whose master weights this rank holds whole."""
        return {key: self.backend.to_host(value).copy() for key, value in self.params.items()}


def _new_bucket(index, stages, keys, shapes, members) -> Bucket:
    decayed = [key for key in keys if weight_decay_applies(shapes[key])]
    ordered = decayed + [key for key in keys if not weight_decay_applies(shapes[key])]
    offsets, position = {}, 0
    for key in ordered:
        offsets[key] = position
        position += prod(shapes[key])
    return Bucket(
        index=index,
        stages=stages,
        keys=ordered,
        shapes={key: shapes[key] for key in ordered},
        offsets=offsets,
        decay_size=sum(prod(shapes[key]) for key in decayed),
        world_members=members,
    )
