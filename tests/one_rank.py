"""A tiny trainer on this process alone (a world of one rank), for in-process tests."""

from mpi4py import MPI

from mpipipe.backend import select_backend
from mpipipe.config.schema import Config
from mpipipe.plan import plan_run
from mpipipe.trainer import Trainer


def tiny_trainer(out_dir=None, resuming=False, **overrides) -> Trainer:
    config = Config()
    config.model.vocab_size = 64
    config.model.seq_len = 8
    config.model.n_layer = 2
    config.model.n_head = 2
    config.model.d_model = 16
    config.data.source = "random"
    config.data.microbatch_size = 2
    config.parallel.microbatches = 2
    config.runtime.device = "cpu"
    config.runtime.dtype = "float64"
    config.runtime.trace = False
    config.optim.warmup_steps = 1
    config.train.steps = 5
    for dotted, value in overrides.items():
        section, key = dotted.split("__")
        setattr(getattr(config, section), key, value)
    plan = plan_run(config, 1, 0)
    return Trainer(plan, comm=MPI.COMM_WORLD, backend=select_backend("cpu", "float64"),
                   out_dir=None if out_dir is None else str(out_dir), verbose=False,
                   resuming=resuming)
