"""Will the run fit in memory? Asked on every rank before anything is allocated.

`check_fits(plan, backend)` is the one place set-up asks (commands/train.py
calls it in every rank's set-up, before the parameter store exists). Today
it makes a coarse estimate: the bytes of the parameters this rank holds,
their gradients and the optimizer's state, against the memory the machine
has available for each rank on it. Activations, messages and workspace are
left out; a full memory planner replaces this estimate here, with the same
verdict: a one-line UsageError naming the numbers.
"""

from __future__ import annotations

import os
from math import prod

import numpy as np

from mpipipe.checkpoint.folder import size_text
from mpipipe.checkpoint.verify_metadata import OPTIMIZER_STATES
from mpipipe.errors import UsageError
from mpipipe.plan import RunPlan

# Launchers' variables for the number of ranks on this node.
LOCAL_SIZE_VARIABLES = ("OMPI_COMM_WORLD_LOCAL_SIZE", "MPI_LOCALNRANKS", "PALS_LOCAL_SIZE",
                        "SLURM_NTASKS_PER_NODE")


def held_bytes(plan: RunPlan) -> int:
    """Parameters, gradients and optimizer state of the chunks this rank holds."""
    chunks = plan.schedule.placement.chunks_on(plan.grid.pipe_rank)
    layers = {layer for _, stage in chunks for layer in plan.stage_layers[stage]}
    shapes = plan.model.param_shapes()
    held = {key for key in shapes if key[0] in layers}
    # A tied weight (the LM head's embedding) is held wherever a layer using it is.
    held |= {owner for (layer, _), owner in plan.model.tied_keys().items() if layer in layers}
    elements = sum(prod(shapes[key]) for key in held)
    arrays = 2 + len(OPTIMIZER_STATES[plan.config.optim.name])
    return elements * arrays * np.dtype(plan.config.runtime.dtype).itemsize


def check_fits(plan: RunPlan, backend) -> None:
    """Refuse, with the numbers, a run whose parameter state cannot fit in this rank's memory."""
    if backend.is_gpu:
        return  # device memory is the memory planner's to estimate
    available = available_bytes()
    if available is None:
        return
    ranks = ranks_on_this_node()
    share = available // ranks
    needed = held_bytes(plan)
    if needed > share:
        optimizer = plan.config.optim.name
        shared = f": {size_text(available)} for {ranks} rank(s)" if ranks > 1 else ""
        raise UsageError(
            f"the parameters, gradients and {optimizer} state this rank holds take "
            f"{size_text(needed)}, more than its share of this machine's available memory "
            f"({size_text(share)}{shared}); use a smaller model (model.vocab_size, "
            "model.d_model, model.n_layer) or more pipeline ranks"
        )


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
