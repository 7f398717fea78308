"""One rule, one place, one message: each input rule is raised by exactly one function.

For every rule: the message it gives (one example written out in full),
the triggers that must all end in that one raise site (through load_config,
validate_config, and the data layer where the rule depends on the data),
the rule's distinctive phrase written in exactly one module of the package,
and the lower layers that, given the same bad value directly, trust or
assert instead of giving a second user-facing message.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import pytest

import mpipipe
from mpipipe.backend import DEVICES, DTYPES, select_backend
from mpipipe.checkpoint.save import use_parallel_hdf5
from mpipipe.config.load import load_config
from mpipipe.config.schema import (
    AUTO_YES_NO,
    SCHEDULES,
    CheckpointConfig,
    ModelConfig,
    OptimConfig,
    ParallelConfig,
    RuntimeConfig,
)
from mpipipe.config.validate import validate_config
from mpipipe.cost_modes import COST_MODES
from mpipipe.data import Batcher, build_batcher
from mpipipe.errors import UsageError
from mpipipe.models.model import BUILDERS, build_model
from mpipipe.optim import build_optimizer, learning_rate
from mpipipe.plan import plan_run
from mpipipe.precision import PRECISIONS, Precision
from mpipipe.schedules import SCHEDULE_FILE_SUFFIX, SCHEDULE_KINDS, OpCosts, build_schedule
from mpipipe.schedules.csv_io import from_csv, to_csv
from mpipipe.schedules.partition import PARTITION_METHODS
from mpipipe.tokens import MODEL_KINDS

PACKAGE = Path(mpipipe.__file__).parent


def configured(*overrides: str) -> Callable[[Path], None]:
    """Load and validate a config of `overrides`, as every rank does before any message."""
    return lambda tmp_path: validate_config(load_config(None, list(overrides)))


def batcher_of(*overrides: str) -> Callable[[Path], None]:
    """Open the data of `overrides` without validate_config, as the Python API may."""
    return lambda tmp_path: build_batcher(load_config(None, list(overrides)))


def npy_batcher(tokens: np.ndarray, *overrides: str) -> Callable[[Path], None]:
    """Open an .npy file whose token ids only the data layer can know."""

    def trigger(tmp_path: Path) -> None:
        path = tmp_path / "tokens.npy"
        np.save(path, tokens)
        build_batcher(load_config(None, ["data.source=npy", f"data.path={path}", *overrides]))

    return trigger


ONE_F_ONE_B = to_csv(build_schedule("1f1b", 2, 4))


def planned_with_a_file(*overrides: str, world_size: int = 2) -> Callable[[Path], None]:
    """Plan a run whose parallel.schedule is a 2-rank, 4-micro-batch CSV in tmp_path."""

    def trigger(tmp_path: Path) -> None:
        path = tmp_path / "mine.csv"
        path.write_text(ONE_F_ONE_B)
        config = load_config(None, [f"parallel.schedule={path}", "data.source=random",
                                    "parallel.microbatches=4", *overrides])
        plan_run(config, world_size, 0)

    return trigger


@dataclass(frozen=True)
class Rule:
    name: str
    example: Callable[[Path], None]
    message: str  # what `example` says, in full ({tmp_path} stands for the test's folder)
    phrase: str  # the part of the message that is written once in the package
    owner: tuple[str, str]  # (module, function) that raises it
    triggers: tuple[Callable[[Path], None], ...]  # each must raise it from `owner`
    lower_layers: tuple[Callable[[], object], ...]  # the same mistake given directly


def config_at(make_path: Callable[[Path], str]) -> Callable[[Path], None]:
    """Load a config from the path `make_path` prepares."""
    return lambda tmp_path: load_config(make_path(tmp_path))


def fifo(tmp_path: Path) -> str:
    os.mkfifo(tmp_path / "pipe")
    return str(tmp_path / "pipe")


RULES = [
    Rule(
        "model.d_model is a multiple of model.n_head",
        configured("model.d_model=30"),
        "model.d_model = 30 is not a multiple of model.n_head = 4: use model.d_model = 28 or 32, "
        "or a model.n_head that divides 30",
        "is not a multiple of model.n_head",
        ("config/validate.py", "_check_heads"),
        (configured("model.d_model=100", "model.n_head=8"), configured("model.d_model=4",
                                                                       "model.n_head=8")),
        (lambda: build_model(ModelConfig(d_model=30, n_head=4)),),
    ),
    Rule(
        "model.vocab_size holds the data's token ids plus the kind's extra ids",
        configured("model.vocab_size=100"),
        "model.vocab_size = 100 is too small for data.source = 'stdlib': its token ids 0..255 "
        "(256 ids) need model.vocab_size = 256 or more",
        "is too small for",
        ("config/validate.py", "check_vocabulary_fits"),
        (
            configured("model.kind=bert", "model.vocab_size=256", "data.source=text"),
            configured("model.kind=bert", "model.vocab_size=2", "data.source=random"),
            batcher_of("model.vocab_size=100"),
            batcher_of("model.kind=bert", "model.vocab_size=2", "data.source=random"),
            npy_batcher(np.arange(300, dtype=np.uint16)),
            npy_batcher(np.arange(256, dtype=np.uint16), "model.kind=bert"),
        ),
        (lambda: build_model(ModelConfig(vocab_size=256), data_vocab=300),),
    ),
    Rule(
        "numbers stay within their key's bounds (model sizes are positive integers)",
        configured("model.n_layer=0"),
        "--set model.n_layer=0: model.n_layer = 0 is below the minimum 1 (use 1 or more)",
        "is below the minimum",
        ("config/load.py", "_apply_value"),
        tuple(configured(f"model.{key}=0") for key in
              ("vocab_size", "seq_len", "n_head", "d_model")) + (
                  configured("train.seed=-1"), configured("optim.beta2=-0.5"),
                  configured("runtime.timeout_s=0"), configured("runtime.timeout_s=0.01")),
        (
            lambda: build_model(ModelConfig(n_layer=0)),
            lambda: build_model(ModelConfig(n_head=0)),
            lambda: build_model(ModelConfig(seq_len=0)),
            lambda: build_model(ModelConfig()).init_params(seed=-1),
        ),
    ),
    Rule(
        "numbers stay at or under their key's maximum (a cosine decay never rises, seeds fit "
        "in 63 bits)",
        configured("optim.min_lr_ratio=5"),
        "--set optim.min_lr_ratio=5: optim.min_lr_ratio = 5 is above the maximum 1.0 (use 1.0 "
        "or less)",
        "is above the maximum",
        ("config/load.py", "_apply_value"),
        (configured(f"train.seed={2**64}"), configured("data.mask_prob=1.5"),
         configured(f"train.seed={2**63}")),
        (lambda: learning_rate(50, OptimConfig(min_lr_ratio=5.0), 100),),
    ),
    Rule(
        "decay rates stay below 1 (AdamW betas, SGD momentum)",
        configured("optim.beta1=1.0"),
        "--set optim.beta1=1.0: optim.beta1 = 1.0 must be below 1.0 (use a value under 1.0, "
        "such as 0.9)",
        "must be below",
        ("config/load.py", "_apply_value"),
        (configured("optim.beta2=1.5"), configured("optim.momentum=1"),
         configured("optim.name=sgd", "optim.momentum=1.0")),
        (lambda: build_optimizer([], OptimConfig(beta1=1.0)),
         lambda: build_optimizer([], OptimConfig(name="sgd", momentum=1.0))),
    ),
    Rule(
        "AdamW's epsilon is above 0",
        configured("optim.eps=0"),
        "--set optim.eps=0: optim.eps = 0 must be above 0.0 (use a value over 0.0, such as "
        "1e-08)",
        "must be above",
        ("config/load.py", "_apply_value"),
        (configured("optim.eps=-1e-8"),),
        (lambda: build_optimizer([], OptimConfig(eps=0.0)),),
    ),
    Rule(
        "an input file is a readable regular file (stat before open)",
        config_at(lambda tmp_path: "/dev/null"),
        "config file '/dev/null' is a character device, not a regular file; give the path of a "
        "TOML file saved as UTF-8",
        "not a regular file",
        ("paths.py", "require_file"),
        (
            config_at(fifo),
            batcher_of("data.source=text", "data.path=/dev/zero"),
            batcher_of("data.source=npy", "data.path=/dev/null"),
            batcher_of("data.source=hdf5", "data.path=/dev/null"),
        ),
        (),
    ),
    Rule(
        "a value is one of its key's choices (devices, float types, schedules, model kinds, "
        "partition methods, checkpoint.parallel)",
        configured("runtime.device=tpu"),
        '--set runtime.device=tpu: runtime.device = "tpu" is not one of auto, cpu, gpu '
        "(did you mean 'gpu'?)",
        "is not one of",
        ("config/load.py", "_apply_value"),
        (
            configured("runtime.dtype=float16"),
            configured("parallel.schedule=bitpip"),
            configured("model.kind=t5"),
            configured("parallel.partition=greedy"),
            configured("checkpoint.parallel=maybe"),
            configured("runtime.precision=fp8"),
        ),
        (
            lambda: select_backend("tpu", "float32"),
            lambda: select_backend("cpu", "float16"),
            lambda: build_model(replace(ModelConfig(), kind="t5")),
            lambda: use_parallel_hdf5("maybe"),
            lambda: Precision.of("fp8", np.float32),
        ),
    ),
    Rule(
        "parallel.costs and --cost are unit, measured or F,B[,W] numbers",
        configured("parallel.costs=1,x,1"),
        "--set parallel.costs=1,x,1: parallel.costs: expected 'unit' or 'measured' or F,B or "
        "F,B,W as finite numbers from 1e-06 to 1e+06 with W < B (such as 1,2 or 1,2,1), got "
        "'1,x,1'",
        "as finite numbers from",
        ("schedules/simulate.py", "parse"),
        (configured("parallel.costs=1,2,3"), configured("parallel.costs=0,1"),
         configured("parallel.costs=1,2,2"),
         configured("parallel.costs=1,2,1,4"), configured("parallel.costs=Unit"),
         lambda tmp_path: OpCosts.parse("1,-2")),
        (),
    ),
    Rule(
        "measured costs need a generated schedule, not a file",
        planned_with_a_file("parallel.costs=measured"),
        "parallel.costs = 'measured' re-plans a generated schedule's order, but "
        "parallel.schedule is the file '{tmp_path}/mine.csv', whose order is fixed: set "
        "parallel.costs = 'unit', or parallel.schedule to a schedule kind",
        "re-plans a generated schedule's order",
        ("config/validate.py", "_check_measured_costs"),
        (configured("parallel.schedule=other.csv", "parallel.costs=measured"),),
        (),
    ),
    Rule(
        "a schedule file has one row per pipeline rank",
        planned_with_a_file(world_size=4),
        "parallel.schedule '{tmp_path}/mine.csv' has 2 rows, one per pipeline rank, but this run "
        "has 4 pipeline ranks (4 MPI ranks, parallel.data_parallel = 1): launch 2 MPI ranks, or "
        "give a schedule of 4 rows",
        "rows, one per pipeline rank",
        ("plan.py", "choose_schedule"),
        (planned_with_a_file("parallel.pipeline=1", world_size=1),
         planned_with_a_file("parallel.data_parallel=2", world_size=2)),
        (lambda: from_csv(ONE_F_ONE_B),),
    ),
    Rule(
        "a schedule file runs parallel.microbatches micro-batches",
        planned_with_a_file("parallel.microbatches=8"),
        "parallel.schedule '{tmp_path}/mine.csv' runs 4 micro-batches per step, but "
        "parallel.microbatches = 8: set parallel.microbatches = 4, or give a schedule with 8",
        "micro-batches per step, but",
        ("plan.py", "choose_schedule"),
        (planned_with_a_file("parallel.microbatches=2"),),
        (lambda: from_csv(ONE_F_ONE_B),),
    ),
    Rule(
        "a 2-byte or TF32 compute type keeps float32 master weights",
        configured("runtime.precision=fp16", "runtime.dtype=float64"),
        "runtime.precision = 'fp16' keeps float32 master weights but runtime.dtype = 'float64': "
        "set runtime.dtype = 'float32', or runtime.precision = 'fp32' to compute in float64",
        "keeps float32 master weights",
        ("config/validate.py", "_check_precision"),
        (configured("runtime.precision=bf16", "runtime.dtype=float64"),
         configured("runtime.precision=tf32", "runtime.dtype=float64")),
        (lambda: Precision.of("fp16", np.float64),),
    ),
    Rule(
        "evaluation needs held-out data",
        configured("train.eval_every=10"),
        "train.eval_every = 10 evaluates on held-out data but data.eval_fraction = 0.0: set "
        "data.eval_fraction to a share in (0, 0.5], e.g. 0.05, or train.eval_every = 0",
        "evaluates on held-out data",
        ("config/validate.py", "_check_evaluation"),
        (configured("train.eval_every=1", "data.eval_fraction=0"),
         lambda tmp_path: validate_config(load_config(None, []), evaluating=True)),
        (),
    ),
    Rule(
        "the held-out windows fill at least one micro-batch",
        npy_batcher(np.zeros(1000, dtype=np.uint16), "data.eval_fraction=0.5",
                    "data.microbatch_size=16"),
        "data.eval_fraction = 0.5 holds out 7 window(s) of 65 tokens of the 1000 of data.path "
        "'{tmp_path}/tokens.npy', fewer than one micro-batch (data.microbatch_size = 16): raise "
        "data.eval_fraction, or use a longer corpus or a smaller model.seq_len",
        "fewer than one micro-batch",
        ("data/__init__.py", "_check_held_out"),
        (batcher_of("data.source=random", "data.eval_fraction=0.000001"),
         npy_batcher(np.zeros(100, dtype=np.uint16), "data.eval_fraction=0.5",
                     "model.seq_len=8")),
        (lambda: Batcher(np.zeros(100, np.uint16), kind="gpt", seq_len=64, microbatch_size=16,
                         microbatches=1, replicas=1, seed=0, vocab_size=1,
                         eval_fraction=0.5).held_out(1),),
    ),
]
IDS = [rule.name for rule in RULES]


def raise_site(trigger: Callable[[Path], None], tmp_path: Path) -> tuple[tuple[str, str], str]:
    """((module, function) that raised the UsageError, its message)."""
    with pytest.raises(UsageError) as caught:
        trigger(tmp_path)
    frame = caught.traceback[-1]
    module = Path(str(frame.path)).relative_to(PACKAGE).as_posix()
    return (module, frame.frame.code.name), str(caught.value)


@pytest.mark.parametrize("rule", RULES, ids=IDS)
def test_the_rule_gives_its_one_line_message(rule, tmp_path):
    site, message = raise_site(rule.example, tmp_path)
    assert message == rule.message.replace("{tmp_path}", str(tmp_path))
    assert site == rule.owner
    assert "\n" not in message


@pytest.mark.parametrize("rule", RULES, ids=IDS)
def test_every_way_to_break_the_rule_ends_in_its_one_raise(rule, tmp_path):
    for trigger in rule.triggers:
        site, message = raise_site(trigger, tmp_path)
        assert site == rule.owner, message
        assert rule.phrase in message and "\n" not in message


@pytest.mark.parametrize("rule", RULES, ids=IDS)
def test_the_message_is_written_in_one_module(rule):
    writers = sorted(
        path.relative_to(PACKAGE).as_posix()
        for path in PACKAGE.rglob("*.py")
        if rule.phrase in path.read_text()
    )
    assert writers == [rule.owner[0]]


@pytest.mark.parametrize("rule", RULES, ids=IDS)
def test_lower_layers_trust_or_assert_instead_of_repeating_the_message(rule):
    for call in rule.lower_layers:
        try:
            call()
        except UsageError as error:
            pytest.fail(f"a lower layer gives a second message: {error}")
        except (ValueError, AssertionError, ZeroDivisionError):
            pass  # a programming error for a caller without a config


def choices(section: type, key: str) -> tuple:
    return next(field for field in dataclasses.fields(section) if field.name == key).metadata[
        "choices"
    ]


def test_choices_are_the_tables_of_the_layers_that_implement_them():
    assert SCHEDULES is SCHEDULE_KINDS
    assert choices(ParallelConfig, "schedule") is SCHEDULE_KINDS
    schedule_key = next(field for field in dataclasses.fields(ParallelConfig)
                        if field.name == "schedule")
    assert schedule_key.metadata["file_suffix"] is SCHEDULE_FILE_SUFFIX
    assert choices(ParallelConfig, "partition") is PARTITION_METHODS
    assert choices(ParallelConfig, "costs") is COST_MODES
    assert choices(ModelConfig, "kind") is MODEL_KINDS
    assert tuple(BUILDERS) == MODEL_KINDS
    assert choices(RuntimeConfig, "device") is DEVICES
    assert choices(RuntimeConfig, "dtype") == tuple(DTYPES)
    assert choices(RuntimeConfig, "precision") is PRECISIONS
    assert choices(CheckpointConfig, "parallel") is AUTO_YES_NO
