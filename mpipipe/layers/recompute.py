"""Activation recomputation: a layer keeps less after its forward and computes
the rest again in its backward (`runtime.recompute`).

    none       every layer keeps its whole cache
    attention  Attention layers drop their (B, H, T, T) probabilities and
               recompute them from the cached q and k (Attention.keep_probabilities)
    block      `Recomputed(layer)` keeps only the layer's input and the micro-batch
               context, and runs the layer's forward again at the start of its
               backward: of backward_input when the backward is split, so the
               weight half uses the weight caches that input half made

A recomputation repeats the forward's own operations in the same order, so
outputs, input gradients and parameter gradients are bitwise what `none`
gives. A wrapped layer's forward must not write into its input, which the
wrapper keeps for the second run.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np

from mpipipe.errors import did_you_mean
from mpipipe.layers.attention import Attention
from mpipipe.layers.base import Layer, LayerCost, MicroBatch
from mpipipe.layers.composite import Composite
from mpipipe.recompute_policy import RECOMPUTE_POLICIES


@dataclass(eq=False)
class Recomputed(Layer):
    """`layer` with the same parameters (same names), keeping only its input."""

    layer: Layer

    @property
    def is_body(self) -> bool:
        return self.layer.is_body

    @property
    def tied(self) -> dict[str, tuple[int, str]]:
        return self.layer.tied

    def param_shapes(self) -> dict[str, tuple[int, ...]]:
        return self.layer.param_shapes()

    def init_params(self, rng: np.random.Generator) -> dict[str, np.ndarray]:
        return self.layer.init_params(rng)

    def output_shape(self, input_shape: tuple[int, ...]) -> tuple[int, ...]:
        return self.layer.output_shape(input_shape)

    def forward(self, params: dict, x, ctx: MicroBatch):
        y, _ = self.layer.forward(params, x, ctx)
        return y, (x, ctx)

    def _cache_again(self, params: dict, kept):
        x, ctx = kept
        return self.layer.forward(params, x, ctx)[1]

    def backward_input(self, params: dict, dy, cache):
        return self.layer.backward_input(params, dy, self._cache_again(params, cache))

    def backward_weight(self, grads: dict, wcache) -> None:
        self.layer.backward_weight(grads, wcache)

    def backward(self, params: dict, grads: dict, dy, cache):
        return self.layer.backward(params, grads, dy, self._cache_again(params, cache))

    def cost(self, microbatch_size: int, seq_len: int, itemsize: int) -> LayerCost:
        inner = self.layer.cost(microbatch_size, seq_len, itemsize)
        return LayerCost(
            forward_flops=inner.forward_flops,
            backward_flops=inner.backward_flops + inner.forward_flops,
            param_bytes=inner.param_bytes,
            activation_bytes=inner.input_bytes,
            input_bytes=inner.input_bytes,
            weight_cache_bytes=inner.weight_cache_bytes,  # the recomputed cache's I half
        )


def sublayers_within(layer: Layer) -> Iterator[Layer]:
    """`layer` and every layer inside it, depth first."""
    yield layer
    if isinstance(layer, Recomputed):
        yield from sublayers_within(layer.layer)
    elif isinstance(layer, Composite):
        for sublayer in layer.sublayers.values():
            yield from sublayers_within(sublayer)


def apply_recompute(layer: Layer, policy: str) -> Layer:
    """`layer` under a recomputation policy: wrapped for "block"; for "attention", the
    same layer with every Attention inside it set to drop its probabilities."""
    if policy not in RECOMPUTE_POLICIES:  # runtime.recompute's choices say so to users
        raise ValueError(
            f"recompute: unknown policy {policy!r}{did_you_mean(policy, RECOMPUTE_POLICIES)} "
            f"(use one of {', '.join(RECOMPUTE_POLICIES)})"
        )
    if policy == "block":
        return Recomputed(layer)
    if policy == "attention":
        for sublayer in sublayers_within(layer):
            if isinstance(sublayer, Attention):
                sublayer.keep_probabilities = False
    return layer
