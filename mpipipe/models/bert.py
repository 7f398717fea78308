"""BERT (masked LM): the GPT stack with bidirectional attention under a padding mask.

[Embedding, Block x n_layer (bidirectional), LayerNorm, LMHead (tied by
default), CrossEntropy]; targets are IGNORE_INDEX except at masked positions.
The data appends two tokens to its vocabulary, PAD and MASK.
"""

from __future__ import annotations

from mpipipe.config.schema import ModelConfig
from mpipipe.layers.base import Layer
from mpipipe.models.transformer import transformer_layers


def bert_layers(config: ModelConfig, vocab_size: int, recompute: str = "none") -> list[Layer]:
    return transformer_layers(config, vocab_size, causal=False, recompute=recompute)
