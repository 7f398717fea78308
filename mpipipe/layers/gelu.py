"""GELU activation (GPT-2's tanh approximation, the fused op); no parameters."""

from __future__ import annotations

from dataclasses import dataclass

from mpipipe.fused import gelu_backward, gelu_forward
from mpipipe.layers.base import Layer, LayerCost, MicroBatch


@dataclass(eq=False)
class GELU(Layer):
    channels: int

    def forward(self, params: dict, x, ctx: MicroBatch):
        return gelu_forward(x), x

    def backward_input(self, params: dict, dy, cache):
        return gelu_backward(cache, dy), None

    def cost(self, microbatch_size: int, seq_len: int, itemsize: int) -> LayerCost:
        elements = float(microbatch_size * seq_len * self.channels)
        return LayerCost(
            forward_flops=10.0 * elements,
            backward_flops=20.0 * elements,
            param_bytes=0,
            activation_bytes=int(elements) * itemsize,
            input_bytes=int(elements) * itemsize,
        )
