"""Build the optimizer the config names."""

from __future__ import annotations

from mpipipe.config.schema import OptimConfig
from mpipipe.optim.adamw import AdamW
from mpipipe.optim.base import Optimizer, ParamGroup
from mpipipe.optim.sgd import SGD

OPTIMIZERS = ("adamw", "sgd")


def build_optimizer(groups: list[ParamGroup], config: OptimConfig) -> Optimizer:
    """AdamW or SGD over `groups`, with the hyperparameters of `config` (lr is per step)."""
    if config.name == "adamw":
        return AdamW(groups, beta1=config.beta1, beta2=config.beta2, eps=config.eps)
    if config.name == "sgd":
        return SGD(groups, momentum=config.momentum)
    raise ValueError(f"unknown optimizer {config.name!r}; the config schema allows "
                     f"{', '.join(OPTIMIZERS)}")

