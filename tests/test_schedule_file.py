"""`parallel.schedule = "FILE.csv"` without MPI: where the path points, how the file is read,
how it must fit the layout, and what a checkpoint remembers of it."""

from __future__ import annotations

import codecs
from pathlib import Path

import pytest

from mpipipe.checkpoint.schedule_identity import schedule_attributes, schedule_change
from mpipipe.config.load import load_config
from mpipipe.config.show import format_config
from mpipipe.plan import plan_run
from mpipipe.schedules import SCHEDULE_KINDS, build_schedule, read_schedule_file
from mpipipe.schedules.csv_io import from_csv, to_csv
from mpipipe.schedules.schedule_file import MAX_SCHEDULE_BYTES

from oneline import one_line_error

TINY = ["data.source=random", "model.n_layer=8", "model.d_model=16", "model.n_head=2",
        "model.seq_len=8", "model.vocab_size=64"]


def csv_file(folder: Path, kind: str = "1f1b", ranks: int = 2, microbatches: int = 4,
             name: str = "mine.csv") -> Path:
    path = folder / name
    path.write_text(to_csv(build_schedule(kind, ranks, microbatches)))
    return path


def plan_of(path: Path | str, *overrides: str, world_size: int = 2):
    config = load_config(None, [*TINY, f"parallel.schedule={path}", "parallel.microbatches=4",
                                *overrides])
    return plan_run(config, world_size, 0)


def test_a_path_in_the_config_file_is_relative_to_its_folder(tmp_path, monkeypatch):
    folder = tmp_path / "configs"
    folder.mkdir()
    config_path = folder / "run.toml"
    monkeypatch.chdir(tmp_path)
    for written, meant in [("mine.csv", folder / "mine.csv"),
                           ("../schedules/Mine.CSV", tmp_path / "schedules" / "Mine.CSV"),
                           (str(tmp_path / "abs.csv"), tmp_path / "abs.csv")]:
        config_path.write_text(f'[parallel]\nschedule = "{written}"\n')
        assert load_config(str(config_path)).parallel.schedule == str(meant)
    config_path.write_text('[parallel]\nschedule = "bitpipe"\n')
    assert load_config(str(config_path)).parallel.schedule == "bitpipe"


def test_a_path_in_set_is_relative_to_the_current_folder(tmp_path, monkeypatch):
    (tmp_path / "configs").mkdir()
    config_path = tmp_path / "configs" / "run.toml"
    config_path.write_text('[parallel]\nschedule = "other.csv"\n')
    monkeypatch.chdir(tmp_path)
    config = load_config(str(config_path), ["parallel.schedule=mine.csv"])
    assert config.parallel.schedule == str(tmp_path / "mine.csv")


def test_the_resolved_config_loads_back_from_another_folder(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    config = load_config(None, ["parallel.schedule=mine.csv"])
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (elsewhere / "resolved.toml").write_text(format_config(config))
    assert load_config(str(elsewhere / "resolved.toml")) == config


def test_config_show_lists_a_file_among_the_schedules():
    line = next(line for line in format_config(load_config(None)).splitlines()
                if line.startswith("schedule = "))
    assert line.endswith(f"({' | '.join(SCHEDULE_KINDS)} | FILE.csv)")
    assert "relative to the config file's folder" in line


@pytest.mark.parametrize(
    ("value", "fragments"),
    [
        ("bitpip", ["nor a file name ending in .csv (did you mean 'bitpipe'?)"]),
        ("mine.txt", ['parallel.schedule = "mine.txt" is not one of gpipe, 1f1b',
                      "nor a file name ending in .csv"]),
    ],
)
def test_a_value_that_is_neither_a_kind_nor_a_csv_is_refused(value, fragments):
    one_line_error(lambda: load_config(None, [f"parallel.schedule={value}"]), fragments)


def utf16(text: str) -> bytes:
    return codecs.BOM_UTF16_LE + text.encode("utf-16-le")


GOOD = to_csv(build_schedule("1f1b", 2, 4))


@pytest.mark.parametrize(
    ("content", "fragments"),
    [
        (None, ["x.csv: no such file", "--format csv --out FILE writes one"]),
        ("folder", ["x.csv is a folder"]),
        (utf16(GOOD), ["x.csv is UTF-16 text; save it as UTF-8"]),
        (GOOD.encode("utf-16-le"), ["x.csv is not UTF-8 text (byte 1 is NUL: a binary or UTF-16"]),
        (b"\x89PNG\r\n\x1a\n\0\0\0\rIHDR", ["is not UTF-8 text (byte 8 is NUL"]),
        ("rank,ops\n0,0F0,é\n".encode("latin-1"), ["is not UTF-8 text (byte 15)"]),
        ("huge", [f"more than a schedule CSV's {MAX_SCHEDULE_BYTES // 2**20} MiB"]),
    ],
    ids=["missing", "folder", "utf-16", "utf-16-without-mark", "binary", "latin-1", "huge"],
)
def test_a_file_that_is_not_a_readable_csv_is_named_in_one_line(tmp_path, content, fragments):
    path = tmp_path / "x.csv"
    if content == "folder":
        path.mkdir()
    elif content == "huge":
        with open(path, "wb") as handle:
            handle.truncate(MAX_SCHEDULE_BYTES + 1)  # sparse: costs no disk
    elif content is not None:
        path.write_bytes(content)
    one_line_error(lambda: read_schedule_file(str(path), str(path)),
                   [fragment.replace("x.csv", str(path)) for fragment in fragments])


def test_a_spreadsheets_byte_order_mark_is_read_past(tmp_path):
    path = tmp_path / "excel.csv"
    path.write_bytes(codecs.BOM_UTF8 + GOOD.encode())
    assert read_schedule_file(str(path), "excel.csv").digest() == from_csv(GOOD).digest()


def test_a_schedule_file_gives_the_plan_its_ops_and_stages(tmp_path):
    plan = plan_of(csv_file(tmp_path, "zb-v"))
    assert plan.schedule.digest() == build_schedule("zb-v", 2, 4).digest()
    assert len(plan.stage_layers) == 4


@pytest.mark.parametrize(
    ("overrides", "world_size", "fragments"),
    [
        ([], 4, ["mine.csv' has 2 rows, one per pipeline rank, but this run has 4 pipeline ranks",
                 "launch 2 MPI ranks, or give a schedule of 4 rows"]),
        (["parallel.data_parallel=2"], 8, ["but this run has 4 pipeline ranks (8 MPI ranks, "
                                           "parallel.data_parallel = 2): launch 4 MPI ranks"]),
        (["parallel.microbatches=8"], 2, ["mine.csv' runs 4 micro-batches per step, but "
                                          "parallel.microbatches = 8: set parallel.microbatches "
                                          "= 4"]),
        (["model.n_layer=6"], 2, ["has 6 transformer blocks, which cannot be split evenly into 4 "
                                  "stages (the schedule in ", "mine.csv has 4 stages)"]),
    ],
)
def test_a_schedule_file_must_fit_the_layout(tmp_path, overrides, world_size, fragments):
    path = csv_file(tmp_path, "zb-v")
    one_line_error(lambda: plan_of(path, *overrides, world_size=world_size), fragments)


def test_a_broken_schedule_file_is_named_with_its_line_and_cell(tmp_path):
    path = tmp_path / "mine.csv"
    path.write_text("rank,ops\n0,0F0,0F1,0B0,0B1\n1,1F0,1B0,1X1,1B1\n")
    one_line_error(lambda: plan_of(path), [f"parallel.schedule '{path}' line 3 cell 4: "
                                           "cannot read op '1X1'"])
    path.write_text("rank,ops\n0,0F0,0F1,0F2,0F3,0B0,0B1,0B2,0B3\n"
                    "1,1F0,1B0,1F1,1B1,1F2,1B2,1B3,1F3\n")
    one_line_error(lambda: plan_of(path), ["rank 1 is stuck", "1B3 on rank 1 is at line 3 cell 8",
                                           f"mpipipe schedule --from-csv {path} draws it"])


def test_the_digest_is_of_the_ops_alone():
    schedule = build_schedule("bitpipe", 4, 8)
    text = to_csv(schedule)
    assert from_csv(text).digest() == schedule.digest()
    relabelled = text.replace("kind=bitpipe", "kind=mine").replace(",", ", ")
    assert from_csv(relabelled).digest() == schedule.digest()
    assert build_schedule("zb-h1", 4, 8).digest() != build_schedule("1f1b", 4, 8).digest()


def test_a_resume_refuses_a_schedule_file_of_the_same_name_with_other_ops(tmp_path):
    saved = schedule_attributes(plan_of(csv_file(tmp_path)))
    assert schedule_change(saved, "step.h5", plan_of(csv_file(tmp_path))) == ""
    elsewhere = tmp_path / "copy"
    elsewhere.mkdir()
    edited = plan_of(csv_file(elsewhere, "gpipe"))
    message = one_line_error(lambda: schedule_change(saved, "step.h5", edited), [
        "checkpoint step.h5 was trained with parallel.schedule",
        f"(ops {saved['schedule_digest']}), but '{elsewhere / 'mine.csv'}' now holds other ops "
        f"({edited.schedule.digest()}): restore the file, or give the edited one another name",
    ])
    assert str(tmp_path / "mine.csv") in message


def test_a_resume_with_another_schedule_is_allowed_and_noted(tmp_path):
    saved = schedule_attributes(plan_of(csv_file(tmp_path)))
    for plan in (plan_of(csv_file(tmp_path, "gpipe", name="gpipe.csv")), plan_of("zb-h1")):
        note = schedule_change(saved, "step.h5", plan)
        assert note.startswith(f"note: the checkpoint was trained with schedule {tmp_path}")
        now = f"this run uses {plan.config.parallel.schedule} (ops {plan.schedule.digest()})"
        assert now in note
    assert schedule_change(saved, "step.h5", plan_of("1f1b")) == ""  # the same ops
    assert schedule_change({}, "step.h5", plan_of("gpipe")) == ""  # an older checkpoint
