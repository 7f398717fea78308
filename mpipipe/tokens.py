"""Token-id conventions that data, layers, models and the config all follow.

The model kinds and the ids each needs beyond its data's vocabulary (BERT
appends PAD and MASK after the data's ids), the vocabulary of byte-level
text, and the target id that no loss is taken on. This module imports
nothing of mpipipe, so every layer may use it.
"""

from __future__ import annotations

MODEL_KINDS = ("gpt", "bert")
BYTE_VOCAB_SIZE = 256  # every byte of some text is one token
SPECIAL_TOKENS = 2  # BERT's PAD and MASK, appended after the data vocabulary
IGNORE_INDEX = -100  # a target that is not counted in the loss


def special_tokens(kind: str) -> int:
    """Ids a `kind` model needs beyond the data vocabulary: BERT's PAD and MASK, none for GPT."""
    return SPECIAL_TOKENS if kind == "bert" else 0
