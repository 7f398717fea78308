"""One GPU in every precision: a GPT of about 370M parameters, mpipipe (CuPy) against
PyTorch eager on the same shapes, and a 2-rank BitPipe run on the same GPU.

    python -m mpipipe.bench.gpu_precision --out DIR [--quick] [--pipeline-run RUN_DIR]

For fp32, tf32, fp16 and bf16 it times one micro-batch's forward + backward
(the best of a few after a warm-up, each ended by a device synchronisation)
and reports tokens/s, TFLOP/s and model-FLOPs utilisation: the model's FLOP
rate over this GPU's own dense GEMM rate in that precision (an 8192^3
product: float32 with TF32 off, TF32, float16 and bfloat16 with float32
accumulation), so no table of vendor peaks is needed. mpipipe computes with
working weights in the compute type and float32 gradients; PyTorch keeps
float32 weights and runs under autocast (its usual mixed precision).
`--pipeline-run` adds the tokens/s of an `mpipipe train` run folder (the
2-rank BitPipe that jobs/local/gpu_check.sh runs). Writes gpu_precision.md
and gpu_precision.json into --out.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
from dataclasses import asdict, dataclass

import numpy as np

from mpipipe.bench.gpu import (
    GEMM_SIZE,
    GpuSettings,
    best_gpu_seconds,
    gpu_name,
    gpu_skip_reason,
)
from mpipipe.bench.optional import installed
from mpipipe.bench.report import markdown_table
from mpipipe.precision import PRECISIONS, Precision

TORCH_AUTOCAST = {"fp16": "float16", "bf16": "bfloat16"}
FP16_LOSS_SCALE = 1024.0  # a fixed scale: the timing is the same as a dynamic one's


@dataclass
class Shapes(GpuSettings):
    """The precision bench's GPT: twice the layers and four times the vocabulary."""

    n_layer: int = 24
    vocab_size: int = 32768


@dataclass
class PrecisionResult:
    precision: str
    gemm_tflops: float  # this GPU's dense GEMM rate in the precision
    mpipipe_s: float
    mpipipe_loss: float
    torch_s: float | None
    torch_loss: float | None


def set_tf32(enabled: bool) -> None:
    from mpipipe.fused.cublas import set_tf32 as set_cupy_tf32

    set_cupy_tf32(enabled)
    if installed("torch"):
        import torch

        torch.backends.cuda.matmul.allow_tf32 = enabled


def gemm_tflops(precision: str, repeats: int) -> float:
    import cupy

    from mpipipe import fused

    dtype = Precision.of(precision, np.float32).compute
    rng = np.random.default_rng(0)
    a, b = (cupy.asarray(rng.standard_normal((GEMM_SIZE, GEMM_SIZE), dtype=np.float32))
            .astype(dtype) for _ in range(2))
    return 2.0 * GEMM_SIZE**3 / 1e12 / best_gpu_seconds(lambda: fused.matmul(a, b), repeats)


def host_window(shapes: Shapes) -> np.ndarray:
    shape = (shapes.microbatch_size, shapes.seq_len + 1)
    return np.random.default_rng(0).integers(0, shapes.vocab_size, shape, dtype=np.int64)


def model_gflop(shapes: Shapes) -> float:
    from mpipipe.models.model import build_model

    costs = build_model(shapes.model_config()).costs(shapes.microbatch_size, 2)
    return sum(cost.forward_flops + cost.backward_flops for cost in costs) / 1e9


def mpipipe_seconds(shapes: Shapes, precision: str) -> tuple[float, float]:
    """(seconds, loss) of mpipipe's forward + backward in `precision`."""
    import cupy

    from mpipipe.layers.base import MicroBatch
    from mpipipe.models.model import build_model
    from mpipipe.models.reference import forward_backward

    policy = Precision.of(precision, np.float32)
    model = build_model(shapes.model_config())
    params = {key: cupy.asarray(value, dtype=cupy.float32).astype(policy.compute)
              for key, value in model.init_params(seed=0).items()}
    grads = {key: cupy.zeros(value.shape, dtype=cupy.float32) for key, value in params.items()}
    window = cupy.asarray(host_window(shapes))
    batch = MicroBatch(window[:, :-1], window[:, 1:], None, float(window[:, 1:].size))
    losses = []

    def step() -> None:
        losses.append(forward_backward(model, params, grads, batch))

    seconds = best_gpu_seconds(step, shapes.repeats)
    return seconds, losses[0]


def torch_seconds(shapes: Shapes, precision: str) -> tuple[float, float] | None:
    """(seconds, loss) of PyTorch eager on the same model; None without CUDA PyTorch."""
    if not installed("torch"):
        return None
    import torch

    if not torch.cuda.is_available():
        return None
    from mpipipe.bench.torch_gpt import loss_fn, whole_model

    model = whole_model(shapes.model_config()).cuda()
    window = torch.from_numpy(host_window(shapes)).cuda()
    autocast = TORCH_AUTOCAST.get(precision)
    scale = FP16_LOSS_SCALE if precision == "fp16" else 1.0
    losses = []

    def step() -> None:
        with torch.autocast("cuda", dtype=getattr(torch, autocast), enabled=autocast is not None):
            loss = loss_fn(model(window[:, :-1]), window[:, 1:])
        (loss * scale).backward()
        losses.append(float(loss))

    seconds = best_gpu_seconds(step, shapes.repeats)
    model.zero_grad(set_to_none=True)
    torch.cuda.empty_cache()
    return seconds, losses[0]


def run_precisions(shapes: Shapes) -> list[PrecisionResult]:
    import cupy

    results = []
    for precision in PRECISIONS:
        set_tf32(precision == "tf32")
        rate = gemm_tflops(precision, shapes.repeats)
        seconds, loss = mpipipe_seconds(shapes, precision)
        cupy.get_default_memory_pool().free_all_blocks()
        measured = torch_seconds(shapes, precision)
        results.append(PrecisionResult(precision, rate, seconds, loss,
                                       *(measured if measured else (None, None))))
        print(f"{precision}: mpipipe {seconds * 1e3:.1f} ms, gemm {rate:.0f} TFLOP/s", flush=True)
    set_tf32(False)
    return results


def pipeline_tokens_per_s(run_dir: str) -> tuple[float, str] | None:
    """Median tokens/s of a run's steps after the first two, and its layout; None if absent."""
    path = os.path.join(run_dir, "metrics.jsonl")
    if not os.path.isfile(path):
        return None
    with open(path) as handle:
        rows = [json.loads(line) for line in handle if line.strip()]
    steady = rows[2:] or rows
    if not steady:
        return None
    return statistics.median(row["tokens_per_s"] for row in steady), f"{len(rows)} steps"


def markdown(device: str, shapes: Shapes, gflop: float, results: list[PrecisionResult],
             pipeline: tuple[float, str] | None, pipeline_precision: str) -> str:
    rates = {result.precision: result.gemm_tflops for result in results}

    def utilisation(seconds: float | None, precision: str) -> str:
        if seconds is None:
            return "–"
        return f"{gflop / seconds / 1e3 / rates[precision]:.1%}"

    rows = []
    for result in results:
        tokens = shapes.tokens
        torch_cells = ["–"] * 4
        if result.torch_s is not None:
            torch_cells = [f"{result.torch_s * 1e3:.1f}", f"{tokens / result.torch_s:,.0f}",
                           utilisation(result.torch_s, result.precision),
                           f"{result.torch_s / result.mpipipe_s:.2f}"]
        rows.append([
            result.precision, f"{result.gemm_tflops:.0f}", f"{result.mpipipe_s * 1e3:.1f}",
            f"{tokens / result.mpipipe_s:,.0f}", f"{gflop / result.mpipipe_s / 1e3:.1f}",
            utilisation(result.mpipipe_s, result.precision), *torch_cells,
            f"{result.mpipipe_loss:.4f} / "
            + ("–" if result.torch_loss is None else f"{result.torch_loss:.4f}"),
        ])
    parameters = 12 * shapes.n_layer * shapes.d_model**2 + (
        2 * shapes.vocab_size + shapes.seq_len) * shapes.d_model
    lines = [
        "### One GPU in every precision: mpipipe (CuPy) against PyTorch eager",
        "",
        f"{device}. GPT of {parameters / 1e6:.0f}M parameters: d_model {shapes.d_model}, "
        f"{shapes.n_layer} blocks, {shapes.n_head} heads, sequence {shapes.seq_len}, "
        f"vocabulary {shapes.vocab_size} (untied head), micro-batch {shapes.microbatch_size}; "
        f"forward + backward of one micro-batch ({gflop:,.0f} GFLOP), best of {shapes.repeats}. "
        "MFU: model FLOP/s over this GPU's dense GEMM rate measured in the same precision.",
        "",
        markdown_table(
            ["precision", "GEMM TFLOP/s", "mpipipe ms", "mpipipe tokens/s", "mpipipe TFLOP/s",
             "mpipipe MFU", "PyTorch ms", "PyTorch tokens/s", "PyTorch MFU",
             "mpipipe speed / PyTorch", "first loss (mpipipe / PyTorch)"],
            rows,
        ),
    ]
    if pipeline is not None:
        tokens_per_s, steps = pipeline
        per_token = gflop * 1e9 / shapes.tokens
        achieved = tokens_per_s * per_token / 1e12
        lines += [
            "",
            f"BitPipe, 2 ranks sharing the GPU, {pipeline_precision}, `mpipipe train` "
            f"({steps}, median after the first two): {tokens_per_s:,.0f} tokens/s, "
            f"{achieved:.1f} TFLOP/s, MFU {achieved / rates[pipeline_precision]:.1%} "
            "(optimizer steps, messages and the pipeline's bubble included).",
        ]
    return "\n".join(lines)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m mpipipe.bench.gpu_precision",
                                     description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default="runs/bench", help="folder for the Markdown and JSON")
    parser.add_argument("--quick", action="store_true", help="a small GPT, two repeats")
    parser.add_argument("--pipeline-run", default=None, metavar="RUN_DIR",
                        help="an mpipipe train run folder whose tokens/s joins the table")
    parser.add_argument("--pipeline-precision", default="bf16", choices=PRECISIONS,
                        help="the precision that run trained in")
    parser.add_argument("--require-gpu", action="store_true",
                        help="exit 1, not 0, when there is no usable GPU")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    os.makedirs(args.out, exist_ok=True)
    reason = gpu_skip_reason()
    if reason is not None:
        print(reason, flush=True)
        return 1 if args.require_gpu else 0
    shapes = Shapes()
    if args.quick:
        shapes.n_layer, shapes.seq_len, shapes.repeats = 4, 256, 2
    device = gpu_name()
    gflop = model_gflop(shapes)
    results = run_precisions(shapes)
    pipeline = pipeline_tokens_per_s(args.pipeline_run) if args.pipeline_run else None
    text = markdown(device, shapes, gflop, results, pipeline, args.pipeline_precision)
    with open(os.path.join(args.out, "gpu_precision.md"), "w") as handle:
        handle.write(text + "\n")
    with open(os.path.join(args.out, "gpu_precision.json"), "w") as handle:
        json.dump({"device": device, "shapes": asdict(shapes), "gflop": gflop,
                   "results": [asdict(result) for result in results],
                   "pipeline_tokens_per_s": None if pipeline is None else pipeline[0]},
                  handle, indent=1)
    print(text, flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
