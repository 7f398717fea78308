"""What every optimizer shares: parameter groups and per-group state."""

from __future__ import annotations

from collections.abc import Hashable
from dataclasses import dataclass

from mpipipe.backend import array_module


@dataclass
class ParamGroup:
    """One flat parameter array, its gradient (same shape) and its weight decay.

    `key` says which part of the parameters the group is (the trainer's groups: a
    `runtime.params.Span`), so that its state can be found without relying on order.
    """

    param: object
    grad: object
    weight_decay: float
    key: Hashable | None = None


class Optimizer:
    """Holds groups and their state arrays, allocated once beside each parameter.

    state[i][name] lives on the same module (NumPy or CuPy), with the same
    shape and dtype, as groups[i].param. Subclasses name their state arrays
    in STATE_NAMES and implement step().
    """

    STATE_NAMES: tuple[str, ...] = ()

    def __init__(self, groups: list[ParamGroup]):
        for index, group in enumerate(groups):
            if group.param.shape != group.grad.shape:
                raise ValueError(
                    f"parameter group {index}: param shape {group.param.shape} differs from "
                    f"grad shape {group.grad.shape}"
                )
        self.groups = list(groups)
        self.state: list[dict[str, object]] = [
            {name: array_module(group.param).zeros_like(group.param) for name in self.STATE_NAMES}
            for group in self.groups
        ]
        self.step_count = 0

    def step(self, lr: float, grad_scale: float = 1.0) -> None:
        raise NotImplementedError
