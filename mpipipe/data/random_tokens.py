"""Uniform random tokens: data for benchmarks, with any vocabulary and no files."""

from __future__ import annotations

import numpy as np

# Distinguishes this stream from the other users of the run's seed.
RANDOM_TOKENS_STREAM = 0x70C5


def random_tokens(vocab_size: int, count: int, seed: int) -> np.ndarray:
    """`count` tokens drawn uniformly from [0, vocab_size), the same for the same seed."""
    dtype = np.uint16 if vocab_size <= 1 << 16 else np.uint32
    rng = np.random.default_rng([seed, RANDOM_TOKENS_STREAM])
    return rng.integers(0, vocab_size, size=count, dtype=dtype)
