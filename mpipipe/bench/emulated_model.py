"""The model an emulated accelerator runs: real boundary shapes, next to no parameters.

The engine runs unchanged; only the stage compute is replaced, through the
engine's stage factory (see emulated_device.py). Each op keeps the device busy for its calibrated
duration, then hands on arrays of the real model's boundary shape, so every
message is real MPI traffic of the real size. The model behind it has one
one-element parameter per layer, so gradient syncs and the optimizer cost
next to nothing.

Costs are per op of one stage of the schedule: a stage of a schedule with S
stages on D ranks holds D/S of a 1F1B stage's layers, so F = f0 * D / S,
and a cost profile F,B,W gives B and W relative to it (I = B - W; the
default 1,2,1 is B = 2F, I = W = F).
"""

from __future__ import annotations

import numpy as np

from mpipipe.bench.emulated_device import EmulatedAccelerator, QueuedCompute
from mpipipe.layers.base import Layer, MicroBatch
from mpipipe.models.model import Model
from mpipipe.runtime.stage import StageFactory
from mpipipe.schedules.simulate import OpCosts

EMULATED_KIND = "emulated"


class Placeholder(Layer):
    """A layer that only has shapes, and one one-element parameter so that syncs still run."""

    def __init__(self, channels: int):
        self.channels = channels

    def param_shapes(self) -> dict[str, tuple[int, ...]]:
        return {"scale": (1,)}

    def init_params(self, rng: np.random.Generator) -> dict[str, np.ndarray]:
        return {"scale": np.ones(1)}


class Inlet(Placeholder):
    """Stands for the embedding: tokens (B, T) in, hidden states (B, T, C) out."""

    is_body = False

    def output_shape(self, input_shape: tuple[int, ...]) -> tuple[int, ...]:
        return (*input_shape, self.channels)


class Body(Placeholder):
    """Stands for a transformer block: (B, T, C) in and out."""

    is_body = True


class Outlet(Placeholder):
    """Stands for the final norm, head and loss: (B, T, C) in, a scalar loss out."""

    is_body = False

    def output_shape(self, input_shape: tuple[int, ...]) -> tuple[int, ...]:
        return ()


def emulated_model(channels: int, seq_len: int, body_layers: int) -> Model:
    """Inlet, `body_layers` Body layers, Outlet: the real model's boundary shapes, tiny params."""
    layers = [Inlet(channels), *(Body(channels) for _ in range(body_layers)), Outlet(channels)]
    return Model(EMULATED_KIND, layers, vocab_size=2, seq_len=seq_len)


class ZeroBatcher:
    """Micro-batches of token 0 (a MicroBatchSource): the emulated stages never read them."""

    vocab_size = 1

    def __init__(self, microbatch_size: int, seq_len: int):
        tokens = np.zeros((microbatch_size, seq_len), dtype=np.int64)
        self.batch = MicroBatch(tokens, tokens, None, float(tokens.size))

    def microbatch(self, step: int, replica: int, index: int) -> MicroBatch:
        return self.batch


def stage_costs(f0: float, ranks: int, stages: int, profile: str = "1,2,1") -> OpCosts:
    """Seconds per op of one stage when a 1F1B stage's forward takes `f0` and the profile
    F,B,W gives the other ops' costs relative to it (I = B - W; 1,2,1: B = 2F, I = W = F)."""
    return OpCosts.parse(profile).scaled(f0 * ranks / stages)


def emulated_stage_factory(
    model: Model, stage_layers: list[range], microbatch_size: int, costs: OpCosts,
    device: EmulatedAccelerator,
) -> StageFactory:
    """The engine's stage factory for emulated stages of `model` cut as `stage_layers`."""
    shapes = []
    shape: tuple[int, ...] = (microbatch_size, model.seq_len)
    for layer_range in stage_layers:
        shapes.append(shape)
        for index in layer_range:
            shape = model.layers[index].output_shape(shape)
    shapes.append(shape)  # shapes[s]: input of stage s; shapes[s + 1]: its output

    def make(stage: int, layer_range: range, store) -> QueuedCompute:
        output = np.zeros(shapes[stage + 1], dtype=device.dtype)
        input_gradient = np.zeros(shapes[stage], dtype=device.dtype)
        return QueuedCompute(device, costs, output, input_gradient)

    return make
