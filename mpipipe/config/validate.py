"""Constraints between keys, checked on every rank before the first message.

`load_config` has already checked each key on its own; here a problem that
involves several keys (or the job's size) raises `UsageError` with one line
naming the keys, their values and what would work. Limits that depend on the
data itself (token ids of an .npy file) are checked when the data is opened,
by the same rule (`check_vocabulary_fits`).
"""

from __future__ import annotations

from mpipipe.config.schema import Config, ModelConfig
from mpipipe.cost_modes import MEASURED
from mpipipe.errors import UsageError
from mpipipe.precision import BFLOAT16_PACKAGE, bfloat16_available
from mpipipe.schedules import SCHEDULE_KINDS, check_constraints
from mpipipe.tokens import BYTE_VOCAB_SIZE, special_tokens

BYTE_SOURCES = ("stdlib", "text")


def validate_config(config: Config, world_size: int | None = None,
                    evaluating: bool = False) -> None:
    """Raise UsageError for the first cross-key problem; `world_size`: MPI ranks of the job;
    `evaluating`: the run evaluates a checkpoint (`mpipipe eval`), so needs held-out data."""
    _check_heads(config)
    _check_vocabulary(config)
    _check_measured_costs(config)
    _check_precision(config)
    _check_evaluation(config, evaluating)
    _check_zero(config)
    parallel = config.parallel
    pipeline = parallel.pipeline
    if pipeline == 0 and world_size is not None:
        pipeline = pipeline_degree(parallel.pipeline, parallel.data_parallel, world_size)
    # 0 without a world size: decided at launch. A schedule file is checked when it is read.
    if pipeline > 0 and parallel.schedule in SCHEDULE_KINDS:
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


def _check_measured_costs(config: Config) -> None:
    """Measured costs re-plan a generated order; a schedule file's order is the file's."""
    parallel = config.parallel
    if parallel.costs != MEASURED or parallel.schedule in SCHEDULE_KINDS:
        return
    raise UsageError(
        f"parallel.costs = 'measured' re-plans a generated schedule's order, but "
        f"parallel.schedule is the file {parallel.schedule!r}, whose order is fixed: set "
        "parallel.costs = 'unit', or parallel.schedule to a schedule kind"
    )


def _check_precision(config: Config) -> None:
    runtime = config.runtime
    if runtime.precision != "fp32" and runtime.dtype != "float32":
        raise UsageError(
            f"runtime.precision = {runtime.precision!r} keeps float32 master weights but "
            f"runtime.dtype = {runtime.dtype!r}: set runtime.dtype = 'float32', or "
            "runtime.precision = 'fp32' to compute in float64"
        )
    if runtime.precision == "bf16" and not bfloat16_available():
        raise UsageError(
            f"runtime.precision = 'bf16' needs the package {BFLOAT16_PACKAGE} for NumPy's "
            f"bfloat16: pip install {BFLOAT16_PACKAGE} (or mpipipe[bf16]), or choose "
            "runtime.precision = 'fp16'"
        )


def _check_evaluation(config: Config, evaluating: bool) -> None:
    every, fraction = config.train.eval_every, config.data.eval_fraction
    if (every or evaluating) and not fraction:
        who = "mpipipe eval" if evaluating else f"train.eval_every = {every}"
        instead = "" if evaluating else ", or train.eval_every = 0"
        raise UsageError(
            f"{who} evaluates on held-out data but data.eval_fraction = {fraction}: set "
            f"data.eval_fraction to a share in (0, 0.5], e.g. 0.05{instead}"
        )


def _check_zero(config: Config) -> None:
    parallel = config.parallel
    if parallel.zero and parallel.data_parallel == 1:
        raise UsageError(
            f"parallel.zero = {parallel.zero} shards the optimizer state over data-parallel "
            "replicas but parallel.data_parallel = 1: set parallel.data_parallel = 2 or more "
            "(and launch that many times the pipeline's ranks), or parallel.zero = 0"
        )


def _check_vocabulary(config: Config) -> None:
    """What can be known before the data is opened: byte text's ids, random data's one id."""
    source = config.data.source
    if source in BYTE_SOURCES:
        check_vocabulary_fits(config.model, BYTE_VOCAB_SIZE, f"data.source = {source!r}")
    elif source == "random":  # its ids are drawn below model.vocab_size: at least one is needed
        check_vocabulary_fits(config.model, 1, "data.source = 'random'")


def check_vocabulary_fits(model: ModelConfig, data_vocab: int, data_name: str) -> None:
    """The vocabulary rule: model.vocab_size holds the data's token ids and the kind's extra ids.

    `data_vocab` is the data's token count (max id + 1); `data_name` says
    where the data comes from in the user's words ("data.path 'tokens.npy'").
    The data layer calls this when it opens a file whose ids only it knows.
    """
    special = special_tokens(model.kind)
    needed = data_vocab + special
    if model.vocab_size >= needed:
        return
    ids = f"{data_vocab} id{'' if data_vocab == 1 else 's'}"
    extra = f" + {special} for BERT's PAD and MASK" if special else ""
    raise UsageError(
        f"model.vocab_size = {model.vocab_size} is too small for {data_name}: its token ids "
        f"0..{data_vocab - 1} ({ids}{extra}) need model.vocab_size = {needed} or more"
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
