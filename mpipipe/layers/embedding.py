"""Token plus position embedding: y[b, t] = wte[tokens[b, t]] + wpe[t].

The input is token ids, which have no gradient; the weight half scatters
the output gradient back into the rows of wte that were looked up.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from mpipipe.backend import array_module
from mpipipe.errors import UsageError
from mpipipe.layers.base import Layer, LayerCost, MicroBatch

TOKEN_ID_BYTES = 8  # int64 ids


@dataclass(eq=False)
class Embedding(Layer):
    vocab_size: int
    seq_len: int
    channels: int
    init_std: float = 0.02
    is_body = False

    def param_shapes(self) -> dict[str, tuple[int, ...]]:
        return {"wte": (self.vocab_size, self.channels), "wpe": (self.seq_len, self.channels)}

    def init_params(self, rng: np.random.Generator) -> dict[str, np.ndarray]:
        return {
            "wte": rng.normal(0.0, self.init_std, (self.vocab_size, self.channels)),
            "wpe": rng.normal(0.0, self.init_std, (self.seq_len, self.channels)),
        }

    def output_shape(self, input_shape: tuple[int, ...]) -> tuple[int, ...]:
        return (*input_shape, self.channels)

    def forward(self, params: dict, x, ctx: MicroBatch):
        wte = params["wte"]
        tokens = array_module(wte).asarray(x)
        if tokens.shape[1] > self.seq_len:
            raise UsageError(
                f"embedding: sequences of {tokens.shape[1]} tokens are longer than "
                f"model.seq_len={self.seq_len}; feed at most {self.seq_len} tokens per sequence"
            )
        # tokens: (B, T) -> y: (B, T, C)
        y = wte[tokens]
        y += params["wpe"][: tokens.shape[1]]
        return y, tokens

    def backward_input(self, params: dict, dy, cache):
        return None, (cache, dy)

    def backward_weight(self, grads: dict, wcache) -> None:
        tokens, dy = wcache
        wpe, wte = grads["wpe"], grads["wte"]
        wpe[: tokens.shape[1]] += dy.sum(axis=0, dtype=wpe.dtype)
        rows = dy.reshape(-1, self.channels).astype(wte.dtype, copy=False)
        scatter_add_rows(wte, tokens.reshape(-1), rows)

    def cost(self, microbatch_size: int, seq_len: int, itemsize: int) -> LayerCost:
        elements = float(microbatch_size * seq_len * self.channels)
        return LayerCost(
            forward_flops=elements,
            backward_flops=2.0 * elements,
            param_bytes=(self.vocab_size + self.seq_len) * self.channels * itemsize,
            activation_bytes=microbatch_size * seq_len * TOKEN_ID_BYTES,
            input_bytes=microbatch_size * seq_len * TOKEN_ID_BYTES,
            weight_cache_bytes=microbatch_size * seq_len * TOKEN_ID_BYTES
            + int(elements) * itemsize,  # the tokens and dy
        )


def scatter_add_rows(target, rows, values) -> None:
    """target[rows[i]] += values[i] for every i, a row named twice getting both."""
    if array_module(target) is np:
        np.add.at(target, rows, values)
    else:
        import cupyx

        cupyx.scatter_add(target, rows, values)
