"""`mpipipe eval CONFIG --resume PATH`: the held-out loss of a checkpoint, at any layout.

Every rank loads the checkpoint's parameters by global name (so the layout,
schedule and number of ranks may differ from the run that saved it), runs
the schedule's forwards over train.eval_batches global batches of the
held-out windows (data.eval_fraction) and rank 0 prints their mean loss.
"""

from __future__ import annotations

import contextlib
import sys

from mpipipe.commands.config import add_config_arguments
from mpipipe.errors import EXIT_USAGE, UsageError


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "eval",
        help="the held-out loss of a checkpoint (run it under mpirun for several ranks)",
        description="Evaluate a checkpoint on the held-out data of its config "
        "(data.eval_fraction): forward passes through the pipeline over train.eval_batches "
        "global batches, at any layout.",
    )
    add_config_arguments(
        parser, config_help="TOML config file (the one the checkpoint was trained with)")
    parser.add_argument("--resume", required=True, metavar="PATH",
                        help="the checkpoint: a step_*.h5 file or a folder of them (its newest)")
    parser.set_defaults(func=run)


def run(args) -> int:
    from mpipipe.backend import select_backend
    from mpipipe.config.load import load_config

    try:
        config = load_config(args.config, args.overrides)
        backend = select_backend(config.runtime.device, config.runtime.dtype)
    except UsageError as error:
        return _fail_on_every_rank(error)

    from mpi4py import MPI

    from mpipipe.config.validate import validate_config
    from mpipipe.plan import plan_run
    from mpipipe.runtime.cuda_aware import resolve_cuda_aware
    from mpipipe.runtime.failure import SetupFailed, abort_on_exception, agree_on_setup
    from mpipipe.trainer import Trainer

    comm = MPI.COMM_WORLD
    rank = comm.Get_rank()

    def setup():
        validate_config(config, comm.Get_size(), evaluating=True)
        return plan_run(config, comm.Get_size(), rank, tag_limit=comm.Get_attr(MPI.TAG_UB))

    with abort_on_exception(comm):
        try:
            plan = agree_on_setup(comm, setup)
        except SetupFailed:
            return EXIT_USAGE
        cuda_aware = resolve_cuda_aware(
            config.runtime.cuda_aware, backend.is_gpu, MPI.Get_library_version()
        )
        trainer = Trainer(plan, comm=comm, backend=backend, cuda_aware=cuda_aware)
        try:
            path = agree_on_setup(comm, lambda: trainer.resume(args.resume))
        except SetupFailed:
            return EXIT_USAGE
        loss = trainer.evaluate()
        trainer.finish()
    if rank == 0:
        parallel = config.parallel
        windows = config.train.eval_batches * plan.batcher.samples_per_step
        print(
            f"eval_loss {loss:.12g}: checkpoint {path} (step {trainer.step}), "
            f"{config.train.eval_batches} batches ({windows} held-out windows), "
            f"{parallel.schedule} on {parallel.pipeline} x {parallel.data_parallel} ranks",
            file=sys.stdout, flush=True,
        )
    return 0


def _fail_on_every_rank(error: UsageError) -> int:
    """Report a problem found before MPI started once, and end every rank together (an
    mpirun that sees one rank leave early kills the others, maybe before they print)."""
    from mpi4py import MPI

    from mpipipe.runtime.failure import SetupFailed, agree_on_setup

    def raise_it():
        raise error

    with contextlib.suppress(SetupFailed):
        agree_on_setup(MPI.COMM_WORLD, raise_it)
    return EXIT_USAGE
