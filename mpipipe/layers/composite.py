"""Layers built from named sublayers, whose parameters live under dotted names.

A block holding `attn`, whose `qkv` sublayer holds `weight`, owns the
parameter "attn.qkv.weight". A composite hands each sublayer the view of the
dicts under its prefix, so sublayers never see their parents' names.

A composite writes its own forward and backward_input; the weight cache that
backward_input returns maps each sublayer's name to that sublayer's weight
cache, and the shared backward_weight replays them.
"""

from __future__ import annotations

import numpy as np

from mpipipe.layers.base import Layer, LayerCost


def scoped(arrays: dict, prefix: str) -> dict:
    """The entries of `arrays` under `prefix.`, with the prefix removed (same arrays, no copies)."""
    head = prefix + "."
    return {name[len(head) :]: value for name, value in arrays.items() if name.startswith(head)}


def add_costs(costs: list[LayerCost]) -> LayerCost:
    """The cost of running `costs`' layers in order: the first one reads the input."""
    return LayerCost(
        forward_flops=sum(cost.forward_flops for cost in costs),
        backward_flops=sum(cost.backward_flops for cost in costs),
        param_bytes=sum(cost.param_bytes for cost in costs),
        activation_bytes=sum(cost.activation_bytes for cost in costs),
        input_bytes=costs[0].input_bytes,
        weight_cache_bytes=sum(cost.weight_cache_bytes for cost in costs),
    )


class Composite(Layer):
    """Parameters, initialisation, weight gradients and cost of a layer made of `sublayers`
    (name -> layer, in the order forward runs them)."""

    sublayers: dict[str, Layer]

    def param_shapes(self) -> dict[str, tuple[int, ...]]:
        return {
            f"{prefix}.{name}": shape
            for prefix, layer in self.sublayers.items()
            for name, shape in layer.param_shapes().items()
        }

    def init_params(self, rng: np.random.Generator) -> dict[str, np.ndarray]:
        # Draw in sublayer order from the one generator, so the values depend only on it.
        return {
            f"{prefix}.{name}": value
            for prefix, layer in self.sublayers.items()
            for name, value in layer.init_params(rng).items()
        }

    def backward_weight(self, grads: dict, wcache: dict) -> None:
        """`wcache` maps every sublayer's name to the weight cache its backward_input returned."""
        for name, layer in self.sublayers.items():
            layer.backward_weight(scoped(grads, name), wcache[name])

    def cost(self, microbatch_size: int, seq_len: int, itemsize: int) -> LayerCost:
        return add_costs(
            [layer.cost(microbatch_size, seq_len, itemsize) for layer in self.sublayers.values()]
        )
