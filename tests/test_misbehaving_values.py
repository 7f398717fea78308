"""Values that used to validate and then misbehave: refused at config time, or bounded at run time.

Each refused value must end in load_config's one line (the message itself is
tests/test_rules.py's business); the values next to the boundary must still
load, so the bound is where the help says it is. A run whose steps keep
coming out non-finite under train.on_nan = 'skip' ends with an error once it
has skipped more than train.max_skipped_steps.
"""

from __future__ import annotations

import math

import pytest
from mpi4py import MPI

from mpipipe.backend import select_backend
from mpipipe.config.load import load_config
from mpipipe.config.schema import OptimConfig, RuntimeConfig
from mpipipe.optim import learning_rate
from mpipipe.plan import plan_run
from mpipipe.runtime.failure import CollectiveStop
from mpipipe.trainer import Trainer

from oneline import one_line_error

# (override refused, the nearest override accepted)
BOUNDARIES = [
    ("runtime.timeout_s=0", "runtime.timeout_s=1"),
    ("runtime.timeout_s=0.5", "runtime.timeout_s=1.5"),
    ("optim.min_lr_ratio=5", "optim.min_lr_ratio=1"),
    ("optim.min_lr_ratio=1.0001", "optim.min_lr_ratio=0"),
    ("optim.beta1=1.0", "optim.beta1=0.999999"),
    ("optim.beta1=-0.1", "optim.beta1=0"),
    ("optim.beta2=-1e-9", "optim.beta2=0.0"),
    ("optim.beta2=1", "optim.beta2=0.99"),
    ("optim.eps=0", "optim.eps=1e-300"),
    ("optim.eps=-1", "optim.eps=1"),
    ("optim.momentum=1.0", "optim.momentum=0.0"),
    (f"train.seed={2**63}", f"train.seed={2**63 - 1}"),
    (f"train.seed={2**64 + 7}", "train.seed=0"),
    ("train.max_skipped_steps=-1", "train.max_skipped_steps=0"),
    ("runtime.trace_steps=1001", "runtime.trace_steps=1000"),
]


@pytest.mark.parametrize(("refused", "accepted"), BOUNDARIES)
def test_the_bound_sits_where_the_help_says(refused, accepted):
    key = refused.split("=")[0]
    one_line_error(lambda: load_config(None, [refused]), [f"--set {refused}", key])
    section, name = key.split(".")
    value = getattr(getattr(load_config(None, [accepted]), section), name)
    assert value == pytest.approx(float(accepted.split("=")[1]))


def test_the_help_says_timeout_s_has_no_off_switch():
    field = RuntimeConfig.__dataclass_fields__["timeout_s"]
    assert "no off switch" in field.metadata["help"]
    assert field.metadata["minimum"] == 1.0


@pytest.mark.parametrize("ratio", [0.0, 0.1, 0.5, 1.0])
def test_the_accepted_ratios_never_raise_the_rate_above_its_peak(ratio):
    config = OptimConfig(lr=1e-3, warmup_steps=3, min_lr_ratio=ratio)
    rates = [learning_rate(step, config, 40) for step in range(41)]
    assert max(rates) == pytest.approx(config.lr)
    after_warmup = rates[config.warmup_steps - 1:]
    pairs = zip(after_warmup, after_warmup[1:], strict=False)
    assert all(later <= earlier + 1e-18 for earlier, later in pairs)
    assert rates[-1] == pytest.approx(config.lr * ratio)


def nan_trainer(monkeypatch, nan_steps: list[int], bound: int) -> Trainer:
    """A one-rank trainer whose gradient turns NaN at each of `nan_steps` (test fault switch)."""
    config = load_config(None, [
        "model.vocab_size=64", "model.seq_len=8", "model.n_layer=2", "model.n_head=2",
        "model.d_model=16", "data.source=random", "data.microbatch_size=2",
        "parallel.microbatches=2", "runtime.device=cpu", "runtime.trace=false",
        "train.on_nan=skip", f"train.max_skipped_steps={bound}", "train.steps=6",
    ])
    trainer = Trainer(plan_run(config, 1, 0), comm=MPI.COMM_WORLD,
                      backend=select_backend("cpu", "float32"), verbose=False)
    injected = set(nan_steps)
    original = trainer.engine.faults.in_middle_of_step

    def poison(step, store):
        original(step, store)
        if step in injected:
            store.buckets[0].grad[0] = math.nan

    monkeypatch.setattr(trainer.engine.faults, "in_middle_of_step", poison)
    return trainer


def test_skipping_up_to_the_bound_trains_on(monkeypatch):
    trainer = nan_trainer(monkeypatch, [1, 3], bound=2)
    rows = trainer.run()
    assert [row["applied"] for row in rows] == [True, False, True, False, True, True]


def test_skipping_past_the_bound_ends_the_run_saying_so(monkeypatch):
    trainer = nan_trainer(monkeypatch, [0, 2, 3], bound=2)
    message = one_line_error(
        trainer.run, ["step 3", "3 steps skipped", "train.max_skipped_steps = 2"],
        error=CollectiveStop,
    )
    assert "lower optim.lr" in message
    assert trainer.step == 3


def test_a_bound_of_zero_makes_skip_stop_at_the_first_non_finite_step(monkeypatch):
    trainer = nan_trainer(monkeypatch, [1], bound=0)
    with pytest.raises(CollectiveStop):
        trainer.run()
    assert trainer.step == 1
