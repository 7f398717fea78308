"""Will the run fit in memory? Asked on every rank before anything is allocated.

`check_fits(plan, backend)` is the one place set-up asks (commands/train.py
calls it in every rank's set-up, before the parameter store exists). The
memory planner (mpipipe/memory_plan/) predicts what this rank will hold at
its peak: parameters, gradients, optimizer state, working copies,
activation caches and message buffers. The budget is this rank's share of
the machine: on a CPU the MemAvailable of /proc/meminfo over the ranks on
the node, on a GPU the device's memory over the ranks that share it. A rank
over its budget is refused with a one-line UsageError naming the numbers
and the smallest change the planner predicts fits.
"""

from __future__ import annotations

import os

from mpipipe.errors import UsageError
from mpipipe.memory_plan import gib_text, predict_layout, smallest_fix
from mpipipe.memory_plan.predict import MemoryPlan, RankMemory
from mpipipe.plan import RunPlan

# Launchers' variables for the number of ranks on this node.
LOCAL_SIZE_VARIABLES = ("OMPI_COMM_WORLD_LOCAL_SIZE", "MPI_LOCALNRANKS", "PALS_LOCAL_SIZE",
                        "SLURM_NTASKS_PER_NODE")


def memory_plan_of(plan: RunPlan) -> MemoryPlan:
    """The planner's prediction for the layout `plan` decided."""
    return predict_layout(plan.config, plan.grid.world_size, plan.model, plan.schedule,
                          plan.stage_layers)


def rank_memory(plan: RunPlan) -> RankMemory:
    """What this rank is predicted to hold at its peak."""
    return memory_plan_of(plan).ranks[plan.grid.pipe_rank]


def check_fits(plan: RunPlan, backend) -> None:
    """Refuse, with the numbers, a run whose predicted peak cannot fit in this rank's memory."""
    budget = rank_budget(backend)
    if budget is None:
        return
    share, where = budget
    memory = memory_plan_of(plan)
    needed = memory.ranks[plan.grid.pipe_rank]
    if needed.total <= share:
        return
    fix = smallest_fix(memory, share)
    change = (f"the smallest change the planner predicts fits: {fix.describe()}" if fix else
              "use a smaller model (model.vocab_size, model.d_model, model.n_layer) or more "
              "pipeline ranks")
    raise UsageError(
        f"pipeline rank {needed.pipe_rank} would hold {gib_text(needed.total)} at its peak "
        f"(parameters, gradients and {plan.config.optim.name} state {gib_text(needed.state)}, "
        f"activations {gib_text(needed.activations)}, messages {gib_text(needed.messages)}), "
        f"more than its share of {where} ({gib_text(share)}); {change} "
        "(mpipipe plan CONFIG --memory SIZE shows every rank)"
    )


def rank_budget(backend) -> tuple[int, str] | None:
    """(bytes this rank may use, what they are a share of), or None where it cannot be told."""
    ranks = ranks_on_this_node()
    if backend.is_gpu:
        runtime = backend.xp.cuda.runtime
        devices = max(1, runtime.getDeviceCount())
        total = int(backend.xp.cuda.Device().mem_info[1])
        sharing = max(1, -(-ranks // devices))  # ranks on each GPU, rounded up
        shared = f" for {sharing} rank(s)" if sharing > 1 else ""
        return total // sharing, f"the GPU's memory: {gib_text(total)}{shared}"
    available = available_bytes()
    if available is None:
        return None
    shared = f" for {ranks} rank(s)" if ranks > 1 else ""
    return available // ranks, f"this machine's available memory: {gib_text(available)}{shared}"


def available_bytes() -> int | None:
    """MemAvailable of /proc/meminfo (Linux), or None where it cannot be read."""
    try:
        with open("/proc/meminfo") as handle:
            for line in handle:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        return None
    return None


def ranks_on_this_node() -> int:
    for name in LOCAL_SIZE_VARIABLES:
        value = os.environ.get(name, "")
        if value.isdigit() and int(value) > 0:
            return int(value)
    return 1
