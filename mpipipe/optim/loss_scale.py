"""fp16's dynamic loss scaling: the factor the loss gradient starts from, and how it moves.

The backward starts from `scale` instead of 1, so small gradients stay
above float16's smallest numbers; the optimizer divides it out again. When
some rank's gradients overflowed (the end-of-step statistics carry the
flag to every rank), every rank skips the step and halves the scale; after
`window` good steps in a row it doubles. The scale never drops below
MIN_SCALE: an overflow there is no overflow but a non-finite gradient,
which train.on_nan decides about. Every rank holds the same scaler, and
checkpoints save it, so a resumed run scales exactly as the uninterrupted one.
"""

from __future__ import annotations

from dataclasses import dataclass

MIN_SCALE = 1.0
GROWTH = 2.0


@dataclass
class LossScaler:
    scale: float = 1.0
    window: int = 2000  # good steps before the scale grows
    enabled: bool = False  # off: the scale stays 1 and never moves
    good_steps: int = 0  # good steps since the last change

    @property
    def at_minimum(self) -> bool:
        return self.scale <= MIN_SCALE

    def update(self, overflow: bool) -> None:
        """After a step: halve on an overflow, grow after `window` good steps."""
        if not self.enabled:
            return
        if overflow:
            self.scale = max(MIN_SCALE, self.scale / GROWTH)
            self.good_steps = 0
            return
        self.good_steps += 1
        if self.good_steps == self.window:
            self.scale *= GROWTH
            self.good_steps = 0
