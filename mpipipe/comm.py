"""Point-to-point and gradient-sync communication for the engine.

Receives land in buffers allocated once and reused: either a persistent
receive per message of the step's fixed pattern (`persistent_receive`, then
`start_receive` every step) or one posted at a time into a pool
(`post_receive`). Sends are non-blocking and keep their array alive until
MPI is done with it. On a GPU, device buffers go to MPI directly when the
library is CUDA-aware; otherwise every transfer is staged through pinned
host memory. Either way the CuPy stream is synchronised before MPI touches
a buffer.

Activations and their gradients travel in the run's compute type (the
message dtype). MPI has no portable float16 or bfloat16 datatype, so those
go on the wire as their raw 2-byte words (`wire`: a uint16 view, no copy).
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass

import numpy as np
from mpi4py import MPI

from mpipipe.backend import Backend
from mpipipe.precision import is_low
from mpipipe.runtime.watchdog import WaitInfo, Watchdog


def wire(array):
    """What MPI is given for `array`: itself, or for a 2-byte float its uint16 view."""
    return array.view(np.uint16) if is_low(array.dtype) else array


class BufferPool:
    """Arrays of one dtype by shape: taken for a message, given back when its data is dead."""

    def __init__(self, allocate):
        self.allocate = allocate
        self.free: dict[tuple[int, ...], list] = {}

    def take(self, shape: tuple[int, ...]):
        free = self.free.get(shape)
        if free:
            return free.pop()
        return self.allocate(shape)

    def give_back(self, array) -> None:
        self.free.setdefault(tuple(array.shape), []).append(array)


@dataclass(frozen=True)
class PendingCounts:
    """Requests started and not yet finished; all zero between two steps."""

    sends: int
    receives: int
    syncs: int

    @property
    def total(self) -> int:
        return self.sends + self.receives + self.syncs


@dataclass(eq=False)
class PendingReceive:
    request: object
    buffer: object  # array of the compute module (device, or host on CPU) the data ends up in
    staging: object | None  # pinned host buffer the data arrives in when staged
    info: WaitInfo
    persistent: bool = False  # a persistent request on fixed buffers, started every step


@dataclass(frozen=True, eq=False)
class PendingSend:
    request: object
    array: object  # kept referenced until MPI has read it
    staging: object | None


@dataclass(eq=False)
class PendingSync:
    """A gradient sum or a ZeRO-1 all-gather in flight."""

    request: object
    target: object  # the array the result ends up in
    staging: object | None  # the host array it arrives in when staged
    info: WaitInfo
    sent: object = None  # a staged reduce-scatter's host input, kept alive until done


class Messenger:
    def __init__(self, comm, backend: Backend, cuda_aware: bool, watchdog: Watchdog,
                 message_dtype=None):
        """`message_dtype`: the type of every activation and gradient sent (default the
        backend's)."""
        self.comm = comm
        self.backend = backend
        self.staged = backend.is_gpu and not cuda_aware
        self.watchdog = watchdog
        xp = backend.xp
        dtype = self.message_dtype = np.dtype(message_dtype or backend.dtype)
        # Receive buffers, arrays of the compute module; pinned host arrays to stage through.
        self.buffer_pool = BufferPool(lambda shape: xp.empty(shape, dtype=dtype))
        self.staging_pool = BufferPool(self._pinned_empty) if self.staged else None
        self.sends: deque[PendingSend] = deque()  # started, not yet seen finished, oldest first
        self.receives: list[PendingReceive] = []  # posted, not yet finished
        self.syncs: list[PendingSync] = []  # started, not yet finished

    def empty(self, shape):
        """A receive buffer of the compute module (a persistent receive's, say)."""
        return self.backend.xp.empty(shape, dtype=self.message_dtype)

    def staging_empty(self, shape):
        """A pinned host buffer to stage a transfer through, or None when nothing is staged."""
        return self._pinned_empty(shape) if self.staged else None

    def _pinned_empty(self, shape):
        cupy = self.backend.xp
        size = int(np.prod(shape)) if shape else 1
        memory = cupy.cuda.alloc_pinned_memory(size * self.message_dtype.itemsize)
        return np.frombuffer(memory, dtype=self.message_dtype, count=size).reshape(shape)

    def post_receive(self, shape, peer: int, tag: int, info: WaitInfo) -> PendingReceive:
        buffer = self.buffer_pool.take(shape)
        if self.staged:
            staging = self.staging_pool.take(shape)
            request = self.comm.Irecv(wire(staging), source=peer, tag=tag)
        else:
            staging = None
            request = self.comm.Irecv(wire(buffer), source=peer, tag=tag)
        pending = PendingReceive(request, buffer, staging, info)
        self.receives.append(pending)
        return pending

    def persistent_receive(
        self, buffer, staging, peer: int, tag: int, info: WaitInfo
    ) -> PendingReceive:
        """A receive of `peer`'s message `tag` into `buffer` (through `staging`, a buffer from
        `staging_empty`, when staged), created once and started by `start_receive`."""
        target = buffer if staging is None else staging
        request = self.comm.Recv_init(wire(target), source=peer, tag=tag)
        return PendingReceive(request, buffer, staging, info, persistent=True)

    def start_receive(self, pending: PendingReceive) -> None:
        pending.request.Start()
        self.receives.append(pending)

    def free_receive(self, pending: PendingReceive) -> None:
        """Free a persistent receive that is not started."""
        pending.request.Free()

    def finish_receive(self, pending: PendingReceive):
        """Wait for a posted (or started) receive; return the array holding the data."""
        self.receives.remove(pending)
        self.watchdog.wait(pending.request, pending.info)
        if pending.staging is not None:
            wire(pending.buffer).set(wire(pending.staging))
            if not pending.persistent:
                self.staging_pool.give_back(pending.staging)
        return pending.buffer

    def send(self, array, peer: int, tag: int) -> None:
        """Start sending `array` in the message dtype (cast if a stage gave another type)."""
        array = self.backend.xp.ascontiguousarray(array, dtype=self.message_dtype)
        self.backend.synchronize()
        if self.staged:
            staging = self.staging_pool.take(tuple(array.shape))
            wire(array).get(out=wire(staging))
            request = self.comm.Isend(wire(staging), dest=peer, tag=tag)
        else:
            staging = None
            request = self.comm.Isend(wire(array), dest=peer, tag=tag)
        self.sends.append(PendingSend(request, array, staging))

    def pending(self) -> PendingCounts:
        return PendingCounts(len(self.sends), len(self.receives), len(self.syncs))

    def poll(self) -> None:
        """Let MPI move data, and drop the sends it has finished, oldest first.

        Open MPI moves a large message only inside MPI calls of both ranks, so the
        engine polls between ops and while the device computes. One test of any
        request runs MPI's progress for all of them, so one test is made, of the
        oldest send (more while those finish), else of a receive or a sync.
        """
        sends = self.sends
        if sends:
            while sends and sends[0].request.Test():
                self._sent(sends.popleft())
        elif self.receives:
            self.receives[0].request.Test()
        elif self.syncs:
            self.syncs[0].request.Test()

    def _sent(self, send: PendingSend) -> None:
        if send.staging is not None:
            self.staging_pool.give_back(send.staging)

    def finish_sends(self, op_label: str) -> None:
        while self.sends:
            send = self.sends.popleft()
            if not send.request.Test():
                info = WaitInfo("send completion", op_label, None, None, send.array.nbytes)
                self.watchdog.wait(send.request, info)
            self._sent(send)

    def start_gradient_sync(self, comm, grad, label: str) -> PendingSync:
        """Start summing `grad` in place over `comm` (non-blocking)."""
        self.backend.synchronize()
        info = WaitInfo("gradient allreduce", label, None, None, grad.nbytes)
        if self.staged:
            staging = self.backend.to_host(grad)
            request = comm.Iallreduce(MPI.IN_PLACE, staging, op=MPI.SUM)
        else:
            staging = None
            request = comm.Iallreduce(MPI.IN_PLACE, grad, op=MPI.SUM)
        pending = PendingSync(request, grad, staging, info)
        self.syncs.append(pending)
        return pending

    def start_gradient_reduce_scatter(self, comm, grad, shard, label: str) -> PendingSync:
        """ZeRO-1: start summing `grad` (padded to len(shard) times comm's size) over `comm`
        into `shard`, this rank's equal part of the sum (non-blocking)."""
        self.backend.synchronize()
        info = WaitInfo("gradient reduce-scatter", label, None, None, grad.nbytes)
        if self.staged:
            sent, staging = self.backend.to_host(grad), np.empty(shard.shape, shard.dtype)
            request = comm.Ireduce_scatter_block(sent, staging, op=MPI.SUM)
        else:
            sent, staging = None, None
            request = comm.Ireduce_scatter_block(grad, shard, op=MPI.SUM)
        pending = PendingSync(request, shard, staging, info, sent)
        self.syncs.append(pending)
        return pending

    def start_all_gather(self, comm, padded, label: str) -> PendingSync:
        """ZeRO-1: start filling `padded` in place with every member's equal part of it,
        this rank's part being its own (non-blocking); 2-byte floats go as raw words."""
        self.backend.synchronize()
        info = WaitInfo("parameter all-gather", label, None, None, padded.nbytes)
        if self.staged:
            staging = self.backend.to_host(padded)
            request = comm.Iallgather(MPI.IN_PLACE, wire(staging))
        else:
            staging = None
            request = comm.Iallgather(MPI.IN_PLACE, wire(padded))
        pending = PendingSync(request, padded, staging, info)
        self.syncs.append(pending)
        return pending

    def finish_gradient_syncs(self) -> None:
        for pending in self.syncs:
            self.finish_gradient_sync(pending)
        self.syncs = []

    def finish_sync(self, pending: PendingSync) -> None:
        """Wait for one sync (a ZeRO-1 all-gather, say) and forget it."""
        self.syncs.remove(pending)
        self.finish_gradient_sync(pending)

    def finish_gradient_sync(self, pending: PendingSync) -> None:
        self.watchdog.wait(pending.request, pending.info)
        if pending.staging is not None:
            wire(pending.target).set(wire(pending.staging))
