"""What every optimizer shares: parameter groups, per-group state and its checkpoint form."""

from __future__ import annotations

from collections.abc import Hashable
from dataclasses import dataclass

import numpy as np

from mpipipe.backend import array_module
from mpipipe.errors import UsageError


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

    def state_dict(self) -> dict:
        """Host copies: {"step_count": int, "state": {group index: {name: np.ndarray}}}."""
        return {
            "step_count": self.step_count,
            "state": {
                index: {name: _host_copy(array) for name, array in arrays.items()}
                for index, arrays in enumerate(self.state)
            },
        }

    def load_state_dict(self, saved: dict) -> None:
        """Write saved host arrays into the existing state arrays (for resuming a checkpoint)."""
        saved_state = saved["state"]
        if set(saved_state) != set(range(len(self.state))):
            raise UsageError(
                f"checkpoint optimizer state has {len(saved_state)} parameter groups, the model "
                f"has {len(self.state)}; load a checkpoint of the same model"
            )
        for index, arrays in enumerate(self.state):
            if set(saved_state[index]) != set(arrays):
                raise UsageError(
                    f"checkpoint optimizer state of group {index} holds "
                    f"{sorted(saved_state[index])}, {type(self).__name__} needs {sorted(arrays)}; "
                    f"resume with the optimizer (optim.name) the checkpoint was written with"
                )
            for name, array in arrays.items():
                host = np.asarray(saved_state[index][name])
                if host.shape != array.shape:
                    raise UsageError(
                        f"checkpoint optimizer state {name!r} of group {index} has shape "
                        f"{host.shape}, the model needs {array.shape}; load a checkpoint of the "
                        f"same model"
                    )
        for index, arrays in enumerate(self.state):
            for name, array in arrays.items():
                array[...] = array_module(array).asarray(saved_state[index][name], array.dtype)
        self.step_count = int(saved["step_count"])


def _host_copy(array) -> np.ndarray:
    if array_module(array) is np:
        return array.copy()
    return array.get()
