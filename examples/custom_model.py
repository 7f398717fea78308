"""Build a model of your own from mpipipe's layers and train it with the Python API.

    jobs/local/mpirun.sh -n 2 .venv/bin/python examples/custom_model.py
    jobs/local/mpirun.sh -n 4 .venv/bin/python examples/custom_model.py --schedule bitpipe
    jobs/local/mpirun.sh -n 2 .venv/bin/python examples/custom_model.py --recompute block

The model is a GPT with "parallel" blocks (as in GPT-J and PaLM): attention and
the MLP read the same normalised input and both add to the residual,

    y = x + attn(ln(x)) + mlp(ln(x))

`ParallelBlock` writes that block's forward and the input-gradient half of
its backward from the library's LayerNorm, Attention and MLP, keeping each
sublayer's weight cache under its name; `Composite` replays those for the
weight-gradient half, so every schedule can run it (the zero-bubble ones
included, which run the two halves at different times). `apply_recompute`
puts each block under a recomputation policy, as the GPT builder does with
runtime.recompute: "block" keeps only the block's input, "attention" makes
the Attention inside it drop its probabilities. The rest is the usual GPT
layer list, the plan (schedule, stages, data) and the Trainer.
"""

from __future__ import annotations

import argparse
import math
import os
import sys
from dataclasses import dataclass

# Importing mpipipe first gives each rank its share of the node's cores for
# BLAS threads (it must happen before NumPy loads).
from mpipipe.backend import select_backend
from mpipipe.config.schema import SCHEDULES, Config
from mpipipe.layers import (
    MLP,
    Attention,
    CrossEntropy,
    Embedding,
    LayerNorm,
    LMHead,
    MicroBatch,
    apply_recompute,
)
from mpipipe.layers.composite import Composite, scoped
from mpipipe.layers.recompute import RECOMPUTE_POLICIES
from mpipipe.models.model import Model

VOCAB_SIZE = 256  # the bytes of the stdlib corpus


@dataclass(eq=False)
class ParallelBlock(Composite):
    """x + attn(ln(x)) + mlp(ln(x)): one LayerNorm feeds both branches."""

    channels: int
    n_head: int
    hidden: int
    init_std: float = 0.02
    proj_init_std: float = 0.02
    is_body = True  # a transformer block: the uniform partitioner splits these evenly

    def __post_init__(self) -> None:
        self.sublayers = {
            "ln": LayerNorm(self.channels),
            "attn": Attention(
                self.channels, self.n_head, True, self.init_std, self.proj_init_std
            ),
            "mlp": MLP(self.channels, self.hidden, self.init_std, self.proj_init_std),
        }

    def forward(self, params: dict, x, ctx: MicroBatch):
        ln, attn, mlp = self.sublayers.values()
        # x: (B, T, C) -> h: (B, T, C), read by both branches
        h, ln_cache = ln.forward(scoped(params, "ln"), x, ctx)
        y, attn_cache = attn.forward(scoped(params, "attn"), h, ctx)
        mlp_out, mlp_cache = mlp.forward(scoped(params, "mlp"), h, ctx)
        # No cache holds the branch outputs, so sum them in place.
        y += mlp_out
        y += x
        return y, (ln_cache, attn_cache, mlp_cache)

    def backward_input(self, params: dict, dy, cache):
        ln, attn, mlp = self.sublayers.values()
        ln_cache, attn_cache, mlp_cache = cache
        # Each sublayer's weight cache, by name: Composite.backward_weight replays them.
        wcaches = {}
        dh, wcaches["attn"] = attn.backward_input(scoped(params, "attn"), dy, attn_cache)
        dh_mlp, wcaches["mlp"] = mlp.backward_input(scoped(params, "mlp"), dy, mlp_cache)
        dh += dh_mlp
        dx, wcaches["ln"] = ln.backward_input(scoped(params, "ln"), dh, ln_cache)
        dx += dy  # the residual path
        return dx, wcaches


def parallel_gpt(
    seq_len: int, n_layer: int, n_head: int, channels: int, recompute: str = "none"
) -> Model:
    """Embedding, n_layer parallel blocks (under the `recompute` policy), final LayerNorm,
    tied LM head, loss."""
    init_std = 0.02
    residual_std = init_std / math.sqrt(2 * n_layer)
    blocks = [
        apply_recompute(ParallelBlock(channels, n_head, 4 * channels, init_std, residual_std),
                        recompute)
        for _ in range(n_layer)
    ]
    layers = [
        Embedding(VOCAB_SIZE, seq_len, channels, init_std),
        *blocks,
        LayerNorm(channels),
        LMHead(channels, VOCAB_SIZE, tie_embeddings=True, init_std=init_std),
        CrossEntropy(VOCAB_SIZE),
    ]
    return Model("parallel-gpt", layers, VOCAB_SIZE, seq_len)


def make_config(schedule: str, steps: int, microbatches: int, recompute: str) -> Config:
    """The run's settings; [model] describes the custom model for the data and the messages."""
    config = Config()
    config.model.kind = "gpt"  # next-token targets from the data
    config.model.vocab_size = VOCAB_SIZE
    config.model.seq_len = 64
    config.model.n_layer = 8
    config.model.n_head = 4
    config.model.d_model = 64
    config.data.source = "stdlib"
    config.data.microbatch_size = 4
    config.optim.lr = 3e-3
    config.optim.warmup_steps = 5
    config.train.steps = steps
    config.train.log_every = 5
    config.parallel.schedule = schedule
    config.parallel.microbatches = microbatches
    config.runtime.device = "auto"
    config.runtime.recompute = recompute
    return config


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--schedule", default="1f1b", choices=SCHEDULES)
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--microbatches", type=int, default=8)
    parser.add_argument("--recompute", default="none", choices=RECOMPUTE_POLICIES)
    parser.add_argument("--out", default=os.path.join("runs", "custom_model"))
    args = parser.parse_args(argv)

    config = make_config(args.schedule, args.steps, args.microbatches, args.recompute)
    model = parallel_gpt(
        config.model.seq_len, config.model.n_layer, config.model.n_head, config.model.d_model,
        config.runtime.recompute,
    )
    # Choose the GPU from the node-local rank before MPI starts (CUDA-aware MPI needs it).
    backend = select_backend(config.runtime.device, config.runtime.dtype)

    from mpi4py import MPI

    from mpipipe.commands.train import prepare_out_dir
    from mpipipe.plan import plan_run
    from mpipipe.progress import Progress
    from mpipipe.runtime.cuda_aware import resolve_cuda_aware
    from mpipipe.runtime.failure import SetupFailed, abort_on_exception, agree_on_setup
    from mpipipe.trainer import Trainer

    comm = MPI.COMM_WORLD
    rank = comm.Get_rank()

    def setup():
        plan = plan_run(config, comm.Get_size(), rank, model=model)
        if rank == 0:
            prepare_out_dir(args.out)
        return plan

    with abort_on_exception(comm):
        try:
            # Every rank checks the layout; a bad one prints one message and ends every rank.
            plan = agree_on_setup(comm, setup)
        except SetupFailed:
            return 2
        cuda_aware = resolve_cuda_aware(
            config.runtime.cuda_aware, backend.is_gpu, MPI.Get_library_version()
        )
        trainer = Trainer(plan, comm=comm, backend=backend, out_dir=args.out, cuda_aware=cuda_aware)
        progress = Progress(config.train.steps, trainer.step, config.train.log_every, rank == 0)
        progress.message(
            f"{model.kind}: {len(model.layers)} layers in {plan.schedule.stages} stages, "
            f"{args.schedule} on {comm.Get_size()} ranks"
        )
        rows = trainer.run(progress=progress)
        progress.close()
        trainer.finish()
        progress.message(
            f"loss {rows[0]['loss']:.3f} -> {rows[-1]['loss']:.3f}; "
            f"draw it with: mpipipe plot {args.out}"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
