"""What the runtime asks of training data: one micro-batch by (step, replica, index).

`mpipipe.data.build_batcher` builds the one a config names; `plan_run` also
takes any other object with these members (the emulated benchmark passes
micro-batches of zeros).
"""

from __future__ import annotations

from typing import Protocol, runtime_checkable

from mpipipe.layers.base import MicroBatch


@runtime_checkable
class MicroBatchSource(Protocol):
    """Micro-batches as host (NumPy) arrays, a pure function of their position.

    Every layout asks for the same global micro-batches, so the answer may depend only on
    (step, replica, index) and the source's own settings, never on the rank asking.
    """

    # The data's token ids are 0 .. vocab_size - 1; the model may add ids of its own.
    vocab_size: int

    def microbatch(self, step: int, replica: int, index: int) -> MicroBatch:
        """Micro-batch `index` of data-parallel replica `replica` at `step`."""
        ...
