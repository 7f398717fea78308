"""Checkpoints in one process: writer choice, optimizer slices, the folder, bad files, the CLI.

The MPI side (exact resume, resharding, both writers) is in tests/mpi/test_checkpoint.py;
whole `mpipipe train` jobs (SIGKILL mid-save, SIGTERM, bad files on every rank) are in
tests/test_checkpoint_jobs.py.
"""

import json
import os
import random
import signal

import h5py
import numpy as np
import pytest
from mpi4py import MPI

from mpipipe.checkpoint import folder, save
from mpipipe.checkpoint.contents import assign_writers, optimizer_slices
from mpipipe.checkpoint.load import load_checkpoint, resolve_resume
from mpipipe.checkpoint.report import describe, verify
from mpipipe.cli import main
from mpipipe.errors import UsageError

from one_rank import tiny_trainer


def flip_byte(path, dataset: str) -> None:
    """Invert one byte in the middle of a dataset's data."""
    with h5py.File(path, "r") as file:
        offset = file[dataset].id.get_offset() + file[dataset].nbytes // 2
    with open(path, "r+b") as handle:
        handle.seek(offset)
        value = handle.read(1)[0]
        handle.seek(offset)
        handle.write(bytes([value ^ 0xFF]))


@pytest.fixture(params=[True, False], ids=["parallel-hdf5", "rank0-writer"])
def saved(request, tmp_path):
    """A checkpoint after 3 steps, written by either writer; (path, trainer)."""
    trainer = tiny_trainer()
    trainer.parallel_checkpoints = request.param
    for _ in range(3):
        trainer.train_step()
    path = str(tmp_path / folder.checkpoint_name(3))
    trainer.save_checkpoint(path)
    return path, trainer


# ----- who writes what ---------------------------------------------------------


def test_assign_writers_picks_a_holder_and_spreads_bytes():
    generator = random.Random(7)
    keys = [(layer, name) for layer in range(12) for name in ("weight", "bias", "gain")]
    sizes = {key: generator.randint(1, 1000) for key in keys}
    holders = {key: [0, 1, 2, 3] for key in keys}
    writers = assign_writers(holders, sizes)
    loads = [sum(sizes[key] for key in keys if writers[key] == rank) for rank in range(4)]
    assert max(loads) - min(loads) <= max(sizes.values())
    shuffled = dict(sorted(holders.items(), key=lambda _: generator.random()))
    assert assign_writers(shuffled, sizes) == writers, "the choice depends on dict order"
    restricted = {key: [key[0] % 2, 2 + key[0] % 2] for key in keys}
    assert all(rank in restricted[key]
               for key, rank in assign_writers(restricted, sizes).items())


def test_optimizer_slices_line_up_with_parameters_and_cover_the_state():
    trainer = tiny_trainer()
    for group, state in zip(trainer.optimizer.groups, trainer.optimizer.state, strict=True):
        for array in state.values():
            array[...] = group.param
    slices = optimizer_slices(trainer.store, trainer.optimizer)
    assert set(slices) == set(trainer.store.params)
    for key, arrays in slices.items():
        for array in arrays.values():
            assert np.array_equal(array, trainer.store.params[key]), key
    for state in trainer.optimizer.state:
        for array in state.values():
            array[...] = 0
    for arrays in slices.values():
        for array in arrays.values():
            array += 1
    assert all(np.all(array == 1) for state in trainer.optimizer.state for array in state.values())


def test_optimizer_slices_follow_each_groups_span_not_the_group_order():
    trainer = tiny_trainer()
    optimizer = trainer.optimizer
    assert len(optimizer.groups) > 1
    for group, state in zip(optimizer.groups, optimizer.state, strict=True):
        for array in state.values():
            array[...] = group.param
    optimizer.groups.reverse()
    optimizer.state.reverse()
    slices = optimizer_slices(trainer.store, optimizer)
    assert set(slices) == set(trainer.store.params)
    for key, arrays in slices.items():
        for array in arrays.values():
            assert np.array_equal(array, trainer.store.params[key]), key


# ----- the folder --------------------------------------------------------------


def test_folder_finds_latest_ignores_partials_and_prunes(tmp_path):
    for step in (2, 10, 4):
        (tmp_path / folder.checkpoint_name(step)).write_text("x")
    partial = tmp_path / (folder.checkpoint_name(12) + folder.PARTIAL_SUFFIX)
    partial.write_text("half")
    (tmp_path / "notes.txt").write_text("not a checkpoint")
    assert [step for step, _ in folder.complete_checkpoints(str(tmp_path))] == [2, 4, 10]
    assert folder.latest_checkpoint(str(tmp_path)).endswith(folder.checkpoint_name(10))
    assert folder.remove_partials(str(tmp_path)) == [str(partial)]
    assert not partial.exists()
    folder.prune(str(tmp_path), keep=2)
    assert sorted(os.listdir(tmp_path)) == sorted(
        [folder.checkpoint_name(4), folder.checkpoint_name(10), "notes.txt"]
    )
    fresh = tmp_path / (folder.checkpoint_name(11) + folder.PARTIAL_SUFFIX)
    fresh.write_text("done")
    folder.publish(str(fresh), str(tmp_path / folder.checkpoint_name(11)))
    assert folder.latest_checkpoint(str(tmp_path)).endswith(folder.checkpoint_name(11))


def test_resume_latest_without_a_checkpoint_says_so_and_removes_partials(tmp_path):
    partial = tmp_path / (folder.checkpoint_name(4) + folder.PARTIAL_SUFFIX)
    partial.write_text("half")
    with pytest.raises(UsageError, match="no complete checkpoint in .*anew with --overwrite"):
        resolve_resume("latest", str(tmp_path), MPI.COMM_WORLD)
    assert not partial.exists()
    with pytest.raises(UsageError, match="does not exist"):
        resolve_resume(str(tmp_path / "missing.h5"), str(tmp_path), MPI.COMM_WORLD)


# ----- a saved file --------------------------------------------------------------


def test_file_holds_every_parameter_under_its_global_name(saved):
    path, trainer = saved
    with h5py.File(path, "r") as file:
        assert file.attrs["step"] == 3 and file.attrs["format_version"] == 1
        assert file["optim"].attrs["step_count"] == 3
        for (layer, name), value in trainer.store.host_params().items():
            assert np.array_equal(file[f"model/{layer}/{name}"][()], value)
        slices = optimizer_slices(trainer.store, trainer.optimizer)
        for (layer, name), arrays in slices.items():
            for state, array in arrays.items():
                assert np.array_equal(file[f"optim/{state}/{layer}/{name}"][()], array)


def test_load_restores_parameters_optimizer_and_step(saved):
    path, trainer = saved
    fresh = tiny_trainer()
    kept = [array for state in fresh.optimizer.state for array in state.values()]
    loaded = load_checkpoint(fresh.run_state(), path)
    assert loaded.step == 3 and loaded.same_data
    for key, value in trainer.store.host_params().items():
        assert np.array_equal(fresh.store.params[key], value)
    assert fresh.optimizer.step_count == 3
    restored = [array for state in fresh.optimizer.state for array in state.values()]
    saved_state = [array for state in trainer.optimizer.state for array in state.values()]
    assert all(before is after for before, after in zip(kept, restored, strict=True))
    for want, got in zip(saved_state, restored, strict=True):
        assert want.tobytes() == got.tobytes()
    assert any(np.any(array != 0) for array in restored), "the state is still all zeros"


@pytest.mark.parametrize("name", ["adamw", "sgd"])
def test_save_and_resume_equals_training_straight_through_with_either_optimizer(name, tmp_path):
    settings = {"optim__name": name, "optim__weight_decay": 0.1}
    straight = tiny_trainer(**settings)
    straight_losses = [straight.train_step()["loss"] for _ in range(5)]
    first = tiny_trainer(**settings)
    for _ in range(2):
        first.train_step()
    path = str(tmp_path / folder.checkpoint_name(2))
    first.save_checkpoint(path)
    resumed = tiny_trainer(**settings)
    resumed.resume(path)
    assert resumed.step == 2
    assert [resumed.train_step()["loss"] for _ in range(3)] == straight_losses[2:]
    for key, value in straight.store.host_params().items():
        assert value.tobytes() == resumed.store.host_params()[key].tobytes(), key
    for want, got in zip(straight.optimizer.state, resumed.optimizer.state, strict=True):
        assert want.keys() == got.keys()
        for state in want:
            assert want[state].tobytes() == got[state].tobytes(), state
    assert resumed.optimizer.step_count == straight.optimizer.step_count == 5


def test_inspect_shows_step_config_schedule_and_datasets(saved, capsys):
    path, trainer = saved
    text = describe(path)
    assert "step 3 " in text and "schedule kind=1f1b ranks=1" in text and "[model]" in text
    for (layer, name), value in trainer.store.host_params().items():
        line = next(line for line in text.splitlines() if f"/model/{layer}/{name} " in line)
        assert str(value.shape) in line
    assert main(["ckpt", "inspect", path]) == 0
    assert "datasets (" in capsys.readouterr().out


def test_verify_names_a_flipped_dataset_and_load_refuses_it(saved, capsys):
    path, _ = saved
    assert main(["ckpt", "verify", path]) == 0
    assert verify(path).problems == []
    with h5py.File(path, "r") as file:
        damaged = sorted(name for name in _dataset_names(file) if name.startswith("/model/1/"))[0]
    flip_byte(path, damaged)
    capsys.readouterr()
    assert main(["ckpt", "verify", path]) == 1
    errors = capsys.readouterr().err
    assert f"dataset {damaged} fails its checksum" in errors
    assert len(verify(path).problems) == 1
    with pytest.raises(UsageError, match=f"dataset {damaged} fails its checksum"):
        load_checkpoint(tiny_trainer().run_state(), path)


def test_truncated_file_is_refused_with_one_line(saved, capsys):
    path, _ = saved
    size = os.path.getsize(path)
    with open(path, "r+b") as handle:
        handle.truncate(size // 2)
    with pytest.raises(UsageError, match="cannot be read as HDF5") as raised:
        load_checkpoint(tiny_trainer().run_state(), path)
    assert "\n" not in str(raised.value)
    assert main(["ckpt", "verify", path]) == 1
    assert "cannot be read as HDF5" in capsys.readouterr().err


def test_unknown_format_version_is_refused(saved):
    path, _ = saved
    with h5py.File(path, "r+") as file:
        file.attrs["format_version"] = 99
    with pytest.raises(UsageError, match="format version 99, this mpipipe .* reads version 1"):
        load_checkpoint(tiny_trainer().run_state(), path)


def test_another_model_is_refused_naming_the_setting_and_both_values(saved):
    path, _ = saved
    with pytest.raises(UsageError, match="trained with model.d_model = 16, the run has "
                                         "model.d_model = 32"):
        load_checkpoint(tiny_trainer(model__d_model=32).run_state(), path)
    with pytest.raises(UsageError, match="model.n_layer = 2, the run has model.n_layer = 3"):
        load_checkpoint(tiny_trainer(model__n_layer=3).run_state(), path)
    with pytest.raises(UsageError, match="optim.name = 'adamw'"):
        load_checkpoint(tiny_trainer(optim__name="sgd").run_state(), path)


def test_other_data_settings_load_but_are_flagged(saved):
    path, _ = saved
    loaded = load_checkpoint(tiny_trainer(train__seed=99).run_state(), path)
    assert not loaded.same_data and "train.seed=1234" in loaded.data


# ----- the trainer's run folder ------------------------------------------------


def test_run_saves_every_n_steps_and_at_the_end_keeping_the_newest(tmp_path):
    trainer = tiny_trainer(tmp_path, checkpoint__every=2, checkpoint__keep=2, train__steps=7)
    trainer.run()
    trainer.finish()
    names = sorted(os.listdir(tmp_path / "checkpoints"))
    assert names == [folder.checkpoint_name(6), folder.checkpoint_name(7)]


def test_resume_trims_metrics_and_repeats_the_lost_steps_exactly(tmp_path):
    first = tiny_trainer(tmp_path, checkpoint__every=2, train__steps=5)
    first.run()
    first.finish()
    straight = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    os.remove(tmp_path / "checkpoints" / folder.checkpoint_name(5))
    second = tiny_trainer(tmp_path, resuming=True, checkpoint__every=2, train__steps=5)
    assert second.resume("latest").endswith(folder.checkpoint_name(4))
    second.run()
    second.finish()
    rows = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [row["step"] for row in rows] == [0, 1, 2, 3, 4]
    assert [row["loss"] for row in rows] == [row["loss"] for row in straight]


def _dataset_names(file) -> list[str]:
    names = []
    file.visititems(lambda name, item: names.append(item.name)
                    if isinstance(item, h5py.Dataset) else None)
    return names


# ----- without parallel HDF5 ---------------------------------------------------


def test_writer_choice_without_parallel_hdf5(monkeypatch):
    monkeypatch.setattr(save, "parallel_hdf5_available", lambda: False)
    assert save.use_parallel_hdf5("auto") is False
    assert save.use_parallel_hdf5("no") is False
    with pytest.raises(UsageError, match="checkpoint.parallel = 'yes' but h5py"):
        save.use_parallel_hdf5("yes")
    monkeypatch.setattr(save, "parallel_hdf5_available", lambda: True)
    assert save.use_parallel_hdf5("auto") is True
    assert save.use_parallel_hdf5("no") is False


def test_train_without_parallel_hdf5_warns_once_and_rank0_writes(monkeypatch, tmp_path, capsys):
    monkeypatch.setattr(save, "parallel_hdf5_available", lambda: False)
    handlers = {number: signal.getsignal(number) for number in (signal.SIGTERM, signal.SIGUSR1)}
    try:
        code = main(["train", "examples/gpt_tiny.toml", "--set", "model.n_layer=2",
                     "--set", "model.d_model=16", "--set", "model.seq_len=8",
                     "--set", "data.source=random", "--set", "train.steps=2",
                     "--set", "runtime.trace=false", "--out", str(tmp_path)])
    finally:
        for number, handler in handlers.items():
            signal.signal(number, handler)
    assert code == 0
    warnings = [line for line in capsys.readouterr().err.splitlines() if "warning" in line]
    assert warnings == [save.FALLBACK_WARNING]
    path = tmp_path / "checkpoints" / folder.checkpoint_name(2)
    assert verify(str(path)).problems == []
