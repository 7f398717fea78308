"""SGD with momentum; weight decay is L2, added to the gradient (PyTorch's SGD, no dampening)."""

from __future__ import annotations

from mpipipe.optim.base import Optimizer, ParamGroup


class SGD(Optimizer):
    """g = grad * grad_scale + weight_decay * p;  b = momentum * b + g;  p -= lr * b."""

    STATE_NAMES = ("momentum",)

    def __init__(self, groups: list[ParamGroup], momentum: float):
        if not 0.0 <= momentum < 1.0:
            raise ValueError(f"SGD needs a momentum in [0, 1), got {momentum}")
        super().__init__(groups)
        self.momentum = momentum

    def step(self, lr: float, grad_scale: float = 1.0) -> None:
        """Apply one update; grad_scale multiplies every gradient first (the clip coefficient)."""
        self.step_count += 1
        for group, state in zip(self.groups, self.state, strict=True):
            velocity = state["momentum"]
            velocity *= self.momentum
            velocity += group.grad * grad_scale
            if group.weight_decay:
                velocity += group.weight_decay * group.param
            group.param -= lr * velocity
