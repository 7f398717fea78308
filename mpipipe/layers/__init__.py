"""Hand-written layers: forward, and a backward split into input and weight halves."""

from mpipipe.layers.attention import Attention
from mpipipe.layers.base import Layer, LayerCost, MicroBatch
from mpipipe.layers.block import Block
from mpipipe.layers.cross_entropy import CrossEntropy
from mpipipe.layers.embedding import Embedding
from mpipipe.layers.gelu import GELU
from mpipipe.layers.layernorm import LayerNorm
from mpipipe.layers.linear import Linear
from mpipipe.layers.lm_head import LMHead
from mpipipe.layers.mlp import MLP
from mpipipe.layers.recompute import Recomputed, apply_recompute
from mpipipe.tokens import IGNORE_INDEX

__all__ = [
    "IGNORE_INDEX",
    "MLP",
    "Attention",
    "Block",
    "CrossEntropy",
    "Embedding",
    "GELU",
    "LMHead",
    "Layer",
    "LayerCost",
    "LayerNorm",
    "Linear",
    "MicroBatch",
    "Recomputed",
    "apply_recompute",
]
