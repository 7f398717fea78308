"""The single-process reference: every layer in order on one (possibly large) batch.

Every pipeline schedule, pipeline degree and data-parallel degree must
reproduce its loss and gradients (mpipipe/DESIGN.md, "The numerical contract").
"""

from __future__ import annotations

from mpipipe.backend import array_module
from mpipipe.layers.base import MicroBatch, ParamKey
from mpipipe.models.model import Model


def forward_backward(model: Model, params: dict, grads: dict, batch: MicroBatch) -> float:
    """Run the whole model forward and backward on `batch`, add into `grads`, return the loss.

    params and grads are keyed (layer index, name) like Model.init_params; a
    tied parameter's gradient accumulates into its owner's key.
    """
    x = batch.tokens
    caches = []
    for index, layer in enumerate(model.layers):
        x, cache = layer.forward(model.layer_arrays(params, index), x, batch)
        caches.append(cache)
    loss = float(x)
    dy = 1.0
    for index in reversed(range(len(model.layers))):
        layer_params = model.layer_arrays(params, index)
        layer_grads = model.layer_arrays(grads, index)
        dy = model.layers[index].backward(layer_params, layer_grads, dy, caches.pop())
    return loss


def loss_and_grads(model: Model, params: dict, batch: MicroBatch) -> tuple[float, dict]:
    """The loss on `batch` and its gradient, keyed like `params`."""
    grads: dict[ParamKey, object] = {
        key: array_module(value).zeros_like(value) for key, value in params.items()
    }
    loss = forward_backward(model, params, grads, batch)
    return loss, grads
