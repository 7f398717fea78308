"""The layer list GPT and BERT share: embedding, blocks, final norm, LM head, loss.

GPT-2 initialisation: weights N(0, init_std), the residual output
projections (attention and MLP `proj`) N(0, init_std / sqrt(2 * n_layer)),
biases 0, LayerNorm weight 1 and bias 0.
"""

from __future__ import annotations

import math

from mpipipe.config.schema import ModelConfig
from mpipipe.layers.base import Layer
from mpipipe.layers.block import Block
from mpipipe.layers.cross_entropy import CrossEntropy
from mpipipe.layers.embedding import Embedding
from mpipipe.layers.layernorm import LayerNorm
from mpipipe.layers.lm_head import LMHead
from mpipipe.layers.recompute import apply_recompute


def transformer_layers(
    config: ModelConfig, vocab_size: int, causal: bool, recompute: str = "none"
) -> list[Layer]:
    """[Embedding, Block x n_layer, LayerNorm, LMHead, CrossEntropy]; causal or bidirectional,
    the blocks under the `recompute` policy (mpipipe.layers.recompute)."""
    hidden = config.d_ff or 4 * config.d_model
    residual_std = config.init_std / math.sqrt(2 * config.n_layer)
    blocks = [
        apply_recompute(
            Block(config.d_model, config.n_head, hidden, causal, config.init_std, residual_std),
            recompute,
        )
        for _ in range(config.n_layer)
    ]
    return [
        Embedding(vocab_size, config.seq_len, config.d_model, config.init_std),
        *blocks,
        LayerNorm(config.d_model),
        LMHead(config.d_model, vocab_size, config.tie_embeddings, config.init_std),
        CrossEntropy(vocab_size),
    ]
