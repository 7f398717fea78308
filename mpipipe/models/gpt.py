"""GPT: [Embedding, Block x n_layer (causal), LayerNorm, LMHead, CrossEntropy].

Initialisation as in `mpipipe.models.transformer` (GPT-2's).
"""

from __future__ import annotations

from mpipipe.config.schema import ModelConfig
from mpipipe.layers.base import Layer
from mpipipe.models.transformer import transformer_layers


def gpt_layers(config: ModelConfig, vocab_size: int, recompute: str = "none") -> list[Layer]:
    return transformer_layers(config, vocab_size, causal=True, recompute=recompute)
