"""Fully connected layer: y = x @ W + b, with W stored (in, out).

Every product is one 2-D GEMM on the (rows, features) view of the input,
rows = every leading axis flattened (B * T for a sequence batch). The
weight gradients are computed and summed in the gradient buffers' type
(float32 master gradients under a 2-byte compute type).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from mpipipe.fused import matmul
from mpipipe.layers.base import Layer, LayerCost, MicroBatch


@dataclass(eq=False)
class Linear(Layer):
    in_features: int
    out_features: int
    init_std: float = 0.02
    bias: bool = True

    def param_shapes(self) -> dict[str, tuple[int, ...]]:
        shapes = {"weight": (self.in_features, self.out_features)}
        if self.bias:
            shapes["bias"] = (self.out_features,)
        return shapes

    def init_params(self, rng: np.random.Generator) -> dict[str, np.ndarray]:
        params = {"weight": rng.normal(0.0, self.init_std, (self.in_features, self.out_features))}
        if self.bias:
            params["bias"] = np.zeros(self.out_features)
        return params

    def output_shape(self, input_shape: tuple[int, ...]) -> tuple[int, ...]:
        return (*input_shape[:-1], self.out_features)

    def forward(self, params: dict, x, ctx: MicroBatch):
        # x: (..., in) -> y: (..., out)
        y = matmul(x.reshape(-1, self.in_features), params["weight"])
        if self.bias:
            y += params["bias"]
        return y.reshape(*x.shape[:-1], self.out_features), x

    def backward_input(self, params: dict, dy, cache):
        x = cache
        dx = matmul(dy.reshape(-1, self.out_features), params["weight"].T)
        return dx.reshape(x.shape), (x, dy)

    def backward_weight(self, grads: dict, wcache) -> None:
        x, dy = wcache
        dy2d = dy.reshape(-1, self.out_features)
        weight = grads["weight"]
        weight += matmul(x.reshape(-1, self.in_features).T, dy2d, dtype=weight.dtype)
        if self.bias:
            grads["bias"] += dy2d.sum(axis=0, dtype=grads["bias"].dtype)

    def cost(self, microbatch_size: int, seq_len: int, itemsize: int) -> LayerCost:
        rows = microbatch_size * seq_len
        matmul = 2.0 * rows * self.in_features * self.out_features
        bias = float(rows * self.out_features) if self.bias else 0.0
        params = self.in_features * self.out_features + (self.out_features if self.bias else 0)
        return LayerCost(
            forward_flops=matmul + bias,
            backward_flops=2.0 * matmul + bias,
            param_bytes=params * itemsize,
            activation_bytes=rows * self.in_features * itemsize,
            input_bytes=rows * self.in_features * itemsize,
            weight_cache_bytes=rows * (self.in_features + self.out_features) * itemsize,  # x, dy
        )
