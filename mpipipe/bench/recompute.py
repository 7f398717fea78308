"""What each activation-recomputation policy saves and costs on one GPT stage.

    python -m mpipipe.bench.recompute [--microbatch-size 4] [--layers 4] [--repeats 5]

The stage is the model's transformer blocks (gpt_step's hidden size 512 and
sequence length 256, float32, on the CPU) under each `runtime.recompute`
policy. Memory: the bytes of the caches the stage holds after the forward of
one micro-batch, counted from the arrays (mpipipe.layers.memory.live_bytes;
the stage's input is among them). Time: forward + backward of the stage, full
and split into its I and W halves; the policies take turns within each
repeat and each keeps its fastest run, so the ratios compare runs made side
by side under the same load.
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from mpipipe.bench.gpt_step import HIDDEN, SEQ_LEN
from mpipipe.config.schema import ModelConfig
from mpipipe.layers.base import MicroBatch
from mpipipe.layers.memory import live_bytes
from mpipipe.models.model import build_model
from mpipipe.recompute_policy import RECOMPUTE_POLICIES

NO_CONTEXT = MicroBatch(tokens=None, targets=None, attention_mask=None, loss_normalizer=1.0)
MIB = 2**20


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m mpipipe.bench.recompute", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--microbatch-size", type=int, default=4, help="sequences per micro-batch")
    parser.add_argument("--layers", type=int, default=4, help="transformer blocks in the stage")
    parser.add_argument("--heads", type=int, default=8, help="attention heads")
    parser.add_argument("--repeats", type=int, default=5, help="timed runs per policy")
    return parser.parse_args(argv)


class Stage:
    """The blocks of a GPT under one policy, with float32 parameters and zeroed gradients."""

    def __init__(self, args: argparse.Namespace, policy: str):
        config = ModelConfig(kind="gpt", seq_len=SEQ_LEN, n_layer=args.layers,
                             n_head=args.heads, d_model=HIDDEN)
        model = build_model(config, recompute=policy)
        params = model.init_params(seed=0)
        self.indices = [index for index, layer in enumerate(model.layers) if layer.is_body]
        self.layers = [model.layers[index] for index in self.indices]
        self.params = [
            {name: value.astype(np.float32)
             for name, value in model.layer_arrays(params, index).items()}
            for index in self.indices
        ]
        self.grads = [{name: np.zeros_like(value) for name, value in params.items()}
                      for params in self.params]

    def forward(self, x):
        caches = []
        for layer, params in zip(self.layers, self.params, strict=True):
            x, cache = layer.forward(params, x, NO_CONTEXT)
            caches.append(cache)
        return x, caches

    def full_backward(self, dy, caches) -> None:
        for layer, params, grads in zip(
            reversed(self.layers), reversed(self.params), reversed(self.grads), strict=True
        ):
            dy = layer.backward(params, grads, dy, caches.pop())

    def split_backward(self, dy, caches) -> None:
        weight_caches = []
        for layer, params in zip(reversed(self.layers), reversed(self.params), strict=True):
            dy, weight_cache = layer.backward_input(params, dy, caches.pop())
            weight_caches.append(weight_cache)
        for layer, grads in zip(reversed(self.layers), reversed(self.grads), strict=True):
            layer.backward_weight(grads, weight_caches.pop(0))


def measure(args: argparse.Namespace) -> dict[str, dict[str, float]]:
    rng = np.random.default_rng(0)
    shape = (args.microbatch_size, SEQ_LEN, HIDDEN)
    x = rng.standard_normal(shape, dtype=np.float32)
    dy = rng.standard_normal(shape, dtype=np.float32)
    stages = {policy: Stage(args, policy) for policy in RECOMPUTE_POLICIES}
    results = {policy: {"cache_bytes": float(live_bytes(stage.forward(x)[1])),
                        "full_s": float("inf"), "split_s": float("inf")}
               for policy, stage in stages.items()}
    for repeat in range(args.repeats + 1):  # the first round warms up
        for policy, stage in stages.items():
            for kind, backward in (("full_s", stage.full_backward),
                                   ("split_s", stage.split_backward)):
                start = time.perf_counter()
                backward(dy, stage.forward(x)[1])
                seconds = time.perf_counter() - start
                if repeat:
                    results[policy][kind] = min(results[policy][kind], seconds)
    return results


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    results = measure(args)
    none = results["none"]
    print(f"GPT stage, float32: {args.layers} blocks, hidden {HIDDEN}, sequence {SEQ_LEN}, "
          f"{args.heads} heads, micro-batch {args.microbatch_size}; best of {args.repeats}")
    print(f"{'recompute':<10} {'cache MiB':>10} {'saved':>7} {'F+B ms':>8} {'x none':>7} "
          f"{'F+I+W ms':>9} {'x none':>7}")
    for policy, result in results.items():
        saved = 1.0 - result["cache_bytes"] / none["cache_bytes"]
        print(f"{policy:<10} {result['cache_bytes'] / MIB:>10.1f} {saved:>7.1%} "
              f"{result['full_s'] * 1e3:>8.1f} {result['full_s'] / none['full_s']:>7.2f} "
              f"{result['split_s'] * 1e3:>9.1f} {result['split_s'] / none['split_s']:>7.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
