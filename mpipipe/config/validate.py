"""Constraints between keys, checked on every rank before the first message.

`load_config` has already checked each key on its own; here a problem that
involves several keys (or the job's size) raises `UsageError` with one line
naming the keys, their values and what would work. Limits that depend on the
data itself (token ids of an .npy file) are checked when the data is opened.
"""

from __future__ import annotations

from mpipipe.config.schema import Config
from mpipipe.errors import UsageError
from mpipipe.schedules import check_constraints
from mpipipe.tokens import BYTE_VOCAB_SIZE, SPECIAL_TOKENS, special_tokens

BYTE_SOURCES = ("stdlib", "text")


def validate_config(config: Config, world_size: int | None = None) -> None:
    """Raise UsageError for the first cross-key problem; `world_size`: MPI ranks of the job."""
    _check_heads(config)
    _check_vocabulary(config)
    parallel = config.parallel
    pipeline = parallel.pipeline
    if pipeline == 0 and world_size is not None:
        pipeline = pipeline_degree(parallel.pipeline, parallel.data_parallel, world_size)
    if pipeline > 0:  # 0 without a world size: decided at launch
        check_constraints(parallel.schedule, pipeline, parallel.microbatches, parallel.chunks)
    if world_size is not None:
        _check_world_size(pipeline, parallel.data_parallel, world_size)


def pipeline_degree(pipeline: int, data_parallel: int, world_size: int) -> int:
    """parallel.pipeline, where 0 means every MPI rank not used for data parallelism."""
    if pipeline:
        return pipeline
    if world_size % data_parallel:
        raise UsageError(
            f"the job has {world_size} MPI ranks, which parallel.data_parallel = {data_parallel} "
            f"does not divide: launch a multiple of {data_parallel} ranks, or change "
            "parallel.data_parallel"
        )
    return world_size // data_parallel


def _check_heads(config: Config) -> None:
    d_model, n_head = config.model.d_model, config.model.n_head
    if d_model % n_head == 0:
        return
    below, above = d_model // n_head * n_head, (d_model // n_head + 1) * n_head
    multiples = f"{below} or {above}" if below else f"{above}"
    raise UsageError(
        f"model.d_model = {d_model} is not a multiple of model.n_head = {n_head}: use "
        f"model.d_model = {multiples}, or a model.n_head that divides {d_model}"
    )


def _check_vocabulary(config: Config) -> None:
    kind, source, vocab_size = config.model.kind, config.data.source, config.model.vocab_size
    if source in BYTE_SOURCES:
        needed = BYTE_VOCAB_SIZE + special_tokens(kind)
        if vocab_size < needed:
            extra = (f" plus {SPECIAL_TOKENS} for BERT's PAD and MASK tokens"
                     if kind == "bert" else "")
            raise UsageError(
                f"model.vocab_size = {vocab_size} is too small for data.source = {source!r} with "
                f"model.kind = {kind!r}: byte tokens need {BYTE_VOCAB_SIZE}{extra}; set "
                f"model.vocab_size = {needed} or more"
            )
    if source == "random" and kind == "bert" and vocab_size <= SPECIAL_TOKENS:
        raise UsageError(
            f"model.vocab_size = {vocab_size} leaves no data tokens for model.kind = 'bert' with "
            f"data.source = 'random' (BERT takes {SPECIAL_TOKENS} ids for PAD and MASK); set "
            f"model.vocab_size = {SPECIAL_TOKENS + 1} or more"
        )


def _check_world_size(pipeline: int, data_parallel: int, world_size: int) -> None:
    needed = pipeline * data_parallel
    if world_size == needed:
        return
    raise UsageError(
        f"the job has {world_size} MPI rank{'' if world_size == 1 else 's'} but "
        f"parallel.pipeline={pipeline} x parallel.data_parallel={data_parallel} needs {needed}: "
        f"run with mpirun -n {needed} or change parallel.pipeline / parallel.data_parallel so "
        f"their product is {world_size}"
    )
