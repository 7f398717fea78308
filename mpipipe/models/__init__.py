"""Models: GPT and BERT as ordered lists of hand-written layers."""

from mpipipe.models.model import Model, build_model
from mpipipe.models.reference import forward_backward, loss_and_grads

__all__ = ["Model", "build_model", "forward_backward", "loss_and_grads"]
