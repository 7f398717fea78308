"""The held-out split: which token ranges only evaluation may read.

The token stream is cut into blocks of EVAL_BLOCK_WINDOWS windows; with
fraction f, block j is held out when floor((j + 1) f) > floor(j f), which
spreads floor(blocks * f) held-out blocks evenly over the corpus (so the
held-out text is not one corner of it). Training windows are drawn only
from offsets whose whole window lies in the training blocks; evaluation
reads the held-out blocks as consecutive, non-overlapping windows. The
split is a pure function of (corpus length, window, fraction): every rank
and every layout makes the same one, and with f = 0 training draws its
offsets exactly as without a split.
"""

from __future__ import annotations

import bisect
import math
from dataclasses import dataclass

EVAL_BLOCK_WINDOWS = 8


@dataclass(frozen=True)
class Split:
    corpus_tokens: int
    window: int
    fraction: float
    block_tokens: int
    train_runs: tuple[tuple[int, int], ...]  # token ranges [start, end) training may read
    eval_runs: tuple[tuple[int, int], ...]  # held-out token ranges

    @property
    def train_offsets(self) -> int:
        """How many window offsets training can draw from."""
        return sum(_offsets(run, self.window) for run in self.train_runs)

    def train_offset(self, index: int) -> int:
        """The `index`-th training offset, in corpus order (0 <= index < train_offsets)."""
        starts = self._train_starts()
        run = bisect.bisect_right(starts, index) - 1
        return self.train_runs[run][0] + index - starts[run]

    def _train_starts(self) -> list[int]:
        starts, total = [], 0
        for run in self.train_runs:
            starts.append(total)
            total += _offsets(run, self.window)
        return starts

    @property
    def eval_windows(self) -> int:
        """Non-overlapping windows in the held-out ranges."""
        return sum((end - start) // self.window for start, end in self.eval_runs)

    def eval_offset(self, index: int) -> int:
        """Offset of held-out window `index` (taken modulo eval_windows)."""
        index %= self.eval_windows
        for start, end in self.eval_runs:
            count = (end - start) // self.window
            if index < count:
                return start + index * self.window
            index -= count
        raise AssertionError("unreachable: index is below eval_windows")

    def describe(self) -> str:
        """One line for the checkpoint's attributes: enough to make the same split again."""
        held = sum(end - start for start, end in self.eval_runs)
        return (
            f"data.eval_fraction={self.fraction} block_tokens={self.block_tokens} "
            f"corpus_tokens={self.corpus_tokens} held_out_tokens={held} "
            f"held_out_ranges={len(self.eval_runs)} eval_windows={self.eval_windows}"
        )


def _offsets(run: tuple[int, int], window: int) -> int:
    return max(0, run[1] - run[0] - window + 1)


def split_corpus(corpus_tokens: int, window: int, fraction: float) -> Split:
    """The split of a corpus of `corpus_tokens` tokens read in windows of `window`."""
    block = EVAL_BLOCK_WINDOWS * window
    if fraction <= 0:
        return Split(corpus_tokens, window, fraction, block, ((0, corpus_tokens),), ())
    blocks = math.ceil(corpus_tokens / block)
    train: list[list[int]] = []
    held: list[list[int]] = []
    for index in range(blocks):
        start, end = index * block, min((index + 1) * block, corpus_tokens)
        runs = held if math.floor((index + 1) * fraction) > math.floor(index * fraction) else train
        if runs and runs[-1][1] == start:
            runs[-1][1] = end
        else:
            runs.append([start, end])
    return Split(corpus_tokens, window, fraction, block,
                 tuple(map(tuple, train)), tuple(map(tuple, held)))
