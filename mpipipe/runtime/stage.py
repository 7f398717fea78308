"""One stage's compute: what the engine asks of a stage, and the stage of real layers."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

from mpipipe.layers.base import MicroBatch

if TYPE_CHECKING:
    from mpipipe.runtime.params import ParamStore


@runtime_checkable
class StageCompute(Protocol):
    """One stage run on one micro-batch, in arrays of the backend's module.

    `forward` returns the stage's output (on the last stage, its share of the loss as a
    0-d array) and what its backward needs. `backward` adds the stage's weight gradients
    to the store's buffers and returns the gradient of its input. Zero-bubble schedules
    split it in two: `backward_input` returns the input gradient and what
    `backward_weight` later needs to add the weight gradients; together they equal
    `backward`.
    """

    def forward(self, x, ctx: MicroBatch) -> tuple[Any, Any]: ...

    def backward(self, dy, cache) -> Any: ...

    def backward_input(self, dy, cache) -> tuple[Any, Any]: ...

    def backward_weight(self, weight_cache) -> None: ...


# Builds the compute of one stage from its index, its (global) layer indices and the
# rank's parameter store (where the stage's parameter and gradient views come from).
StageFactory = Callable[[int, range, "ParamStore"], StageCompute]


class LayerStage:
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
