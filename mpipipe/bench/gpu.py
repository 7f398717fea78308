"""One GPU: a GPT's forward + backward with CuPy against PyTorch eager, and the fused kernels.

Runs only where CuPy sees a CUDA GPU; elsewhere `gpu_skip_reason` says why
and nothing is measured. Model-FLOPs utilisation (MFU) is the model's FLOP
rate over this GPU's own measured float32 GEMM rate (CuPy, TF32 off), so it
needs no table of vendor peaks. Each fused kernel is timed against the
unfused CuPy expression of the same math, and their largest difference is
reported beside the speed-up as a check that both compute the same thing.
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass

import numpy as np

from mpipipe.bench.optional import installed
from mpipipe.config.schema import ModelConfig

GEMM_SIZE = 8192
GELU_CUBIC = 0.044715
GELU_SCALE = math.sqrt(2.0 / math.pi)


@dataclass
class GpuSettings:
    d_model: int = 1024
    n_head: int = 16
    n_layer: int = 12
    seq_len: int = 1024
    vocab_size: int = 8192
    microbatch_size: int = 8
    repeats: int = 5

    def model_config(self) -> ModelConfig:
        return ModelConfig(
            kind="gpt", vocab_size=self.vocab_size, seq_len=self.seq_len, n_layer=self.n_layer,
            n_head=self.n_head, d_model=self.d_model, tie_embeddings=False,
        )

    @property
    def tokens(self) -> int:
        return self.microbatch_size * self.seq_len


@dataclass
class GpuModelResult:
    framework: str  # "mpipipe (CuPy)" or "pytorch eager"
    step_s: float  # forward + backward of one micro-batch
    tokens: int
    gflop: float
    gemm_tflops: float  # this GPU's measured float32 GEMM rate

    @property
    def tokens_per_s(self) -> float:
        return self.tokens / self.step_s

    @property
    def mfu(self) -> float:
        return self.gflop / self.step_s / (self.gemm_tflops * 1e3)

    def to_json(self) -> dict:
        return {**asdict(self), "tokens_per_s": self.tokens_per_s, "mfu": self.mfu}


@dataclass
class FusedResult:
    name: str
    fused_s: float
    unfused_s: float
    max_abs_difference: float

    @property
    def speedup(self) -> float:
        return self.unfused_s / self.fused_s

    def to_json(self) -> dict:
        return {**asdict(self), "speedup": self.speedup}


def gpu_skip_reason() -> str | None:
    """None when CuPy sees a GPU; otherwise one line saying why the GPU benchmark is skipped."""
    if not installed("cupy"):
        return "GPU benchmark skipped: CuPy is not installed (pip install mpipipe[gpu])"
    import cupy

    try:
        count = cupy.cuda.runtime.getDeviceCount()
    except Exception as error:  # no driver: CuPy imports but cannot run
        return f"GPU benchmark skipped: CuPy sees no CUDA driver ({error})"
    if count < 1:
        return "GPU benchmark skipped: CuPy sees no CUDA GPU on this machine"
    return None


def gpu_name() -> str:
    import cupy

    name = cupy.cuda.runtime.getDeviceProperties(cupy.cuda.Device().id)["name"]
    return name.decode() if isinstance(name, bytes) else str(name)


def best_gpu_seconds(run, repeats: int) -> float:
    """Fastest of `repeats` runs after a warm-up, each ended by a device synchronisation."""
    import cupy

    run()
    cupy.cuda.Device().synchronize()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        run()
        cupy.cuda.Device().synchronize()
        times.append(time.perf_counter() - start)
    return min(times)


def gemm_tflops(repeats: int) -> float:
    a, b = on_device((GEMM_SIZE, GEMM_SIZE), 12), on_device((GEMM_SIZE, GEMM_SIZE), 13)
    return 2.0 * GEMM_SIZE**3 / 1e12 / best_gpu_seconds(lambda: a @ b, repeats)


def host_tokens(settings: GpuSettings) -> np.ndarray:
    """(B, T + 1) int64 token windows: inputs [:, :-1], targets [:, 1:]."""
    shape = (settings.microbatch_size, settings.seq_len + 1)
    return np.random.default_rng(0).integers(0, settings.vocab_size, shape, dtype=np.int64)


def on_device(shape, seed: int):
    """A float32 standard-normal array drawn on the host (NumPy's generator), copied to the GPU."""
    import cupy

    return cupy.asarray(np.random.default_rng(seed).standard_normal(shape, dtype=np.float32))


def cupy_model_seconds(settings: GpuSettings) -> tuple[float, float]:
    """(seconds, GFLOP) of mpipipe's forward + backward of the GPT with CuPy arrays."""
    import cupy

    from mpipipe.layers.base import MicroBatch
    from mpipipe.models.model import build_model
    from mpipipe.models.reference import forward_backward

    model = build_model(settings.model_config())
    params = {key: cupy.asarray(value, dtype=cupy.float32)
              for key, value in model.init_params(seed=0).items()}
    grads = {key: cupy.zeros_like(value) for key, value in params.items()}
    window = cupy.asarray(host_tokens(settings))
    batch = MicroBatch(window[:, :-1], window[:, 1:], None, float(window[:, 1:].size))
    costs = model.costs(settings.microbatch_size, 4)
    gflop = sum(cost.forward_flops + cost.backward_flops for cost in costs) / 1e9
    seconds = best_gpu_seconds(
        lambda: forward_backward(model, params, grads, batch), settings.repeats
    )
    return seconds, gflop


def torch_model_seconds(settings: GpuSettings) -> float | None:
    """PyTorch eager's forward + backward of the same GPT on this GPU; None without CUDA torch."""
    if not installed("torch"):
        return None
    import torch

    if not torch.cuda.is_available():
        return None
    from mpipipe.bench.torch_gpt import loss_fn, whole_model

    torch.backends.cuda.matmul.allow_tf32 = False
    model = whole_model(settings.model_config()).cuda()
    window = torch.from_numpy(host_tokens(settings)).cuda()

    def step() -> None:
        loss_fn(model(window[:, :-1]), window[:, 1:]).backward()

    return best_gpu_seconds(step, settings.repeats)


def run_gpu_models(settings: GpuSettings) -> list[GpuModelResult]:
    rate = gemm_tflops(settings.repeats)
    tokens = settings.tokens
    seconds, gflop = cupy_model_seconds(settings)
    results = [GpuModelResult("mpipipe (CuPy)", seconds, tokens, gflop, rate)]
    torch_seconds = torch_model_seconds(settings)
    if torch_seconds is not None:
        results.append(GpuModelResult("pytorch eager", torch_seconds, tokens, gflop, rate))
    return results


def unfused_gelu_forward(x):
    import cupy

    return 0.5 * x * (1.0 + cupy.tanh(GELU_SCALE * (x + GELU_CUBIC * x * x * x)))


def unfused_gelu_backward(x, dy):
    import cupy

    tanh_inner = cupy.tanh(GELU_SCALE * (x + GELU_CUBIC * x * x * x))
    dinner = GELU_SCALE * (1.0 + 3.0 * GELU_CUBIC * x * x)
    return dy * (0.5 * (1.0 + tanh_inner) + 0.5 * x * (1.0 - tanh_inner * tanh_inner) * dinner)


def unfused_layernorm_forward(x, weight, bias, eps: float = 1e-5):
    import cupy

    mean = x.mean(axis=-1)
    centered = x - mean[..., None]
    rstd = 1.0 / cupy.sqrt((centered * centered).mean(axis=-1) + eps)
    return centered * rstd[..., None] * weight + bias, mean, rstd


def unfused_layernorm_backward_input(dy, x, weight, mean, rstd):
    xhat = (x - mean[..., None]) * rstd[..., None]
    dxhat = dy * weight
    mean_dxhat = dxhat.mean(axis=-1)[..., None]
    mean_dxhat_xhat = (dxhat * xhat).mean(axis=-1)[..., None]
    return (dxhat - mean_dxhat - xhat * mean_dxhat_xhat) * rstd[..., None]


def unfused_cross_entropy_forward(logits, targets, normalizer: float):
    import cupy

    shifted = logits - logits.max(axis=1, keepdims=True)
    log_sums = cupy.log(cupy.exp(shifted).sum(axis=1))
    rows = cupy.arange(logits.shape[0])
    loss = (log_sums - shifted[rows, targets]).sum() / normalizer
    return loss, cupy.exp(shifted - log_sums[:, None])


def unfused_adamw(param, grad, m, v, lr, beta1, beta2, eps, weight_decay, step):
    m *= beta1
    m += (1.0 - beta1) * grad
    v *= beta2
    v += (1.0 - beta2) * grad * grad
    param *= 1.0 - lr * weight_decay
    denominator = (v / (1.0 - beta2**step)) ** 0.5 + eps
    param -= lr / (1.0 - beta1**step) * m / denominator


def largest_difference(first, second) -> float:
    import cupy

    return float(cupy.abs(cupy.asarray(first) - cupy.asarray(second)).max())


def run_fused(settings: GpuSettings) -> list[FusedResult]:
    """Each fused kernel against its unfused CuPy expression, on the GPT's own shapes."""
    import cupy

    from mpipipe import fused

    rows, channels = settings.tokens, settings.d_model
    repeats = settings.repeats
    hidden, dhidden = on_device((rows, 4 * channels), 1), on_device((rows, 4 * channels), 2)
    x, dy = on_device((rows, channels), 3), on_device((rows, channels), 4)
    weight, bias = on_device(channels, 5), on_device(channels, 6)
    _, mean, rstd = fused.layernorm_forward(x, weight, bias)
    logits = on_device((rows, settings.vocab_size), 7)
    targets = cupy.asarray(host_tokens(settings)[:, 1:].reshape(-1))
    parameters = settings.n_layer * 12 * channels * channels
    flat = [on_device(parameters, seed) for seed in (8, 9, 10, 11)]
    flat[3] = cupy.abs(flat[3])  # the second moment is never negative
    adamw = {"lr": 1e-3, "beta1": 0.9, "beta2": 0.95, "eps": 1e-8, "weight_decay": 0.01,
             "step": 1}
    cases = [
        ("gelu forward", lambda: fused.gelu_forward(hidden),
         lambda: unfused_gelu_forward(hidden)),
        ("gelu backward", lambda: fused.gelu_backward(hidden, dhidden),
         lambda: unfused_gelu_backward(hidden, dhidden)),
        ("layernorm forward", lambda: fused.layernorm_forward(x, weight, bias)[0],
         lambda: unfused_layernorm_forward(x, weight, bias)[0]),
        ("layernorm backward (input)",
         lambda: fused.layernorm_backward_input(dy, x, weight, mean, rstd),
         lambda: unfused_layernorm_backward_input(dy, x, weight, mean, rstd)),
        ("cross-entropy forward",
         lambda: fused.cross_entropy_forward(logits, targets, -100, float(rows))[1],
         lambda: unfused_cross_entropy_forward(logits, targets, float(rows))[1]),
    ]
    results = [
        FusedResult(name, best_gpu_seconds(ours, repeats), best_gpu_seconds(plain, repeats),
                    largest_difference(ours(), plain()))
        for name, ours, plain in cases
    ]
    fused_copy = [array.copy() for array in flat]
    plain_copy = [array.copy() for array in flat]
    results.append(FusedResult(
        "adamw step",
        best_gpu_seconds(lambda: fused.adamw_update(*flat, **adamw), repeats),
        best_gpu_seconds(lambda: unfused_adamw(*flat, **adamw), repeats),
        _adamw_difference(fused_copy, plain_copy, adamw),
    ))
    return results


def _adamw_difference(fused_arrays, plain_arrays, adamw: dict) -> float:
    from mpipipe import fused

    fused.adamw_update(*fused_arrays, **adamw)
    unfused_adamw(*plain_arrays, **adamw)
    return largest_difference(fused_arrays[0], plain_arrays[0])
