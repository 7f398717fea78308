"""The same GPT in PyTorch, for side-by-side benchmarks (PyTorch is an optional extra).

Same layer list and math as mpipipe.models.gpt: token + position embedding,
pre-LN blocks (causal attention with a fused qkv projection, GELU-tanh MLP
of 4C), final LayerNorm, an untied bias-free LM head, mean cross-entropy.
The pipeline benchmarks cut it into stages with `stage_module`.
"""

from __future__ import annotations

import math

import torch
from torch import nn
from torch.nn import functional

from mpipipe.config.schema import ModelConfig


class Embedding(nn.Module):
    def __init__(self, config: ModelConfig):
        super().__init__()
        self.wte = nn.Embedding(config.vocab_size, config.d_model)
        self.wpe = nn.Embedding(config.seq_len, config.d_model)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        positions = torch.arange(tokens.shape[1], device=tokens.device)
        return self.wte(tokens) + self.wpe(positions)


class Attention(nn.Module):
    def __init__(self, config: ModelConfig):
        super().__init__()
        self.n_head = config.n_head
        self.qkv = nn.Linear(config.d_model, 3 * config.d_model)
        self.proj = nn.Linear(config.d_model, config.d_model)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch, time, channels = x.shape
        head_size = channels // self.n_head
        # x: (B, T, C) -> q, k, v: (B, H, T, D)
        q, k, v = (
            self.qkv(x).view(batch, time, 3, self.n_head, head_size).permute(2, 0, 3, 1, 4)
        )
        scores = (q @ k.transpose(-1, -2)) / math.sqrt(head_size)
        future = torch.ones(time, time, dtype=torch.bool, device=x.device).triu(1)
        weights = scores.masked_fill(future, torch.finfo(scores.dtype).min).softmax(dim=-1)
        merged = (weights @ v).transpose(1, 2).reshape(batch, time, channels)
        return self.proj(merged)


class MLP(nn.Module):
    def __init__(self, config: ModelConfig):
        super().__init__()
        hidden = config.d_ff or 4 * config.d_model
        self.fc = nn.Linear(config.d_model, hidden)
        self.proj = nn.Linear(hidden, config.d_model)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(functional.gelu(self.fc(x), approximate="tanh"))


class Block(nn.Module):
    def __init__(self, config: ModelConfig):
        super().__init__()
        self.ln1 = nn.LayerNorm(config.d_model)
        self.attn = Attention(config)
        self.ln2 = nn.LayerNorm(config.d_model)
        self.mlp = MLP(config)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.ln1(x))
        return x + self.mlp(self.ln2(x))


class Head(nn.Module):
    """Final LayerNorm and the LM head: hidden states in, logits out."""

    def __init__(self, config: ModelConfig):
        super().__init__()
        self.norm = nn.LayerNorm(config.d_model)
        self.lm_head = nn.Linear(config.d_model, config.vocab_size, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.lm_head(self.norm(x))


def init_weights(module: nn.Module, config: ModelConfig) -> None:
    """GPT-2 initialisation, as mpipipe does it (residual projections scaled down)."""
    residual_std = config.init_std / math.sqrt(2 * config.n_layer)
    for name, parameter in module.named_parameters():
        if name.endswith("bias"):
            nn.init.zeros_(parameter)
        elif parameter.dim() >= 2:
            std = residual_std if name.endswith("proj.weight") else config.init_std
            nn.init.normal_(parameter, 0.0, std)


def loss_fn(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    return functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), targets.reshape(-1))


def stage_module(config: ModelConfig, stage: int, stages: int) -> nn.Sequential:
    """Stage `stage` of `stages`: an equal run of blocks, the embedding first, the head last."""
    per_stage = config.n_layer // stages
    parts: list[nn.Module] = [Embedding(config)] if stage == 0 else []
    parts.extend(Block(config) for _ in range(per_stage))
    if stage == stages - 1:
        parts.append(Head(config))
    module = nn.Sequential(*parts)
    init_weights(module, config)
    return module


def whole_model(config: ModelConfig) -> nn.Sequential:
    return stage_module(config, 0, 1)
