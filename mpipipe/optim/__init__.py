"""Optimizers (AdamW, SGD), gradient clipping and the learning-rate schedule."""

from mpipipe.optim.adamw import AdamW
from mpipipe.optim.base import Optimizer, ParamGroup
from mpipipe.optim.build import build_optimizer
from mpipipe.optim.clipping import clip_coefficient
from mpipipe.optim.loss_scale import LossScaler
from mpipipe.optim.lr_schedule import learning_rate
from mpipipe.optim.sgd import SGD

__all__ = [
    "SGD",
    "AdamW",
    "LossScaler",
    "Optimizer",
    "ParamGroup",
    "build_optimizer",
    "clip_coefficient",
    "learning_rate",
]
