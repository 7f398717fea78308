"""AdamW (decoupled weight decay), one fused update per parameter group."""

from __future__ import annotations

from mpipipe.fused import adamw_update
from mpipipe.optim.base import Optimizer, ParamGroup


class AdamW(Optimizer):
    """PyTorch's AdamW: bias-corrected moments "m" and "v", decay p -= lr * weight_decay * p."""

    STATE_NAMES = ("m", "v")

    def __init__(self, groups: list[ParamGroup], beta1: float, beta2: float, eps: float):
        # The config schema holds these bounds for users; here they are a caller's contract.
        if not (0.0 <= beta1 < 1.0 and 0.0 <= beta2 < 1.0 and eps > 0.0):
            raise ValueError(
                f"AdamW needs betas in [0, 1) and eps > 0, got {beta1}, {beta2}, {eps}"
            )
        super().__init__(groups)
        self.beta1 = beta1
        self.beta2 = beta2
        self.eps = eps

    def step(self, lr: float, grad_scale: float = 1.0) -> None:
        """Apply one update; grad_scale multiplies every gradient first (the clip coefficient)."""
        self.step_count += 1
        for group, state in zip(self.groups, self.state, strict=True):
            adamw_update(
                group.param,
                group.grad,
                state["m"],
                state["v"],
                lr=lr,
                beta1=self.beta1,
                beta2=self.beta2,
                eps=self.eps,
                weight_decay=group.weight_decay,
                step=self.step_count,
                grad_scale=grad_scale,
            )
