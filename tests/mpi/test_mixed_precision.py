"""Mixed precision through the pipeline: messages in the compute type, the loss close to
float32's, and an overflow on one rank skipping the step on every rank."""

import numpy as np
import pytest
from mpi4py import MPI

from mpipipe.runtime.faults import Fault, FaultInjector
from mpipipe.runtime.mpi_helpers import first_ranks

from tiny_runs import pipelined_trainer, reference_run, tiny_config

LOW = {"fp16": "float16", "bf16": "bfloat16"}
LOSS_TOLERANCE = {"fp16": 5e-3, "bf16": 3e-2}  # relative, against the float64 reference


def mixed_config(precision: str, schedule: str, pipeline: int, data_parallel: int, **overrides):
    return tiny_config("gpt", schedule, pipeline, data_parallel, runtime__dtype="float32",
                       runtime__precision=precision, **overrides)


@pytest.mark.mpi(min_size=4)
@pytest.mark.parametrize("precision", LOW)
def test_activations_travel_in_the_compute_type_and_the_loss_stays_close(precision):
    if precision == "bf16":
        pytest.importorskip("ml_dtypes")
    comm = first_ranks(MPI.COMM_WORLD, 4)
    if comm is None:
        return
    trainer = pipelined_trainer(mixed_config(precision, "bitpipe", 2, 2,
                                             runtime__loss_scale=1024.0), comm)
    messenger = trainer.engine.messenger
    assert messenger.message_dtype.name == LOW[precision]
    assert all(planned.info.nbytes == int(np.prod(planned.shape)) * 2
               for planned in trainer.engine.receive_plan)
    received = [planned.pending.buffer for planned in trainer.engine.receive_plan]
    assert received and all(buffer.dtype.name == LOW[precision] for buffer in received)
    rows = [trainer.train_step() for _ in range(2)]
    assert all(bucket.param.dtype == np.float32 and bucket.working.dtype.name == LOW[precision]
               for bucket in trainer.store.buckets)
    if comm.Get_rank() == 0:
        expected, _, _ = reference_run(trainer.plan, 2)
        for row, loss in zip(rows, expected, strict=True):
            assert abs(row["loss"] - loss) / loss < LOSS_TOLERANCE[precision]
    comm.Free()


@pytest.mark.mpi(min_size=4)
@pytest.mark.parametrize(("layout", "zero"), [((4, 1), 0), ((2, 2), 0), ((2, 2), 1)],
                         ids=["4x1", "2x2", "2x2-zero1"])
def test_an_overflow_on_one_rank_skips_the_step_and_halves_the_scale_everywhere(layout, zero):
    """With ZeRO-1 the infinite element reaches its shard's owner, which flags it."""
    comm = first_ranks(MPI.COMM_WORLD, layout[0] * layout[1])
    if comm is None:
        return
    overflow_rank, overflow_step = 1, 1
    trainer = pipelined_trainer(mixed_config("fp16", "bitpipe", *layout, parallel__zero=zero,
                                             runtime__loss_scale=1024.0), comm)
    if comm.Get_rank() == overflow_rank:
        trainer.engine.faults = FaultInjector(Fault("overflow", overflow_rank, overflow_step),
                                              overflow_rank)
    rows, params = [], []
    for _ in range(3):
        rows.append(trainer.train_step())
        params.append(weights(trainer))
    outcome = [(row["applied"], row["overflow"], row["loss_scale"]) for row in rows]
    assert comm.allgather(outcome) == [outcome] * comm.Get_size(), "ranks disagree"
    assert outcome == [(True, False, 1024.0), (False, True, 1024.0), (True, False, 512.0)]
    assert trainer.scaler.scale == 512.0 and trainer.optimizer.step_count == 2
    for key, value in params[1].items():
        assert np.array_equal(value, params[0][key]), f"{key} changed in the skipped step"
    assert any(not np.array_equal(value, params[1][key]) for key, value in params[2].items())
    comm.Free()


def weights(trainer) -> dict:
    """The master weights, or under ZeRO-1 (which keeps a shard of them) the working copies."""
    if not trainer.config.parallel.zero:
        return trainer.store.host_params()
    trainer.engine.finish_param_gathers()
    return {key: np.array(value) for key, value in trainer.store.working.items()}
