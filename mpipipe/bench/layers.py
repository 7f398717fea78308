"""Layers in one process: mpipipe's hand-written forward + backward against PyTorch eager.

Same shapes (gpt_step's hidden size and sequence length), float32, on the
CPU, with the same number of threads for NumPy's BLAS and PyTorch; the two
take turns in blocks of runs and each keeps its fastest run. Rates are the layers'
own FLOP estimates (`Layer.cost`) over the measured time, beside NumPy's
float32 matmul rate on this machine (mpipipe.bench.gpt_step measures that
and the whole model).
"""

from __future__ import annotations

import argparse
import math
import os
import time
from dataclasses import asdict, dataclass

import numpy as np

from mpipipe.bench import gpt_step
from mpipipe.bench.optional import installed
from mpipipe.layers.attention import Attention
from mpipipe.layers.base import MicroBatch
from mpipipe.layers.block import Block
from mpipipe.layers.layernorm import LayerNorm
from mpipipe.layers.mlp import MLP

NO_CONTEXT = MicroBatch(tokens=None, targets=None, attention_mask=None, loss_normalizer=1.0)


@dataclass
class LayerSettings:
    """Hidden size and sequence length are gpt_step's, so the whole-model row matches."""

    n_head: int = 8
    microbatch_size: int = 4
    n_layer: int = 4  # for the whole-model row
    vocab_size: int = 256
    repeats: int = 5


@dataclass
class LayerResult:
    name: str
    gflop: float  # forward + backward, from the layers' cost estimates
    mpipipe_s: float
    torch_s: float | None  # None when PyTorch is not installed

    @property
    def mpipipe_gflops(self) -> float:
        return self.gflop / self.mpipipe_s

    @property
    def torch_gflops(self) -> float | None:
        return None if self.torch_s is None else self.gflop / self.torch_s

    @property
    def speed_vs_torch(self) -> float | None:
        """mpipipe's speed over PyTorch's: above 1 is faster."""
        return None if self.torch_s is None else self.torch_s / self.mpipipe_s

    def to_json(self) -> dict:
        return {
            **asdict(self),
            "mpipipe_gflops": self.mpipipe_gflops,
            "torch_gflops": self.torch_gflops,
            "speed_vs_torch": self.speed_vs_torch,
        }


def blas_threads() -> int:
    """The thread count NumPy's BLAS was started with (what limit_blas_threads chose)."""
    value = os.environ.get("OMP_NUM_THREADS", "")
    return int(value) if value.isdigit() else len(os.sched_getaffinity(0))


def best_of_each(steps: list, repeats: int, rounds: int = 2) -> list[float]:
    """Fastest time of each step over `rounds` turns of `repeats` runs each.

    The steps take turns in blocks, each block after one untimed run, so that
    all see the same machine and none is timed while the other library's idle
    threads still spin.
    """
    fastest = [math.inf] * len(steps)
    for _ in range(rounds):
        for index, step in enumerate(steps):
            step()
            for _ in range(repeats):
                start = time.perf_counter()
                step()
                fastest[index] = min(fastest[index], time.perf_counter() - start)
    return fastest


def mpipipe_step(layer, x: np.ndarray):
    rng = np.random.default_rng(0)
    params = {name: value.astype(np.float32) for name, value in layer.init_params(rng).items()}
    grads = {name: np.zeros_like(value) for name, value in params.items()}
    dy = rng.standard_normal(x.shape, dtype=np.float32)

    def step() -> None:
        y, cache = layer.forward(params, x, NO_CONTEXT)
        layer.backward(params, grads, dy, cache)

    return step


def torch_step(module, x: np.ndarray):
    import torch

    inputs = torch.from_numpy(x).requires_grad_(True)
    dy = torch.from_numpy(np.random.default_rng(0).standard_normal(x.shape, dtype=np.float32))

    def step() -> None:
        inputs.grad = None
        module(inputs).backward(dy)

    return step


def torch_model_seconds(settings: LayerSettings, repeats: int) -> float:
    import torch

    from mpipipe.bench.torch_gpt import loss_fn, whole_model

    config = model_config(settings)
    model = whole_model(config)
    window = torch.randint(0, settings.vocab_size, (settings.microbatch_size, gpt_step.SEQ_LEN + 1))

    def step() -> None:
        loss_fn(model(window[:, :-1]), window[:, 1:]).backward()

    return gpt_step.best_seconds(step, repeats)


def model_config(settings: LayerSettings):
    from mpipipe.config.schema import ModelConfig

    return ModelConfig(
        kind="gpt", vocab_size=settings.vocab_size, seq_len=gpt_step.SEQ_LEN,
        n_layer=settings.n_layer, n_head=settings.n_head, d_model=gpt_step.HIDDEN,
        tie_embeddings=False,
    )


def sublayer_pairs(settings: LayerSettings) -> list[tuple[str, object, object]]:
    """(name, mpipipe layer, PyTorch module or None) for the block and its parts."""
    channels, hidden = gpt_step.HIDDEN, 4 * gpt_step.HIDDEN
    ours = {
        "block": Block(channels, settings.n_head, hidden, causal=True),
        "attention": Attention(channels, settings.n_head, causal=True),
        "mlp": MLP(channels, hidden),
        "layernorm": LayerNorm(channels),
    }
    if not installed("torch"):
        return [(name, layer, None) for name, layer in ours.items()]
    import torch

    from mpipipe.bench import torch_gpt

    torch.set_num_threads(blas_threads())
    config = model_config(settings)
    theirs = {
        "block": torch_gpt.Block(config),
        "attention": torch_gpt.Attention(config),
        "mlp": torch_gpt.MLP(config),
        "layernorm": torch.nn.LayerNorm(channels),
    }
    return [(name, layer, theirs[name]) for name, layer in ours.items()]


def run_layers(settings: LayerSettings) -> tuple[list[LayerResult], float]:
    """(one row per layer plus the whole model, NumPy's float32 matmul GFLOP/s)."""
    rng = np.random.default_rng(1)
    shape = (settings.microbatch_size, gpt_step.SEQ_LEN, gpt_step.HIDDEN)
    x = rng.standard_normal(shape, dtype=np.float32)
    results = []
    pairs = sublayer_pairs(settings)
    for name, layer, module in pairs:
        cost = layer.cost(settings.microbatch_size, gpt_step.SEQ_LEN, 4)
        steps = [mpipipe_step(layer, x)] + ([] if module is None else [torch_step(module, x)])
        seconds = best_of_each(steps, settings.repeats)
        results.append(LayerResult(
            name=name,
            gflop=(cost.forward_flops + cost.backward_flops) / 1e9,
            mpipipe_s=seconds[0],
            torch_s=seconds[1] if module is not None else None,
        ))
    whole = argparse.Namespace(
        microbatch_size=settings.microbatch_size, layers=settings.n_layer,
        heads=settings.n_head, vocab=settings.vocab_size, steps=settings.repeats,
    )
    gflop, rate = gpt_step.gpt_step_gflops(whole)
    has_torch = pairs[0][2] is not None
    results.append(LayerResult(
        name=f"whole GPT, {settings.n_layer} blocks",
        gflop=gflop,
        mpipipe_s=gflop / rate,
        torch_s=torch_model_seconds(settings, settings.repeats) if has_torch else None,
    ))
    matmul = gpt_step.matmul_gflops(gpt_step.MATMUL_SIZE, max(settings.repeats, 5))
    return results, matmul
