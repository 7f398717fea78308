"""One stage's layers, run forward and backward on one micro-batch."""

from __future__ import annotations

from mpipipe.layers.base import MicroBatch


class StageCompute:
    """The consecutive layers of one stage with this rank's parameter views."""

    def __init__(self, layers: list, layer_indices: range, store):
        self.layers = [layers[index] for index in layer_indices]
        self.params = [store.layer_params(index) for index in layer_indices]
        self.grads = [store.layer_grads(index) for index in layer_indices]

    def forward(self, x, ctx: MicroBatch):
        caches = []
        for layer, params in zip(self.layers, self.params, strict=True):
            x, cache = layer.forward(params, x, ctx)
            caches.append(cache)
        return x, caches

    def backward(self, dy, caches):
        for layer, params, grads, cache in zip(
            reversed(self.layers), reversed(self.params), reversed(self.grads), reversed(caches),
            strict=True,
        ):
            dy = layer.backward(params, grads, dy, cache)
        return dy

    def backward_input(self, dy, caches):
        """The I half: input gradient now, what the W half needs kept aside."""
        weight_caches = []
        for layer, params, cache in zip(
            reversed(self.layers), reversed(self.params), reversed(caches), strict=True
        ):
            dy, weight_cache = layer.backward_input(params, dy, cache)
            weight_caches.append(weight_cache)
        return dy, weight_caches

    def backward_weight(self, weight_caches) -> None:
        for layer, grads, weight_cache in zip(
            reversed(self.layers), reversed(self.grads), weight_caches, strict=True
        ):
            layer.backward_weight(grads, weight_cache)
