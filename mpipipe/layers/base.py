"""The contract every hand-written layer follows (llm.c style).

A layer is a stateless description of computation plus the shapes of its
parameters; the arrays live outside it, in dicts the caller passes in:

    y, cache = layer.forward(params, x, ctx)             # cache: what backward needs
    dx = layer.backward(params, grads, dy, cache)         # grads[name] += ...
    dx, wcache = layer.backward_input(params, dy, cache)  # zero-bubble split: the I half
    layer.backward_weight(grads, wcache)                  # and the W half (grads += ...)

`backward` equals `backward_input` followed by `backward_weight`, exactly.
Gradients are accumulated with `+=` into buffers the caller allocated once.
`ctx` is the micro-batch context (`mpipipe.microbatch.MicroBatch`):
targets, padding mask and the loss normaliser, which some layers need and
most ignore.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from mpipipe.microbatch import MicroBatch

# A parameter's name in the whole model: (global layer index, name in that layer).
ParamKey = tuple[int, str]


@dataclass
class LayerCost:
    """Per-micro-batch cost estimates the balanced partitioner uses.

    activation_bytes: what forward's cache holds until the backward;
    input_bytes: the input forward reads, which is all a recomputed layer keeps;
    weight_cache_bytes: what backward_input's weight cache holds until the W half (the
    memory planner's count of a chunk between its I and its W).
    """

    forward_flops: float
    backward_flops: float
    param_bytes: int
    activation_bytes: int
    input_bytes: int
    weight_cache_bytes: int = 0


class Layer:
    """Base class: override the methods the layer needs."""

    # Whether the uniform partitioner counts this layer when it splits the
    # model evenly (transformer blocks); embedding, final norm, head and loss
    # are not body layers and stay with the first or last stage.
    is_body: bool = True

    # Parameters this layer shares with an earlier layer (weight tying):
    # {local name: (global layer index, name there)}.
    tied: dict[str, ParamKey] = {}

    def param_shapes(self) -> dict[str, tuple[int, ...]]:
        """Every parameter the layer uses, tied ones included (see `tied`)."""
        return {}

    def init_params(self, rng: np.random.Generator) -> dict[str, np.ndarray]:
        """Initial values (float64, host) of the parameters this layer owns: tied ones are
        initialised by the layer that owns them."""
        return {}

    def forward(self, params: dict, x, ctx: MicroBatch):
        raise NotImplementedError

    def backward_input(self, params: dict, dy, cache):
        """Return (dx, wcache): the input gradient, and what backward_weight needs."""
        raise NotImplementedError

    def backward_weight(self, grads: dict, wcache) -> None:
        """Accumulate parameter gradients into `grads` (+=). No-op for layers without params."""

    def backward(self, params: dict, grads: dict, dy, cache):
        dx, wcache = self.backward_input(params, dy, cache)
        self.backward_weight(grads, wcache)
        return dx

    def output_shape(self, input_shape: tuple[int, ...]) -> tuple[int, ...]:
        """Shape of forward's output for an input of `input_shape` (sizes receive buffers)."""
        return input_shape

    def cost(self, microbatch_size: int, seq_len: int, itemsize: int) -> LayerCost:
        return LayerCost(0.0, 0.0, 0, 0, 0)
