"""Benchmark: checkpoint write rate from every rank, next to the disk's raw sequential rate.

    jobs/local/mpirun.sh -n 4 .venv/bin/python -m mpipipe.bench.checkpoint_io [--dir DIR]

Builds a float32 GPT whose parameters take about --megabytes MB (1F1B over all
ranks), saves it --repeats times with parallel HDF5 and with the rank-0
fallback, and between saves has rank 0 write the same number of bytes to the
same folder with plain sequential writes and an fsync (what `dd conv=fsync`
measures). Every rate counts the bytes of array data in the checkpoint
(parameters and AdamW moments), from the first rank entering the save to the
file being renamed into place; the best and the median repeat are shown.
Not a test: figures depend on the machine.
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from math import prod

BLOCK = 8 << 20


def bench_config(world_size: int, megabytes: float, layers: int):
    from mpipipe.config.schema import Config

    config = Config()
    config.model.n_layer = layers
    config.model.n_head = 8
    config.model.seq_len = 64
    # A block holds about 12 d_model^2 parameters of 4 bytes.
    d_model = int((megabytes * 1e6 / 4 / 12 / layers) ** 0.5)
    config.model.d_model = max(config.model.n_head, d_model - d_model % config.model.n_head)
    config.data.source = "random"
    config.data.microbatch_size = 1
    config.parallel.schedule = "1f1b"
    config.parallel.pipeline = world_size
    config.parallel.microbatches = world_size
    config.runtime.device = "cpu"
    config.runtime.dtype = "float32"
    config.runtime.trace = False
    return config


def raw_write_seconds(path: str, nbytes: int) -> float:
    """Write `nbytes` sequentially in 8 MiB blocks and fsync; the time it took."""
    block = os.urandom(BLOCK)
    started = time.perf_counter()
    descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        written = 0
        while written < nbytes:
            written += os.write(descriptor, block[: min(BLOCK, nbytes - written)])
        os.fsync(descriptor)
    finally:
        os.close(descriptor)
    seconds = time.perf_counter() - started
    os.remove(path)
    return seconds


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dir", default=".", help="folder on the disk to measure (default: .)")
    parser.add_argument("--megabytes", type=float, default=100.0, help="parameter bytes, in MB")
    parser.add_argument("--layers", type=int, default=8, help="transformer blocks")
    parser.add_argument("--repeats", type=int, default=3, help="saves per mode")
    args = parser.parse_args(argv)

    from mpipipe.threads import limit_blas_threads

    limit_blas_threads()
    from mpi4py import MPI

    from mpipipe.backend import select_backend
    from mpipipe.checkpoint.save import parallel_hdf5_available
    from mpipipe.plan import plan_run
    from mpipipe.trainer import Trainer

    comm = MPI.COMM_WORLD
    rank, size = comm.Get_rank(), comm.Get_size()
    config = bench_config(size, args.megabytes, args.layers)
    plan = plan_run(config, size, rank)
    trainer = Trainer(plan, comm=comm, backend=select_backend("cpu", "float32"), verbose=False)
    folder = comm.bcast(tempfile.mkdtemp(prefix="mpipipe-bench-", dir=args.dir) if rank == 0
                        else None)
    path = os.path.join(folder, "bench.h5")
    modes = [("parallel HDF5", True)] if parallel_hdf5_available() else []
    modes.append(("rank-0 fallback", False))
    rates: dict[str, list[float]] = {name: [] for name, _ in modes}
    rates["raw sequential"] = []
    nbytes = 0
    for _ in range(args.repeats):
        for name, parallel in modes:
            trainer.parallel_checkpoints = parallel
            comm.Barrier()
            saved = trainer.save_checkpoint(path)
            seconds = comm.allreduce(saved.seconds, op=MPI.MAX)
            nbytes = saved.nbytes
            rates[name].append(nbytes / 1e6 / seconds)
            if rank == 0:
                os.remove(path)
        if rank == 0:
            rates["raw sequential"].append(
                nbytes / 1e6 / raw_write_seconds(os.path.join(folder, "raw.bin"), nbytes)
            )
        comm.Barrier()
    if rank == 0:
        os.rmdir(folder)
        print(_report(plan, size, nbytes, rates, args.dir, args.repeats))
    return 0


def _report(plan, size: int, nbytes: int, rates: dict, folder: str, repeats: int) -> str:
    model = plan.config.model
    parameters = sum(prod(shape) for shape in plan.model.param_shapes().values())
    raw = statistics.median(rates["raw sequential"])
    lines = [
        f"checkpoint write benchmark: {size} ranks, GPT d_model={model.d_model} "
        f"n_layer={model.n_layer}, {parameters:,} float32 parameters "
        f"({parameters * 4 / 1e6:.0f} MB), checkpoint data {nbytes / 1e6:.0f} MB "
        f"(parameters + AdamW m, v), folder {os.path.abspath(folder)}, {repeats} repeats",
        f"{'':<18}{'best MB/s':>10}{'median MB/s':>13}{'median / raw':>14}",
    ]
    for name, values in rates.items():
        median = statistics.median(values)
        lines.append(f"{name:<18}{max(values):>10.0f}{median:>13.0f}{median / raw:>14.2f}")
    return "\n".join(lines)


if __name__ == "__main__":
    raise SystemExit(main())
