"""Checkpoints whose metadata lies: `ckpt verify` names it (exit 1), a resume refuses it.

Every case edits one thing in a copy of a good checkpoint with h5py; the
checksums of the data stay right, so only the metadata checks can see it.
The same problem must reach both readers: verify's list and the one line a
resume gives. A resume also refuses any change of a model setting that
changes what the stored parameters mean, naming the key and both values,
and accepts the settings that do not (model.init_std, the layout).
"""

from __future__ import annotations

import shutil
from collections.abc import Callable
from pathlib import Path

import h5py
import numpy as np
import pytest

from mpipipe.checkpoint import folder
from mpipipe.checkpoint.load import load_checkpoint
from mpipipe.checkpoint.report import describe, verify
from mpipipe.cli import main

from one_rank import tiny_trainer
from oneline import one_line_error


@pytest.fixture(scope="module")
def good(tmp_path_factory) -> Path:
    trainer = tiny_trainer()
    for _ in range(2):
        trainer.train_step()
    path = tmp_path_factory.mktemp("good") / folder.checkpoint_name(2)
    trainer.save_checkpoint(str(path))
    return path


def set_attr(name: str, value, group: str = "/") -> Callable[[h5py.File], None]:
    def edit(file: h5py.File) -> None:
        file[group].attrs[name] = value

    return edit


def edit_config(old: str, new: str) -> Callable[[h5py.File], None]:
    def edit(file: h5py.File) -> None:
        text = file.attrs["config"]
        assert old in text
        file.attrs["config"] = text.replace(old, new, 1)

    return edit


def delete(name: str) -> Callable[[h5py.File], None]:
    def edit(file: h5py.File) -> None:
        del file[name]

    return edit


def first_param(file: h5py.File) -> str:
    return sorted(f"/model/1/{name}" for name in file["model/1"])[0]


def add_dataset(file: h5py.File) -> None:
    file.create_dataset("/model/1/extra", data=np.zeros(3))


def drop_a_state(file: h5py.File) -> None:
    del file[first_param(file).replace("/model/", "/optim/m/")]


# (name, edit, fragment verify and resume both give)
LIES = [
    ("negative-step", set_attr("step", np.int64(-5)), "attribute step is -5, not an integer"),
    ("step-a-string", set_attr("step", "five"), "attribute step is 'five', not an integer"),
    ("step-a-float", set_attr("step", 2.5), "attribute step is 2.5, not an integer"),
    ("step-a-vector", set_attr("step", np.arange(2)), "attribute step is"),
    ("step-and-position-disagree", set_attr("step", np.int64(7)),
     "next_sample = 8 is not step x samples_per_step = 7 x 4"),
    ("negative-seed", set_attr("seed", np.int64(-1)), "attribute seed is -1"),
    ("seed-and-config-disagree", set_attr("seed", np.int64(99)),
     "attribute seed is 99, the stored config says train.seed = 1234"),
    ("unknown-float-type", set_attr("dtype", "float16"),
     "attribute dtype is 'float16', not one of float32, float64"),
    ("float-type-and-data-disagree", set_attr("dtype", "float32"),
     "is float64, the file says float32"),
    ("kind-and-config-disagree", set_attr("model", "bert"),
     "attribute model is 'bert', the stored config says model.kind = 'gpt'"),
    ("kind-not-a-string", set_attr("model", np.int64(3)), "attribute model is"),
    ("config-of-another-width", edit_config("d_model = 16", "d_model = 32"),
     "the stored config's model needs"),
    ("config-of-fewer-layers", edit_config("n_layer = 2", "n_layer = 1"),
     "the stored config's model"),
    ("config-not-toml", set_attr("config", "[model\nd_model = "), "TOML syntax error"),
    ("config-missing", lambda file: file.attrs.__delitem__("config"),
     "holds no config attribute"),
    ("parameter-count", set_attr("parameters", np.int64(12)), "attribute parameters is 12"),
    ("stage-layers-not-spans", set_attr("stage_layers", np.arange(3)),
     "attribute stage_layers has shape (3,)"),
    ("stage-layers-with-a-gap", set_attr("stage_layers", np.array([[0, 2], [3, 5]])),
     "does not cut layers"),
    ("extra-parameter", add_dataset, "/model/1/extra is not a parameter"),
    ("optimizer-missing", delete("optim"), "holds no optimizer state (/optim is missing)"),
    ("unknown-optimizer", set_attr("name", "adam", "optim"),
     "/optim attribute name is 'adam', not one of adamw, sgd"),
    ("optimizer-ahead-of-step", set_attr("step_count", np.int64(9), "optim"),
     "step_count = 9 is more than step = 2"),
    ("optimizer-state-missing", drop_a_state, "adamw state /optim/m/1/"),
]


def lying_copy(good: Path, tmp_path: Path, name: str, edit) -> Path:
    path = tmp_path / "lying.h5"
    shutil.copy(good, path)
    with h5py.File(path, "r+") as file:
        edit(file)
    return path


def test_the_good_checkpoint_has_no_metadata_problem(good, capsys):
    assert verify(str(good)).metadata == []
    assert main(["ckpt", "verify", str(good)]) == 0
    assert "the metadata agrees" in capsys.readouterr().out


@pytest.mark.parametrize(("name", "edit", "fragment"), LIES, ids=[lie[0] for lie in LIES])
def test_verify_names_the_lie_and_resume_refuses_it(good, tmp_path, capsys, name, edit, fragment):
    path = lying_copy(good, tmp_path, name, edit)
    problems = verify(str(path)).metadata
    assert any(fragment in problem for problem in problems), problems
    assert all("\n" not in problem for problem in problems)
    capsys.readouterr()
    assert main(["ckpt", "verify", str(path)]) == 1
    assert fragment in capsys.readouterr().err
    message = one_line_error(lambda: load_checkpoint(tiny_trainer().run_state(), str(path)),
                             [str(path), fragment])
    assert "None" not in message
    assert main(["ckpt", "inspect", str(path)]) == 0  # a person can still look inside


# (setting changed at resume, the value the checkpoint was trained with)
CHANGES = [
    ({"model__n_head": 4}, "model.n_head = 2"),
    ({"model__kind": "bert"}, 'model.kind = "gpt"'),
    ({"model__tie_embeddings": False}, "model.tie_embeddings = true"),
    ({"model__d_ff": 32}, "model.d_ff = 0"),
    ({"model__vocab_size": 128}, "model.vocab_size = 64"),
    ({"model__seq_len": 4}, "model.seq_len = 8"),
]


@pytest.mark.parametrize(("change", "trained"), CHANGES, ids=[next(iter(c)) for c, _ in CHANGES])
def test_resume_refuses_a_model_change_naming_key_and_both_values(good, change, trained):
    key = trained.split(" = ")[0]
    message = one_line_error(lambda: load_checkpoint(tiny_trainer(**change).run_state(), str(good)),
                             [f"trained with {trained}", f"the run has {key} = ",
                              f"resume with {trained}"])
    assert "without --resume" in message


def test_two_changes_name_the_first_and_count_the_rest(good):
    one_line_error(
        lambda: load_checkpoint(tiny_trainer(model__n_head=4, model__d_model=32).run_state(),
                                str(good)),
        ["model.n_head = 2", "(and 1 more model setting(s))"],
    )


def test_resume_accepts_settings_that_keep_the_parameters_meaning(good):
    trainer = tiny_trainer(model__init_std=0.5, parallel__microbatches=1, data__microbatch_size=4)
    loaded = load_checkpoint(trainer.run_state(), str(good))
    assert loaded.step == 2


def test_inspect_shows_missing_attributes_instead_of_failing(good, tmp_path):
    path = lying_copy(good, tmp_path, "bare", delete("optim"))
    with h5py.File(path, "r+") as file:
        for name in ("step", "stage_layers", "parameters"):
            del file.attrs[name]
    text = describe(str(path))
    assert "step (missing)" in text and "stage layers (not a list of spans" in text
