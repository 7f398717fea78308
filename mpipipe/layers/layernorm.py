"""LayerNorm over the hidden axis (the fused op), with a learned scale and shift."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from mpipipe.fused import layernorm_backward_input, layernorm_backward_weight, layernorm_forward
from mpipipe.layers.base import Layer, LayerCost, MicroBatch


@dataclass(eq=False)
class LayerNorm(Layer):
    channels: int
    eps: float = 1e-5
    # Inside a block it is a sublayer; standing alone it is the final norm.
    is_body = False

    def param_shapes(self) -> dict[str, tuple[int, ...]]:
        return {"weight": (self.channels,), "bias": (self.channels,)}

    def init_params(self, rng: np.random.Generator) -> dict[str, np.ndarray]:
        return {"weight": np.ones(self.channels), "bias": np.zeros(self.channels)}

    def forward(self, params: dict, x, ctx: MicroBatch):
        y, mean, rstd = layernorm_forward(x, params["weight"], params["bias"], self.eps)
        return y, (x, mean, rstd)

    def backward_input(self, params: dict, dy, cache):
        x, mean, rstd = cache
        dx = layernorm_backward_input(dy, x, params["weight"], mean, rstd)
        return dx, (dy, x, mean, rstd)

    def backward_weight(self, grads: dict, wcache) -> None:
        dy, x, mean, rstd = wcache
        layernorm_backward_weight(dy, x, mean, rstd, grads["weight"], grads["bias"])

    def cost(self, microbatch_size: int, seq_len: int, itemsize: int) -> LayerCost:
        rows = microbatch_size * seq_len
        elements = float(rows * self.channels)
        return LayerCost(
            forward_flops=8.0 * elements,
            backward_flops=14.0 * elements,
            param_bytes=2 * self.channels * itemsize,
            activation_bytes=(rows * self.channels + 2 * rows) * itemsize,
            input_bytes=rows * self.channels * itemsize,
            weight_cache_bytes=(2 * rows * self.channels + 2 * rows) * itemsize,  # dy, x, stats
        )
