"""What mpipipe's and PyTorch's CPU pipeline runs share: the settings, and a runner to step."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from mpipipe.config.schema import ModelConfig
from mpipipe.schedules import SCHEDULE_KINDS


@dataclass
class CpuPipelineSettings:
    schedules: list[str] = field(default_factory=lambda: list(SCHEDULE_KINDS))
    d_model: int = 256
    n_head: int = 4
    n_layer: int = 8
    seq_len: int = 256
    vocab_size: int = 256
    microbatch_size: int = 4
    microbatches_per_rank: int = 4  # N = this * D
    warmup_steps: int = 1
    steps: int = 4

    def model_config(self) -> ModelConfig:
        return ModelConfig(
            kind="gpt", vocab_size=self.vocab_size, seq_len=self.seq_len, n_layer=self.n_layer,
            n_head=self.n_head, d_model=self.d_model, tie_embeddings=False,
        )

    def tokens_per_step(self, ranks: int) -> int:
        return self.microbatches_per_rank * ranks * self.microbatch_size * self.seq_len


@dataclass
class StepRunner:
    """One framework's training of one schedule, ready to take steps."""

    framework: str  # "mpipipe" or "pytorch"
    schedule: str
    microbatches: int
    tokens_per_step: int
    step: Callable[[], float]  # one optimizer step; returns the global batch's mean loss
