"""Typed configuration: one dataclass per TOML section.

Every key has a type, a default and a one-line help string (the `help`
metadata), which `mpipipe config show` and the README's reference print.
Cross-key constraints live in `mpipipe.config.validate`. Where a key names
one of the things a lower layer implements (schedules, partition methods,
model kinds, devices, float types, precisions, recompute policies), its choices are
that layer's own table.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from mpipipe.backend import DEVICES, DTYPES
from mpipipe.cost_modes import COST_MODES
from mpipipe.precision import PRECISIONS
from mpipipe.recompute_policy import RECOMPUTE_POLICIES
from mpipipe.schedules import SCHEDULE_FILE_SUFFIX, SCHEDULE_KINDS
from mpipipe.schedules.partition import PARTITION_METHODS
from mpipipe.tokens import MODEL_KINDS


def option(
    default,
    help: str,  # noqa: A002
    choices: tuple | None = None,
    minimum=None,
    maximum=None,
    file_suffix: str | None = None,
    above=None,
    below=None,
    cost_ratios: bool = False,
):
    """A config key: default, one-line help, and the allowed values.

    minimum and maximum are inclusive bounds, above and below exclusive ones.
    `file_suffix`: besides its choices the key takes the path of a file whose name ends
    so; a relative path in a config file is relative to that file's folder.
    `cost_ratios`: besides its choices the key takes op-cost ratios F,B or F,B,W
    (read, and refused in one line, by OpCosts.parse).
    """
    metadata = {"help": help, "choices": choices, "minimum": minimum, "maximum": maximum,
                "file_suffix": file_suffix, "above": above, "below": below,
                "cost_ratios": cost_ratios}
    if isinstance(default, (list, dict)):
        return field(default_factory=lambda: type(default)(default), metadata=metadata)
    return field(default=default, metadata=metadata)


SCHEDULES = SCHEDULE_KINDS
DATA_SOURCES = ("stdlib", "text", "npy", "hdf5", "random")
AUTO_YES_NO = ("auto", "yes", "no")


@dataclass
class ModelConfig:
    kind: str = option("gpt", "model family: causal GPT or masked-LM BERT", MODEL_KINDS)
    vocab_size: int = option(256, "vocabulary size (256 covers byte-level text)", minimum=2)
    seq_len: int = option(64, "tokens per sequence", minimum=1)
    n_layer: int = option(4, "transformer blocks", minimum=1)
    n_head: int = option(4, "attention heads per block", minimum=1)
    d_model: int = option(64, "hidden size; a multiple of n_head", minimum=1)
    d_ff: int = option(0, "MLP hidden size; 0 means 4 * d_model", minimum=0)
    tie_embeddings: bool = option(True, "share the token embedding with the LM head")
    init_std: float = option(0.02, "standard deviation of the initial weights", minimum=0.0)


@dataclass
class DataConfig:
    source: str = option(
        "stdlib",
        "stdlib: bytes of Python's standard library source; text: a file or folder; "
        "npy / hdf5: token arrays; random: uniform random tokens",
        DATA_SOURCES,
    )
    path: str = option("", "file or folder for text, npy and hdf5 sources")
    dataset: str = option("tokens", "dataset name inside an HDF5 file")
    microbatch_size: int = option(4, "sequences per micro-batch", minimum=1)
    mask_prob: float = option(
        0.15, "BERT: fraction of real tokens masked for the masked-LM loss (at least one)",
        minimum=0.0, maximum=1.0,
    )
    min_fill: float = option(
        0.5, "BERT: shortest real length of a sequence, as a fraction of seq_len; rest is padding",
        minimum=0.0, maximum=1.0,
    )
    eval_fraction: float = option(
        0.0, "share of the corpus held out for evaluation, never trained on (0: none; at most "
        "0.5)", minimum=0.0, maximum=0.5,
    )


@dataclass
class OptimConfig:
    name: str = option("adamw", "optimizer", ("adamw", "sgd"))
    lr: float = option(3e-3, "peak learning rate", minimum=0.0)
    beta1: float = option(0.9, "AdamW first-moment decay, in [0, 1)", minimum=0.0, below=1.0)
    beta2: float = option(0.95, "AdamW second-moment decay, in [0, 1)", minimum=0.0, below=1.0)
    eps: float = option(1e-8, "AdamW denominator epsilon, above 0", above=0.0)
    weight_decay: float = option(0.01, "decoupled weight decay (AdamW) or L2 (SGD)", minimum=0.0)
    momentum: float = option(0.9, "SGD momentum, in [0, 1)", minimum=0.0, below=1.0)
    grad_clip: float = option(1.0, "clip the global gradient norm to this; 0 disables", minimum=0.0)
    warmup_steps: int = option(10, "linear warm-up steps", minimum=0)
    decay: str = option("cosine", "learning-rate decay after warm-up", ("cosine", "constant"))
    min_lr_ratio: float = option(
        0.1, "cosine decay ends at lr * min_lr_ratio, in [0, 1]", minimum=0.0, maximum=1.0
    )


@dataclass
class TrainConfig:
    steps: int = option(100, "optimizer steps to run", minimum=1)
    seed: int = option(
        1234, "seed for initialisation and data order (a 63-bit integer: checkpoints store it "
        "as int64)", minimum=0, maximum=2**63 - 1,
    )
    log_every: int = option(10, "steps between log lines when output is not a terminal", minimum=1)
    on_nan: str = option("stop", "non-finite loss or gradient: stop the run or skip the step",
                         ("stop", "skip"))
    max_skipped_steps: int = option(
        10, "on_nan = 'skip': end the run with an error (exit 1) when more steps than this "
        "were skipped since it started or resumed", minimum=0,
    )
    time_limit_s: float = option(
        0.0, "save a checkpoint and stop (exit 75) before this many seconds have passed; "
        "0: no limit", minimum=0.0,
    )
    eval_every: int = option(
        0, "steps between evaluations on the held-out data (data.eval_fraction); 0: never",
        minimum=0,
    )
    eval_batches: int = option(
        4, "global batches of held-out windows in one evaluation", minimum=1
    )


@dataclass
class ParallelConfig:
    pipeline: int = option(
        0, "pipeline ranks D; 0: every MPI rank not used for data parallelism", minimum=0
    )
    data_parallel: int = option(1, "data-parallel replicas", minimum=1)
    schedule: str = option(
        "1f1b", "pipeline schedule: a generator, or a schedule CSV (mpipipe's or PyTorch's; "
        "relative to the config file's folder, or to the current folder in --set)",
        SCHEDULES, file_suffix=SCHEDULE_FILE_SUFFIX,
    )
    microbatches: int = option(4, "micro-batches N per step and replica", minimum=1)
    chunks: int = option(2, "interleaved: model chunks per rank", minimum=1)
    partition: str = option("uniform", "layers to stages: equal blocks, or balanced by cost",
                            PARTITION_METHODS)
    costs: str = option(
        "unit", "the op costs zb-h1, zb-v, bitpipe-zb and bitpipe (N > D) order their ops for: "
        "unit: each kind's reference order; F,B or F,B,W: planned for these ratios (I = B - W), "
        "the same on every stage; measured: planned from every stage's op times measured in "
        "the first parallel.plan_after steps (a schedule file keeps its own order; measured "
        "needs a schedule kind)",
        COST_MODES, cost_ratios=True,
    )
    plan_after: int = option(
        3, "parallel.costs = 'measured': steps timed with the unit order before re-planning",
        minimum=1,
    )
    zero: int = option(
        0, "ZeRO stage: 1 shards the optimizer state (and fp16/bf16 master weights) over the "
        "ranks holding the same stage (its data-parallel replicas, and BitPipe's mirror "
        "pair); 0 keeps a whole copy on each", minimum=0, maximum=1,
    )


@dataclass
class RuntimeConfig:
    device: str = option("auto", "auto picks the GPU when CuPy sees one", DEVICES)
    dtype: str = option("float32", "floating-point type of the (master) weights", tuple(DTYPES))
    precision: str = option(
        "fp32", "compute type: fp32 (runtime.dtype), tf32 (float32 GEMMs on TF32 tensor cores), "
        "fp16 (dynamic loss scaling) or bf16, both with float32 master weights", PRECISIONS,
    )
    loss_scale: float = option(
        65536.0, "fp16: the first loss scale; halved on an overflow, doubled after "
        "runtime.loss_scale_window good steps", minimum=1.0,
    )
    loss_scale_window: int = option(
        2000, "fp16: good steps in a row before the loss scale doubles", minimum=1
    )
    cuda_aware: str = option("auto", "pass GPU buffers to MPI directly", AUTO_YES_NO)
    timeout_s: float = option(
        300.0, "watchdog: end the job (exit 3) when a wait, or a set-up, save or load phase, "
        "makes no progress for this many seconds; at least 1, there is no off switch",
        minimum=1.0,
    )
    trace: bool = option(True, "write trace.json (Chrome/Perfetto) of every op")
    trace_steps: int = option(
        3, "steps recorded in trace.json, from the first (at most 1000: every op of each is "
        "kept in memory until the end)", minimum=1, maximum=1000,
    )
    recv_window: int = option(
        8, "at most this many receives started ahead of the op that needs them", minimum=1
    )
    recompute: str = option(
        "none", "compute again in the backward: each block's attention probabilities "
        "(attention), or the whole block, keeping only its input (block)",
        RECOMPUTE_POLICIES,
    )


@dataclass
class CheckpointConfig:
    every: int = option(0, "save every this many steps; 0 saves only at the end and on SIGTERM",
                        minimum=0)
    keep: int = option(3, "checkpoints kept; older ones are deleted", minimum=1)
    dir: str = option("checkpoints", "folder for checkpoints, relative to the run folder")
    parallel: str = option(
        "auto", "write with parallel HDF5 (h5py's mpio driver) where h5py has it; no: rank 0 "
        "gathers and writes", AUTO_YES_NO,
    )


@dataclass
class Config:
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    parallel: ParallelConfig = field(default_factory=ParallelConfig)
    runtime: RuntimeConfig = field(default_factory=RuntimeConfig)
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)


# Section name -> its dataclass, spelled out: under `from __future__ import annotations`
# a field's type is only a string.
SECTIONS: dict[str, type] = {
    "model": ModelConfig,
    "data": DataConfig,
    "optim": OptimConfig,
    "train": TrainConfig,
    "parallel": ParallelConfig,
    "runtime": RuntimeConfig,
    "checkpoint": CheckpointConfig,
}
