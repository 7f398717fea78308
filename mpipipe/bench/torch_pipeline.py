"""PyTorch's own pipelining (torch.distributed.pipelining, gloo) on the ranks of an MPI job.

The MPI job supplies the ranks; a gloo process group is set up beside it
(rank 0 picks a free TCP port and broadcasts it over MPI). Stage placement
follows each schedule: one stage per rank for GPipe and 1F1B, stages r and
r + D for interleaved, r and 2D - 1 - r (a V) for ZB-V.
"""

from __future__ import annotations

import contextlib
import socket

import torch
import torch.distributed as dist
from torch.distributed.pipelining import (
    PipelineStage,
    Schedule1F1B,
    ScheduleGPipe,
    ScheduleInterleaved1F1B,
    ScheduleZBVZeroBubble,
)

from mpipipe.bench.cpu_settings import CpuPipelineSettings, StepRunner
from mpipipe.bench.torch_gpt import loss_fn, stage_module

# mpipipe's schedule name -> PyTorch's schedule class.
TORCH_SCHEDULES = {
    "gpipe": ScheduleGPipe,
    "1f1b": Schedule1F1B,
    "interleaved": ScheduleInterleaved1F1B,
    "zb-v": ScheduleZBVZeroBubble,
}
LOOPED = ("interleaved",)  # rank r holds stages r, r + D
V_SHAPED = ("zb-v",)  # rank r holds stages r, 2D - 1 - r


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@contextlib.contextmanager
def process_group(comm):
    """A gloo process group over the ranks of `comm`, torch limited to one thread per rank."""
    torch.set_num_threads(1)
    port = comm.bcast(free_port() if comm.Get_rank() == 0 else None, root=0)
    dist.init_process_group(
        "gloo", init_method=f"tcp://127.0.0.1:{port}", rank=comm.Get_rank(),
        world_size=comm.Get_size(),
    )
    try:
        yield
    finally:
        dist.destroy_process_group()


def stages_of_rank(kind: str, rank: int, ranks: int) -> tuple[list[int], int]:
    """(the stages `rank` holds, the number of stages)."""
    if kind in LOOPED:
        return [rank, rank + ranks], 2 * ranks
    if kind in V_SHAPED:
        return [rank, 2 * ranks - 1 - rank], 2 * ranks
    return [rank], ranks


def torch_runner(comm, kind: str, settings: CpuPipelineSettings) -> StepRunner:
    """The GPT under PyTorch's `kind` schedule on every rank of `comm`, ready to step."""
    rank, ranks = comm.Get_rank(), comm.Get_size()
    config = settings.model_config()
    my_stages, stage_total = stages_of_rank(kind, rank, ranks)
    torch.manual_seed(0)
    modules = [stage_module(config, stage, stage_total) for stage in my_stages]
    stages = [
        PipelineStage(module, stage, stage_total, torch.device("cpu"))
        for module, stage in zip(modules, my_stages, strict=True)
    ]
    microbatches = settings.microbatches_per_rank * ranks
    schedule_class = TORCH_SCHEDULES[kind]
    single = len(stages) == 1
    schedule = schedule_class(stages[0] if single else stages, microbatches, loss_fn=loss_fn)
    parameters = [parameter for module in modules for parameter in module.parameters()]
    optimizer = torch.optim.AdamW(parameters, lr=3e-3, betas=(0.9, 0.95), weight_decay=0.01)
    batch = microbatches * settings.microbatch_size
    generator = torch.Generator().manual_seed(1)
    window = torch.randint(
        0, config.vocab_size, (batch, config.seq_len + 1), generator=generator
    )
    tokens, targets = window[:, :-1].contiguous(), window[:, 1:].contiguous()
    holds_first, holds_last = 0 in my_stages, stage_total - 1 in my_stages

    def run_step() -> float:
        optimizer.zero_grad(set_to_none=False)
        losses: list[torch.Tensor] = []
        inputs = (tokens,) if holds_first else ()
        if holds_last:
            schedule.step(*inputs, target=targets, losses=losses)
        else:
            schedule.step(*inputs)
        optimizer.step()
        loss = float(torch.stack(losses).detach().mean()) if losses else None
        return next(value for value in comm.allgather(loss) if value is not None)

    return StepRunner("pytorch", kind, microbatches, settings.tokens_per_step(ranks), run_step)
