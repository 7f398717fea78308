"""Real compute on CPU: a GPT trained by mpipipe and by PyTorch's pipelining, one job, side by side.

Every rank of the job (two, one core each) trains the same GPT shape under
each schedule with mpipipe and, where PyTorch has the schedule, with
torch.distributed.pipelining (gloo). Both are built side by side and their
steps alternate, so both see the same machine. A step is one optimizer step
(optimizer included in both), timed between barriers; throughput uses the
fastest of `steps` timed steps after `warmup_steps`, since other load on
the machine only ever adds time.
"""

from __future__ import annotations

import contextlib
import math
import time
from dataclasses import asdict, dataclass

import numpy as np

from mpipipe.backend import Backend
from mpipipe.bench.cpu_settings import CpuPipelineSettings, StepRunner
from mpipipe.bench.optional import installed
from mpipipe.config.schema import Config
from mpipipe.plan import plan_run
from mpipipe.trainer import Trainer

FLOAT32 = Backend(xp=np, dtype=np.float32, device="cpu")


@dataclass
class PipelineResult:
    framework: str  # "mpipipe" or "pytorch"
    schedule: str  # mpipipe's name for it
    ranks: int
    microbatches: int
    tokens_per_step: int
    step_s: float  # the fastest timed step
    first_loss: float  # the warm-up step's loss: the same model starts near ln(vocab)

    @property
    def tokens_per_s(self) -> float:
        return self.tokens_per_step / self.step_s

    def to_json(self) -> dict:
        return {**asdict(self), "tokens_per_s": self.tokens_per_s}


def mpipipe_config(kind: str, ranks: int, settings: CpuPipelineSettings) -> Config:
    config = Config()
    config.model = settings.model_config()
    config.data.source = "random"
    config.data.microbatch_size = settings.microbatch_size
    config.parallel.schedule = kind
    config.parallel.pipeline = ranks
    config.parallel.microbatches = settings.microbatches_per_rank * ranks
    config.runtime.device = "cpu"
    config.runtime.trace = False
    config.optim.grad_clip = 0.0  # PyTorch's side does not clip either
    config.train.steps = settings.warmup_steps + settings.steps
    return config


def alternate_steps(
    comm, runners: list[StepRunner], warmup_steps: int, steps: int
) -> list[PipelineResult]:
    """Warm every runner up, then time their steps in turn; each keeps its fastest step."""
    first_losses = [runner.step() for runner in runners]
    for _ in range(warmup_steps - 1):
        for runner in runners:
            runner.step()
    fastest = [math.inf] * len(runners)
    for _ in range(steps):
        for index, runner in enumerate(runners):
            comm.Barrier()
            start = time.perf_counter()
            runner.step()
            comm.Barrier()
            fastest[index] = min(fastest[index], time.perf_counter() - start)
    return [
        PipelineResult(runner.framework, runner.schedule, comm.Get_size(), runner.microbatches,
                       runner.tokens_per_step, seconds, loss)
        for runner, seconds, loss in zip(runners, fastest, first_losses, strict=True)
    ]


def mpipipe_runner(comm, kind: str, settings: CpuPipelineSettings) -> StepRunner:
    ranks = comm.Get_size()
    config = mpipipe_config(kind, ranks, settings)
    plan = plan_run(config, ranks, comm.Get_rank())
    trainer = Trainer(plan, comm=comm, backend=FLOAT32, verbose=False)
    return StepRunner(
        "mpipipe", kind, config.parallel.microbatches, plan.tokens_per_step,
        lambda: trainer.train_step()["loss"],
    )


def check_cases(ranks: int, settings: CpuPipelineSettings) -> None:
    """Raise UsageError for the first schedule that cannot run this model on `ranks` ranks."""
    for kind in settings.schedules:
        plan_run(mpipipe_config(kind, ranks, settings), ranks, 0)


def run_cpu_pipelines(comm, settings: CpuPipelineSettings, report=print) -> list[PipelineResult]:
    """Each schedule with mpipipe, and with PyTorch where it has it and is installed."""
    if installed("torch"):
        from mpipipe.bench import torch_pipeline
    else:
        torch_pipeline = None
        report("PyTorch is not installed: skipping its pipelining (pip install mpipipe[bench])")
    results = []
    group = torch_pipeline.process_group(comm) if torch_pipeline else contextlib.nullcontext()
    with group:
        for kind in settings.schedules:
            runners = [mpipipe_runner(comm, kind, settings)]
            if torch_pipeline and kind in torch_pipeline.TORCH_SCHEDULES:
                runners.append(torch_pipeline.torch_runner(comm, kind, settings))
            for result in alternate_steps(comm, runners, settings.warmup_steps, settings.steps):
                results.append(result)
                report(progress_line(result))
    return results


def progress_line(result: PipelineResult) -> str:
    return (
        f"cpu {result.framework} {result.schedule} D={result.ranks} N={result.microbatches}: "
        f"{result.tokens_per_s:.0f} tokens/s, first loss {result.first_loss:.3f}"
    )


def torch_ratios(results: list[PipelineResult]) -> dict[str, float]:
    """mpipipe tokens/s over PyTorch's, per schedule both ran."""
    by_key = {(r.framework, r.schedule): r for r in results}
    return {
        kind: by_key[("mpipipe", kind)].tokens_per_s / by_key[("pytorch", kind)].tokens_per_s
        for (framework, kind) in by_key
        if framework == "pytorch" and ("mpipipe", kind) in by_key
    }
