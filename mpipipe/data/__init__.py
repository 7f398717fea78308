"""Training data: token sources and the Batcher that cuts them into micro-batches.

`build_batcher(config)` opens the source `data.source` names, checks it
against the model (length, vocabulary) and returns a `Batcher`; every rank
builds the same one and asks it for its own replica's micro-batches.
"""

from __future__ import annotations

import numpy as np

from mpipipe.config.schema import Config
from mpipipe.config.validate import check_vocabulary_fits
from mpipipe.data.arrays import hdf5_tokens, npy_tokens, token_vocab_size
from mpipipe.data.batches import Batcher, window_length
from mpipipe.data.corpus import stdlib_corpus, text_corpus
from mpipipe.data.random_tokens import random_tokens
from mpipipe.data.split import split_corpus
from mpipipe.errors import UsageError
from mpipipe.tokens import BYTE_VOCAB_SIZE, special_tokens

# Length of the random-token stream when it does not have to be longer for one window.
RANDOM_TOKENS_COUNT = 1 << 20

__all__ = ["Batcher", "build_batcher"]


def build_batcher(config: Config) -> Batcher:
    """The Batcher for `config`'s data source, model kind, sequence length and layout."""
    model, data = config.model, config.data
    tokens, vocab_size, where = _open_source(config)
    _check_fits(tokens, where, config, vocab_size)
    return Batcher(
        tokens, kind=model.kind, seq_len=model.seq_len, microbatch_size=data.microbatch_size,
        microbatches=config.parallel.microbatches, replicas=config.parallel.data_parallel,
        seed=config.train.seed, vocab_size=vocab_size, mask_prob=data.mask_prob,
        min_fill=data.min_fill, eval_fraction=data.eval_fraction,
    )


def _open_source(config: Config) -> tuple[np.ndarray, int, str]:
    """The tokens, their vocabulary size and how to name them in an error."""
    data = config.data
    if data.source == "stdlib":
        return stdlib_corpus(), BYTE_VOCAB_SIZE, "data.source = 'stdlib'"
    if data.source == "text":
        return text_corpus(data.path), BYTE_VOCAB_SIZE, f"data.path {data.path!r}"
    if data.source == "random":
        vocab_size = max(1, config.model.vocab_size - special_tokens(config.model.kind))
        count = max(RANDOM_TOKENS_COUNT, config.model.seq_len + 1)
        tokens = random_tokens(vocab_size, count, config.train.seed)
        return tokens, vocab_size, "data.source = 'random'"
    if data.source == "npy":
        tokens, where = npy_tokens(data.path), f"data.path {data.path!r}"
    else:  # hdf5, the last of the schema's DATA_SOURCES
        tokens = hdf5_tokens(data.path, data.dataset)
        where = f"data.dataset {data.dataset!r} of data.path {data.path!r}"
    return tokens, token_vocab_size(tokens, where), where


def _check_fits(tokens: np.ndarray, where: str, config: Config, vocab_size: int) -> None:
    """The corpus holds one window and its token ids (plus BERT's PAD and MASK) fit the model."""
    model = config.model
    window = window_length(model.kind, model.seq_len)
    formula = "model.seq_len + 1" if window > model.seq_len else "model.seq_len"
    if len(tokens) < window:
        raise UsageError(f"{where} has {len(tokens)} tokens, fewer than {formula} = {window}: use "
                         "a longer corpus or a smaller model.seq_len")
    check_vocabulary_fits(model, vocab_size, where)
    _check_held_out(len(tokens), window, where, config)


def _check_held_out(corpus_tokens: int, window: int, where: str, config: Config) -> None:
    """data.eval_fraction holds out at least one micro-batch of windows, and leaves training
    at least one window."""
    data = config.data
    if data.eval_fraction <= 0:
        return
    split = split_corpus(corpus_tokens, window, data.eval_fraction)
    if split.eval_windows < data.microbatch_size:
        raise UsageError(
            f"data.eval_fraction = {data.eval_fraction} holds out {split.eval_windows} "
            f"window(s) of {window} tokens of the {corpus_tokens} of {where}, "
            f"fewer than one micro-batch (data.microbatch_size = {data.microbatch_size}): "
            "raise data.eval_fraction, or use a longer corpus or a smaller model.seq_len"
        )
    if split.train_offsets < 1:
        raise UsageError(
            f"data.eval_fraction = {data.eval_fraction} leaves no training window of {window} "
            f"tokens in {where}: lower data.eval_fraction or use a longer corpus"
        )
