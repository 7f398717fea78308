"""GFLOP/s of one GPT forward + backward step on the CPU, beside the machine's matmul.

    python -m mpipipe.bench.gpt_step [--microbatch-size 4] [--layers 4] [--steps 5]

The step is the whole model (embedding, blocks, final norm, tied head, loss)
in float32 at hidden size 512 and sequence length 256; its FLOPs are the
sum of the layers' cost estimates. The matmul figure is NumPy's float32
GEMM in the same process, so both use the same BLAS threads. Both are the
best of several timed runs.
"""

from __future__ import annotations

import argparse
import os
import time

import numpy as np

from mpipipe.config.schema import ModelConfig
from mpipipe.layers.base import MicroBatch
from mpipipe.models.model import build_model
from mpipipe.models.reference import forward_backward

HIDDEN = 512
SEQ_LEN = 256
MATMUL_SIZE = 2048


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m mpipipe.bench.gpt_step", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--microbatch-size", type=int, default=4, help="sequences per step")
    parser.add_argument("--layers", type=int, default=4, help="transformer blocks")
    parser.add_argument("--heads", type=int, default=8, help="attention heads")
    parser.add_argument("--vocab", type=int, default=256, help="vocabulary size")
    parser.add_argument("--steps", type=int, default=5, help="timed steps (after one warm-up)")
    return parser.parse_args(argv)


def best_seconds(run, repeats: int) -> float:
    """Fastest of `repeats` timed runs after a warm-up: other load only ever adds time."""
    run()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        run()
        times.append(time.perf_counter() - start)
    return min(times)


def gpt_step_gflops(args: argparse.Namespace) -> tuple[float, float]:
    """(GFLOP per step, GFLOP/s) of forward + backward on one micro-batch."""
    config = ModelConfig(kind="gpt", vocab_size=args.vocab, seq_len=SEQ_LEN, n_layer=args.layers,
                         n_head=args.heads, d_model=HIDDEN)
    model = build_model(config)
    params = {key: value.astype(np.float32) for key, value in model.init_params(seed=0).items()}
    grads = {key: np.zeros_like(value) for key, value in params.items()}
    window = np.random.default_rng(0).integers(0, args.vocab, (args.microbatch_size, SEQ_LEN + 1))
    batch = MicroBatch(window[:, :-1], window[:, 1:], None, float(window[:, 1:].size))
    costs = model.costs(args.microbatch_size, np.dtype(np.float32).itemsize)
    gflop = sum(cost.forward_flops + cost.backward_flops for cost in costs) / 1e9
    seconds = best_seconds(lambda: forward_backward(model, params, grads, batch), args.steps)
    return gflop, gflop / seconds


def matmul_gflops(size: int, repeats: int) -> float:
    rng = np.random.default_rng(0)
    a = rng.standard_normal((size, size), dtype=np.float32)
    b = rng.standard_normal((size, size), dtype=np.float32)
    return 2.0 * size**3 / 1e9 / best_seconds(lambda: a @ b, repeats)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    gflop, step_rate = gpt_step_gflops(args)
    matmul_rate = matmul_gflops(MATMUL_SIZE, max(args.steps, 5))
    print(
        f"GPT step, float32: hidden {HIDDEN}, sequence {SEQ_LEN}, {args.layers} layers, "
        f"{args.heads} heads, micro-batch {args.microbatch_size}, vocab {args.vocab}: "
        f"{gflop:.1f} GFLOP per forward+backward, {step_rate:.1f} GFLOP/s"
    )
    print(
        f"NumPy float32 matmul {MATMUL_SIZE}^3: {matmul_rate:.1f} GFLOP/s "
        f"({os.cpu_count()} cores visible)"
    )
    print(f"ratio: {100 * step_rate / matmul_rate:.0f}%")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
