"""Micro-batches drawn by global position, so every parallel layout sees the same data.

Step `step` of a job with R replicas and N micro-batches per replica uses the
global micro-batches g = step * R * N ... (step + 1) * R * N - 1; replica r's
micro-batch i is g = (step * R + r) * N + i, and it holds the samples
g * B ... g * B + B - 1 (B = microbatch_size). A sample is a pure function of
(seed, sample id): its window offset (and, for BERT, its length and masking)
come from its own generator, np.random.default_rng([seed, DATA_STREAM,
sample id]). So 2 replicas x 2 micro-batches and 1 replica x 4 micro-batches
train on the same global batch, and resuming at a step needs only the step.

With data.eval_fraction > 0 the corpus is split (`mpipipe.data.split`):
training offsets come only from the training blocks, and `held_out(batches)`
gives the evaluation's micro-batches, read from the held-out blocks in
order, drawn by the same (step, replica, index) rule from a stream of their
own, with one loss normaliser over all of their counted targets.

GPT: a window of seq_len + 1 tokens; inputs w[:-1], targets w[1:].
BERT (masked LM): a window of seq_len tokens of which the first `length` are
real (length drawn from [ceil(min_fill * seq_len), seq_len]) and the rest
PAD; round(mask_prob * length) real positions (at least one) are chosen and
become targets, their inputs replaced by MASK (80%), a random token (10%) or
left unchanged (10%). PAD = vocab_size and MASK = vocab_size + 1, so the
model needs vocab_size + SPECIAL_TOKENS ids (mpipipe.tokens).
"""

from __future__ import annotations

import math

import numpy as np

from mpipipe.data.split import split_corpus
from mpipipe.microbatch import MicroBatch
from mpipipe.tokens import IGNORE_INDEX, MODEL_KINDS, special_tokens


def window_length(kind: str, seq_len: int) -> int:
    """Tokens one sample reads: GPT's targets run one token past its inputs."""
    return seq_len + 1 if kind == "gpt" else seq_len


# Distinguish the data order (training, held-out) from the other users of the run's seed.
DATA_STREAM = 0xDA7A
EVAL_STREAM = 0xE7A1

MASK_SHARE = 0.8  # chosen positions whose input becomes MASK
RANDOM_SHARE = 0.1  # ... a random token; the rest keep their token


class Batcher:
    """Deterministic GPT or BERT micro-batches over a 1-D token array."""

    def __init__(self, tokens: np.ndarray, *, kind: str, seq_len: int, microbatch_size: int,
                 microbatches: int, replicas: int, seed: int, vocab_size: int,
                 mask_prob: float = 0.15, min_fill: float = 0.5, eval_fraction: float = 0.0):
        if kind not in MODEL_KINDS:
            raise ValueError(f"kind must be one of {MODEL_KINDS}, got {kind!r}")
        self.tokens = tokens
        self.kind = kind
        self.seq_len = seq_len
        self.microbatch_size = microbatch_size
        self.microbatches = microbatches
        self.replicas = replicas
        self.seed = seed
        self.vocab_size = vocab_size
        self.mask_prob = mask_prob
        self.shortest = max(1, math.ceil(round(min_fill * seq_len, 9)))
        self.window = window_length(kind, seq_len)
        if len(tokens) < self.window:
            raise ValueError(f"{len(tokens)} tokens are fewer than one window of {self.window}")
        self.split = split_corpus(len(tokens), self.window, eval_fraction)
        if self.split.train_offsets < 1:
            raise ValueError(f"no training window is left beside {self.split.describe()}")
        self._normalizer: tuple[int, float] | None = None  # (step, value) of the last step asked

    @property
    def pad_token(self) -> int:
        return self.vocab_size

    @property
    def mask_token(self) -> int:
        return self.vocab_size + 1

    @property
    def model_vocab_size(self) -> int:
        """Smallest model vocabulary that holds every input and target id."""
        return self.vocab_size + special_tokens(self.kind)

    @property
    def samples_per_step(self) -> int:
        return self.replicas * self.microbatches * self.microbatch_size

    def microbatch(self, step: int, replica: int, index: int) -> MicroBatch:
        """Micro-batch `index` of replica `replica` at `step`: (microbatch_size, seq_len) arrays."""
        first = self.first_sample(step, replica, index)
        samples = range(first, first + self.microbatch_size)
        return self.assemble(samples, self.loss_normalizer(step), held_out=False)

    def first_sample(self, step: int, replica: int, index: int) -> int:
        if not (0 <= replica < self.replicas and 0 <= index < self.microbatches and step >= 0):
            raise ValueError(f"no micro-batch (step={step}, replica={replica}, index={index}) with "
                             f"{self.replicas} replicas x {self.microbatches} micro-batches")
        position = (step * self.replicas + replica) * self.microbatches + index
        return position * self.microbatch_size

    def global_batch(self, step: int) -> MicroBatch:
        """All replicas' micro-batches of `step`, concatenated in (replica, index) order."""
        first = step * self.samples_per_step
        samples = range(first, first + self.samples_per_step)
        return self.assemble(samples, self.loss_normalizer(step), held_out=False)

    def held_out(self, batches: int) -> HeldOutBatches:
        """The evaluation's `batches` global batches, read from the held-out windows."""
        if self.split.eval_windows == 0:
            raise ValueError(f"no held-out windows: {self.split.describe()}")
        return HeldOutBatches(self, batches)

    def loss_normalizer(self, step: int) -> float:
        """Number of counted targets in the global batch of `step`."""
        if self.kind == "gpt":
            return float(self.samples_per_step * self.seq_len)
        if self._normalizer is None or self._normalizer[0] != step:
            first = step * self.samples_per_step
            samples = range(first, first + self.samples_per_step)
            counted = self.counted_targets(samples, held_out=False)
            self._normalizer = (step, float(counted))
        return self._normalizer[1]

    def counted_targets(self, samples: range, held_out: bool) -> int:
        """Targets the loss counts in `samples` (training or held-out ones)."""
        if self.kind == "gpt":
            return len(samples) * self.seq_len
        return sum(self._masked_count(self._draw(sample, held_out)[2]) for sample in samples)

    def assemble(self, samples: range, normalizer: float, held_out: bool) -> MicroBatch:
        if self.kind == "gpt":
            windows = np.stack([self._gpt_window(sample, held_out) for sample in samples])
            tokens, targets = np.ascontiguousarray(windows[:, :-1]), windows[:, 1:].copy()
            attention_mask = None
        else:
            rows = [self._bert_sample(sample, held_out) for sample in samples]
            tokens, targets, attention_mask = (np.stack(column)
                                               for column in zip(*rows, strict=True))
        return MicroBatch(tokens=tokens, targets=targets, attention_mask=attention_mask,
                          loss_normalizer=normalizer)

    def _draw(self, sample: int, held_out: bool) -> tuple[np.random.Generator, int, int]:
        """The sample's generator, window offset and (BERT) real length, drawn in this order."""
        rng = np.random.default_rng([self.seed, EVAL_STREAM if held_out else DATA_STREAM, sample])
        if held_out:
            offset = self.split.eval_offset(sample)
        else:
            offset = self.split.train_offset(int(rng.integers(0, self.split.train_offsets)))
        length = int(rng.integers(self.shortest, self.seq_len + 1)) if self.kind == "bert" else 0
        return rng, offset, length

    def _masked_count(self, length: int) -> int:
        return max(1, math.floor(self.mask_prob * length + 0.5))

    def _gpt_window(self, sample: int, held_out: bool) -> np.ndarray:
        _, offset, _ = self._draw(sample, held_out)
        return np.asarray(self.tokens[offset:offset + self.window], dtype=np.int64)

    def _bert_sample(self, sample: int,
                     held_out: bool) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        rng, offset, length = self._draw(sample, held_out)
        original = np.asarray(self.tokens[offset:offset + length], dtype=np.int64)
        chosen = rng.choice(length, size=self._masked_count(length), replace=False)
        action = rng.random(chosen.size)
        replacement = rng.integers(0, self.vocab_size, size=chosen.size)

        tokens = np.full(self.seq_len, self.pad_token, dtype=np.int64)
        tokens[:length] = original
        tokens[chosen] = np.where(action < MASK_SHARE, self.mask_token,
                                  np.where(action < MASK_SHARE + RANDOM_SHARE, replacement,
                                           original[chosen]))
        targets = np.full(self.seq_len, IGNORE_INDEX, dtype=np.int64)
        targets[chosen] = original[chosen]
        return tokens, targets, np.arange(self.seq_len) < length


class HeldOutBatches:
    """The evaluation's micro-batches: `batches` global batches of held-out windows.

    Micro-batch (step, replica, index) for step < batches follows the training rule over
    the held-out windows (cycling when they are fewer); every micro-batch's loss is
    divided by the counted targets of all of them, so the losses sum to their mean.
    """

    def __init__(self, batcher: Batcher, batches: int):
        self.batcher = batcher
        self.batches = batches
        self.vocab_size = batcher.vocab_size
        self.loss_normalizer = float(
            batcher.counted_targets(range(batches * batcher.samples_per_step), held_out=True)
        )

    def microbatch(self, step: int, replica: int, index: int) -> MicroBatch:
        if not 0 <= step < self.batches:
            raise ValueError(f"no held-out batch {step}: there are {self.batches}")
        batcher = self.batcher
        first = batcher.first_sample(step, replica, index)
        samples = range(first, first + batcher.microbatch_size)
        return batcher.assemble(samples, self.loss_normalizer, held_out=True)

    def all_samples(self) -> MicroBatch:
        """Every held-out micro-batch of the evaluation as one batch (the reference's input)."""
        batcher = self.batcher
        samples = range(self.batches * batcher.samples_per_step)
        return batcher.assemble(samples, self.loss_normalizer, held_out=True)
