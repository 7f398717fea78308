"""Pre-LN transformer block: x + attn(ln1(x)), then + mlp(ln2(.)).

Parameters carry dotted names ("ln1.weight", "attn.qkv.weight",
"mlp.fc.bias", ...). The input half of the backward chains the sublayers'
input halves and keeps their weight caches; Composite's weight half replays them.
"""

from __future__ import annotations

from dataclasses import dataclass

from mpipipe.layers.attention import Attention
from mpipipe.layers.base import MicroBatch
from mpipipe.layers.composite import Composite, scoped
from mpipipe.layers.layernorm import LayerNorm
from mpipipe.layers.mlp import MLP


@dataclass(eq=False)
class Block(Composite):
    channels: int
    n_head: int
    hidden: int
    causal: bool
    init_std: float = 0.02
    proj_init_std: float = 0.02
    is_body = True

    def __post_init__(self) -> None:
        self.sublayers = {
            "ln1": LayerNorm(self.channels),
            "attn": Attention(
                self.channels, self.n_head, self.causal, self.init_std, self.proj_init_std
            ),
            "ln2": LayerNorm(self.channels),
            "mlp": MLP(self.channels, self.hidden, self.init_std, self.proj_init_std),
        }

    def forward(self, params: dict, x, ctx: MicroBatch):
        caches = {}
        h, caches["ln1"] = self.sublayers["ln1"].forward(scoped(params, "ln1"), x, ctx)
        residual, caches["attn"] = self.sublayers["attn"].forward(scoped(params, "attn"), h, ctx)
        residual += x  # no cache holds the attention output, so add in place
        h, caches["ln2"] = self.sublayers["ln2"].forward(scoped(params, "ln2"), residual, ctx)
        y, caches["mlp"] = self.sublayers["mlp"].forward(scoped(params, "mlp"), h, ctx)
        y += residual
        return y, caches

    def backward_input(self, params: dict, dy, cache):
        wcaches = {}
        dh, wcaches["mlp"] = self.sublayers["mlp"].backward_input(
            scoped(params, "mlp"), dy, cache["mlp"]
        )
        dresidual, wcaches["ln2"] = self.sublayers["ln2"].backward_input(
            scoped(params, "ln2"), dh, cache["ln2"]
        )
        dresidual += dy
        dh, wcaches["attn"] = self.sublayers["attn"].backward_input(
            scoped(params, "attn"), dresidual, cache["attn"]
        )
        dx, wcaches["ln1"] = self.sublayers["ln1"].backward_input(
            scoped(params, "ln1"), dh, cache["ln1"]
        )
        dx += dresidual
        return dx, wcaches
