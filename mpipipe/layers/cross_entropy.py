"""Softmax cross-entropy loss layer (no parameters).

forward(params, logits, ctx) returns the loss summed over counted targets
and divided by ctx.loss_normalizer (the global batch's counted targets), as
a 0-d array: summing it over micro-batches gives the global-batch mean.
Targets equal to IGNORE_INDEX are not counted. backward takes the upstream
scalar (1.0 for the loss itself) and returns dlogits.
"""

from __future__ import annotations

from dataclasses import dataclass

from mpipipe.backend import array_module
from mpipipe.fused import cross_entropy_backward, cross_entropy_forward
from mpipipe.layers.base import Layer, LayerCost, MicroBatch
from mpipipe.tokens import IGNORE_INDEX


@dataclass(eq=False)
class CrossEntropy(Layer):
    vocab_size: int
    ignore_index: int = IGNORE_INDEX
    is_body = False

    def output_shape(self, input_shape: tuple[int, ...]) -> tuple[int, ...]:
        return ()

    def forward(self, params: dict, x, ctx: MicroBatch):
        targets = array_module(x).asarray(ctx.targets).reshape(-1)
        normalizer = float(ctx.loss_normalizer)
        # logits: (B, T, V) -> (B*T, V); loss: 0-d
        loss, probs = cross_entropy_forward(
            x.reshape(-1, self.vocab_size), targets, self.ignore_index, normalizer
        )
        return loss, (probs, targets, normalizer, x.shape, x.dtype)

    def backward_input(self, params: dict, dy, cache):
        probs, targets, normalizer, shape, dtype = cache
        # The fused backward overwrites probs: one backward per forward.
        dlogits = cross_entropy_backward(probs, targets, self.ignore_index, normalizer, dy, dtype)
        return dlogits.reshape(shape), None

    def cost(self, microbatch_size: int, seq_len: int, itemsize: int) -> LayerCost:
        elements = float(microbatch_size * seq_len * self.vocab_size)
        return LayerCost(
            forward_flops=5.0 * elements,
            backward_flops=2.0 * elements,
            param_bytes=0,
            activation_bytes=int(elements) * itemsize,
            input_bytes=int(elements) * itemsize,
        )
