"""The emulated benchmark's bare MPI loop runs a schedule's real message pattern.

It must wait for every message it needs: then no rank can start an op before
the ops it depends on have ended on their ranks, and the loop's window can
never be shorter than the simulator's makespan for the same costs without
latency (a bound a loaded machine only ever adds to). A loop that skipped a
wait would beat it: each rank would just run its own ops back to back. Every
message lands whole: the senders send ones, and every receive buffer the loop
used holds only ones.
"""

import numpy as np
import pytest
from mpi4py import MPI

from mpipipe.bench.bare_pipeline import BarePipeline
from mpipipe.bench.emulated import EmulatedSettings, bench_config
from mpipipe.bench.emulated_device import emulated_accelerator
from mpipipe.bench.emulated_model import ZeroBatcher, emulated_model, stage_costs
from mpipipe.plan import plan_run
from mpipipe.runtime.mpi_helpers import first_ranks
from mpipipe.schedules.simulate import simulate

from tiny_runs import wait_for_every_rank

F0_S = 4e-3  # long enough that a skipped wait would show, short enough for a quick test


@pytest.mark.mpi(min_size=2)
@pytest.mark.parametrize("kind", ["1f1b", "bitpipe", "zb-v", "bitpipe-zb"])
def test_bare_loop_waits_for_every_message_and_gets_it_whole(kind):
    world = MPI.COMM_WORLD
    comm = first_ranks(world, 2)
    if comm is not None:
        settings = EmulatedSettings(seq_len=64)
        config = bench_config(kind, 2, 4, settings)
        model = emulated_model(8, settings.seq_len, body_layers=4)
        plan = plan_run(config, 2, comm.Get_rank(), model=model,
                        batcher=ZeroBatcher(1, settings.seq_len))
        costs = stage_costs(F0_S, 2, plan.schedule.stages)
        loop = BarePipeline(comm, plan, costs, emulated_accelerator())
        window = loop.window_seconds(warmup=0, steps=2)
        makespan = simulate(plan.schedule, stage_costs(F0_S, 2, 2),
                            scale_by_stage_size=True).makespan
        assert window >= makespan * (1 - 1e-6), (window, makespan)
        used = [buffer for buffers in loop.free.values() for buffer in buffers]
        assert used and all(np.all(buffer == 1.0) for buffer in used)
        comm.Free()
    wait_for_every_rank(world)
