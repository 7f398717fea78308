"""`mpipipe train CONFIG`: train under MPI (mpirun/srun decide the number of ranks).

Preemption: SIGTERM on any rank (Slurm's `--signal=TERM@120` with srun, a PBS
pre-kill signal, or `kill -TERM` of one rank) makes every rank finish the
current step, save a checkpoint and exit with EXIT_PREEMPTED (75); the next
job continues with `--resume latest`. The signal must reach the ranks with
time to save: Open MPI's mpirun, signalled itself, passes SIGTERM on but
kills the ranks one second later (its odls_base_sigkill_timeout).
"""

from __future__ import annotations

import os
import signal
import sys

from mpipipe import __version__
from mpipipe.commands.config import add_config_arguments
from mpipipe.errors import EXIT_INTERRUPTED, EXIT_PREEMPTED, EXIT_USAGE, UsageError

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
    add_config_arguments(parser, config_help="TOML config file (see examples/)")
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
    parser.add_argument(
        "--overwrite", action="store_true",
        help="the run folder holds another run: delete its metrics, trace and checkpoints and "
        "start anew (without it such a folder is refused, unless --resume continues it)",
    )
    parser.set_defaults(func=run)


def default_out_dir(config_path: str) -> str:
    return os.path.join("runs", os.path.splitext(os.path.basename(config_path))[0])


def prepare_out_dir(path: str) -> None:
    """Create the run folder and prove it is writable (rank 0 only)."""
    from mpipipe.run_folder import prove_writable

    prove_writable(path, "--out", "the run folder")


def run(args) -> int:
    from mpipipe.backend import select_backend
    from mpipipe.config.load import load_config
    from mpipipe.run_folder import check_out_option
    from mpipipe.runtime.failure import DEFAULT_TIMEOUT_S
    from mpipipe.runtime.phase_watchdog import PhaseWatchdog

    # Read the config and bind the GPU before MPI starts; every rank does the same.
    config = backend = None
    try:
        check_out_option(args.out)
        config = load_config(args.config, args.overrides)
        backend = select_backend(config.runtime.device, config.runtime.dtype)
        problem = None
    except UsageError as error:
        problem = error
    timeout_s = config.runtime.timeout_s if config is not None else DEFAULT_TIMEOUT_S
    phases = PhaseWatchdog(launcher_rank(), timeout_s)
    try:
        return _run_under_mpi(args, config, backend, problem, phases)
    except KeyboardInterrupt:
        print(f"mpipipe: error: interrupted (Ctrl-C) on rank {phases.rank}; no partial "
              "checkpoint is left, and the last complete one continues with --resume latest",
              file=sys.stderr, flush=True)
        return EXIT_INTERRUPTED
    finally:
        phases.backstop.disarm()


def _run_under_mpi(args, config, backend, problem, phases) -> int:
    from mpipipe.backend import (
        local_rank_from_environment,
        select_backend,
        shared_memory_local_rank,
    )
    from mpipipe.run_folder import check_before_first_step, checkpoint_bytes
    from mpipipe.runtime.ctrl_c import CTRL_C
    from mpipipe.runtime.rendezvous import Rendezvous
    from mpipipe.runtime.same_settings import job_settings, job_verdict

    with phases.phase("MPI start-up"):
        from mpi4py import MPI

        comm = MPI.COMM_WORLD
        phases.rank = comm.Get_rank()
        rendezvous = Rendezvous(comm, phases)
    settings = {} if problem is not None else job_settings(
        config, out=os.path.abspath(args.out or default_out_dir(args.config)),
        resume=args.resume or "", overwrite=str(args.overwrite), mpipipe=__version__)
    with phases.phase("set-up: the same job on every rank", args.config):
        verdict = rendezvous.agree((None if problem is None else str(problem), settings),
                                   job_verdict)
    if verdict is not None:
        if comm.Get_rank() == verdict[0]:
            print(f"mpipipe: error: {verdict[1]}", file=sys.stderr, flush=True)
        return EXIT_USAGE

    from mpipipe.checkpoint.save import FALLBACK_WARNING, use_parallel_hdf5
    from mpipipe.memory_fit import check_fits
    from mpipipe.plan import plan_run
    from mpipipe.progress import Progress
    from mpipipe.run_folder import RunFolder
    from mpipipe.runtime.cuda_aware import resolve_cuda_aware
    from mpipipe.runtime.failure import (
        CollectiveStop,
        SetupFailed,
        abort_on_exception,
        agree_on_setup,
    )
    from mpipipe.runtime.faults import faults_from_environment
    from mpipipe.runtime.schedule_agreement import check_same_schedule
    from mpipipe.trainer import Trainer

    rank = comm.Get_rank()
    out_dir = args.out or default_out_dir(args.config)
    folder = RunFolder(out_dir, os.path.join(out_dir, config.checkpoint.dir))
    if backend.is_gpu and local_rank_from_environment() is None:
        # No launcher told us the node-local rank: ask MPI which ranks share this node.
        with phases.phase("set-up: finding the ranks on this node"):
            local_rank = shared_memory_local_rank(comm)
        backend = select_backend(config.runtime.device, config.runtime.dtype, local_rank)

    def setup():
        faults_from_environment(rank).at("setup", 0)
        plan = plan_run(config, comm.Get_size(), rank, tag_limit=comm.Get_attr(MPI.TAG_UB))
        check_fits(plan, backend)
        parallel_checkpoints = use_parallel_hdf5(config.checkpoint.parallel)
        if rank == 0:
            check_before_first_step(folder, resume=args.resume is not None,
                                    overwrite=args.overwrite,
                                    checkpoint_bytes=checkpoint_bytes(plan))
            if config.checkpoint.parallel == "auto" and not parallel_checkpoints:
                print(FALLBACK_WARNING, file=sys.stderr, flush=True)
        return plan, parallel_checkpoints

    with abort_on_exception(comm):
        try:
            plan, parallel_checkpoints = agree_on_setup(comm, setup, rendezvous,
                                                        "set-up agreement", args.config)
            agree_on_setup(comm, lambda: check_same_schedule(comm, plan, rendezvous), rendezvous,
                           "set-up: the same schedule on every rank", args.config)
            prepare_run_folder(comm, rendezvous, folder, args, parallel_checkpoints)
        except SetupFailed:
            return EXIT_USAGE
        phases.dump_dir = out_dir
        cuda_aware = resolve_cuda_aware(
            config.runtime.cuda_aware, backend.is_gpu, MPI.Get_library_version()
        )
        with phases.phase("set-up: building the engine"):
            trainer = Trainer(plan, comm=comm, backend=backend, out_dir=out_dir,
                              cuda_aware=cuda_aware, resuming=args.resume is not None,
                              phases=phases)
        if args.resume is not None:
            try:
                agree_on_setup(comm, lambda: trainer.resume(args.resume), trainer.rendezvous,
                               "resume agreement", args.resume)
            except SetupFailed:
                return EXIT_USAGE
        trainer.watchdog.install_signal_handler()
        signal.signal(signal.SIGTERM, lambda signum, frame: trainer.request_stop())
        if signal.getsignal(signal.SIGINT) is signal.default_int_handler:  # not ignored
            CTRL_C.install()
        progress = Progress(config.train.steps, trainer.step, config.train.log_every, rank == 0)
        progress.message(_banner(plan, backend, comm.Get_size(), out_dir))
        try:
            trainer.run(progress=progress)
        except CollectiveStop as stop:
            progress.close()
            if rank == 0:
                print(f"mpipipe: error: {stop}", file=sys.stderr, flush=True)
            if getattr(stop, "leaves_open_files", False):
                with phases.phase("end after a failed save"):
                    rendezvous.barrier()  # rank 0 has said it: now every rank may go
                _end_now(stop.exit_code)
            return stop.exit_code
        progress.close()
        with phases.phase("end: writing the trace", os.path.join(out_dir, "trace.json")):
            trainer.finish()
        if trainer.preempted:
            progress.message(
                f"stopped on request (SIGTERM) after step {trainer.step} and saved it; run the "
                "same command with --resume latest to continue"
            )
            return EXIT_PREEMPTED
        progress.message(f"done: metrics in {os.path.join(out_dir, 'metrics.jsonl')}")
    return 0


def prepare_run_folder(comm, rendezvous, folder, args, parallel_checkpoints: bool) -> None:
    """After every rank agreed on the set-up: clear an old run (--overwrite), remove partial
    files of unfinished saves, and with parallel HDF5 make sure every rank sees the folder."""
    from mpipipe.checkpoint.folder import remove_partials
    from mpipipe.run_folder import check_shared, leave_token, remove_old_run, remove_token
    from mpipipe.runtime.failure import agree_on_setup

    rank = comm.Get_rank()

    def clear() -> str | None:
        if rank != 0:
            return None
        try:
            removed = remove_old_run(folder) if args.overwrite else remove_partials(
                folder.checkpoint_dir)
            for path in removed:
                print(f"removed {path}", flush=True)
            return leave_token(folder) if parallel_checkpoints and comm.Get_size() > 1 else None
        except OSError as error:
            raise UsageError(f"--out {folder.path}: cannot clear the old run's files "
                             f"({error.strerror}: {error.filename})") from None

    token = agree_on_setup(comm, clear, rendezvous, "set-up: preparing the run folder",
                           folder.path)
    with rendezvous.watchdog.phase("set-up: preparing the run folder", folder.path):
        token = rendezvous.agree(token, lambda tokens: tokens[0])
    if token is None:
        return
    try:
        agree_on_setup(comm, lambda: check_shared(folder, token, rank), rendezvous,
                       "set-up: every rank sees the run folder", folder.checkpoint_dir)
    finally:
        if rank == 0:
            remove_token(folder, token)


def _banner(plan, backend, world_size: int, out_dir: str) -> str:
    parallel = plan.config.parallel
    return (
        f"mpipipe: {plan.model.kind} with {len(plan.model.layers)} layers, "
        f"schedule {parallel.schedule} on {parallel.pipeline} pipeline x "
        f"{parallel.data_parallel} data-parallel ranks ({world_size} MPI ranks), "
        f"{parallel.microbatches} micro-batches of {plan.config.data.microbatch_size}, "
        f"{backend.device} {backend.dtype.__name__}, run folder {out_dir}"
    )


def _end_now(code: int) -> None:
    """End the process at once, without MPI_Finalize or Python's clean-up (see SaveFailed)."""
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)
