"""Soak: train long on 4 ranks and show that memory, files and MPI requests do not grow.

    jobs/local/mpirun.sh -n 4 .venv/bin/python -m mpipipe.bench.soak [--steps 1000] [--first 100]

Trains a tiny GPT (examples/gpt_tiny.toml's, written out in SOAK_SETTINGS)
with BitPipe on the CPU (any --set override applies on top), saving a
checkpoint every --first steps (or checkpoint.every, when set), and after step
--first and after the last step records on every rank, all ranks standing
still between two barriers:

- resident memory (VmRSS of /proc/self/status), after a garbage collection;
- open file descriptors (/proc/self/fd);
- MPI requests still pending: the engine's unfinished sends, posted receives
  and gradient syncs (`Engine.pending_requests`), every live mpi4py Request
  object that is not yet completed (the engine's persistent receives, not
  started between steps, are not), and any message that arrived but was
  never received (Iprobe).

Prints a table and exits 1 when the memory at the last step is not within
--tolerance of the first mark, a descriptor was leaked, or anything is
pending between steps; 0 otherwise.
"""

from __future__ import annotations

import argparse
import gc
import os
import shutil
import sys
import tempfile
from dataclasses import dataclass

SOAK_SETTINGS = [
    "model.kind=gpt", "model.vocab_size=256", "model.seq_len=64", "model.n_layer=8",
    "model.n_head=4", "model.d_model=64",
    "data.source=stdlib", "data.microbatch_size=4",
    "optim.name=adamw", "optim.lr=3e-3", "optim.warmup_steps=20", "optim.weight_decay=0.01",
    "optim.grad_clip=1.0",
    "train.seed=1234",
    "parallel.pipeline=0", "parallel.schedule=bitpipe", "parallel.microbatches=8",
    "runtime.device=cpu", "runtime.dtype=float32", "runtime.trace=false",
]


@dataclass
class Probe:
    """What one rank holds between two steps."""

    step: int
    rss_kib: int
    open_files: int
    pending_sends: int
    posted_receives: int
    live_requests: int  # mpi4py Request objects not yet completed
    unreceived_messages: int  # messages waiting to be matched by a receive
    pending_syncs: int

    @property
    def pending(self) -> int:
        return (self.pending_sends + self.posted_receives + self.pending_syncs
                + self.live_requests + self.unreceived_messages)


def resident_kib() -> int:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise RuntimeError("/proc/self/status has no VmRSS line")


def live_mpi_requests() -> int:
    from mpi4py import MPI

    return sum(
        1 for item in gc.get_objects()
        if isinstance(item, MPI.Request) and item != MPI.REQUEST_NULL
        and not (isinstance(item, MPI.Prequest) and item.Get_status())  # persistent, not started
    )


def unreceived_messages(comm) -> int:
    from mpi4py import MPI

    return int(comm.Iprobe(source=MPI.ANY_SOURCE, tag=MPI.ANY_TAG))


def probe(trainer) -> Probe:
    """Measure this rank between steps (call it on every rank at once)."""
    gc.collect()
    # Every rank has finished the step before any looks, and looks before any starts the next.
    trainer.comm.Barrier()
    requests = trainer.engine.pending_requests()
    measured = Probe(
        step=trainer.step,
        rss_kib=resident_kib(),
        open_files=len(os.listdir("/proc/self/fd")),
        pending_sends=requests.sends,
        posted_receives=requests.receives,
        live_requests=live_mpi_requests(),
        unreceived_messages=unreceived_messages(trainer.comm),
        pending_syncs=requests.syncs,
    )
    trainer.comm.Barrier()
    return measured


def broken_bounds(first: list[Probe], last: list[Probe], tolerance: float) -> list[str]:
    """One line per rank and bound that the two marks break."""
    problems = []
    for rank, (early, late) in enumerate(zip(first, last, strict=True)):
        growth = (late.rss_kib - early.rss_kib) / early.rss_kib
        if abs(growth) > tolerance:
            problems.append(
                f"rank {rank}: resident memory {early.rss_kib} KiB at step {early.step} -> "
                f"{late.rss_kib} KiB at step {late.step} ({growth:+.1%}, bound {tolerance:.0%})"
            )
        if late.open_files > early.open_files:
            problems.append(
                f"rank {rank}: open files {early.open_files} at step {early.step} -> "
                f"{late.open_files} at step {late.step}"
            )
        for mark in (early, late):
            if mark.pending:
                problems.append(f"rank {rank}: pending MPI work after step {mark.step}: {mark}")
    return problems


def table(first: list[Probe], last: list[Probe]) -> str:
    steps = f"step {first[0].step} -> {last[0].step}"
    lines = [
        f"{'rank':>4}  {'VmRSS MiB (' + steps + ')':>34}  {'change':>7}  {'open files':>10}  "
        f"{'pending MPI':>11}"
    ]
    for rank, (early, late) in enumerate(zip(first, last, strict=True)):
        growth = (late.rss_kib - early.rss_kib) / early.rss_kib
        memory = f"{early.rss_kib / 1024:.1f} -> {late.rss_kib / 1024:.1f}"
        files = f"{early.open_files} -> {late.open_files}"
        pending = f"{early.pending} -> {late.pending}"
        lines.append(f"{rank:>4}  {memory:>34}  {growth:>+7.2%}  {files:>10}  {pending:>11}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=1000, help="steps to train (default 1000)")
    parser.add_argument("--first", type=int, default=100,
                        help="step of the first mark, and the checkpoint interval (default 100)")
    parser.add_argument("--tolerance", type=float, default=0.05,
                        help="allowed change of resident memory between marks (default 0.05)")
    parser.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE",
                        help="config override on top of SOAK_SETTINGS (repeatable)")
    parser.add_argument("--out", default=None,
                        help="run folder (default: a temporary folder, removed at the end)")
    args = parser.parse_args(argv)
    if not 0 < args.first < args.steps:
        parser.error(f"--first {args.first} must be between 0 and --steps {args.steps}")

    from mpipipe.threads import limit_blas_threads

    limit_blas_threads()
    from mpi4py import MPI

    from mpipipe.errors import EXIT_USAGE
    from mpipipe.runtime.failure import SetupFailed, abort_on_exception, agree_on_setup

    comm = MPI.COMM_WORLD
    with abort_on_exception(comm):
        try:
            config, backend, plan = agree_on_setup(comm, lambda: _setup(comm, args))
        except SetupFailed:
            return EXIT_USAGE
        status = soak(comm, args, config, backend, plan)
    return status


def _setup(comm, args):
    from mpipipe.backend import select_backend
    from mpipipe.config.load import load_config
    from mpipipe.plan import plan_run

    overrides = [*SOAK_SETTINGS, f"train.steps={args.steps}", f"checkpoint.every={args.first}",
                 *args.set]
    config = load_config(None, overrides)
    backend = select_backend(config.runtime.device, config.runtime.dtype)
    return config, backend, plan_run(config, comm.Get_size(), comm.Get_rank())


def soak(comm, args, config, backend, plan) -> int:
    """Train, probe every rank at the two marks, print the table; 1 when a bound breaks."""
    from mpipipe.trainer import Trainer

    rank, size = comm.Get_rank(), comm.Get_size()
    out_dir = args.out
    if rank == 0:
        out_dir = tempfile.mkdtemp(prefix="mpipipe-soak-") if out_dir is None else out_dir
        os.makedirs(out_dir, exist_ok=True)
    out_dir = comm.bcast(out_dir)
    trainer = Trainer(plan, comm=comm, backend=backend, out_dir=out_dir, verbose=False)
    trainer.run(steps=args.first)
    first = comm.gather(probe(trainer), root=0)
    trainer.run(steps=args.steps - args.first)
    last = comm.gather(probe(trainer), root=0)
    trainer.finish()
    problems = comm.bcast(broken_bounds(first, last, args.tolerance) if rank == 0 else None)
    if rank == 0:
        print(_summary(config, backend, size, args))
        print(table(first, last))
        for problem in problems:
            print(f"mpipipe: soak: {problem}", file=sys.stderr)
        print("soak: " + ("FAILED" if problems else "ok: every bound holds"))
        if args.out is None:
            shutil.rmtree(out_dir)
    return 1 if problems else 0


def _summary(config, backend, size: int, args) -> str:
    model, parallel = config.model, config.parallel
    return (
        f"soak: {parallel.schedule} on {size} ranks, GPT n_layer={model.n_layer} "
        f"d_model={model.d_model} seq_len={model.seq_len}, {parallel.microbatches} "
        f"micro-batches of {config.data.microbatch_size}, {backend.device} "
        f"{config.runtime.dtype}, {args.steps} steps, checkpoint every "
        f"{config.checkpoint.every}"
    )


if __name__ == "__main__":
    raise SystemExit(main())
