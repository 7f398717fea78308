"""Tiny runs for the MPI tests: a config, a pipelined run on a sub-communicator,
the single-process reference it must equal, and a barrier for the ranks left idle.

MPIPIPE_TEST_DEVICE=gpu runs the pipelined side with CuPy on the GPU (every
rank of a node on its GPU, several ranks sharing one), and
MPIPIPE_TEST_CUDA_AWARE=yes hands MPI the device buffers directly
(jobs/local/gpu_check.sh runs both ways); the reference stays on the CPU.
"""

from __future__ import annotations

import math
import os
import time

import numpy as np

from mpipipe.backend import Backend, select_backend
from mpipipe.config.schema import Config
from mpipipe.models.reference import loss_and_grads
from mpipipe.optim import ParamGroup, build_optimizer, clip_coefficient, learning_rate
from mpipipe.plan import plan_run
from mpipipe.runtime.params import weight_decay_applies
from mpipipe.trainer import Trainer

FLOAT64 = Backend(xp=np, dtype=np.float64, device="cpu")
DEVICE = os.environ.get("MPIPIPE_TEST_DEVICE", "cpu")
CUDA_AWARE = os.environ.get("MPIPIPE_TEST_CUDA_AWARE", "no") == "yes"
IDLE_POLL_S = 0.01


def wait_for_every_rank(comm) -> None:
    """A barrier that sleeps while it waits, so the ranks a test leaves idle do not spin on
    the cores the working ranks need (blocking MPI calls busy-poll)."""
    request = comm.Ibarrier()
    while not request.Test():
        time.sleep(IDLE_POLL_S)


def test_backend(dtype: str = "float64") -> Backend:
    """The pipelined runs' backend: NumPy, or CuPy where MPIPIPE_TEST_DEVICE=gpu."""
    if DEVICE == "cpu":
        return FLOAT64 if dtype == "float64" else Backend(xp=np, dtype=np.float32, device="cpu")
    return select_backend("gpu", dtype)


test_backend.__test__ = False  # a helper, not a test


def tiny_config(kind: str, schedule: str, pipeline: int, data_parallel: int, **overrides) -> Config:
    config = Config()
    config.model.kind = kind
    config.model.vocab_size = 64
    config.model.seq_len = 8
    config.model.n_layer = 8
    config.model.n_head = 2
    config.model.d_model = 16
    config.data.source = "random"
    config.data.microbatch_size = 2
    config.parallel.schedule = schedule
    config.parallel.pipeline = pipeline
    config.parallel.data_parallel = data_parallel
    config.parallel.microbatches = 2 * pipeline
    config.runtime.dtype = "float64"
    config.runtime.device = DEVICE
    config.runtime.timeout_s = 60.0
    config.optim.warmup_steps = 1
    config.optim.weight_decay = 0.1
    config.optim.grad_clip = 1.0
    config.train.steps = 3
    for dotted, value in overrides.items():
        section, key = dotted.split("__")
        setattr(getattr(config, section), key, value)
    return config


def pipelined_trainer(config: Config, comm, backend: Backend | None = None,
                      model=None) -> Trainer:
    """A trainer of `config` (and `model`, default the config's) on `comm`; `backend`
    defaults to the test backend (MPIPIPE_TEST_DEVICE)."""
    plan = plan_run(config, comm.Get_size(), comm.Get_rank(), model=model)
    backend = backend or test_backend(config.runtime.dtype)
    return Trainer(plan, comm=comm, backend=backend, out_dir=None, cuda_aware=CUDA_AWARE,
                   verbose=False)


def pipelined_run(config: Config, comm, steps: int, backend: Backend | None = None, model=None):
    """Train `steps` steps on `comm` (of `model`, default the config's); returns (plan,
    metrics rows, every rank's host params on root)."""
    trainer = pipelined_trainer(config, comm, backend, model)
    rows = [trainer.train_step() for _ in range(steps)]
    trainer.engine.finish_param_gathers()  # ZeRO-1: the last update's all-gather
    gathered = comm.gather(trainer.store.host_params(), root=0)
    return trainer.plan, rows, gathered


def reference_loss(model, params: dict, batch) -> float:
    """The whole model's forward on `batch` in one process: its loss."""
    x = batch.tokens
    for index, layer in enumerate(model.layers):
        x, _ = layer.forward(model.layer_arrays(params, index), x, batch)
    return float(x)


def reference_run(plan, steps: int):
    """The same steps, one process, the whole global batch at once: (losses, norms, params)."""
    config, model = plan.config, plan.model
    params = model.init_params(config.train.seed)
    groups = [
        ParamGroup(
            value.reshape(-1),
            np.zeros(value.size),
            config.optim.weight_decay if weight_decay_applies(value.shape) else 0.0,
        )
        for value in params.values()
    ]
    grad_views = dict(zip(params, (group.grad for group in groups), strict=True))
    optimizer = build_optimizer(groups, config.optim)
    losses, norms = [], []
    for step in range(steps):
        loss, grads = loss_and_grads(model, params, plan.batcher.global_batch(step))
        norm = math.sqrt(sum(float(np.vdot(grad, grad)) for grad in grads.values()))
        for key, view in grad_views.items():
            view[...] = grads[key].reshape(-1)
        learning = learning_rate(step, config.optim, config.train.steps)
        optimizer.step(learning, grad_scale=clip_coefficient(norm, config.optim.grad_clip))
        losses.append(float(loss))
        norms.append(norm)
    return losses, norms, params


def relative_difference(actual, expected) -> float:
    actual, expected = np.asarray(actual, dtype=np.float64), np.asarray(expected, dtype=np.float64)
    scale = max(float(np.linalg.norm(expected)), 1e-300)
    return float(np.linalg.norm(actual - expected)) / scale


def assert_equals_one_process(plan, rows: list[dict], gathered: list[dict], steps: int,
                              tolerance: float) -> list[float]:
    """Rank 0: each step's loss and grad norm, and every rank's copy of every parameter,
    against the single-process run of `plan` (copies bitwise alike, none missing);
    returns the reference's grad norms."""
    expected_losses, expected_norms, expected_params = reference_run(plan, steps)
    for step in range(steps):
        assert relative_difference(rows[step]["loss"], expected_losses[step]) < tolerance, step
        assert relative_difference(rows[step]["grad_norm"], expected_norms[step]) < tolerance
    seen = set()
    for rank_params in gathered:
        for key, value in rank_params.items():
            seen.add(key)
            assert relative_difference(value, expected_params[key]) < tolerance, key
            first_copy = next(params[key] for params in gathered if key in params)
            assert np.array_equal(value, first_copy), f"copies of {key} differ"
    assert seen == set(expected_params), "some parameters are held by no rank"
    return expected_norms
