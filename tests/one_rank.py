"""A tiny trainer on this process alone (a world of one rank), for in-process tests."""

from mpi4py import MPI
from tiny_config import tiny_config

from mpipipe.backend import select_backend
from mpipipe.plan import plan_run
from mpipipe.trainer import Trainer


def tiny_trainer(out_dir=None, resuming=False, **overrides) -> Trainer:
    defaults = {"parallel__microbatches": 2, "runtime__device": "cpu",
                "optim__warmup_steps": 1, "train__steps": 5}
    config = tiny_config(**{**defaults, **overrides})
    plan = plan_run(config, 1, 0)
    return Trainer(plan, comm=MPI.COMM_WORLD, backend=select_backend("cpu", "float64"),
                   out_dir=None if out_dir is None else str(out_dir), verbose=False,
                   resuming=resuming)
