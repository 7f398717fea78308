"""The learning rate of each step: linear warm-up, then cosine decay or constant."""

from __future__ import annotations

import math

from mpipipe.config.schema import OptimConfig


def learning_rate(step: int, config: OptimConfig, total_steps: int) -> float:
    """The learning rate of 0-based `step`.

    Warm-up rises linearly, lr * (step + 1) / warmup_steps, reaching lr on
    the last warm-up step. Cosine decay then falls from lr to
    lr * min_lr_ratio, reached at step == total_steps; "constant" stays at lr.
    """
    if step < 0:
        raise ValueError(f"learning_rate: step counts from 0, got {step}")
    if step < config.warmup_steps:
        return config.lr * (step + 1) / config.warmup_steps
    if config.decay == "constant" or total_steps <= config.warmup_steps:
        return config.lr
    progress = min(1.0, (step - config.warmup_steps) / (total_steps - config.warmup_steps))
    min_lr = config.lr * config.min_lr_ratio
    return min_lr + 0.5 * (config.lr - min_lr) * (1.0 + math.cos(math.pi * progress))
