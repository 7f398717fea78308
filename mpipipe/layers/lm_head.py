"""Language-model head: logits = x @ wte.T with the tied token embedding, or x @ W.

Tied (GPT-2's default): `tied` names the embedding's "wte" (V, C), and the
engine hands this layer that array as params["weight"] and its gradient as
grads["weight"]; param_shapes lists it, init_params does not. Untied: the
layer owns weight (C, V).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from mpipipe.fused import matmul
from mpipipe.layers.base import Layer, LayerCost, MicroBatch

EMBEDDING_LAYER_INDEX = 0


@dataclass(eq=False)
class LMHead(Layer):
    channels: int
    vocab_size: int
    tie_embeddings: bool = True
    init_std: float = 0.02
    is_body = False

    def __post_init__(self) -> None:
        self.tied = {"weight": (EMBEDDING_LAYER_INDEX, "wte")} if self.tie_embeddings else {}

    def param_shapes(self) -> dict[str, tuple[int, ...]]:
        """Every parameter the layer reads, the tied weight included (in wte's layout)."""
        if self.tie_embeddings:
            return {"weight": (self.vocab_size, self.channels)}
        return {"weight": (self.channels, self.vocab_size)}

    def init_params(self, rng: np.random.Generator) -> dict[str, np.ndarray]:
        if self.tie_embeddings:
            return {}
        return {"weight": rng.normal(0.0, self.init_std, (self.channels, self.vocab_size))}

    def weight_in_out(self, params: dict):
        """The weight as (C, V), a transposed view when tied."""
        return params["weight"].T if self.tie_embeddings else params["weight"]

    def output_shape(self, input_shape: tuple[int, ...]) -> tuple[int, ...]:
        return (*input_shape[:-1], self.vocab_size)

    def forward(self, params: dict, x, ctx: MicroBatch):
        # x: (B, T, C) -> logits: (B, T, V)
        logits = matmul(x.reshape(-1, self.channels), self.weight_in_out(params))
        return logits.reshape(*x.shape[:-1], self.vocab_size), x

    def backward_input(self, params: dict, dy, cache):
        x = cache
        dx = matmul(dy.reshape(-1, self.vocab_size), self.weight_in_out(params).T)
        return dx.reshape(x.shape), (x, dy)

    def backward_weight(self, grads: dict, wcache) -> None:
        x, dy = wcache
        x2d = x.reshape(-1, self.channels)
        dy2d = dy.reshape(-1, self.vocab_size)
        weight = grads["weight"]
        if self.tie_embeddings:
            weight += matmul(dy2d.T, x2d, dtype=weight.dtype)  # (V, C), the embedding's layout
        else:
            weight += matmul(x2d.T, dy2d, dtype=weight.dtype)  # (C, V)

    def cost(self, microbatch_size: int, seq_len: int, itemsize: int) -> LayerCost:
        rows = microbatch_size * seq_len
        matmul = 2.0 * rows * self.channels * self.vocab_size
        # A tied head still keeps a copy of wte on the stage that runs it.
        return LayerCost(
            forward_flops=matmul,
            backward_flops=2.0 * matmul,
            param_bytes=self.channels * self.vocab_size * itemsize,
            activation_bytes=rows * self.channels * itemsize,
            input_bytes=rows * self.channels * itemsize,
            weight_cache_bytes=rows * (self.channels + self.vocab_size) * itemsize,  # x, dy
        )
