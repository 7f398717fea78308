"""`mpipipe train CONFIG`: train under MPI (mpirun/srun decide the number of ranks).

Preemption: SIGTERM on any rank (Slurm's `--signal=TERM@120` with srun, a PBS
pre-kill signal, or `kill -TERM` of one rank) makes every rank finish the
current step, save a checkpoint and exit with EXIT_PREEMPTED (75); the next
job continues with `--resume latest`. The signal must reach the ranks with
time to save: Open MPI's mpirun, signalled itself, passes SIGTERM on but
kills the ranks one second later (its odls_base_sigkill_timeout).
"""

from __future__ import annotations

import contextlib
import os
import signal
import sys

from mpipipe.errors import EXIT_PREEMPTED, EXIT_USAGE, UsageError

# Launchers' variables for this process's world rank, read before MPI starts.
WORLD_RANK_VARIABLES = ("OMPI_COMM_WORLD_RANK", "PMI_RANK", "PMIX_RANK", "SLURM_PROCID")


def launcher_rank() -> int:
    for name in WORLD_RANK_VARIABLES:
        value = os.environ.get(name, "")
        if value.isdigit():
            return int(value)
    return 0


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "train",
        help="train a model (run it under mpirun/mpiexec/srun for several ranks)",
        description="Train a model with pipeline (and data) parallelism. The number of MPI "
        "ranks must equal parallel.pipeline x parallel.data_parallel; parallel.pipeline = 0 "
        "(the default) uses every rank not taken by data parallelism.",
    )
    parser.add_argument("config", help="TOML config file (see examples/)")
    parser.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="SECTION.KEY=VALUE",
        help="override a config key, e.g. --set parallel.schedule=bitpipe (repeatable); a "
        "schedule file here, --set parallel.schedule=mine.csv, is relative to the current "
        "folder (in the config file, to the file's folder)",
    )
    parser.add_argument(
        "--out", default=None, help="run folder for metrics.jsonl, trace.json and checkpoints "
        "(default: runs/<config file name>)"
    )
    parser.add_argument(
        "--resume", default=None, metavar="latest|PATH",
        help="continue from a checkpoint: 'latest' (the newest complete one in the run folder; "
        "exit 2 when there is none), a checkpoint file, or a folder of them. The layout "
        "(schedule, pipeline and data-parallel degree) may differ from the saved run's",
    )
    parser.set_defaults(func=run)


def default_out_dir(config_path: str) -> str:
    return os.path.join("runs", os.path.splitext(os.path.basename(config_path))[0])


def prepare_out_dir(path: str) -> None:
    """Create the run folder and prove it is writable (rank 0 only)."""
    try:
        os.makedirs(path, exist_ok=True)
        probe = os.path.join(path, ".mpipipe-write-test")
        with open(probe, "w") as handle:
            handle.write("ok")
        os.remove(probe)
    except OSError as error:
        raise UsageError(
            f"--out: cannot write to run folder {path!r} ({error.strerror}); choose a writable "
            "folder with --out DIR"
        ) from error


def run(args) -> int:
    from mpipipe.backend import (
        local_rank_from_environment,
        select_backend,
        shared_memory_local_rank,
    )
    from mpipipe.config.load import load_config

    # Read the config and bind the GPU before MPI starts; every rank does the same.
    try:
        config = load_config(args.config, args.set)
        backend = select_backend(config.runtime.device, config.runtime.dtype)
    except UsageError as error:
        return _fail_on_every_rank(error)

    from mpi4py import MPI

    from mpipipe.checkpoint.save import FALLBACK_WARNING, use_parallel_hdf5
    from mpipipe.plan import plan_run
    from mpipipe.progress import Progress
    from mpipipe.runtime.cuda_aware import resolve_cuda_aware
    from mpipipe.runtime.failure import (
        CollectiveStop,
        SetupFailed,
        abort_on_exception,
        agree_on_setup,
    )
    from mpipipe.runtime.schedule_agreement import check_same_schedule
    from mpipipe.trainer import Trainer

    comm = MPI.COMM_WORLD
    rank = comm.Get_rank()
    out_dir = args.out or default_out_dir(args.config)
    if backend.is_gpu and local_rank_from_environment() is None:
        # No launcher told us the node-local rank: ask MPI which ranks share this node.
        backend = select_backend(
            config.runtime.device, config.runtime.dtype, shared_memory_local_rank(comm)
        )

    def setup():
        plan = plan_run(config, comm.Get_size(), rank)
        parallel_checkpoints = use_parallel_hdf5(config.checkpoint.parallel)
        if rank == 0:
            prepare_out_dir(out_dir)
            if config.checkpoint.parallel == "auto" and not parallel_checkpoints:
                print(FALLBACK_WARNING, file=sys.stderr, flush=True)
        return plan

    with abort_on_exception(comm):
        try:
            plan = agree_on_setup(comm, setup)
            agree_on_setup(comm, lambda: check_same_schedule(comm, plan))
        except SetupFailed:
            return EXIT_USAGE
        cuda_aware = resolve_cuda_aware(
            config.runtime.cuda_aware, backend.is_gpu, MPI.Get_library_version()
        )
        trainer = Trainer(plan, comm=comm, backend=backend, out_dir=out_dir, cuda_aware=cuda_aware,
                          resuming=args.resume is not None)
        if args.resume is not None:
            try:
                agree_on_setup(comm, lambda: trainer.resume(args.resume))
            except SetupFailed:
                return EXIT_USAGE
        trainer.watchdog.install_signal_handler()
        signal.signal(signal.SIGTERM, lambda signum, frame: trainer.request_stop())
        progress = Progress(config.train.steps, trainer.step, config.train.log_every, rank == 0)
        progress.message(_banner(plan, backend, comm.Get_size(), out_dir))
        try:
            trainer.run(progress=progress)
        except CollectiveStop as stop:
            progress.close()
            if rank == 0:
                print(f"mpipipe: error: {stop}", file=sys.stderr, flush=True)
            return stop.exit_code
        progress.close()
        trainer.finish()
        if trainer.preempted:
            progress.message(
                f"stopped on request (SIGTERM) after step {trainer.step} and saved it; run the "
                "same command with --resume latest to continue"
            )
            return EXIT_PREEMPTED
        progress.message(f"done: metrics in {os.path.join(out_dir, 'metrics.jsonl')}")
    return 0


def _banner(plan, backend, world_size: int, out_dir: str) -> str:
    parallel = plan.config.parallel
    return (
        f"mpipipe: {plan.model.kind} with {len(plan.model.layers)} layers, "
        f"schedule {parallel.schedule} on {parallel.pipeline} pipeline x "
        f"{parallel.data_parallel} data-parallel ranks ({world_size} MPI ranks), "
        f"{parallel.microbatches} micro-batches of {plan.config.data.microbatch_size}, "
        f"{backend.device} {backend.dtype.__name__}, run folder {out_dir}"
    )


def _fail_on_every_rank(error: UsageError) -> int:
    """Report a problem found before MPI started once, and end every rank together.

    mpirun kills the other ranks as soon as one exits, so a message printed by
    rank 0 alone could be lost; agreeing through MPI prints it once and lets
    every rank leave through MPI_Finalize.
    """
    from mpi4py import MPI

    from mpipipe.runtime.failure import SetupFailed, agree_on_setup

    def raise_it():
        raise error

    with contextlib.suppress(SetupFailed):
        agree_on_setup(MPI.COMM_WORLD, raise_it)
    return EXIT_USAGE
