"""Transformer MLP: Linear(C, d_ff) -> GELU -> Linear(d_ff, C)."""

from __future__ import annotations

from dataclasses import dataclass

from mpipipe.layers.base import MicroBatch
from mpipipe.layers.composite import Composite, scoped
from mpipipe.layers.gelu import GELU
from mpipipe.layers.linear import Linear


@dataclass(eq=False)
class MLP(Composite):
    channels: int
    hidden: int
    init_std: float = 0.02
    proj_init_std: float = 0.02

    def __post_init__(self) -> None:
        self.sublayers = {
            "fc": Linear(self.channels, self.hidden, self.init_std),
            "gelu": GELU(self.hidden),
            "proj": Linear(self.hidden, self.channels, self.proj_init_std),
        }

    def forward(self, params: dict, x, ctx: MicroBatch):
        fc, gelu, proj = self.sublayers.values()
        # x: (B, T, C) -> h: (B, T, d_ff) -> y: (B, T, C)
        h, fc_cache = fc.forward(scoped(params, "fc"), x, ctx)
        h, gelu_cache = gelu.forward({}, h, ctx)
        y, proj_cache = proj.forward(scoped(params, "proj"), h, ctx)
        return y, (fc_cache, gelu_cache, proj_cache)

    def backward_input(self, params: dict, dy, cache):
        fc, gelu, proj = self.sublayers.values()
        fc_cache, gelu_cache, proj_cache = cache
        wcaches = {}
        dh, wcaches["proj"] = proj.backward_input(scoped(params, "proj"), dy, proj_cache)
        dh, wcaches["gelu"] = gelu.backward_input({}, dh, gelu_cache)
        dx, wcaches["fc"] = fc.backward_input(scoped(params, "fc"), dh, fc_cache)
        return dx, wcaches
