"""The engine's extension points, in one process: stage factories, batch sources, faults,
and its count of pending MPI requests."""

import numpy as np
import pytest
from mpi4py import MPI
from tiny_config import tiny_config

from mpipipe.backend import select_backend
from mpipipe.comm import Messenger
from mpipipe.engine import Engine
from mpipipe.errors import UsageError
from mpipipe.plan import plan_run
from mpipipe.runtime.faults import ENVIRONMENT_VARIABLE, NO_FAULTS, faults_from_environment
from mpipipe.runtime.params import ParamStore
from mpipipe.runtime.stage import LayerStage
from mpipipe.runtime.timeline import Timeline
from mpipipe.runtime.watchdog import WaitInfo, Watchdog
from mpipipe.trainer import Trainer

from oneline import one_line_error

FLOAT64 = select_backend("cpu", "float64")


def tiny_plan(schedule: str = "1f1b", tag_limit: int | None = None):
    config = tiny_config(parallel__schedule=schedule, parallel__microbatches=3)
    return plan_run(config, 1, 0, tag_limit=tag_limit)


def test_a_schedule_the_mpi_library_cannot_tag_is_refused_at_set_up():
    from mpipipe.schedules import max_tag

    needed = max_tag(tiny_plan().schedule)
    assert tiny_plan(tag_limit=needed).schedule is not None
    one_line_error(lambda: tiny_plan(tag_limit=needed - 1),
                   [f"tags up to {needed}", f"allows {needed - 1}", "parallel.microbatches"])


class CountingStage(LayerStage):
    """The real layers, counting each kind of call."""

    def __init__(self, *args):
        super().__init__(*args)
        self.calls = {"forward": 0, "backward": 0, "backward_input": 0, "backward_weight": 0}

    def forward(self, x, ctx):
        self.calls["forward"] += 1
        return super().forward(x, ctx)

    def backward(self, dy, caches):
        self.calls["backward"] += 1
        return super().backward(dy, caches)

    def backward_input(self, dy, caches):
        self.calls["backward_input"] += 1
        return super().backward_input(dy, caches)

    def backward_weight(self, weight_caches):
        self.calls["backward_weight"] += 1
        return super().backward_weight(weight_caches)


@pytest.mark.parametrize(("schedule", "backward_kinds"),
                         [("1f1b", {"backward"}), ("zb-h1", {"backward_input", "backward_weight"})])
def test_a_stage_factory_supplies_the_compute_the_engine_runs(schedule, backward_kinds):
    plain = Trainer(tiny_plan(schedule), comm=MPI.COMM_WORLD, backend=FLOAT64, verbose=False)
    made = {}

    def factory(stage, layer_indices, store):
        made[stage] = CountingStage(plan.model.layers, layer_indices, store)
        return made[stage]

    plan = tiny_plan(schedule)
    trainer = Trainer(plan, comm=MPI.COMM_WORLD, backend=FLOAT64, stage_factory=factory,
                      verbose=False)
    rows = [trainer.train_step() for _ in range(2)]
    assert set(made) == set(range(plan.schedule.stages))
    microbatches = plan.config.parallel.microbatches
    for stage in made.values():
        assert stage.calls["forward"] == 2 * microbatches
        for kind, count in stage.calls.items():
            if kind in backward_kinds:
                assert count == 2 * microbatches, (kind, count)
            elif kind != "forward":
                assert count == 0, (kind, count)
    assert [row["loss"] for row in rows] == [plain.train_step()["loss"] for _ in range(2)]


def test_a_stage_factory_making_something_else_is_refused_naming_the_stage():
    plan = tiny_plan()
    store = ParamStore.create(plan.model, plan.stage_layers, plan.schedule.placement, plan.grid,
                              FLOAT64, plan.config.train.seed)
    with pytest.raises(TypeError, match="made dict for stage 0"):
        Engine(plan, store, comm=MPI.COMM_WORLD, backend=FLOAT64, watchdog=Watchdog(0, 10.0),
               timeline=Timeline(0, 0.0, max_steps=0),
               stage_factory=lambda stage, layers, store: {})


def test_plan_run_takes_a_batch_source_of_its_own_and_refuses_other_objects():
    own = tiny_plan().batcher  # any object with microbatch() and vocab_size

    class Source:
        vocab_size = own.vocab_size

        def microbatch(self, step, replica, index):
            return own.microbatch(step, replica, index)

    config = tiny_plan().config
    assert isinstance(plan_run(config, 1, 0, batcher=Source()).batcher, Source)
    with pytest.raises(TypeError, match="not a MicroBatchSource"):
        plan_run(config, 1, 0, batcher=object())


def test_faults_are_absent_unless_the_variable_names_this_rank(monkeypatch):
    monkeypatch.delenv(ENVIRONMENT_VARIABLE, raising=False)
    assert faults_from_environment(0) is NO_FAULTS
    monkeypatch.setenv(ENVIRONMENT_VARIABLE, "withhold,rank=1,step=2")
    assert faults_from_environment(0) is NO_FAULTS
    armed = faults_from_environment(1)
    assert [armed.withhold_send(step) for step in (1, 2, 2)] == [False, True, False]
    monkeypatch.setenv(ENVIRONMENT_VARIABLE, "withhold,rank=one,step=2")
    with pytest.raises(UsageError, match="rank and step are integers"):
        faults_from_environment(0)


def test_pending_requests_count_what_is_started_and_not_finished():
    comm = MPI.COMM_SELF.Dup()
    messenger = Messenger(comm, FLOAT64, cuda_aware=False, watchdog=Watchdog(0, 10.0))
    info = WaitInfo("activation", "1F0", 0, 3, 32)
    receive = messenger.post_receive((4,), 0, 3, info)
    messenger.send(np.arange(4.0), 0, 3)
    messenger.start_gradient_sync(comm, np.ones(2), "end of step")
    pending = messenger.pending()
    assert (pending.sends, pending.receives, pending.syncs) == (1, 1, 1)
    assert np.array_equal(messenger.finish_receive(receive), np.arange(4.0))
    messenger.finish_sends("end of step")
    messenger.finish_gradient_syncs()
    assert messenger.pending().total == 0
    comm.Free()


def test_a_persistent_receive_takes_each_step_s_message_and_is_pending_only_when_started():
    comm = MPI.COMM_SELF.Dup()
    messenger = Messenger(comm, FLOAT64, cuda_aware=False, watchdog=Watchdog(0, 10.0))
    buffer = messenger.empty((4,))
    receive = messenger.persistent_receive(
        buffer, messenger.staging_empty((4,)), 0, 5, WaitInfo("gradient", "0B1", 0, 5, 32)
    )
    assert messenger.pending().total == 0
    for step in range(3):
        messenger.start_receive(receive)
        assert messenger.pending().receives == 1
        messenger.send(np.arange(4.0) + step, 0, 5)
        data = messenger.finish_receive(receive)
        assert data is buffer and np.array_equal(data, np.arange(4.0) + step)
        messenger.finish_sends("end of step")
        assert messenger.pending().total == 0
    messenger.free_receive(receive)
    comm.Free()
