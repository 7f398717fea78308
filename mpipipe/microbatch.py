"""The micro-batch record: made by the data, read by the layers and the engine."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class MicroBatch:
    """What a stage needs to know about the micro-batch it runs on.

    tokens:        (B, T) int64 token ids (the first stage's input)
    targets:       (B, T) int64 target ids, IGNORE_INDEX (mpipipe.tokens) where no loss is taken
    attention_mask:(B, T) bool, True for real tokens, False for padding; None for no padding
    loss_normalizer: number of counted target tokens in the whole global batch, so
                   that summing micro-batch losses gives the global mean
    """

    tokens: object
    targets: object
    attention_mask: object | None
    loss_normalizer: float
